//! A client session: the server connection's decisions answered by the relay itself or by
//! the upstreams, the message streamed, spooled, queued or bounced.

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
    pub(super) credentials: Option<Credentials>,
    /// One per route, index 0 the default route (`RelayConfig::upstream`).
    pub(super) legs: Legs,
    /// MAIL FROM of the transaction in progress, to open further routes at their first RCPT.
    pub(super) transaction: Option<(ReversePath, MailParams)>,
    /// RCPT replies received ahead of the client's turn (its pipelined group forwarded as a
    /// group), in the client's order: the recipient, and its route and reply when it was sent.
    pub(super) prefetched: std::collections::VecDeque<(ForwardPath, Option<(RouteId, Reply)>)>,
    /// An upstream with accepted recipients failed in this transaction: it can only end with
    /// this 4xx (nothing is delivered anywhere, the client tries again).
    pub(super) poisoned: Option<Reply>,
    pub(super) spool: Option<Spool>,
    pub(super) started: Instant,
    /// Two-hop transcript lines, when recording.
    pub(super) transcript: Option<Vec<String>>,
    pub(super) lines_seen: u64,
    /// Bounces being sent; the session waits for them before it ends.
    pub(super) dsn_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Store and forward: the message's content on its way to the queue (with its trace
    /// header), when a route of the transaction queues.
    pub(super) queue_file: Option<QueueFile>,
    /// The last message's spool write, off the reply's path: awaited before the next one,
    /// before the reply to QUIT, and when the session ends (at most one in flight).
    pub(super) spool_write: Option<tokio::task::JoinHandle<()>>,
}

pub(super) enum Next {
    Continue,
    Close,
    StartTls,
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
            let Some(up) = self.legs[r].up.as_mut() else {
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
        match crate::client_tls::accept(tls, io, cfg.client_trust_file.as_deref()).await {
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

    pub(super) async fn run(
        &mut self,
        mut io: Box<dyn Io>,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let mut out = Vec::new();
        let greeting = self.conn.greeting();
        self.note_reply(&greeting);
        greeting.encode(&mut out);
        // Small while commands come (an idle session costs little: 10,000 of them are held in
        // a few tens of MB), large inside DATA (fewer reads, fewer wake-ups).
        let mut buf: Vec<u8> = Vec::with_capacity(READ_SMALL);
        let cfg = &self.shared.config;
        let mut pace = crate::pace::Pace::new(
            crate::pace::PaceConfig {
                command_timeout: cfg.command_timeout,
                data_timeout: cfg.data_timeout,
                line_timeout: cfg.line_timeout,
                min_data_rate: cfg.min_data_rate,
                session_deadline: cfg.session_deadline,
            },
            self.started,
        );
        loop {
            let lines_before = self.conn.lines_handled();
            let next = self.process(&mut out).await;
            let in_data = self.conn.in_data();
            pace.processed(
                Instant::now(),
                in_data,
                self.conn.lines_handled() != lines_before,
                !in_data && self.conn.buffered() > 0,
            );
            match next {
                Next::Continue => {}
                Next::Close => {
                    self.ip_slot = None;
                    write(&mut io, &out).await?;
                    let _ = io.shutdown().await;
                    return Ok(());
                }
                Next::StartTls => {
                    write(&mut io, &out).await?;
                    out.clear();
                    let Some(stream) = Box::pin(self.accept_tls(io, "STARTTLS")).await else {
                        return Ok(());
                    };
                    io = stream;
                    self.tls = true;
                    self.conn.tls_established();
                    continue;
                }
            }
            write(&mut io, &out).await?;
            out.clear();
            let (wait, limit) = pace.wait(Instant::now(), in_data);
            if in_data {
                buf.reserve(READ_LARGE);
            } else if buf.capacity() > READ_SMALL {
                buf = Vec::with_capacity(READ_SMALL);
            }
            tokio::select! {
                read = tokio::time::timeout(wait, io.read_buf(&mut buf)) => match read {
                    Err(_) => {
                        let reply = match limit {
                            crate::pace::Limit::Line => self.conn.reply(ReplyKind::LineTooSlow),
                            crate::pace::Limit::DataRate => self.conn.reply(ReplyKind::DataTooSlow),
                            crate::pace::Limit::Idle | crate::pace::Limit::Session => {
                                self.conn.timeout_reply()
                            }
                        };
                        tracing::info!(
                            session = self.id,
                            peer = %self.peer,
                            limit = limit.name(),
                            waited = wait.as_secs_f64(),
                            "session ended: client too slow"
                        );
                        self.note_reply(&reply);
                        reply.encode(&mut out);
                        write(&mut io, &out).await?;
                        return Ok(());
                    }
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(n)) => {
                        pace.received(Instant::now(), n, in_data);
                        self.conn.receive(&buf);
                        buf.clear();
                    }
                    Ok(Err(e)) => return Err(e),
                },
                _ = smtp_net::stopped(&mut shutdown), if !self.conn.in_data() => {
                    self.conn.shutdown_reply().encode(&mut out);
                    write(&mut io, &out).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Handles every event the buffered input gives, writing replies to `out`.
    pub(super) async fn process(&mut self, out: &mut Vec<u8>) -> Next {
        loop {
            let decision = match self.conn.next_event() {
                None => return Next::Continue,
                Some(Event::Reply(r)) => {
                    self.note_client_line();
                    self.note_reply(&r);
                    r.encode(out);
                    continue;
                }
                Some(Event::Close(r)) => {
                    self.note_client_line();
                    self.note_reply(&r);
                    // A client that saw the 221 finds its messages in the spool.
                    self.spooled().await;
                    r.encode(out);
                    return Next::Close;
                }
                Some(Event::StartTls { reply, .. }) => {
                    self.note_client_line();
                    self.note_reply(&reply);
                    reply.encode(out);
                    return Next::StartTls;
                }
                Some(Event::Content { data, .. }) => {
                    // Disjoint fields: `data` borrows the connection's buffer, no copy.
                    Box::pin(stream_content(
                        &mut self.spool,
                        &mut self.queue_file,
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

    pub(super) async fn authenticate(&mut self, c: Credentials) -> Verdict {
        let verdict = match &self.shared.config.auth {
            AuthMode::Users(users) => {
                let (users, user, secret) = (users.clone(), c.username.clone(), c.secret.clone());
                let ok = tokio::task::spawn_blocking(move || users.verify(&user, &secret))
                    .await
                    .unwrap_or(false);
                if ok {
                    Verdict::Accept
                } else {
                    Verdict::Reply(Reply::new(
                        535,
                        (5, 7, 8),
                        "Authentication credentials invalid",
                    ))
                }
            }
            _ => self.authenticate_upstream(c.clone()).await,
        };
        let code = match &verdict {
            Verdict::Accept => 235,
            Verdict::Reply(r) => r.code,
        };
        tracing::info!(session = self.id, user = %c.username, reply = code, "auth");
        if code / 100 == 5 {
            tokio::time::sleep(self.shared.config.auth_failure_delay).await;
        }
        verdict
    }

    pub(super) async fn authenticate_upstream(&mut self, c: Credentials) -> Verdict {
        use crate::auth_guard::{Admission, Refusal};
        let mut config = self.shared.config.upstream.clone();
        let shared = self.shared.clone();
        let guard = &shared.auth_guard;
        let (ip, upstream) = (self.peer.ip(), config.name.clone());
        let (admission, wait) = guard.admit(Instant::now(), ip, &upstream, &c.username, &c.secret);
        if let Admission::Refuse(refusal) = admission {
            if refusal == Refusal::KnownBad {
                guard.failed(Instant::now(), ip, &upstream, &c.username, &c.secret, false);
            }
            self.shared.metrics.auth_refused(refusal.name());
            tracing::info!(
                session = self.id,
                peer = %self.peer,
                user = %c.username,
                reason = refusal.name(),
                "auth refused without asking the upstream"
            );
            let reply = refusal.reply(&upstream, wait);
            self.note(format!("    * not asked upstream: {}", refusal.name()));
            return Verdict::Reply(reply);
        }
        config.credentials = Some(c.clone());
        match Upstream::connect(&config).await {
            Err(e) if self.refuses_the_relay(&e) => {
                self.note(format!("    * upstream failure: {e}"));
                let reply = e.reply().cloned().unwrap_or_else(|| e.client_reply());
                guard.relay_refused(Instant::now(), &upstream, reply.clone());
                let pause = guard.limits().relay_refused_pause;
                Verdict::Reply(Refusal::RelayRefused(reply).reply(&upstream, pause))
            }
            Err(UpstreamError::AuthRejected { reply, .. })
                if reply.severity() == smtp_wire::Severity::Permanent =>
            {
                self.note(format!("    * upstream refused the credentials: {reply}"));
                guard.failed(Instant::now(), ip, &upstream, &c.username, &c.secret, true);
                Verdict::Reply(reply)
            }
            Ok(up) => {
                guard.succeeded(ip);
                self.shared.learn(RouteId::DEFAULT, up.capabilities());
                if let Some(old) = self.legs[RouteId::DEFAULT].up.replace(up) {
                    old.quit().await;
                }
                self.credentials = Some(c);
                // The upstream's own success words (163: `235 Authentication successful`).
                match self.legs[RouteId::DEFAULT]
                    .up
                    .as_ref()
                    .and_then(Upstream::auth_reply)
                {
                    Some(r) if r.code == 235 => Verdict::Reply(r.clone()),
                    _ => Verdict::Accept,
                }
            }
            // The upstream's own verdict, verbatim: the credentials are the client's.
            Err(UpstreamError::AuthRejected { reply, .. }) => {
                self.note(format!("    * upstream refused the credentials: {reply}"));
                Verdict::Reply(reply)
            }
            Err(e) => {
                self.note(format!("    * upstream failure: {e}"));
                Verdict::Reply(e.client_reply())
            }
        }
    }

    /// Whether `e` is an upstream refusing the relay's own address; if so it is logged as an
    /// error naming the upstream and counted in the metrics.
    pub(super) fn refuses_the_relay(&self, e: &UpstreamError) -> bool {
        let refused = match e {
            UpstreamError::Refused {
                phase: crate::upstream::Phase::Greeting,
                reply,
                ..
            } => crate::auth_guard::refuses_the_relay(reply, true),
            UpstreamError::AuthRejected { reply, .. } | UpstreamError::Refused { reply, .. } => {
                crate::auth_guard::refuses_the_relay(reply, false)
            }
            _ => false,
        };
        if refused {
            crate::metrics::Metrics::inc(&self.shared.metrics.upstream_refused_relay);
            tracing::error!(
                session = self.id,
                upstream = e.upstream(),
                error = %e,
                "the upstream refuses the relay itself: no client can send through it until it lifts this"
            );
        }
        refused
    }

    /// The upstream session of route `r`: the one already open, or a new one (with the
    /// client's credentials or the route's own, see [`uses_client_credentials`]).
    pub(super) async fn open_leg(&mut self, r: RouteId) -> Result<(), UpstreamError> {
        if self.legs[r].up.is_some() {
            return Ok(());
        }
        let cfg = &self.shared.config;
        let mut config = cfg.route_upstream(r).clone();
        if cfg.uses_client_credentials(r) {
            config.credentials = self.credentials.clone();
        }
        match Upstream::connect(&config).await {
            Ok(up) => {
                self.shared.learn(r, up.capabilities());
                self.legs[r].up = Some(up);
                Ok(())
            }
            Err(e) => {
                if self.refuses_the_relay(&e) {
                    // Logged and counted there.
                } else if let UpstreamError::AuthRejected { reply, .. } = &e
                    && !cfg.uses_client_credentials(r)
                {
                    tracing::error!(
                        session = self.id,
                        upstream = %e.upstream(),
                        reply = %reply,
                        "the upstream refused the relay's own credentials: check the route's username and its password"
                    );
                }
                tracing::warn!(session = self.id, upstream = %e.upstream(), error = %e, "upstream failure");
                self.note(format!("    * upstream failure: {e}"));
                // Not tried again in this transaction: its other recipients get the same.
                self.legs[r].failure = Some(e.client_reply());
                Err(e)
            }
        }
    }

    /// Whether route `r` stores and forwards.
    pub(super) fn queued(&self, r: RouteId) -> bool {
        self.shared.config.route_queued(r)
    }

    /// MAIL: a new transaction. Upstreams still inside an earlier one (the client said RSET,
    /// or DATA was refused) are reset first; MAIL goes to the default route at once, whose
    /// verdict (the sender rules of the upstream the client authenticated with) is the
    /// answer. Other routes get MAIL at their first recipient.
    pub(super) async fn mail(&mut self, from: ReversePath, params: MailParams) -> Verdict {
        self.reset_legs().await;
        if self.queued(RouteId::DEFAULT) {
            // Store and forward: nobody upstream to ask now; the sender is checked when the
            // message is delivered (a refusal then is a bounce).
            self.transaction = Some((from, params));
            return Verdict::Reply(Reply::new(250, (2, 1, 0), "Sender OK"));
        }
        if let Err(e) = self.open_leg(RouteId::DEFAULT).await {
            return Verdict::Reply(e.client_reply());
        }
        let pipelining = self.legs[RouteId::DEFAULT]
            .up
            .as_ref()
            .is_some_and(Upstream::can_pipeline);
        if pipelining {
            let group = self.pipelined_rcpts();
            if !group.is_empty() {
                // MAIL and the RCPTs behind it, forwarded as the client sent them: a group.
                self.transaction = Some((from, params));
                let mail = self.prefetch(group, true).await;
                let reply = match mail {
                    Some(reply) if reply.is_positive() => return Verdict::Reply(reply),
                    Some(reply) => reply,
                    None => Reply::new(451, (4, 3, 0), "no reply to MAIL upstream"),
                };
                self.transaction = None;
                self.prefetched.clear();
                return Verdict::Reply(reply);
            }
        }
        let up = self.legs[RouteId::DEFAULT].up.as_mut().expect("opened");
        match up.mail(&from, &params).await {
            Ok(reply) => {
                if reply.is_positive() {
                    self.legs[RouteId::DEFAULT].mail_sent = true;
                    self.transaction = Some((from, params));
                }
                Verdict::Reply(reply)
            }
            Err(e) => self.leg_failed(RouteId::DEFAULT, e).await,
        }
    }

    /// The RCPT commands the client pipelined behind the one being decided (they stop at
    /// the first line that is not a well-formed RCPT).
    pub(super) fn pipelined_rcpts(&self) -> Vec<(ForwardPath, RcptParams)> {
        // Never more than the session will let through: a RCPT it refuses for the count must
        // not have been asked of the upstream.
        let max = self
            .shared
            .config
            .max_recipients
            .min(self.conn.rcpt_commands_left());
        let mut group = Vec::new();
        for line in self.conn.pipelined_lines(max) {
            match smtp_wire::Command::parse(line) {
                Ok(smtp_wire::Command::Rcpt { to, params }) => group.push((to, params)),
                _ => break,
            }
        }
        group
    }

    /// Sends a group of RCPTs ahead, each route's share in one write (with MAIL first where
    /// that route has not had it; with `mail_first`, the default route always gets MAIL and
    /// nothing goes elsewhere if it refuses). The replies wait in `prefetched` for the
    /// client's session to reach each RCPT. A route that cannot pipeline is left to the
    /// one-by-one path. With `mail_first`, returns the client's reply to MAIL: the default
    /// route's, or the relay's 4xx when that route's connection failed.
    pub(super) async fn prefetch(
        &mut self,
        group: Vec<(ForwardPath, RcptParams)>,
        mail_first: bool,
    ) -> Option<Reply> {
        let routes: Vec<RouteId> = group
            .iter()
            .map(|(to, _)| crate::route::route_for(&self.shared.config.routes, to))
            .collect();
        let mut order: Vec<RouteId> = Vec::new();
        if mail_first {
            order.push(RouteId::DEFAULT);
        }
        for &r in &routes {
            if !order.contains(&r) {
                order.push(r);
            }
        }
        let mut replies: Vec<Option<(RouteId, Reply)>> = vec![None; group.len()];
        let mut leg0_mail = None;
        for r in order {
            if self.legs[r].failure.is_some() || self.queued(r) {
                continue;
            }
            if self.open_leg(r).await.is_err() {
                if r.is_default() && mail_first {
                    return self.legs[RouteId::DEFAULT].failure.clone();
                }
                continue;
            }
            if !self.legs[r].up.as_ref().is_some_and(Upstream::can_pipeline) {
                continue;
            }
            let share: Vec<(ForwardPath, RcptParams)> = group
                .iter()
                .zip(&routes)
                .filter(|(_, route)| **route == r)
                .map(|(item, _)| item.clone())
                .collect();
            let needs_mail = !self.legs[r].mail_sent;
            let Some((from, params)) = self.transaction.clone() else {
                break;
            };
            let mail = needs_mail.then_some((&from, &params));
            let up = self.legs[r].up.as_mut().expect("opened");
            let (mail_reply, rcpt_replies) = match up.batch(mail, &share).await {
                Ok(done) => done,
                Err(e) => {
                    let reply = e.client_reply();
                    let _ = self.leg_failed(r, e).await;
                    if r.is_default() && mail_first {
                        return Some(reply);
                    }
                    continue;
                }
            };
            let refused = mail_reply.as_ref().filter(|m| !m.is_positive()).cloned();
            if needs_mail && refused.is_none() {
                self.legs[r].mail_sent = true;
            }
            if r.is_default() && mail_first {
                leg0_mail = mail_reply.clone();
            }
            let mut next = rcpt_replies.into_iter();
            for (i, _) in routes.iter().enumerate().filter(|(_, route)| **route == r) {
                let reply = next.next().expect("one reply per RCPT");
                // After a refused MAIL the RCPTs were refused for it: the client hears why.
                let reply = refused.clone().unwrap_or(reply);
                if reply.is_positive() {
                    self.legs[r].upstream_ok += 1;
                }
                replies[i] = Some((r, reply));
            }
            if refused.is_some() && r.is_default() && mail_first {
                return leg0_mail;
            }
        }
        self.prefetched
            .extend(group.into_iter().map(|(to, _)| to).zip(replies));
        leg0_mail
    }

    /// The reply sent ahead for `to`, if any: entries before it that the client's session
    /// answered itself (a duplicate, a local refusal) are dropped.
    pub(super) fn take_prefetched(&mut self, to: &ForwardPath) -> Option<Option<(RouteId, Reply)>> {
        while let Some((ahead, _)) = self.prefetched.front() {
            if ahead == to {
                return self.prefetched.pop_front().map(|(_, reply)| reply);
            }
            self.prefetched.pop_front();
        }
        None
    }

    /// RCPT: to the upstream of the recipient's route; its reply is the answer.
    pub(super) async fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Verdict {
        let mut ahead = self.take_prefetched(&to);
        if ahead.is_none() {
            let more = self.pipelined_rcpts();
            if !more.is_empty() {
                let mut group = vec![(to.clone(), params.clone())];
                group.extend(more);
                self.prefetch(group, false).await;
                ahead = self.take_prefetched(&to);
            }
        }
        if let Some(Some((r, reply))) = ahead {
            let leg = &mut self.legs[r];
            leg.rcpt_replies.push((to.to_string(), reply.to_string()));
            if reply.is_positive() {
                leg.accepted.push((to, params));
            }
            return Verdict::Reply(reply);
        }
        let r = crate::route::route_for(&self.shared.config.routes, &to);
        if self.queued(r) {
            let leg = &mut self.legs[r];
            let reply = Reply::new(250, (2, 1, 5), "Recipient OK, queued for delivery");
            leg.rcpt_replies.push((to.to_string(), reply.to_string()));
            leg.accepted.push((to, params));
            leg.upstream_ok += 1;
            return Verdict::Reply(reply);
        }
        if let Some(failure) = &self.legs[r].failure {
            return Verdict::Reply(failure.clone());
        }
        if !self.legs[r].mail_sent {
            let Some((from, mail_params)) = self.transaction.clone() else {
                return Verdict::Reply(Reply::new(451, (4, 3, 0), "no transaction upstream"));
            };
            if self.open_leg(r).await.is_err() {
                let failure = self.legs[r].failure.clone();
                return Verdict::Reply(failure.expect("set by open_leg"));
            }
            let up = self.legs[r].up.as_mut().expect("opened");
            match up.mail(&from, &mail_params).await {
                Ok(reply) if reply.is_positive() => self.legs[r].mail_sent = true,
                // The route's upstream refuses the sender: its words answer this recipient.
                Ok(reply) => {
                    self.legs[r]
                        .rcpt_replies
                        .push((to.to_string(), reply.to_string()));
                    return Verdict::Reply(reply);
                }
                Err(e) => return self.leg_failed(r, e).await,
            }
        }
        let up = self.legs[r].up.as_mut().expect("in a transaction");
        match up.rcpt(&to, &params).await {
            Ok(reply) => {
                let leg = &mut self.legs[r];
                leg.rcpt_replies.push((to.to_string(), reply.to_string()));
                if reply.is_positive() {
                    leg.accepted.push((to, params));
                    leg.upstream_ok += 1;
                }
                Verdict::Reply(reply)
            }
            Err(e) => self.leg_failed(r, e).await,
        }
    }

    /// DATA: to every upstream with accepted recipients, at once; 354 to the client only
    /// when all of them said 354. A transient refusal or failure of any of them is the
    /// answer for the whole message (nothing has been sent anywhere yet, the client tries
    /// again); a permanent refusal fails that upstream's recipients only.
    pub(super) async fn begin_data(&mut self) -> Verdict {
        self.prefetched.clear();
        for r in self.shared.config.route_ids() {
            let leg = &self.legs[r];
            if !leg.accepted.is_empty() && leg.upstream_ok != leg.accepted.len() {
                self.replay_envelope(r).await;
            }
        }
        if let Some(reply) = self.poisoned.clone() {
            self.abort_legs().await;
            return Verdict::Reply(reply);
        }
        let asked = self
            .legs
            .fan_out(|l| !l.accepted.is_empty(), |up| up.data())
            .await;
        let mut transient: Option<Reply> = None;
        for (r, result) in asked {
            match result {
                Ok(reply) if reply.code == 354 => self.legs[r].message = LegMessage::Sending,
                Ok(reply) if reply.severity() == smtp_wire::Severity::Transient => {
                    transient.get_or_insert(reply);
                }
                Ok(reply) => self.legs[r].message = LegMessage::Answered(reply),
                Err(e) => {
                    let reply = e.client_reply();
                    let _ = self.leg_failed(r, e).await;
                    transient.get_or_insert(reply);
                }
            }
        }
        if let Some(reply) = transient {
            self.abort_legs().await;
            self.poisoned = None;
            return Verdict::Reply(reply);
        }
        let queueing = self
            .legs
            .iter()
            .any(|l| self.queued(l.route) && !l.accepted.is_empty());
        if !queueing && !self.legs.iter().any(|l| l.message.is_sending()) {
            // Every upstream refused the message: their words.
            return Verdict::Reply(self.combined_refusal());
        }
        match self.begin_message().await {
            Ok(()) => Verdict::Accept,
            Err(e) => {
                self.abort_transaction().await;
                self.abort_legs().await;
                // Insufficient storage (RFC 3463 4.3.1): the client tries again later.
                Verdict::Reply(Reply::new(
                    452,
                    (4, 3, 1),
                    format!("cannot store the message: {e}"),
                ))
            }
        }
    }

    /// Route `r`'s upstream accepted recipients sent ahead that the client's session then
    /// answered itself (a duplicate, the recipient limit): the upstream's envelope is not the
    /// client's. RSET, and MAIL with exactly the client's recipients again; any other answer
    /// than before makes the message a 4xx.
    pub(super) async fn replay_envelope(&mut self, r: RouteId) {
        let Some((from, params)) = self.transaction.clone() else {
            return;
        };
        let rcpts = self.legs[r].accepted.clone();
        if self.legs[r].up.is_none() {
            return;
        }
        self.note("    * replaying the envelope upstream (the client's group had recipients the relay answered itself)".into());
        let up = self.legs[r].up.as_mut().expect("checked");
        let result = match up.rset().await {
            Ok(_) => up.envelope(&from, &params, &rcpts).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(env)
                if env.mail.is_positive()
                    && env.rcpts.len() == rcpts.len()
                    && env.rcpts.iter().all(Reply::is_positive) =>
            {
                self.legs[r].upstream_ok = rcpts.len();
            }
            Ok(env) => {
                let name = &self.shared.config.route_upstream(r).name;
                tracing::warn!(session = self.id, upstream = %name, mail = %env.mail, "upstream answered a replayed envelope differently");
                self.poisoned.get_or_insert(Reply::new(
                    451,
                    (4, 3, 0),
                    format!("upstream {name}: answered the envelope differently when it was replayed, try again"),
                ));
            }
            Err(e) => {
                let _ = self.leg_failed(r, e).await;
            }
        }
    }

    /// The refusal when no upstream takes the message: one upstream's reply verbatim, or for
    /// several a reply that keeps each one's words (transient if any of them is).
    pub(super) fn combined_refusal(&self) -> Reply {
        let refused: Vec<(RouteId, &Reply)> = self
            .legs
            .iter()
            .filter(|l| !l.accepted.is_empty())
            .filter_map(|l| Some((l.route, l.message.answer()?)))
            .collect();
        match refused.as_slice() {
            [] => Reply::new(451, (4, 3, 0), "no upstream took the message"),
            [(_, one)] => (*one).clone(),
            many => {
                let lead = many
                    .iter()
                    .find(|(_, r)| r.severity() == smtp_wire::Severity::Transient)
                    .unwrap_or(&many[0])
                    .1;
                let mut lines = vec![format!(
                    "refused by {} upstreams, in their words:",
                    many.len()
                )];
                lines.extend(many.iter().map(|(r, reply)| self.said(*r, reply)));
                Reply {
                    code: lead.code,
                    enhanced: lead.enhanced,
                    lines,
                }
            }
        }
    }

    /// `<upstream>: <code> <text>`, one line of a combined reply.
    pub(super) fn said(&self, r: RouteId, reply: &Reply) -> String {
        format!(
            "{}: {}",
            self.shared.config.route_upstream(r).name,
            crate::upstream::said(reply)
        )
    }

    /// A connection to route `r`'s upstream failed: it is dropped (never reused in an
    /// unknown state) and the client gets a 4xx naming it. If it had accepted recipients,
    /// the transaction can only end in that 4xx.
    pub(super) async fn leg_failed(&mut self, r: RouteId, e: UpstreamError) -> Verdict {
        if matches!(e, UpstreamError::Bug { .. }) {
            tracing::error!(session = self.id, upstream = %e.upstream(), error = %e, "the upstream refused a command the relay made: a relay bug, please report it");
        } else {
            tracing::warn!(session = self.id, upstream = %e.upstream(), error = %e, "upstream failure");
        }
        self.note_upstream();
        self.note(format!("    * upstream failure: {e}"));
        let reply = e.client_reply();
        let leg = &mut self.legs[r];
        if let Some(up) = leg.up.take() {
            up.abort().await;
        }
        leg.mail_sent = false;
        leg.message.stop_sending();
        if !leg.accepted.is_empty() {
            self.poisoned.get_or_insert(reply.clone());
        }
        self.legs[r].failure = Some(reply.clone());
        Verdict::Reply(reply)
    }

    /// Upstreams still in a transaction get RSET; every leg forgets the transaction.
    pub(super) async fn reset_legs(&mut self) {
        for i in self.shared.config.route_ids() {
            if self.legs[i].mail_sent
                && let Some(up) = self.legs[i].up.as_mut()
                && up.rset().await.is_err()
                && let Some(up) = self.legs[i].up.take()
            {
                up.abort().await;
            }
            self.legs[i].mail_sent = false;
            self.legs[i].clear();
        }
        self.transaction = None;
        self.prefetched.clear();
        self.poisoned = None;
    }

    /// Closes every upstream that is inside DATA without ending the message (so it
    /// delivers nothing); the others stay, to be reset at the next MAIL.
    pub(super) async fn abort_legs(&mut self) {
        for leg in self.legs.iter_mut() {
            if leg.message.is_sending() {
                leg.message.stop_sending();
                leg.mail_sent = false;
                if let Some(up) = leg.up.take() {
                    up.abort().await;
                }
            }
        }
    }

    pub(super) async fn begin_message(&mut self) -> std::io::Result<()> {
        let id = format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
            self.id
        );
        let path = crate::spool::path_for(&self.shared.config.spool_dir, &id, "eml");
        // A route that queues: the content goes to the queue's tmp/ as well.
        if self
            .legs
            .iter()
            .any(|l| self.queued(l.route) && !l.accepted.is_empty())
            && let Some(queue) = &self.shared.queue
        {
            let content = Spool::create(id.clone(), queue.tmp_path(&id)).await?;
            self.queue_file = Some(QueueFile {
                content,
                error: None,
            });
        }
        self.spool = Some(Spool::new(id, path));
        // RFC 5321 4.4: a trace header at the top, to the upstreams and the queue (the spool
        // keeps the message as the client sent it).
        let received = self.received_header();
        let mut none = None;
        stream_content(
            &mut none,
            &mut self.queue_file,
            &mut self.legs,
            &mut self.poisoned,
            self.id,
            received.as_bytes(),
        )
        .await;
        Ok(())
    }

    pub(super) fn received_header(&self) -> String {
        let cfg = &self.shared.config;
        let helo = self.conn.session().helo().unwrap_or("unknown");
        let protocol = match (self.tls, self.conn.session().authenticated().is_some()) {
            (true, true) => "ESMTPSA",
            (true, false) => "ESMTPS",
            (false, true) => "ESMTPA",
            (false, false) => "ESMTP",
        };
        let id = self.spool.as_ref().map(|s| s.id.as_str()).unwrap_or("-");
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (smtp-relay) with {protocol} id {id};\r\n\t{date}\r\n",
            ip = self.peer.ip(),
            host = cfg.hostname,
            date = chrono::Utc::now().to_rfc2822(),
        )
    }

    /// The end of data: to every upstream at once, then the reply rule (README, "Several
    /// routes"): all delivered, 250 with each upstream's words; none, the refusal in their
    /// words; some, 250 and a bounce to the sender for the recipients that failed.
    pub(super) async fn deliver(&mut self, env: Envelope) -> Verdict {
        if let Some(reply) = self.poisoned.take() {
            self.abort_legs().await;
            self.discard_spool().await;
            return Verdict::Reply(reply);
        }
        // Store and forward first: once the queue holds the message durably, the live routes
        // get their end of data; if it cannot, nobody does and the client hears 452 4.3.1.
        if let Err(reply) = self.enqueue(&env).await {
            self.abort_legs().await;
            self.discard_spool().await;
            return Verdict::Reply(reply);
        }
        // With several upstreams, what each holds of the message goes out first: one lost
        // now has not had its end of data, so no upstream gets one (a 451 for all).
        if self.legs.iter().filter(|l| l.message.is_sending()).count() > 1 {
            let flushed = self
                .legs
                .fan_out(|l| l.message.is_sending(), |up| up.flush_body())
                .await;
            for (r, result) in flushed {
                if let Err(e) = result {
                    let _ = self.leg_failed(r, e).await;
                }
            }
            if let Some(reply) = self.poisoned.take() {
                self.abort_legs().await;
                self.discard_spool().await;
                return Verdict::Reply(reply);
            }
        }
        let ended = self
            .legs
            .fan_out(|l| l.message.is_sending(), |up| up.end_of_data())
            .await;
        for (r, result) in ended {
            self.legs[r].message.stop_sending();
            self.legs[r].mail_sent = false;
            match result {
                Ok(reply) => self.legs[r].message = LegMessage::Answered(reply),
                Err(e) => {
                    let reply = e.client_reply();
                    let _ = self.leg_failed(r, e).await;
                    self.poisoned = None;
                    self.legs[r].message = LegMessage::Answered(reply);
                }
            }
        }
        let involved: Vec<RouteId> = self
            .legs
            .iter()
            .filter(|l| !l.accepted.is_empty())
            .map(|l| l.route)
            .collect();
        let delivered: Vec<RouteId> = involved
            .iter()
            .copied()
            .filter(|&r| {
                self.legs[r]
                    .message
                    .answer()
                    .is_some_and(Reply::is_positive)
            })
            .collect();
        let metrics = &self.shared.metrics;
        for &r in &involved {
            if !self.queued(r)
                && let Some(o) = self.legs[r].message.answer()
            {
                metrics.reply(o.code);
            }
        }
        crate::metrics::Metrics::inc(if delivered.is_empty() {
            &metrics.messages_refused
        } else {
            &metrics.messages_accepted
        });
        let mut dsn = None;
        let reply =
            if delivered.is_empty() {
                self.combined_refusal()
            } else if delivered.len() == involved.len() {
                match delivered.as_slice() {
                    [one] => self.legs[*one]
                        .message
                        .answer()
                        .cloned()
                        .expect("delivered"),
                    many => {
                        let mut lines = vec![format!("OK: delivered by {} upstreams:", many.len())];
                        lines.extend(many.iter().map(|&r| {
                            self.said(r, self.legs[r].message.answer().expect("delivered"))
                        }));
                        Reply {
                            code: 250,
                            enhanced: Some((2, 0, 0)),
                            lines,
                        }
                    }
                }
            } else {
                let failures = self.failures();
                let last = match &env.from {
                    Some(ReversePath::Mailbox(m)) => {
                        dsn = Some(m.clone());
                        format!(
                            "{} recipient(s) failed: a delivery status notification goes to <{m}>",
                            failures.len()
                        )
                    }
                    _ => format!(
                        "{} recipient(s) failed: no notification for a null sender",
                        failures.len()
                    ),
                };
                let mut lines = vec![format!(
                    "OK: delivered by {} of {} upstreams:",
                    delivered.len(),
                    involved.len()
                )];
                lines.extend(
                    involved
                        .iter()
                        .map(|&r| self.said(r, self.legs[r].message.answer().expect("outcome"))),
                );
                lines.push(last);
                Reply {
                    code: 250,
                    enhanced: Some((2, 0, 0)),
                    lines,
                }
            };
        if let Some(spool) = self.spool.take() {
            let summary = summarize(&spool.head);
            // With several upstreams, a line for each, then the message's line.
            for &r in involved.iter().filter(|_| involved.len() > 1) {
                let leg = &self.legs[r];
                let outcome = leg.message.answer().expect("outcome");
                tracing::info!(
                    session = self.id,
                    id = %spool.id,
                    upstream = %self.shared.config.route_upstream(r).name,
                    rcpts = ?leg.accepted.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>(),
                    reply = %outcome,
                    upstream_outcome = if outcome.is_positive() { "delivered" } else { "refused" },
                    "delivery"
                );
            }
            tracing::info!(
                session = self.id,
                id = %spool.id,
                from = %env.from.as_ref().map(ReversePath::to_string).unwrap_or_default(),
                rcpts = ?env.rcpts.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>(),
                size = spool.size,
                reply = %reply,
                outcome = if delivered.is_empty() {
                    "refused"
                } else if delivered.len() == involved.len() {
                    "delivered"
                } else {
                    "partly delivered"
                },
                "message"
            );
            let dsn = match dsn {
                Some(sender) => Some(self.bounce(&spool, sender).await),
                None => None,
            };
            let json = spool_json(&spool, &env, self, &reply, summary, dsn);
            let (id, path, session) = (spool.id.clone(), spool.path.clone(), self.id);
            // The upstream has decided: the client's reply need not wait for the disk.
            self.spooled().await;
            self.spool_write = Some(tokio::spawn(async move {
                if let Err(e) = spool.keep(json).await {
                    tracing::error!(session, id = %id, path = %path.display(), error = %e, "cannot write the spool: the message was relayed, but is not kept");
                }
            }));
        }
        Verdict::Reply(reply)
    }

    /// Waits for the last message's spool write.
    pub(super) async fn spooled(&mut self) {
        if let Some(write) = self.spool_write.take() {
            let _ = write.await;
        }
    }

    /// Puts the message in the queue for each route that queues (one record per route, the
    /// content hard-linked), durably; the routes' outcome is then `250 queued as <id>`.
    pub(super) async fn enqueue(&mut self, env: &Envelope) -> Result<(), Reply> {
        let Some(mut qf) = self.queue_file.take() else {
            return Ok(());
        };
        let refuse =
            |why: String| Reply::new(452, (4, 3, 1), format!("cannot queue the message: {why}"));
        let Some(queue) = self.shared.queue.clone() else {
            return Err(refuse("no queue".into()));
        };
        let (path, size) = (qf.content.path.clone(), qf.content.size);
        let written = match qf.error.take() {
            Some(e) => Err(e),
            None => qf.content.finish().await.map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&path).await;
            tracing::error!(session = self.id, error = %e, "cannot write to the queue");
            return Err(refuse(e));
        }
        let routes: Vec<RouteId> = self
            .legs
            .iter()
            .filter(|l| self.queued(l.route) && !l.accepted.is_empty())
            .map(|l| l.route)
            .collect();
        let base = self
            .spool
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let now = chrono::Utc::now().to_rfc3339();
        for (n, &r) in routes.iter().enumerate() {
            let label = self.shared.config.route_label(r).to_string();
            let id = if routes.len() == 1 {
                base.clone()
            } else {
                format!("{base}-{label}")
            };
            let content = if n + 1 == routes.len() {
                path.clone()
            } else {
                let link = queue.tmp_path(&id);
                if let Err(e) = std::fs::hard_link(&path, &link) {
                    return Err(refuse(e.to_string()));
                }
                link
            };
            let record = crate::queue::store::Queued {
                id: id.clone(),
                route: label,
                mail_from: env
                    .from
                    .as_ref()
                    .map(ReversePath::to_string)
                    .unwrap_or_else(|| "<>".into()),
                mail_params: self
                    .transaction
                    .as_ref()
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_default(),
                rcpts: self.legs[r]
                    .accepted
                    .iter()
                    .map(|(to, _)| crate::queue::store::Rcpt {
                        to: to.to_string(),
                        state: crate::queue::store::RcptState::Pending { last: None },
                    })
                    .collect(),
                auth_user: self.conn.session().authenticated().map(str::to_string),
                size,
                received_at: now.clone(),
                attempts: 0,
                next_attempt: now.clone(),
                last_error: None,
            };
            if let Err(e) = queue.enqueue(content, record).await {
                tracing::error!(session = self.id, id = %id, error = %e, "cannot queue a message");
                return Err(refuse(e.to_string()));
            }
            tracing::info!(session = self.id, id = %id, route = %self.shared.config.route_label(r), outcome = "queued", "message");
            crate::metrics::Metrics::inc(&self.shared.metrics.queued);
            self.legs[r].message =
                LegMessage::Answered(Reply::new(250, (2, 0, 0), format!("queued as {id}")));
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The recipients that were accepted but not delivered, with what was said.
    pub(super) fn failures(&self) -> Vec<crate::dsn::Failure> {
        self.legs
            .iter()
            .filter_map(|l| Some((l, l.message.answer().filter(|o| !o.is_positive())?)))
            .flat_map(|(l, reply)| {
                let remote = self
                    .shared
                    .config
                    .route_upstream(l.route)
                    .server_name
                    .clone();
                l.accepted.iter().map(move |(rcpt, _)| crate::dsn::Failure {
                    recipient: match rcpt.mailbox() {
                        Some(m) => m.to_string(),
                        None => rcpt.to_string(),
                    },
                    remote: remote.clone(),
                    reply: reply.clone(),
                })
            })
            .collect()
    }

    /// Writes the bounce for the failed recipients beside the message (`<id>.dsn.eml`) and
    /// sends it to `sender` through the default route, in the background.
    pub(super) async fn bounce(&mut self, spool: &Spool, sender: smtp_wire::Mailbox) -> String {
        let head = &spool.head;
        let failures = self.failures();
        let cfg = &self.shared.config;
        let sender_text = sender.to_string();
        let bounce = crate::dsn::Bounce::new(&crate::dsn::Report {
            reporting_mta: &cfg.hostname,
            to: &sender_text,
            original_id: &spool.id,
            envelope_id: None,
            arrival: chrono::Utc::now(),
            failures: &failures,
            original_headers: head,
        });
        let path = spool.path.with_extension("dsn.eml");
        let (p, bytes) = (path.clone(), bounce.as_daemon.clone());
        let _ = tokio::task::spawn_blocking(move || crate::spool::write_private(&p, &bytes)).await;
        let mut config = cfg.upstream.clone();
        if cfg.uses_client_credentials(RouteId::DEFAULT) {
            config.credentials = self.credentials.clone();
        }
        let (session, id) = (self.id, spool.id.clone());
        self.dsn_tasks.push(tokio::spawn(async move {
            let result = crate::dsn::send(&config, &sender, &bounce).await;
            match result {
                Ok(reply) => tracing::info!(
                    session,
                    id = %id,
                    to = %sender,
                    upstream = %config.name,
                    reply = %reply,
                    outcome = if reply.is_positive() { "dsn sent" } else { "dsn refused" },
                    "bounce"
                ),
                Err(e) => tracing::warn!(
                    session,
                    id = %id,
                    to = %sender,
                    upstream = %config.name,
                    error = %e,
                    outcome = "dsn failed",
                    "bounce"
                ),
            }
        }));
        // Relative to the spool: `<h>/<id>.dsn.eml`.
        path.strip_prefix(&cfg.spool_dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A transaction ends without a delivery: the upstreams must not get an end of data, so
    /// their sessions are closed; the spool file is removed.
    pub(super) async fn abort_transaction(&mut self) {
        if let Some(spool) = &self.spool {
            tracing::info!(
                session = self.id,
                id = %spool.id,
                outcome = "aborted",
                "message not completed: nothing was sent"
            );
            self.abort_legs().await;
            self.discard_spool().await;
        }
    }

    pub(super) async fn discard_spool(&mut self) {
        if let Some(q) = self.queue_file.take() {
            let path = q.content.path.clone();
            drop(q);
            let _ = tokio::fs::remove_file(&path).await;
        }
        if let Some(spool) = self.spool.take()
            && let Some(file) = spool.file
        {
            drop(file);
            let _ = tokio::fs::remove_file(&spool.path).await;
        }
    }
}
