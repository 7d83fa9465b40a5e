//! The destinations of a client's transaction, one per route: a live upstream session, or
//! the queue (store and forward). Both take the same steps (MAIL, RCPT, DATA, the content,
//! the end of data, abort); the session drives them alike and never asks which it has.

use super::*;

/// Where a route's share of a transaction goes.
pub(super) enum Dest {
    /// A live upstream session: opened at its first need, kept across transactions, dropped
    /// (never reused in an unknown state) when it fails. Boxed: a leg not yet connected (every
    /// route of an idle session) costs a pointer, not a whole session.
    Upstream(Option<Box<Upstream>>),
    /// Store and forward: the relay's queue answers for the route and keeps the message
    /// durably before the client hears 250; the upstream is asked later, by the scheduler.
    Queue,
}

/// One destination of a client session, for one route, and what it did in the transaction
/// in progress.
pub(super) struct Leg {
    pub(super) route: RouteId,
    dest: Dest,
    /// The destination is inside a transaction (MAIL accepted, no final reply yet): RSET it
    /// before the next MAIL.
    pub(super) mail_sent: bool,
    /// Every RCPT sent in this transaction and the reply, for the spool record.
    pub(super) rcpt_replies: Vec<(ForwardPath, Reply)>,
    /// The recipients this destination accepted in this transaction, as the client was told.
    pub(super) accepted: Vec<(ForwardPath, RcptParams)>,
    /// How many RCPTs the destination accepted in this transaction, including any sent ahead
    /// (pipelining) that the client's session then answered itself: when this differs from
    /// `accepted`, the envelope is replayed before DATA.
    pub(super) upstream_ok: usize,
    /// Where the message of this transaction stands with it.
    pub(super) message: LegMessage,
    /// The connection failed in this transaction: later RCPTs for this route get this.
    pub(super) failure: Option<Reply>,
}

impl Leg {
    pub(super) fn new(route: RouteId, dest: Dest) -> Leg {
        Leg {
            route,
            dest,
            mail_sent: false,
            rcpt_replies: Vec::new(),
            accepted: Vec::new(),
            upstream_ok: 0,
            message: LegMessage::NotSent,
            failure: None,
        }
    }

    /// Forgets the transaction (the connection stays).
    pub(super) fn clear(&mut self) {
        self.rcpt_replies.clear();
        self.accepted.clear();
        self.upstream_ok = 0;
        self.message = LegMessage::NotSent;
        self.failure = None;
    }

    /// The live upstream session, when there is one.
    pub(super) fn upstream(&self) -> Option<&Upstream> {
        match &self.dest {
            Dest::Upstream(up) => up.as_deref(),
            Dest::Queue => None,
        }
    }

    pub(super) fn upstream_mut(&mut self) -> Option<&mut Upstream> {
        match &mut self.dest {
            Dest::Upstream(up) => up.as_deref_mut(),
            Dest::Queue => None,
        }
    }

    /// Takes the live upstream session out (to close it).
    pub(super) fn take_upstream(&mut self) -> Option<Upstream> {
        match &mut self.dest {
            Dest::Upstream(up) => up.take().map(|up| *up),
            Dest::Queue => None,
        }
    }

    /// Puts a live upstream session in; gives back the one it replaces.
    pub(super) fn set_upstream(&mut self, new: Upstream) -> Option<Upstream> {
        match &mut self.dest {
            Dest::Upstream(up) => up.replace(Box::new(new)).map(|up| *up),
            Dest::Queue => Some(new),
        }
    }

    /// Whether it can take a command now: the queue always can; an upstream once connected.
    pub(super) fn is_open(&self) -> bool {
        match &self.dest {
            Dest::Upstream(up) => up.is_some(),
            Dest::Queue => true,
        }
    }

    /// Whether commands can go to it as a group (the queue answers one by one, at once).
    pub(super) fn can_pipeline(&self) -> bool {
        self.upstream().is_some_and(Upstream::can_pipeline)
    }

    /// The reply an upstream gave to the message (none for the queue: its `250 queued as`
    /// is the relay's own), for the metrics of upstream replies.
    pub(super) fn upstream_answer(&self) -> Option<&Reply> {
        self.upstream().and(self.message.answer())
    }

    /// Whether the queue takes this transaction's message.
    pub(super) fn queues_message(&self) -> bool {
        matches!(self.dest, Dest::Queue) && !self.accepted.is_empty()
    }

    fn live(&mut self) -> &mut Upstream {
        self.upstream_mut()
            .expect("a live leg is opened before it is asked")
    }

    /// MAIL. The queue takes any sender now: it is checked when the message is delivered (a
    /// refusal then is a bounce).
    pub(super) async fn mail(
        &mut self,
        from: &ReversePath,
        params: &MailParams,
    ) -> Result<Reply, UpstreamError> {
        let reply = match &mut self.dest {
            Dest::Queue => Reply::new(250, (2, 1, 0), "Sender OK"),
            Dest::Upstream(_) => self.live().mail(from, params).await?,
        };
        if reply.is_positive() {
            self.mail_sent = true;
        }
        Ok(reply)
    }

    /// RCPT, and what the reply makes of the recipient.
    pub(super) async fn rcpt(
        &mut self,
        to: ForwardPath,
        params: RcptParams,
    ) -> Result<Reply, UpstreamError> {
        let reply = match &mut self.dest {
            Dest::Queue => Reply::new(250, (2, 1, 5), "Recipient OK, queued for delivery"),
            Dest::Upstream(_) => self.live().rcpt(&to, &params).await?,
        };
        if reply.is_positive() {
            self.upstream_ok += 1;
        }
        self.took_rcpt(to, params, &reply);
        Ok(reply)
    }

    /// Records the reply to a RCPT (sent now or ahead, in a group) as the client hears it.
    pub(super) fn took_rcpt(&mut self, to: ForwardPath, params: RcptParams, reply: &Reply) {
        self.rcpt_replies.push((to.clone(), reply.clone()));
        if reply.is_positive() {
            self.accepted.push((to, params));
        }
    }

    /// DATA: an upstream's reply; the queue's 354 (the content goes to its file).
    pub(super) async fn data(&mut self) -> Result<Reply, UpstreamError> {
        match &mut self.dest {
            Dest::Queue => Ok(Reply::plain(354, "to the queue")),
            Dest::Upstream(_) => self.live().data().await,
        }
    }

    /// A piece of the content. The queue's copy is written once for all its legs
    /// ([`Legs::stream_to_queue`]), so nothing here.
    pub(super) async fn body(&mut self, chunk: &[u8]) -> Result<(), UpstreamError> {
        match &mut self.dest {
            Dest::Queue => Ok(()),
            Dest::Upstream(_) => self.live().body(chunk).await,
        }
    }

    /// What an upstream holds of the content goes out now.
    pub(super) async fn flush_body(&mut self) -> Result<(), UpstreamError> {
        match &mut self.dest {
            Dest::Queue => Ok(()),
            Dest::Upstream(_) => self.live().flush_body().await,
        }
    }

    /// The end of data: an upstream's final reply; the queue's answer was given when it
    /// committed the message ([`Legs::enqueue`], before any end of data goes upstream).
    pub(super) async fn end_of_data(&mut self) -> Result<Reply, UpstreamError> {
        match &mut self.dest {
            Dest::Queue => Ok(self.message.answer().cloned().unwrap_or_else(|| {
                Reply::new(451, (4, 3, 0), "the queue did not take the message")
            })),
            Dest::Upstream(_) => self.live().end_of_data().await,
        }
    }

    /// The destination failed or the message is abandoned mid-way: an upstream session is
    /// closed without a word (so it delivers nothing); the queue forgets the message.
    pub(super) async fn abort(&mut self) {
        self.message.stop_sending();
        self.mail_sent = false;
        if let Some(up) = self.take_upstream() {
            up.abort().await;
        }
    }

    /// Before a new transaction: an upstream still inside one gets RSET (closed if that
    /// fails); the transaction is forgotten.
    pub(super) async fn reset(&mut self) {
        if self.mail_sent
            && let Some(up) = self.upstream_mut()
            && up.rset().await.is_err()
            && let Some(up) = self.take_upstream()
        {
            up.abort().await;
        }
        self.mail_sent = false;
        self.clear();
    }
}

/// The message of a transaction, as one leg sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) enum LegMessage {
    /// Not (yet) sent: no DATA, or the leg was dropped before it said 354.
    #[default]
    NotSent,
    /// It said 354: the content goes to it.
    Sending,
    /// Its verdict on the message: the reply to DATA when it refused, the final reply, `250
    /// queued as` for the queue, or the relay's 4xx when the connection failed after
    /// recipients were accepted.
    Answered(Reply),
}

impl LegMessage {
    pub(super) fn is_sending(&self) -> bool {
        *self == LegMessage::Sending
    }

    /// The verdict, once there is one.
    pub(super) fn answer(&self) -> Option<&Reply> {
        match self {
            LegMessage::Answered(r) => Some(r),
            _ => None,
        }
    }

    /// The content stops going to it (it failed, or the end of data is under way).
    pub(super) fn stop_sending(&mut self) {
        if self.is_sending() {
            *self = LegMessage::NotSent;
        }
    }
}

/// A session's legs, one per route (the default first), indexed by [`RouteId`] only, and the
/// queue's copy of the message being received when a route of the transaction queues.
pub(super) struct Legs {
    legs: Vec<Leg>,
    /// Store and forward: the message's content on its way to the queue (its trace header
    /// kept apart), one file for every route that queues (hard-linked per route when
    /// committed).
    /// Boxed, as what only a transaction needs: an idle session does not carry its room.
    queue_content: Option<Box<QueueFile>>,
}

/// What the queue keeps of a transaction besides its recipients and content.
pub(super) struct ToQueue<'a> {
    /// The message's id; a route's record is `<id>` or, with several routes queueing,
    /// `<id>-<route label>`.
    pub(super) id: &'a str,
    pub(super) from: Option<&'a ReversePath>,
    pub(super) params: Option<&'a MailParams>,
    pub(super) auth_user: Option<&'a str>,
    pub(super) config: &'a RelayConfig,
    /// The spool's copy of the message, which a large message's queue copy shares.
    pub(super) spool: Option<&'a mut Spool>,
}

impl Legs {
    /// One leg per route of `config`: the queue for a route that stores and forwards, an
    /// upstream (connected at its first need) for the others.
    pub(super) fn new(config: &RelayConfig) -> Legs {
        let legs = config
            .route_ids()
            .map(|r| {
                let dest = if config.route_queued(r) {
                    Dest::Queue
                } else {
                    Dest::Upstream(None)
                };
                Leg::new(r, dest)
            })
            .collect();
        Legs {
            legs,
            queue_content: None,
        }
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, Leg> {
        self.legs.iter()
    }

    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, Leg> {
        self.legs.iter_mut()
    }

    /// Runs `op` on every open leg `which` picks, all at once, and gives each result with its
    /// route, in route order: the one fan-out of DATA, the content, its flush and the end of
    /// data.
    pub(super) async fn fan_out<'a, T, Fut>(
        &'a mut self,
        which: impl Fn(&Leg) -> bool,
        op: impl Fn(&'a mut Leg) -> Fut,
    ) -> Vec<(RouteId, T)>
    where
        Fut: std::future::Future<Output = T> + 'a,
    {
        futures_util::future::join_all(
            self.legs
                .iter_mut()
                .filter(|l| l.is_open() && which(l))
                .map(|l| {
                    let r = l.route;
                    let asked = op(l);
                    async move { (r, asked.await) }
                }),
        )
        .await
    }

    /// Whether the queue takes this transaction's message (a route that queues has
    /// recipients).
    pub(super) fn queue_takes_message(&self) -> bool {
        self.legs.iter().any(Leg::queues_message)
    }

    /// Starts the queue's copy of message `id`: in memory until it outgrows
    /// [`journal::INLINE_MAX`](crate::queue::journal::INLINE_MAX), then the spool's file
    /// (`shares_spool`: hard-linked into the queue at the end) or a file of its own under the
    /// queue's `tmp/`.
    pub(super) fn begin_queue_content(
        &mut self,
        queue: &crate::queue::store::Queue,
        id: &str,
        trace: String,
        shares_spool: bool,
    ) {
        self.queue_content = Some(Box::new(QueueFile {
            content: Spool::new(id.to_string(), queue.tmp_path(id)),
            trace,
            shares_spool,
            in_spool: false,
            error: None,
        }));
    }

    /// A piece of the content to the queue's copy; the first write error is kept (the
    /// message is then refused with 452 4.3.1 at the end of data).
    pub(super) async fn stream_to_queue(&mut self, data: &[u8]) {
        if let Some(q) = self.queue_content.as_mut()
            && q.error.is_none()
        {
            q.content.size += data.len() as u64;
            if q.in_spool {
                return;
            }
            if q.shares_spool
                && q.content.pending.len() + data.len() >= crate::queue::journal::INLINE_MAX
            {
                // Too large for the journal: the spool's file will be the queue's as well.
                q.in_spool = true;
                q.content.pending = Vec::new();
                return;
            }
            if let Err(e) = q.content.take(data).await {
                q.error = Some(e.to_string());
            }
        }
    }

    /// The message ends without a delivery: the queue's copy is removed.
    pub(super) async fn discard_queue_content(&mut self) {
        if let Some(q) = self.queue_content.take() {
            let path = q.content.path.clone();
            drop(q);
            let _ = tokio::fs::remove_file(&path).await;
        }
    }

    /// The queue's end of data: the message is committed for each route that queues (one
    /// record per route, the content hard-linked), durably; those legs' answer is then `250
    /// queued as <id>`. Gives the records' ids by route. When it cannot, nothing is queued and
    /// the error is the client's 452 4.3.1.
    pub(super) async fn enqueue(
        &mut self,
        queue: Option<&crate::queue::store::Queue>,
        msg: ToQueue<'_>,
    ) -> Result<Vec<(RouteId, String)>, Reply> {
        let Some(mut qf) = self.queue_content.take() else {
            return Ok(Vec::new());
        };
        let refuse =
            |why: String| Reply::new(452, (4, 3, 1), format!("cannot queue the message: {why}"));
        let Some(queue) = queue else {
            return Err(refuse("no queue".into()));
        };
        let (path, size) = (qf.content.path.clone(), qf.content.size);
        let in_memory = !qf.in_spool && qf.content.file.is_none();
        let written = match qf.error.take() {
            Some(e) => Err(e),
            None if qf.in_spool => share_spool(msg.spool, &path).await.map(|()| Vec::new()),
            None if in_memory => Ok(std::mem::take(&mut qf.content.pending)),
            None => qf
                .content
                .finish()
                .await
                .map(|()| Vec::new())
                .map_err(|e| e.to_string()),
        };
        let mut bytes = match written {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(refuse(e));
            }
        };
        let routes: Vec<RouteId> = self
            .legs
            .iter()
            .filter(|l| l.queues_message())
            .map(|l| l.route)
            .collect();
        let now = chrono::Utc::now();
        let mut queued = Vec::new();
        for (n, &r) in routes.iter().enumerate() {
            let label = msg.config.route_label(r).to_string();
            let id = if routes.len() == 1 {
                msg.id.to_string()
            } else {
                format!("{}-{label}", msg.id)
            };
            let last = n + 1 == routes.len();
            let body = if in_memory {
                // The last route takes the bytes; only several routes copy them.
                let b = if last {
                    std::mem::take(&mut bytes)
                } else {
                    bytes.clone()
                };
                crate::queue::store::Body::Bytes(b)
            } else if last {
                crate::queue::store::Body::File(path.clone())
            } else {
                let link = queue.tmp_path(&id);
                if let Err(e) = std::fs::hard_link(&path, &link) {
                    return Err(refuse(e.to_string()));
                }
                crate::queue::store::Body::File(link)
            };
            let record = crate::queue::store::Queued {
                id: id.clone(),
                route: label,
                mail_from: msg.from.cloned().unwrap_or(ReversePath::Null),
                mail_params: msg.params.cloned().unwrap_or_default(),
                rcpts: self[r]
                    .accepted
                    .iter()
                    .map(|(to, _)| crate::queue::store::Rcpt {
                        to: to.clone(),
                        state: crate::queue::store::RcptState::Pending { last: None },
                    })
                    .collect(),
                auth_user: msg.auth_user.map(str::to_string),
                size: qf.trace.len() as u64 + size,
                received_at: now,
                attempts: 0,
                next_attempt: now,
                last_error: None,
                trace: Some(qf.trace.clone()),
            };
            if let Err(e) = queue.enqueue(body, record).await {
                return Err(refuse(e.to_string()));
            }
            self[r].message =
                LegMessage::Answered(Reply::new(250, (2, 0, 0), format!("queued as {id}")));
            queued.push((r, id));
        }
        Ok(queued)
    }
}

/// A large message's queue copy is the spool's file: written out whole, then hard-linked to
/// `to` in the queue's `tmp/` (one copy on disk; the queue's commit syncs it before the
/// client's 250). Where the two cannot share a file after all, a copy of it.
async fn share_spool(spool: Option<&mut Spool>, to: &std::path::Path) -> Result<(), String> {
    let Some(spool) = spool else {
        return Err("the spool's copy of the message was lost (see the log)".into());
    };
    spool.write_out().await.map_err(|e| e.to_string())?;
    if tokio::fs::hard_link(&spool.path, to).await.is_ok() {
        return Ok(());
    }
    tokio::fs::copy(&spool.path, to)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

impl std::ops::Index<RouteId> for Legs {
    type Output = Leg;
    fn index(&self, r: RouteId) -> &Leg {
        &self.legs[r.slot()]
    }
}

impl std::ops::IndexMut<RouteId> for Legs {
    fn index_mut(&mut self, r: RouteId) -> &mut Leg {
        &mut self.legs[r.slot()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue's name for a large message is the spool's file holding all of the message at
    /// once (not only the pieces the spool had written so far); a lost spool is an error.
    #[tokio::test]
    async fn share_spool_links_the_whole_message() {
        use std::os::unix::fs::MetadataExt;
        let dir = fake_upstream::testing::temp_dir("share-spool");
        let mut spool = Spool::new("m".into(), dir.join("m.eml"));
        let message: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        for piece in message.chunks(50_000) {
            spool.take(piece).await.unwrap();
        }
        assert!(
            !spool.pending.is_empty(),
            "the test needs a tail not yet written"
        );
        let link = dir.join("queued.eml");
        share_spool(Some(&mut spool), &link).await.unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), message);
        let (a, b) = (
            std::fs::metadata(&link).unwrap(),
            std::fs::metadata(&spool.path).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        let lost = share_spool(None, &dir.join("other.eml")).await.unwrap_err();
        assert!(
            lost.contains("spool's copy of the message was lost"),
            "{lost}"
        );
    }
}
