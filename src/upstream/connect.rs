//! Opening an upstream session: the address tried in turn, implicit TLS or STARTTLS (with a
//! plaintext retry under `tls_policy = "may"`), the greeting, EHLO and AUTH, each phase timed
//! and its time kept.

use super::*;

impl Upstream {
    /// Connects and runs the handshake: greeting, EHLO, STARTTLS and EHLO again when asked,
    /// AUTH when credentials are configured. Under `tls_policy = "may"` a failed TLS
    /// handshake is followed by one plaintext connection (as Postfix does).
    pub async fn connect(config: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        if config.tls_policy == TlsPolicy::Encrypt {
            tracing::warn!(upstream = %config.name, at = %config.config_at, "tls_policy = \"encrypt\": the upstream's certificate is not verified (anyone in the path can read this session)");
        }
        match Upstream::connect_once(config, false).await {
            Err(e) if config.tls_policy == TlsPolicy::May && e.is_tls_handshake() => {
                tracing::warn!(upstream = %config.name, error = %e, "opportunistic TLS failed: this session goes on in plaintext (tls_policy = \"may\")");
                let mut up = Upstream::connect_once(config, true).await?;
                up.note(format!(
                    "* plaintext: TLS failed on the first connection ({}), tls_policy = may",
                    match &e {
                        UpstreamError::Tls { failure, .. } => failure.short(),
                        other => other.client_reply().text(),
                    }
                ));
                Ok(up)
            }
            other => other,
        }
    }

    async fn connect_once(config: &UpstreamConfig, plain: bool) -> Result<Upstream, UpstreamError> {
        let name = config.name.clone();
        let t = config.timeouts;
        let started = std::time::Instant::now();
        let connected = crate::upstream_addr::connect(&config.addr, t.connect)
            .await
            .map_err(|error| UpstreamError::Connect {
                upstream: name.clone(),
                error,
            })?;
        let tcp = connected.stream;
        let _ = tcp.set_nodelay(true);
        let tried = connected.failed;
        let connected = started.elapsed();
        let mut io: Box<dyn Io> = Box::new(tcp);
        let mut tls_time = None;
        let mut tls_info = None;
        if config.tls == TlsMode::Implicit {
            let t0 = std::time::Instant::now();
            let (secured, info) = handshake(config, io).await?;
            io = secured;
            tls_info = Some(info);
            tls_time = Some(t0.elapsed());
        }
        let mut up = Upstream {
            name,
            config_at: config.config_at.clone(),
            io,
            session: ClientSession::new(ClientConfig {
                helo_name: config.helo_name.clone(),
                tls: match config.tls {
                    _ if plain => ClientTls::None,
                    TlsMode::None => ClientTls::None,
                    TlsMode::StartTls if config.tls_policy == TlsPolicy::May => {
                        ClientTls::Opportunistic
                    }
                    TlsMode::StartTls => ClientTls::StartTls,
                    TlsMode::Implicit => ClientTls::Implicit,
                },
                credentials: config.credentials.clone(),
            }),
            replies: ClientConnection::new(MAX_REPLY_LINE),
            timeouts: t,
            encoder: DataEncoder::new(),
            out: Vec::new(),
            body_out: Vec::new(),
            transcript: Vec::new(),
            auth_reply: None,
            recording: config.transcript,
            handshake_times: Vec::with_capacity(6),
            tls_info,
            messages: 0,
            slot: None,
            bdat: config.bdat,
            chunks: None,
            binary: false,
        };
        up.handshake_times.push((Phase::Connect, connected));
        if let Some(tls) = tls_time {
            up.handshake_times.push((Phase::Tls, tls));
        }
        if up.recording {
            for attempt in &tried {
                up.transcript
                    .push(format!("* {attempt}: trying the next address"));
            }
            up.transcript
                .push(format!("* connected to {}", config.addr));
            if config.tls == TlsMode::Implicit {
                up.transcript.push(format!(
                    "* TLS handshake done (implicit TLS, {})",
                    checked(config)
                ));
            }
        }
        Upstream::greet(up, config).await
    }

    /// The handshake after the connection: the greeting, EHLO, STARTTLS and EHLO again,
    /// AUTH, as the client session machine asks; each reply within its phase's timeout.
    async fn greet(mut up: Upstream, config: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let t = config.timeouts;
        let mut phase = Phase::Greeting;
        let mut phase_start = std::time::Instant::now();
        loop {
            let wait = if phase == Phase::Greeting {
                t.greeting
            } else {
                t.command
            };
            let reply = up.read_reply(phase, wait).await?;
            up.handshake_times.push((phase, phase_start.elapsed()));
            phase_start = std::time::Instant::now();
            if phase == Phase::Auth {
                up.auth_reply = Some(reply.clone());
            }
            match up.session.handle_reply(reply) {
                Ok(ClientEvent::Send(out)) => {
                    phase = match out.first() {
                        Some(Outgoing::Command(Command::Ehlo { .. } | Command::Helo { .. })) => {
                            Phase::Ehlo
                        }
                        Some(Outgoing::Command(Command::StartTls)) => Phase::StartTls,
                        _ => Phase::Auth,
                    };
                    up.send(&out, phase).await?;
                }
                Ok(ClientEvent::UpgradeTls) => {
                    if !up.replies.buffered().is_empty() {
                        return Err(UpstreamError::Protocol {
                            upstream: up.name,
                            reason: "data after the 220 to STARTTLS (possible injection)".into(),
                        });
                    }
                    let t0 = std::time::Instant::now();
                    let (secured, info) = handshake(config, up.io).await?;
                    up.io = secured;
                    up.tls_info = Some(info);
                    up.handshake_times.push((Phase::Tls, t0.elapsed()));
                    phase_start = std::time::Instant::now();
                    up.note(format!(
                        "* TLS handshake done (STARTTLS, {})",
                        checked(config)
                    ));
                    let out = up.session.tls_established().map_err(|e| up.protocol(e))?;
                    phase = Phase::Ehlo;
                    up.send(&out, phase).await?;
                }
                Ok(ClientEvent::Ready) => {
                    if config.tls == TlsMode::StartTls && !up.session.tls_active() {
                        up.note("* STARTTLS not offered: plaintext (tls_policy = may)".into());
                    }
                    return Ok(up);
                }
                Ok(other) => {
                    return Err(UpstreamError::Protocol {
                        upstream: up.name,
                        reason: format!("unexpected event during the handshake: {other:?}"),
                    });
                }
                Err(e) => return Err(up.client_error(e, phase)),
            }
        }
    }
}

/// How the upstream's certificate was checked, for the transcript.
fn checked(config: &UpstreamConfig) -> String {
    match config.tls_policy {
        TlsPolicy::Verify => format!("verified {}", config.server_name),
        TlsPolicy::Fingerprint => "certificate matches a pinned fingerprint".into(),
        TlsPolicy::Encrypt => "certificate NOT verified: tls_policy = encrypt".into(),
        TlsPolicy::May | TlsPolicy::None => {
            "opportunistic, certificate not verified: tls_policy = may".into()
        }
    }
}

async fn handshake(
    config: &UpstreamConfig,
    io: Box<dyn Io>,
) -> Result<(Box<dyn Io>, TlsInfo), UpstreamError> {
    let tls_error = |failure: TlsFailure| UpstreamError::Tls {
        upstream: config.name.clone(),
        failure,
        at: config.config_at.clone(),
    };
    let tls_config = config.tls_config.clone().ok_or_else(|| {
        tls_error(TlsFailure::Other(
            "no TLS configuration for this upstream".into(),
        ))
    })?;
    let host = crate::upstream_addr::bare_host(&config.server_name).to_string();
    let name = ServerName::try_from(host.clone())
        .map_err(|_| tls_error(TlsFailure::BadName(config.server_name.clone())))?;
    let connector = tokio_rustls::TlsConnector::from(tls_config);
    match tokio::time::timeout(config.timeouts.connect, connector.connect(name, io)).await {
        Ok(Ok(stream)) => {
            let conn = stream.get_ref().1;
            let info = TlsInfo {
                version: conn.protocol_version(),
                cipher: conn.negotiated_cipher_suite(),
            };
            Ok((Box::new(stream), info))
        }
        // Closed before the handshake finished (an EOF or a reset, whichever the OS reports
        // first): said the same way each time.
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Err(UpstreamError::Closed {
                upstream: config.name.clone(),
                phase: Phase::Tls,
            })
        }
        Ok(Err(e)) => Err(tls_error(TlsFailure::from_io(&e))),
        Err(_) => Err(UpstreamError::Timeout {
            upstream: config.name.clone(),
            phase: Phase::Tls,
            after: config.timeouts.connect,
        }),
    }
}
