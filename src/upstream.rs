//! The relay's connection to an upstream SMTP server (smtp.163.com and the like): connect,
//! TLS (implicit or STARTTLS, verified against the configured roots), EHLO, AUTH, then the
//! envelope (pipelined when the upstream offers it) and a streamed, dot-stuffed body. It
//! drives `smtp_wire::ClientSession`; every wait has its own timeout, named in the error, and
//! every error says which upstream and which phase it is about.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use smtp_net::Io;
use smtp_wire::{
    Capabilities, ClientConfig, ClientConnection, ClientError, ClientEvent, ClientSession,
    ClientTls, Command, Credentials, DataEncoder, ForwardPath, MailParams, Outgoing, RcptParams,
    Reply, ReversePath,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream_addr::ConnectError;
use crate::upstream_tls::{TlsFailure, TlsPolicy};

/// How the connection to the upstream is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext (only for trusted networks and tests).
    None,
    /// STARTTLS, required: an upstream that does not offer it is an error.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// How long each phase may take. The defaults are RFC 5321 4.5.3.2's client timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect and the TLS handshake (not in the RFC).
    pub connect: Duration,
    /// The 220 greeting.
    pub greeting: Duration,
    /// EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT replies.
    pub command: Duration,
    /// The reply to DATA (354).
    pub data_init: Duration,
    /// Each write of message data.
    pub data_block: Duration,
    /// The final reply after the end of data.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
        }
    }
}

/// Where and how to reach one upstream.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// How errors and logs name it, e.g. `smtp.163.com:465`.
    pub name: String,
    /// `host:port` to connect to (IPv6 in brackets); every address the host resolves to is
    /// tried ([`crate::upstream_addr`]).
    pub addr: String,
    /// The name its certificate must carry.
    pub server_name: String,
    pub tls: TlsMode,
    /// How strictly the upstream is checked; `tls_config`'s verifier applies it.
    pub tls_policy: TlsPolicy,
    /// Required unless `tls` is `None`: built by [`crate::upstream_tls`] for `tls_policy`.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// Where this upstream is configured (`[[routes]] "lab" in relay.toml`), for the fix a
    /// TLS failure suggests.
    pub config_at: String,
    /// Our name in EHLO.
    pub helo_name: String,
    /// AUTH with these after the secured EHLO.
    pub credentials: Option<Credentials>,
    pub timeouts: Timeouts,
    /// Record `C:`/`S:` lines (off for load runs and relays without transcripts: no
    /// allocation per command).
    pub transcript: bool,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("tls_policy", &self.tls_policy)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// The part of a session an error happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Tls,
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    Body,
    EndOfData,
    Rset,
    Quit,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Tls => "TLS handshake",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::StartTls => "STARTTLS",
            Phase::Auth => "AUTH",
            Phase::Mail => "MAIL",
            Phase::Rcpt => "RCPT",
            Phase::Data => "DATA",
            Phase::Body => "message data",
            Phase::EndOfData => "end of data",
            Phase::Rset => "RSET",
            Phase::Quit => "QUIT",
        })
    }
}

/// What went wrong with an upstream. [`UpstreamError::client_reply`] is what the relay's
/// client hears: always a 4yz, never a 250, naming the upstream and the reason.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The name did not resolve, or none of its addresses answered.
    Connect {
        upstream: String,
        error: ConnectError,
    },
    /// The TLS handshake failed or the upstream's certificate was refused; `at` is where the
    /// upstream is configured, for the fix the log line suggests.
    Tls {
        upstream: String,
        failure: TlsFailure,
        at: String,
    },
    Timeout {
        upstream: String,
        phase: Phase,
        after: Duration,
    },
    /// The upstream closed the connection.
    Closed { upstream: String, phase: Phase },
    Io {
        upstream: String,
        phase: Phase,
        source: std::io::Error,
    },
    /// The upstream refused the greeting, EHLO or STARTTLS, or said 421 (closing).
    Refused {
        upstream: String,
        phase: Phase,
        reply: Reply,
    },
    /// The upstream refused a command of the relay's own making as malformed or out of
    /// sequence (500, 501 syntax, 503, 504, 555): a relay bug, never the client's fault.
    Bug {
        upstream: String,
        phase: Phase,
        reply: Reply,
    },
    /// The upstream's verdict on the credentials (163: `535 Error: authentication failed`).
    AuthRejected { upstream: String, reply: Reply },
    /// Something that is not SMTP as we know it (bad reply syntax, a missing extension,
    /// bytes after the 220 to STARTTLS).
    Protocol { upstream: String, reason: String },
}

impl UpstreamError {
    pub fn upstream(&self) -> &str {
        match self {
            UpstreamError::Connect { upstream, .. }
            | UpstreamError::Tls { upstream, .. }
            | UpstreamError::Timeout { upstream, .. }
            | UpstreamError::Closed { upstream, .. }
            | UpstreamError::Io { upstream, .. }
            | UpstreamError::Refused { upstream, .. }
            | UpstreamError::Bug { upstream, .. }
            | UpstreamError::AuthRejected { upstream, .. }
            | UpstreamError::Protocol { upstream, .. } => upstream,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. })
    }

    /// The TLS handshake itself failed (not STARTTLS missing).
    pub fn is_tls_handshake(&self) -> bool {
        matches!(self, UpstreamError::Tls { failure, .. } if *failure != TlsFailure::NotOffered)
            || matches!(
                self,
                UpstreamError::Closed {
                    phase: Phase::Tls,
                    ..
                }
            )
    }

    /// The upstream's own reply, when it gave one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            UpstreamError::Refused { reply, .. }
            | UpstreamError::Bug { reply, .. }
            | UpstreamError::AuthRejected { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The reply for the relay's client: a transient failure that names the upstream and the
    /// reason (smtp-edge-cases, "Translated").
    pub fn client_reply(&self) -> Reply {
        let up = self.upstream();
        match self {
            UpstreamError::Connect { error, .. } => {
                Reply::new(451, (4, 4, 1), format!("upstream {up}: {error}"))
            }
            // Postfix's codes: 4.7.4 when TLS is required and not offered, 4.7.5 for a
            // failed handshake or a refused certificate (RFC 3463 X.7.4, X.7.5).
            UpstreamError::Tls { failure, .. } => Reply::new(
                451,
                if *failure == TlsFailure::NotOffered {
                    (4, 7, 4)
                } else {
                    (4, 7, 5)
                },
                format!("upstream {up}: TLS: {}", failure.short()),
            ),
            UpstreamError::Timeout { phase, after, .. } => Reply::new(
                451,
                (4, 4, 2),
                format!(
                    "upstream {up}: no reply to {phase} after {}s",
                    after.as_secs()
                ),
            ),
            UpstreamError::Closed { phase, .. } => Reply::new(
                451,
                (4, 4, 2),
                format!("upstream {up}: connection closed during {phase}"),
            ),
            UpstreamError::Io { phase, source, .. } => Reply::new(
                451,
                (4, 4, 2),
                format!("upstream {up}: connection lost during {phase}: {source}"),
            ),
            UpstreamError::Refused { phase, reply, .. } => Reply::new(
                451,
                (4, 4, 5),
                format!("upstream {up}: {phase} refused: {}", said(reply)),
            ),
            UpstreamError::Bug { phase, reply, .. } => Reply::new(
                451,
                (4, 3, 0),
                format!(
                    "upstream {up}: refused the relay's own {phase} command: {} (a relay bug, logged)",
                    said(reply)
                ),
            ),
            UpstreamError::AuthRejected { reply, .. } => Reply::new(
                454,
                (4, 7, 0),
                format!("upstream {up}: authentication refused: {}", said(reply)),
            ),
            UpstreamError::Protocol { reason, .. } => {
                Reply::new(451, (4, 3, 0), format!("upstream {up}: {reason}"))
            }
        }
    }
}

/// The log's form: the client's reply, and for a TLS failure the whole story with the fix.
impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Tls {
                upstream,
                failure,
                at,
            } => write!(f, "upstream {upstream}: TLS: {}", failure.sentence(at)),
            _ => f.write_str(&self.client_reply().text()),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A reply on one line as it was said, enhanced code included (`554 5.7.1 no thanks`), for
/// texts that quote an upstream.
pub fn said(reply: &Reply) -> String {
    match reply.enhanced {
        Some((a, b, c)) => format!("{} {a}.{b}.{c} {}", reply.code, reply.text()),
        None => format!("{} {}", reply.code, reply.text()),
    }
}

/// Sorts an upstream's reply to MAIL, RCPT, DATA or the end of data: a verdict on the
/// message or a mailbox is passed on (`Ok`); a `421` (the upstream is closing) and a refusal
/// of the relay's own command as malformed or out of sequence (`500`, `503`, `504`, `555`,
/// and a `501` that says it is about syntax: enhanced code `5.5.x` or the word "syntax") are
/// errors (smtp-edge-cases, "Translated"). A policy `501` such as QQ's `501 mail from address
/// must be same as authorization user` is a verdict and passes.
pub fn vet(upstream: &str, phase: Phase, reply: Reply) -> Result<Reply, UpstreamError> {
    let syntax = |r: &Reply| {
        matches!(r.enhanced, Some((_, 5, _))) || r.text().to_ascii_lowercase().contains("syntax")
    };
    match reply.code {
        421 => Err(UpstreamError::Refused {
            upstream: upstream.to_string(),
            phase,
            reply,
        }),
        500 | 503 | 504 | 555 => Err(UpstreamError::Bug {
            upstream: upstream.to_string(),
            phase,
            reply,
        }),
        501 if syntax(&reply) => Err(UpstreamError::Bug {
            upstream: upstream.to_string(),
            phase,
            reply,
        }),
        _ => Ok(reply),
    }
}

/// Message content is written in pieces of at least this much (the last one aside).
const BODY_BATCH: usize = 32 * 1024;

/// The longest reply line accepted from an upstream (RFC 5321 says 512; servers exceed it).
const MAX_REPLY_LINE: usize = 4096;

/// The replies to a whole envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeReplies {
    pub mail: Reply,
    /// One per recipient, in order.
    pub rcpts: Vec<Reply>,
}

/// A ready upstream session (greeted, secured and authenticated as configured).
pub struct Upstream {
    name: String,
    /// Where it is configured (for the fix a TLS failure suggests).
    config_at: String,
    io: Box<dyn Io>,
    session: ClientSession,
    /// The reply side: bytes read, replies out.
    replies: ClientConnection,
    timeouts: Timeouts,
    encoder: DataEncoder,
    out: Vec<u8>,
    /// Message content encoded and not yet written.
    body_out: Vec<u8>,
    /// `C:`/`S:` lines of this session, AUTH payloads redacted.
    transcript: Vec<String>,
    /// The upstream's reply to AUTH (its exact words, e.g. `235 Authentication successful`).
    auth_reply: Option<Reply>,
    recording: bool,
    /// How long each phase of the handshake took (connect, TLS, greeting, EHLO, STARTTLS,
    /// AUTH), for load reports.
    handshake_times: Vec<(Phase, Duration)>,
    /// What TLS was negotiated, when it was.
    tls_info: Option<TlsInfo>,
}

/// The TLS version and cipher suite of a secured session.
#[derive(Clone, Copy, Debug)]
pub struct TlsInfo {
    pub version: Option<rustls::ProtocolVersion>,
    pub cipher: Option<rustls::SupportedCipherSuite>,
}

impl fmt::Display for TlsInfo {
    /// `TLSv1_3, TLS13_AES_256_GCM_SHA384`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{v:?}")?,
            None => f.write_str("unknown version")?,
        }
        match self.cipher {
            Some(c) => write!(f, ", {:?}", c.suite()),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

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

    /// How long each handshake phase took, in order (EHLO twice with STARTTLS).
    pub fn handshake_times(&self) -> &[(Phase, Duration)] {
        &self.handshake_times
    }

    fn note(&mut self, line: String) {
        if self.recording {
            self.transcript.push(line);
        }
    }

    /// The TLS version and cipher suite, when the session is secured.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.tls_info
    }

    /// The upstream's name (as configured).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the upstream offered in its last EHLO reply.
    pub fn capabilities(&self) -> &Capabilities {
        self.session.capabilities()
    }

    /// The upstream's final reply to AUTH, when credentials were given.
    pub fn auth_reply(&self) -> Option<&Reply> {
        self.auth_reply.as_ref()
    }

    /// This session's `C:`/`S:` lines so far (AUTH payloads redacted).
    pub fn transcript(&self) -> &[String] {
        &self.transcript
    }

    /// Takes the transcript lines recorded since the last call (for interleaving them with
    /// the client side's, in time order).
    pub fn take_transcript(&mut self) -> Vec<String> {
        std::mem::take(&mut self.transcript)
    }

    fn client_error(&self, e: ClientError, phase: Phase) -> UpstreamError {
        let upstream = self.name.clone();
        match e {
            ClientError::Greeting(reply) => UpstreamError::Refused {
                upstream,
                phase: Phase::Greeting,
                reply,
            },
            ClientError::Hello(reply) => UpstreamError::Refused {
                upstream,
                phase: Phase::Ehlo,
                reply,
            },
            ClientError::StartTls(reply) => UpstreamError::Refused {
                upstream,
                phase: Phase::StartTls,
                reply,
            },
            ClientError::AuthFailed(reply) => UpstreamError::AuthRejected { upstream, reply },
            ClientError::TlsNotOffered | ClientError::AuthWithoutTls => UpstreamError::Tls {
                upstream,
                failure: TlsFailure::NotOffered,
                at: self.config_at.clone(),
            },
            other => UpstreamError::Protocol {
                upstream,
                reason: format!("{other} (during {phase})"),
            },
        }
    }

    fn protocol(&self, e: ClientError) -> UpstreamError {
        UpstreamError::Protocol {
            upstream: self.name.clone(),
            reason: e.to_string(),
        }
    }

    /// Writes commands (one write for a pipelined group).
    async fn send(&mut self, out: &[Outgoing], phase: Phase) -> Result<(), UpstreamError> {
        self.out.clear();
        for o in out {
            let start = self.out.len();
            o.encode(&mut self.out);
            if !self.recording {
                continue;
            }
            let line = if o.is_secret() {
                match o {
                    Outgoing::Command(Command::Auth { mechanism, .. }) => {
                        format!("C: AUTH {mechanism} <redacted>")
                    }
                    _ => "C: <redacted>".into(),
                }
            } else {
                format!(
                    "C: {}",
                    String::from_utf8_lossy(&self.out[start..self.out.len() - 2])
                )
            };
            self.transcript.push(line);
        }
        let out = std::mem::take(&mut self.out);
        let r = self.write(&out, phase, self.timeouts.command).await;
        self.out = out;
        r
    }

    async fn write(
        &mut self,
        bytes: &[u8],
        phase: Phase,
        wait: Duration,
    ) -> Result<(), UpstreamError> {
        let io = &mut self.io;
        match tokio::time::timeout(wait, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(UpstreamError::Io {
                upstream: self.name.clone(),
                phase,
                source,
            }),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.clone(),
                phase,
                after: wait,
            }),
        }
    }

    /// Reads one whole reply within `wait`.
    async fn read_reply(&mut self, phase: Phase, wait: Duration) -> Result<Reply, UpstreamError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.replies.next_reply() {
                Ok(Some(reply)) => {
                    if self.recording {
                        for l in reply.to_string().split("\r\n") {
                            self.transcript.push(format!("S: {l}"));
                        }
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(UpstreamError::Protocol {
                        upstream: self.name.clone(),
                        reason: format!("bad reply to {phase}: {e}"),
                    });
                }
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    return Err(UpstreamError::Closed {
                        upstream: self.name.clone(),
                        phase,
                    });
                }
                Ok(Ok(n)) => n,
                // A TLS peer that closes without close_notify: closed all the same.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(UpstreamError::Closed {
                        upstream: self.name.clone(),
                        phase,
                    });
                }
                Ok(Err(source)) => {
                    return Err(UpstreamError::Io {
                        upstream: self.name.clone(),
                        phase,
                        source,
                    });
                }
                Err(_) => {
                    return Err(UpstreamError::Timeout {
                        upstream: self.name.clone(),
                        phase,
                        after: wait,
                    });
                }
            };
            self.replies.receive(&chunk[..n]);
        }
    }

    /// Sends one command and returns the event for its reply.
    async fn command(
        &mut self,
        out: Result<Outgoing, ClientError>,
        phase: Phase,
        wait: Duration,
    ) -> Result<ClientEvent, UpstreamError> {
        let out = out.map_err(|e| self.protocol(e))?;
        self.send(&[out], phase).await?;
        let reply = self.read_reply(phase, wait).await?;
        self.session
            .handle_reply(reply)
            .map_err(|e| self.protocol(e))
    }

    /// MAIL parameters as this upstream may be given them: `BODY=8BITMIME` only when it
    /// offers 8BITMIME (RFC 6152 3). The content is checked on its way (the relay refuses
    /// 8-bit content for such an upstream with `554 5.6.3`), so nothing 8-bit follows.
    fn adapt(&self, params: &MailParams) -> MailParams {
        let mut p = params.clone();
        if p.body == Some(smtp_wire::Body::EightBitMime) && !self.capabilities().eightbitmime() {
            p.body = None;
        }
        p
    }

    pub async fn mail(
        &mut self,
        from: &ReversePath,
        params: &MailParams,
    ) -> Result<Reply, UpstreamError> {
        let out = self.session.mail(from.clone(), self.adapt(params));
        match self
            .command(out, Phase::Mail, self.timeouts.command)
            .await?
        {
            ClientEvent::Mail(r) => vet(&self.name, Phase::Mail, r),
            other => Err(self.unexpected(other, Phase::Mail)),
        }
    }

    pub async fn rcpt(
        &mut self,
        to: &ForwardPath,
        params: &RcptParams,
    ) -> Result<Reply, UpstreamError> {
        let out = self.session.rcpt(to.clone(), params.clone());
        match self
            .command(out, Phase::Rcpt, self.timeouts.command)
            .await?
        {
            ClientEvent::Rcpt { reply, .. } => vet(&self.name, Phase::Rcpt, reply),
            other => Err(self.unexpected(other, Phase::Rcpt)),
        }
    }

    /// MAIL and every RCPT: in one write when the upstream offers PIPELINING (RFC 2920),
    /// else one by one. The replies come back in order.
    pub async fn envelope(
        &mut self,
        from: &ReversePath,
        params: &MailParams,
        rcpts: &[(ForwardPath, RcptParams)],
    ) -> Result<EnvelopeReplies, UpstreamError> {
        if !self.session.can_pipeline() {
            let mail = self.mail(from, params).await?;
            let mut replies = Vec::with_capacity(rcpts.len());
            if mail.is_positive() {
                for (to, p) in rcpts {
                    replies.push(self.rcpt(to, p).await?);
                }
            }
            return Ok(EnvelopeReplies {
                mail,
                rcpts: replies,
            });
        }
        let (mail, rcpts) = self.batch(Some((from, params)), rcpts).await?;
        Ok(EnvelopeReplies {
            mail: mail.expect("MAIL was sent"),
            rcpts,
        })
    }

    /// Whether the upstream offered PIPELINING (RFC 2920) in its last EHLO.
    pub fn can_pipeline(&self) -> bool {
        self.session.can_pipeline()
    }

    /// MAIL (when given) and RCPTs in one write, the replies read back in order. Only for an
    /// upstream that offers PIPELINING (see [`Upstream::can_pipeline`]).
    pub async fn batch(
        &mut self,
        mail: Option<(&ReversePath, &MailParams)>,
        rcpts: &[(ForwardPath, RcptParams)],
    ) -> Result<(Option<Reply>, Vec<Reply>), UpstreamError> {
        let mut out = Vec::with_capacity(rcpts.len() + 1);
        if let Some((from, params)) = mail {
            out.push(
                self.session
                    .mail(from.clone(), self.adapt(params))
                    .map_err(|e| self.protocol(e))?,
            );
        }
        for (to, p) in rcpts {
            out.push(
                self.session
                    .rcpt(to.clone(), p.clone())
                    .map_err(|e| self.protocol(e))?,
            );
        }
        if out.is_empty() {
            return Ok((None, Vec::new()));
        }
        let first = if mail.is_some() {
            Phase::Mail
        } else {
            Phase::Rcpt
        };
        self.send(&out, first).await?;
        let mut mail_reply = None;
        let mut replies = Vec::with_capacity(rcpts.len());
        for i in 0..out.len() {
            let phase = if i == 0 { first } else { Phase::Rcpt };
            let reply = self.read_reply(phase, self.timeouts.command).await?;
            match self
                .session
                .handle_reply(reply)
                .map_err(|e| self.protocol(e))?
            {
                ClientEvent::Mail(r) => mail_reply = Some(vet(&self.name, phase, r)?),
                // After a refused MAIL, the RCPTs' 503s are about that, not a relay bug.
                ClientEvent::Rcpt { reply, .. }
                    if mail_reply.as_ref().is_some_and(|m| !m.is_positive()) =>
                {
                    replies.push(reply)
                }
                ClientEvent::Rcpt { reply, .. } => replies.push(vet(&self.name, phase, reply)?),
                other => return Err(self.unexpected(other, phase)),
            }
        }
        Ok((mail_reply, replies))
    }

    /// DATA: `354` means the body may follow; anything else is the upstream's refusal.
    pub async fn data(&mut self) -> Result<Reply, UpstreamError> {
        let out = self.session.data();
        match self
            .command(out, Phase::Data, self.timeouts.data_init)
            .await?
        {
            ClientEvent::Data(r) => {
                self.encoder = DataEncoder::new();
                vet(&self.name, Phase::Data, r)
            }
            other => Err(self.unexpected(other, Phase::Data)),
        }
    }

    /// Sends a piece of message content: CRLF-normalised and dot-stuffed on the way. Small
    /// pieces are gathered (up to `BODY_BATCH` octets) and go out with the next one or with
    /// the end of data: a small message is one write, not one per piece.
    pub async fn body(&mut self, chunk: &[u8]) -> Result<(), UpstreamError> {
        self.encoder.encode(chunk, &mut self.body_out);
        if self.body_out.len() >= BODY_BATCH {
            self.flush_body().await?;
        }
        Ok(())
    }

    /// Writes the content gathered so far.
    pub async fn flush_body(&mut self) -> Result<(), UpstreamError> {
        if self.body_out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.body_out);
        let r = self
            .write(&out, Phase::Body, self.timeouts.data_block)
            .await;
        self.body_out = out;
        self.body_out.clear();
        r
    }

    /// Ends the message (`.CRLF`, in one write with the content still gathered) and returns
    /// the upstream's final reply.
    pub async fn end_of_data(&mut self) -> Result<Reply, UpstreamError> {
        self.encoder.finish(&mut self.body_out);
        let out = std::mem::take(&mut self.body_out);
        let written = self
            .write(&out, Phase::Body, self.timeouts.data_block)
            .await;
        self.body_out = out;
        self.body_out.clear();
        written?;
        self.note("C: <message data>".into());
        self.session.data_sent().map_err(|e| self.protocol(e))?;
        let reply = self
            .read_reply(Phase::EndOfData, self.timeouts.data_end)
            .await?;
        match self
            .session
            .handle_reply(reply)
            .map_err(|e| self.protocol(e))?
        {
            ClientEvent::Message(r) => vet(&self.name, Phase::EndOfData, r),
            other => Err(self.unexpected(other, Phase::EndOfData)),
        }
    }

    pub async fn rset(&mut self) -> Result<Reply, UpstreamError> {
        let out = self.session.rset();
        match self
            .command(out, Phase::Rset, self.timeouts.command)
            .await?
        {
            ClientEvent::Rset(r) => Ok(r),
            other => Err(self.unexpected(other, Phase::Rset)),
        }
    }

    /// QUIT and close, politely but without waiting long for the 221.
    pub async fn quit(mut self) {
        let out = self.session.quit();
        let polite = Duration::from_secs(5).min(self.timeouts.command);
        let _ = tokio::time::timeout(polite, self.command(out, Phase::Quit, polite)).await;
        let _ = self.io.shutdown().await;
    }

    /// Closes without ending the message: an upstream never delivers a message whose
    /// terminator it did not get (the client vanished mid-DATA).
    pub async fn abort(mut self) {
        let _ = self.io.shutdown().await;
    }

    fn unexpected(&self, event: ClientEvent, phase: Phase) -> UpstreamError {
        UpstreamError::Protocol {
            upstream: self.name.clone(),
            reason: format!("unexpected {event:?} during {phase}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vet_sorts_verdicts_from_relay_bugs_and_closings() {
        let ok = |r: Reply| vet("up", Phase::Rcpt, r.clone()).ok() == Some(r);
        assert!(ok(Reply::plain(250, "Mail OK")));
        assert!(ok(Reply::plain(550, "Invalid User")));
        assert!(ok(Reply::plain(
            501,
            "mail from address must be same as authorization user"
        )));
        assert!(ok(Reply::plain(451, "MI:SFQ")));
        for bug in [
            Reply::plain(500, "Error: bad syntax"),
            Reply::plain(501, "Syntax error in parameters"),
            Reply::new(501, (5, 5, 4), "Bad parameter"),
            Reply::plain(503, "bad sequence of commands"),
            Reply::plain(555, "MAIL FROM parameters not recognized"),
        ] {
            let e = vet("up", Phase::Rcpt, bug.clone()).unwrap_err();
            let r = e.client_reply();
            assert_eq!((r.code, r.enhanced), (451, Some((4, 3, 0))), "{bug}");
            assert!(r.text().contains("relay bug"), "{r}");
        }
        let e = vet("up", Phase::Mail, Reply::plain(421, "HL:ICC")).unwrap_err();
        assert_eq!(e.client_reply().code, 451);
        assert!(e.client_reply().text().contains("421 HL:ICC"));
    }
}
