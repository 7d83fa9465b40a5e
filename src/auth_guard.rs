//! Failed AUTHs counted across sessions, so that the relay keeps its upstream's trust. In
//! pass-through mode every client AUTH is replayed upstream from the relay's one address, and
//! an upstream such as 163 bans that address after five failures (15 minutes, for every user).
//! The guard refuses locally, well before that: a client address with too many recent
//! failures, every AUTH towards an upstream that has seen too many failures through the relay,
//! a (user, secret) pair the upstream refused a short while ago (remembered by a keyed hash,
//! never the secret), and, for a while, every AUTH towards an upstream that refuses the relay
//! itself (`554 IP is rejected ...`, `421 HL:ICC`).
//!
//! Pure bookkeeping: every call is given the time, so the tests drive a clock of their own.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smtp_wire::Reply;

/// The thresholds; the defaults stay under 163's (five failures from one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthLimits {
    /// Failures from one client address within `window` before its AUTHs are refused locally.
    pub per_client: u32,
    /// Failures towards one upstream (all clients) within `window` before AUTHs towards it
    /// are refused locally.
    pub per_upstream: u32,
    pub window: Duration,
    /// How long a client address stays refused once it reached `per_client`.
    pub block: Duration,
    /// How long a refused (user, secret) pair is answered without asking the upstream.
    pub remember_refused: Duration,
    /// How long AUTH waits after the upstream refused the relay itself at connect.
    pub relay_refused_pause: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            per_client: 3,
            per_upstream: 4,
            window: Duration::from_secs(15 * 60),
            block: Duration::from_secs(15 * 60),
            remember_refused: Duration::from_secs(60 * 60),
            relay_refused_pause: Duration::from_secs(60),
        }
    }
}

/// Whether an AUTH goes upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Ask,
    /// Answer this without asking the upstream.
    Refuse(Refusal),
}

/// Why an AUTH was answered locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The upstream refuses the relay itself (its reply at connect).
    RelayRefused(Reply),
    ClientBlocked,
    UpstreamPaused,
    KnownBad,
}

impl Refusal {
    /// For the log and the metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::RelayRefused(_) => "upstream refuses the relay",
            Refusal::ClientBlocked => "client address blocked",
            Refusal::UpstreamPaused => "upstream paused",
            Refusal::KnownBad => "credentials refused before",
        }
    }

    /// The client's reply, naming the upstream; `wait`: until the refusal ends.
    pub fn reply(&self, upstream: &str, wait: Duration) -> Reply {
        let minutes = wait.as_secs().div_ceil(60).max(1);
        match self {
            Refusal::RelayRefused(r) => Reply::new(
                454,
                (4, 7, 0),
                format!(
                    "upstream {upstream} refuses this relay's address for now ({}); try again in {minutes} min",
                    crate::upstream::said(r)
                ),
            ),
            Refusal::ClientBlocked => Reply::new(
                454,
                (4, 7, 0),
                format!(
                    "Too many failed authentications from your address; try again in {minutes} min"
                ),
            ),
            Refusal::UpstreamPaused => Reply::new(
                454,
                (4, 7, 0),
                format!(
                    "Authentication towards {upstream} paused after too many failures through this relay (it would ban the relay's address); try again in {minutes} min"
                ),
            ),
            Refusal::KnownBad => Reply::new(
                535,
                (5, 7, 8),
                format!(
                    "Authentication failed: {upstream} refused these credentials a short while ago; fix them before trying again"
                ),
            ),
        }
    }
}

/// The guard, shared by every session of a relay.
#[derive(Debug)]
pub struct AuthGuard {
    limits: AuthLimits,
    /// The key of the pairs' hash: random per process, so that the hashes say nothing.
    key: std::collections::hash_map::RandomState,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Recent failures per client address, and until when it is blocked.
    clients: HashMap<IpAddr, (Vec<Instant>, Option<Instant>)>,
    /// Recent failures per upstream, and the relay's own refusal with its end.
    upstreams: HashMap<String, (Vec<Instant>, Option<RelayRefusal>)>,
    /// Refused (upstream, user, secret) hashes, with their expiry.
    refused: HashMap<u64, Instant>,
}

/// Until when an upstream refuses the relay itself, and what it said.
type RelayRefusal = (Instant, Reply);

/// Above this many entries, expired ones are dropped at the next call.
const PRUNE_ABOVE: usize = 1024;

impl AuthGuard {
    pub fn new(limits: AuthLimits) -> AuthGuard {
        AuthGuard {
            limits,
            key: Default::default(),
            state: Mutex::default(),
        }
    }

    pub fn limits(&self) -> AuthLimits {
        self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pair(&self, upstream: &str, user: &str, secret: &str) -> u64 {
        self.key
            .hash_one((upstream, user.to_ascii_lowercase(), secret))
    }

    /// Whether an AUTH from `client` as `user` with `secret` may be asked of `upstream`, and
    /// if not, why and for how long.
    pub fn admit(
        &self,
        now: Instant,
        client: IpAddr,
        upstream: &str,
        user: &str,
        secret: &str,
    ) -> (Admission, Duration) {
        let l = self.limits;
        let pair = self.pair(upstream, user, secret);
        let mut st = self.state();
        prune(&mut st, now, l.window);
        if let Some((_, Some((until, reply)))) = st.upstreams.get(upstream)
            && *until > now
        {
            return (
                Admission::Refuse(Refusal::RelayRefused(reply.clone())),
                *until - now,
            );
        }
        if let Some((_, Some(until))) = st.clients.get(&client)
            && *until > now
        {
            return (Admission::Refuse(Refusal::ClientBlocked), *until - now);
        }
        if let Some((fails, _)) = st.upstreams.get(upstream) {
            let recent: Vec<&Instant> = fails.iter().filter(|t| now - **t < l.window).collect();
            if recent.len() as u32 >= l.per_upstream {
                let wait = l.window - (now - *recent[0]);
                return (Admission::Refuse(Refusal::UpstreamPaused), wait);
            }
        }
        if let Some(until) = st.refused.get(&pair)
            && *until > now
        {
            return (Admission::Refuse(Refusal::KnownBad), *until - now);
        }
        (Admission::Ask, Duration::ZERO)
    }

    /// An AUTH from `client` failed: `asked`, whether the upstream said so (then the pair is
    /// remembered and the upstream's count grows) or the guard did.
    pub fn failed(
        &self,
        now: Instant,
        client: IpAddr,
        upstream: &str,
        user: &str,
        secret: &str,
        asked: bool,
    ) {
        let l = self.limits;
        let pair = self.pair(upstream, user, secret);
        let mut st = self.state();
        let (fails, blocked) = st.clients.entry(client).or_default();
        fails.retain(|t| now - *t < l.window);
        fails.push(now);
        if fails.len() as u32 >= l.per_client {
            *blocked = Some(now + l.block);
            fails.clear();
        }
        if asked {
            let (fails, _) = st.upstreams.entry(upstream.to_string()).or_default();
            fails.retain(|t| now - *t < l.window);
            fails.push(now);
            st.refused.insert(pair, now + l.remember_refused);
        }
    }

    /// An AUTH from `client` succeeded: its earlier failures are forgiven.
    pub fn succeeded(&self, client: IpAddr) {
        let mut st = self.state();
        if let Some((fails, None)) = st.clients.get_mut(&client) {
            fails.clear();
        }
    }

    /// `upstream` refused the relay itself at connect (`reply`): AUTH towards it waits.
    pub fn relay_refused(&self, now: Instant, upstream: &str, reply: Reply) {
        let until = now + self.limits.relay_refused_pause;
        self.state()
            .upstreams
            .entry(upstream.to_string())
            .or_default()
            .1 = Some((until, reply));
    }
}

/// Whether a refusal is the upstream refusing the relay's own address: 163's `554 IP is
/// rejected, smtp auth error limit exceed` (at connect or in answer to AUTH) and its `HL:`
/// concurrency and frequency limits (`421 HL:ICC`, `554 HL:IFQ`); at the greeting (`at_connect`)
/// also any 554 (RFC 5321 3.1: no service here).
pub fn refuses_the_relay(reply: &Reply, at_connect: bool) -> bool {
    let text = reply.lines.join(" ").to_ascii_lowercase();
    (at_connect && reply.code == 554) || text.contains("ip is rejected") || text.contains("hl:")
}

fn prune(st: &mut State, now: Instant, window: Duration) {
    if st.clients.len() > PRUNE_ABOVE {
        st.clients.retain(|_, (fails, blocked)| {
            blocked.is_some_and(|b| b > now) || fails.iter().any(|t| now - *t < window)
        });
    }
    if st.refused.len() > PRUNE_ABOVE {
        st.refused.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: &str = "smtp.163.com";

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_client_is_blocked_after_its_third_failure_across_sessions() {
        let g = AuthGuard::new(AuthLimits::default());
        let t0 = Instant::now();
        for i in 0..3 {
            let now = t0 + Duration::from_secs(i * 60);
            let secret = format!("guess{i}");
            assert_eq!(g.admit(now, ip(1), UP, "bob", &secret).0, Admission::Ask);
            g.failed(now, ip(1), UP, "bob", &secret, true);
        }
        let now = t0 + Duration::from_secs(180);
        let (a, wait) = g.admit(now, ip(1), UP, "bob", "guess4");
        assert_eq!(a, Admission::Refuse(Refusal::ClientBlocked));
        assert_eq!(wait, Duration::from_secs(15 * 60 - 60));
        // Another client is not blocked, and after the block the first may try again.
        assert_eq!(g.admit(now, ip(2), UP, "amy", "x").0, Admission::Ask);
        let later = t0 + Duration::from_secs(120 + 15 * 60);
        assert_eq!(g.admit(later, ip(1), UP, "bob", "guess4").0, Admission::Ask);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let g = AuthGuard::new(AuthLimits::default());
        let t0 = Instant::now();
        for i in 0..10 {
            let now = t0 + Duration::from_secs(i * 8 * 60);
            let secret = format!("typo{i}");
            assert_eq!(
                g.admit(now, ip(1), UP, "bob", &secret).0,
                Admission::Ask,
                "{i}"
            );
            g.failed(now, ip(1), UP, "bob", &secret, true);
        }
    }

    #[test]
    fn the_upstream_is_protected_from_many_clients_together() {
        let g = AuthGuard::new(AuthLimits::default());
        let t0 = Instant::now();
        for n in 0..4 {
            assert_eq!(g.admit(t0, ip(n), UP, "u", "bad").0, Admission::Ask);
            g.failed(t0, ip(n), UP, "u", &format!("bad{n}"), true);
        }
        let (a, _) = g.admit(t0, ip(9), UP, "carol", "right");
        assert_eq!(a, Admission::Refuse(Refusal::UpstreamPaused));
        assert_eq!(
            g.admit(t0, ip(9), "smtp.qq.com", "carol", "right").0,
            Admission::Ask,
            "another upstream is not paused"
        );
    }

    #[test]
    fn a_refused_pair_is_refused_without_asking_and_counts_for_the_client_only() {
        let g = AuthGuard::new(AuthLimits::default());
        let t0 = Instant::now();
        g.failed(t0, ip(1), UP, "Bob@163.com", "wrong", true);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            g.admit(t1, ip(2), UP, "bob@163.com", "wrong").0,
            Admission::Refuse(Refusal::KnownBad)
        );
        assert_eq!(
            g.admit(t1, ip(2), UP, "bob@163.com", "right").0,
            Admission::Ask
        );
        g.failed(t1, ip(2), UP, "bob@163.com", "wrong", false);
        let st = g.state();
        assert_eq!(
            st.upstreams[UP].0.len(),
            1,
            "not asked: not the upstream's failure"
        );
        assert_eq!(st.clients[&ip(2)].0.len(), 1);
        assert!(
            !format!("{:?}", *st).contains("wrong"),
            "the secret is never kept"
        );
    }

    #[test]
    fn an_upstream_refusing_the_relay_pauses_auth_towards_it() {
        let g = AuthGuard::new(AuthLimits::default());
        let t0 = Instant::now();
        let ban = Reply::plain(554, "IP is rejected, smtp auth error limit exceed");
        assert!(refuses_the_relay(&ban, false));
        assert!(refuses_the_relay(&Reply::plain(421, "HL:ICC"), true));
        assert!(refuses_the_relay(&Reply::plain(554, "go away"), true));
        assert!(!refuses_the_relay(&Reply::plain(554, "go away"), false));
        assert!(!refuses_the_relay(&Reply::plain(421, "Service busy"), true));
        g.relay_refused(t0, UP, ban.clone());
        let (a, wait) = g.admit(t0, ip(1), UP, "u", "s");
        assert_eq!(a, Admission::Refuse(Refusal::RelayRefused(ban)));
        assert_eq!(wait, Duration::from_secs(60));
        let reply = Refusal::ClientBlocked.reply(UP, wait);
        assert_eq!(reply.code, 454);
        assert_eq!(
            g.admit(t0 + Duration::from_secs(61), ip(1), UP, "u", "s").0,
            Admission::Ask
        );
    }

    #[test]
    fn success_forgives_a_clients_earlier_typos() {
        let g = AuthGuard::new(AuthLimits::default());
        let t0 = Instant::now();
        g.failed(t0, ip(1), UP, "bob", "typo1", true);
        g.failed(t0, ip(1), UP, "bob", "typo2", true);
        g.succeeded(ip(1));
        g.failed(t0, ip(1), UP, "bob", "typo3", true);
        assert_eq!(g.admit(t0, ip(1), UP, "bob", "right").0, Admission::Ask);
    }
}
