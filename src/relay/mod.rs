//! The relay, live mode: each client session is driven by `smtp_wire::ServerConnection`; each
//! decision that the upstream must take (AUTH in pass-through mode, MAIL, RCPT, DATA, the end
//! of data) is forwarded as it happens, and the upstream's reply goes back to the client as it
//! was said. The message is streamed to the upstream and to the spool file, never held whole.
//!
//! Reply rules (smtp-edge-cases, last tables): syntax, sequence, limits and TLS are answered
//! by the relay; the upstream's verdicts on a mailbox or a message are forwarded verbatim;
//! transport trouble with the upstream becomes a 4xx that names the upstream, never a 250.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smtp_wire::{
    BareLineEnding, Capabilities, Credentials, Decision, Envelope, Event, ForwardPath, LineEndings,
    MailParams, Mechanism, RcptParams, Reply, ReplyKind, ReversePath, ServerConfig,
    ServerConnection, Transport, Verdict,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use smtp_net::Io;
use smtp_net::server::{Next, Wire};

use crate::route::{Route, RouteId};
use crate::upstream::{Granted, SessionCap, Upstream, UpstreamConfig, UpstreamError};

mod admission;
mod auth;
mod config;
mod envelope;
mod leg;
mod message;
mod outcome;
mod pool;
mod session;
mod spool;

use admission::*;
use config::QueueRoutes;
pub use config::{AuthMode, ProxyProtocol, QueueSettings, RelayConfig};
use leg::*;
use message::stream_content;
use pool::Pool;
pub use pool::ReuseSettings;
use session::*;
use spool::*;
pub use spool::{Summary, summarize};

/// A running relay; clones are the same relay (the web page of `up` holds one).
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    shutdown: Arc<watch::Sender<bool>>,
    tasks: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl RelayHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Where `--metrics` is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Two-hop transcripts of the sessions that ended (when `transcripts` is configured), in
    /// the order the sessions began.
    pub fn transcripts(&self) -> Vec<String> {
        let mut kept: Vec<(u64, String)> = self
            .shared
            .transcripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, lines)| (*id, lines.join("\n") + "\n"))
            .collect();
        kept.sort_by_key(|(id, _)| *id);
        kept.into_iter().map(|(_, t)| t).collect()
    }

    /// The relay's counters in the Prometheus text format, as `--metrics` serves them.
    pub fn metrics_text(&self) -> String {
        metrics(&self.shared)()
    }

    /// How many messages the queue holds now (queue mode), from its index in memory.
    pub fn queue_len(&self) -> Option<u64> {
        self.shared.queue.as_ref().map(|q| q.summary().0)
    }

    /// The spool's directory.
    pub fn spool_dir(&self) -> &std::path::Path {
        &self.shared.config.spool_dir
    }

    /// Asks for a shutdown without waiting for it (see [`RelayHandle::shutdown`]).
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops accepting, sends `421 4.3.2` to sessions waiting for a command, waits for the
    /// sessions (at most 10 seconds).
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

struct Shared {
    config: RelayConfig,
    transcripts: std::sync::Mutex<std::collections::VecDeque<(u64, Vec<String>)>>,
    sessions: Semaphore,
    per_ip: Arc<smtp_net::admission::PerIp>,
    next_id: AtomicU64,
    /// Per route: whether its upstream offered SMTPUTF8 when last seen (`None`: not yet).
    smtputf8: std::sync::Mutex<Vec<Option<bool>>>,
    /// Per route: whether its upstream offered 8BITMIME when last seen.
    eight_bit_mime: std::sync::Mutex<Vec<Option<bool>>>,
    /// Per route: whether its upstream offered CHUNKING and BINARYMIME when last seen.
    binarymime: std::sync::Mutex<Vec<Option<bool>>>,
    /// Store and forward: the queue, and the scheduler's bell.
    queue: Option<crate::queue::store::Queue>,
    /// The queue and the spool share a file system: a large message is one file, hard-linked.
    queue_shares_spool: bool,
    wake: Arc<tokio::sync::Notify>,
    metrics: Arc<crate::metrics::Metrics>,
    auth_guard: crate::auth_guard::AuthGuard,
    /// The client sessions' protocol settings, one per kind of client (see
    /// [`admission::server_config`]): shared, not copied into every session.
    server_configs: std::sync::Mutex<std::collections::HashMap<ConfigKind, Arc<ServerConfig>>>,
    /// Upstream sessions kept for the next client ([`RelayConfig::upstream_reuse`]).
    pool: Option<Pool<Upstream>>,
    /// The client's pace limits, shared by every session.
    pace: Arc<crate::pace::PaceConfig>,
    /// The threads that write finished messages to the spool.
    spool_writers: SpoolWriters,
    /// Per live route with `max_sessions`: its cap on upstream sessions at once.
    caps: Vec<Option<Arc<SessionCap>>>,
}

impl Shared {
    /// Route `r`'s cap on upstream sessions at once, if it has one.
    fn cap(&self, r: RouteId) -> Option<&Arc<SessionCap>> {
        self.caps.get(r.slot()).and_then(Option::as_ref)
    }

    /// Records what route `r`'s upstream offered in its latest EHLO.
    fn learn(&self, r: RouteId, caps: &Capabilities) {
        let mut known = self.smtputf8.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = known.get_mut(r.slot()) {
            *slot = Some(caps.smtputf8());
        }
        drop(known);
        let mut known = self
            .eight_bit_mime
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = known.get_mut(r.slot()) {
            *slot = Some(caps.eightbitmime());
        }
        drop(known);
        let mut known = self.binarymime.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = known.get_mut(r.slot()) {
            *slot = Some(caps.chunking() && caps.binarymime());
        }
    }

    /// BINARYMIME (with CHUNKING) is offered to clients only when every route's upstream
    /// offered both when last seen: binary content cannot go on in DATA, nor be made lines
    /// (RFC 3030 3); the relay passes it on in BDAT as it came.
    fn binarymime(&self) -> bool {
        let known = self.binarymime.lock().unwrap_or_else(|e| e.into_inner());
        known.iter().all(|k| *k == Some(true))
    }

    /// SMTPUTF8 is offered to clients only when every route's upstream offers it.
    fn smtputf8(&self) -> bool {
        let known = self.smtputf8.lock().unwrap_or_else(|e| e.into_inner());
        known.iter().all(|k| *k == Some(true))
    }

    /// 8BITMIME likewise (RFC 6152 3: 8-bit content may not be relayed to a 7-bit server);
    /// a route not yet seen counts as offering it (nearly every server does), and 8-bit
    /// content for one that turns out not to is refused on its way.
    fn eight_bit_mime(&self) -> bool {
        let known = self
            .eight_bit_mime
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        known.iter().all(|k| *k != Some(false))
    }
}

/// Connects to every route (greeting, EHLO, TLS; no AUTH) to learn what it offers, and logs
/// what it found: a route that cannot be reached is named at start, not at the first
/// message. Bounded to 10 seconds in all.
async fn probe_routes(shared: &Shared) {
    let cfg = &shared.config;
    let probes = cfg.route_ids().map(|r| async move {
        let mut config = cfg.route_upstream(r).clone();
        config.credentials = None;
        // Counted under the route's cap like any session (at start one is always free).
        let slot = shared.cap(r).and_then(|c| c.try_slot());
        let result =
            tokio::time::timeout(Duration::from_secs(10), Upstream::connect(&config)).await;
        let result = result.map(|r| {
            r.map(|mut up| {
                if let Some(slot) = slot {
                    up.hold(slot);
                }
                up
            })
        });
        (r, config.name, result)
    });
    for (r, name, result) in futures_util::future::join_all(probes).await {
        match result {
            Ok(Ok(up)) => {
                shared.learn(r, up.capabilities());
                tracing::info!(
                    route = %cfg.route_label(r),
                    upstream = %name,
                    smtputf8 = up.capabilities().smtputf8(),
                    pipelining = up.capabilities().pipelining(),
                    "route probed"
                );
                up.quit().await;
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %cfg.route_label(r), upstream = %name, error = %e, "route unreachable at start")
            }
            Err(_) => {
                tracing::warn!(route = %cfg.route_label(r), upstream = %name, "route probe timed out after 10s")
            }
        }
    }
}

/// Binds the listeners and serves until [`RelayHandle::shutdown`].
pub async fn start(mut config: RelayConfig) -> std::io::Result<RelayHandle> {
    // Upstream sessions record their lines only when the relay keeps transcripts.
    let recording = config.transcripts.is_some();
    config.upstream.transcript = recording;
    for r in &mut config.routes {
        r.upstream.transcript = recording;
    }
    crate::spool::create(&config.spool_dir)?;
    let plain = TcpListener::bind(config.listen).await?;
    let implicit = match (config.listen_tls, &config.tls) {
        (Some(a), Some(_)) => Some(TcpListener::bind(a).await?),
        _ => None,
    };
    let queues = config.default_queue || config.routes.iter().any(|r| r.queue);
    let queue = match (&config.queue, queues) {
        (Some(q), true) => Some(crate::queue::store::Queue::open(&q.dir)?),
        (None, true) => {
            return Err(std::io::Error::other(
                "a route queues its mail, but no queue is configured",
            ));
        }
        _ => None,
    };
    let queue_shares_spool = queue
        .as_ref()
        .is_some_and(|q| q.links_from(&config.spool_dir));
    let metrics_listener = match config.metrics {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let addr = plain.local_addr()?;
    let tls_addr = match &implicit {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let shared = Arc::new(Shared {
        sessions: Semaphore::new(config.max_sessions),
        transcripts: Default::default(),
        per_ip: Default::default(),
        smtputf8: std::sync::Mutex::new(vec![None; config.routes.len() + 1]),
        eight_bit_mime: std::sync::Mutex::new(vec![None; config.routes.len() + 1]),
        binarymime: std::sync::Mutex::new(vec![None; config.routes.len() + 1]),
        queue,
        queue_shares_spool,
        wake: Arc::default(),
        metrics: Arc::default(),
        auth_guard: crate::auth_guard::AuthGuard::new(config.auth_limits),
        server_configs: Default::default(),
        pace: Arc::new(crate::pace::PaceConfig {
            command_timeout: config.command_timeout,
            data_timeout: config.data_timeout,
            line_timeout: config.line_timeout,
            min_data_rate: config.min_data_rate,
            session_deadline: config.session_deadline,
        }),
        pool: config
            .upstream_reuse
            .map(|s| Pool::new(s, config.routes.len() + 1)),
        spool_writers: SpoolWriters::start(&config.spool_dir)?,
        caps: config
            .route_ids()
            .map(|r| {
                config
                    .route_max_sessions(r)
                    .filter(|_| !config.route_queued(r))
                    .map(SessionCap::new)
            })
            .collect(),
        // Session numbers go on from the last run's transcripts, so that none is replaced.
        next_id: AtomicU64::new(
            config
                .transcripts
                .as_deref()
                .map_or(1, smtp_net::files::next_number),
        ),
        config,
    });
    warn_unverified(&shared.config);
    if shared.config.probe_routes {
        probe_routes(&shared).await;
    }
    let (shutdown, rx) = watch::channel(false);
    let handle_shared = shared.clone();
    let tasks = tokio::spawn(run(shared, plain, implicit, metrics_listener, rx));
    Ok(RelayHandle {
        shared: handle_shared,
        addr,
        metrics_addr,
        tls_addr,
        shutdown: Arc::new(shutdown),
        tasks: Arc::new(std::sync::Mutex::new(Some(tasks))),
    })
}

/// The relay's tasks until shutdown: the listeners, the spool sweeper, and as configured the
/// queue's scheduler, the metrics endpoint and the tender of kept upstream sessions.
async fn run(
    shared: Arc<Shared>,
    plain: TcpListener,
    implicit: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    rx: watch::Receiver<bool>,
) {
    let mut set = JoinSet::new();
    set.spawn(sweep_spool(
        shared.config.spool_dir.clone(),
        shared.config.retention,
        rx.clone(),
    ));
    set.spawn(accept_loop(
        shared.clone(),
        plain,
        Transport::Plain,
        rx.clone(),
    ));
    if let (Some(queue), Some(settings)) = (&shared.queue, &shared.config.queue) {
        set.spawn(scheduler(&shared, queue, settings).run(rx.clone()));
    }
    if let Some(listener) = metrics_listener {
        set.spawn(crate::metrics::serve(
            listener,
            metrics(&shared),
            rx.clone(),
        ));
    }
    if shared.pool.is_some() {
        set.spawn(tend_pool(shared.clone(), rx.clone()));
    }
    if let Some(l) = implicit {
        set.spawn(accept_loop(shared, l, Transport::Tls, rx));
    }
    while set.join_next().await.is_some() {}
}

/// A warning at start for each upstream whose certificate is never checked.
fn warn_unverified(config: &RelayConfig) {
    for r in config.route_ids() {
        let up = config.route_upstream(r);
        if up.tls_policy == crate::upstream_tls::TlsPolicy::Encrypt {
            tracing::warn!(upstream = %up.name, at = %up.config_at, "tls_policy = \"encrypt\": this upstream's certificate is never verified; anyone in the path can impersonate it and read the mail (use \"verify\" or \"fingerprint\")");
        }
    }
}

/// Store and forward's delivery scheduler, for the relay's queue and routes.
fn scheduler(
    shared: &Arc<Shared>,
    queue: &crate::queue::store::Queue,
    settings: &QueueSettings,
) -> crate::queue::deliver::Scheduler {
    crate::queue::deliver::Scheduler {
        queue: queue.clone(),
        routes: Arc::new(QueueRoutes {
            config: shared.config.clone(),
            secrets: settings.secrets.clone(),
            limits: settings.route_limits.clone(),
        }),
        retry: settings.retry,
        concurrency: settings.concurrency,
        tick: settings.tick,
        hostname: shared.config.hostname.clone(),
        wake: shared.wake.clone(),
        metrics: Some(shared.metrics.clone()),
    }
}

/// The metrics page: the counters, and the queue's length and oldest message's age.
fn metrics(shared: &Arc<Shared>) -> Arc<dyn Fn() -> String + Send + Sync> {
    let s = shared.clone();
    Arc::new(move || {
        // From the queue's index in memory: a scrape reads no record from the disk.
        let queue = s.queue.as_ref().map(|q| {
            let (count, oldest) = q.summary();
            let age = oldest
                .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            let get =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            crate::metrics::QueueFigures {
                messages: count,
                oldest_seconds: age,
                commits: get(&q.commits.batches),
                journal_syncs: get(&q.commits.journal_syncs),
            }
        });
        s.metrics.render(queue)
    })
}

/// Sweeps the spool at start and then every `retention.interval`, until shutdown.
async fn sweep_spool(
    dir: PathBuf,
    rules: crate::spool::Retention,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (d, r) = (dir.clone(), rules);
        let now = std::time::SystemTime::now();
        match tokio::task::spawn_blocking(move || crate::spool::sweep(&d, &r, now)).await {
            Ok(Ok(swept)) if swept.removed > 0 => {
                tracing::info!(
                    removed = swept.removed,
                    freed = swept.freed,
                    kept = swept.kept,
                    "spool swept"
                );
            }
            Ok(Err(e)) => tracing::warn!(error = %e, dir = %dir.display(), "spool sweep failed"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(rules.interval) => {}
            _ = smtp_net::stopped(&mut shutdown) => return,
        }
    }
}

/// Closes (QUIT) the kept upstream sessions as they pass their idle limit, and all of them at
/// shutdown.
async fn tend_pool(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(pool) = &shared.pool else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let expired = pool.expired(tokio::time::Instant::now());
                futures_util::future::join_all(expired.into_iter().map(Upstream::quit)).await;
            }
            _ = smtp_net::stopped(&mut shutdown) => break,
        }
    }
    futures_util::future::join_all(pool.drain().into_iter().map(Upstream::quit)).await;
}

/// Serves the clients of one listener until shutdown.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: Transport,
    shutdown: watch::Receiver<bool>,
) {
    smtp_net::accept_loop(listener, shutdown, move |tcp, peer, stop| {
        client(shared.clone(), tcp, peer, kind, stop)
    })
    .await;
}

async fn client(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Transport,
    shutdown: watch::Receiver<bool>,
) {
    // Behind a load balancer, the client is who its PROXY header says.
    let (io, peer): (Box<dyn Io>, SocketAddr) = match &shared.config.proxy_protocol {
        None => (Box::new(tcp), peer),
        Some(pp) => match Box::pin(proxied(&shared, pp, tcp, peer, kind)).await {
            Some(found) => found,
            None => return,
        },
    };
    // Backpressure: a permit per session, moved into the task (mini-redis).
    let slot = ip_slot(&shared, peer.ip());
    let per_ip_refused = slot.is_none();
    let permit = slot
        .as_ref()
        .and_then(|_| shared.sessions.try_acquire().ok());
    let (Some(slot), Some(_permit)) = (slot, permit) else {
        Box::pin(refuse(&shared, io, peer, kind, per_ip_refused)).await;
        return;
    };
    // Boxed: the task holds a pointer, not a second copy of the session in its state.
    let mut session = Box::new(Session::new(shared.clone(), slot, peer, kind));
    crate::metrics::Metrics::inc(&shared.metrics.sessions_opened);
    crate::metrics::Metrics::inc(&shared.metrics.sessions_open);
    session.note(format!("* client {peer} ({kind:?} listener)"));
    tracing::info!(session = session.id, peer = %peer, tls = session.tls, "session opened");
    let io: Option<Box<dyn Io>> = match kind {
        Transport::Plain => Some(io),
        Transport::Tls => Box::pin(session.accept_tls(io, "implicit TLS")).await,
    };
    let result = match io {
        Some(io) => smtp_net::server::serve(&mut *session, io, shutdown, DRIVE).await,
        None => Ok(()),
    };
    Box::pin(session.finish(result)).await;
}

/// Read buffer sizes: in command mode, inside DATA.
const READ_SMALL: usize = 512;
const READ_LARGE: usize = 64 * 1024;

/// How a client session is driven: small reads while commands come (an idle session costs
/// little: 10,000 of them are held in a few tens of MB), large inside DATA (fewer reads,
/// fewer wake-ups); a write to the client may take a minute.
const DRIVE: smtp_net::server::DriveConfig = smtp_net::server::DriveConfig {
    write_timeout: Duration::from_secs(60),
    read_small: READ_SMALL,
    read_large: READ_LARGE,
};

async fn write(io: &mut Box<dyn Io>, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    smtp_net::write_all(io, bytes, Duration::from_secs(60)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_decodes_foxmail_gb2312() {
        let m = b"From: =?GB2312?B?s8zBog==?= <alice@163.com>\r\nSubject: =?GB2312?B?xOO6ww==?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"GB2312\"\r\nContent-Transfer-Encoding: base64\r\n\r\nysC956OswLTX1CBGb3htYWlsoaM=\r\n";
        let s = summarize(m);
        assert_eq!(s.subject.as_deref(), Some("你好"));
        assert_eq!(s.from.as_deref(), Some("程立 <alice@163.com>"));
        assert_eq!(s.text.as_deref(), Some("世界，来自 Foxmail。"));
    }

    /// A raw 8-bit GBK Subject (no RFC 2047 word), as older Chinese clients send it: decoded
    /// as the body's charset says, or as GB18030 when nothing says; UTF-8 stays as it is.
    #[test]
    fn summary_decodes_a_raw_gbk_subject() {
        let (subject, _, _) = encoding_rs::GBK.encode("测试邮件 你好");
        let (body, _, _) = encoding_rs::GBK.encode("正文");
        for content_type in [
            &b"Content-Type: text/plain; charset=GBK\r\n"[..],
            b"Content-Type: text/plain; charset=\"gb2312\"\r\n",
            b"",
        ] {
            let mut m = b"From: a@163.com\r\nSubject: ".to_vec();
            m.extend_from_slice(&subject);
            m.extend_from_slice(b"\r\n");
            m.extend_from_slice(content_type);
            m.extend_from_slice(b"\r\n");
            m.extend_from_slice(&body);
            m.extend_from_slice(b"\r\n");
            let s = summarize(&m);
            assert_eq!(
                s.subject.as_deref(),
                Some("测试邮件 你好"),
                "{content_type:?}"
            );
            if !content_type.is_empty() {
                assert_eq!(s.text.as_deref().map(str::trim), Some("正文"));
            }
        }
        let utf8 = "Subject: 测试 UTF-8\r\n\r\nbody\r\n".as_bytes();
        assert_eq!(summarize(utf8).subject.as_deref(), Some("测试 UTF-8"));
    }

    #[test]
    fn summary_of_garbage_is_empty_not_a_panic() {
        assert_eq!(summarize(b"").subject, None);
        let _ = summarize(&[0xff; 100]);
    }

    #[test]
    fn transcripts_are_bounded() {
        let mut t = Vec::new();
        for i in 0..10 {
            push_bounded(&mut t, format!("C: NOOP {i}"), 3);
        }
        assert_eq!(
            t,
            [
                "C: NOOP 0",
                "C: NOOP 1",
                "C: NOOP 2",
                "* transcript stops here: more than 3 lines (the session went on)"
            ]
        );
    }

    #[test]
    fn only_routes_on_the_relays_own_credentials_share_upstream_sessions() {
        let mut c = RelayConfig::new(
            "relay.test",
            "127.0.0.1:0".parse().unwrap(),
            "spool".into(),
            crate::load::plain_server("127.0.0.1:25".parse().unwrap()),
        );
        c.upstream_reuse = Some(ReuseSettings {
            idle: Duration::from_secs(5),
            max_messages: 10,
            max_idle: 4,
        });
        // Pass-through: each session logs in as its client; never shared.
        assert!(!c.shares_sessions(RouteId::DEFAULT));
        c.auth = AuthMode::TrustedNetworks(vec![("127.0.0.0".parse().unwrap(), 8)]);
        assert!(c.shares_sessions(RouteId::DEFAULT));
        c.default_queue = true;
        assert!(
            !c.shares_sessions(RouteId::DEFAULT),
            "the queue has no live session"
        );
        c.default_queue = false;
        c.upstream_reuse = None;
        assert!(!c.shares_sessions(RouteId::DEFAULT));
    }

    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("127.0.0.5"), ip("127.0.0.0"), 8));
        assert!(!in_network(ip("128.0.0.1"), ip("127.0.0.0"), 8));
        assert!(in_network(ip("::1"), ip("::1"), 128));
        assert!(!in_network(ip("::1"), ip("127.0.0.1"), 8));
        assert!(in_network(ip("10.1.2.3"), ip("0.0.0.0"), 0));
    }
}
