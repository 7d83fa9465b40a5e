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

mod cap;
mod config;
mod connect;
mod content;
use content::Chunks;
mod error;
mod send;

pub use cap::{Granted, SessionCap, Slot};
pub use config::*;
pub use error::*;
pub use send::*;

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
    /// Messages ended on this session (a final reply read), for the cap on a reused one.
    messages: u32,
    /// Its place under the upstream's cap on sessions at once, given back when it closes.
    slot: Option<Slot>,
    /// BDAT chunks of at least this size when the upstream offers CHUNKING.
    bdat: Option<usize>,
    /// The message under way goes in BDAT chunks.
    chunks: Option<Chunks>,
    /// The transaction's MAIL said `BODY=BINARYMIME`: its content goes in BDAT chunks as it
    /// came (no line ends made CRLF, no NUL left out), or not at all (RFC 3030 3).
    binary: bool,
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

    /// Holds `slot` (of the upstream's [`SessionCap`]) for as long as the session lives.
    pub fn hold(&mut self, slot: Slot) {
        self.slot = Some(slot);
    }

    /// Messages ended on this session so far (whatever the upstream's verdict).
    pub fn messages(&self) -> u32 {
        self.messages
    }

    /// Whether a session kept idle still looks usable: nothing came from the upstream since
    /// its last reply (no close, no `421` of an idle timeout). Reads without waiting; a session
    /// that says no is not used again.
    pub fn still_open(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        matches!(
            tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut self.io), &mut cx, &mut buf),
            std::task::Poll::Pending
        )
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

    /// Binary content for an upstream that does not take it: the MAIL is not sent (it would
    /// be refused as a parameter not offered), and this is the answer (RFC 3030 3; 5.6.3:
    /// conversion required and not supported).
    fn refuse_binary(&self, params: &MailParams) -> Option<Reply> {
        let caps = self.capabilities();
        (params.body == Some(smtp_wire::Body::BinaryMime)
            && !(caps.chunking() && caps.binarymime()))
        .then(|| {
            Reply::new(
                554,
                (5, 6, 3),
                format!(
                    "message is binary (BODY=BINARYMIME) and upstream {} does not accept it (no CHUNKING and BINARYMIME)",
                    self.name
                ),
            )
        })
    }

    pub async fn mail(
        &mut self,
        from: &ReversePath,
        params: &MailParams,
    ) -> Result<Reply, UpstreamError> {
        if let Some(refused) = self.refuse_binary(params) {
            return Ok(refused);
        }
        self.binary = params.body == Some(smtp_wire::Body::BinaryMime);
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
            if let Some(refused) = self.refuse_binary(params) {
                return Ok((Some(refused), Vec::new()));
            }
            self.binary = params.body == Some(smtp_wire::Body::BinaryMime);
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

    pub async fn rset(&mut self) -> Result<Reply, UpstreamError> {
        // A message in chunks left unfinished: the chunks' replies come first.
        if self.chunks.is_some() {
            self.chunk_replies().await?;
            self.chunks = None;
            self.encoder = DataEncoder::new();
            self.body_out.clear();
        }
        self.binary = false;
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
