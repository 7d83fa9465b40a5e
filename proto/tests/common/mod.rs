//! An in-memory driver over `ServerConnection`: it feeds bytes as a socket would, answers
//! decisions with a policy closure, and records replies and deliveries.

#![allow(dead_code)]

use smtp_wire::{
    BareLineEnding, Decision, Envelope, Event, LineEndings, Reply, ServerConfig, ServerConnection,
    ServerSession, Transport, Verdict,
};

pub type Policy = Box<dyn FnMut(&ServerSession, &Decision) -> Verdict>;

pub struct Harness {
    pub conn: ServerConnection,
    body: Vec<u8>,
    /// Every raw DATA/BDAT byte, as received.
    pub raw: Vec<u8>,
    replies: Vec<Reply>,
    /// Every decision asked, in order.
    pub decisions: Vec<Decision>,
    pub delivered: Vec<(Envelope, Vec<u8>)>,
    pub discards: usize,
    pub closed: bool,
    pub tls_upgrades: usize,
    /// Bytes dropped at STARTTLS because they were pipelined in plaintext.
    pub discarded_at_starttls: usize,
    policy: Policy,
}

/// Accepts every decision; credentials are good when the secret is "right".
pub fn accept_all() -> Policy {
    Box::new(|_, d| match d {
        Decision::Authenticate(c) if c.secret != "right" => Verdict::Reply(Reply::new(
            535,
            (5, 7, 8),
            "Authentication credentials invalid",
        )),
        _ => Verdict::Accept,
    })
}

/// A config without AUTH requirements: plain ESMTP, as a trusted network would get.
pub fn open_config() -> ServerConfig {
    ServerConfig {
        hostname: "relay.test".into(),
        auth_required: false,
        auth_requires_tls: false,
        ..ServerConfig::default()
    }
}

/// A submission config: AUTH required, allowed without TLS (tests run in plaintext).
pub fn submission_config() -> ServerConfig {
    ServerConfig {
        hostname: "relay.test".into(),
        auth_required: true,
        auth_requires_tls: false,
        ..ServerConfig::default()
    }
}

impl Harness {
    pub fn new(config: ServerConfig) -> Harness {
        Harness::with(
            config,
            Transport::Plain,
            LineEndings::CrlfOnly,
            accept_all(),
        )
    }

    pub fn with(
        config: ServerConfig,
        transport: Transport,
        endings: LineEndings,
        policy: Policy,
    ) -> Harness {
        Harness::build(config, transport, endings, BareLineEnding::Reject, policy)
    }

    pub fn build(
        config: ServerConfig,
        transport: Transport,
        endings: LineEndings,
        bare: BareLineEnding,
        policy: Policy,
    ) -> Harness {
        let conn = ServerConnection::new(config, transport, endings, bare);
        let greeting = conn.greeting();
        Harness {
            conn,
            body: Vec::new(),
            raw: Vec::new(),
            replies: vec![greeting],
            decisions: Vec::new(),
            delivered: Vec::new(),
            discards: 0,
            closed: false,
            tls_upgrades: 0,
            discarded_at_starttls: 0,
            policy,
        }
    }

    pub fn open() -> Harness {
        Harness::new(open_config())
    }

    /// A harness with the given bare CR/LF policy for DATA.
    pub fn open_with_bare(bare: BareLineEnding) -> Harness {
        Harness::build(
            open_config(),
            Transport::Plain,
            LineEndings::CrlfOnly,
            bare,
            accept_all(),
        )
    }

    pub fn session(&self) -> &ServerSession {
        self.conn.session()
    }

    /// Feeds bytes as if they arrived in one read, and processes everything possible.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.conn.receive(bytes);
        loop {
            let decision = match self.conn.next_event() {
                None => break,
                Some(Event::Reply(r)) => {
                    self.replies.push(r);
                    continue;
                }
                Some(Event::Close(r)) => {
                    self.replies.push(r);
                    self.closed = true;
                    break;
                }
                Some(Event::StartTls { reply, discarded }) => {
                    self.replies.push(reply);
                    self.discarded_at_starttls += discarded;
                    self.tls_upgrades += 1;
                    self.conn.tls_established();
                    continue;
                }
                Some(Event::Content { data, raw }) => {
                    self.body.extend_from_slice(data);
                    self.raw.extend_from_slice(raw);
                    continue;
                }
                Some(Event::Discard) => {
                    self.body.clear();
                    self.discards += 1;
                    continue;
                }
                Some(Event::Decide(d)) => d,
            };
            let verdict = (self.policy)(self.conn.session(), &decision);
            if let Decision::Deliver(env) = &decision {
                let body = std::mem::take(&mut self.body);
                if matches!(&verdict, Verdict::Accept)
                    || matches!(&verdict, Verdict::Reply(r) if r.is_positive())
                {
                    self.delivered.push((env.clone(), body));
                }
            }
            self.decisions.push(decision);
            self.conn.decide(verdict);
        }
    }

    pub fn feed_str(&mut self, s: &str) {
        self.feed(s.as_bytes());
    }

    /// Sends one line with CRLF and returns the replies it produced.
    pub fn cmd(&mut self, line: &str) -> Vec<Reply> {
        self.feed(format!("{line}\r\n").as_bytes());
        self.take()
    }

    /// Sends one line and returns the code of its single reply.
    pub fn code(&mut self, line: &str) -> u16 {
        let replies = self.cmd(line);
        assert_eq!(replies.len(), 1, "{line:?} gave {replies:?}");
        replies[0].code
    }

    /// Sends one line and returns its single reply.
    pub fn reply(&mut self, line: &str) -> Reply {
        let replies = self.cmd(line);
        assert_eq!(replies.len(), 1, "{line:?} gave {replies:?}");
        replies.into_iter().next().unwrap()
    }

    pub fn take(&mut self) -> Vec<Reply> {
        std::mem::take(&mut self.replies)
    }

    pub fn codes(&mut self) -> Vec<u16> {
        self.take().iter().map(|r| r.code).collect()
    }

    /// Greets with EHLO and drops the greeting and the EHLO reply.
    pub fn ehlo(mut self) -> Harness {
        self.feed(b"EHLO client.example\r\n");
        let codes = self.codes();
        assert_eq!(codes, [220, 250]);
        self
    }

    /// EHLO then a successful AUTH PLAIN as `me@163.com`.
    pub fn authed(self) -> Harness {
        let mut h = self.ehlo();
        // base64("\0me@163.com\0right")
        assert_eq!(h.code("AUTH PLAIN AG1lQDE2My5jb20AcmlnaHQ="), 235);
        h
    }

    /// Recipients of the n-th delivered message, as strings.
    pub fn delivered_rcpts(&self, n: usize) -> Vec<String> {
        self.delivered[n]
            .0
            .rcpts
            .iter()
            .map(|(r, _)| r.to_string())
            .collect()
    }

    pub fn mail_decisions(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| matches!(d, Decision::Mail { .. }))
            .count()
    }
}

/// Asserts a reply's code and enhanced code.
#[track_caller]
pub fn assert_reply(r: &Reply, code: u16, enhanced: (u8, u16, u16)) {
    assert_eq!((r.code, r.enhanced), (code, Some(enhanced)), "got {r}");
}
