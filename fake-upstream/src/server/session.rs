//! One client session of the fake under the shared driver: events to replies through the
//! scripted faults, decisions to the persona's policy (`policy`).

use super::*;

/// What a decision turned into once faults were applied.
pub(super) enum Flow {
    Verdict(Verdict),
    Drop,
    Stall,
}

pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: ServerConnection,
    pub(super) vars: Vars,
    pub(super) peer: SocketAddr,
    pub(super) tls: bool,
    /// Came in on the implicit-TLS listener (the submission port).
    pub(super) implicit_tls: bool,
    pub(super) transcript: Live,
    pub(super) lines_seen: u64,
    /// The message being received (unstuffed), and its raw DATA bytes.
    pub(super) message: Vec<u8>,
    pub(super) raw: Vec<u8>,
    pub(super) messages_here: u32,
    /// DATA phases seen on this connection (names the raw files).
    pub(super) data_phases: u32,
    pub(super) close_after_write: bool,
    /// The last wait for the client (for the note when it runs out).
    pub(super) waiting: Duration,
    pub(super) rng: fastrand::Rng,
}

impl Session {
    pub(super) fn note(&mut self, line: &str) {
        self.transcript.push(line.to_string());
    }

    pub(super) fn greeting(&mut self) -> Reply {
        let action = self.shared.fault(Stage::Greeting, None);
        action.reply.unwrap_or_else(|| self.conn.greeting())
    }

    /// Queues a reply on the wire, noting its lines.
    pub(super) fn queue(&mut self, wire: &mut Wire<'_>, reply: &Reply) {
        self.note_reply(reply);
        wire.queue(reply);
    }

    pub(super) fn note_reply(&mut self, reply: &Reply) {
        if self.transcript.recording {
            for line in reply.to_string().split("\r\n") {
                self.transcript.push(format!("S: {line}"));
            }
        }
    }

    /// Logs the client's line if a new one was handled.
    pub(super) fn note_client_line(&mut self) {
        if self.transcript.recording && self.conn.lines_handled() != self.lines_seen {
            self.lines_seen = self.conn.lines_handled();
            let line = self.conn.transcript_line();
            self.transcript.push(format!("C: {line}"));
        }
    }

    /// Every event of the buffered input: replies through the faults, decisions by the
    /// persona's policy.
    pub(super) async fn events(&mut self, wire: &mut Wire<'_>) -> std::io::Result<Next> {
        loop {
            let decision = match self.conn.next_event() {
                None => break,
                Some(Event::Content { data, raw }) => {
                    // Disjoint fields: `data` and `raw` borrow the connection's buffer.
                    self.transcript.data(raw);
                    let rules = &self.shared.config.persona.rules;
                    if rules.keep_messages
                        || rules.inspects_content()
                        || self.shared.config.observer.is_some()
                        || self.shared.config.tally_load
                    {
                        self.message.extend_from_slice(data);
                    }
                    // Raw bytes are at most twice the decoded size (dot-stuffing), so past
                    // that bound the message is refused anyway: stop keeping them.
                    let raw_cap = 2 * self.shared.config.persona.limits.max_message_size + 65_536;
                    if rules.keep_messages && (self.raw.len() as u64) < raw_cap {
                        self.raw.extend_from_slice(raw);
                    }
                    continue;
                }
                Some(Event::Discard) => {
                    self.message.clear();
                    self.save_raw().await;
                    continue;
                }
                Some(Event::Reply(r)) => {
                    self.note_client_line();
                    let stage = match self.conn.session().last_verb() {
                        Some(Verb::Ehlo) => Some(Stage::Ehlo),
                        Some(Verb::Helo) => Some(Stage::Helo),
                        _ => None,
                    };
                    if !self.reply_with_faults(wire, r, stage).await? {
                        return Ok(Next::End);
                    }
                    continue;
                }
                Some(Event::Close(r)) => {
                    self.note_client_line();
                    let stage = (self.conn.session().last_verb() == Some(Verb::Quit))
                        .then_some(Stage::Quit);
                    self.reply_with_faults(wire, r, stage).await?;
                    return Ok(Next::Close);
                }
                Some(Event::StartTls { reply, discarded }) => {
                    self.note_client_line();
                    self.queue(wire, &reply);
                    if discarded > 0 {
                        self.note(&format!(
                            "* STARTTLS: {discarded} octets pipelined in plaintext discarded"
                        ));
                    }
                    return Ok(Next::StartTls);
                }
                Some(Event::Decide(d)) => d,
            };
            self.note_client_line();
            if matches!(decision, Decision::Deliver(_)) && self.transcript.recording {
                self.note(&format!("C: <message data: {} octets>", self.message.len()));
            }
            match self.decide_with_faults(decision).await {
                Flow::Verdict(v) => self.conn.decide(v),
                Flow::Drop => {
                    wire.flush().await?;
                    self.note("* fault: connection dropped");
                    return Ok(Next::End);
                }
                Flow::Stall => {
                    wire.flush().await?;
                    self.note("* fault: stall");
                    wire.stopped().await;
                    return Ok(Next::End);
                }
            }
        }
        Ok(if self.close_after_write {
            Next::Close
        } else {
            Next::Continue
        })
    }

    /// Queues a reply through the faults of `stage`. Returns false when the connection must
    /// end.
    pub(super) async fn reply_with_faults(
        &mut self,
        wire: &mut Wire<'_>,
        reply: Reply,
        stage: Option<Stage>,
    ) -> std::io::Result<bool> {
        let action = match stage {
            Some(s) => self.shared.fault(s, None),
            None => Action::default(),
        };
        if !action.is_none() {
            wire.flush().await?;
        }
        if let Some(line) = apply_before(&action, &self.transcript, wire.stopped()).await {
            self.note(&line);
            return Ok(false);
        }
        self.queue(wire, &action.reply.unwrap_or(reply));
        if action.drop == Some(DropWhen::After) {
            wire.flush().await?;
            self.note("* fault: connection dropped after the reply");
            return Ok(false);
        }
        Ok(true)
    }

    pub(super) async fn decide_with_faults(&mut self, d: Decision) -> Flow {
        let (stage, address) = match &d {
            Decision::Authenticate(_) => (Stage::Auth, None),
            Decision::Mail { from, .. } => (Stage::Mail, from.mailbox().map(|m| m.to_string())),
            Decision::Rcpt { to, .. } => (Stage::Rcpt, to.mailbox().map(|m| m.to_string())),
            Decision::BeginData => (Stage::Data, None),
            Decision::Deliver(_) => (Stage::EndOfData, None),
        };
        let action = self.shared.fault(stage, address.as_deref());
        if action.delay_ms > 0 {
            self.note(&format!("* fault: delay {} ms", action.delay_ms));
            tokio::time::sleep(Duration::from_millis(action.delay_ms)).await;
        }
        if action.drop == Some(DropWhen::Before) {
            return Flow::Drop;
        }
        if action.stall {
            return Flow::Stall;
        }
        if action.drop == Some(DropWhen::After) {
            self.close_after_write = true;
        }
        if let Some(reply) = action.reply {
            self.note("* fault: reply replaced");
            if matches!(d, Decision::Deliver(_)) {
                self.message.clear();
                self.save_raw().await;
            }
            return Flow::Verdict(Verdict::Reply(reply));
        }
        Flow::Verdict(self.policy(d).await)
    }

    /// Writes the raw bytes of the DATA phase that just ended (delivered or not) as
    /// `raw/<connection>-<n>.data`, when the persona keeps messages.
    pub(super) async fn save_raw(&mut self) -> Option<PathBuf> {
        self.transcript.end_data();
        let raw = std::mem::take(&mut self.raw);
        if raw.is_empty() || !self.shared.config.persona.rules.keep_messages {
            return None;
        }
        self.data_phases += 1;
        let dir = self.shared.config.data_dir.join("raw");
        let stem = format!("{:06}-{}", self.transcript.id, self.data_phases);
        let path = dir.join(format!("{stem}.data"));
        match smtp_net::files::write_new_async(dir, stem, "data", raw).await {
            Ok(path) => Some(path),
            Err(e) => {
                self.note(&format!(
                    "* cannot keep raw DATA in {}: {e}",
                    path.display()
                ));
                None
            }
        }
    }
}

/// The fake's session under the shared driver ([`smtp_net::server::serve`]): the persona's
/// idle timeout (twice as long inside DATA), its faults on the greeting and on STARTTLS.
impl smtp_net::server::Session for Session {
    fn conn(&mut self) -> &mut ServerConnection {
        &mut self.conn
    }

    async fn greet(&mut self, wire: &mut Wire<'_>) -> std::io::Result<Next> {
        let greeting = self.greeting();
        self.queue(wire, &greeting);
        // Written at once; a client gone before it ends the session without a word.
        Ok(match wire.flush().await {
            Ok(()) => Next::Continue,
            Err(_) => Next::End,
        })
    }

    async fn process(&mut self, wire: &mut Wire<'_>) -> std::io::Result<Next> {
        self.events(wire).await
    }

    async fn start_tls(&mut self, mut io: Box<dyn Io>) -> Option<Box<dyn Io>> {
        let action = self.shared.fault(Stage::Starttls, None);
        if action.tls_fail {
            self.note("* fault: TLS handshake broken");
            let _ = write_all(&mut io, b"\x15\x03\x03\x00\x02\x02\x28").await;
            return None;
        }
        match accept_tls(&self.shared, io).await {
            Ok(stream) => {
                self.note("* TLS handshake done (STARTTLS)");
                self.tls = true;
                self.conn.tls_established();
                Some(Box::new(stream))
            }
            Err(e) => {
                self.note(&format!("* TLS handshake failed: {e}"));
                None
            }
        }
    }

    fn wait(&mut self) -> Duration {
        let idle = Duration::from_secs(self.shared.config.persona.limits.idle_timeout_secs.max(1));
        self.waiting = if self.conn.in_data() { idle * 2 } else { idle };
        self.waiting
    }

    fn timed_out(&mut self) -> Reply {
        let reply = self.conn.timeout_reply();
        self.note(&format!("* idle for {}s", self.waiting.as_secs()));
        self.note_reply(&reply);
        reply
    }

    fn client_closed(&mut self) {
        self.note("* client closed the connection");
    }

    fn shutting_down(&mut self) -> Reply {
        let reply = self.conn.shutdown_reply();
        self.note_reply(&reply);
        reply
    }
}
