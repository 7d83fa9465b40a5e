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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use smtp_net::Io;

use crate::route::{Route, RouteId};
use crate::upstream::{Upstream, UpstreamConfig, UpstreamError};

/// How clients prove who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// The client's credentials are replayed to the upstream at AUTH time; its verdict is
    /// the relay's answer (235, or e.g. `535 Error: authentication failed` verbatim).
    Passthrough,
    /// No AUTH; only clients from these networks may relay (address, prefix length).
    TrustedNetworks(Vec<(IpAddr, u8)>),
    /// Clients authenticate against the relay's users file; the relay authenticates upstream
    /// with the upstream's configured credentials. An upstream refusal of those is the
    /// operator's problem: `454 4.7.0` to the client and an error in the log.
    Users(Arc<crate::users::Users>),
}

/// The relay's own settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub hostname: String,
    /// Plain listener with STARTTLS.
    pub listen: SocketAddr,
    /// Implicit-TLS listener.
    pub listen_tls: Option<SocketAddr>,
    /// The relay's certificate for its listeners; `None`: no STARTTLS, no TLS listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The file mail clients should trust for that certificate (`up`'s CA), named in the
    /// hint logged when a client refuses the certificate.
    pub client_trust_file: Option<PathBuf>,
    /// Where every message is kept as received (`<id>.eml`, `<id>.json`).
    pub spool_dir: PathBuf,
    /// The default route: every recipient no route claims goes there; bounces too.
    pub upstream: UpstreamConfig,
    /// Recipient domains to other upstreams (see [`crate::route`]).
    pub routes: Vec<Route>,
    /// Connect to each route at start (EHLO, no AUTH) to learn what it offers (SMTPUTF8);
    /// every later upstream session refreshes it.
    pub probe_routes: bool,
    /// Store and forward for the default route (other routes say it in [`Route::queue`]).
    pub default_queue: bool,
    /// The queue and its delivery settings; needed when any route queues.
    pub queue: Option<QueueSettings>,
    /// Serve the counters in the Prometheus text format here (`GET /metrics`).
    pub metrics: Option<SocketAddr>,
    pub auth: AuthMode,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// RCPT commands per transaction, accepted or not; more get `452 4.5.3`, never the upstream.
    pub max_rcpt_commands: usize,
    pub max_sessions: usize,
    /// Sessions at once from one IP address; more get `421 4.7.0`.
    pub max_sessions_per_ip: usize,
    /// A failed AUTH is answered after this pause (slows down password guessing).
    pub auth_failure_delay: Duration,
    /// Failed AUTHs counted across sessions (pass-through mode), refused locally beyond.
    pub auth_limits: crate::auth_guard::AuthLimits,
    /// Idle time allowed while waiting for a command (RFC 5321 4.5.3.2.7: at least 5 min).
    pub command_timeout: Duration,
    /// Idle time allowed inside DATA between two reads.
    pub data_timeout: Duration,
    /// Time allowed to complete one command line once its first octet came, however the
    /// octets trickle in (the idle timeout alone is reset by every byte); `421 4.4.2` beyond.
    pub line_timeout: Duration,
    /// Octets per second a client must keep up inside DATA, as Postfix's
    /// `smtpd_min_data_rate`: every read earns `octets / rate` seconds of time, the time
    /// spent waiting is taken off, and the balance (at most `data_timeout`) running out
    /// ends the session with `421 4.4.2`. 0 turns it off.
    pub min_data_rate: u64,
    /// A whole session may not last longer than this (slow-loris protection).
    pub session_deadline: Duration,
    pub bare_line_endings: BareLineEnding,
    /// How long and how much the spool keeps.
    pub retention: crate::spool::Retention,
    /// Record two-hop session transcripts (client and upstream lines interleaved, AUTH
    /// payloads redacted): kept in memory for the handle (the last 1000) and written to this
    /// directory, one file per session.
    pub transcripts: Option<PathBuf>,
}

impl RelayConfig {
    /// The table's route `r`, or `None` for the default route.
    fn table_route(&self, r: RouteId) -> Option<&Route> {
        r.table_index().map(|i| &self.routes[i])
    }

    /// The upstream settings of route `r`.
    fn route_upstream(&self, r: RouteId) -> &UpstreamConfig {
        self.table_route(r)
            .map_or(&self.upstream, |route| &route.upstream)
    }

    /// Route `r`'s name in transcripts, records and the queue: `default` or its label.
    fn route_label(&self, r: RouteId) -> &str {
        self.table_route(r).map_or("default", |route| &route.label)
    }

    /// Whether route `r` stores and forwards.
    fn route_queued(&self, r: RouteId) -> bool {
        self.table_route(r)
            .map_or(self.default_queue, |route| route.queue)
    }

    /// Whether route `r` gets the client's own credentials (pass-through mode).
    fn uses_client_credentials(&self, r: RouteId) -> bool {
        matches!(self.auth, AuthMode::Passthrough)
            && self.table_route(r).is_none_or(|route| route.passthrough)
    }

    /// Every route, the default first.
    fn route_ids(&self) -> impl Iterator<Item = RouteId> + use<> {
        RouteId::all(self.routes.len())
    }

    /// A relay with the default limits (`relay.example.toml` documents them): pass-through
    /// AUTH, no TLS of its own, no implicit-TLS listener, no transcripts.
    pub fn new(
        hostname: &str,
        listen: SocketAddr,
        spool_dir: PathBuf,
        upstream: UpstreamConfig,
    ) -> RelayConfig {
        RelayConfig {
            hostname: hostname.to_string(),
            listen,
            listen_tls: None,
            tls: None,
            client_trust_file: None,
            spool_dir,
            upstream,
            routes: Vec::new(),
            probe_routes: true,
            default_queue: false,
            queue: None,
            metrics: None,
            auth: AuthMode::Passthrough,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_rcpt_commands: 200,
            max_sessions: 200,
            max_sessions_per_ip: 20,
            auth_failure_delay: Duration::from_secs(1),
            auth_limits: crate::auth_guard::AuthLimits::default(),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            line_timeout: Duration::from_secs(60),
            min_data_rate: 500,
            session_deadline: Duration::from_secs(3600),
            bare_line_endings: BareLineEnding::Reject,
            retention: crate::spool::Retention::default(),
            transcripts: None,
        }
    }
}

/// Store-and-forward settings.
#[derive(Clone)]
pub struct QueueSettings {
    /// The queue directory (apart from the live spool).
    pub dir: PathBuf,
    pub retry: crate::queue::deliver::Retry,
    /// Deliveries at once.
    pub concurrency: usize,
    /// How often the queue is looked at when nothing wakes the scheduler.
    pub tick: Duration,
    /// Credentials to deliver a sender's mail with, looked up by the client's AUTH user
    /// (or the sender): from the relay's secrets store, never from the queue.
    pub secrets: crate::queue::deliver::Secrets,
    /// Per route (`default` or a route's label): its concurrency and rate.
    pub route_limits: std::collections::HashMap<String, crate::queue::deliver::RouteLimits>,
}

impl std::fmt::Debug for QueueSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSettings")
            .field("dir", &self.dir)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// The routes as the scheduler sees them: each label's upstream, with the sender's
/// credentials from the secrets store.
struct QueueRoutes {
    config: RelayConfig,
    secrets: crate::queue::deliver::Secrets,
    limits: std::collections::HashMap<String, crate::queue::deliver::RouteLimits>,
}

impl crate::queue::deliver::Routes for QueueRoutes {
    fn upstream(&self, rec: &crate::queue::store::Queued) -> Option<UpstreamConfig> {
        let mut up = if rec.route == "default" {
            self.config.upstream.clone()
        } else {
            self.config
                .routes
                .iter()
                .find(|r| r.label == rec.route)?
                .upstream
                .clone()
        };
        let who = rec.auth_user.clone().unwrap_or_else(|| {
            rec.mail_from
                .trim_matches(|c| c == '<' || c == '>')
                .to_string()
        });
        if let Some(c) = (self.secrets)(&who) {
            up.credentials = Some(c);
        }
        Some(up)
    }

    fn limits(&self, route: &str) -> crate::queue::deliver::RouteLimits {
        self.limits.get(route).copied().unwrap_or_default()
    }

    fn bounces(&self, sender: &str) -> Option<UpstreamConfig> {
        let mut up = self.config.upstream.clone();
        if let Some(c) = (self.secrets)(sender) {
            up.credentials = Some(c);
        }
        Some(up)
    }
}

/// A running relay.
pub struct RelayHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
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
    per_ip: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    next_id: AtomicU64,
    /// Per route: whether its upstream offered SMTPUTF8 when last seen (`None`: not yet).
    smtputf8: std::sync::Mutex<Vec<Option<bool>>>,
    /// Per route: whether its upstream offered 8BITMIME when last seen.
    eight_bit_mime: std::sync::Mutex<Vec<Option<bool>>>,
    /// Store and forward: the queue, and the scheduler's bell.
    queue: Option<crate::queue::store::Queue>,
    wake: Arc<tokio::sync::Notify>,
    metrics: Arc<crate::metrics::Metrics>,
    auth_guard: crate::auth_guard::AuthGuard,
}

impl Shared {
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
        let result =
            tokio::time::timeout(Duration::from_secs(10), Upstream::connect(&config)).await;
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

/// A session counted against its IP address while it lives.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<IpSlot> {
        let mut map = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= shared.config.max_sessions_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
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
        queue,
        wake: Arc::default(),
        metrics: Arc::default(),
        auth_guard: crate::auth_guard::AuthGuard::new(config.auth_limits),
        // Session numbers go on from the last run's transcripts, so that none is replaced.
        next_id: AtomicU64::new(
            config
                .transcripts
                .as_deref()
                .map_or(1, smtp_net::files::next_number),
        ),
        config,
    });
    for r in shared.config.route_ids() {
        let up = shared.config.route_upstream(r);
        if up.tls_policy == crate::upstream_tls::TlsPolicy::Encrypt {
            tracing::warn!(upstream = %up.name, at = %up.config_at, "tls_policy = \"encrypt\": this upstream's certificate is never verified; anyone in the path can impersonate it and read the mail (use \"verify\" or \"fingerprint\")");
        }
    }
    if shared.config.probe_routes {
        probe_routes(&shared).await;
    }
    let (shutdown, rx) = watch::channel(false);
    let handle_shared = shared.clone();
    let tasks = tokio::spawn(async move {
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
            let scheduler = crate::queue::deliver::Scheduler {
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
            };
            set.spawn(scheduler.run(rx.clone()));
        }
        if let Some(listener) = metrics_listener {
            let s = shared.clone();
            let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
                let queue = s.queue.as_ref().map(|q| {
                    let records = q.list().map(|(r, _)| r).unwrap_or_default();
                    let oldest = records
                        .iter()
                        .filter_map(|r| chrono::DateTime::parse_from_rfc3339(&r.received_at).ok())
                        .min()
                        .map(|t| {
                            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                                .num_milliseconds()
                                .max(0) as f64
                                / 1000.0
                        })
                        .unwrap_or(0.0);
                    (records.len() as u64, oldest)
                });
                s.metrics.render(queue)
            });
            set.spawn(crate::metrics::serve(listener, render, rx.clone()));
        }
        if let Some(l) = implicit {
            set.spawn(accept_loop(shared, l, Transport::Tls, rx));
        }
        while set.join_next().await.is_some() {}
    });
    Ok(RelayHandle {
        shared: handle_shared,
        addr,
        metrics_addr,
        tls_addr,
        shutdown,
        tasks: std::sync::Mutex::new(Some(tasks)),
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

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: Transport,
    shutdown: watch::Receiver<bool>,
) {
    let rx = shutdown.clone();
    smtp_net::accept_loop(listener, shutdown, move |tcp, peer| {
        client(shared.clone(), tcp, peer, kind, rx.clone())
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
    let cfg = &shared.config;
    // Backpressure: a permit per session, moved into the task (mini-redis).
    let slot = IpSlot::take(&shared, peer.ip());
    let per_ip_refused = slot.is_none();
    let permit = slot
        .as_ref()
        .and_then(|_| shared.sessions.try_acquire().ok());
    let (Some(slot), Some(_permit)) = (slot, permit) else {
        let (limit, text, max) = if per_ip_refused {
            (
                "max_sessions_per_ip",
                "Too many connections from your address, try again later",
                cfg.max_sessions_per_ip,
            )
        } else {
            (
                "max_sessions",
                "Too many connections, try again later",
                cfg.max_sessions,
            )
        };
        tracing::info!(peer = %peer, limit, max, tls = kind == Transport::Tls, "session refused: too many connections");
        shared.metrics.session_refused(limit);
        let reply = Reply::new(421, (4, 7, 0), format!("{} {text}", cfg.hostname));
        // On the implicit-TLS listener the reason is said inside TLS: a bare close would
        // read as a broken handshake to every client.
        let io: Option<Box<dyn Io>> = match kind {
            Transport::Plain => Some(Box::new(tcp)),
            Transport::Tls => match &cfg.tls {
                Some(tls) => crate::client_tls::accept(tls.clone(), tcp, None).await.ok(),
                None => None,
            },
        };
        if let Some(mut io) = io {
            let _ = write(&mut io, &reply.to_bytes()).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), io.shutdown()).await;
        }
        return;
    };
    let loopback = peer.ip().is_loopback();
    let trusted = match &cfg.auth {
        AuthMode::Passthrough | AuthMode::Users(_) => false,
        AuthMode::TrustedNetworks(nets) => nets
            .iter()
            .any(|(net, len)| in_network(peer.ip(), *net, *len)),
    };
    let server_config = ServerConfig {
        hostname: cfg.hostname.clone(),
        greeting: "ESMTP smtp-relay".into(),
        max_message_size: cfg.max_message_size,
        max_recipients: cfg.max_recipients,
        max_rcpt_commands: cfg.max_rcpt_commands,
        starttls: cfg.tls.is_some(),
        auth_mechanisms: match cfg.auth {
            AuthMode::Passthrough | AuthMode::Users(_) => vec![Mechanism::Plain, Mechanism::Login],
            AuthMode::TrustedNetworks(_) => Vec::new(),
        },
        // AUTH in clear only from loopback (a local mail client on the developer's machine).
        auth_requires_tls: !loopback,
        auth_required: !trusted,
        // RFC 6531 3.1: SMTPUTF8 comes with 8BITMIME.
        smtputf8: shared.smtputf8() && shared.eight_bit_mime(),
        eight_bit_mime: shared.eight_bit_mime(),
        ..ServerConfig::default()
    };
    let mut session = Session {
        ip_slot: Some(slot),
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        shared: shared.clone(),
        conn: ServerConnection::new(
            server_config,
            kind,
            LineEndings::CrlfOnly,
            cfg.bare_line_endings,
        ),
        peer,
        tls: kind == Transport::Tls,
        credentials: None,
        legs: Legs(cfg.route_ids().map(Leg::new).collect()),
        transaction: None,
        prefetched: Default::default(),
        poisoned: None,
        spool: None,
        started: Instant::now(),
        transcript: cfg.transcripts.as_ref().map(|_| Vec::new()),
        lines_seen: 0,
        dsn_tasks: Vec::new(),
        spool_write: None,
        queue_file: None,
    };
    crate::metrics::Metrics::inc(&shared.metrics.sessions_opened);
    crate::metrics::Metrics::inc(&shared.metrics.sessions_open);
    session.note(format!("* client {peer} ({kind:?} listener)"));
    tracing::info!(session = session.id, peer = %peer, tls = session.tls, "session opened");
    let result = match kind {
        Transport::Plain => session.run(Box::new(tcp), shutdown).await,
        Transport::Tls => match Box::pin(session.accept_tls(tcp, "implicit TLS")).await {
            Some(stream) => session.run(stream, shutdown).await,
            None => Ok(()),
        },
    };
    // The client's connection is closed (`run` owned it): its address may connect again.
    session.ip_slot = None;
    if let Err(e) = &result {
        tracing::info!(session = session.id, error = %e, "client connection error");
    }
    Box::pin(session.abort_transaction()).await;
    session.spooled().await;
    for leg in session.legs.iter_mut() {
        if let Some(up) = leg.up.take() {
            Box::pin(up.quit()).await;
        }
    }
    // Bounces in flight are bounded by the upstream timeouts; the session waits for them so
    // that a shutdown does not cut them off.
    for task in session.dsn_tasks.drain(..) {
        let _ = task.await;
    }
    shared
        .metrics
        .sessions_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        session = session.id,
        seconds = session.started.elapsed().as_secs_f64(),
        "session closed"
    );
    session.note("* closed".into());
    if let (Some(lines), Some(dir)) = (session.transcript.take(), &shared.config.transcripts) {
        let text = lines.join("\n") + "\n";
        let written = smtp_net::files::write_new_async(
            dir.clone(),
            format!("{:06}", session.id),
            "log",
            text.into_bytes(),
        )
        .await;
        if let Err(e) = written {
            tracing::warn!(session = session.id, dir = %dir.display(), error = %e, "transcript not written");
        }
        let mut kept = shared.transcripts.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= 1000 {
            kept.pop_front();
        }
        kept.push_back((session.id, lines));
    }
}

/// Message content to the spool and to every upstream taking the message, at once. A
/// failing upstream is dropped here and poisons the transaction (the end of data answers
/// 4xx and no upstream gets an end of data); a failing spool write drops the spool copy (the
/// message still goes on; the log says it was not kept).
async fn stream_content(
    spool: &mut Option<Spool>,
    queue_file: &mut Option<QueueFile>,
    legs: &mut Legs,
    poisoned: &mut Option<Reply>,
    session: u64,
    data: &[u8],
) {
    if let Some(q) = queue_file.as_mut()
        && q.error.is_none()
        && let Err(e) = {
            q.content.size += data.len() as u64;
            q.content.take(data).await
        }
    {
        q.error = Some(e.to_string());
    }
    let to_spool = async {
        if let Some(s) = spool.as_mut() {
            s.size += data.len() as u64;
            if s.head.len() < SUMMARY_READ {
                let take = (SUMMARY_READ - s.head.len()).min(data.len());
                s.head.extend_from_slice(&data[..take]);
            }
            if let Err(e) = s.take(data).await
                && let Some(s) = spool.take()
            {
                tracing::error!(session, id = %s.id, path = %s.path.display(), error = %e, "cannot write the spool: the message goes on, but is not kept");
                if s.file.is_some() {
                    let _ = tokio::fs::remove_file(&s.path).await;
                }
            }
        }
    };
    // RFC 6152 3: no 8-bit octet to an upstream that did not offer 8BITMIME. Such content is
    // refused as a whole (554 5.6.3) and that upstream gets none of it.
    // The scan of the chunk only when some upstream taking it lacks 8BITMIME (rare).
    let seven_bit_leg = legs.iter().any(|l| {
        l.sending
            && l.up
                .as_ref()
                .is_some_and(|up| !up.capabilities().eightbitmime())
    });
    if seven_bit_leg && data.iter().any(|b| *b >= 0x80) {
        for leg in legs.iter_mut().filter(|l| l.sending) {
            let Some(up) = leg.up.take_if(|up| !up.capabilities().eightbitmime()) else {
                continue;
            };
            let reply = Reply::new(
                554,
                (5, 6, 3),
                format!(
                    "message has 8-bit content and upstream {} does not accept it (no 8BITMIME); send it 7-bit (base64 or quoted-printable)",
                    up.name()
                ),
            );
            tracing::info!(session, upstream = %up.name(), "8-bit content refused: the upstream offers no 8BITMIME");
            poisoned.get_or_insert(reply);
            leg.sending = false;
            leg.mail_sent = false;
            up.abort().await;
        }
    }
    let to_upstreams = futures_util::future::join_all(
        legs.iter_mut()
            .filter(|l| l.sending)
            .filter_map(|l| Some((l.route, l.up.as_mut()?)))
            .map(|(r, up)| async move { (r, up.body(data).await) }),
    );
    let ((), sent) = tokio::join!(to_spool, to_upstreams);
    for (r, result) in sent {
        if let Err(e) = result {
            tracing::warn!(session, upstream = %e.upstream(), error = %e, "upstream failure");
            poisoned.get_or_insert(e.client_reply());
            let leg = &mut legs[r];
            leg.sending = false;
            leg.mail_sent = false;
            leg.failure = Some(e.client_reply());
            if let Some(up) = leg.up.take() {
                up.abort().await;
            }
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The message of the transaction in progress, on its way to the spool: kept in memory up
/// to `SPOOL_BUFFER` octets and written with its record in one go at the end (one trip to
/// the blocking pool instead of one per write), streamed to its file beyond that.
struct Spool {
    id: String,
    path: PathBuf,
    /// Opened once the message outgrew `pending`.
    file: Option<tokio::fs::File>,
    pending: Vec<u8>,
    size: u64,
    /// The message's first `SUMMARY_READ` octets, for its summary and a bounce's headers
    /// (not read back from the file).
    head: Vec<u8>,
}

/// One upstream session of a client session, for one route, and what it did in the
/// transaction in progress.
/// How much of a message the spool holds in memory before it writes: a message this small
/// is written whole at the end, a larger one in pieces this large (each write is a trip to
/// the blocking pool: 64 KiB pieces made a 1 MB message sixteen of them).
const SPOOL_BUFFER: usize = 128 * 1024;

impl Spool {
    fn new(id: String, path: PathBuf) -> Spool {
        Spool {
            id,
            path,
            file: None,
            pending: Vec::new(),
            size: 0,
            head: Vec::new(),
        }
    }

    /// More of the message.
    async fn take(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(data);
        if self.pending.len() < SPOOL_BUFFER {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(crate::spool::create_private(&self.path).await?);
        }
        let file = self.file.as_mut().expect("opened");
        file.write_all(&self.pending).await?;
        self.pending.clear();
        Ok(())
    }

    /// A writer whose file is created now.
    async fn create(id: String, path: PathBuf) -> std::io::Result<Spool> {
        let file = crate::spool::create_private(&path).await?;
        Ok(Spool {
            file: Some(file),
            ..Spool::new(id, path)
        })
    }

    /// Writes what is left and flushes (the file exists afterwards).
    async fn finish(mut self) -> std::io::Result<()> {
        let mut file = match self.file.take() {
            Some(f) => f,
            None => crate::spool::create_private(&self.path).await?,
        };
        file.write_all(&self.pending).await?;
        file.flush().await
    }

    /// Writes what is left of the message and its record.
    async fn keep(self, record: Vec<u8>) -> std::io::Result<()> {
        let json = self.path.with_extension("json");
        match self.file {
            None => {
                let (path, pending) = (self.path, self.pending);
                tokio::task::spawn_blocking(move || {
                    crate::spool::write_private(&path, &pending)?;
                    crate::spool::write_private(&json, &record)
                })
                .await
                .map_err(std::io::Error::other)?
            }
            Some(mut file) => {
                file.write_all(&self.pending).await?;
                file.flush().await?;
                drop(file);
                tokio::task::spawn_blocking(move || crate::spool::write_private(&json, &record))
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }
}

/// A message's content being written for the queue.
struct QueueFile {
    /// The same buffered writer as the spool copy's (its file opened at once, so that a
    /// queue that cannot be written is known at DATA).
    content: Spool,
    /// The first write error (the message is then refused with 452 4.3.1).
    error: Option<String>,
}

struct Leg {
    route: RouteId,
    up: Option<Upstream>,
    /// The upstream is inside a transaction (MAIL accepted, no final reply yet): RSET it
    /// before the next MAIL.
    mail_sent: bool,
    /// Every RCPT sent in this transaction and the upstream's reply, for the spool record.
    rcpt_replies: Vec<(String, String)>,
    /// The recipients this upstream accepted in this transaction, as the client was told.
    accepted: Vec<(ForwardPath, RcptParams)>,
    /// How many RCPTs the upstream accepted in this transaction, including any sent ahead
    /// (pipelining) that the client's session then answered itself: when this differs from
    /// `accepted`, the envelope is replayed before DATA.
    upstream_ok: usize,
    /// It said 354: the message goes to it.
    sending: bool,
    /// Its verdict on the message: the reply to DATA when it refused, the final reply, or
    /// the relay's 4xx when the connection failed after recipients were accepted.
    outcome: Option<Reply>,
    /// The connection failed in this transaction: later RCPTs for this route get this.
    failure: Option<Reply>,
}

impl Leg {
    fn new(route: RouteId) -> Leg {
        Leg {
            route,
            up: None,
            mail_sent: false,
            rcpt_replies: Vec::new(),
            accepted: Vec::new(),
            upstream_ok: 0,
            sending: false,
            outcome: None,
            failure: None,
        }
    }

    /// Forgets the transaction (the connection stays).
    fn clear(&mut self) {
        self.rcpt_replies.clear();
        self.accepted.clear();
        self.upstream_ok = 0;
        self.sending = false;
        self.outcome = None;
        self.failure = None;
    }
}

/// A session's legs, one per route (the default first), indexed by [`RouteId`] only.
struct Legs(Vec<Leg>);

impl Legs {
    fn iter(&self) -> std::slice::Iter<'_, Leg> {
        self.0.iter()
    }

    fn iter_mut(&mut self) -> std::slice::IterMut<'_, Leg> {
        self.0.iter_mut()
    }
}

impl std::ops::Index<RouteId> for Legs {
    type Output = Leg;
    fn index(&self, r: RouteId) -> &Leg {
        &self.0[r.slot()]
    }
}

impl std::ops::IndexMut<RouteId> for Legs {
    fn index_mut(&mut self, r: RouteId) -> &mut Leg {
        &mut self.0[r.slot()]
    }
}

struct Session {
    /// Counts this session against its client's address while the client's connection is
    /// open: given back when the relay says goodbye or the connection ends, not after the
    /// cleanup behind it (upstream QUITs, the spool write), so that a client that reconnects
    /// at once is not refused for a connection it no longer has.
    ip_slot: Option<IpSlot>,
    id: u64,
    shared: Arc<Shared>,
    conn: ServerConnection,
    peer: SocketAddr,
    tls: bool,
    /// The client's credentials (pass-through mode), to open upstream sessions.
    credentials: Option<Credentials>,
    /// One per route, index 0 the default route (`RelayConfig::upstream`).
    legs: Legs,
    /// MAIL FROM of the transaction in progress, to open further routes at their first RCPT.
    transaction: Option<(ReversePath, MailParams)>,
    /// RCPT replies received ahead of the client's turn (its pipelined group forwarded as a
    /// group), in the client's order: the recipient, and its route and reply when it was sent.
    prefetched: std::collections::VecDeque<(ForwardPath, Option<(RouteId, Reply)>)>,
    /// An upstream with accepted recipients failed in this transaction: it can only end with
    /// this 4xx (nothing is delivered anywhere, the client tries again).
    poisoned: Option<Reply>,
    spool: Option<Spool>,
    started: Instant,
    /// Two-hop transcript lines, when recording.
    transcript: Option<Vec<String>>,
    lines_seen: u64,
    /// Bounces being sent; the session waits for them before it ends.
    dsn_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Store and forward: the message's content on its way to the queue (with its trace
    /// header), when a route of the transaction queues.
    queue_file: Option<QueueFile>,
    /// The last message's spool write, off the reply's path: awaited before the next one,
    /// before the reply to QUIT, and when the session ends (at most one in flight).
    spool_write: Option<tokio::task::JoinHandle<()>>,
}

enum Next {
    Continue,
    Close,
    StartTls,
}

impl Session {
    fn note(&mut self, line: String) {
        if let Some(t) = self.transcript.as_mut() {
            t.push(line);
        }
    }

    /// The client's line, if a new one was handled (redacted by the connection).
    fn note_client_line(&mut self) {
        if self.transcript.is_some() && self.conn.lines_handled() != self.lines_seen {
            self.lines_seen = self.conn.lines_handled();
            let line = format!("C: {}", self.conn.transcript_line());
            self.note(line);
        }
    }

    fn note_reply(&mut self, reply: &Reply) {
        if self.transcript.is_some() {
            for line in reply.to_string().split("\r\n") {
                self.note(format!("S: {line}"));
            }
        }
    }

    /// The upstreams' lines since the last call, indented and marked `U` (the default
    /// route) or `U[label]` (another route).
    fn note_upstream(&mut self) {
        if self.transcript.is_none() {
            return;
        }
        for r in self.shared.config.route_ids() {
            let Some(up) = self.legs[r].up.as_mut() else {
                continue;
            };
            let lines = up.take_transcript();
            let mark = match r {
                RouteId::DEFAULT => "U".to_string(),
                r => format!("U[{}]", self.shared.config.route_label(r)),
            };
            for line in lines {
                let marked = match line.split_once(": ") {
                    Some(("C", rest)) => format!("    {mark}> {rest}"),
                    Some(("S", rest)) => format!("    {mark}< {rest}"),
                    _ if r.is_default() => format!("    {line}"),
                    _ => format!("    {mark} {line}"),
                };
                self.note(marked);
            }
        }
    }

    /// The TLS handshake with the client (`how`: implicit TLS or STARTTLS); a failure is
    /// logged with its cause and hint and marked in the transcript, and ends the session.
    async fn accept_tls(&mut self, io: impl Io + 'static, how: &str) -> Option<Box<dyn Io>> {
        let cfg = &self.shared.config;
        let tls = cfg.tls.clone()?;
        match crate::client_tls::accept(tls, io, cfg.client_trust_file.as_deref()).await {
            Ok(stream) => {
                self.note(format!("* TLS with the client ({how}): handshake done"));
                Some(stream)
            }
            Err(f) => {
                tracing::warn!(
                    session = self.id,
                    peer = %self.peer,
                    how,
                    cause = %f.cause,
                    hint = %f.hint,
                    "TLS handshake with the client failed"
                );
                self.note(format!(
                    "* TLS with the client ({how}): handshake failed: {}",
                    f.cause
                ));
                None
            }
        }
    }

    async fn run(
        &mut self,
        mut io: Box<dyn Io>,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let mut out = Vec::new();
        let greeting = self.conn.greeting();
        self.note_reply(&greeting);
        greeting.encode(&mut out);
        // Small while commands come (an idle session costs little: 10,000 of them are held in
        // a few tens of MB), large inside DATA (fewer reads, fewer wake-ups).
        let mut buf: Vec<u8> = Vec::with_capacity(READ_SMALL);
        let cfg = &self.shared.config;
        let mut pace = crate::pace::Pace::new(
            crate::pace::PaceConfig {
                command_timeout: cfg.command_timeout,
                data_timeout: cfg.data_timeout,
                line_timeout: cfg.line_timeout,
                min_data_rate: cfg.min_data_rate,
                session_deadline: cfg.session_deadline,
            },
            self.started,
        );
        loop {
            let lines_before = self.conn.lines_handled();
            let next = self.process(&mut out).await;
            let in_data = self.conn.in_data();
            pace.processed(
                Instant::now(),
                in_data,
                self.conn.lines_handled() != lines_before,
                !in_data && self.conn.buffered() > 0,
            );
            match next {
                Next::Continue => {}
                Next::Close => {
                    self.ip_slot = None;
                    write(&mut io, &out).await?;
                    let _ = io.shutdown().await;
                    return Ok(());
                }
                Next::StartTls => {
                    write(&mut io, &out).await?;
                    out.clear();
                    let Some(stream) = Box::pin(self.accept_tls(io, "STARTTLS")).await else {
                        return Ok(());
                    };
                    io = stream;
                    self.tls = true;
                    self.conn.tls_established();
                    continue;
                }
            }
            write(&mut io, &out).await?;
            out.clear();
            let (wait, limit) = pace.wait(Instant::now(), in_data);
            if in_data {
                buf.reserve(READ_LARGE);
            } else if buf.capacity() > READ_SMALL {
                buf = Vec::with_capacity(READ_SMALL);
            }
            tokio::select! {
                read = tokio::time::timeout(wait, io.read_buf(&mut buf)) => match read {
                    Err(_) => {
                        let reply = match limit {
                            crate::pace::Limit::Line => self.conn.reply(ReplyKind::LineTooSlow),
                            crate::pace::Limit::DataRate => self.conn.reply(ReplyKind::DataTooSlow),
                            crate::pace::Limit::Idle | crate::pace::Limit::Session => {
                                self.conn.timeout_reply()
                            }
                        };
                        tracing::info!(
                            session = self.id,
                            peer = %self.peer,
                            limit = limit.name(),
                            waited = wait.as_secs_f64(),
                            "session ended: client too slow"
                        );
                        self.note_reply(&reply);
                        reply.encode(&mut out);
                        write(&mut io, &out).await?;
                        return Ok(());
                    }
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(n)) => {
                        pace.received(Instant::now(), n, in_data);
                        self.conn.receive(&buf);
                        buf.clear();
                    }
                    Ok(Err(e)) => return Err(e),
                },
                _ = smtp_net::stopped(&mut shutdown), if !self.conn.in_data() => {
                    self.conn.shutdown_reply().encode(&mut out);
                    write(&mut io, &out).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Handles every event the buffered input gives, writing replies to `out`.
    async fn process(&mut self, out: &mut Vec<u8>) -> Next {
        loop {
            let decision = match self.conn.next_event() {
                None => return Next::Continue,
                Some(Event::Reply(r)) => {
                    self.note_client_line();
                    self.note_reply(&r);
                    r.encode(out);
                    continue;
                }
                Some(Event::Close(r)) => {
                    self.note_client_line();
                    self.note_reply(&r);
                    // A client that saw the 221 finds its messages in the spool.
                    self.spooled().await;
                    r.encode(out);
                    return Next::Close;
                }
                Some(Event::StartTls { reply, .. }) => {
                    self.note_client_line();
                    self.note_reply(&reply);
                    reply.encode(out);
                    return Next::StartTls;
                }
                Some(Event::Content { data, .. }) => {
                    // Disjoint fields: `data` borrows the connection's buffer, no copy.
                    Box::pin(stream_content(
                        &mut self.spool,
                        &mut self.queue_file,
                        &mut self.legs,
                        &mut self.poisoned,
                        self.id,
                        data,
                    ))
                    .await;
                    continue;
                }
                Some(Event::Discard) => {
                    self.note("C: <message data: not relayed>".into());
                    Box::pin(self.abort_transaction()).await;
                    continue;
                }
                Some(Event::Decide(d)) => d,
            };
            self.note_client_line();
            if let Decision::Deliver(env) = &decision {
                let size = env.size;
                self.note(format!("C: <message data: {size} octets>"));
            }
            let verdict = self.decide(decision).await;
            self.note_upstream();
            self.conn.decide(verdict);
        }
    }

    /// Each decision's future is boxed: they hold upstream connects, TLS handshakes and
    /// fan-outs, and inline they would make every session's future (idle ones included)
    /// that large. Boxed, an idle session is a few KB.
    async fn decide(&mut self, d: Decision) -> Verdict {
        match d {
            Decision::Authenticate(c) => Box::pin(self.authenticate(c)).await,
            Decision::Mail { from, params } => Box::pin(self.mail(from, params)).await,
            Decision::Rcpt { to, params } => Box::pin(self.rcpt(to, params)).await,
            Decision::BeginData => Box::pin(self.begin_data()).await,
            Decision::Deliver(env) => Box::pin(self.deliver(env)).await,
        }
    }

    async fn authenticate(&mut self, c: Credentials) -> Verdict {
        let verdict = match &self.shared.config.auth {
            AuthMode::Users(users) => {
                let (users, user, secret) = (users.clone(), c.username.clone(), c.secret.clone());
                let ok = tokio::task::spawn_blocking(move || users.verify(&user, &secret))
                    .await
                    .unwrap_or(false);
                if ok {
                    Verdict::Accept
                } else {
                    Verdict::Reply(Reply::new(
                        535,
                        (5, 7, 8),
                        "Authentication credentials invalid",
                    ))
                }
            }
            _ => self.authenticate_upstream(c.clone()).await,
        };
        let code = match &verdict {
            Verdict::Accept => 235,
            Verdict::Reply(r) => r.code,
        };
        tracing::info!(session = self.id, user = %c.username, reply = code, "auth");
        if code / 100 == 5 {
            tokio::time::sleep(self.shared.config.auth_failure_delay).await;
        }
        verdict
    }

    async fn authenticate_upstream(&mut self, c: Credentials) -> Verdict {
        use crate::auth_guard::{Admission, Refusal};
        let mut config = self.shared.config.upstream.clone();
        let shared = self.shared.clone();
        let guard = &shared.auth_guard;
        let (ip, upstream) = (self.peer.ip(), config.name.clone());
        let (admission, wait) = guard.admit(Instant::now(), ip, &upstream, &c.username, &c.secret);
        if let Admission::Refuse(refusal) = admission {
            if refusal == Refusal::KnownBad {
                guard.failed(Instant::now(), ip, &upstream, &c.username, &c.secret, false);
            }
            self.shared.metrics.auth_refused(refusal.name());
            tracing::info!(
                session = self.id,
                peer = %self.peer,
                user = %c.username,
                reason = refusal.name(),
                "auth refused without asking the upstream"
            );
            let reply = refusal.reply(&upstream, wait);
            self.note(format!("    * not asked upstream: {}", refusal.name()));
            return Verdict::Reply(reply);
        }
        config.credentials = Some(c.clone());
        match Upstream::connect(&config).await {
            Err(e) if self.refuses_the_relay(&e) => {
                self.note(format!("    * upstream failure: {e}"));
                let reply = e.reply().cloned().unwrap_or_else(|| e.client_reply());
                guard.relay_refused(Instant::now(), &upstream, reply.clone());
                let pause = guard.limits().relay_refused_pause;
                Verdict::Reply(Refusal::RelayRefused(reply).reply(&upstream, pause))
            }
            Err(UpstreamError::AuthRejected { reply, .. })
                if reply.severity() == smtp_wire::Severity::Permanent =>
            {
                self.note(format!("    * upstream refused the credentials: {reply}"));
                guard.failed(Instant::now(), ip, &upstream, &c.username, &c.secret, true);
                Verdict::Reply(reply)
            }
            Ok(up) => {
                guard.succeeded(ip);
                self.shared.learn(RouteId::DEFAULT, up.capabilities());
                if let Some(old) = self.legs[RouteId::DEFAULT].up.replace(up) {
                    old.quit().await;
                }
                self.credentials = Some(c);
                // The upstream's own success words (163: `235 Authentication successful`).
                match self.legs[RouteId::DEFAULT]
                    .up
                    .as_ref()
                    .and_then(Upstream::auth_reply)
                {
                    Some(r) if r.code == 235 => Verdict::Reply(r.clone()),
                    _ => Verdict::Accept,
                }
            }
            // The upstream's own verdict, verbatim: the credentials are the client's.
            Err(UpstreamError::AuthRejected { reply, .. }) => {
                self.note(format!("    * upstream refused the credentials: {reply}"));
                Verdict::Reply(reply)
            }
            Err(e) => {
                self.note(format!("    * upstream failure: {e}"));
                Verdict::Reply(e.client_reply())
            }
        }
    }

    /// Whether `e` is an upstream refusing the relay's own address; if so it is logged as an
    /// error naming the upstream and counted in the metrics.
    fn refuses_the_relay(&self, e: &UpstreamError) -> bool {
        let refused = match e {
            UpstreamError::Refused {
                phase: crate::upstream::Phase::Greeting,
                reply,
                ..
            } => crate::auth_guard::refuses_the_relay(reply, true),
            UpstreamError::AuthRejected { reply, .. } | UpstreamError::Refused { reply, .. } => {
                crate::auth_guard::refuses_the_relay(reply, false)
            }
            _ => false,
        };
        if refused {
            crate::metrics::Metrics::inc(&self.shared.metrics.upstream_refused_relay);
            tracing::error!(
                session = self.id,
                upstream = e.upstream(),
                error = %e,
                "the upstream refuses the relay itself: no client can send through it until it lifts this"
            );
        }
        refused
    }

    /// The upstream session of route `r`: the one already open, or a new one (with the
    /// client's credentials or the route's own, see [`uses_client_credentials`]).
    async fn open_leg(&mut self, r: RouteId) -> Result<(), UpstreamError> {
        if self.legs[r].up.is_some() {
            return Ok(());
        }
        let cfg = &self.shared.config;
        let mut config = cfg.route_upstream(r).clone();
        if cfg.uses_client_credentials(r) {
            config.credentials = self.credentials.clone();
        }
        match Upstream::connect(&config).await {
            Ok(up) => {
                self.shared.learn(r, up.capabilities());
                self.legs[r].up = Some(up);
                Ok(())
            }
            Err(e) => {
                if self.refuses_the_relay(&e) {
                    // Logged and counted there.
                } else if let UpstreamError::AuthRejected { reply, .. } = &e
                    && !cfg.uses_client_credentials(r)
                {
                    tracing::error!(
                        session = self.id,
                        upstream = %e.upstream(),
                        reply = %reply,
                        "the upstream refused the relay's own credentials: check the route's username and its password"
                    );
                }
                tracing::warn!(session = self.id, upstream = %e.upstream(), error = %e, "upstream failure");
                self.note(format!("    * upstream failure: {e}"));
                // Not tried again in this transaction: its other recipients get the same.
                self.legs[r].failure = Some(e.client_reply());
                Err(e)
            }
        }
    }

    /// Whether route `r` stores and forwards.
    fn queued(&self, r: RouteId) -> bool {
        self.shared.config.route_queued(r)
    }

    /// MAIL: a new transaction. Upstreams still inside an earlier one (the client said RSET,
    /// or DATA was refused) are reset first; MAIL goes to the default route at once, whose
    /// verdict (the sender rules of the upstream the client authenticated with) is the
    /// answer. Other routes get MAIL at their first recipient.
    async fn mail(&mut self, from: ReversePath, params: MailParams) -> Verdict {
        self.reset_legs().await;
        if self.queued(RouteId::DEFAULT) {
            // Store and forward: nobody upstream to ask now; the sender is checked when the
            // message is delivered (a refusal then is a bounce).
            self.transaction = Some((from, params));
            return Verdict::Reply(Reply::new(250, (2, 1, 0), "Sender OK"));
        }
        if let Err(e) = self.open_leg(RouteId::DEFAULT).await {
            return Verdict::Reply(e.client_reply());
        }
        let pipelining = self.legs[RouteId::DEFAULT]
            .up
            .as_ref()
            .is_some_and(Upstream::can_pipeline);
        if pipelining {
            let group = self.pipelined_rcpts();
            if !group.is_empty() {
                // MAIL and the RCPTs behind it, forwarded as the client sent them: a group.
                self.transaction = Some((from, params));
                let mail = self.prefetch(group, true).await;
                let reply = match mail {
                    Some(Ok(reply)) if reply.is_positive() => return Verdict::Reply(reply),
                    Some(Ok(reply) | Err(reply)) => reply,
                    None => Reply::new(451, (4, 3, 0), "no reply to MAIL upstream"),
                };
                self.transaction = None;
                self.prefetched.clear();
                return Verdict::Reply(reply);
            }
        }
        let up = self.legs[RouteId::DEFAULT].up.as_mut().expect("opened");
        match up.mail(&from, &params).await {
            Ok(reply) => {
                if reply.is_positive() {
                    self.legs[RouteId::DEFAULT].mail_sent = true;
                    self.transaction = Some((from, params));
                }
                Verdict::Reply(reply)
            }
            Err(e) => self.leg_failed(RouteId::DEFAULT, e).await,
        }
    }

    /// The RCPT commands the client pipelined behind the one being decided (they stop at
    /// the first line that is not a well-formed RCPT).
    fn pipelined_rcpts(&self) -> Vec<(ForwardPath, RcptParams)> {
        // Never more than the session will let through: a RCPT it refuses for the count must
        // not have been asked of the upstream.
        let max = self
            .shared
            .config
            .max_recipients
            .min(self.conn.rcpt_commands_left());
        let mut group = Vec::new();
        for line in self.conn.pipelined_lines(max) {
            match smtp_wire::Command::parse(line) {
                Ok(smtp_wire::Command::Rcpt { to, params }) => group.push((to, params)),
                _ => break,
            }
        }
        group
    }

    /// Sends a group of RCPTs ahead, each route's share in one write (with MAIL first where
    /// that route has not had it; with `mail_first`, the default route always gets MAIL and
    /// nothing goes elsewhere if it refuses). The replies wait in `prefetched` for the
    /// client's session to reach each RCPT. A route that cannot pipeline is left to the
    /// one-by-one path. Returns the default route's reply to MAIL when it was sent.
    async fn prefetch(
        &mut self,
        group: Vec<(ForwardPath, RcptParams)>,
        mail_first: bool,
    ) -> Option<Result<Reply, Reply>> {
        let routes: Vec<RouteId> = group
            .iter()
            .map(|(to, _)| crate::route::route_for(&self.shared.config.routes, to))
            .collect();
        let mut order: Vec<RouteId> = Vec::new();
        if mail_first {
            order.push(RouteId::DEFAULT);
        }
        for &r in &routes {
            if !order.contains(&r) {
                order.push(r);
            }
        }
        let mut replies: Vec<Option<(RouteId, Reply)>> = vec![None; group.len()];
        let mut leg0_mail = None;
        for r in order {
            if self.legs[r].failure.is_some() || self.queued(r) {
                continue;
            }
            if self.open_leg(r).await.is_err() {
                if r.is_default() && mail_first {
                    return self.legs[RouteId::DEFAULT].failure.clone().map(Err);
                }
                continue;
            }
            if !self.legs[r].up.as_ref().is_some_and(Upstream::can_pipeline) {
                continue;
            }
            let share: Vec<(ForwardPath, RcptParams)> = group
                .iter()
                .zip(&routes)
                .filter(|(_, route)| **route == r)
                .map(|(item, _)| item.clone())
                .collect();
            let needs_mail = !self.legs[r].mail_sent;
            let Some((from, params)) = self.transaction.clone() else {
                break;
            };
            let mail = needs_mail.then_some((&from, &params));
            let up = self.legs[r].up.as_mut().expect("opened");
            let (mail_reply, rcpt_replies) = match up.batch(mail, &share).await {
                Ok(done) => done,
                Err(e) => {
                    let reply = e.client_reply();
                    let _ = self.leg_failed(r, e).await;
                    if r.is_default() && mail_first {
                        return Some(Err(reply));
                    }
                    continue;
                }
            };
            let refused = mail_reply.as_ref().filter(|m| !m.is_positive()).cloned();
            if needs_mail && refused.is_none() {
                self.legs[r].mail_sent = true;
            }
            if r.is_default() && mail_first {
                leg0_mail = mail_reply.clone().map(Ok);
            }
            let mut next = rcpt_replies.into_iter();
            for (i, _) in routes.iter().enumerate().filter(|(_, route)| **route == r) {
                let reply = next.next().expect("one reply per RCPT");
                // After a refused MAIL the RCPTs were refused for it: the client hears why.
                let reply = refused.clone().unwrap_or(reply);
                if reply.is_positive() {
                    self.legs[r].upstream_ok += 1;
                }
                replies[i] = Some((r, reply));
            }
            if refused.is_some() && r.is_default() && mail_first {
                return leg0_mail;
            }
        }
        self.prefetched
            .extend(group.into_iter().map(|(to, _)| to).zip(replies));
        leg0_mail
    }

    /// The reply sent ahead for `to`, if any: entries before it that the client's session
    /// answered itself (a duplicate, a local refusal) are dropped.
    fn take_prefetched(&mut self, to: &ForwardPath) -> Option<Option<(RouteId, Reply)>> {
        while let Some((ahead, _)) = self.prefetched.front() {
            if ahead == to {
                return self.prefetched.pop_front().map(|(_, reply)| reply);
            }
            self.prefetched.pop_front();
        }
        None
    }

    /// RCPT: to the upstream of the recipient's route; its reply is the answer.
    async fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Verdict {
        let mut ahead = self.take_prefetched(&to);
        if ahead.is_none() {
            let more = self.pipelined_rcpts();
            if !more.is_empty() {
                let mut group = vec![(to.clone(), params.clone())];
                group.extend(more);
                self.prefetch(group, false).await;
                ahead = self.take_prefetched(&to);
            }
        }
        if let Some(Some((r, reply))) = ahead {
            let leg = &mut self.legs[r];
            leg.rcpt_replies.push((to.to_string(), reply.to_string()));
            if reply.is_positive() {
                leg.accepted.push((to, params));
            }
            return Verdict::Reply(reply);
        }
        let r = crate::route::route_for(&self.shared.config.routes, &to);
        if self.queued(r) {
            let leg = &mut self.legs[r];
            let reply = Reply::new(250, (2, 1, 5), "Recipient OK, queued for delivery");
            leg.rcpt_replies.push((to.to_string(), reply.to_string()));
            leg.accepted.push((to, params));
            leg.upstream_ok += 1;
            return Verdict::Reply(reply);
        }
        if let Some(failure) = &self.legs[r].failure {
            return Verdict::Reply(failure.clone());
        }
        if !self.legs[r].mail_sent {
            let Some((from, mail_params)) = self.transaction.clone() else {
                return Verdict::Reply(Reply::new(451, (4, 3, 0), "no transaction upstream"));
            };
            if self.open_leg(r).await.is_err() {
                let failure = self.legs[r].failure.clone();
                return Verdict::Reply(failure.expect("set by open_leg"));
            }
            let up = self.legs[r].up.as_mut().expect("opened");
            match up.mail(&from, &mail_params).await {
                Ok(reply) if reply.is_positive() => self.legs[r].mail_sent = true,
                // The route's upstream refuses the sender: its words answer this recipient.
                Ok(reply) => {
                    self.legs[r]
                        .rcpt_replies
                        .push((to.to_string(), reply.to_string()));
                    return Verdict::Reply(reply);
                }
                Err(e) => return self.leg_failed(r, e).await,
            }
        }
        let up = self.legs[r].up.as_mut().expect("in a transaction");
        match up.rcpt(&to, &params).await {
            Ok(reply) => {
                let leg = &mut self.legs[r];
                leg.rcpt_replies.push((to.to_string(), reply.to_string()));
                if reply.is_positive() {
                    leg.accepted.push((to, params));
                    leg.upstream_ok += 1;
                }
                Verdict::Reply(reply)
            }
            Err(e) => self.leg_failed(r, e).await,
        }
    }

    /// DATA: to every upstream with accepted recipients, at once; 354 to the client only
    /// when all of them said 354. A transient refusal or failure of any of them is the
    /// answer for the whole message (nothing has been sent anywhere yet, the client tries
    /// again); a permanent refusal fails that upstream's recipients only.
    async fn begin_data(&mut self) -> Verdict {
        self.prefetched.clear();
        for r in self.shared.config.route_ids() {
            let leg = &self.legs[r];
            if !leg.accepted.is_empty() && leg.upstream_ok != leg.accepted.len() {
                self.replay_envelope(r).await;
            }
        }
        if let Some(reply) = self.poisoned.clone() {
            self.abort_legs().await;
            return Verdict::Reply(reply);
        }
        let asked = futures_util::future::join_all(
            self.legs
                .iter_mut()
                .filter(|l| !l.accepted.is_empty())
                .filter_map(|l| Some((l.route, l.up.as_mut()?)))
                .map(|(r, up)| async move { (r, up.data().await) }),
        )
        .await;
        let mut transient: Option<Reply> = None;
        for (r, result) in asked {
            match result {
                Ok(reply) if reply.code == 354 => self.legs[r].sending = true,
                Ok(reply) if reply.severity() == smtp_wire::Severity::Transient => {
                    transient.get_or_insert(reply);
                }
                Ok(reply) => self.legs[r].outcome = Some(reply),
                Err(e) => {
                    let reply = e.client_reply();
                    let _ = self.leg_failed(r, e).await;
                    transient.get_or_insert(reply);
                }
            }
        }
        if let Some(reply) = transient {
            self.abort_legs().await;
            self.poisoned = None;
            return Verdict::Reply(reply);
        }
        let queueing = self
            .legs
            .iter()
            .any(|l| self.queued(l.route) && !l.accepted.is_empty());
        if !queueing && !self.legs.iter().any(|l| l.sending) {
            // Every upstream refused the message: their words.
            return Verdict::Reply(self.combined_refusal());
        }
        match self.begin_message().await {
            Ok(()) => Verdict::Accept,
            Err(e) => {
                self.abort_transaction().await;
                self.abort_legs().await;
                // Insufficient storage (RFC 3463 4.3.1): the client tries again later.
                Verdict::Reply(Reply::new(
                    452,
                    (4, 3, 1),
                    format!("cannot store the message: {e}"),
                ))
            }
        }
    }

    /// Route `r`'s upstream accepted recipients sent ahead that the client's session then
    /// answered itself (a duplicate, the recipient limit): the upstream's envelope is not the
    /// client's. RSET, and MAIL with exactly the client's recipients again; any other answer
    /// than before makes the message a 4xx.
    async fn replay_envelope(&mut self, r: RouteId) {
        let Some((from, params)) = self.transaction.clone() else {
            return;
        };
        let rcpts = self.legs[r].accepted.clone();
        if self.legs[r].up.is_none() {
            return;
        }
        self.note("    * replaying the envelope upstream (the client's group had recipients the relay answered itself)".into());
        let up = self.legs[r].up.as_mut().expect("checked");
        let result = match up.rset().await {
            Ok(_) => up.envelope(&from, &params, &rcpts).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(env)
                if env.mail.is_positive()
                    && env.rcpts.len() == rcpts.len()
                    && env.rcpts.iter().all(Reply::is_positive) =>
            {
                self.legs[r].upstream_ok = rcpts.len();
            }
            Ok(env) => {
                let name = &self.shared.config.route_upstream(r).name;
                tracing::warn!(session = self.id, upstream = %name, mail = %env.mail, "upstream answered a replayed envelope differently");
                self.poisoned.get_or_insert(Reply::new(
                    451,
                    (4, 3, 0),
                    format!("upstream {name}: answered the envelope differently when it was replayed, try again"),
                ));
            }
            Err(e) => {
                let _ = self.leg_failed(r, e).await;
            }
        }
    }

    /// The refusal when no upstream takes the message: one upstream's reply verbatim, or for
    /// several a reply that keeps each one's words (transient if any of them is).
    fn combined_refusal(&self) -> Reply {
        let refused: Vec<(RouteId, &Reply)> = self
            .legs
            .iter()
            .filter(|l| !l.accepted.is_empty())
            .filter_map(|l| Some((l.route, l.outcome.as_ref()?)))
            .collect();
        match refused.as_slice() {
            [] => Reply::new(451, (4, 3, 0), "no upstream took the message"),
            [(_, one)] => (*one).clone(),
            many => {
                let lead = many
                    .iter()
                    .find(|(_, r)| r.severity() == smtp_wire::Severity::Transient)
                    .unwrap_or(&many[0])
                    .1;
                let mut lines = vec![format!(
                    "refused by {} upstreams, in their words:",
                    many.len()
                )];
                lines.extend(many.iter().map(|(r, reply)| self.said(*r, reply)));
                Reply {
                    code: lead.code,
                    enhanced: lead.enhanced,
                    lines,
                }
            }
        }
    }

    /// `<upstream>: <code> <text>`, one line of a combined reply.
    fn said(&self, r: RouteId, reply: &Reply) -> String {
        format!(
            "{}: {}",
            self.shared.config.route_upstream(r).name,
            crate::upstream::said(reply)
        )
    }

    /// A connection to route `r`'s upstream failed: it is dropped (never reused in an
    /// unknown state) and the client gets a 4xx naming it. If it had accepted recipients,
    /// the transaction can only end in that 4xx.
    async fn leg_failed(&mut self, r: RouteId, e: UpstreamError) -> Verdict {
        if matches!(e, UpstreamError::Bug { .. }) {
            tracing::error!(session = self.id, upstream = %e.upstream(), error = %e, "the upstream refused a command the relay made: a relay bug, please report it");
        } else {
            tracing::warn!(session = self.id, upstream = %e.upstream(), error = %e, "upstream failure");
        }
        self.note_upstream();
        self.note(format!("    * upstream failure: {e}"));
        let reply = e.client_reply();
        let leg = &mut self.legs[r];
        if let Some(up) = leg.up.take() {
            up.abort().await;
        }
        leg.mail_sent = false;
        leg.sending = false;
        if !leg.accepted.is_empty() {
            self.poisoned.get_or_insert(reply.clone());
        }
        self.legs[r].failure = Some(reply.clone());
        Verdict::Reply(reply)
    }

    /// Upstreams still in a transaction get RSET; every leg forgets the transaction.
    async fn reset_legs(&mut self) {
        for i in self.shared.config.route_ids() {
            if self.legs[i].mail_sent
                && let Some(up) = self.legs[i].up.as_mut()
                && up.rset().await.is_err()
                && let Some(up) = self.legs[i].up.take()
            {
                up.abort().await;
            }
            self.legs[i].mail_sent = false;
            self.legs[i].clear();
        }
        self.transaction = None;
        self.prefetched.clear();
        self.poisoned = None;
    }

    /// Closes every upstream that is inside DATA without ending the message (so it
    /// delivers nothing); the others stay, to be reset at the next MAIL.
    async fn abort_legs(&mut self) {
        for leg in self.legs.iter_mut() {
            if leg.sending {
                leg.sending = false;
                leg.mail_sent = false;
                if let Some(up) = leg.up.take() {
                    up.abort().await;
                }
            }
        }
    }

    async fn begin_message(&mut self) -> std::io::Result<()> {
        let id = format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
            self.id
        );
        let path = crate::spool::path_for(&self.shared.config.spool_dir, &id, "eml");
        // A route that queues: the content goes to the queue's tmp/ as well.
        if self
            .legs
            .iter()
            .any(|l| self.queued(l.route) && !l.accepted.is_empty())
            && let Some(queue) = &self.shared.queue
        {
            let content = Spool::create(id.clone(), queue.tmp_path(&id)).await?;
            self.queue_file = Some(QueueFile {
                content,
                error: None,
            });
        }
        self.spool = Some(Spool::new(id, path));
        // RFC 5321 4.4: a trace header at the top, to the upstreams and the queue (the spool
        // keeps the message as the client sent it).
        let received = self.received_header();
        let mut none = None;
        stream_content(
            &mut none,
            &mut self.queue_file,
            &mut self.legs,
            &mut self.poisoned,
            self.id,
            received.as_bytes(),
        )
        .await;
        Ok(())
    }

    fn received_header(&self) -> String {
        let cfg = &self.shared.config;
        let helo = self.conn.session().helo().unwrap_or("unknown");
        let protocol = match (self.tls, self.conn.session().authenticated().is_some()) {
            (true, true) => "ESMTPSA",
            (true, false) => "ESMTPS",
            (false, true) => "ESMTPA",
            (false, false) => "ESMTP",
        };
        let id = self.spool.as_ref().map(|s| s.id.as_str()).unwrap_or("-");
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (smtp-relay) with {protocol} id {id};\r\n\t{date}\r\n",
            ip = self.peer.ip(),
            host = cfg.hostname,
            date = chrono::Utc::now().to_rfc2822(),
        )
    }

    /// The end of data: to every upstream at once, then the reply rule (README, "Several
    /// routes"): all delivered, 250 with each upstream's words; none, the refusal in their
    /// words; some, 250 and a bounce to the sender for the recipients that failed.
    async fn deliver(&mut self, env: Envelope) -> Verdict {
        if let Some(reply) = self.poisoned.take() {
            self.abort_legs().await;
            self.discard_spool().await;
            return Verdict::Reply(reply);
        }
        // Store and forward first: once the queue holds the message durably, the live routes
        // get their end of data; if it cannot, nobody does and the client hears 452 4.3.1.
        if let Err(reply) = self.enqueue(&env).await {
            self.abort_legs().await;
            self.discard_spool().await;
            return Verdict::Reply(reply);
        }
        // With several upstreams, what each holds of the message goes out first: one lost
        // now has not had its end of data, so no upstream gets one (a 451 for all).
        if self.legs.iter().filter(|l| l.sending).count() > 1 {
            let flushed = futures_util::future::join_all(
                self.legs
                    .iter_mut()
                    .filter(|l| l.sending)
                    .filter_map(|l| Some((l.route, l.up.as_mut()?)))
                    .map(|(r, up)| async move { (r, up.flush_body().await) }),
            )
            .await;
            for (r, result) in flushed {
                if let Err(e) = result {
                    let _ = self.leg_failed(r, e).await;
                }
            }
            if let Some(reply) = self.poisoned.take() {
                self.abort_legs().await;
                self.discard_spool().await;
                return Verdict::Reply(reply);
            }
        }
        let ended = futures_util::future::join_all(
            self.legs
                .iter_mut()
                .filter(|l| l.sending)
                .filter_map(|l| Some((l.route, l.up.as_mut()?)))
                .map(|(r, up)| async move { (r, up.end_of_data().await) }),
        )
        .await;
        for (r, result) in ended {
            self.legs[r].sending = false;
            self.legs[r].mail_sent = false;
            match result {
                Ok(reply) => self.legs[r].outcome = Some(reply),
                Err(e) => {
                    let reply = e.client_reply();
                    let _ = self.leg_failed(r, e).await;
                    self.poisoned = None;
                    self.legs[r].outcome = Some(reply);
                }
            }
        }
        let involved: Vec<RouteId> = self
            .legs
            .iter()
            .filter(|l| !l.accepted.is_empty())
            .map(|l| l.route)
            .collect();
        let delivered: Vec<RouteId> = involved
            .iter()
            .copied()
            .filter(|&r| {
                self.legs[r]
                    .outcome
                    .as_ref()
                    .is_some_and(Reply::is_positive)
            })
            .collect();
        let metrics = &self.shared.metrics;
        for &r in &involved {
            if !self.queued(r)
                && let Some(o) = &self.legs[r].outcome
            {
                metrics.reply(o.code);
            }
        }
        crate::metrics::Metrics::inc(if delivered.is_empty() {
            &metrics.messages_refused
        } else {
            &metrics.messages_accepted
        });
        let mut dsn = None;
        let reply =
            if delivered.is_empty() {
                self.combined_refusal()
            } else if delivered.len() == involved.len() {
                match delivered.as_slice() {
                    [one] => self.legs[*one].outcome.clone().expect("delivered"),
                    many => {
                        let mut lines = vec![format!("OK: delivered by {} upstreams:", many.len())];
                        lines.extend(many.iter().map(|&r| {
                            self.said(r, self.legs[r].outcome.as_ref().expect("delivered"))
                        }));
                        Reply {
                            code: 250,
                            enhanced: Some((2, 0, 0)),
                            lines,
                        }
                    }
                }
            } else {
                let failures = self.failures();
                let last = match &env.from {
                    Some(ReversePath::Mailbox(m)) => {
                        dsn = Some(m.clone());
                        format!(
                            "{} recipient(s) failed: a delivery status notification goes to <{m}>",
                            failures.len()
                        )
                    }
                    _ => format!(
                        "{} recipient(s) failed: no notification for a null sender",
                        failures.len()
                    ),
                };
                let mut lines = vec![format!(
                    "OK: delivered by {} of {} upstreams:",
                    delivered.len(),
                    involved.len()
                )];
                lines.extend(
                    involved
                        .iter()
                        .map(|&r| self.said(r, self.legs[r].outcome.as_ref().expect("outcome"))),
                );
                lines.push(last);
                Reply {
                    code: 250,
                    enhanced: Some((2, 0, 0)),
                    lines,
                }
            };
        if let Some(spool) = self.spool.take() {
            let summary = summarize(&spool.head);
            // With several upstreams, a line for each, then the message's line.
            for &r in involved.iter().filter(|_| involved.len() > 1) {
                let leg = &self.legs[r];
                let outcome = leg.outcome.as_ref().expect("outcome");
                tracing::info!(
                    session = self.id,
                    id = %spool.id,
                    upstream = %self.shared.config.route_upstream(r).name,
                    rcpts = ?leg.accepted.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>(),
                    reply = %outcome,
                    upstream_outcome = if outcome.is_positive() { "delivered" } else { "refused" },
                    "delivery"
                );
            }
            tracing::info!(
                session = self.id,
                id = %spool.id,
                from = %env.from.as_ref().map(ReversePath::to_string).unwrap_or_default(),
                rcpts = ?env.rcpts.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>(),
                size = spool.size,
                reply = %reply,
                outcome = if delivered.is_empty() {
                    "refused"
                } else if delivered.len() == involved.len() {
                    "delivered"
                } else {
                    "partly delivered"
                },
                "message"
            );
            let dsn = match dsn {
                Some(sender) => Some(self.bounce(&spool, sender).await),
                None => None,
            };
            let json = spool_json(&spool, &env, self, &reply, summary, dsn);
            let (id, path, session) = (spool.id.clone(), spool.path.clone(), self.id);
            // The upstream has decided: the client's reply need not wait for the disk.
            self.spooled().await;
            self.spool_write = Some(tokio::spawn(async move {
                if let Err(e) = spool.keep(json).await {
                    tracing::error!(session, id = %id, path = %path.display(), error = %e, "cannot write the spool: the message was relayed, but is not kept");
                }
            }));
        }
        Verdict::Reply(reply)
    }

    /// Waits for the last message's spool write.
    async fn spooled(&mut self) {
        if let Some(write) = self.spool_write.take() {
            let _ = write.await;
        }
    }

    /// Puts the message in the queue for each route that queues (one record per route, the
    /// content hard-linked), durably; the routes' outcome is then `250 queued as <id>`.
    async fn enqueue(&mut self, env: &Envelope) -> Result<(), Reply> {
        let Some(mut qf) = self.queue_file.take() else {
            return Ok(());
        };
        let refuse =
            |why: String| Reply::new(452, (4, 3, 1), format!("cannot queue the message: {why}"));
        let Some(queue) = self.shared.queue.clone() else {
            return Err(refuse("no queue".into()));
        };
        let (path, size) = (qf.content.path.clone(), qf.content.size);
        let written = match qf.error.take() {
            Some(e) => Err(e),
            None => qf.content.finish().await.map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&path).await;
            tracing::error!(session = self.id, error = %e, "cannot write to the queue");
            return Err(refuse(e));
        }
        let routes: Vec<RouteId> = self
            .legs
            .iter()
            .filter(|l| self.queued(l.route) && !l.accepted.is_empty())
            .map(|l| l.route)
            .collect();
        let base = self
            .spool
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let now = chrono::Utc::now().to_rfc3339();
        for (n, &r) in routes.iter().enumerate() {
            let label = self.shared.config.route_label(r).to_string();
            let id = if routes.len() == 1 {
                base.clone()
            } else {
                format!("{base}-{label}")
            };
            let content = if n + 1 == routes.len() {
                path.clone()
            } else {
                let link = queue.tmp_path(&id);
                if let Err(e) = std::fs::hard_link(&path, &link) {
                    return Err(refuse(e.to_string()));
                }
                link
            };
            let record = crate::queue::store::Queued {
                id: id.clone(),
                route: label,
                mail_from: env
                    .from
                    .as_ref()
                    .map(ReversePath::to_string)
                    .unwrap_or_else(|| "<>".into()),
                mail_params: self
                    .transaction
                    .as_ref()
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_default(),
                rcpts: self.legs[r]
                    .accepted
                    .iter()
                    .map(|(to, _)| crate::queue::store::Rcpt {
                        to: to.to_string(),
                        state: crate::queue::store::RcptState::Pending { last: None },
                    })
                    .collect(),
                auth_user: self.conn.session().authenticated().map(str::to_string),
                size,
                received_at: now.clone(),
                attempts: 0,
                next_attempt: now.clone(),
                last_error: None,
            };
            if let Err(e) = queue.enqueue(content, record).await {
                tracing::error!(session = self.id, id = %id, error = %e, "cannot queue a message");
                return Err(refuse(e.to_string()));
            }
            tracing::info!(session = self.id, id = %id, route = %self.shared.config.route_label(r), outcome = "queued", "message");
            crate::metrics::Metrics::inc(&self.shared.metrics.queued);
            self.legs[r].outcome = Some(Reply::new(250, (2, 0, 0), format!("queued as {id}")));
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The recipients that were accepted but not delivered, with what was said.
    fn failures(&self) -> Vec<crate::dsn::Failure> {
        self.legs
            .iter()
            .filter_map(|l| Some((l, l.outcome.as_ref().filter(|o| !o.is_positive())?)))
            .flat_map(|(l, reply)| {
                let remote = self
                    .shared
                    .config
                    .route_upstream(l.route)
                    .server_name
                    .clone();
                l.accepted.iter().map(move |(rcpt, _)| crate::dsn::Failure {
                    recipient: match rcpt.mailbox() {
                        Some(m) => m.to_string(),
                        None => rcpt.to_string(),
                    },
                    remote: remote.clone(),
                    reply: reply.clone(),
                })
            })
            .collect()
    }

    /// Writes the bounce for the failed recipients beside the message (`<id>.dsn.eml`) and
    /// sends it to `sender` through the default route, in the background.
    async fn bounce(&mut self, spool: &Spool, sender: smtp_wire::Mailbox) -> String {
        let head = &spool.head;
        let failures = self.failures();
        let cfg = &self.shared.config;
        let daemon = format!("MAILER-DAEMON@{}", cfg.hostname);
        let sender_text = sender.to_string();
        let report = |from: &str| {
            crate::dsn::build(&crate::dsn::Report {
                reporting_mta: &cfg.hostname,
                from,
                to: &sender_text,
                original_id: &spool.id,
                envelope_id: None,
                arrival: chrono::Utc::now(),
                failures: &failures,
                original_headers: head,
            })
        };
        let as_daemon = report(&daemon);
        let as_sender = report(&sender_text);
        let path = spool.path.with_extension("dsn.eml");
        let (p, bytes) = (path.clone(), as_daemon.clone());
        let _ = tokio::task::spawn_blocking(move || crate::spool::write_private(&p, &bytes)).await;
        let mut config = cfg.upstream.clone();
        if cfg.uses_client_credentials(RouteId::DEFAULT) {
            config.credentials = self.credentials.clone();
        }
        let (session, id) = (self.id, spool.id.clone());
        self.dsn_tasks.push(tokio::spawn(async move {
            let result = crate::dsn::send(&config, &sender, &as_daemon, &as_sender).await;
            match result {
                Ok(reply) => tracing::info!(
                    session,
                    id = %id,
                    to = %sender,
                    upstream = %config.name,
                    reply = %reply,
                    outcome = if reply.is_positive() { "dsn sent" } else { "dsn refused" },
                    "bounce"
                ),
                Err(e) => tracing::warn!(
                    session,
                    id = %id,
                    to = %sender,
                    upstream = %config.name,
                    error = %e,
                    outcome = "dsn failed",
                    "bounce"
                ),
            }
        }));
        // Relative to the spool: `<h>/<id>.dsn.eml`.
        path.strip_prefix(&cfg.spool_dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A transaction ends without a delivery: the upstreams must not get an end of data, so
    /// their sessions are closed; the spool file is removed.
    async fn abort_transaction(&mut self) {
        if let Some(spool) = &self.spool {
            tracing::info!(
                session = self.id,
                id = %spool.id,
                outcome = "aborted",
                "message not completed: nothing was sent"
            );
            self.abort_legs().await;
            self.discard_spool().await;
        }
    }

    async fn discard_spool(&mut self) {
        if let Some(q) = self.queue_file.take() {
            let path = q.content.path.clone();
            drop(q);
            let _ = tokio::fs::remove_file(&path).await;
        }
        if let Some(spool) = self.spool.take()
            && let Some(file) = spool.file
        {
            drop(file);
            let _ = tokio::fs::remove_file(&spool.path).await;
        }
    }
}

/// A readable summary of a message for the spool JSON: the Subject with its RFC 2047 words
/// decoded, the From header, and the first text part decoded from base64 or quoted-printable
/// in its charset (GB2312, GBK, Big5, UTF-8... as mail-parser knows them).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub subject: Option<String>,
    pub from: Option<String>,
    /// At most `SUMMARY_TEXT` characters.
    pub text: Option<String>,
}

/// How much of a message is kept for its summary (and a bounce's headers), and how much
/// text the summary keeps.
const SUMMARY_READ: usize = 64 * 1024;
const SUMMARY_TEXT: usize = 2000;

/// Summarises the start of a message (headers and the first text part).
pub fn summarize(message: &[u8]) -> Summary {
    let recoded = utf8_header(message);
    let message = recoded.as_deref().unwrap_or(message);
    let Some(parsed) = mail_parser::MessageParser::default().parse(message) else {
        return Summary::default();
    };
    let from = parsed
        .from()
        .and_then(|a| a.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(n), Some(addr)) => format!("{n} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        });
    Summary {
        subject: parsed.subject().map(str::to_string),
        from,
        text: parsed
            .body_text(0)
            .map(|t| t.chars().take(SUMMARY_TEXT).collect::<String>()),
    }
}

/// A message whose header holds raw 8-bit octets that are not UTF-8 (older Chinese clients
/// send a GBK Subject so, with `BODY=8BITMIME`), with that header decoded as the message's
/// charset says (the first `charset=` in it, or in its first 64 KiB), or as GB18030 when none
/// does or that fails, and written back as UTF-8; `None` when the header is ASCII or UTF-8.
fn utf8_header(message: &[u8]) -> Option<Vec<u8>> {
    let end = memchr::memmem::find(message, b"\r\n\r\n")
        .or_else(|| memchr::memmem::find(message, b"\n\n"))
        .unwrap_or(message.len());
    let head = &message[..end];
    if std::str::from_utf8(head).is_ok() {
        return None;
    }
    let gb18030 = encoding_rs::GB18030;
    let scan = &message[..message.len().min(64 * 1024)];
    let declared = memchr::memmem::find_iter(&scan.to_ascii_lowercase(), b"charset=")
        .next()
        .and_then(|i| {
            let label: Vec<u8> = scan[i + 8..]
                .iter()
                .copied()
                .skip_while(|c| *c == b'"')
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b':' | b'.'))
                .collect();
            encoding_rs::Encoding::for_label(&label)
        })
        .filter(|e| *e != encoding_rs::UTF_8);
    let (mut text, _, mut bad) = declared.unwrap_or(gb18030).decode(head);
    if bad && declared.is_some() {
        (text, _, bad) = gb18030.decode(head);
    }
    if bad {
        return None;
    }
    let mut out = text.into_owned().into_bytes();
    out.extend_from_slice(&message[end..]);
    Some(out)
}

/// What `spool/<id>.json` records (never a secret).
#[derive(serde::Serialize)]
struct SpoolRecord<'a> {
    id: &'a str,
    mail_from: String,
    rcpt_to: Vec<String>,
    client: String,
    helo: Option<&'a str>,
    tls: bool,
    auth: Option<&'a str>,
    size: u64,
    /// The reply the client got.
    reply: String,
    /// Each upstream of the transaction: its replies per recipient and to the message.
    upstreams: Vec<UpstreamRecord<'a>>,
    /// The bounce sent for recipients that failed after being accepted (`<id>.dsn.eml`).
    dsn: Option<String>,
    summary: Summary,
}

#[derive(serde::Serialize)]
struct UpstreamRecord<'a> {
    /// `default`, or the route's label.
    route: &'a str,
    upstream: &'a str,
    /// Every RCPT sent there and the reply, as it was said.
    rcpts: Vec<RcptRecord<'a>>,
    /// Its reply to the message (DATA refusal, or final reply), as it was said.
    reply: Option<String>,
}

#[derive(serde::Serialize)]
struct RcptRecord<'a> {
    to: &'a str,
    reply: &'a str,
}

fn spool_json(
    spool: &Spool,
    env: &Envelope,
    s: &Session,
    reply: &Reply,
    summary: Summary,
    dsn: Option<String>,
) -> Vec<u8> {
    let cfg = &s.shared.config;
    let record = SpoolRecord {
        id: &spool.id,
        mail_from: env
            .from
            .as_ref()
            .map(ReversePath::to_string)
            .unwrap_or_default(),
        rcpt_to: env.rcpts.iter().map(|(r, _)| r.to_string()).collect(),
        client: s.peer.to_string(),
        helo: s.conn.session().helo(),
        tls: s.tls,
        auth: s.conn.session().authenticated(),
        size: spool.size,
        reply: reply.to_string(),
        upstreams: s
            .legs
            .iter()
            .filter(|l| !l.rcpt_replies.is_empty())
            .map(|l| UpstreamRecord {
                route: cfg.route_label(l.route),
                upstream: &cfg.route_upstream(l.route).name,
                rcpts: l
                    .rcpt_replies
                    .iter()
                    .map(|(to, reply)| RcptRecord { to, reply })
                    .collect(),
                reply: l.outcome.as_ref().map(Reply::to_string),
            })
            .collect(),
        dsn,
        summary,
    };
    serde_json::to_vec_pretty(&record).expect("serializable")
}

/// Read buffer sizes: in command mode, inside DATA.
const READ_SMALL: usize = 512;
const READ_LARGE: usize = 64 * 1024;

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
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("127.0.0.5"), ip("127.0.0.0"), 8));
        assert!(!in_network(ip("128.0.0.1"), ip("127.0.0.0"), 8));
        assert!(in_network(ip("::1"), ip("::1"), 128));
        assert!(!in_network(ip("::1"), ip("127.0.0.1"), 8));
        assert!(in_network(ip("10.1.2.3"), ip("0.0.0.0"), 0));
    }
}
