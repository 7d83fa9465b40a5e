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

mod file;
mod upstream;
use file::*;
use upstream::*;

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
    let at = |p: &Path| resolve(base, p);

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
    let auth = auth_mode(&f, origin, base)?;
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
    let upstream_max_sessions = max_sessions(u, "upstream", origin)?;
    check_default_credentials(&auth, &upstream, default_queue, origin)?;
    let routes = routes(&f, &auth, &ctx)?;
    let bare_line_endings = bare_line_endings(&f, origin)?;
    let spool_dir = at(&f.spool_dir);
    // Beside the spool unless given.
    let log_dir = f.log_dir.as_deref().map(at).unwrap_or_else(|| {
        spool_dir
            .parent()
            .map_or_else(|| base.join("log"), |p| p.join("log"))
    });
    let queues = default_queue || routes.iter().any(|r| r.queue);
    check_may(&f, origin, &upstream, &auth, default_queue, &routes)?;
    if queues && matches!(auth, AuthMode::Passthrough) {
        return Err(bad(
            origin,
            "auth.mode",
            "a route in queue mode delivers after the client has gone, so the client's own credentials cannot be used: use auth mode \"users\" (with [[secrets]] for each sender) or \"none\"",
        ));
    }
    let queue = queue_settings(&f, origin, base, &routes, queues)?;
    let relay = RelayConfig {
        hostname: f.hostname.clone(),
        listen: f.listen,
        listen_tls: f.listen_tls,
        proxy_protocol: proxy_protocol(&f, origin)?,
        upstream_reuse: (l.upstream_reuse_idle_secs > 0).then(|| crate::relay::ReuseSettings {
            idle: Duration::from_secs(l.upstream_reuse_idle_secs),
            max_messages: l.upstream_reuse_max_messages.max(1),
            max_idle: l.upstream_reuse_max_idle,
        }),
        upstream_max_sessions,
        upstream_session_wait: Duration::from_secs(l.upstream_session_wait_secs),
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
        chunking: l.chunking,
        max_sessions: l.max_sessions,
        max_sessions_per_ip: l.max_sessions_per_ip,
        auth_failure_delay: Duration::from_millis(l.auth_failure_delay_ms),
        auth_limits: l.auth_limits(),
        command_timeout: Duration::from_secs(l.command_timeout_secs),
        data_timeout: Duration::from_secs(l.data_timeout_secs),
        line_timeout: Duration::from_secs(l.line_timeout_secs),
        min_data_rate: l.min_data_rate,
        session_deadline: Duration::from_secs(l.session_deadline_secs),
        tls_handshake_timeout: Duration::from_secs(l.tls_handshake_timeout_secs.max(1)),
        bare_line_endings,
        transcripts: f.transcripts_dir.as_deref().map(at),
        retention: l.retention(),
    };
    Ok(Loaded { relay, log_dir })
}

/// A path from the file: as it is when absolute, else beside the file.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `[auth]`: the mode, its trusted networks or its users file.
fn auth_mode(f: &File, origin: &str, base: &Path) -> Result<AuthMode, String> {
    let at = |p: &Path| resolve(base, p);
    Ok(match f.auth.mode.as_str() {
        "passthrough" => AuthMode::Passthrough,
        // No AUTH at all; "trusted" is the same mode, named for what it relies on.
        "none" | "trusted" => {
            let nets = networks(
                &f.auth.trusted_networks,
                origin,
                "auth.trusted_networks",
                "127.0.0.0/8",
            )?;
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
    })
}

/// The default route's own credentials: needed in users mode (unless it queues), refused in
/// passthrough mode.
fn check_default_credentials(
    auth: &AuthMode,
    upstream: &UpstreamConfig,
    default_queue: bool,
    origin: &str,
) -> Result<(), String> {
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
    Ok(())
}

/// `[[routes]]`: each one's domains checked, its upstream, passthrough and queue mode.
fn routes(f: &File, auth: &AuthMode, ctx: &Ctx) -> Result<Vec<crate::route::Route>, String> {
    let origin = ctx.origin;
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
        let upstream = upstream_config(r, &key, ctx)?;
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
            max_sessions: max_sessions(r, &key, origin)?,
        });
    }
    Ok(routes)
}

/// `bare_line_endings`: reject (the default) or normalize.
fn bare_line_endings(f: &File, origin: &str) -> Result<BareLineEnding, String> {
    Ok(match f.bare_line_endings.as_deref() {
        None | Some("reject") => BareLineEnding::Reject,
        Some("normalize") => BareLineEnding::Normalize,
        Some(other) => {
            return Err(bad(
                origin,
                "bare_line_endings",
                format!("{other:?}: expected \"reject\" or \"normalize\""),
            ));
        }
    })
}

/// No route that carries credentials may use `tls_policy = "may"`.
fn check_may(
    f: &File,
    origin: &str,
    upstream: &UpstreamConfig,
    auth: &AuthMode,
    default_queue: bool,
    routes: &[crate::route::Route],
) -> Result<(), String> {
    // `may` goes plaintext when STARTTLS is missing (or stripped on the way): never with a
    // password on board.
    let carries = |up: &UpstreamConfig, passthrough: bool, queue: bool| {
        up.credentials.is_some() || passthrough || (queue && !f.secrets.is_empty())
    };
    let default_passthrough = matches!(auth, AuthMode::Passthrough);
    for (key, up, passthrough, queue) in std::iter::once((
        "upstream".to_string(),
        upstream,
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
    Ok(())
}

/// `[queue]` and `[[secrets]]`, when a route queues.
fn queue_settings(
    f: &File,
    origin: &str,
    base: &Path,
    routes: &[crate::route::Route],
    queues: bool,
) -> Result<Option<crate::relay::QueueSettings>, String> {
    let at = |p: &Path| resolve(base, p);
    Ok(match (&f.queue, queues) {
        (None, true) => {
            return Err(bad(
                origin,
                "queue",
                "a route has mode = \"queue\": give a [queue] section with dir",
            ));
        }
        (None, false) => None,
        (Some(q), _) => {
            let mut secrets = Vec::new();
            for (i, sec) in f.secrets.iter().enumerate() {
                let key = format!("secrets[{i}]");
                let secret = read_secret(
                    origin,
                    &key,
                    sec.password_env.as_deref(),
                    sec.password_file.as_deref().map(at).as_deref(),
                )?;
                let user = sec.username.clone().unwrap_or_else(|| sec.address.clone());
                secrets.push((sec.address.clone(), Credentials::new(user, secret)));
            }
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
                secrets: crate::queue::deliver::secrets_from(secrets),
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
    })
}

/// `[proxy_protocol]`: the balancers' networks (at least one) and the header's time limit.
fn proxy_protocol(f: &File, origin: &str) -> Result<Option<crate::relay::ProxyProtocol>, String> {
    let Some(pp) = &f.proxy_protocol else {
        return Ok(None);
    };
    let trusted = networks(&pp.trusted, origin, "proxy_protocol.trusted", "10.0.0.5/32")?;
    if trusted.is_empty() {
        return Err(bad(
            origin,
            "proxy_protocol.trusted",
            "name the load balancers' addresses (nothing else may connect)",
        ));
    }
    Ok(Some(crate::relay::ProxyProtocol {
        trusted,
        header_timeout: Duration::from_secs(pp.header_timeout_secs.max(1)),
    }))
}

/// A list of `ADDRESS/PREFIX` networks under `key`; a bad one is named with an `example`.
fn networks(
    list: &[String],
    origin: &str,
    key: &str,
    example: &str,
) -> Result<Vec<(IpAddr, u8)>, String> {
    list.iter()
        .map(|n| {
            parse_network(n).ok_or_else(|| {
                bad(
                    origin,
                    key,
                    format!("{n:?} is not ADDRESS/PREFIX, e.g. {example}"),
                )
            })
        })
        .collect()
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
mod tests;
