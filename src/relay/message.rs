//! The message of a transaction: DATA to every destination with recipients, the content
//! spooled and streamed, the queue's commit, the end of data, the reply rule's verdict, the
//! bounce for recipients that failed, and the spool record.

use super::*;

impl Session {
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
            .fan_out(|l| !l.accepted.is_empty(), |leg| leg.data())
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
        if !self.legs.iter().any(|l| l.message.is_sending()) {
            // Every upstream refused the message: their words.
            return Verdict::Reply(outcome::refusal(&self.verdicts()));
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

    /// Each involved leg's verdict on the message (those that have one), in route order,
    /// for the reply rule ([`outcome`]).
    pub(super) fn verdicts(&self) -> Vec<outcome::Said<'_>> {
        self.legs
            .iter()
            .filter(|l| !l.accepted.is_empty())
            .filter_map(|l| {
                Some(outcome::Said {
                    upstream: &self.shared.config.route_upstream(l.route).name,
                    reply: l.message.answer()?,
                })
            })
            .collect()
    }

    /// Closes every upstream that is inside DATA without ending the message (so it
    /// delivers nothing); the others stay, to be reset at the next MAIL.
    pub(super) async fn abort_legs(&mut self) {
        for leg in self.legs.iter_mut() {
            if leg.message.is_sending() {
                leg.abort().await;
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
        self.spool = Some(Box::new(Spool::new(id.clone(), path)));
        // RFC 5321 4.4: a trace header at the top, to the upstreams (the spool keeps the
        // message as the client sent it; the queue keeps the header in its record).
        let received = self.received_header();
        let mut none = None;
        stream_content(
            &mut none,
            &mut self.legs,
            &mut self.poisoned,
            self.id,
            received.as_bytes(),
        )
        .await;
        // A route that queues: the content goes to the queue's copy as well.
        if self.legs.queue_takes_message()
            && let Some(queue) = &self.shared.queue
        {
            self.legs
                .begin_queue_content(queue, &id, received, self.shared.queue_shares_spool);
        }
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

    /// The end of data: the queue commits first, then every upstream at once, then the reply
    /// rule ([`outcome`]); the message is logged and kept in the spool with its outcome.
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
        if let Some(reply) = self.end_upstreams().await {
            self.abort_legs().await;
            self.discard_spool().await;
            return Verdict::Reply(reply);
        }
        let metrics = &self.shared.metrics;
        for leg in self.legs.iter().filter(|l| !l.accepted.is_empty()) {
            if let Some(o) = leg.upstream_answer() {
                metrics.reply(o.code);
            }
        }
        let (reply, outcome) =
            outcome::end_of_data(&self.verdicts(), self.failures().len(), env.from.as_ref());
        crate::metrics::Metrics::inc(if outcome == outcome::Outcome::Refused {
            &metrics.messages_refused
        } else {
            &metrics.messages_accepted
        });
        if let Some(spool) = self.spool.take() {
            self.keep(*spool, &env, &reply, outcome).await;
        }
        Verdict::Reply(reply)
    }

    /// The end of data to every upstream taking the content, at once. With several, what
    /// each holds of the message goes out first: one lost now has not had its end of data,
    /// so no upstream gets one, and the 4xx for all is returned.
    pub(super) async fn end_upstreams(&mut self) -> Option<Reply> {
        if self.legs.iter().filter(|l| l.message.is_sending()).count() > 1 {
            let flushed = self
                .legs
                .fan_out(|l| l.message.is_sending(), |leg| leg.flush_body())
                .await;
            for (r, result) in flushed {
                if let Err(e) = result {
                    let _ = self.leg_failed(r, e).await;
                }
            }
            if let Some(reply) = self.poisoned.take() {
                return Some(reply);
            }
        }
        let ended = self
            .legs
            .fan_out(|l| l.message.is_sending(), |leg| leg.end_of_data())
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
        None
    }

    /// The message's log lines (with several upstreams, one for each, then the message's),
    /// its bounce when some recipients failed, and its spool record, written off the reply's
    /// path.
    pub(super) async fn keep(
        &mut self,
        spool: Spool,
        env: &Envelope,
        reply: &Reply,
        outcome: outcome::Outcome,
    ) {
        let summary = summarize(&spool.head);
        self.log_deliveries(&spool.id);
        tracing::info!(
            session = self.id,
            id = %spool.id,
            from = %env.from.as_ref().map(ReversePath::to_string).unwrap_or_default(),
            rcpts = ?env.rcpts.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>(),
            size = spool.size,
            reply = %reply,
            outcome = outcome.name(),
            "message"
        );
        let dsn = match &env.from {
            Some(ReversePath::Mailbox(m)) if outcome == outcome::Outcome::PartlyDelivered => {
                Some(self.bounce(&spool, m.clone()).await)
            }
            _ => None,
        };
        let json = spool_json(&spool, env, self, reply, summary, dsn);
        let (id, path, session) = (spool.id.clone(), spool.path.clone(), self.id);
        let shared = self.shared.clone();
        // The upstream has decided: the client's reply need not wait for the disk.
        self.spooled().await;
        self.spool_write = Some(tokio::spawn(async move {
            if let Err(e) = spool.keep(json, &shared.spool_writers).await {
                tracing::error!(session, id = %id, path = %path.display(), error = %e, "cannot write the spool: the message was relayed, but is not kept");
            }
        }));
    }

    /// With several upstreams, a log line for each (the message's own follows).
    pub(super) fn log_deliveries(&self, id: &str) {
        let involved = || self.legs.iter().filter(|l| !l.accepted.is_empty());
        for leg in involved().filter(|_| involved().count() > 1) {
            let Some(answer) = leg.message.answer() else {
                continue;
            };
            tracing::info!(
                session = self.id,
                id = %id,
                upstream = %self.shared.config.route_upstream(leg.route).name,
                rcpts = ?leg.accepted.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>(),
                reply = %answer,
                upstream_outcome = if answer.is_positive() { "delivered" } else { "refused" },
                "delivery"
            );
        }
    }

    /// Waits for the last message's spool write.
    pub(super) async fn spooled(&mut self) {
        if let Some(write) = self.spool_write.take() {
            let _ = write.await;
        }
    }

    /// The queue's end of data (before any upstream's): the message committed durably for
    /// every route that queues, each logged and counted; the client's 452 4.3.1 when it
    /// cannot be.
    pub(super) async fn enqueue(&mut self, env: &Envelope) -> Result<(), Reply> {
        let id = self
            .spool
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let msg = ToQueue {
            id: &id,
            from: env.from.as_ref(),
            params: self.transaction.as_deref().map(|(_, p)| p),
            auth_user: self.conn.session().authenticated(),
            config: &self.shared.config,
            spool: self.spool.as_deref_mut(),
        };
        let queued = match self.legs.enqueue(self.shared.queue.as_ref(), msg).await {
            Ok(queued) => queued,
            Err(reply) => {
                tracing::error!(session = self.id, id = %id, error = %reply, "cannot queue the message");
                return Err(reply);
            }
        };
        for (r, id) in &queued {
            tracing::info!(session = self.id, id = %id, route = %self.shared.config.route_label(*r), outcome = "queued", "message");
            crate::metrics::Metrics::inc(&self.shared.metrics.queued);
        }
        if !queued.is_empty() {
            self.shared.wake.notify_one();
        }
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
            config.credentials = self.credentials.as_deref().cloned();
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
        self.legs.discard_queue_content().await;
        if let Some(spool) = self.spool.take()
            && let Some(file) = spool.file
        {
            drop(file);
            let _ = tokio::fs::remove_file(&spool.path).await;
        }
    }
}

/// Message content to the spool and to every upstream taking the message, at once. A
/// failing upstream is dropped here and poisons the transaction (the end of data answers
/// 4xx and no upstream gets an end of data); a failing spool write drops the spool copy (the
/// message still goes on; the log says it was not kept).
pub(super) async fn stream_content(
    spool: &mut Option<Box<Spool>>,
    legs: &mut Legs,
    poisoned: &mut Option<Reply>,
    session: u64,
    data: &[u8],
) {
    legs.stream_to_queue(data).await;
    let to_spool = async {
        if let Some(s) = spool.as_mut() {
            s.size += data.len() as u64;
            if s.head.len() < SUMMARY_READ {
                let take = (SUMMARY_READ - s.head.len()).min(data.len());
                s.head.extend_from_slice(&data[..take]);
            }
            if let Err(e) = s.take(data).await
                && let Some(s) = spool.take()
            {
                tracing::error!(session, id = %s.id, path = %s.path.display(), error = %e, "cannot write the spool: the message goes on, but is not kept");
                if s.file.is_some() {
                    let _ = tokio::fs::remove_file(&s.path).await;
                }
            }
        }
    };
    // RFC 6152 3: no 8-bit octet to an upstream that did not offer 8BITMIME. Such content is
    // refused as a whole (554 5.6.3) and that upstream gets none of it.
    // The scan of the chunk only when some upstream taking it lacks 8BITMIME (rare).
    let seven_bit_leg = legs.iter().any(|l| {
        l.message.is_sending()
            && l.upstream()
                .is_some_and(|up| !up.capabilities().eightbitmime())
    });
    if seven_bit_leg && data.iter().any(|b| *b >= 0x80) {
        for leg in legs.iter_mut().filter(|l| l.message.is_sending()) {
            if leg
                .upstream()
                .is_none_or(|up| up.capabilities().eightbitmime())
            {
                continue;
            }
            let name = leg
                .upstream()
                .map(|up| up.name().to_string())
                .unwrap_or_default();
            let reply = Reply::new(
                554,
                (5, 6, 3),
                format!(
                    "message has 8-bit content and upstream {name} does not accept it (no 8BITMIME); send it 7-bit (base64 or quoted-printable)",
                ),
            );
            tracing::info!(session, upstream = %name, "8-bit content refused: the upstream offers no 8BITMIME");
            poisoned.get_or_insert(reply);
            leg.abort().await;
        }
    }
    let to_upstreams = legs.fan_out(|l| l.message.is_sending(), |leg| leg.body(data));
    let ((), sent) = tokio::join!(to_spool, to_upstreams);
    for (r, result) in sent {
        if let Err(e) = result {
            tracing::warn!(session, upstream = %e.upstream(), error = %e, "upstream failure");
            poisoned.get_or_insert(e.client_reply());
            let leg = &mut legs[r];
            leg.failure = Some(e.client_reply());
            leg.abort().await;
        }
    }
}
