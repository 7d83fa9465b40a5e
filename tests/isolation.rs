//! Runs against another relay share one fake upstream, and every message is attributed to the
//! scenario that sent it (the runner's `X-Scenario-Token:` header), so that a store-and-forward
//! relay delivering late does not leak one scenario's mail into the next one's checks. The
//! relay under test here is a toy store-and-forward relay in this file, over real sockets: it
//! answers 250 at once and delivers each message after a delay, and (when told to) a message
//! of its own making with no token, as a smuggled message would arrive.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_relay::scenario::run::{Options, Target, Verdict};
use smtp_relay::scenario::{Scenario, run_all};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// When the toy relay delivers what it took.
#[derive(Clone, Copy)]
enum When {
    /// This long after the client's end of data.
    After(Duration),
    /// The first message when the next client connects (a scenario that follows), whatever
    /// the timing; the others at once.
    FirstAtNextClient,
}

/// Messages held for the next client, and whether one was ever taken.
type Held = Arc<Mutex<(Vec<(String, Vec<String>, Vec<u8>)>, bool)>>;

/// A relay that takes each message, answers 250, and delivers it to `upstream` later (then,
/// with `extra`, a message with no token from <ceo@bank.example>).
async fn late_relay(upstream: SocketAddr, when: When, extra: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held: Held = Arc::default();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let due: Vec<_> = std::mem::take(&mut held.lock().unwrap().0);
            for (f, t, data) in due {
                deliver(upstream, &f, &t, &data).await;
            }
            tokio::spawn(session(tcp, upstream, when, extra, held.clone()));
        }
    });
    addr
}

async fn session(tcp: TcpStream, upstream: SocketAddr, when: When, extra: bool, held: Held) {
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r.take(1 << 20));
    let _ = w.write_all(b"220 late.test ESMTP\r\n").await;
    let (mut from, mut to, mut line) = (String::new(), Vec::new(), String::new());
    loop {
        line.clear();
        let read = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250 late.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().to_string();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(line[8..].trim().to_string());
            b"250 ok\r\n"
        } else if upper.starts_with("DATA") {
            let _ = w.write_all(b"354 go\r\n").await;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                    return;
                }
                if l == b".\r\n" {
                    break;
                }
                data.extend_from_slice(&l);
            }
            let (f, t) = (from.clone(), std::mem::take(&mut to));
            let first = {
                let mut h = held.lock().unwrap();
                let first = !h.1;
                h.1 = true;
                if first && matches!(when, When::FirstAtNextClient) {
                    h.0.push((f.clone(), t.clone(), data.clone()));
                }
                first
            };
            match when {
                When::FirstAtNextClient if first => {}
                When::FirstAtNextClient => {
                    tokio::spawn(async move { deliver(upstream, &f, &t, &data).await });
                }
                When::After(delay) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        deliver(upstream, &f, &t, &data).await;
                        if extra {
                            let smuggled = b"From: ceo@bank.example\r\n\r\npay now\r\n".to_vec();
                            let victim = vec!["<victim@example.net>".to_string()];
                            deliver(upstream, "<ceo@bank.example>", &victim, &smuggled).await;
                        }
                    });
                }
            }
            b"250 queued\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 ok\r\n"
        };
        let _ = w.write_all(reply).await;
    }
}

/// One message over plain SMTP, its content already dot-stuffed as the client sent it.
async fn deliver(upstream: SocketAddr, from: &str, to: &[String], data: &[u8]) {
    let tcp = TcpStream::connect(upstream).await.unwrap();
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    let mut reply = async || {
        loop {
            let mut l = String::new();
            r.read_line(&mut l).await.unwrap();
            if l.as_bytes().get(3) != Some(&b'-') {
                return l;
            }
        }
    };
    reply().await;
    w.write_all(b"EHLO late.test\r\n").await.unwrap();
    reply().await;
    w.write_all(format!("MAIL FROM:{from}\r\n").as_bytes())
        .await
        .unwrap();
    reply().await;
    for t in to {
        w.write_all(format!("RCPT TO:{t}\r\n").as_bytes())
            .await
            .unwrap();
        reply().await;
    }
    w.write_all(b"DATA\r\n").await.unwrap();
    reply().await;
    w.write_all(data).await.unwrap();
    w.write_all(b".\r\n").await.unwrap();
    assert!(reply().await.starts_with("250"));
    w.write_all(b"QUIT\r\n").await.unwrap();
    reply().await;
}

const SESSION: &str = "tags: portable\nupstream: sink\nrelay: auth=none\n\nconnect\nS: 220 *\nC: EHLO client.example\nS: 250 *\nC: MAIL FROM:<a@example.com>\nS: 250 *\nC: RCPT TO:<{rcpt}>\nS: 250 *\nC: DATA\nS: 354 *\nC: Subject: {subject}\nC: Date: Tue, 01 Dec 2026 10:00:00 +0000\nC:\nC: body\nC: .\nS: 250 *\nquit\n\n";

fn scenario(dir: &Path, name: &str, extra: &str) -> Scenario {
    let text = format!(
        "description: {name}\n{extra}{}",
        SESSION
            .replace("{rcpt}", &format!("{name}@example.net"))
            .replace("{subject}", name)
    );
    let path = dir.join(format!("{name}.scn"));
    std::fs::write(&path, text).unwrap();
    Scenario::load(&path).unwrap()
}

fn options(relay: SocketAddr, upstream: SocketAddr, work: &Path) -> Options {
    Options {
        target: Target::External {
            relay,
            upstream_listen: upstream,
        },
        jobs: 1,
        timeout: None,
        work_dir: work.to_path_buf(),
        fail_fast: false,
        settle: Duration::from_millis(200),
        seed: 1,
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The first scenario checks nothing upstream, so its checks run before its message
/// arrives; the relay delivers it when the second scenario connects, and the second one
/// expects exactly one message (its own, delivered at once) and gets it. The late one is
/// reported, not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delivery_counts_for_its_own_scenario_not_the_next() {
    let work =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("iso-late-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let upstream = free_port();
    let relay = late_relay(upstream, When::FirstAtNextClient, false).await;
    let first = scenario(&work, "first", "");
    let mut second = scenario(&work, "second", "");
    let second_text = std::fs::read_to_string(&second.path).unwrap()
        + "expect messages: 1\nexpect delivered: second@example.net\nexpect body intact\n";
    std::fs::write(&second.path, second_text).unwrap();
    second = Scenario::load(&second.path).unwrap();
    let run = run_all(
        vec![first, second],
        &options(relay, upstream, &work),
        |_| {},
    )
    .await
    .unwrap();
    for o in &run.outcomes {
        assert_eq!(o.verdict, Verdict::Pass, "{}:\n{}", o.name, o.transcript);
    }
    // The second scenario's transcript shows its own message only, with its token.
    let second = &run.outcomes[1].transcript;
    assert!(second.contains("received 1 message(s)"), "{second}");
    assert!(second.contains("RCPT TO:second@example.net"), "{second}");
    assert!(!second.contains("RCPT TO:first@example.net"), "{second}");
    assert!(second.contains("X-Scenario-Token: "), "{second}");
    assert_eq!(run.strays.len(), 1, "{:#?}", run.strays);
    let stray = &run.strays[0];
    assert!(!stray.unattributed);
    assert!(
        stray
            .what
            .contains("to first@example.net sent by first arrived late, during second"),
        "{}",
        stray.what
    );
}

/// A message with no token that comes after every scenario was checked is a message no
/// verdict covered: the run says so (and the CLI exits 1). One that comes inside a scenario's
/// window counts for that scenario, and its checks see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_no_token_is_never_lost() {
    let work =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("iso-stray-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    // After the only scenario: unattributed.
    let upstream = free_port();
    // Two seconds after the data: the scenario's checks have run (0.2 s of quiet), the run's
    // last wait (3 s of quiet) sees it.
    let relay = late_relay(upstream, When::After(Duration::from_secs(2)), true).await;
    let only = scenario(&work, "only", "");
    let run = run_all(vec![only], &options(relay, upstream, &work), |_| {})
        .await
        .unwrap();
    assert_eq!(run.outcomes[0].verdict, Verdict::Pass);
    let unattributed: Vec<_> = run.strays.iter().filter(|s| s.unattributed).collect();
    assert_eq!(unattributed.len(), 1, "{:#?}", run.strays);
    assert!(
        unattributed[0].what.contains(
            "from <ceo@bank.example> to victim@example.net that carries no scenario's token"
        ),
        "{}",
        unattributed[0].what
    );
    // Inside the window (the scenario's settle outlasts the relay's delay): its never-saw
    // check sees it.
    let upstream = free_port();
    let relay = late_relay(upstream, When::After(Duration::from_millis(300)), true).await;
    let watched = scenario(&work, "watched", "settle: 3s\n");
    let text = std::fs::read_to_string(&watched.path).unwrap()
        + "expect upstream never saw: ceo@bank.example\n";
    std::fs::write(&watched.path, text).unwrap();
    let watched = Scenario::load(&watched.path).unwrap();
    let run = run_all(vec![watched], &options(relay, upstream, &work), |_| {})
        .await
        .unwrap();
    match &run.outcomes[0].verdict {
        Verdict::Fail(why) => assert!(why.contains("ceo@bank.example"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}
