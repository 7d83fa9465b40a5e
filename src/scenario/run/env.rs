//! A scenario's world: its fake upstreams (personas, TLS, faults) and the relay under test
//! (ours in-process, configured from the scenario, or someone else's at an address).

use super::*;

/// The EHLO keywords the relay advertises (upper case), asked on a connection of its own
/// (greeting, EHLO, QUIT; 5 s for each reply).
pub(super) async fn advertised(relay: SocketAddr) -> Result<Vec<String>, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let wait = Duration::from_secs(5);
    let timed = |what: &'static str| move |_| format!("no {what} within 5 s");
    let tcp = tokio::time::timeout(wait, tokio::net::TcpStream::connect(relay))
        .await
        .map_err(timed("connection"))?
        .map_err(|e| format!("connect: {e}"))?;
    let mut io = BufReader::new(tcp);
    let reply = async |io: &mut BufReader<tokio::net::TcpStream>| -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(wait, io.read_line(&mut line))
                .await
                .map_err(timed("reply"))?
                .map_err(|e| e.to_string())?;
            if n == 0 || line.len() > 4096 || lines.len() > 100 {
                return Err("closed or overlong reply".into());
            }
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.trim_end().to_string());
            if last {
                return Ok(lines);
            }
        }
    };
    reply(&mut io).await?;
    io.get_mut()
        .write_all(b"EHLO requires.probe\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let ehlo = reply(&mut io).await?;
    let _ = io.get_mut().write_all(b"QUIT\r\n").await;
    let _ = reply(&mut io).await;
    Ok(ehlo
        .iter()
        .skip(1)
        .filter_map(|l| l.get(4..))
        .filter_map(|k| k.split_whitespace().next())
        .map(|k| k.to_ascii_uppercase())
        .collect())
}

/// The fake upstreams and the relay of one scenario.
pub(super) struct Env {
    /// The default route's upstream first, then one per route (label, handle).
    pub(super) fakes: Vec<(String, Arc<fake_upstream::Handle>)>,
    /// Against another relay: this scenario's part of the run's shared upstream.
    pub(super) window: Option<Window>,
    pub(super) relay: Option<RelayHandle>,
    pub(super) relay_addr: SocketAddr,
    pub(super) relay_tls_addr: Option<SocketAddr>,
    pub(super) client_tls: Arc<rustls::ClientConfig>,
    pub(super) external: bool,
    /// Where `message:` files are found.
    pub(super) messages_dir: PathBuf,
    /// The relay's spool (smtp-relay only).
    pub(super) spool_dir: Option<PathBuf>,
    /// The relay's queue, in store-and-forward mode.
    pub(super) queue_dir: Option<PathBuf>,
    pub(super) scenario_dir: PathBuf,
}

impl Env {
    pub(super) async fn start(
        sc: &Scenario,
        opts: &Options,
        tls: &TlsMaterial,
        dir: &Path,
        shared: Option<(Arc<SharedUpstream>, usize)>,
    ) -> Result<Env, String> {
        let scenario_dir = sc
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let (fakes, window) = start_fakes(sc, opts, tls, dir, shared, &scenario_dir).await?;
        let client_tls =
            fake_upstream::tls::client_config(&tls.ca_pem).map_err(|e| e.to_string())?;
        let common = Env {
            relay: None,
            relay_addr: "127.0.0.1:0".parse().expect("an address"),
            relay_tls_addr: None,
            client_tls,
            external: false,
            messages_dir: scenario_dir.join("messages"),
            spool_dir: None,
            queue_dir: None,
            scenario_dir,
            fakes,
            window,
        };
        match opts.target {
            Target::External { relay, .. } => Ok(Env {
                relay_addr: relay,
                external: true,
                ..common
            }),
            Target::Ours => ours(sc, common, tls, dir).await,
        }
    }

    /// Waits until the upstreams stop receiving (a store-and-forward relay delivers after
    /// its 250): for an external relay, until the expected count arrived and no upstream
    /// heard anything new (a command, a reply, DATA bytes, on any session, open or closed)
    /// for a second (at most 15 s).
    /// With `expect consistent`, it also waits until every message the client was told 2xx
    /// for arrived or a bounce did (a relay bounces after it was refused upstream).
    pub(super) async fn settle(
        &self,
        sc: &Scenario,
        quiet: Duration,
        sent: &[Vec<u8>],
        finals: &[Option<Reply>],
        failed: bool,
    ) {
        if !self.external {
            return;
        }
        let quiet = sc.settle.unwrap_or(quiet);
        let consistent = !failed && sc.checks.iter().any(|c| c.item == Check::Consistent);
        // As many messages arrived as were accepted (a repaired copy counts), or a bounce.
        let accounted = || {
            let received = self.received();
            let accepted = finals
                .iter()
                .take(sent.len())
                .filter(|r| {
                    r.as_ref()
                        .is_some_and(|r| r.severity() == smtp_wire::Severity::Completion)
                })
                .count();
            received.iter().any(|(_, r)| is_bounce(r))
                || received.iter().filter(|(_, r)| !is_bounce(r)).count() >= accepted
        };
        let want = sc
            .checks
            .iter()
            .filter(|_| !failed)
            .find_map(|c| match c.item {
                Check::Messages(n) => Some(n as u64),
                Check::Delivered(_) | Check::BodyIntact | Check::UpstreamGot(_) => Some(1),
                _ => None,
            });
        let deadline = Instant::now() + Duration::from_secs(15).max(quiet * 2);
        let activity = || self.fakes.iter().map(|(_, f)| f.activity()).sum::<u64>();
        let mut last = (activity(), Instant::now());
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = self.received_count();
            let a = activity();
            if a != last.0 {
                last = (a, Instant::now());
            }
            let enough = want.is_none_or(|w| n >= w) && (!consistent || accounted());
            if enough && last.1.elapsed() >= quiet {
                return;
            }
        }
    }

    pub(super) fn received_count(&self) -> u64 {
        match &self.window {
            Some(w) => w.received().len() as u64,
            None => self.fakes.iter().map(|(_, f)| f.received_count()).sum(),
        }
    }

    /// Stops the scenario's own fakes (not the run's shared one).
    pub(super) async fn stop_fakes(&self) {
        if self.window.is_none() {
            for (_, fake) in &self.fakes {
                fake.shutdown().await;
            }
        }
    }

    /// The upstream sessions of this scenario, by route label: for a shared upstream, its
    /// window on them.
    pub(super) fn upstream_transcripts(&self) -> Vec<(String, fake_upstream::Transcript)> {
        if let Some(w) = &self.window {
            return w
                .transcripts()
                .into_iter()
                .map(|t| ("default".to_string(), t))
                .collect();
        }
        self.fakes
            .iter()
            .flat_map(|(label, f)| f.transcripts().into_iter().map(move |t| (label.clone(), t)))
            .collect()
    }

    pub(super) fn received(&self) -> Vec<(String, fake_upstream::Received)> {
        if let Some(w) = &self.window {
            return w
                .received()
                .into_iter()
                .map(|r| ("default".to_string(), r))
                .collect();
        }
        self.fakes
            .iter()
            .flat_map(|(label, f)| f.received().into_iter().map(move |r| (label.clone(), r)))
            .collect()
    }

    /// The two-hop transcript: for our relay its own (both hops in time order, TLS and AUTH
    /// marked, secrets redacted); for another relay the client's side and the upstream's
    /// merged by time. Then what each upstream received, byte for byte.
    pub(super) fn transcript(&self, sc: &Scenario, client: &Client) -> String {
        let mut out = format!("scenario {}: {}\n", sc.name, sc.description);
        match &self.relay {
            Some(relay) => {
                for t in relay.transcripts() {
                    out.push_str(&t);
                }
            }
            None => {
                let mut events: Vec<(Instant, String)> = client.events.clone();
                for (label, t) in self.upstream_transcripts() {
                    {
                        for (line, at) in t.lines.iter().zip(&t.times) {
                            let mark = if label == "default" {
                                "U".to_string()
                            } else {
                                format!("U[{label}]")
                            };
                            let shown = match line.split_once(": ") {
                                Some(("C", rest)) => format!("    {mark}> {rest}"),
                                Some(("S", rest)) => format!("    {mark}< {rest}"),
                                _ => format!("    {mark} {line}"),
                            };
                            events.push((*at, shown));
                        }
                    }
                }
                events.sort_by_key(|(at, _)| *at);
                for (_, line) in events {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        let received = self.received();
        for (label, fake) in &self.fakes {
            let got: Vec<&fake_upstream::Received> = received
                .iter()
                .filter(|(l, _)| l == label)
                .map(|(_, r)| r)
                .collect();
            out.push_str(&format!(
                "== upstream {label} ({}) received {} message(s)\n",
                fake.persona_name(),
                got.len()
            ));
            for r in got {
                out.push_str(&format!(
                    "-- MAIL FROM:{} RCPT TO:{} -> {}\n",
                    r.mail_from,
                    r.rcpt_to.join(","),
                    r.reply
                ));
                out.push_str(&show_bytes(&r.content, 4096));
            }
        }
        out
    }
}

/// The scenario's fake upstreams: the run's shared one (with this scenario's window on it),
/// or its own, one per route.
async fn start_fakes(
    sc: &Scenario,
    opts: &Options,
    tls: &TlsMaterial,
    dir: &Path,
    shared: Option<(Arc<SharedUpstream>, usize)>,
    scenario_dir: &Path,
) -> Result<(Vec<(String, Arc<fake_upstream::Handle>)>, Option<Window>), String> {
    let mut fakes = Vec::new();
    let window = match shared {
        Some((shared, index)) => {
            fakes.push(("default".to_string(), shared.fake.clone()));
            Some(Window {
                from: shared.fake.received_count(),
                start: Instant::now(),
                shared,
                index,
            })
        }
        None => {
            let fake = start_fake(
                &sc.upstream,
                scenario_dir,
                dir.join("upstream"),
                tls,
                None,
                opts.seed,
            )
            .await?;
            fakes.push(("default".to_string(), Arc::new(fake)));
            for r in &sc.routes {
                let fake = start_fake(
                    &r.upstream,
                    scenario_dir,
                    dir.join(format!("upstream-{}", r.name)),
                    tls,
                    None,
                    opts.seed,
                )
                .await?;
                fakes.push((r.name.clone(), Arc::new(fake)));
            }
            None
        }
    };
    Ok((fakes, window))
}

/// smtp-relay in-process, configured from the scenario, in front of its fakes; queue mode
/// with the default route's accounts as its secrets, retries fast.
async fn ours(sc: &Scenario, common: Env, tls: &TlsMaterial, dir: &Path) -> Result<Env, String> {
    let mut config = relay_config(sc, &common, tls, dir)?;
    // The default route's accounts: the relay's users and secrets in queue mode.
    let accounts = common.fakes[0].1.smtp_accounts();
    config.queue = Some(crate::relay::QueueSettings {
        dir: dir.join("queue"),
        retry: crate::queue::deliver::Retry {
            first: Duration::from_millis(200),
            max: Duration::from_secs(1),
            lifetime: Duration::from_secs(60),
            jitter: 0.0,
        },
        concurrency: 2,
        tick: Duration::from_millis(50),
        secrets: crate::queue::deliver::secrets_of(&accounts),
        route_limits: Default::default(),
    });
    for (k, v) in &sc.relay {
        apply_relay_option(&mut config, &accounts, k, v)?;
    }
    if !config.default_queue {
        config.queue = None;
    }
    let queue_dir = config.queue.as_ref().map(|q| q.dir.clone());
    let relay = relay::start(config)
        .await
        .map_err(|e| format!("relay: {e}"))?;
    Ok(Env {
        spool_dir: Some(dir.join("spool")),
        queue_dir,
        relay_addr: relay.addr(),
        relay_tls_addr: relay.tls_addr(),
        relay: Some(relay),
        ..common
    })
}

pub(super) async fn start_fake(
    up: &Upstream,
    scenario_dir: &Path,
    data_dir: PathBuf,
    tls: &TlsMaterial,
    listen: Option<SocketAddr>,
    seed: u64,
) -> Result<fake_upstream::Handle, String> {
    let persona = if up.persona.ends_with(".toml") {
        scenario_dir
            .join(&up.persona)
            .to_string_lossy()
            .into_owned()
    } else {
        up.persona.clone()
    };
    let mut persona = Persona::load(&persona).map_err(|e| e.to_string())?;
    if let Some(p) = up.pipelining {
        persona.pipelining = Some(p);
    }
    persona.without.extend(up.without.iter().cloned());
    // The checks compare what the upstream got: the sink keeps its messages here.
    persona.rules.keep_messages = true;
    let mut config = FakeConfig::new(persona, data_dir);
    if let Some(era) = &up.era {
        config.persona.era = era.clone();
    }
    if let Some(addr) = listen {
        config.listen = addr;
        config.listen_tls = None;
    }
    config.tls_files = Some(match up.cert {
        // A certificate of the kind asked for, in the fake's own directory.
        Some(kind) => {
            let files = TlsFiles::in_dir(&config.data_dir.join("tls"));
            fake_upstream::tls::generate_kind(&files, kind).map_err(|e| e.to_string())?;
            files
        }
        None => tls.files.clone(),
    });
    config.seed = seed;
    config.transcripts = true;
    if let Some(users) = &up.users {
        config.users = users.clone();
    }
    config.faults = up.faults.clone();
    if up.no_limits {
        config = config.no_limits();
    }
    for (k, v) in &up.limits {
        config.persona.limits.set(k, v)?;
    }
    FakeUpstream::start(config)
        .await
        .map_err(|e| format!("fake upstream {}: {e}", up.persona))
}

/// The name the fake's certificate is verified as, and shown in replies.
pub(super) fn upstream_names(persona: &str) -> (&'static str, &'static str) {
    match persona {
        "163" => ("smtp.163.com", "smtp.163.com (fake)"),
        "qq" => ("smtp.qq.com", "smtp.qq.com (fake)"),
        "qq-mx" => ("localhost", "mx1.qq.com (fake)"),
        "sink" => ("localhost", "sink (fake)"),
        _ => ("localhost", "upstream (fake)"),
    }
}

/// The relay's TLS policy towards a fake (`upstream-tls-policy:`), with what it trusts: the
/// fake's `ca.pem` (its CA, or for a self-signed certificate the certificate itself), the
/// bundled roots, or a pin of the fake's certificate, its key, or something else.
pub(super) fn tls_policy(
    up: &Upstream,
    mode: TlsMode,
    fake: &fake_upstream::Handle,
) -> Result<(TlsPolicy, Option<Trust>), String> {
    let words: Vec<&str> = up
        .tls_policy
        .as_deref()
        .unwrap_or(if mode == TlsMode::None {
            "none"
        } else {
            "verify"
        })
        .split_whitespace()
        .collect();
    let cert = || -> Result<crate::upstream_tls::CertSummary, String> {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_file(fake.cert_path())
            .map_err(|e| format!("{}: {e}", fake.cert_path().display()))?;
        crate::upstream_tls::CertSummary::parse(&der)
            .ok_or("the fake's certificate is unreadable".into())
    };
    let (policy, trust) = match words.as_slice() {
        ["verify"] => (
            TlsPolicy::Verify,
            Some(Trust::ca_pem("ca.pem", fake.ca_pem())?),
        ),
        ["verify", "roots"] => (TlsPolicy::Verify, Some(Trust::PublicRoots)),
        ["fingerprint"] => (
            TlsPolicy::Fingerprint,
            Some(Trust::Pins(vec![cert()?.sha256])),
        ),
        ["fingerprint", "key"] => (
            TlsPolicy::Fingerprint,
            Some(Trust::Pins(vec![cert()?.sha256_key])),
        ),
        ["fingerprint", "other"] => (
            TlsPolicy::Fingerprint,
            Some(Trust::Pins(vec![crate::upstream_tls::Fingerprint(
                [0x5A; 32],
            )])),
        ),
        ["encrypt"] => (TlsPolicy::Encrypt, Some(Trust::Unchecked)),
        ["may"] => (TlsPolicy::May, Some(Trust::Unchecked)),
        ["none"] => (TlsPolicy::None, None),
        other => return Err(format!("upstream-tls-policy: {other:?}")),
    };
    match (mode, policy) {
        (TlsMode::None, TlsPolicy::None) => {}
        (TlsMode::None, _) | (_, TlsPolicy::None) => {
            return Err(
                "upstream-tls-policy: none goes with upstream-tls: none, and only it".into(),
            );
        }
        (TlsMode::Implicit, TlsPolicy::May) => {
            return Err("upstream-tls-policy: may needs upstream-tls: starttls".into());
        }
        _ => {}
    }
    Ok((policy, trust))
}

pub(super) fn upstream_config(
    up: &Upstream,
    fake: &fake_upstream::Handle,
) -> Result<UpstreamConfig, String> {
    let (server_name, name) = upstream_names(&up.persona);
    let (mode, addr) = match up.tls.as_str() {
        "starttls" => (TlsMode::StartTls, fake.addr()),
        "none" => (TlsMode::None, fake.addr()),
        _ => (
            TlsMode::Implicit,
            fake.tls_addr()
                .ok_or("the fake upstream has no TLS listener")?,
        ),
    };
    let (policy, trust) = tls_policy(up, mode, fake)?;
    Ok(UpstreamConfig {
        name: name.into(),
        addr: addr.to_string(),
        server_name: server_name.into(),
        tls: mode,
        tls_policy: policy,
        tls_config: match trust {
            Some(trust) => Some(crate::upstream_tls::config_for(policy, trust)?),
            None => None,
        },
        config_at: "the scenario".into(),
        helo_name: "relay.test".into(),
        credentials: None,
        timeouts: Timeouts {
            command: Duration::from_secs(5),
            data_init: Duration::from_secs(5),
            data_end: Duration::from_secs(5),
            ..Timeouts::default()
        },
        transcript: true,
        bdat: None,
    })
}

pub(super) fn relay_config(
    sc: &Scenario,
    env: &Env,
    tls: &TlsMaterial,
    dir: &Path,
) -> Result<RelayConfig, String> {
    let upstream = upstream_config(&sc.upstream, &env.fakes[0].1)?;
    let mut routes = Vec::new();
    for (r, (label, fake)) in sc.routes.iter().zip(env.fakes.iter().skip(1)) {
        routes.push(Route {
            label: label.clone(),
            domains: r.domains.clone(),
            upstream: upstream_config(&r.upstream, fake)?,
            passthrough: false,
            queue: false,
            max_sessions: None,
        });
    }
    Ok(RelayConfig {
        listen_tls: Some("127.0.0.1:0".parse().expect("an address")),
        tls: Some(tls.server_config.clone()),
        auth_failure_delay: Duration::ZERO,
        transcripts: Some(dir.join("transcripts")),
        routes,
        ..RelayConfig::new(
            "relay.test",
            "127.0.0.1:0".parse().expect("an address"),
            dir.join("spool"),
            upstream,
        )
    })
}

pub(super) fn apply_relay_option(
    c: &mut RelayConfig,
    accounts: &[(String, String)],
    k: &str,
    v: &str,
) -> Result<(), String> {
    let num = || {
        v.parse::<u64>()
            .map_err(|_| format!("{k}={v}: expected a number"))
    };
    let dur = || crate::scenario::parse_duration(v);
    match k {
        "auth" => {
            c.auth = match v {
                "none" => AuthMode::TrustedNetworks(vec![("127.0.0.0".parse().expect("ip"), 8)]),
                // The upstream's own accounts, checked by the relay (as `up --queue` does).
                "users" => {
                    AuthMode::Users(std::sync::Arc::new(crate::users::Users::from_passwords(
                        accounts.iter().map(|(a, c)| (a.as_str(), c.as_str())),
                    )))
                }
                _ => AuthMode::Passthrough,
            }
        }
        "queue" => c.default_queue = v == "on",
        "first_retry" => {
            if let Some(q) = c.queue.as_mut() {
                q.retry.first = dur()?;
            }
        }
        "max_recipients" => c.max_recipients = num()? as usize,
        "max_rcpt_commands" => c.max_rcpt_commands = num()? as usize,
        "min_data_rate" => c.min_data_rate = num()?,
        "auth_failures_per_client" => c.auth_limits.per_client = num()? as u32,
        "auth_failures_per_upstream" => c.auth_limits.per_upstream = num()? as u32,
        "line_timeout" => c.line_timeout = dur()?,
        "max_message_size" => c.max_message_size = num()?,
        "max_sessions" => c.max_sessions = num()? as usize,
        "max_sessions_per_ip" => c.max_sessions_per_ip = num()? as usize,
        "command_timeout" => c.command_timeout = dur()?,
        "data_timeout" => c.data_timeout = dur()?,
        "session_deadline" => c.session_deadline = dur()?,
        "auth_failure_delay" => c.auth_failure_delay = dur()?,
        "bare_line_endings" => {
            c.bare_line_endings = match v {
                "normalize" => BareLineEnding::Normalize,
                _ => BareLineEnding::Reject,
            }
        }
        "upstream_timeout" => {
            let d = dur()?;
            for t in std::iter::once(&mut c.upstream.timeouts)
                .chain(c.routes.iter_mut().map(|r| &mut r.upstream.timeouts))
            {
                t.command = d;
                t.data_init = d;
                t.data_end = d;
                t.greeting = d;
            }
        }
        other => return Err(format!("{other:?} is not a relay option")),
    }
    Ok(())
}
