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

use crate::address::{ForwardPath, ReversePath};
use crate::auth::{
    AuthResponse, Credentials, LOGIN_PASSWORD_PROMPT, LOGIN_USERNAME_PROMPT, MAX_AUTH_LINE,
    Mechanism, SaslData,
};
use crate::command::{Command, CommandError};
use crate::data::DataOutcome;
use crate::line::{LineError, MAX_COMMAND_LINE};
use crate::params::{Body, MailParams, RcptParams};
use crate::reply::{Capabilities, Extension, Reply};

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
    /// Errors (5yz replies to bad commands) before `421 4.7.0` and close.
    pub max_errors: u32,
    /// Failed AUTH attempts before `421 4.7.0` and close.
    pub max_auth_failures: u32,
    pub pipelining: bool,
    /// Offer SMTPUTF8 (only when every route onward supports it).
    pub smtputf8: bool,
    /// Offer CHUNKING (BDAT) and BINARYMIME.
    pub chunking: bool,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            greeting: "ESMTP smtp-relay".into(),
            max_message_size: 35 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            max_auth_failures: 3,
            pipelining: true,
            smtputf8: false,
            chunking: false,
            dsn: false,
            starttls: false,
            auth_mechanisms: vec![Mechanism::Plain, Mechanism::Login],
            auth_requires_tls: true,
            auth_required: true,
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
    AuthLoginUser,
    AuthLoginPass { username: String },
    Data,
    Chunk { size: u64, last: bool },
    Pending(Pending),
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
    Deliver,
}

/// Standard replies, built in one place.
mod replies {
    use crate::reply::Reply;

    pub fn ok() -> Reply {
        Reply::new(250, (2, 0, 0), "OK")
    }
    pub fn bad_sequence(what: &str) -> Reply {
        Reply::new(503, (5, 5, 1), format!("Error: {what}"))
    }
    pub fn too_many_errors() -> Reply {
        Reply::new(421, (4, 7, 0), "Too many errors, closing connection")
    }
}

/// One SMTP server session. See the module documentation for how to drive it.
#[derive(Clone, Debug)]
pub struct ServerSession {
    config: ServerConfig,
    transport: Transport,
    phase: Phase,
    /// The client's HELO/EHLO name; `None` until it greets (after STARTTLS, again).
    helo: Option<String>,
    /// Whether the client used EHLO (ESMTP parameters allowed) rather than HELO.
    esmtp: bool,
    /// Who the client authenticated as.
    authenticated: Option<String>,
    envelope: Envelope,
    /// Size of BDAT chunks received in this transaction, and whether one was refused.
    chunked: u64,
    chunk_error: Option<Reply>,
    errors: u32,
    auth_failures: u32,
}

impl ServerSession {
    pub fn new(config: ServerConfig, transport: Transport) -> ServerSession {
        ServerSession {
            config,
            transport,
            phase: Phase::Command,
            helo: None,
            esmtp: false,
            authenticated: None,
            envelope: Envelope::default(),
            chunked: 0,
            chunk_error: None,
            errors: 0,
            auth_failures: 0,
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> Reply {
        Reply::plain(
            220,
            format!("{} {}", self.config.hostname, self.config.greeting),
        )
    }

    /// `421 4.3.2`: sent to sessions when the server shuts down.
    pub fn shutdown_reply(&self) -> Reply {
        Reply::new(
            421,
            (4, 3, 2),
            format!("{} Service shutting down", self.config.hostname),
        )
    }

    /// `421 4.4.2`: sent when the client was idle or slow for too long.
    pub fn timeout_reply(&self) -> Reply {
        Reply::new(
            421,
            (4, 4, 2),
            format!("{} Timeout, closing connection", self.config.hostname),
        )
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
        &self.envelope
    }

    pub fn input(&self) -> Input {
        match &self.phase {
            Phase::Command => Input::Line {
                max: MAX_COMMAND_LINE,
            },
            Phase::AuthPlain | Phase::AuthLoginUser | Phase::AuthLoginPass { .. } => {
                Input::Line { max: MAX_AUTH_LINE }
            }
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

    /// The capabilities this session advertises now (they change with TLS and AUTH).
    pub fn capabilities(&self) -> Capabilities {
        let c = &self.config;
        let mut ext = Vec::new();
        if c.pipelining {
            ext.push(Extension::Pipelining);
        }
        ext.push(Extension::Size(Some(c.max_message_size)));
        ext.push(Extension::EightBitMime);
        ext.push(Extension::EnhancedStatusCodes);
        if c.starttls && self.transport == Transport::Plain {
            ext.push(Extension::StartTls);
        }
        if self.auth_offered() {
            ext.push(Extension::Auth(c.auth_mechanisms.clone()));
        }
        if c.smtputf8 {
            ext.push(Extension::SmtpUtf8);
        }
        if c.chunking {
            ext.push(Extension::Chunking);
            ext.push(Extension::BinaryMime);
        }
        if c.dsn {
            ext.push(Extension::Dsn);
        }
        Capabilities {
            domain: c.hostname.clone(),
            extensions: ext,
        }
    }

    fn auth_offered(&self) -> bool {
        !self.config.auth_mechanisms.is_empty()
            && (self.transport == Transport::Tls || !self.config.auth_requires_tls)
    }

    fn reset_transaction(&mut self) {
        self.envelope = Envelope::default();
        self.chunked = 0;
        self.chunk_error = None;
    }

    fn in_transaction(&self) -> bool {
        self.envelope.from.is_some()
    }

    /// A refusal caused by the client's input: counted towards `max_errors`.
    fn error(&mut self, reply: Reply) -> Step {
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.phase = Phase::Closed;
            return Step::Close(replies::too_many_errors());
        }
        Step::Reply(reply)
    }

    /// Handles one line framed by the driver (CRLF removed).
    pub fn handle_line(&mut self, line: &[u8]) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::Command => match Command::parse(line) {
                Ok(cmd) => self.handle_command(cmd),
                Err(e) => self.error(e.reply()),
            },
            Phase::AuthPlain => self.auth_response(line, AuthStage::Plain),
            Phase::AuthLoginUser => self.auth_response(line, AuthStage::LoginUser),
            Phase::AuthLoginPass { username } => {
                self.auth_response(line, AuthStage::LoginPass { username })
            }
            other => {
                // Not reading lines now: a driver bug, not the client's. Keep the phase.
                self.phase = other;
                Step::Reply(Reply::new(
                    451,
                    (4, 3, 0),
                    "Internal error: unexpected input",
                ))
            }
        }
    }

    /// Handles a line the framer refused (too long, bare CR/LF).
    pub fn handle_line_error(&mut self, error: LineError) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthPlain | Phase::AuthLoginUser | Phase::AuthLoginPass { .. } => {
                // RFC 4954 4: a response longer than the buffer fails AUTH with 500 5.5.6.
                let reply = match error {
                    LineError::TooLong { .. } => {
                        Reply::new(500, (5, 5, 6), "Authentication exchange line is too long")
                    }
                    other => other.reply(),
                };
                self.error(reply)
            }
            Phase::Command => self.error(error.reply()),
            other => {
                self.phase = other;
                self.error(error.reply())
            }
        }
    }

    fn handle_command(&mut self, cmd: Command) -> Step {
        match cmd {
            Command::Ehlo { domain } => {
                self.helo = Some(domain);
                self.esmtp = true;
                self.reset_transaction();
                Step::Reply(self.capabilities().to_reply("Hello"))
            }
            Command::Helo { domain } => {
                self.helo = Some(domain);
                self.esmtp = false;
                self.reset_transaction();
                Step::Reply(Reply::plain(250, self.config.hostname.clone()))
            }
            Command::Noop { .. } => Step::Reply(replies::ok()),
            Command::Rset => {
                self.reset_transaction();
                Step::Reply(replies::ok())
            }
            Command::Quit => {
                self.phase = Phase::Closed;
                Step::Close(Reply::new(221, (2, 0, 0), "Bye"))
            }
            Command::Vrfy { .. } => Step::Reply(Reply::new(
                252,
                (2, 1, 5),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn { .. } => Step::Reply(Reply::new(502, (5, 5, 1), "EXPN not available")),
            Command::Help { topic: None } => Step::Reply(Reply::new(
                214,
                (2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            )),
            Command::Help { topic: Some(_) } => Step::Reply(Reply::new(
                504,
                (5, 5, 4),
                "HELP for a command is not available",
            )),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
        }
    }

    fn starttls(&mut self) -> Step {
        if self.transport == Transport::Tls {
            return self.error(replies::bad_sequence("TLS is already active"));
        }
        if !self.config.starttls {
            return self.error(Reply::new(502, (5, 5, 1), "STARTTLS not available"));
        }
        if self.in_transaction() {
            return self.error(replies::bad_sequence("STARTTLS inside a mail transaction"));
        }
        self.phase = Phase::TlsHandshake;
        Step::StartTls(Reply::new(220, (2, 0, 0), "Ready to start TLS"))
    }

    /// The TLS handshake finished: everything known about the client is forgotten (RFC 3207
    /// 4.2), so it must greet again.
    pub fn tls_established(&mut self) {
        self.transport = Transport::Tls;
        self.phase = Phase::Command;
        self.helo = None;
        self.esmtp = false;
        self.authenticated = None;
        self.reset_transaction();
    }

    fn auth(&mut self, mechanism: Mechanism, initial: Option<SaslData>) -> Step {
        if self.helo.is_none() || !self.esmtp {
            return self.error(replies::bad_sequence("send EHLO first"));
        }
        if self.authenticated.is_some() {
            return self.error(replies::bad_sequence("already authenticated"));
        }
        if self.in_transaction() {
            return self.error(replies::bad_sequence(
                "AUTH not allowed during a mail transaction",
            ));
        }
        if self.config.auth_mechanisms.is_empty() {
            return self.error(Reply::new(502, (5, 5, 1), "AUTH not available"));
        }
        if !self.auth_offered() {
            return self.error(Reply::new(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if !self.config.auth_mechanisms.contains(&mechanism) {
            return self.error(Reply::new(
                504,
                (5, 5, 4),
                "Unrecognized authentication type",
            ));
        }
        match (mechanism, initial) {
            (Mechanism::Plain, Some(ir)) => self.plain(&ir.0),
            (Mechanism::Plain, None) => {
                self.phase = Phase::AuthPlain;
                Step::Reply(Reply::plain(334, ""))
            }
            (Mechanism::Login, Some(user)) => self.login_user(user),
            (Mechanism::Login, None) => {
                self.phase = Phase::AuthLoginUser;
                Step::Reply(Reply::plain(334, LOGIN_USERNAME_PROMPT))
            }
            _ => self.error(Reply::new(
                504,
                (5, 5, 4),
                "Unrecognized authentication type",
            )),
        }
    }

    fn plain(&mut self, msg: &[u8]) -> Step {
        match Credentials::from_plain(msg) {
            Err(_) => self.error(Reply::new(501, (5, 5, 2), "Malformed PLAIN response")),
            Ok(c) if c.is_proxy() => {
                self.auth_failures += 1;
                self.auth_failed(Reply::new(
                    535,
                    (5, 7, 8),
                    "Authentication credentials invalid: authorization identity not allowed",
                ))
            }
            Ok(c) => {
                self.phase = Phase::Pending(Pending::Auth {
                    username: c.username.clone(),
                });
                Step::Decide(Decision::Authenticate(c))
            }
        }
    }

    fn login_user(&mut self, user: SaslData) -> Step {
        match String::from_utf8(user.0) {
            Ok(username) if !username.is_empty() => {
                self.phase = Phase::AuthLoginPass { username };
                Step::Reply(Reply::plain(334, LOGIN_PASSWORD_PROMPT))
            }
            _ => self.error(Reply::new(501, (5, 5, 2), "Malformed LOGIN user name")),
        }
    }

    fn auth_response(&mut self, line: &[u8], stage: AuthStage) -> Step {
        let data = match AuthResponse::parse(line) {
            Ok(AuthResponse::Cancel) => {
                return self.error(Reply::new(501, (5, 7, 0), "Authentication cancelled"));
            }
            Ok(AuthResponse::Data(d)) => d,
            Err(_) => return self.error(CommandError::BadBase64.reply()),
        };
        match stage {
            AuthStage::Plain => self.plain(&data.0),
            AuthStage::LoginUser => self.login_user(data),
            AuthStage::LoginPass { username } => match String::from_utf8(data.0) {
                Ok(secret) => {
                    let c = Credentials::new(username.clone(), secret);
                    self.phase = Phase::Pending(Pending::Auth { username });
                    Step::Decide(Decision::Authenticate(c))
                }
                Err(_) => self.error(Reply::new(501, (5, 5, 2), "Malformed LOGIN password")),
            },
        }
    }

    fn auth_failed(&mut self, reply: Reply) -> Step {
        if self.auth_failures >= self.config.max_auth_failures {
            self.phase = Phase::Closed;
            return Step::Close(Reply::new(
                421,
                (4, 7, 0),
                "Too many authentication failures, closing connection",
            ));
        }
        Step::Reply(reply)
    }

    fn mail(&mut self, from: ReversePath, mut params: MailParams) -> Step {
        if self.helo.is_none() {
            return self.error(replies::bad_sequence("send HELO/EHLO first"));
        }
        if self.in_transaction() {
            return self.error(replies::bad_sequence("nested MAIL command"));
        }
        if self.config.auth_required && self.authenticated.is_none() {
            return self.error(Reply::new(530, (5, 7, 0), "Authentication required"));
        }
        if let Some(reply) = self.check_mail_params(&from, &params) {
            return self.error(reply);
        }
        params.auth = None;
        self.phase = Phase::Pending(Pending::Mail {
            from: from.clone(),
            params: params.clone(),
        });
        Step::Decide(Decision::Mail { from, params })
    }

    fn check_mail_params(&self, from: &ReversePath, p: &MailParams) -> Option<Reply> {
        let unsupported = |what: &str| {
            Some(Reply::new(
                555,
                (5, 5, 4),
                format!("{what} parameter not supported"),
            ))
        };
        let has_params = p != &MailParams::default();
        if has_params && !self.esmtp {
            return unsupported("MAIL (after HELO)");
        }
        if let Some(u) = p.unknown.first() {
            return unsupported(&u.keyword);
        }
        if p.smtputf8 && !self.config.smtputf8 {
            return unsupported("SMTPUTF8");
        }
        if p.body == Some(Body::BinaryMime) && !self.config.chunking {
            return unsupported("BODY=BINARYMIME");
        }
        if (p.ret.is_some() || p.envid.is_some()) && !self.config.dsn {
            return unsupported("RET/ENVID");
        }
        if p.size.is_some_and(|s| s > self.config.max_message_size) {
            return Some(Reply::new(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        if !from.is_ascii() && !p.smtputf8 {
            return Some(Reply::new(
                550,
                (5, 6, 7),
                "Non-ASCII addresses not permitted for that sender",
            ));
        }
        None
    }

    fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Step {
        if !self.in_transaction() {
            return self.error(replies::bad_sequence("need MAIL before RCPT"));
        }
        if let Some(u) = params.unknown.first() {
            return self.error(Reply::new(
                555,
                (5, 5, 4),
                format!("{} parameter not supported", u.keyword),
            ));
        }
        if (params.notify.is_some() || params.orcpt.is_some()) && !self.config.dsn {
            return self.error(Reply::new(
                555,
                (5, 5, 4),
                "NOTIFY/ORCPT parameter not supported",
            ));
        }
        if !to.is_ascii() && !self.envelope.mail_params.smtputf8 {
            return self.error(Reply::new(
                553,
                (5, 6, 7),
                "Non-ASCII addresses not permitted for that recipient",
            ));
        }
        if self.envelope.rcpts.iter().any(|(r, _)| r.same_target(&to)) {
            // Delivered once (smtp-edge-cases 44): accepted without asking again.
            return Step::Reply(Reply::new(250, (2, 1, 5), "Recipient OK (duplicate)"));
        }
        if self.envelope.rcpts.len() >= self.config.max_recipients {
            return Step::Reply(Reply::new(452, (4, 5, 3), "Too many recipients"));
        }
        self.phase = Phase::Pending(Pending::Rcpt {
            to: to.clone(),
            params: params.clone(),
        });
        Step::Decide(Decision::Rcpt { to, params })
    }

    fn data(&mut self) -> Step {
        if !self.in_transaction() {
            return self.error(replies::bad_sequence("need MAIL before DATA"));
        }
        if self.envelope.rcpts.is_empty() {
            // The transaction is over: a client that pipelined its body after this DATA must
            // not see those lines add recipients to it (smtp-edge-cases 79).
            self.reset_transaction();
            return self.error(Reply::new(554, (5, 5, 1), "No valid recipients"));
        }
        if self.envelope.mail_params.body == Some(Body::BinaryMime) {
            return self.error(replies::bad_sequence(
                "BODY=BINARYMIME needs BDAT, not DATA",
            ));
        }
        self.phase = Phase::Pending(Pending::BeginData);
        Step::Decide(Decision::BeginData)
    }

    fn bdat(&mut self, size: u64, last: bool) -> Step {
        // RFC 3030 2: the chunk is read whatever the verdict, then answered.
        self.chunk_error = if !self.config.chunking {
            Some(Reply::new(502, (5, 5, 1), "BDAT not available"))
        } else if !self.in_transaction() {
            Some(replies::bad_sequence("need MAIL before BDAT"))
        } else if self.envelope.rcpts.is_empty() {
            Some(Reply::new(554, (5, 5, 1), "No valid recipients"))
        } else {
            self.chunk_error.take()
        };
        self.chunked = self.chunked.saturating_add(size);
        if self.chunk_error.is_none() && self.chunked > self.config.max_message_size {
            self.chunk_error = Some(Reply::new(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        self.phase = Phase::Chunk { size, last };
        Step::ReceiveChunk { size, last }
    }

    /// The chunk announced by the last BDAT was read (and kept by the driver unless this
    /// returns a refusal).
    pub fn handle_chunk_end(&mut self) -> Step {
        let Phase::Chunk { last, .. } = std::mem::replace(&mut self.phase, Phase::Command) else {
            return Step::Reply(Reply::new(
                451,
                (4, 3, 0),
                "Internal error: unexpected chunk",
            ));
        };
        if let Some(reply) = self.chunk_error.clone() {
            if last || !self.in_transaction() {
                self.reset_transaction();
            }
            return self.error(reply);
        }
        if !last {
            return Step::Reply(Reply::new(
                250,
                (2, 0, 0),
                format!("{} octets received", self.chunked),
            ));
        }
        self.envelope.size = self.chunked;
        self.phase = Phase::Pending(Pending::Deliver);
        Step::Decide(Decision::Deliver(self.envelope.clone()))
    }

    /// The DATA decoder found the terminator.
    pub fn handle_data_end(&mut self, outcome: DataOutcome) -> Step {
        if !matches!(self.phase, Phase::Data) {
            return Step::Reply(Reply::new(
                451,
                (4, 3, 0),
                "Internal error: unexpected data end",
            ));
        }
        self.phase = Phase::Command;
        if outcome.too_large {
            self.reset_transaction();
            return Step::Reply(Reply::new(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        if outcome.has_forbidden_line_endings() {
            self.reset_transaction();
            return Step::Reply(Reply::new(
                550,
                (5, 6, 0),
                "Message contains bare <CR> or <LF>; lines must end with <CR><LF>",
            ));
        }
        self.envelope.size = outcome.size;
        self.phase = Phase::Pending(Pending::Deliver);
        Step::Decide(Decision::Deliver(self.envelope.clone()))
    }

    /// The driver's answer to the last [`Step::Decide`].
    pub fn decide(&mut self, verdict: Verdict) -> Step {
        let Phase::Pending(pending) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return Step::Reply(Reply::new(
                451,
                (4, 3, 0),
                "Internal error: no decision pending",
            ));
        };
        let (accepted, reply) = match verdict {
            Verdict::Accept => (true, None),
            Verdict::Reply(r) => (r.is_positive(), Some(r)),
        };
        match pending {
            Pending::Auth { username } => {
                if accepted {
                    self.authenticated = Some(username);
                    Step::Reply(
                        reply.unwrap_or_else(|| {
                            Reply::new(235, (2, 7, 0), "Authentication successful")
                        }),
                    )
                } else {
                    self.auth_failures += 1;
                    self.auth_failed(reply.unwrap_or_else(|| {
                        Reply::new(535, (5, 7, 8), "Authentication credentials invalid")
                    }))
                }
            }
            Pending::Mail { from, params } => {
                if accepted {
                    self.envelope.from = Some(from);
                    self.envelope.mail_params = params;
                }
                Step::Reply(reply.unwrap_or_else(|| Reply::new(250, (2, 1, 0), "Sender OK")))
            }
            Pending::Rcpt { to, params } => {
                if accepted {
                    self.envelope.rcpts.push((to, params));
                }
                Step::Reply(reply.unwrap_or_else(|| Reply::new(250, (2, 1, 5), "Recipient OK")))
            }
            Pending::BeginData => {
                if accepted {
                    self.phase = Phase::Data;
                }
                Step::Reply(
                    reply.unwrap_or_else(|| Reply::plain(354, "End data with <CR><LF>.<CR><LF>")),
                )
            }
            Pending::Deliver => {
                self.reset_transaction();
                Step::Reply(
                    reply.unwrap_or_else(|| {
                        Reply::new(250, (2, 0, 0), "Message accepted for delivery")
                    }),
                )
            }
        }
    }
}

enum AuthStage {
    Plain,
    LoginUser,
    LoginPass { username: String },
}
