//! `smtp-relay serve --config relay.toml`: the relay for real use, e.g. in front of
//! `smtp.163.com:465`. The config file is documented by `relay.example.toml`; secrets come from
//! an environment variable or a file named in it, never from the config text, and never appear
//! in any output.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use smtp_wire::{BareLineEnding, Credentials};

use crate::relay::{AuthMode, RelayConfig};
use crate::upstream::{Timeouts, TlsMode, UpstreamConfig};
use crate::upstream_tls::{TlsPolicy, Trust};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    hostname: String,
    listen: SocketAddr,
    listen_tls: Option<SocketAddr>,
    spool_dir: PathBuf,
    /// Where `relay.log` goes (default: `log` beside the spool directory).
    log_dir: Option<PathBuf>,
    /// Record two-hop session transcripts here (none by default).
    transcripts_dir: Option<PathBuf>,
    tls: Option<FileTls>,
    auth: FileAuth,
    #[serde(default)]
    limits: FileLimits,
    upstream: FileUpstream,
    /// `[[routes]]`: recipient domains to other upstreams.
    #[serde(default)]
    routes: Vec<FileUpstream>,
    /// `reject` (default: 550 5.6.0 after the data) or `normalize`.
    #[serde(default)]
    bare_line_endings: Option<String>,
    /// Store and forward: where the queue is and how it retries.
    queue: Option<FileQueue>,
    /// Serve the Prometheus metrics here (`GET /metrics`).
    metrics: Option<SocketAddr>,
    /// Credentials to deliver queued mail with, per sender (never copied into the queue).
    #[serde(default)]
    secrets: Vec<FileSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQueue {
    dir: PathBuf,
    #[serde(default = "default_first_retry")]
    first_retry_secs: u64,
    #[serde(default = "default_max_retry")]
    max_retry_secs: u64,
    #[serde(default = "default_lifetime")]
    lifetime_hours: u64,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
}

fn default_first_retry() -> u64 {
    30 * 60
}
fn default_max_retry() -> u64 {
    4 * 3600
}
fn default_lifetime() -> u64 {
    5 * 24
}
fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSecret {
    /// The sender (the client's AUTH user) these credentials deliver for.
    address: String,
    /// The upstream user name (default: the address).
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    /// `passthrough`, `users` or `trusted`.
    mode: String,
    #[serde(default)]
    trusted_networks: Vec<String>,
    /// For `users`: `address:bcrypt-hash` lines (`htpasswd -nbB address password`).
    users_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLimits {
    max_message_size: u64,
    max_recipients: usize,
    max_rcpt_commands: usize,
    max_sessions: usize,
    max_sessions_per_ip: usize,
    auth_failure_delay_ms: u64,
    auth_failures_per_client: u32,
    auth_failures_per_upstream: u32,
    auth_failure_window_secs: u64,
    auth_block_secs: u64,
    auth_remember_refused_secs: u64,
    command_timeout_secs: u64,
    data_timeout_secs: u64,
    line_timeout_secs: u64,
    min_data_rate: u64,
    session_deadline_secs: u64,
    tls_handshake_timeout_secs: u64,
    upstream_command_timeout_secs: u64,
    upstream_data_end_timeout_secs: u64,
    spool_max_age_days: u64,
    spool_max_bytes: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        let t = Timeouts::default();
        let g = crate::auth_guard::AuthLimits::default();
        FileLimits {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_rcpt_commands: 200,
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
            upstream_command_timeout_secs: t.command.as_secs(),
            upstream_data_end_timeout_secs: t.data_end.as_secs(),
            spool_max_age_days: 30,
            spool_max_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    /// Routes only: a short name for logs and transcripts (default: the first domain).
    name: Option<String>,
    /// Routes only: the domain patterns the route serves.
    #[serde(default)]
    domains: Vec<String>,
    /// Routes only, pass-through mode: replay the client's credentials to this upstream too.
    #[serde(default)]
    passthrough: bool,
    /// `live` (default) or `queue` (store and forward; needs `[queue]`).
    mode: Option<String>,
    /// Queue mode: deliveries at once on this route.
    queue_concurrency: Option<usize>,
    /// Queue mode: deliveries started per minute on this route (stay under its quotas).
    queue_per_minute: Option<u32>,
    host: String,
    port: u16,
    /// `implicit`, `starttls` or `none`.
    tls: String,
    /// How strictly the upstream is checked: `verify` (default), `fingerprint`, `encrypt`,
    /// `may` or `none` (Postfix's security levels).
    tls_policy: Option<String>,
    /// `verify`: trust only this PEM file (CAs, or the server's own self-signed certificate,
    /// trusted as given) instead of the bundled public roots.
    ca: Option<PathBuf>,
    /// `fingerprint`: SHA-256 pins of the server's certificate or public key.
    #[serde(default)]
    fingerprints: Vec<String>,
    /// The name to verify (default: `host`).
    server_name: Option<String>,
    /// For `trusted` mode: the relay authenticates as this user...
    username: Option<String>,
    /// ...with the secret in this environment variable...
    password_env: Option<String>,
    /// ...or in this file (first line).
    password_file: Option<PathBuf>,
}

/// A config error: where, which key, what was expected.
fn bad(origin: &str, key: &str, what: impl std::fmt::Display) -> String {
    format!("{origin}: {key}: {what}")
}

/// A loaded config: the relay's settings and where its logs go.
#[derive(Debug)]
pub struct Loaded {
    pub relay: RelayConfig,
    pub log_dir: PathBuf,
}

/// Reads and checks a relay config file.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: {e}"))?;
    parse(&text, &origin, path.parent().unwrap_or(Path::new(".")))
}

/// Parses config text; relative paths are taken from `base`.
pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Loaded, String> {
    let f: File = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    let at = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let tls = match &f.tls {
        Some(t) => Some(server_tls(&at(&t.cert), &at(&t.key)).map_err(|e| bad(origin, "tls", e))?),
        None => None,
    };
    if f.listen_tls.is_some() && tls.is_none() {
        return Err(bad(
            origin,
            "listen_tls",
            "needs a [tls] section with cert and key",
        ));
    }
    let auth = match f.auth.mode.as_str() {
        "passthrough" => AuthMode::Passthrough,
        // No AUTH at all; "trusted" is the same mode, named for what it relies on.
        "none" | "trusted" => {
            let nets = f
                .auth
                .trusted_networks
                .iter()
                .map(|n| {
                    parse_network(n).ok_or_else(|| {
                        bad(
                            origin,
                            "auth.trusted_networks",
                            format!("{n:?} is not ADDRESS/PREFIX, e.g. 127.0.0.0/8"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if nets.is_empty() {
                return Err(bad(
                    origin,
                    "auth.trusted_networks",
                    "trusted mode needs at least one network",
                ));
            }
            AuthMode::TrustedNetworks(nets)
        }
        "users" => {
            let file = f.auth.users_file.as_ref().ok_or_else(|| {
                bad(
                    origin,
                    "auth.users_file",
                    "users mode needs a users file (address:bcrypt-hash lines)",
                )
            })?;
            let users = crate::users::Users::load(&at(file))
                .map_err(|e| bad(origin, "auth.users_file", e))?;
            AuthMode::Users(Arc::new(users))
        }
        other => {
            return Err(bad(
                origin,
                "auth.mode",
                format!(
                    "{other:?}: expected \"passthrough\", \"users\" or \"none\" (also spelled \"trusted\")"
                ),
            ));
        }
    };
    let l = &f.limits;
    let timeouts = Timeouts {
        command: Duration::from_secs(l.upstream_command_timeout_secs),
        data_end: Duration::from_secs(l.upstream_data_end_timeout_secs),
        ..Timeouts::default()
    };
    let ctx = Ctx {
        origin,
        base,
        hostname: &f.hostname,
        timeouts,
    };
    let u = &f.upstream;
    if !u.domains.is_empty() || u.name.is_some() || u.passthrough {
        return Err(bad(
            origin,
            "upstream",
            "name, domains and passthrough belong in [[routes]]; [upstream] is the default route",
        ));
    }
    let upstream = upstream_config(u, "upstream", &ctx)?;
    let default_queue = queue_mode(u, "upstream", origin)?;
    let credentials = &upstream.credentials;
    if matches!(auth, AuthMode::Users(_)) && credentials.is_none() && !default_queue {
        return Err(bad(
            origin,
            "upstream.username",
            "in users mode the relay authenticates upstream itself: give username with password_env or password_file",
        ));
    }
    if matches!(auth, AuthMode::Passthrough) && credentials.is_some() {
        return Err(bad(
            origin,
            "upstream.username",
            "not used in passthrough mode (clients bring their own credentials)",
        ));
    }
    let mut routes = Vec::with_capacity(f.routes.len());
    for (i, r) in f.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if r.domains.is_empty() {
            return Err(bad(
                origin,
                &format!("{key}.domains"),
                "a route needs at least one domain pattern (example.com, .example.com)",
            ));
        }
        for d in &r.domains {
            crate::route::check_pattern(d)
                .map_err(|e| bad(origin, &format!("{key}.domains"), e))?;
        }
        let upstream = upstream_config(r, &key, &ctx)?;
        if r.passthrough && !matches!(auth, AuthMode::Passthrough) {
            return Err(bad(
                origin,
                &format!("{key}.passthrough"),
                "only meaningful with auth mode \"passthrough\"",
            ));
        }
        if r.passthrough && upstream.credentials.is_some() {
            return Err(bad(
                origin,
                &format!("{key}.username"),
                "a passthrough route uses the client's credentials: remove username",
            ));
        }
        routes.push(crate::route::Route {
            label: r.name.clone().unwrap_or_else(|| r.domains[0].clone()),
            domains: r.domains.clone(),
            upstream,
            passthrough: r.passthrough,
            queue: queue_mode(r, &key, origin)?,
        });
    }
    let bare_line_endings = match f.bare_line_endings.as_deref() {
        None | Some("reject") => BareLineEnding::Reject,
        Some("normalize") => BareLineEnding::Normalize,
        Some(other) => {
            return Err(bad(
                origin,
                "bare_line_endings",
                format!("{other:?}: expected \"reject\" or \"normalize\""),
            ));
        }
    };
    let spool_dir = at(&f.spool_dir);
    let log_dir = match &f.log_dir {
        Some(d) => at(d),
        None => spool_dir
            .parent()
            .map(|p| p.join("log"))
            .unwrap_or_else(|| base.join("log")),
    };
    let queues = default_queue || routes.iter().any(|r| r.queue);
    // `may` goes plaintext when STARTTLS is missing (or stripped on the way): never with a
    // password on board.
    let carries = |up: &UpstreamConfig, passthrough: bool, queue: bool| {
        up.credentials.is_some() || passthrough || (queue && !f.secrets.is_empty())
    };
    let default_passthrough = matches!(auth, AuthMode::Passthrough);
    for (key, up, passthrough, queue) in std::iter::once((
        "upstream".to_string(),
        &upstream,
        default_passthrough,
        default_queue,
    ))
    .chain(
        routes
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("routes[{i}]"), &r.upstream, r.passthrough, r.queue)),
    ) {
        if up.tls_policy == TlsPolicy::May && carries(up, passthrough, queue) {
            return Err(bad(
                origin,
                &format!("{key}.tls_policy"),
                "\"may\" falls back to plaintext when STARTTLS is not offered (or is stripped by someone in the path), and this route sends credentials (the relay's username, a client's in passthrough, or [[secrets]]): use \"verify\", \"fingerprint\" or \"encrypt\"",
            ));
        }
    }
    if queues && matches!(auth, AuthMode::Passthrough) {
        return Err(bad(
            origin,
            "auth.mode",
            "a route in queue mode delivers after the client has gone, so the client's own credentials cannot be used: use auth mode \"users\" (with [[secrets]] for each sender) or \"none\"",
        ));
    }
    let queue = match (&f.queue, queues) {
        (None, true) => {
            return Err(bad(
                origin,
                "queue",
                "a route has mode = \"queue\": give a [queue] section with dir",
            ));
        }
        (None, false) => None,
        (Some(q), _) => {
            let mut secrets = std::collections::HashMap::new();
            for (i, sec) in f.secrets.iter().enumerate() {
                let key = format!("secrets[{i}]");
                let secret = read_secret(
                    origin,
                    &key,
                    sec.password_env.as_deref(),
                    sec.password_file.as_deref().map(at).as_deref(),
                )?;
                let user = sec.username.clone().unwrap_or_else(|| sec.address.clone());
                secrets.insert(
                    sec.address.to_ascii_lowercase(),
                    Credentials::new(user, secret),
                );
            }
            let secrets = Arc::new(secrets);
            Some(crate::relay::QueueSettings {
                dir: at(&q.dir),
                retry: crate::queue::deliver::Retry {
                    first: Duration::from_secs(q.first_retry_secs.max(1)),
                    max: Duration::from_secs(q.max_retry_secs.max(q.first_retry_secs).max(1)),
                    lifetime: Duration::from_secs(q.lifetime_hours * 3600),
                    jitter: 0.2,
                },
                concurrency: q.concurrency.max(1),
                tick: Duration::from_secs(1),
                secrets: Arc::new(move |who: &str| secrets.get(&who.to_ascii_lowercase()).cloned()),
                route_limits: std::iter::once(("default".to_string(), &f.upstream))
                    .chain(
                        routes
                            .iter()
                            .zip(&f.routes)
                            .map(|(r, fr)| (r.label.clone(), fr)),
                    )
                    .map(|(label, u)| {
                        (
                            label,
                            crate::queue::deliver::RouteLimits {
                                concurrency: u.queue_concurrency,
                                per_minute: u.queue_per_minute,
                            },
                        )
                    })
                    .collect(),
            })
        }
    };
    let relay = RelayConfig {
        hostname: f.hostname.clone(),
        listen: f.listen,
        listen_tls: f.listen_tls,
        tls,
        client_trust_file: None,
        spool_dir,
        upstream,
        routes,
        probe_routes: true,
        default_queue,
        queue,
        metrics: f.metrics,
        auth,
        max_message_size: l.max_message_size,
        max_recipients: l.max_recipients,
        max_rcpt_commands: l.max_rcpt_commands,
        max_sessions: l.max_sessions,
        max_sessions_per_ip: l.max_sessions_per_ip,
        auth_failure_delay: Duration::from_millis(l.auth_failure_delay_ms),
        auth_limits: crate::auth_guard::AuthLimits {
            per_client: l.auth_failures_per_client,
            per_upstream: l.auth_failures_per_upstream,
            window: Duration::from_secs(l.auth_failure_window_secs),
            block: Duration::from_secs(l.auth_block_secs),
            remember_refused: Duration::from_secs(l.auth_remember_refused_secs),
            ..crate::auth_guard::AuthLimits::default()
        },
        command_timeout: Duration::from_secs(l.command_timeout_secs),
        data_timeout: Duration::from_secs(l.data_timeout_secs),
        line_timeout: Duration::from_secs(l.line_timeout_secs),
        min_data_rate: l.min_data_rate,
        session_deadline: Duration::from_secs(l.session_deadline_secs),
        tls_handshake_timeout: Duration::from_secs(l.tls_handshake_timeout_secs.max(1)),
        bare_line_endings,
        transcripts: f.transcripts_dir.as_deref().map(at),
        retention: crate::spool::Retention {
            max_age: Duration::from_secs(l.spool_max_age_days * 86_400),
            max_bytes: l.spool_max_bytes,
            ..crate::spool::Retention::default()
        },
    };
    Ok(Loaded { relay, log_dir })
}

/// `mode` of an `[upstream]` or `[[routes]]` table: whether it queues.
fn queue_mode(u: &FileUpstream, key: &str, origin: &str) -> Result<bool, String> {
    match u.mode.as_deref() {
        None | Some("live") => Ok(false),
        Some("queue") => Ok(true),
        Some(other) => Err(bad(
            origin,
            &format!("{key}.mode"),
            format!("{other:?}: expected \"live\" or \"queue\""),
        )),
    }
}

/// A secret from an environment variable or a file (its first line), never the config.
fn read_secret(
    origin: &str,
    key: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<String, String> {
    match (env, file) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            bad(
                origin,
                &format!("{key}.password_env"),
                format!("environment variable {var} is not set"),
            )
        }),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                bad(
                    origin,
                    &format!("{key}.password_file"),
                    format!("{}: {e}", path.display()),
                )
            })?;
            let secret = text.lines().next().unwrap_or_default().trim().to_string();
            if secret.is_empty() {
                return Err(bad(
                    origin,
                    &format!("{key}.password_file"),
                    "the file is empty",
                ));
            }
            Ok(secret)
        }
        _ => Err(bad(
            origin,
            key,
            "give exactly one of password_env or password_file",
        )),
    }
}

/// What an upstream needs from the rest of the config file.
struct Ctx<'a> {
    origin: &'a str,
    base: &'a Path,
    hostname: &'a str,
    timeouts: Timeouts,
}

/// An `[upstream]` or `[[routes]]` table (`key` names it in errors).
fn upstream_config(u: &FileUpstream, key: &str, ctx: &Ctx) -> Result<UpstreamConfig, String> {
    let origin = ctx.origin;
    let at = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            ctx.base.join(p)
        }
    };
    let mode = match u.tls.as_str() {
        "implicit" => TlsMode::Implicit,
        "starttls" => TlsMode::StartTls,
        "none" => TlsMode::None,
        other => {
            return Err(bad(
                origin,
                &format!("{key}.tls"),
                format!("{other:?}: expected \"implicit\", \"starttls\" or \"none\""),
            ));
        }
    };
    let policy = tls_policy(u, mode, key, origin)?;
    let trust = match policy {
        TlsPolicy::Verify => match &u.ca {
            Some(ca) => {
                let path = at(ca);
                let pem = std::fs::read_to_string(&path).map_err(|e| {
                    bad(
                        origin,
                        &format!("{key}.ca"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                Some(
                    Trust::ca_pem(&ca.display().to_string(), &pem)
                        .map_err(|e| bad(origin, &format!("{key}.ca"), e))?,
                )
            }
            None => Some(Trust::PublicRoots),
        },
        TlsPolicy::Fingerprint => Some(Trust::Pins(
            u.fingerprints
                .iter()
                .map(|f| f.parse())
                .collect::<Result<_, _>>()
                .map_err(|e| bad(origin, &format!("{key}.fingerprints"), e))?,
        )),
        TlsPolicy::Encrypt | TlsPolicy::May => Some(Trust::Unchecked),
        TlsPolicy::None => None,
    };
    let tls_config = match trust {
        Some(trust) => Some(
            crate::upstream_tls::config_for(policy, trust)
                .map_err(|e| bad(origin, &format!("{key}.tls_policy"), e))?,
        ),
        None => None,
    };
    let section = match (
        key,
        u.name.as_deref().or(u.domains.first().map(|d| d.as_str())),
    ) {
        ("upstream", _) | (_, None) => format!("[{key}] of {origin}"),
        (_, Some(label)) => format!("[[routes]] {label:?} of {origin}"),
    };
    let credentials = match &u.username {
        None if u.password_env.is_none() && u.password_file.is_none() => None,
        Some(user) => {
            let file = u.password_file.as_deref().map(at);
            let secret = read_secret(origin, key, u.password_env.as_deref(), file.as_deref())?;
            Some(Credentials::new(user.clone(), secret))
        }
        None => {
            return Err(bad(
                origin,
                key,
                "a password_env or password_file needs the username it belongs to",
            ));
        }
    };
    let addr = crate::upstream_addr::host_port(&u.host, u.port);
    Ok(UpstreamConfig {
        name: addr.clone(),
        addr,
        server_name: u
            .server_name
            .clone()
            .unwrap_or_else(|| crate::upstream_addr::bare_host(&u.host).to_string()),
        tls: mode,
        tls_policy: policy,
        tls_config,
        config_at: section,
        helo_name: ctx.hostname.to_string(),
        credentials,
        timeouts: ctx.timeouts,
        transcript: true,
    })
}

/// `tls_policy` checked against `tls`, `ca` and `fingerprints` (each mismatch named).
fn tls_policy(
    u: &FileUpstream,
    mode: TlsMode,
    key: &str,
    origin: &str,
) -> Result<TlsPolicy, String> {
    let at = |k: &str| format!("{key}.{k}");
    let policy = match &u.tls_policy {
        None if mode == TlsMode::None => TlsPolicy::None,
        None => TlsPolicy::Verify,
        Some(p) => p.parse().map_err(|e| bad(origin, &at("tls_policy"), e))?,
    };
    let problem = match (mode, policy) {
        (TlsMode::None, TlsPolicy::None) => None,
        (TlsMode::None, p) => Some(format!(
            "{p:?} needs TLS, and tls = \"none\" is plaintext: write tls = \"implicit\" (port 465) or \"starttls\""
        )),
        (_, TlsPolicy::None) => Some(
            "\"none\" is plaintext: write tls = \"none\" instead (and leave tls_policy out)".to_string(),
        ),
        (TlsMode::Implicit, TlsPolicy::May) => Some(
            "\"may\" means STARTTLS when offered (tls = \"starttls\"); implicit TLS is never optional: to skip the certificate check write \"encrypt\"".to_string(),
        ),
        _ => None,
    };
    if let Some(p) = problem {
        return Err(bad(
            origin,
            &at("tls_policy"),
            format!("{}: {p}", policy.as_str()),
        ));
    }
    if policy == TlsPolicy::Fingerprint && u.fingerprints.is_empty() {
        return Err(bad(
            origin,
            &at("fingerprints"),
            "tls_policy = \"fingerprint\" needs at least one: smtp-relay check-tls HOST:PORT prints the server's",
        ));
    }
    if policy != TlsPolicy::Fingerprint && !u.fingerprints.is_empty() {
        return Err(bad(
            origin,
            &at("fingerprints"),
            format!("only read with tls_policy = \"fingerprint\" (this one is {policy:?})"),
        ));
    }
    if policy != TlsPolicy::Verify && u.ca.is_some() {
        return Err(bad(
            origin,
            &at("ca"),
            format!(
                "only read with tls_policy = \"verify\" (this one is {:?}); to trust exactly one certificate use \"fingerprint\"",
                policy.as_str()
            ),
        ));
    }
    Ok(policy)
}

fn parse_network(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn server_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(Arc::new(config))
}

/// Runs the relay from a config file until Ctrl-C.
pub async fn run(
    config: &Path,
    log_json: bool,
    metrics: Option<SocketAddr>,
) -> std::process::ExitCode {
    let Loaded {
        relay: mut config,
        log_dir,
    } = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtp-relay serve: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if metrics.is_some() {
        config.metrics = metrics;
    }
    let _log = match crate::log::init(&log_dir, log_json) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("smtp-relay serve: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let upstream = config.upstream.name.clone();
    let has_tls = config.tls.is_some();
    let relay = match crate::relay::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smtp-relay serve: cannot listen: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    smtp_net::say(&format!(
        "smtp-relay serve: relay on {} (plain{}){}, upstream {upstream}\nCtrl-C (or SIGTERM) stops it.\n",
        relay.addr(),
        if has_tls { " + STARTTLS" } else { "" },
        relay
            .tls_addr()
            .map(|a| format!(", {a} (implicit TLS)"))
            .unwrap_or_default()
    ));
    smtp_net::shutdown_signal().await;
    smtp_net::say("smtp-relay serve: shutting down\n");
    relay.shutdown().await;
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
hostname = "relay.test"
listen = "127.0.0.1:0"
spool_dir = "spool"
[auth]
mode = "passthrough"
[upstream]
host = "smtp.163.com"
port = 465
tls = "implicit"
"#;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../relay.example.toml");
        let loaded = parse(text, "relay.example.toml", Path::new("/etc/smtp-relay")).unwrap();
        let config = loaded.relay;
        assert_eq!(config.upstream.addr, "smtp.163.com:465");
        assert_eq!(config.upstream.tls, TlsMode::Implicit);
        assert_eq!(
            config.spool_dir,
            Path::new("/etc/smtp-relay/smtp-relay-data/spool")
        );
        assert_eq!(
            loaded.log_dir,
            Path::new("/etc/smtp-relay/smtp-relay-data/log")
        );
    }

    /// A route towards an internal server, `none` auth (no credentials on board).
    fn internal(extra: &str) -> String {
        let none = BASE.replace(
            "mode = \"passthrough\"",
            "mode = \"none\"\ntrusted_networks = [\"127.0.0.0/8\"]",
        );
        format!(
            "{none}\n[[routes]]\nname = \"lab\"\ndomains = [\"lab.example\"]\nhost = \"mail.lab.example\"\nport = 25\n{extra}\n"
        )
    }

    fn route_error(extra: &str) -> String {
        parse(&internal(extra), "r.toml", Path::new("/x")).unwrap_err()
    }

    #[test]
    fn tls_policies_parse_with_what_each_needs() {
        let pin = format!("sha256:{}", "AB".repeat(32));
        for (extra, policy) in [
            ("tls = \"starttls\"", TlsPolicy::Verify),
            (
                "tls = \"starttls\"\ntls_policy = \"verify\"",
                TlsPolicy::Verify,
            ),
            ("tls = \"starttls\"\ntls_policy = \"may\"", TlsPolicy::May),
            (
                "tls = \"implicit\"\ntls_policy = \"encrypt\"",
                TlsPolicy::Encrypt,
            ),
            (
                &*format!(
                    "tls = \"starttls\"\ntls_policy = \"fingerprint\"\nfingerprints = [\"{pin}\"]"
                ),
                TlsPolicy::Fingerprint,
            ),
            ("tls = \"none\"", TlsPolicy::None),
            ("tls = \"none\"\ntls_policy = \"none\"", TlsPolicy::None),
        ] {
            let c = parse(&internal(extra), "r.toml", Path::new("/x"))
                .unwrap_or_else(|e| panic!("{extra}: {e}"))
                .relay;
            let up = &c.routes[0].upstream;
            assert_eq!(up.tls_policy, policy, "{extra}");
            assert_eq!(
                up.tls_config.is_some(),
                policy != TlsPolicy::None,
                "{extra}"
            );
            assert_eq!(up.config_at, "[[routes]] \"lab\" of r.toml");
        }
    }

    #[test]
    fn tls_policy_mismatches_are_refused_with_the_reason() {
        let pin = format!("sha256:{}", "AB".repeat(32));
        for (extra, want) in [
            (
                "tls = \"implicit\"\ntls_policy = \"may\"".to_string(),
                "r.toml: routes[0].tls_policy: may: \"may\" means STARTTLS when offered",
            ),
            (
                "tls = \"none\"\ntls_policy = \"verify\"".into(),
                "r.toml: routes[0].tls_policy: verify: Verify needs TLS",
            ),
            (
                "tls = \"starttls\"\ntls_policy = \"none\"".into(),
                "r.toml: routes[0].tls_policy: none: \"none\" is plaintext: write tls = \"none\"",
            ),
            (
                "tls = \"starttls\"\ntls_policy = \"fingerprint\"".into(),
                "r.toml: routes[0].fingerprints: tls_policy = \"fingerprint\" needs at least one",
            ),
            (
                "tls = \"starttls\"\ntls_policy = \"fingerprint\"\nfingerprints = [\"AB:CD\"]"
                    .into(),
                "r.toml: routes[0].fingerprints: \"AB:CD\": expected a SHA-256 fingerprint",
            ),
            (
                format!("tls = \"starttls\"\nfingerprints = [\"{pin}\"]"),
                "r.toml: routes[0].fingerprints: only read with tls_policy = \"fingerprint\"",
            ),
            (
                "tls = \"starttls\"\ntls_policy = \"encrypt\"\nca = \"ca.pem\"".into(),
                "r.toml: routes[0].ca: only read with tls_policy = \"verify\"",
            ),
            (
                "tls = \"starttls\"\ntls_policy = \"secure\"".into(),
                "r.toml: routes[0].tls_policy: \"secure\": expected \"verify\"",
            ),
        ] {
            let e = route_error(&extra);
            assert!(e.starts_with(want), "{extra}:\n{e}\nwanted {want}");
        }
    }

    #[test]
    fn may_is_refused_on_a_route_that_carries_credentials() {
        // The relay's own username on the route.
        let e = route_error(
            "tls = \"starttls\"\ntls_policy = \"may\"\nusername = \"relay@lab.example\"\npassword_env = \"PATH\"",
        );
        assert!(
            e.starts_with("r.toml: routes[0].tls_policy: \"may\" falls back to plaintext"),
            "{e}"
        );
        // The client's own, in passthrough mode.
        let text = format!(
            "{BASE}\n[[routes]]\nname = \"lab\"\ndomains = [\"lab.example\"]\npassthrough = true\nhost = \"mail.lab.example\"\nport = 25\ntls = \"starttls\"\ntls_policy = \"may\"\n"
        );
        let e = parse(&text, "r.toml", Path::new("/x")).unwrap_err();
        assert!(
            e.starts_with("r.toml: routes[0].tls_policy: \"may\""),
            "{e}"
        );
        // The default upstream in passthrough mode carries the client's credentials too.
        let text = BASE.replace(
            "port = 465\ntls = \"implicit\"",
            "port = 587\ntls = \"starttls\"\ntls_policy = \"may\"",
        );
        let e = parse(&text, "r.toml", Path::new("/x")).unwrap_err();
        assert!(e.starts_with("r.toml: upstream.tls_policy: \"may\""), "{e}");
    }

    #[test]
    fn an_ipv6_upstream_is_written_in_brackets() {
        for host in ["::1", "[::1]"] {
            let c = parse(
                &BASE.replace("host = \"smtp.163.com\"", &format!("host = \"{host}\"")),
                "r.toml",
                Path::new("/x"),
            )
            .unwrap()
            .relay;
            assert_eq!(c.upstream.addr, "[::1]:465");
            assert_eq!(c.upstream.name, "[::1]:465");
            assert_eq!(c.upstream.server_name, "::1");
        }
    }

    #[test]
    fn a_self_signed_certificate_in_ca_is_accepted_at_load() {
        let dir = std::env::temp_dir().join(format!("smtp-relay-serve-ca-{}", std::process::id()));
        let files = fake_upstream::tls::TlsFiles::in_dir(&dir);
        fake_upstream::tls::generate_kind(&files, fake_upstream::tls::CertKind::SelfSignedCa)
            .unwrap();
        let c = parse(
            &internal("tls = \"starttls\"\nca = \"cert.pem\""),
            "r.toml",
            &dir,
        )
        .unwrap()
        .relay;
        assert_eq!(c.routes[0].upstream.tls_policy, TlsPolicy::Verify);
        let e = route_error("tls = \"starttls\"\nca = \"missing.pem\"");
        assert!(
            e.starts_with("r.toml: routes[0].ca: /x/missing.pem: "),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn minimal_passthrough() {
        let c = parse(BASE, "r.toml", Path::new("/x")).unwrap().relay;
        assert_eq!(c.auth, AuthMode::Passthrough);
        assert_eq!(c.upstream.server_name, "smtp.163.com");
        assert!(c.upstream.credentials.is_none());
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = parse(
            &BASE.replace("\"implicit\"", "\"ssl\""),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "r.toml: upstream.tls: \"ssl\": expected \"implicit\", \"starttls\" or \"none\""
        );
        let e = parse(&format!("{BASE}colour = 1\n"), "r.toml", Path::new(".")).unwrap_err();
        assert!(e.starts_with("r.toml: ") && e.contains("colour"), "{e}");
        let none = BASE.replace(
            "mode = \"passthrough\"",
            "mode = \"none\"\ntrusted_networks = [\"10.0.0.0/8\"]",
        );
        let c = parse(&none, "r.toml", Path::new(".")).unwrap().relay;
        assert!(matches!(c.auth, AuthMode::TrustedNetworks(ref n) if n.len() == 1));
        let e = parse(
            &BASE.replace("\"passthrough\"", "\"trusted\""),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "r.toml: auth.trusted_networks: trusted mode needs at least one network"
        );
        let e = parse(
            &BASE.replace(
                "mode = \"passthrough\"",
                "mode = \"trusted\"\ntrusted_networks = [\"10.0.0.0/99\"]",
            ),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("\"10.0.0.0/99\" is not ADDRESS/PREFIX"), "{e}");
        let e = parse(
            &format!(
                "{BASE}username = \"me@163.com\"\npassword_env = \"SMTP_RELAY_SURELY_UNSET\"\n"
            ),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "r.toml: upstream.password_env: environment variable SMTP_RELAY_SURELY_UNSET is not set"
        );
    }

    #[test]
    fn routes() {
        let text = format!(
            "{BASE}\n[[routes]]\nname = \"qq\"\ndomains = [\"qq.com\", \".qq.com\"]\nhost = \"mx1.qq.com\"\nport = 25\ntls = \"starttls\"\n\n[[routes]]\ndomains = [\"bupt.edu.cn\"]\npassthrough = true\nhost = \"mail.bupt.edu.cn\"\nport = 465\ntls = \"implicit\"\n"
        );
        let c = parse(&text, "r.toml", Path::new(".")).unwrap().relay;
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].label, "qq");
        assert_eq!(c.routes[0].upstream.addr, "mx1.qq.com:25");
        assert_eq!(c.routes[0].upstream.tls, TlsMode::StartTls);
        assert!(!c.routes[0].passthrough);
        assert_eq!(c.routes[1].label, "bupt.edu.cn");
        assert!(c.routes[1].passthrough);
        assert_eq!(crate::route::match_domain(&c.routes, "vip.qq.com"), Some(0));

        let e = parse(
            &text.replace("[\"bupt.edu.cn\"]", "[]"),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            e.starts_with("r.toml: routes[1].domains: a route needs"),
            "{e}"
        );
        let e = parse(
            &text.replace("\"qq.com\", ", "\"qq com\", "),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            e.starts_with("r.toml: routes[0].domains: \"qq com\" is not a domain pattern"),
            "{e}"
        );
        let e = parse(
            &text.replace("tls = \"starttls\"", "tls = \"tls\""),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            e.starts_with("r.toml: routes[0].tls: \"tls\": expected"),
            "{e}"
        );
        let e = parse(
            &BASE.replace(
                "tls = \"implicit\"",
                "tls = \"implicit\"\ndomains = [\"x.org\"]",
            ),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("belong in [[routes]]"), "{e}");
    }

    #[test]
    fn queue_mode() {
        // SAFETY: a variable only this test reads.
        unsafe { std::env::set_var("SMTP_RELAY_TEST_ALICE_CODE", "ALICEAUTHCODE163") };
        let text = BASE
            .replace(
                "mode = \"passthrough\"",
                "mode = \"none\"\ntrusted_networks = [\"127.0.0.0/8\"]",
            )
            .replace("tls = \"implicit\"", "tls = \"implicit\"\nmode = \"queue\"")
            + "[queue]\ndir = \"queue\"\nfirst_retry_secs = 60\nlifetime_hours = 24\n[[secrets]]\naddress = \"Alice@163.com\"\npassword_env = \"SMTP_RELAY_TEST_ALICE_CODE\"\n";
        let c = parse(&text, "r.toml", Path::new("/x")).unwrap().relay;
        assert!(c.default_queue);
        let q = c.queue.unwrap();
        assert_eq!(q.dir, Path::new("/x/queue"));
        assert_eq!(q.retry.first, Duration::from_secs(60));
        assert_eq!(q.retry.lifetime, Duration::from_secs(86_400));
        let alice = (q.secrets)("alice@163.com").unwrap();
        assert_eq!(
            (alice.username.as_str(), alice.secret.as_str()),
            ("Alice@163.com", "ALICEAUTHCODE163")
        );
        assert!((q.secrets)("bob@163.com").is_none());

        let e = parse(
            &text.replace("[queue]\ndir = \"queue\"\n", "[unused]\n"),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("unused") || e.contains("queue"), "{e}");
        let no_queue: String = text[..text.find("[queue]").unwrap()].to_string();
        let e = parse(&no_queue, "r.toml", Path::new(".")).unwrap_err();
        assert!(
            e.starts_with("r.toml: queue: a route has mode = \"queue\""),
            "{e}"
        );
        let pass = no_queue.replace(
            "mode = \"none\"\ntrusted_networks = [\"127.0.0.0/8\"]",
            "mode = \"passthrough\"",
        ) + "[queue]\ndir = \"q\"\n";
        let e = parse(&pass, "r.toml", Path::new(".")).unwrap_err();
        assert!(
            e.starts_with("r.toml: auth.mode: a route in queue mode"),
            "{e}"
        );
        let e = parse(
            &text.replace("mode = \"queue\"", "mode = \"later\""),
            "r.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            e.contains("upstream.mode: \"later\": expected \"live\" or \"queue\""),
            "{e}"
        );
    }

    #[test]
    fn users_mode_needs_a_users_file_and_upstream_credentials() {
        let users = BASE.replace("mode = \"passthrough\"", "mode = \"users\"");
        let e = parse(&users, "r.toml", Path::new(".")).unwrap_err();
        assert_eq!(
            e,
            "r.toml: auth.users_file: users mode needs a users file (address:bcrypt-hash lines)"
        );
        let dir = std::env::temp_dir().join(format!("serve-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("users.htpasswd"),
            format!("c@x.example:{}\n", bcrypt::hash("pw", 4).unwrap()),
        )
        .unwrap();
        let with_file = users.replace(
            "mode = \"users\"",
            "mode = \"users\"\nusers_file = \"users.htpasswd\"",
        );
        let e = parse(&with_file, "r.toml", &dir).unwrap_err();
        assert!(
            e.starts_with("r.toml: upstream.username: in users mode"),
            "{e}"
        );
        std::fs::write(dir.join("code.txt"), "ALICEAUTHCODE163\n").unwrap();
        let full =
            format!("{with_file}username = \"alice@163.com\"\npassword_file = \"code.txt\"\n");
        let c = parse(&full, "r.toml", &dir).unwrap().relay;
        assert!(matches!(c.auth, AuthMode::Users(_)));
        assert_eq!(c.upstream.credentials.unwrap().secret, "ALICEAUTHCODE163");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn networks() {
        assert_eq!(
            parse_network("127.0.0.0/8"),
            Some(("127.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            parse_network("::1/128"),
            Some(("::1".parse().unwrap(), 128))
        );
        assert_eq!(parse_network("1.2.3.4"), None);
        assert_eq!(parse_network("1.2.3.4/33"), None);
    }
}
