//! The server session machine, sans-IO: it takes lines, line errors and DATA outcomes, and
//! returns [`Step`]s (a reply to send, a TLS upgrade, a decision for the driver, a close).
//!
//! It implements the RFC 5321 state rules (503 for commands out of order, a second EHLO or
//! RSET resets the transaction, 554 for DATA without recipients, 452 past the recipient limit)
//! and the RFC 4954 AUTH exchanges (PLAIN and LOGIN, `*` cancels with 501, bad base64 gets 501).
//! Policy stays with the driver: who may authenticate, which senders and recipients to accept,
//! and what delivery answered come back through [`ServerSession::decide`].
//!
//! # Driving it
//! ```text
//! send session.greeting()
//! loop: match session.input()
//!   Input::Line { max }      => frame a line (LineDecoder with `max`), then handle_line / handle_line_error
//!   Input::Data { limit }    => DataDecoder::new(limit, ..) until Done, then handle_data_end(outcome)
//!   Input::Chunk { size, .. }=> read exactly `size` octets, then handle_chunk_end()
//! every Step: Reply => send; Close => send, close; StartTls => send, drop buffered input,
//!   handshake, tls_established(); Decide(d) => work out a Verdict, then decide(verdict)
//! ```
//! PIPELINING needs nothing more: lines are handled in order, one step each, so replies come
//! out in order; the driver flushes when its input buffer is empty (RFC 2920 3.2).

use std::sync::Arc;

use crate::address::{ForwardPath, ReversePath};
use crate::auth::{AuthResponse, Credentials, MAX_AUTH_LINE, Mechanism, SaslData};
use crate::catalogue::{ReplyBook, ReplyKind};
use crate::command::{Command, CommandError, Verb};
use crate::data::DataOutcome;
use crate::line::{LineError, MAX_COMMAND_LINE};
use crate::params::{Body, MailParams, RcptParams};
use crate::reply::{Capabilities, Extension, Reply};

mod auth;
mod envelope;
mod message;

/// What a server offers and enforces. Policy that depends on who the client is (trusted
/// network or not) is decided by the driver when it builds the config for a connection.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Text after the hostname in the greeting.
    pub greeting: String,
    /// SIZE limit in octets, advertised and enforced (RFC 1870).
    pub max_message_size: u64,
    /// Recipients per transaction; more get `452 4.5.3`. RFC 5321 4.5.3.1.8 wants >= 100.
    pub max_recipients: usize,
    /// RCPT commands per transaction, accepted or refused (by us or by the next hop); more get
    /// `452 4.5.3` without being decided. Bounds what a client can
    /// make a relay ask its upstream (address harvesting through 10,000 pipelined RCPTs).
    pub max_rcpt_commands: usize,
    /// Errors (5yz replies to bad commands) before `421 4.7.0` and close.
    pub max_errors: u32,
    /// Failed AUTH attempts before `421 4.7.0` and close.
    pub max_auth_failures: u32,
    pub pipelining: bool,
    /// Offer SMTPUTF8 (only when every route onward supports it).
    pub smtputf8: bool,
    /// Offer 8BITMIME (RFC 6152); without it `BODY=8BITMIME` gets `555 5.5.4`.
    pub eight_bit_mime: bool,
    /// Offer CHUNKING (BDAT, RFC 3030).
    pub chunking: bool,
    /// Offer BINARYMIME too (with `chunking`): content that need not be lines. Off where the
    /// message goes on as DATA to a next hop (a relay): it could not be passed on as it came.
    pub binarymime: bool,
    /// Offer DSN (only when the driver can generate DSNs itself).
    pub dsn: bool,
    /// Offer STARTTLS: the driver has a TLS configuration for this listener.
    pub starttls: bool,
    /// Mechanisms offered; empty means AUTH is not offered.
    pub auth_mechanisms: Vec<Mechanism>,
    /// Refuse AUTH (538 5.7.11) before TLS.
    pub auth_requires_tls: bool,
    /// MAIL needs a successful AUTH first (530 5.7.0): a submission service.
    pub auth_required: bool,
    /// Accept AUTH after HELO, not only after EHLO (163 does; RFC 4954 ties AUTH to EHLO).
    pub auth_after_helo: bool,
    /// Advertise ENHANCEDSTATUSCODES and put enhanced codes in generated replies. When off,
    /// generated replies carry none (RFC 2034), whatever the catalogue says.
    pub enhanced_status_codes: bool,
    /// The EHLO reply's lines after the first, exactly as given, instead of lines built from
    /// the fields above (a persona's quirks: `AUTH=LOGIN PLAIN`, a `coremail` token). The
    /// fields above still decide what is accepted; keep the two in agreement.
    pub ehlo_lines: Option<Vec<String>>,
    /// With `ehlo_lines`: the first line of the EHLO reply (default: the hostname).
    pub ehlo_first_line: Option<String>,
    /// Keep a STARTTLS line of `ehlo_lines` after TLS is on (a 163 quirk, against RFC 3207).
    pub starttls_after_tls: bool,
    /// Overrides of the replies the session generates itself.
    pub replies: ReplyBook,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            greeting: "ESMTP smtp-relay".into(),
            max_message_size: 35 * 1024 * 1024,
            max_recipients: 100,
            max_rcpt_commands: 200,
            max_errors: 20,
            max_auth_failures: 3,
            pipelining: true,
            smtputf8: false,
            eight_bit_mime: true,
            chunking: false,
            binarymime: false,
            dsn: false,
            starttls: false,
            auth_mechanisms: vec![Mechanism::Plain, Mechanism::Login],
            auth_requires_tls: true,
            auth_required: true,
            auth_after_helo: false,
            enhanced_status_codes: true,
            ehlo_lines: None,
            ehlo_first_line: None,
            starttls_after_tls: false,
            replies: ReplyBook::default(),
        }
    }
}

/// Whether the connection is already encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Plain,
    /// Implicit TLS (port 465) or after STARTTLS.
    Tls,
}

/// What the driver must read next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A line of at most `max` octets including CRLF (commands, or AUTH responses).
    Line { max: usize },
    /// Message data with a DATA decoder limited to `limit` octets.
    Data { limit: u64 },
    /// Exactly `size` octets of BDAT chunk.
    Chunk { size: u64, last: bool },
    /// Nothing: a decision or a TLS handshake is pending.
    Paused,
    /// The session is over.
    Closed,
}

/// What the driver must do after a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this reply and go on reading.
    Reply(Reply),
    /// Send this reply and close the connection.
    Close(Reply),
    /// Send this reply (220), discard any input already buffered (plaintext pipelined after
    /// STARTTLS must never reach the TLS session, CVE-2011-0411), run the handshake, then call
    /// [`ServerSession::tls_established`].
    StartTls(Reply),
    /// Decide, then call [`ServerSession::decide`].
    Decide(Decision),
    /// Read exactly `size` octets of BDAT chunk (RFC 3030), keep them, then call
    /// [`ServerSession::handle_chunk_end`], which may still refuse them.
    ReceiveChunk { size: u64, last: bool },
}

/// A question for the driver's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Check these credentials (mechanism already handled).
    Authenticate(Credentials),
    /// Accept this sender? Syntax, sequence and parameters are already checked; AUTH= is
    /// removed from `params` (it is not forwarded as is, RFC 4954 5).
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    /// Accept this recipient? Duplicates and the recipient limit are already handled.
    Rcpt { to: ForwardPath, params: RcptParams },
    /// May the client send data now (354)? A live relay asks its upstream first.
    BeginData,
    /// The message is complete: deliver it (the driver holds the body). The verdict is the
    /// final reply for the transaction.
    Deliver(Envelope),
}

/// The driver's answer to a [`Decision`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Yes, with the session's standard reply.
    Accept,
    /// This reply: a 2yz/3yz accepts, anything else refuses. A relay passes the upstream's
    /// own reply here.
    Reply(Reply),
}

/// A transaction's envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub from: Option<ReversePath>,
    pub mail_params: MailParams,
    /// Accepted recipients, each once.
    pub rcpts: Vec<(ForwardPath, RcptParams)>,
    /// Decoded message size, once the data is in.
    pub size: u64,
}

#[derive(Clone, Debug)]
enum Phase {
    Command,
    AuthPlain,
    AuthXoauth2,
    AuthLoginUser,
    AuthLoginPass {
        username: String,
    },
    Data,
    Chunk {
        size: u64,
        last: bool,
    },
    /// Boxed: a MAIL's path and parameters are room an idle session need not carry.
    Pending(Box<Pending>),
    TlsHandshake,
    Closed,
}

#[derive(Clone, Debug)]
enum Pending {
    Auth {
        username: String,
    },
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
        params: RcptParams,
    },
    BeginData,
    /// The first BDAT of a transaction, waiting for the driver's [`Decision::BeginData`].
    BeginChunks {
        size: u64,
        last: bool,
    },
    Deliver,
}

/// One SMTP server session. See the module documentation for how to drive it.
#[derive(Clone, Debug)]
pub struct ServerSession {
    /// Shared: a server keeps one per kind of client, not one per session.
    config: Arc<ServerConfig>,
    transport: Transport,
    phase: Phase,
    /// The client's HELO/EHLO name; `None` until it greets (after STARTTLS, again).
    helo: Option<String>,
    /// Whether the client used EHLO (ESMTP parameters allowed) rather than HELO.
    esmtp: bool,
    /// Who the client authenticated as.
    authenticated: Option<String>,
    /// Boxed, and only while a transaction is open: an idle session need not carry it.
    envelope: Option<Box<Envelope>>,
    /// Size of BDAT chunks received in this transaction, and whether one was refused.
    chunked: u64,
    chunk_error: Option<Reply>,
    /// The driver was asked to begin this transaction's content (its first BDAT).
    chunks_begun: bool,
    /// RCPT commands in this transaction, whatever their answer.
    rcpt_commands: usize,
    errors: u32,
    auth_failures: u32,
    last_verb: Option<Verb>,
}

impl ServerSession {
    pub fn new(config: impl Into<Arc<ServerConfig>>, transport: Transport) -> ServerSession {
        ServerSession {
            config: config.into(),
            transport,
            phase: Phase::Command,
            helo: None,
            esmtp: false,
            authenticated: None,
            envelope: None,
            chunked: 0,
            chunks_begun: false,
            chunk_error: None,
            rcpt_commands: 0,
            errors: 0,
            auth_failures: 0,
            last_verb: None,
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> Reply {
        self.reply_with(ReplyKind::Greeting, || {
            Reply::plain(
                220,
                format!("{} {}", self.config.hostname, self.config.greeting),
            )
        })
    }

    /// `421 4.3.2`: sent to sessions when the server shuts down.
    pub fn shutdown_reply(&self) -> Reply {
        self.reply(ReplyKind::Shutdown)
    }

    /// `421 4.4.2`: sent when the client was idle or slow for too long.
    pub fn timeout_reply(&self) -> Reply {
        self.reply(ReplyKind::Timeout)
    }

    /// The catalogue reply for `kind`: the override if any, else the standard one.
    pub fn reply(&self, kind: ReplyKind) -> Reply {
        self.reply_with(kind, || kind.default_reply())
    }

    /// The override for `kind` if any, sent exactly as given; else `default()`, without its
    /// enhanced code when ENHANCEDSTATUSCODES is off (RFC 2034).
    fn reply_with(&self, kind: ReplyKind, default: impl FnOnce() -> Reply) -> Reply {
        if let Some(r) = self.config.replies.get(kind) {
            return r.clone();
        }
        let mut r = default();
        if !self.config.enhanced_status_codes {
            r.enhanced = None;
        }
        r
    }

    /// The verb of the last command line handled (`None` after a line that did not parse),
    /// so that a driver knows what a reply answers.
    pub fn last_verb(&self) -> Option<Verb> {
        self.last_verb
    }

    /// The catalogue reply with a more specific text than the standard one, unless
    /// overridden.
    fn reply_text(&self, kind: ReplyKind, text: String) -> Reply {
        self.reply_with(kind, || Reply {
            lines: vec![text],
            ..kind.default_reply()
        })
    }

    fn bad_sequence(&self, what: &str) -> Reply {
        self.reply_text(ReplyKind::BadSequence, format!("Error: {what}"))
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The authenticated identity, if any.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The client's HELO/EHLO name.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// The transaction in progress.
    pub fn envelope(&self) -> &Envelope {
        static NONE: std::sync::LazyLock<Envelope> = std::sync::LazyLock::new(Envelope::default);
        self.envelope.as_deref().unwrap_or(&NONE)
    }

    fn envelope_mut(&mut self) -> &mut Envelope {
        self.envelope.get_or_insert_with(Box::default)
    }

    /// Whether the session waits for the verdict on a MAIL or RCPT (what follows in the
    /// input are commands, not content).
    pub fn deciding_envelope(&self) -> bool {
        matches!(
            &self.phase,
            Phase::Pending(p) if matches!(**p, Pending::Mail { .. } | Pending::Rcpt { .. })
        )
    }

    pub fn input(&self) -> Input {
        match &self.phase {
            Phase::Command => Input::Line {
                max: MAX_COMMAND_LINE,
            },
            Phase::AuthPlain
            | Phase::AuthXoauth2
            | Phase::AuthLoginUser
            | Phase::AuthLoginPass { .. } => Input::Line { max: MAX_AUTH_LINE },
            Phase::Data => Input::Data {
                limit: self.config.max_message_size,
            },
            Phase::Chunk { size, last } => Input::Chunk {
                size: *size,
                last: *last,
            },
            Phase::Pending(_) | Phase::TlsHandshake => Input::Paused,
            Phase::Closed => Input::Closed,
        }
    }

    /// The capabilities this session offers now (they change with TLS).
    pub fn capabilities(&self) -> Capabilities {
        if self.config.ehlo_lines.is_some() {
            return Capabilities::from_ehlo(&self.ehlo_reply());
        }
        let c = &self.config;
        let mut ext = Vec::new();
        if c.pipelining {
            ext.push(Extension::Pipelining);
        }
        ext.push(Extension::Size(Some(c.max_message_size)));
        if c.eight_bit_mime {
            ext.push(Extension::EightBitMime);
        }
        if c.enhanced_status_codes {
            ext.push(Extension::EnhancedStatusCodes);
        }
        // Before STARTTLS and AUTH: what a session can do, then how to get in (scenario
        // files match a reply that ends in the AUTH line).
        if c.chunking {
            ext.push(Extension::Chunking);
            if c.binarymime {
                ext.push(Extension::BinaryMime);
            }
        }
        if c.starttls && self.transport == Transport::Plain {
            ext.push(Extension::StartTls);
        }
        if self.auth_offered() {
            ext.push(Extension::Auth(c.auth_mechanisms.clone()));
        }
        if c.smtputf8 {
            ext.push(Extension::SmtpUtf8);
        }
        if c.dsn {
            ext.push(Extension::Dsn);
        }
        Capabilities {
            domain: c.hostname.clone(),
            extensions: ext,
        }
    }

    /// The EHLO reply: the configured lines, or lines built from the capabilities.
    fn ehlo_reply(&self) -> Reply {
        let Some(lines) = &self.config.ehlo_lines else {
            return self.capabilities().to_reply("Hello");
        };
        let first = self
            .config
            .ehlo_first_line
            .clone()
            .unwrap_or_else(|| self.config.hostname.clone());
        let hide_starttls = self.transport == Transport::Tls && !self.config.starttls_after_tls;
        let rest = lines
            .iter()
            .filter(|l| !(hide_starttls && l.eq_ignore_ascii_case("STARTTLS")))
            .cloned();
        Reply {
            code: 250,
            enhanced: None,
            lines: std::iter::once(first).chain(rest).collect(),
        }
    }

    fn auth_offered(&self) -> bool {
        !self.config.auth_mechanisms.is_empty()
            && (self.transport == Transport::Tls || !self.config.auth_requires_tls)
    }

    fn reset_transaction(&mut self) {
        self.envelope = None;
        self.chunked = 0;
        self.chunk_error = None;
        self.chunks_begun = false;
        self.rcpt_commands = 0;
    }

    /// RCPT commands this transaction may still have decided (see
    /// [`ServerConfig::max_rcpt_commands`]): a driver sending RCPTs ahead sends no more.
    pub fn rcpt_commands_left(&self) -> usize {
        self.config
            .max_rcpt_commands
            .saturating_sub(self.rcpt_commands)
    }

    fn in_transaction(&self) -> bool {
        self.envelope().from.is_some()
    }

    /// A refusal caused by the client's input: counted towards `max_errors`.
    fn error(&mut self, reply: Reply) -> Step {
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.phase = Phase::Closed;
            return Step::Close(self.reply(ReplyKind::TooManyErrors));
        }
        Step::Reply(reply)
    }

    fn error_kind(&mut self, kind: ReplyKind) -> Step {
        let reply = self.reply(kind);
        self.error(reply)
    }

    fn sequence_error(&mut self, what: &str) -> Step {
        let reply = self.bad_sequence(what);
        self.error(reply)
    }

    /// Handles one line framed by the driver (CRLF removed).
    pub fn handle_line(&mut self, line: &[u8]) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::Command => match Command::parse(line) {
                Ok(cmd) => {
                    self.last_verb = Some(cmd.verb());
                    self.handle_command(cmd)
                }
                Err(e) => {
                    self.last_verb = None;
                    let reply = self.command_error_reply(&e);
                    self.error(reply)
                }
            },
            Phase::AuthPlain => self.auth_response(line, AuthStage::Plain),
            Phase::AuthXoauth2 => self.auth_response(line, AuthStage::XOAuth2),
            Phase::AuthLoginUser => self.auth_response(line, AuthStage::LoginUser),
            Phase::AuthLoginPass { username } => {
                self.auth_response(line, AuthStage::LoginPass { username })
            }
            other => {
                // Not reading lines now: a driver bug, not the client's. Keep the phase.
                self.phase = other;
                Step::Reply(self.reply(ReplyKind::InternalError))
            }
        }
    }

    /// Handles a line the framer refused (too long, bare CR/LF).
    pub fn handle_line_error(&mut self, error: LineError) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthPlain
            | Phase::AuthXoauth2
            | Phase::AuthLoginUser
            | Phase::AuthLoginPass { .. } => {
                // RFC 4954 4: a response longer than the buffer fails AUTH with 500 5.5.6.
                let reply = match error {
                    LineError::TooLong { .. } => self.reply(ReplyKind::AuthLineTooLong),
                    other => self.line_error_reply(other),
                };
                self.error(reply)
            }
            Phase::Command => {
                let reply = self.line_error_reply(error);
                self.error(reply)
            }
            other => {
                self.phase = other;
                let reply = self.line_error_reply(error);
                self.error(reply)
            }
        }
    }

    fn line_error_reply(&self, error: LineError) -> Reply {
        let kind = match error {
            LineError::TooLong { .. } => ReplyKind::LineTooLong,
            LineError::BareLf | LineError::BareCr => ReplyKind::SyntaxError,
        };
        self.reply_with(kind, || error.reply())
    }

    fn command_error_reply(&self, error: &CommandError) -> Reply {
        let kind = match error {
            CommandError::UnknownVerb | CommandError::Empty => ReplyKind::UnknownCommand,
            CommandError::Sender(_) => ReplyKind::BadSenderSyntax,
            CommandError::Recipient(_) => ReplyKind::BadRecipientSyntax,
            CommandError::Param(_) => ReplyKind::BadParameter,
            CommandError::MissingArgument(Verb::Helo | Verb::Ehlo) => ReplyKind::HeloMissing,
            _ => ReplyKind::SyntaxError,
        };
        self.reply_with(kind, || error.reply())
    }

    fn handle_command(&mut self, cmd: Command) -> Step {
        match cmd {
            Command::Ehlo { domain } => {
                self.helo = Some(domain);
                self.esmtp = true;
                self.reset_transaction();
                Step::Reply(self.ehlo_reply())
            }
            Command::Helo { domain } => {
                self.helo = Some(domain);
                self.esmtp = false;
                self.reset_transaction();
                Step::Reply(self.reply_with(ReplyKind::Helo, || {
                    Reply::plain(250, self.config.hostname.clone())
                }))
            }
            Command::Noop { .. } => Step::Reply(self.reply(ReplyKind::Ok)),
            Command::Rset => {
                self.reset_transaction();
                Step::Reply(self.reply(ReplyKind::Ok))
            }
            Command::Quit => {
                self.phase = Phase::Closed;
                Step::Close(self.reply(ReplyKind::Bye))
            }
            Command::Vrfy { .. } => Step::Reply(self.reply(ReplyKind::Vrfy)),
            Command::Expn { .. } => Step::Reply(self.reply(ReplyKind::Expn)),
            Command::Help { topic: None } => Step::Reply(self.reply(ReplyKind::Help)),
            Command::Help { topic: Some(_) } => Step::Reply(self.reply(ReplyKind::HelpTopic)),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
        }
    }
}

enum AuthStage {
    Plain,
    XOAuth2,
    LoginUser,
    LoginPass { username: String },
}
