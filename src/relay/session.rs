//! A client session: its state, its loop (reads paced and bounded, replies written, STARTTLS,
//! shutdown), the server connection's events handed to the decisions (`auth`, `envelope`,
//! `message`), and its two-hop transcript, capped.

use super::*;

pub(super) struct Session {
    /// Counts this session against its client's address while the client's connection is
    /// open: given back when the relay says goodbye or the connection ends, not after the
    /// cleanup behind it (upstream QUITs, the spool write), so that a client that reconnects
    /// at once is not refused for a connection it no longer has.
    pub(super) ip_slot: Option<IpSlot>,
    pub(super) id: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) conn: ServerConnection,
    pub(super) peer: SocketAddr,
    pub(super) tls: bool,
    /// The client's credentials (pass-through mode), to open upstream sessions.
    pub(super) credentials: Option<Box<Credentials>>,
    /// One per route, index 0 the default route (`RelayConfig::upstream`).
    pub(super) legs: Legs,
    /// MAIL FROM of the transaction in progress, to open further routes at their first RCPT.
    pub(super) transaction: Option<Box<(ReversePath, MailParams)>>,
    /// RCPT replies received ahead of the client's turn (its pipelined group forwarded as a
    /// group), in the client's order: the recipient, and its route and reply when it was sent.
    pub(super) prefetched: std::collections::VecDeque<(ForwardPath, Option<(RouteId, Reply)>)>,
    /// An upstream with accepted recipients failed in this transaction: it can only end with
    /// this 4xx (nothing is delivered anywhere, the client tries again).
    pub(super) poisoned: Option<Reply>,
    /// The default route's kept upstream session failed before it answered MAIL (see
    /// [`Session::mail`]).
    pub(super) kept_session_died: bool,
    pub(super) spool: Option<Box<Spool>>,
    pub(super) started: Instant,
    /// The client's pace: how long each wait for it may be.
    pub(super) pace: crate::pace::Pace,
    /// The last wait and the limit it was set by (for the reply when it runs out).
    pub(super) waiting: (Duration, crate::pace::Limit),
    /// Two-hop transcript lines, when recording.
    pub(super) transcript: Option<Vec<String>>,
    pub(super) lines_seen: u64,
    /// Bounces being sent; the session waits for them before it ends.
    pub(super) dsn_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The last message's spool write, off the reply's path: awaited before the next one,
    /// before the reply to QUIT, and when the session ends (at most one in flight).
    pub(super) spool_write: Option<tokio::task::JoinHandle<()>>,
}

/// The most lines a session's transcript keeps (both hops together); a session that goes on
/// beyond it (a client holding a connection open with NOOPs, thousands of messages) keeps its
/// beginning and a line that says the rest was not kept.
pub(super) const MAX_TRANSCRIPT_LINES: usize = 20_000;

/// Appends `line` while `t` has fewer than `max` lines; at `max`, one last line saying so.
pub(super) fn push_bounded(t: &mut Vec<String>, line: String, max: usize) {
    match t.len().cmp(&max) {
        std::cmp::Ordering::Less => t.push(line),
        std::cmp::Ordering::Equal => t.push(format!(
            "* transcript stops here: more than {max} lines (the session went on)"
        )),
        std::cmp::Ordering::Greater => {}
    }
}

impl Session {
    /// A new session for the client at `peer`, counted in `slot`.
    pub(super) fn new(
        shared: Arc<Shared>,
        slot: IpSlot,
        peer: SocketAddr,
        kind: Transport,
    ) -> Session {
        let cfg = &shared.config;
        let started = Instant::now();
        Session {
            ip_slot: Some(slot),
            id: shared.next_id.fetch_add(1, Ordering::Relaxed),
            shared: shared.clone(),
            conn: ServerConnection::new(
                server_config(&shared, peer),
                kind,
                LineEndings::CrlfOnly,
                cfg.bare_line_endings,
            ),
            peer,
            tls: kind == Transport::Tls,
            credentials: None,
            legs: Legs::new(cfg),
            transaction: None,
            prefetched: Default::default(),
            poisoned: None,
            kept_session_died: false,
            spool: None,
            started,
            pace: crate::pace::Pace::new(shared.pace.clone(), started),
            waiting: (cfg.command_timeout, crate::pace::Limit::Idle),
            transcript: cfg.transcripts.as_ref().map(|_| Vec::new()),
            lines_seen: 0,
            dsn_tasks: Vec::new(),
            spool_write: None,
        }
    }

    /// After the connection: what is left of a transaction aborted, the spool written, the
    /// upstreams said goodbye to, the bounces waited for, the transcript kept.
    pub(super) async fn finish(mut self, result: std::io::Result<()>) {
        // The client's connection is closed (the driver owned it): its address may connect
        // again.
        self.ip_slot = None;
        if let Err(e) = &result {
            tracing::info!(session = self.id, error = %e, "client connection error");
        }
        Box::pin(self.abort_transaction()).await;
        self.spooled().await;
        Box::pin(self.release_upstreams()).await;
        // Bounces in flight are bounded by the upstream timeouts; the session waits for them so
        // that a shutdown does not cut them off.
        for task in self.dsn_tasks.drain(..) {
            let _ = task.await;
        }
        self.shared
            .metrics
            .sessions_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            session = self.id,
            seconds = self.started.elapsed().as_secs_f64(),
            "session closed"
        );
        self.note("* closed".into());
        if let (Some(lines), Some(dir)) = (self.transcript.take(), &self.shared.config.transcripts)
        {
            let text = lines.join("\n") + "\n";
            let written = smtp_net::files::write_new_async(
                dir.clone(),
                format!("{:06}", self.id),
                "log",
                text.into_bytes(),
            )
            .await;
            if let Err(e) = written {
                tracing::warn!(session = self.id, dir = %dir.display(), error = %e, "transcript not written");
            }
            let mut kept = self
                .shared
                .transcripts
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if kept.len() >= 1000 {
                kept.pop_front();
            }
            kept.push_back((self.id, lines));
        }
    }

    /// At the end of the session, each upstream session is kept for the next client when its
    /// route shares them (RSET first if a transaction was left open; closed if that fails), or
    /// said goodbye to.
    async fn release_upstreams(&mut self) {
        let shared = self.shared.clone();
        for leg in self.legs.iter_mut() {
            let pool = shared
                .pool
                .as_ref()
                .filter(|_| shared.config.shares_sessions(leg.route));
            if pool.is_some() {
                leg.reset().await;
            }
            let Some(up) = leg.take_upstream() else {
                continue;
            };
            let left = match pool {
                Some(pool) => {
                    let left = pool.put(leg.route.slot(), up, tokio::time::Instant::now());
                    if left.is_none()
                        && let Some(cap) = shared.cap(leg.route)
                    {
                        // A session waiting under the cap may take it.
                        cap.kept();
                    }
                    left
                }
                None => Some(up),
            };
            if let Some(up) = left {
                up.quit().await;
            }
        }
    }

    pub(super) fn note(&mut self, line: String) {
        if let Some(t) = self.transcript.as_mut() {
            push_bounded(t, line, MAX_TRANSCRIPT_LINES);
        }
    }

    /// The client's line, if a new one was handled (redacted by the connection).
    pub(super) fn note_client_line(&mut self) {
        if self.transcript.is_some() && self.conn.lines_handled() != self.lines_seen {
            self.lines_seen = self.conn.lines_handled();
            let line = format!("C: {}", self.conn.transcript_line());
            self.note(line);
        }
    }

    pub(super) fn note_reply(&mut self, reply: &Reply) {
        if self.transcript.is_some() {
            for line in reply.to_string().split("\r\n") {
                self.note(format!("S: {line}"));
            }
        }
    }

    /// The upstreams' lines since the last call, indented and marked `U` (the default
    /// route) or `U[label]` (another route).
    pub(super) fn note_upstream(&mut self) {
        if self.transcript.is_none() {
            return;
        }
        for r in self.shared.config.route_ids() {
            let Some(up) = self.legs[r].upstream_mut() else {
                continue;
            };
            let lines = up.take_transcript();
            let mark = match r {
                RouteId::DEFAULT => "U".to_string(),
                r => format!("U[{}]", self.shared.config.route_label(r)),
            };
            for line in lines {
                let marked = match line.split_once(": ") {
                    Some(("C", rest)) => format!("    {mark}> {rest}"),
                    Some(("S", rest)) => format!("    {mark}< {rest}"),
                    _ if r.is_default() => format!("    {line}"),
                    _ => format!("    {mark} {line}"),
                };
                self.note(marked);
            }
        }
    }

    /// The TLS handshake with the client (`how`: implicit TLS or STARTTLS); a failure is
    /// logged with its cause and hint and marked in the transcript, and ends the session.
    pub(super) async fn accept_tls(
        &mut self,
        io: impl Io + 'static,
        how: &str,
    ) -> Option<Box<dyn Io>> {
        let cfg = &self.shared.config;
        let tls = cfg.tls.clone()?;
        let trust = cfg.client_trust_file.as_deref();
        match crate::client_tls::accept(tls, io, trust, cfg.tls_handshake_timeout).await {
            Ok(stream) => {
                self.note(format!("* TLS with the client ({how}): handshake done"));
                Some(stream)
            }
            Err(f) => {
                tracing::warn!(
                    session = self.id,
                    peer = %self.peer,
                    how,
                    cause = %f.cause,
                    hint = %f.hint,
                    "TLS handshake with the client failed"
                );
                self.note(format!(
                    "* TLS with the client ({how}): handshake failed: {}",
                    f.cause
                ));
                None
            }
        }
    }

    /// Handles every event the buffered input gives, queueing replies on `wire`.
    pub(super) async fn events(&mut self, wire: &mut Wire<'_>) -> Next {
        loop {
            let decision = match self.conn.next_event() {
                None => return Next::Continue,
                Some(Event::Reply(r)) => {
                    self.note_client_line();
                    self.note_reply(&r);
                    wire.queue(&r);
                    continue;
                }
                Some(Event::Close(r)) => {
                    self.note_client_line();
                    self.note_reply(&r);
                    // A client that saw the 221 finds its messages in the spool.
                    self.spooled().await;
                    wire.queue(&r);
                    // Its address may connect again as soon as it has the reply.
                    self.ip_slot = None;
                    return Next::Close;
                }
                Some(Event::StartTls { reply, .. }) => {
                    self.note_client_line();
                    self.note_reply(&reply);
                    wire.queue(&reply);
                    return Next::StartTls;
                }
                Some(Event::Content { data, .. }) => {
                    // Disjoint fields: `data` borrows the connection's buffer, no copy.
                    Box::pin(stream_content(
                        &mut self.spool,
                        &mut self.legs,
                        &mut self.poisoned,
                        self.id,
                        data,
                    ))
                    .await;
                    continue;
                }
                Some(Event::Discard) => {
                    self.note("C: <message data: not relayed>".into());
                    Box::pin(self.abort_transaction()).await;
                    continue;
                }
                Some(Event::Decide(d)) => d,
            };
            self.note_client_line();
            if let Decision::Deliver(env) = &decision {
                let size = env.size;
                self.note(format!("C: <message data: {size} octets>"));
            }
            let verdict = self.decide(decision).await;
            self.note_upstream();
            self.conn.decide(verdict);
        }
    }

    /// Each decision's future is boxed: they hold upstream connects, TLS handshakes and
    /// fan-outs, and inline they would make every session's future (idle ones included)
    /// that large. Boxed, an idle session is a few KB.
    pub(super) async fn decide(&mut self, d: Decision) -> Verdict {
        match d {
            Decision::Authenticate(c) => Box::pin(self.authenticate(c)).await,
            Decision::Mail { from, params } => Box::pin(self.mail(from, params)).await,
            Decision::Rcpt { to, params } => Box::pin(self.rcpt(to, params)).await,
            Decision::BeginData => Box::pin(self.begin_data()).await,
            Decision::Deliver(env) => Box::pin(self.deliver(env)).await,
        }
    }
}

/// The relay's session under the shared driver ([`smtp_net::server::serve`]): its pace decides
/// each wait, a message under way (DATA, or BDAT chunks) finishes before a shutdown takes the
/// session.
impl smtp_net::server::Session for Session {
    fn conn(&mut self) -> &mut ServerConnection {
        &mut self.conn
    }

    async fn greet(&mut self, wire: &mut Wire<'_>) -> std::io::Result<Next> {
        let greeting = self.conn.greeting();
        self.note_reply(&greeting);
        wire.queue(&greeting);
        Ok(Next::Continue)
    }

    async fn process(&mut self, wire: &mut Wire<'_>) -> std::io::Result<Next> {
        let lines_before = self.conn.lines_handled();
        let next = self.events(wire).await;
        let in_message = self.conn.in_message();
        self.pace.processed(
            Instant::now(),
            in_message,
            self.conn.lines_handled() != lines_before,
            !in_message && self.conn.buffered() > 0,
        );
        Ok(next)
    }

    async fn start_tls(&mut self, io: Box<dyn Io>) -> Option<Box<dyn Io>> {
        let stream = Box::pin(self.accept_tls(io, "STARTTLS")).await?;
        self.tls = true;
        self.conn.tls_established();
        Some(stream)
    }

    fn wait(&mut self) -> Duration {
        let (wait, limit) = self.pace.wait(Instant::now(), self.conn.in_message());
        self.waiting = (wait, limit);
        wait
    }

    fn timed_out(&mut self) -> Reply {
        let (waited, limit) = self.waiting;
        let reply = match limit {
            crate::pace::Limit::Line => self.conn.reply(ReplyKind::LineTooSlow),
            crate::pace::Limit::DataRate => self.conn.reply(ReplyKind::DataTooSlow),
            crate::pace::Limit::Idle | crate::pace::Limit::Session => self.conn.timeout_reply(),
        };
        tracing::info!(
            session = self.id,
            peer = %self.peer,
            limit = limit.name(),
            waited = waited.as_secs_f64(),
            "session ended: client too slow"
        );
        self.note_reply(&reply);
        reply
    }

    fn received(&mut self, n: usize) {
        self.pace
            .received(Instant::now(), n, self.conn.in_message());
    }

    fn stops_on_shutdown(&mut self) -> bool {
        !self.conn.in_message()
    }
}
