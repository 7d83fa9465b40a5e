//! An `[upstream]` or `[[routes]]` table made an `UpstreamConfig`: address, TLS and its
//! policy, credentials from the environment or a file (never from the config itself), queue
//! mode.

use super::*;

/// `mode` of an `[upstream]` or `[[routes]]` table: whether it queues.
pub(super) fn queue_mode(u: &FileUpstream, key: &str, origin: &str) -> Result<bool, String> {
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

/// `max_sessions` of an `[upstream]` or `[[routes]]` table: a live route's cap on upstream
/// sessions at once (a queued route has `queue_concurrency`).
pub(super) fn max_sessions(
    u: &FileUpstream,
    key: &str,
    origin: &str,
) -> Result<Option<usize>, String> {
    let key = format!("{key}.max_sessions");
    match u.max_sessions {
        None => Ok(None),
        Some(0) => Err(bad(origin, &key, "at least 1 (leave it out for no cap)")),
        Some(_) if queue_mode(u, "", origin)? => Err(bad(
            origin,
            &key,
            "a route in queue mode caps its deliveries at once with queue_concurrency",
        )),
        Some(n) => Ok(Some(n)),
    }
}

/// A secret from an environment variable or a file (its first line), never the config.
pub(super) fn read_secret(
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
pub(super) struct Ctx<'a> {
    pub(super) origin: &'a str,
    pub(super) base: &'a Path,
    pub(super) hostname: &'a str,
    pub(super) timeouts: Timeouts,
}

/// An `[upstream]` or `[[routes]]` table (`key` names it in errors).
pub(super) fn upstream_config(
    u: &FileUpstream,
    key: &str,
    ctx: &Ctx,
) -> Result<UpstreamConfig, String> {
    let origin = ctx.origin;
    let at = |p: &Path| resolve(ctx.base, p);
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
        bdat: u.bdat.then_some(crate::upstream::BDAT_CHUNK),
    })
}

/// `tls_policy` checked against `tls`, `ca` and `fingerprints` (each mismatch named).
pub(super) fn tls_policy(
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
