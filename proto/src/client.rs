//! The client session machine, sans-IO, for the upstream side: greeting, EHLO (HELO when EHLO
//! is refused), STARTTLS, AUTH PLAIN/LOGIN with whatever prompt text the server uses, then
//! MAIL/RCPT/DATA/RSET/NOOP/QUIT, pipelined when the server offers PIPELINING.
//!
//! The driver feeds every reply to [`ClientSession::handle_reply`] and sends what comes back.
//! During the handshake the session chooses the commands itself; once [`ClientEvent::Ready`],
//! the driver issues commands with [`ClientSession::mail`], [`ClientSession::rcpt`], ... and
//! each later reply is reported tagged with the command it answers, in order, so a driver may
//! send a whole envelope at once when [`ClientSession::can_pipeline`] says so.

use std::collections::VecDeque;
use std::fmt;

use crate::address::{ForwardPath, ReversePath};
use crate::auth::{AuthResponse, Credentials, Mechanism, SaslData};
use crate::command::Command;
use crate::line::MAX_COMMAND_LINE;
use crate::params::{MailParams, RcptParams};
use crate::reply::{Capabilities, Reply, Severity};

/// How to secure the upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTls {
    /// Plaintext; STARTTLS is not attempted.
    None,
    /// STARTTLS is required: fail if the server does not offer it.
    StartTls,
    /// STARTTLS when the server offers it, plaintext otherwise (opportunistic TLS, RFC 3207
    /// section 4, Postfix's `may`). Credentials are never sent in plaintext in this mode.
    Opportunistic,
    /// The connection is TLS from the first byte (port 465); STARTTLS is never sent, even
    /// when the server lists it (163 does, smtp-edge-cases 124).
    Implicit,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Our name in EHLO.
    pub helo_name: String,
    pub tls: ClientTls,
    /// Authenticate with these after the (secured) EHLO.
    pub credentials: Option<Credentials>,
}

/// Something to send: a command, or an AUTH response line (a secret: never log it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    Command(Command),
    AuthResponse(AuthResponse),
}

impl Outgoing {
    /// Appends the wire form with CRLF.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Outgoing::Command(c) => c.encode(out),
            Outgoing::AuthResponse(r) => r.encode(out),
        }
    }

    /// Whether the line carries credentials and must be redacted in transcripts.
    pub fn is_secret(&self) -> bool {
        matches!(
            self,
            Outgoing::AuthResponse(_)
                | Outgoing::Command(Command::Auth {
                    initial: Some(_),
                    ..
                })
        )
    }
}

/// What a reply meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The handshake goes on: send these.
    Send(Vec<Outgoing>),
    /// STARTTLS was accepted: run the TLS handshake, then call
    /// [`ClientSession::tls_established`].
    UpgradeTls,
    /// Greeted, secured and authenticated as configured: transactions may start.
    Ready,
    Mail(Reply),
    /// The reply to the `index`th RCPT of this transaction (from 0).
    Rcpt {
        index: usize,
        reply: Reply,
    },
    /// The reply to DATA: on 354 send the body, then call [`ClientSession::data_sent`].
    Data(Reply),
    /// The reply to a BDAT chunk that was not the last.
    Chunk(Reply),
    /// The final reply after the end of data.
    Message(Reply),
    Rset(Reply),
    Noop(Reply),
    Quit(Reply),
}

/// Why the session cannot go on. Each carries the server's reply when there was one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    Greeting(Reply),
    Hello(Reply),
    StartTls(Reply),
    /// STARTTLS was required and the server did not offer it.
    TlsNotOffered,
    /// Credentials were configured and the server offers neither PLAIN nor LOGIN.
    AuthNotOffered,
    /// Opportunistic TLS fell back to plaintext and credentials were configured: they are
    /// not sent over a connection nobody asked to be plaintext.
    AuthWithoutTls,
    /// The server refused the credentials (or the exchange).
    AuthFailed(Reply),
    /// A reply arrived when none was expected.
    UnexpectedReply(Reply),
    /// A command was issued at a time it cannot be (a driver bug).
    NotReady,
}

impl ClientError {
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ClientError::Greeting(r)
            | ClientError::Hello(r)
            | ClientError::StartTls(r)
            | ClientError::AuthFailed(r)
            | ClientError::UnexpectedReply(r) => Some(r),
            _ => None,
        }
    }

    /// Worth retrying later (the server said 4yz).
    pub fn is_transient(&self) -> bool {
        self.reply()
            .is_some_and(|r| r.severity() == Severity::Transient)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reply = |what: &str, r: &Reply| format!("{what}: {} {}", r.code, r.text());
        let text = match self {
            ClientError::Greeting(r) => reply("greeting refused", r),
            ClientError::Hello(r) => reply("EHLO/HELO refused", r),
            ClientError::StartTls(r) => reply("STARTTLS refused", r),
            ClientError::TlsNotOffered => "server does not offer STARTTLS".into(),
            ClientError::AuthNotOffered => "server offers neither AUTH PLAIN nor AUTH LOGIN".into(),
            ClientError::AuthWithoutTls => {
                "credentials are not sent over plaintext (STARTTLS was not offered)".into()
            }
            ClientError::AuthFailed(r) => reply("authentication failed", r),
            ClientError::UnexpectedReply(r) => reply("unexpected reply", r),
            ClientError::NotReady => "command issued before the session was ready".into(),
        };
        f.write_str(&text)
    }
}

impl std::error::Error for ClientError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    /// `AUTH PLAIN` without initial response: waiting for `334`.
    PlainChallenge,
    /// Credentials sent: waiting for `235`.
    AuthFinal,
    LoginUser,
    LoginPass,
    Ready,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
    Chunk,
    Message,
    Rset,
    Noop,
    Quit,
}

/// One upstream SMTP session.
#[derive(Clone, Debug)]
pub struct ClientSession {
    config: ClientConfig,
    stage: Stage,
    tls_active: bool,
    caps: Capabilities,
    pending: VecDeque<Expect>,
    rcpts_sent: usize,
}

impl ClientSession {
    /// A session on a fresh connection, waiting for the greeting.
    pub fn new(config: ClientConfig) -> ClientSession {
        let tls_active = config.tls == ClientTls::Implicit;
        ClientSession {
            config,
            stage: Stage::Greeting,
            tls_active,
            caps: Capabilities::default(),
            pending: VecDeque::new(),
            rcpts_sent: 0,
        }
    }

    /// What the server offered in its last EHLO reply.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn is_ready(&self) -> bool {
        self.stage == Stage::Ready
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Whether commands may be sent without waiting for each reply (RFC 2920).
    pub fn can_pipeline(&self) -> bool {
        self.caps.pipelining()
    }

    /// Replies still owed by the server.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    fn ehlo(&self) -> Outgoing {
        Outgoing::Command(Command::Ehlo {
            domain: self.config.helo_name.clone(),
        })
    }

    /// Takes the next reply from the server.
    pub fn handle_reply(&mut self, reply: Reply) -> Result<ClientEvent, ClientError> {
        let ok = reply.severity() == Severity::Completion;
        match self.stage {
            Stage::Greeting if ok => {
                self.stage = Stage::Ehlo;
                Ok(ClientEvent::Send(vec![self.ehlo()]))
            }
            Stage::Greeting => Err(self.fail(ClientError::Greeting(reply))),
            Stage::Ehlo if ok => {
                self.caps = Capabilities::from_ehlo(&reply);
                self.after_hello()
            }
            Stage::Ehlo if matches!(reply.code, 500 | 502) => {
                // An old server without ESMTP: fall back to HELO.
                self.stage = Stage::Helo;
                Ok(ClientEvent::Send(vec![Outgoing::Command(Command::Helo {
                    domain: self.config.helo_name.clone(),
                })]))
            }
            Stage::Helo if ok => {
                self.caps = Capabilities::default();
                self.after_hello()
            }
            Stage::Ehlo | Stage::Helo => Err(self.fail(ClientError::Hello(reply))),
            Stage::StartTls if ok => {
                self.stage = Stage::TlsHandshake;
                Ok(ClientEvent::UpgradeTls)
            }
            Stage::StartTls => Err(self.fail(ClientError::StartTls(reply))),
            Stage::PlainChallenge if reply.code == 334 => {
                let creds = self.credentials()?;
                self.stage = Stage::AuthFinal;
                Ok(ClientEvent::Send(vec![Outgoing::AuthResponse(
                    AuthResponse::Data(creds.to_plain()),
                )]))
            }
            Stage::LoginUser if reply.code == 334 => {
                let creds = self.credentials()?;
                self.stage = Stage::LoginPass;
                Ok(ClientEvent::Send(vec![Outgoing::AuthResponse(
                    AuthResponse::Data(SaslData(creds.username.into_bytes())),
                )]))
            }
            Stage::LoginPass if reply.code == 334 => {
                let creds = self.credentials()?;
                self.stage = Stage::AuthFinal;
                Ok(ClientEvent::Send(vec![Outgoing::AuthResponse(
                    AuthResponse::Data(SaslData(creds.secret.into_bytes())),
                )]))
            }
            Stage::AuthFinal if ok => {
                self.stage = Stage::Ready;
                Ok(ClientEvent::Ready)
            }
            Stage::PlainChallenge | Stage::LoginUser | Stage::LoginPass | Stage::AuthFinal => {
                Err(self.fail(ClientError::AuthFailed(reply)))
            }
            Stage::Ready => self.transaction_reply(reply),
            Stage::TlsHandshake | Stage::Closed => Err(ClientError::UnexpectedReply(reply)),
        }
    }

    fn fail(&mut self, e: ClientError) -> ClientError {
        self.stage = Stage::Closed;
        e
    }

    fn credentials(&self) -> Result<Credentials, ClientError> {
        self.config.credentials.clone().ok_or(ClientError::NotReady)
    }

    fn after_hello(&mut self) -> Result<ClientEvent, ClientError> {
        let wants_tls = matches!(
            self.config.tls,
            ClientTls::StartTls | ClientTls::Opportunistic
        );
        if wants_tls && !self.tls_active {
            if self.caps.starttls() {
                self.stage = Stage::StartTls;
                return Ok(ClientEvent::Send(vec![Outgoing::Command(
                    Command::StartTls,
                )]));
            }
            if self.config.tls == ClientTls::StartTls {
                return Err(self.fail(ClientError::TlsNotOffered));
            }
        }
        let Some(creds) = self.config.credentials.clone() else {
            self.stage = Stage::Ready;
            return Ok(ClientEvent::Ready);
        };
        if self.config.tls == ClientTls::Opportunistic && !self.tls_active {
            return Err(self.fail(ClientError::AuthWithoutTls));
        }
        let mechanisms = self.caps.auth_mechanisms();
        if mechanisms.contains(&Mechanism::Plain) {
            let cmd = Command::Auth {
                mechanism: Mechanism::Plain,
                initial: Some(creds.to_plain()),
            };
            // RFC 4954 4: no initial response when it would make the line too long.
            if cmd.to_bytes().len() <= MAX_COMMAND_LINE {
                self.stage = Stage::AuthFinal;
                return Ok(ClientEvent::Send(vec![Outgoing::Command(cmd)]));
            }
            self.stage = Stage::PlainChallenge;
            return Ok(ClientEvent::Send(vec![Outgoing::Command(Command::Auth {
                mechanism: Mechanism::Plain,
                initial: None,
            })]));
        }
        if mechanisms.contains(&Mechanism::Login) {
            self.stage = Stage::LoginUser;
            return Ok(ClientEvent::Send(vec![Outgoing::Command(Command::Auth {
                mechanism: Mechanism::Login,
                initial: None,
            })]));
        }
        Err(self.fail(ClientError::AuthNotOffered))
    }

    /// The TLS handshake after STARTTLS succeeded: greet again (RFC 3207 4.2).
    pub fn tls_established(&mut self) -> Result<Vec<Outgoing>, ClientError> {
        if self.stage != Stage::TlsHandshake {
            return Err(ClientError::NotReady);
        }
        self.tls_active = true;
        self.caps = Capabilities::default();
        self.stage = Stage::Ehlo;
        Ok(vec![self.ehlo()])
    }

    fn transaction_reply(&mut self, reply: Reply) -> Result<ClientEvent, ClientError> {
        let Some(expect) = self.pending.pop_front() else {
            return Err(ClientError::UnexpectedReply(reply));
        };
        Ok(match expect {
            Expect::Mail => ClientEvent::Mail(reply),
            Expect::Rcpt(index) => ClientEvent::Rcpt { index, reply },
            Expect::Data => ClientEvent::Data(reply),
            Expect::Chunk => ClientEvent::Chunk(reply),
            Expect::Message => ClientEvent::Message(reply),
            Expect::Rset => ClientEvent::Rset(reply),
            Expect::Noop => ClientEvent::Noop(reply),
            Expect::Quit => {
                self.stage = Stage::Closed;
                ClientEvent::Quit(reply)
            }
        })
    }

    fn issue(&mut self, expect: Expect, cmd: Command) -> Result<Outgoing, ClientError> {
        if self.stage != Stage::Ready {
            return Err(ClientError::NotReady);
        }
        self.pending.push_back(expect);
        Ok(Outgoing::Command(cmd))
    }

    /// MAIL FROM; starts a transaction (RCPT indexes restart at 0).
    pub fn mail(&mut self, from: ReversePath, params: MailParams) -> Result<Outgoing, ClientError> {
        self.rcpts_sent = 0;
        self.issue(Expect::Mail, Command::Mail { from, params })
    }

    pub fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Result<Outgoing, ClientError> {
        let index = self.rcpts_sent;
        let out = self.issue(Expect::Rcpt(index), Command::Rcpt { to, params })?;
        self.rcpts_sent += 1;
        Ok(out)
    }

    pub fn data(&mut self) -> Result<Outgoing, ClientError> {
        self.issue(Expect::Data, Command::Data)
    }

    /// Whether the server takes BDAT (RFC 3030 CHUNKING).
    pub fn can_chunk(&self) -> bool {
        self.caps.chunking()
    }

    /// `BDAT size [LAST]`: the driver writes exactly `size` octets after it. The last chunk's
    /// reply is the message's final reply ([`ClientEvent::Message`]); the others'
    /// [`ClientEvent::Chunk`].
    pub fn bdat(&mut self, size: u64, last: bool) -> Result<Outgoing, ClientError> {
        let expect = if last { Expect::Message } else { Expect::Chunk };
        self.issue(expect, Command::Bdat { size, last })
    }

    /// The body and its terminator were sent (after a 354): the final reply is owed.
    pub fn data_sent(&mut self) -> Result<(), ClientError> {
        if self.stage != Stage::Ready {
            return Err(ClientError::NotReady);
        }
        self.pending.push_back(Expect::Message);
        Ok(())
    }

    pub fn rset(&mut self) -> Result<Outgoing, ClientError> {
        self.issue(Expect::Rset, Command::Rset)
    }

    pub fn noop(&mut self) -> Result<Outgoing, ClientError> {
        self.issue(Expect::Noop, Command::Noop { text: None })
    }

    pub fn quit(&mut self) -> Result<Outgoing, ClientError> {
        self.issue(Expect::Quit, Command::Quit)
    }
}
