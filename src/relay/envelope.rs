//! The envelope of a transaction: MAIL and RCPT to the destination of each recipient's
//! route (opened at its first need), pipelined groups forwarded as groups, an envelope
//! replayed when the client's session answered some recipients itself, a failed
//! destination dropped.

use super::*;
use crate::metrics::Metrics;

/// A kept upstream session of route `r`, when `reuse` and the route shares them (see
/// [`super::pool`]); those found stale on the way are closed.
async fn take_kept(shared: &Shared, r: RouteId, reuse: bool) -> Option<Upstream> {
    let pool = shared
        .pool
        .as_ref()
        .filter(|_| reuse && shared.config.shares_sessions(r))?;
    let (up, stale) = pool.take(r.slot(), tokio::time::Instant::now());
    for s in stale {
        s.abort().await;
    }
    up
}

impl Session {
    /// The upstream session of route `r`: the one already open, or a new one (with the
    /// client's credentials or the route's own, see [`uses_client_credentials`]).
    pub(super) async fn open_leg(&mut self, r: RouteId) -> Result<(), UpstreamError> {
        self.open_leg_with(r, true).await.map(|_| ())
    }

    /// [`Session::open_leg`], taking a kept session only when `reuse`; says whether it did.
    async fn open_leg_with(&mut self, r: RouteId, reuse: bool) -> Result<bool, UpstreamError> {
        if self.legs[r].is_open() {
            return Ok(false);
        }
        let slot = match self.kept_or_slot(r, reuse).await {
            Ok(Some(Granted::Kept(up))) => {
                self.note(format!(
                    "    * upstream session reused ({} messages on it)",
                    up.messages()
                ));
                self.legs[r].set_upstream(up);
                return Ok(true);
            }
            Ok(Some(Granted::Slot(slot))) => Some(slot),
            Ok(None) => None,
            Err(e) => {
                Metrics::inc(&self.shared.metrics.upstream_busy);
                tracing::warn!(session = self.id, upstream = %e.upstream(), error = %e, "upstream busy");
                self.note(format!("    * upstream busy: {e}"));
                self.legs[r].failure = Some(e.client_reply());
                return Err(e);
            }
        };
        let cfg = &self.shared.config;
        let mut config = cfg.route_upstream(r).clone();
        if cfg.uses_client_credentials(r) {
            config.credentials = self.credentials.as_deref().cloned();
        }
        match Upstream::connect(&config).await {
            Ok(mut up) => {
                if let Some(slot) = slot {
                    up.hold(slot);
                }
                self.shared.learn(r, up.capabilities());
                self.legs[r].set_upstream(up);
                Ok(false)
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

    /// A kept upstream session of route `r` (when `reuse` and the route shares them), or,
    /// under the route's cap ([`RelayConfig::upstream_max_sessions`]), a slot for a new one,
    /// waiting for either up to `upstream_session_wait`; `None`: no kept session and no cap.
    async fn kept_or_slot(
        &mut self,
        r: RouteId,
        reuse: bool,
    ) -> Result<Option<Granted<Upstream>>, UpstreamError> {
        let shared = self.shared.clone();
        let kept = || take_kept(&shared, r, reuse);
        let Some(cap) = shared.cap(r) else {
            return Ok(kept().await.map(Granted::Kept));
        };
        let (id, metrics) = (self.id, &shared.metrics);
        let mut waited = None;
        let granted = cap
            .wait(
                &shared.config.route_upstream(r).name,
                shared.config.upstream_session_wait,
                kept,
                |open| {
                    Metrics::inc(&metrics.upstream_session_waits);
                    tracing::info!(session = id, route = %shared.config.route_label(r), open, "waiting for an upstream session under max_sessions");
                    waited = Some(open);
                },
            )
            .await;
        if let Some(open) = waited {
            self.note(format!(
                "    * {open} upstream sessions open (max_sessions): waited for one"
            ));
        }
        granted.map(Some)
    }

    /// MAIL: a new transaction. Upstreams still inside an earlier one (the client said RSET,
    /// or DATA was refused) are reset first; MAIL goes to the default route at once, whose
    /// verdict (the sender rules of the upstream the client authenticated with) is the
    /// answer. Other routes get MAIL at their first recipient. A kept upstream session that
    /// fails before it answers (the upstream closed it after the relay last looked) costs the
    /// client nothing: MAIL goes once more, on a new connection.
    pub(super) async fn mail(&mut self, from: ReversePath, params: MailParams) -> Verdict {
        self.reset_legs().await;
        let verdict = self.mail_on(&from, &params, true).await;
        if self.kept_session_died {
            self.kept_session_died = false;
            self.note(
                "    * the kept upstream session was gone: MAIL again on a new connection"
                    .to_string(),
            );
            self.legs[RouteId::DEFAULT].failure = None;
            return self.mail_on(&from, &params, false).await;
        }
        verdict
    }

    async fn mail_on(&mut self, from: &ReversePath, params: &MailParams, reuse: bool) -> Verdict {
        let reused = match self.open_leg_with(RouteId::DEFAULT, reuse).await {
            Ok(reused) => reused,
            Err(e) => return Verdict::Reply(e.client_reply()),
        };
        let verdict = self.mail_upstream(from.clone(), params.clone()).await;
        // Failed below SMTP (no reply: the leg's failure is set) on a session taken from the
        // pool, before the transaction began upstream.
        self.kept_session_died = reused && self.legs[RouteId::DEFAULT].failure.is_some();
        verdict
    }

    async fn mail_upstream(&mut self, from: ReversePath, params: MailParams) -> Verdict {
        if self.legs[RouteId::DEFAULT].can_pipeline() {
            let group = self.pipelined_rcpts();
            if !group.is_empty() {
                // MAIL and the RCPTs behind it, forwarded as the client sent them: a group.
                self.transaction = Some(Box::new((from, params)));
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
        match self.legs[RouteId::DEFAULT].mail(&from, &params).await {
            Ok(reply) => {
                if reply.is_positive() {
                    self.transaction = Some(Box::new((from, params)));
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
            if self.legs[r].failure.is_some() {
                continue;
            }
            if self.open_leg(r).await.is_err() {
                if r.is_default() && mail_first {
                    return self.legs[RouteId::DEFAULT].failure.clone();
                }
                continue;
            }
            if !self.legs[r].can_pipeline() {
                continue;
            }
            let share: Vec<(ForwardPath, RcptParams)> = group
                .iter()
                .zip(&routes)
                .filter(|(_, route)| **route == r)
                .map(|(item, _)| item.clone())
                .collect();
            let needs_mail = !self.legs[r].mail_sent;
            let Some((from, params)) = self.transaction.as_deref().cloned() else {
                break;
            };
            let mail = needs_mail.then_some((&from, &params));
            let Some(up) = self.legs[r].upstream_mut() else {
                continue;
            };
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
            self.legs[r].took_rcpt(to, params, &reply);
            return Verdict::Reply(reply);
        }
        let r = crate::route::route_for(&self.shared.config.routes, &to);
        if let Some(failure) = &self.legs[r].failure {
            return Verdict::Reply(failure.clone());
        }
        if !self.legs[r].mail_sent {
            let Some((from, mail_params)) = self.transaction.as_deref().cloned() else {
                return Verdict::Reply(Reply::new(451, (4, 3, 0), "no transaction upstream"));
            };
            if self.open_leg(r).await.is_err() {
                let failure = self.legs[r].failure.clone();
                return Verdict::Reply(failure.expect("set by open_leg"));
            }
            match self.legs[r].mail(&from, &mail_params).await {
                Ok(reply) if reply.is_positive() => {}
                // The route's upstream refuses the sender: its words answer this recipient.
                Ok(reply) => {
                    self.legs[r].rcpt_replies.push((to, reply.clone()));
                    return Verdict::Reply(reply);
                }
                Err(e) => return self.leg_failed(r, e).await,
            }
        }
        match self.legs[r].rcpt(to, params).await {
            Ok(reply) => Verdict::Reply(reply),
            Err(e) => self.leg_failed(r, e).await,
        }
    }

    /// Route `r`'s upstream accepted recipients sent ahead that the client's session then
    /// answered itself (a duplicate, the recipient limit): the upstream's envelope is not the
    /// client's. RSET, and MAIL with exactly the client's recipients again; any other answer
    /// than before makes the message a 4xx.
    pub(super) async fn replay_envelope(&mut self, r: RouteId) {
        let Some((from, params)) = self.transaction.as_deref().cloned() else {
            return;
        };
        let rcpts = self.legs[r].accepted.clone();
        if self.legs[r].upstream().is_none() {
            return;
        }
        self.note("    * replaying the envelope upstream (the client's group had recipients the relay answered itself)".into());
        let up = self.legs[r].upstream_mut().expect("checked");
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
        leg.abort().await;
        if !leg.accepted.is_empty() {
            self.poisoned.get_or_insert(reply.clone());
        }
        self.legs[r].failure = Some(reply.clone());
        Verdict::Reply(reply)
    }

    /// Upstreams still in a transaction get RSET; every leg forgets the transaction.
    pub(super) async fn reset_legs(&mut self) {
        for leg in self.legs.iter_mut() {
            leg.reset().await;
        }
        self.transaction = None;
        self.prefetched.clear();
        self.poisoned = None;
    }
}
