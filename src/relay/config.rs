//! The relay's settings: how clients authenticate, the limits, the routes, store and
//! forward, and the routes as the queue's scheduler sees them.

use super::*;

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
    /// Behind a load balancer (HAProxy's `send-proxy-v2`): see [`ProxyProtocol`].
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Upstream sessions kept for the next client on routes that log in with the relay's
    /// own credentials (see [`super::pool`]); `None`: each client session opens its own.
    pub upstream_reuse: Option<ReuseSettings>,
    /// Live mode: upstream sessions open to the default route at once, busy or kept idle
    /// (each route says its own in [`Route::max_sessions`]); `None`: no cap. A session past
    /// the cap waits for a slot, or for a kept session, up to `upstream_session_wait`.
    pub upstream_max_sessions: Option<usize>,
    pub upstream_session_wait: Duration,
    /// The relay's certificate for its listeners; `None`: no STARTTLS, no TLS listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The file mail clients should trust for that certificate (`up`'s CA), named in the
    /// hint logged when a client refuses the certificate.
    pub client_trust_file: Option<PathBuf>,
    /// Where every message is kept as received (`<h>/<id>.eml`), with its record (a line of
    /// `records/<n>.jsonl`).
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
    /// Offer CHUNKING (RFC 3030 BDAT) to clients; the message goes on upstream as DATA
    /// (dot-stuffed, line ends made CRLF), so BINARYMIME is not offered.
    pub chunking: bool,
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
    /// A client's TLS handshake (implicit TLS or STARTTLS) must complete within this.
    pub tls_handshake_timeout: Duration,
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
    pub(super) fn table_route(&self, r: RouteId) -> Option<&Route> {
        r.table_index().map(|i| &self.routes[i])
    }

    /// The upstream settings of route `r`.
    pub(super) fn route_upstream(&self, r: RouteId) -> &UpstreamConfig {
        self.table_route(r)
            .map_or(&self.upstream, |route| &route.upstream)
    }

    /// Route `r`'s name in transcripts, records and the queue: `default` or its label.
    pub(super) fn route_label(&self, r: RouteId) -> &str {
        self.table_route(r).map_or("default", |route| &route.label)
    }

    /// Route `r`'s cap on upstream sessions at once.
    pub(super) fn route_max_sessions(&self, r: RouteId) -> Option<usize> {
        self.table_route(r)
            .map_or(self.upstream_max_sessions, |route| route.max_sessions)
    }

    /// Whether route `r` stores and forwards.
    pub(super) fn route_queued(&self, r: RouteId) -> bool {
        self.table_route(r)
            .map_or(self.default_queue, |route| route.queue)
    }

    /// Whether route `r` shares its upstream sessions between clients: a live route that logs
    /// in with the relay's own credentials (or none), when reuse is on.
    pub(super) fn shares_sessions(&self, r: RouteId) -> bool {
        self.upstream_reuse.is_some() && !self.uses_client_credentials(r) && !self.route_queued(r)
    }

    /// Whether route `r` gets the client's own credentials (pass-through mode).
    pub(super) fn uses_client_credentials(&self, r: RouteId) -> bool {
        matches!(self.auth, AuthMode::Passthrough)
            && self.table_route(r).is_none_or(|route| route.passthrough)
    }

    /// Every route, the default first.
    pub(super) fn route_ids(&self) -> impl Iterator<Item = RouteId> + use<> {
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
            proxy_protocol: None,
            upstream_reuse: None,
            upstream_max_sessions: None,
            upstream_session_wait: Duration::from_secs(30),
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
            chunking: true,
            max_sessions: 200,
            max_sessions_per_ip: 20,
            auth_failure_delay: Duration::from_secs(1),
            auth_limits: crate::auth_guard::AuthLimits::default(),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            line_timeout: Duration::from_secs(60),
            min_data_rate: 500,
            session_deadline: Duration::from_secs(3600),
            tls_handshake_timeout: Duration::from_secs(10),
            bare_line_endings: BareLineEnding::Reject,
            retention: crate::spool::Retention::default(),
            transcripts: None,
        }
    }
}

/// The PROXY protocol (v1 and v2) on the relay's listeners: every connection must come from
/// one of the `trusted` networks (the load balancers) and start with a header, whose source
/// address is then the client's for everything (per-IP limits, trusted networks, logs,
/// `Received:`, the spool record). A peer outside them is refused with `554 5.7.1` (it is no
/// balancer: it could claim any address); a missing, broken or late header closes the
/// connection. Both are logged and counted.
#[derive(Clone, Debug)]
pub struct ProxyProtocol {
    /// Networks as (address, prefix length).
    pub trusted: Vec<(IpAddr, u8)>,
    /// The header must be complete within this.
    pub header_timeout: Duration,
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
pub(super) struct QueueRoutes {
    pub(super) config: RelayConfig,
    pub(super) secrets: crate::queue::deliver::Secrets,
    pub(super) limits: std::collections::HashMap<String, crate::queue::deliver::RouteLimits>,
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
                .mailbox()
                .map(|m| m.to_string())
                .unwrap_or_default()
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
