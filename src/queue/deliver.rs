//! Delivery from the queue: one attempt per due message (its pending recipients, over one
//! upstream session), retries with exponential backoff and jitter, a route backed off as a
//! whole on quota replies (163's `MI:SFQ`, `RP:QRC`...), and a bounce (RFC 3464) for what
//! failed permanently or expired, never for a null sender.
//!
//! Delivery is at least once: between the upstream's 250 and the record being updated there
//! is a window in which a crash means the message is sent again after the restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use smtp_wire::{Credentials, ForwardPath, RcptParams, Reply, ReversePath};

use super::store::{Queue, Queued, RcptState};
use crate::upstream::{Upstream, UpstreamConfig};

/// When to try again, and when to give up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retry {
    /// After the first failed attempt (RFC 5321 4.5.4.1: at least 30 minutes).
    pub first: Duration,
    /// The longest wait between attempts.
    pub max: Duration,
    /// Give up (and bounce) this long after the message arrived (RFC: 4-5 days).
    pub lifetime: Duration,
    /// Each wait is varied by up to this fraction either way, so that retries spread.
    pub jitter: f64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            first: Duration::from_secs(30 * 60),
            max: Duration::from_secs(4 * 3600),
            lifetime: Duration::from_secs(5 * 86_400),
            jitter: 0.2,
        }
    }
}

/// The wait after the `attempts`-th failed attempt: `first * 2^(attempts-1)`, capped at
/// `max`, varied by `jitter` (`unit` is a random number in 0..1).
pub fn backoff(r: &Retry, attempts: u32, unit: f64) -> Duration {
    let doubling = 2f64.powi(attempts.saturating_sub(1).min(40) as i32);
    let base = (r.first.as_secs_f64() * doubling).min(r.max.as_secs_f64());
    let factor = 1.0 + r.jitter.clamp(0.0, 1.0) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    Duration::from_secs_f64((base * factor).max(0.0))
}

/// A reply that says the account or the route is over a quota (163's rate limits): the
/// whole route waits, not just this message.
pub fn is_quota(reply: &Reply) -> bool {
    let text = reply.text();
    reply.severity() == smtp_wire::Severity::Transient
        && [
            "MI:SFQ",
            "RP:QRC",
            "MI:DMC",
            "HL:ICC",
            "RP:DRC",
            "frequency limited",
        ]
        .iter()
        .any(|tag| text.contains(tag))
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Attempt {
    /// Every recipient is delivered or failed for good.
    Finished,
    /// Some recipients wait for another attempt.
    Again {
        reason: String,
        /// The whole route should wait: the upstream said it is over a quota, or it could not
        /// be reached.
        quota: bool,
    },
}

/// Sets the state of the recipients at `indexes` from a reply: 2xx delivered, 5xx failed,
/// anything else still pending.
fn settle(rec: &mut Queued, indexes: &[usize], reply: &Reply) {
    let said = crate::upstream::said(reply);
    for &i in indexes {
        rec.rcpts[i].state = match reply.severity() {
            smtp_wire::Severity::Completion => RcptState::Delivered {
                reply: said.clone(),
            },
            smtp_wire::Severity::Permanent => RcptState::Failed {
                reply: said.clone(),
            },
            _ => RcptState::Pending {
                last: Some(said.clone()),
            },
        };
    }
}

/// One attempt: the message's pending recipients, over one session with `upstream`. The
/// record is changed in memory; the caller makes it durable.
pub async fn attempt(queue: &Queue, rec: &mut Queued, upstream: &UpstreamConfig) -> Attempt {
    let mut conn = None;
    let outcome = attempt_on(&mut conn, queue, rec, upstream).await;
    if let Some(up) = conn {
        up.quit().await;
    }
    outcome
}

/// One attempt over `conn` (opened when `None`); a session left in a clean state is put back
/// into `conn` for the next message of the same route and sender, one lost is dropped.
pub async fn attempt_on(
    conn: &mut Option<Upstream>,
    queue: &Queue,
    rec: &mut Queued,
    upstream: &UpstreamConfig,
) -> Attempt {
    let again = |reason: String, quota: bool| Attempt::Again { reason, quota };
    let (from, params) = (rec.mail_from.clone(), rec.mail_params.clone());
    let sent_ids: Vec<usize> = (0..rec.rcpts.len())
        .filter(|&i| matches!(rec.rcpts[i].state, RcptState::Pending { .. }))
        .collect();
    let rcpts: Vec<(ForwardPath, RcptParams)> = sent_ids
        .iter()
        .map(|&i| (rec.rcpts[i].to.clone(), RcptParams::default()))
        .collect();
    if rcpts.is_empty() {
        return Attempt::Finished;
    }
    let body = match queue.content(&rec.id).await {
        Ok(body) => body,
        Err(e) => return again(format!("cannot read the queued content: {e}"), false),
    };
    let mut up = match conn.take() {
        Some(up) => up,
        None => match Upstream::connect(upstream).await {
            Ok(up) => up,
            // The route cannot be reached (or refuses the session): that holds for all its
            // messages, so the whole route waits, instead of each message trying on its own.
            Err(e) => return again(e.to_string(), true),
        },
    };
    let pieces;
    let content = match &body {
        crate::queue::store::Body::Bytes(b) => {
            pieces = [rec.trace(), b.as_slice()];
            crate::upstream::Content::Pieces(&pieces)
        }
        crate::queue::store::Body::File(path) => crate::upstream::Content::File(rec.trace(), path),
    };
    let msg = crate::upstream::Outbound {
        from: &from,
        params: &params,
        rcpts: &rcpts,
        content,
        pipelining: true,
    };
    let sent = match up.send_message(&msg, &mut |_, _| {}).await {
        Ok(sent) => sent,
        Err(e) => {
            up.abort().await;
            // Lost after the envelope: the upstream may or may not have the message. At
            // least once: it is sent again to those that accepted it.
            if let Some(env) = &e.envelope {
                settle_envelope(rec, &sent_ids, env, &e.error.to_string());
            }
            return again(e.error.to_string(), false);
        }
    };
    if sent.reusable {
        *conn = Some(up);
    }
    let verdict = sent.verdict();
    let quota = is_quota(verdict)
        || (sent.mail.is_positive() && sent.rcpts.iter().any(|r| !r.is_positive() && is_quota(r)));
    if !sent.mail.is_positive() {
        settle(rec, &sent_ids, verdict);
    } else {
        for (&i, reply) in sent_ids.iter().zip(&sent.rcpts) {
            if reply.is_positive() {
                settle(rec, &[i], verdict);
            } else {
                settle(rec, &[i], reply);
            }
        }
    }
    if rec.done() {
        Attempt::Finished
    } else if sent.rcpts.iter().any(Reply::is_positive) || !sent.mail.is_positive() {
        again(crate::upstream::said(verdict), quota)
    } else {
        again("every recipient deferred".into(), quota)
    }
}

/// After a failure past the envelope: the refused recipients are settled by their replies;
/// the accepted ones stay pending, with the failure as their last word.
fn settle_envelope(
    rec: &mut Queued,
    sent: &[usize],
    env: &crate::upstream::EnvelopeReplies,
    error: &str,
) {
    for (&i, reply) in sent.iter().zip(&env.rcpts) {
        if reply.is_positive() {
            rec.rcpts[i].state = RcptState::Pending {
                last: Some(error.to_string()),
            };
        } else {
            settle(rec, &[i], reply);
        }
    }
}

/// Where each route's messages go, and with which credentials.
pub trait Routes: Send + Sync {
    /// The upstream for a message (its route), with the credentials for its sender.
    fn upstream(&self, rec: &Queued) -> Option<UpstreamConfig>;
    /// The upstream that carries bounces to `sender`, with the credentials for it.
    fn bounces(&self, sender: &str) -> Option<UpstreamConfig>;
    /// How hard a route may be used (none by default).
    fn limits(&self, _route: &str) -> RouteLimits {
        RouteLimits::default()
    }
}

/// A route's own limits, so that the relay stays under an upstream's quotas (163: 50
/// messages a sender per 15 minutes...) instead of running into them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteLimits {
    /// Deliveries at once on this route.
    pub concurrency: Option<usize>,
    /// Deliveries started per minute on this route.
    pub per_minute: Option<u32>,
}

/// What the scheduler needs besides the queue.
pub struct Scheduler {
    pub queue: Queue,
    pub routes: Arc<dyn Routes>,
    pub retry: Retry,
    /// At most this many deliveries at once.
    pub concurrency: usize,
    /// How often the queue is looked at when nothing wakes the scheduler.
    pub tick: Duration,
    /// Our name in bounces.
    pub hostname: String,
    /// Woken when a message is enqueued.
    pub wake: Arc<tokio::sync::Notify>,
    /// Counts deliveries, deferrals and bounces.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// The messages due at `t` (their route not paused, not in flight already: they are marked
/// in flight here), grouped by route and sender (the same credentials): each group goes over
/// one upstream connection, at most [`BATCH`] messages.
fn group_due(
    due: Vec<Queued>,
    t: chrono::DateTime<chrono::Utc>,
    paused: &std::sync::Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
    in_flight: &std::sync::Mutex<std::collections::HashSet<String>>,
) -> Vec<(String, Vec<Queued>)> {
    let mut groups: Vec<(String, Vec<Queued>)> = Vec::new();
    for rec in due {
        if rec.next_attempt > t
            || paused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&rec.route)
                .is_some_and(|until| *until > t)
            || !in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rec.id.clone())
        {
            continue;
        }
        let key = match &rec.auth_user {
            Some(user) => format!("{}\n{user}", rec.route),
            None => format!("{}\n{}", rec.route, rec.mail_from),
        };
        match groups
            .iter_mut()
            .rev()
            .find(|(k, g)| *k == key && g.len() < BATCH)
        {
            Some((_, g)) => g.push(rec),
            None => groups.push((key, vec![rec])),
        }
    }
    groups
}

impl Scheduler {
    /// The queue's records, from its index, read off the async threads.
    async fn records(&self) -> Vec<Queued> {
        self.queue.take_requests().await;
        let q = self.queue.clone();
        let listed = tokio::task::spawn_blocking(move || q.list())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match listed {
            Ok((records, _)) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the queue");
                Vec::new()
            }
        }
    }

    /// Delivers until `shutdown`: every due message, each route waiting out its quota
    /// back-off, at most `concurrency` at once.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let me = Arc::new(self);
        let paused: Arc<std::sync::Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>> =
            Arc::default();
        let in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(me.concurrency.max(1)));
        // Per route: its own slots, and when it may start its next delivery.
        let mut route_gates: HashMap<String, Arc<tokio::sync::Semaphore>> = HashMap::new();
        let mut next_start: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let mut soonest: Option<tokio::time::Instant> = None;
            let due = me.records().await;
            let groups = group_due(due, now(), &paused, &in_flight);
            let release = |recs: &[Queued]| {
                let mut f = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                for r in recs {
                    f.remove(&r.id);
                }
            };
            for (_, group) in groups {
                let route = group[0].route.clone();
                // Every group of this listing is dispatched, waiting for a free slot: listing
                // the queue again for each few would make a large backlog crawl.
                let permit = tokio::select! {
                    p = gate.clone().acquire_owned() => p.expect("never closed"),
                    _ = smtp_net::stopped(&mut shutdown) => {
                        release(&group);
                        break;
                    }
                };
                while tasks.try_join_next().is_some() {}
                // The route may have been backed off while this group waited for its slot.
                if paused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&route)
                    .is_some_and(|until| *until > now())
                {
                    release(&group);
                    continue;
                }
                let limits = me.routes.limits(&route);
                let route_permit = match limits.concurrency {
                    Some(n) => {
                        let g = route_gates
                            .entry(route.clone())
                            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
                        match g.clone().try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => {
                                // The route is busy: the group waits for a later look.
                                release(&group);
                                continue;
                            }
                        }
                    }
                    None => None,
                };
                let mut every = None;
                if let Some(per_minute) = limits.per_minute {
                    let at = tokio::time::Instant::now();
                    let allowed = next_start.get(&route).copied().unwrap_or(at);
                    if allowed > at {
                        soonest = Some(soonest.map_or(allowed, |s| s.min(allowed)));
                        release(&group);
                        continue;
                    }
                    let e = Duration::from_secs_f64(60.0 / f64::from(per_minute.max(1)));
                    next_start.insert(route.clone(), at + e * group.len() as u32);
                    every = Some(e);
                }
                let (me, paused, in_flight) = (me.clone(), paused.clone(), in_flight.clone());
                tasks.spawn(async move {
                    let ids: Vec<String> = group.iter().map(|r| r.id.clone()).collect();
                    me.deliver_group(group, &paused, every).await;
                    let mut f = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    for id in ids {
                        f.remove(&id);
                    }
                    drop(route_permit);
                    drop(permit);
                });
            }
            while tasks.try_join_next().is_some() {}
            // The next look: after a tick, or when a rate-limited route may start again.
            let wait = soonest.map_or(me.tick, |s| {
                s.saturating_duration_since(tokio::time::Instant::now())
                    .min(me.tick)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = me.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = smtp_net::stopped(&mut shutdown) => break,
            }
        }
        // Attempts in flight finish (each bounded by the upstream timeouts).
        while tasks.join_next().await.is_some() {}
    }

    /// Delivers a group (one route, one sender) over one connection, spaced by the route's
    /// rate; stops early when the route is backed off meanwhile (the rest stay due).
    async fn deliver_group(
        &self,
        group: Vec<Queued>,
        paused: &std::sync::Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
        every: Option<Duration>,
    ) {
        let mut conn = None;
        for (i, mut rec) in group.into_iter().enumerate() {
            if i > 0
                && let Some(e) = every
            {
                tokio::time::sleep(e).await;
            }
            if paused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&rec.route)
                .is_some_and(|until| *until > now())
            {
                break;
            }
            let outcome = match self.routes.upstream(&rec) {
                Some(upstream) => attempt_on(&mut conn, &self.queue, &mut rec, &upstream).await,
                None => Attempt::Again {
                    reason: format!("no route named {}", rec.route),
                    quota: false,
                },
            };
            self.settle_outcome(rec, outcome, paused).await;
        }
        if let Some(up) = conn {
            up.quit().await;
        }
    }

    /// Makes an attempt's outcome durable: the record updated with its next attempt, or the
    /// message out of the queue (with a bounce for what failed).
    async fn settle_outcome(
        &self,
        mut rec: Queued,
        outcome: Attempt,
        paused: &std::sync::Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
    ) {
        rec.attempts += 1;
        // Deleted meanwhile (`smtp-relay queue delete`): leave it gone.
        if !self.queue.is_queued(&rec.id).await {
            tracing::info!(id = %rec.id, "queue: deleted during its delivery attempt");
            return;
        }
        let t = now();
        let expired = t.signed_duration_since(rec.received_at)
            >= chrono::Duration::from_std(self.retry.lifetime).unwrap_or(chrono::Duration::MAX);
        match outcome {
            Attempt::Again { reason, quota } if !expired => {
                let wait = backoff(
                    &self.retry,
                    rec.attempts,
                    fastrand_unit(&rec.id, rec.attempts),
                );
                rec.next_attempt = t + chrono::Duration::from_std(wait).unwrap_or_default();
                tracing::info!(id = %rec.id, route = %rec.route, attempts = rec.attempts, wait_s = wait.as_secs_f64(), reason = %reason, quota, outcome = "deferred", "queue");
                rec.last_error = Some(reason);
                if let Some(m) = &self.metrics {
                    crate::metrics::Metrics::inc(&m.deferred);
                }
                if quota {
                    paused.lock().unwrap_or_else(|e| e.into_inner()).insert(
                        rec.route.clone(),
                        t + chrono::Duration::from_std(wait).unwrap_or_default(),
                    );
                }
                if let Err(e) = self.queue.update(&rec).await {
                    tracing::error!(id = %rec.id, error = %e, "cannot update a queued message");
                }
            }
            other => {
                if let Attempt::Again { reason, .. } = &other {
                    for r in &mut rec.rcpts {
                        if let RcptState::Pending { last } = &r.state {
                            r.state = RcptState::Failed {
                                reply: format!(
                                    "expired after {} attempts; last: {}",
                                    rec.attempts,
                                    last.clone().unwrap_or_else(|| reason.clone())
                                ),
                            };
                        }
                    }
                }
                self.bounce(&rec).await;
                if let Some(m) = &self.metrics {
                    let failed = rec
                        .rcpts
                        .iter()
                        .any(|r| matches!(r.state, RcptState::Failed { .. }));
                    let any_delivered = rec
                        .rcpts
                        .iter()
                        .any(|r| matches!(r.state, RcptState::Delivered { .. }));
                    if any_delivered {
                        crate::metrics::Metrics::inc(&m.delivered);
                    }
                    if failed {
                        crate::metrics::Metrics::inc(&m.bounced);
                    }
                }
                let delivered = rec
                    .rcpts
                    .iter()
                    .filter(|r| matches!(r.state, RcptState::Delivered { .. }))
                    .count();
                tracing::info!(id = %rec.id, route = %rec.route, attempts = rec.attempts, delivered, failed = rec.rcpts.len() - delivered, outcome = "done", "queue");
                if let Err(e) = self.queue.remove(&rec.id).await {
                    tracing::error!(id = %rec.id, error = %e, "cannot remove a delivered message from the queue");
                }
            }
        }
    }

    /// A bounce for the failed recipients, unless there are none or the sender is null.
    async fn bounce(&self, rec: &Queued) {
        let failures: Vec<crate::dsn::Failure> = rec
            .rcpts
            .iter()
            .filter_map(|r| match &r.state {
                RcptState::Failed { reply } => Some(crate::dsn::Failure {
                    recipient: match r.to.mailbox() {
                        Some(m) => m.to_string(),
                        None => r.to.to_string(),
                    },
                    remote: rec.route.clone(),
                    reply: Reply::parse(format!("{reply}\r\n").as_bytes())
                        .unwrap_or_else(|_| Reply::new(550, (5, 0, 0), reply.clone())),
                }),
                _ => None,
            })
            .collect();
        let ReversePath::Mailbox(mailbox) = &rec.mail_from else {
            return;
        };
        if failures.is_empty() {
            return;
        }
        let sender = &mailbox.to_string();
        let Some(upstream) = self.routes.bounces(sender) else {
            tracing::error!(id = %rec.id, "no route for bounces");
            return;
        };
        // Only the start: a bounce returns the header section, and the message may be large.
        let mut head = rec.trace().to_vec();
        match self.queue.content(&rec.id).await {
            Ok(crate::queue::store::Body::Bytes(b)) => head.extend_from_slice(&b),
            Ok(crate::queue::store::Body::File(p)) => {
                head.extend(read_start(&p, crate::dsn::MAX_RETURNED_HEADERS).await)
            }
            Err(_) => {}
        }
        let bounce = crate::dsn::Bounce::new(&crate::dsn::Report {
            reporting_mta: &self.hostname,
            to: sender,
            original_id: &rec.id,
            envelope_id: None,
            arrival: rec.received_at,
            failures: &failures,
            original_headers: &head,
        });
        match crate::dsn::send(&upstream, mailbox, &bounce).await {
            Ok(r) => tracing::info!(id = %rec.id, to = %sender, reply = %r, "bounce"),
            Err(e) => tracing::warn!(id = %rec.id, to = %sender, error = %e, "bounce failed"),
        }
    }
}

/// The first `max` octets of a file (fewer if it is shorter; none if it cannot be read),
/// without blocking the runtime's threads.
async fn read_start(path: &std::path::Path, max: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    if let Ok(file) = tokio::fs::File::open(path).await {
        let _ = file.take(max as u64).read_to_end(&mut out).await;
    }
    out
}

/// A number in 0..1 from the message and the attempt: jitter without a random generator,
/// different for each message.
fn fastrand_unit(id: &str, attempts: u32) -> f64 {
    // FNV-1a, then SplitMix64's finaliser: FNV's high bits barely move between similar
    // inputs.
    let mut z = crate::fnv64(format!("{id}/{attempts}").as_bytes());
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Messages of one route and sender sent over one upstream connection.
const BATCH: usize = 20;

/// Credentials for a sender, from the relay's secrets store (never the queue).
pub type Secrets = Arc<dyn Fn(&str) -> Option<Credentials> + Send + Sync>;

/// A secrets store of fixed entries, (address, credentials); addresses match without case.
pub fn secrets_from(entries: impl IntoIterator<Item = (String, Credentials)>) -> Secrets {
    let map: std::collections::HashMap<String, Credentials> = entries
        .into_iter()
        .map(|(a, c)| (a.to_lowercase(), c))
        .collect();
    Arc::new(move |who: &str| map.get(&who.to_lowercase()).cloned())
}

/// A secrets store of accounts that log in as their address, (address, code) pairs.
pub fn secrets_of(accounts: &[(String, String)]) -> Secrets {
    secrets_from(
        accounts
            .iter()
            .map(|(a, c)| (a.clone(), Credentials::new(a.clone(), c.clone()))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let r = Retry {
            first: Duration::from_secs(60),
            max: Duration::from_secs(600),
            lifetime: Duration::from_secs(86_400),
            jitter: 0.2,
        };
        assert_eq!(backoff(&r, 1, 0.5), Duration::from_secs(60));
        assert_eq!(backoff(&r, 2, 0.5), Duration::from_secs(120));
        assert_eq!(backoff(&r, 3, 0.5), Duration::from_secs(240));
        assert_eq!(backoff(&r, 5, 0.5), Duration::from_secs(600), "capped");
        assert_eq!(backoff(&r, 400, 0.5), Duration::from_secs(600));
        assert_eq!(backoff(&r, 1, 0.0), Duration::from_secs(48));
        assert_eq!(backoff(&r, 1, 1.0), Duration::from_secs(72));
        let units: Vec<f64> = (0..100).map(|i| fastrand_unit("m", i)).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(units.iter().any(|u| *u < 0.3) && units.iter().any(|u| *u > 0.7));
    }

    #[test]
    fn quota_replies_are_recognised() {
        assert!(is_quota(&Reply::plain(
            451,
            "MI:SFQ 163 smtp9,DcCow 1795672909"
        )));
        assert!(is_quota(&Reply::plain(451, "RP:QRC 163 smtp9")));
        assert!(is_quota(&Reply::plain(421, "HL:ICC 163 smtp9")));
        assert!(
            !is_quota(&Reply::plain(554, "MI:STC 163 smtp9")),
            "a 5xx is not retried"
        );
        assert!(!is_quota(&Reply::plain(451, "Requested action aborted")));
    }
}
