//! An in-memory driver for the server session: it frames bytes as a socket driver would,
//! answers decisions with a policy closure, and records replies and deliveries.

#![allow(dead_code)]

use smtp_wire::{
    BareLineEnding, DataDecoder, DataProgress, Decision, Decoded, Envelope, Input, LineDecoder,
    LineEndings, Reply, ServerConfig, ServerSession, Step, Transport, Verdict,
};

pub type Policy = Box<dyn FnMut(&ServerSession, &Decision) -> Verdict>;

pub struct Harness {
    pub session: ServerSession,
    buf: Vec<u8>,
    line: LineDecoder,
    data: Option<DataDecoder>,
    pub bare: BareLineEnding,
    body: Vec<u8>,
    chunk_left: u64,
    replies: Vec<Reply>,
    /// Every decision asked, in order.
    pub decisions: Vec<Decision>,
    pub delivered: Vec<(Envelope, Vec<u8>)>,
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
        let session = ServerSession::new(config, transport);
        let greeting = session.greeting();
        Harness {
            session,
            buf: Vec::new(),
            line: LineDecoder::new(512, endings),
            data: None,
            bare: BareLineEnding::Reject,
            body: Vec::new(),
            chunk_left: 0,
            replies: vec![greeting],
            decisions: Vec::new(),
            delivered: Vec::new(),
            closed: false,
            tls_upgrades: 0,
            discarded_at_starttls: 0,
            policy,
        }
    }

    pub fn open() -> Harness {
        Harness::new(open_config())
    }

    /// Feeds bytes as if they arrived in one read, and processes everything possible.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while !self.closed {
            match self.session.input() {
                Input::Line { max } => {
                    self.line.set_max(max);
                    match self.line.decode(&self.buf) {
                        Decoded::Line { line, consumed } => {
                            let line = line.to_vec();
                            self.buf.drain(..consumed);
                            let step = self.session.handle_line(&line);
                            self.step(step);
                        }
                        Decoded::NeedMore { consumed } => {
                            self.buf.drain(..consumed);
                            break;
                        }
                        Decoded::Error { error, consumed } => {
                            self.buf.drain(..consumed);
                            let step = self.session.handle_line_error(error);
                            self.step(step);
                        }
                    }
                }
                Input::Data { limit } => {
                    let bare = self.bare;
                    let dec = self
                        .data
                        .get_or_insert_with(|| DataDecoder::new(limit, bare));
                    match dec.decode(&self.buf, &mut self.body) {
                        DataProgress::NeedMore => {
                            self.buf.clear();
                            break;
                        }
                        DataProgress::Done { consumed } => {
                            self.buf.drain(..consumed);
                            let outcome = dec.outcome();
                            self.data = None;
                            let step = self.session.handle_data_end(outcome);
                            if !matches!(step, Step::Decide(_)) {
                                self.body.clear();
                            }
                            self.step(step);
                        }
                    }
                }
                Input::Chunk { .. } => {
                    let take = (self.chunk_left as usize).min(self.buf.len());
                    self.body.extend(self.buf.drain(..take));
                    self.chunk_left -= take as u64;
                    if self.chunk_left > 0 {
                        break;
                    }
                    let step = self.session.handle_chunk_end();
                    if !matches!(step, Step::Decide(_) | Step::Reply(Reply { code: 250, .. })) {
                        self.body.clear();
                    }
                    self.step(step);
                }
                Input::Paused => panic!("decisions are answered synchronously"),
                Input::Closed => break,
            }
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

    fn step(&mut self, step: Step) {
        match step {
            Step::Reply(r) => self.replies.push(r),
            Step::Close(r) => {
                self.replies.push(r);
                self.closed = true;
            }
            Step::StartTls(r) => {
                self.replies.push(r);
                self.discarded_at_starttls += self.buf.len();
                self.buf.clear();
                self.session.tls_established();
                self.tls_upgrades += 1;
            }
            Step::Decide(d) => {
                let verdict = (self.policy)(&self.session, &d);
                if let Decision::Deliver(env) = &d {
                    if matches!(&verdict, Verdict::Accept)
                        || matches!(&verdict, Verdict::Reply(r) if r.is_positive())
                    {
                        self.delivered
                            .push((env.clone(), std::mem::take(&mut self.body)));
                    } else {
                        self.body.clear();
                    }
                }
                self.decisions.push(d);
                let next = self.session.decide(verdict);
                self.step(next);
            }
            Step::ReceiveChunk { size, .. } => self.chunk_left = size,
        }
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
