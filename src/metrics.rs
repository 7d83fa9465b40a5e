//! `--metrics ADDR`: the relay's counters in the Prometheus text exposition format, served
//! over plain HTTP (`GET /metrics`). Counters are atomics bumped where things happen; the
//! queue's size and age are read when scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The relay's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions_opened: AtomicU64,
    pub sessions_open: AtomicU64,
    /// Messages the relay answered 2xx at the end of data (relayed live, or queued).
    pub messages_accepted: AtomicU64,
    /// Messages refused at the end of data (the upstream's refusal, or the relay's).
    pub messages_refused: AtomicU64,
    /// Store and forward: messages queued, delivered, deferred (an attempt to retry), bounced.
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub bounced: AtomicU64,
    /// Upstream replies to the end of data, by code.
    pub upstream_replies: Mutex<BTreeMap<u16, u64>>,
    /// AUTHs answered by the relay without asking the upstream, by reason
    /// ([`crate::auth_guard::Refusal::name`]).
    pub auth_refused_locally: Mutex<BTreeMap<&'static str, u64>>,
    /// Client connections refused at connect, by the limit that refused them.
    pub sessions_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Times an upstream refused the relay itself (`554 IP is rejected`, `421 HL:ICC`).
    pub upstream_refused_relay: AtomicU64,
    /// New upstream sessions that had to wait for a slot under their route's `max_sessions`,
    /// and those of them that gave up (the client heard `451 4.4.5`).
    pub upstream_session_waits: AtomicU64,
    pub upstream_busy: AtomicU64,
}

/// The queue's figures on the metrics page (from memory: a scrape reads no file).
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueFigures {
    pub messages: u64,
    pub oldest_seconds: f64,
    pub commits: u64,
    pub journal_syncs: u64,
}

impl QueueFigures {
    fn render(&self, s: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, v: &dyn std::fmt::Display| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        metric(
            "smtp_relay_queue_messages",
            "gauge",
            "Messages in the queue now.",
            &self.messages,
        );
        metric(
            "smtp_relay_queue_oldest_seconds",
            "gauge",
            "Age of the oldest queued message.",
            &self.oldest_seconds,
        );
        metric(
            "smtp_relay_queue_commits_total",
            "counter",
            "Batches of queue changes committed together (group commit).",
            &self.commits,
        );
        metric(
            "smtp_relay_queue_journal_syncs_total",
            "counter",
            "fdatasyncs of the queue's journal.",
            &self.journal_syncs,
        );
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reply(&self, code: u16) {
        bump(&self.upstream_replies, code);
    }

    pub fn session_refused(&self, limit: &'static str) {
        bump(&self.sessions_refused, limit);
    }

    pub fn auth_refused(&self, reason: &'static str) {
        bump(&self.auth_refused_locally, reason);
    }

    /// The exposition text, with the queue's figures in store-and-forward mode.
    pub fn render(&self, queue: Option<QueueFigures>) -> String {
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |s: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = [
            (
                "smtp_relay_sessions_total",
                "Client sessions opened.",
                &self.sessions_opened,
            ),
            (
                "smtp_relay_messages_accepted_total",
                "Messages answered 2xx at the end of data (relayed or queued).",
                &self.messages_accepted,
            ),
            (
                "smtp_relay_messages_refused_total",
                "Messages refused at the end of data.",
                &self.messages_refused,
            ),
            (
                "smtp_relay_queued_total",
                "Messages queued (store and forward).",
                &self.queued,
            ),
            (
                "smtp_relay_delivered_total",
                "Queued messages delivered.",
                &self.delivered,
            ),
            (
                "smtp_relay_deferred_total",
                "Delivery attempts that will be retried.",
                &self.deferred,
            ),
            (
                "smtp_relay_bounced_total",
                "Queued messages with a recipient that failed for good.",
                &self.bounced,
            ),
            (
                "smtp_relay_upstream_refused_relay_total",
                "Times an upstream refused the relay's own address (554 IP is rejected, 421 HL:ICC).",
                &self.upstream_refused_relay,
            ),
            (
                "smtp_relay_upstream_session_waits_total",
                "New upstream sessions that waited for a slot under their route's max_sessions.",
                &self.upstream_session_waits,
            ),
            (
                "smtp_relay_upstream_busy_total",
                "Upstream sessions given up after upstream_session_wait_secs (the client heard 451 4.4.5).",
                &self.upstream_busy,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut s, name, help, get(v));
        }
        gauge(
            &mut s,
            "smtp_relay_sessions_open",
            "Client sessions open now.",
            get(&self.sessions_open) as f64,
        );
        if let Some(q) = queue {
            q.render(&mut s);
        }
        labelled(
            &mut s,
            "smtp_relay_sessions_refused_total",
            "Client connections refused at connect, by limit.",
            "limit",
            &self.sessions_refused,
        );
        labelled(
            &mut s,
            "smtp_relay_auth_refused_locally_total",
            "AUTHs answered without asking the upstream, by reason.",
            "reason",
            &self.auth_refused_locally,
        );
        labelled(
            &mut s,
            "smtp_relay_upstream_replies_total",
            "Upstream replies to the end of data, by code.",
            "code",
            &self.upstream_replies,
        );
        s
    }
}

/// One more for `key` in a labelled counter.
fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_insert(0) += 1;
}

/// A counter with one label, a line per value of it.
fn labelled<K: std::fmt::Display>(
    s: &mut String,
    name: &str,
    help: &str,
    label: &str,
    map: &Mutex<BTreeMap<K, u64>>,
) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in map.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(s, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown`; `render` makes the body.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    smtp_net::accept_loop(listener, shutdown, move |mut tcp, _peer: SocketAddr, _| {
        let render = render.clone();
        async move {
            // One request, read within 5 s and 8 KiB; anything but GET /metrics is a 404.
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = tcp.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let response = if request.starts_with("GET ") && (path == "/metrics" || path == "/") {
                let body = render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(response.as_bytes())).await;
            let _ = tcp.shutdown().await;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        Metrics::inc(&m.sessions_opened);
        Metrics::inc(&m.queued);
        m.reply(250);
        m.reply(250);
        m.reply(451);
        let text = m.render(Some(QueueFigures {
            messages: 3,
            oldest_seconds: 12.5,
            commits: 7,
            journal_syncs: 7,
        }));
        assert!(
            text.contains(
                "# TYPE smtp_relay_sessions_total counter\nsmtp_relay_sessions_total 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("smtp_relay_queue_messages 3\n"), "{text}");
        assert!(
            text.contains("smtp_relay_queue_commits_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("smtp_relay_queue_oldest_seconds 12.5\n"),
            "{text}"
        );
        assert!(
            text.contains("smtp_relay_upstream_replies_total{code=\"250\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("smtp_relay_upstream_replies_total{code=\"451\"} 1\n"),
            "{text}"
        );
        // Every sample line is NAME[{labels}] VALUE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("smtp_relay_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
