//! One upstream session of a client session, for one route, and the legs of a session.

use super::*;

/// One upstream session of a client session, for one route, and what it did in the
/// transaction in progress.
pub(super) struct Leg {
    pub(super) route: RouteId,
    pub(super) up: Option<Upstream>,
    /// The upstream is inside a transaction (MAIL accepted, no final reply yet): RSET it
    /// before the next MAIL.
    pub(super) mail_sent: bool,
    /// Every RCPT sent in this transaction and the upstream's reply, for the spool record.
    pub(super) rcpt_replies: Vec<(String, String)>,
    /// The recipients this upstream accepted in this transaction, as the client was told.
    pub(super) accepted: Vec<(ForwardPath, RcptParams)>,
    /// How many RCPTs the upstream accepted in this transaction, including any sent ahead
    /// (pipelining) that the client's session then answered itself: when this differs from
    /// `accepted`, the envelope is replayed before DATA.
    pub(super) upstream_ok: usize,
    /// Where the message of this transaction stands with it.
    pub(super) message: LegMessage,
    /// The connection failed in this transaction: later RCPTs for this route get this.
    pub(super) failure: Option<Reply>,
}

impl Leg {
    pub(super) fn new(route: RouteId) -> Leg {
        Leg {
            route,
            up: None,
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

/// A session's legs, one per route (the default first), indexed by [`RouteId`] only.
pub(super) struct Legs(pub(super) Vec<Leg>);

impl Legs {
    pub(super) fn iter(&self) -> std::slice::Iter<'_, Leg> {
        self.0.iter()
    }

    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, Leg> {
        self.0.iter_mut()
    }

    /// Runs `op` on the upstream of every leg `which` picks (and that has one), all at once,
    /// and gives each result with its route, in route order: the one fan-out of DATA, the
    /// content, its flush and the end of data.
    pub(super) async fn fan_out<'a, T, Fut>(
        &'a mut self,
        which: impl Fn(&Leg) -> bool,
        op: impl Fn(&'a mut Upstream) -> Fut,
    ) -> Vec<(RouteId, T)>
    where
        Fut: std::future::Future<Output = T> + 'a,
    {
        futures_util::future::join_all(
            self.0
                .iter_mut()
                .filter(|l| which(l))
                .filter_map(|l| Some((l.route, l.up.as_mut()?)))
                .map(|(r, up)| {
                    let asked = op(up);
                    async move { (r, asked.await) }
                }),
        )
        .await
    }
}

impl std::ops::Index<RouteId> for Legs {
    type Output = Leg;
    fn index(&self, r: RouteId) -> &Leg {
        &self.0[r.slot()]
    }
}

impl std::ops::IndexMut<RouteId> for Legs {
    fn index_mut(&mut self, r: RouteId) -> &mut Leg {
        &mut self.0[r.slot()]
    }
}
