//! `relay.toml` as it is written: the tables and keys serde reads, their defaults. What they
//! mean is decided in `serve`'s parse.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) hostname: String,
    pub(super) listen: SocketAddr,
    pub(super) listen_tls: Option<SocketAddr>,
    pub(super) spool_dir: PathBuf,
    /// Where `relay.log` goes (default: `log` beside the spool directory).
    pub(super) log_dir: Option<PathBuf>,
    /// Record two-hop session transcripts here (none by default).
    pub(super) transcripts_dir: Option<PathBuf>,
    pub(super) tls: Option<FileTls>,
    pub(super) auth: FileAuth,
    #[serde(default)]
    pub(super) limits: FileLimits,
    pub(super) upstream: FileUpstream,
    /// `[[routes]]`: recipient domains to other upstreams.
    #[serde(default)]
    pub(super) routes: Vec<FileUpstream>,
    /// `reject` (default: 550 5.6.0 after the data) or `normalize`.
    #[serde(default)]
    pub(super) bare_line_endings: Option<String>,
    /// Store and forward: where the queue is and how it retries.
    pub(super) queue: Option<FileQueue>,
    /// Serve the Prometheus metrics here (`GET /metrics`).
    pub(super) metrics: Option<SocketAddr>,
    /// Credentials to deliver queued mail with, per sender (never copied into the queue).
    #[serde(default)]
    pub(super) secrets: Vec<FileSecret>,
    /// Behind a load balancer: the PROXY protocol on the listeners.
    pub(super) proxy_protocol: Option<FileProxyProtocol>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileProxyProtocol {
    /// The balancers' networks (`ADDRESS/PREFIX`); only they may connect.
    pub(super) trusted: Vec<String>,
    #[serde(default = "default_proxy_header_timeout")]
    pub(super) header_timeout_secs: u64,
}

fn default_proxy_header_timeout() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileQueue {
    pub(super) dir: PathBuf,
    #[serde(default = "default_first_retry")]
    pub(super) first_retry_secs: u64,
    #[serde(default = "default_max_retry")]
    pub(super) max_retry_secs: u64,
    #[serde(default = "default_lifetime")]
    pub(super) lifetime_hours: u64,
    #[serde(default = "default_concurrency")]
    pub(super) concurrency: usize,
}

pub(super) fn default_first_retry() -> u64 {
    30 * 60
}

pub(super) fn default_max_retry() -> u64 {
    4 * 3600
}

pub(super) fn default_lifetime() -> u64 {
    5 * 24
}

pub(super) fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSecret {
    /// The sender (the client's AUTH user) these credentials deliver for.
    pub(super) address: String,
    /// The upstream user name (default: the address).
    pub(super) username: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
    /// `passthrough`, `users` or `trusted`.
    pub(super) mode: String,
    #[serde(default)]
    pub(super) trusted_networks: Vec<String>,
    /// For `users`: `address:bcrypt-hash` lines (`htpasswd -nbB address password`).
    pub(super) users_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLimits {
    pub(super) max_message_size: u64,
    pub(super) max_recipients: usize,
    pub(super) max_rcpt_commands: usize,
    /// Offer CHUNKING (BDAT) to clients.
    pub(super) chunking: bool,
    pub(super) max_sessions: usize,
    pub(super) max_sessions_per_ip: usize,
    pub(super) auth_failure_delay_ms: u64,
    pub(super) auth_failures_per_client: u32,
    pub(super) auth_failures_per_upstream: u32,
    pub(super) auth_failure_window_secs: u64,
    pub(super) auth_block_secs: u64,
    pub(super) auth_remember_refused_secs: u64,
    pub(super) command_timeout_secs: u64,
    pub(super) data_timeout_secs: u64,
    pub(super) line_timeout_secs: u64,
    pub(super) min_data_rate: u64,
    pub(super) session_deadline_secs: u64,
    pub(super) tls_handshake_timeout_secs: u64,
    /// Upstream sessions kept this long for the next client (0: not kept).
    pub(super) upstream_reuse_idle_secs: u64,
    pub(super) upstream_reuse_max_messages: u32,
    pub(super) upstream_reuse_max_idle: usize,
    /// A new upstream session past its route's `max_sessions` waits this long for a slot.
    pub(super) upstream_session_wait_secs: u64,
    pub(super) upstream_command_timeout_secs: u64,
    pub(super) upstream_data_end_timeout_secs: u64,
    pub(super) spool_max_age_days: u64,
    pub(super) spool_max_bytes: u64,
}

impl FileLimits {
    /// The AUTH failure limits, the rest as their defaults.
    pub(super) fn auth_limits(&self) -> crate::auth_guard::AuthLimits {
        crate::auth_guard::AuthLimits {
            per_client: self.auth_failures_per_client,
            per_upstream: self.auth_failures_per_upstream,
            window: Duration::from_secs(self.auth_failure_window_secs),
            block: Duration::from_secs(self.auth_block_secs),
            remember_refused: Duration::from_secs(self.auth_remember_refused_secs),
            ..crate::auth_guard::AuthLimits::default()
        }
    }

    /// How long and how much the spool keeps.
    pub(super) fn retention(&self) -> crate::spool::Retention {
        crate::spool::Retention {
            max_age: Duration::from_secs(self.spool_max_age_days * 86_400),
            max_bytes: self.spool_max_bytes,
            ..crate::spool::Retention::default()
        }
    }
}

impl Default for FileLimits {
    fn default() -> Self {
        let t = Timeouts::default();
        let g = crate::auth_guard::AuthLimits::default();
        FileLimits {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_rcpt_commands: 200,
            chunking: true,
            max_sessions: 200,
            max_sessions_per_ip: 20,
            auth_failure_delay_ms: 1000,
            auth_failures_per_client: g.per_client,
            auth_failures_per_upstream: g.per_upstream,
            auth_failure_window_secs: g.window.as_secs(),
            auth_block_secs: g.block.as_secs(),
            auth_remember_refused_secs: g.remember_refused.as_secs(),
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            line_timeout_secs: 60,
            min_data_rate: 500,
            session_deadline_secs: 3600,
            tls_handshake_timeout_secs: 10,
            upstream_reuse_idle_secs: 5,
            upstream_reuse_max_messages: 100,
            upstream_reuse_max_idle: 32,
            upstream_session_wait_secs: 30,
            upstream_command_timeout_secs: t.command.as_secs(),
            upstream_data_end_timeout_secs: t.data_end.as_secs(),
            spool_max_age_days: 30,
            spool_max_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    /// Routes only: a short name for logs and transcripts (default: the first domain).
    pub(super) name: Option<String>,
    /// Routes only: the domain patterns the route serves.
    #[serde(default)]
    pub(super) domains: Vec<String>,
    /// Routes only, pass-through mode: replay the client's credentials to this upstream too.
    #[serde(default)]
    pub(super) passthrough: bool,
    /// `live` (default) or `queue` (store and forward; needs `[queue]`).
    pub(super) mode: Option<String>,
    /// Queue mode: deliveries at once on this route.
    pub(super) queue_concurrency: Option<usize>,
    /// Live mode: upstream sessions open at once to this upstream, busy or kept (163 refuses
    /// the one past its limit with `421 HL:ICC`).
    pub(super) max_sessions: Option<usize>,
    /// Queue mode: deliveries started per minute on this route (stay under its quotas).
    pub(super) queue_per_minute: Option<u32>,
    pub(super) host: String,
    pub(super) port: u16,
    /// `implicit`, `starttls` or `none`.
    pub(super) tls: String,
    /// How strictly the upstream is checked: `verify` (default), `fingerprint`, `encrypt`,
    /// `may` or `none` (Postfix's security levels).
    pub(super) tls_policy: Option<String>,
    /// `verify`: trust only this PEM file (CAs, or the server's own self-signed certificate,
    /// trusted as given) instead of the bundled public roots.
    pub(super) ca: Option<PathBuf>,
    /// `fingerprint`: SHA-256 pins of the server's certificate or public key.
    #[serde(default)]
    pub(super) fingerprints: Vec<String>,
    /// The name to verify (default: `host`).
    pub(super) server_name: Option<String>,
    /// For `trusted` mode: the relay authenticates as this user...
    pub(super) username: Option<String>,
    /// ...with the secret in this environment variable...
    pub(super) password_env: Option<String>,
    /// ...or in this file (first line).
    pub(super) password_file: Option<PathBuf>,
    /// BDAT (RFC 3030) when the upstream offers CHUNKING; `false`: always DATA.
    #[serde(default = "yes")]
    pub(super) bdat: bool,
}

fn yes() -> bool {
    true
}
