//! Upstream sessions kept for reuse (connection caching, as Postfix's): a route's session
//! whose client went away between transactions is kept idle for a while, and the next client
//! session on that route takes it instead of connecting, greeting, securing and
//! authenticating again. Only routes that log in with the relay's own credentials share their
//! sessions (a pass-through session carries its client's). A kept session is used again only
//! while it is still open (nothing came from the upstream meanwhile), under its message cap
//! (163 limits messages per connection, `MI:DMC`) and not idle past the limit; each route keeps
//! at most so many.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How sessions are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReuseSettings {
    /// Closed (QUIT) after this long unused.
    pub idle: Duration,
    /// Not kept once it has ended this many messages.
    pub max_messages: u32,
    /// Kept per route at most (beyond, a session is closed instead).
    pub max_idle: usize,
}

/// What the pool asks of a session.
pub(super) trait Reusable {
    /// Messages ended on it so far.
    fn messages(&self) -> u32;
    /// Whether nothing came from the other side while it was idle.
    fn still_open(&mut self) -> bool;
}

impl Reusable for crate::upstream::Upstream {
    fn messages(&self) -> u32 {
        crate::upstream::Upstream::messages(self)
    }

    fn still_open(&mut self) -> bool {
        crate::upstream::Upstream::still_open(self)
    }
}

/// The idle sessions, per route slot, oldest first.
pub(super) struct Pool<T> {
    settings: ReuseSettings,
    idle: Mutex<Vec<Vec<(T, Instant)>>>,
    /// Drained for shutdown: nothing is kept any more.
    closed: AtomicBool,
}

impl<T: Reusable> Pool<T> {
    pub(super) fn new(settings: ReuseSettings, routes: usize) -> Pool<T> {
        Pool {
            settings,
            idle: Mutex::new((0..routes).map(|_| Vec::new()).collect()),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<(T, Instant)>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kept session of route slot `r` that is still good, the most recently used first;
    /// those found stale on the way (idle too long, closed by the upstream) are given back, to
    /// be closed.
    pub(super) fn take(&self, r: usize, now: Instant) -> (Option<T>, Vec<T>) {
        let mut idle = self.lock();
        let mut stale = Vec::new();
        let Some(kept) = idle.get_mut(r) else {
            return (None, stale);
        };
        while let Some((mut up, since)) = kept.pop() {
            if now.duration_since(since) < self.settings.idle && up.still_open() {
                return (Some(up), stale);
            }
            stale.push(up);
        }
        (None, stale)
    }

    /// Keeps `up` for route slot `r` from `now`; gives it back (to be closed) when it has
    /// ended its most messages, the route keeps its most sessions already, or the pool was
    /// drained for shutdown.
    pub(super) fn put(&self, r: usize, up: T, now: Instant) -> Option<T> {
        if up.messages() >= self.settings.max_messages || self.closed.load(Ordering::Relaxed) {
            return Some(up);
        }
        let mut idle = self.lock();
        match idle.get_mut(r) {
            Some(kept) if kept.len() < self.settings.max_idle => {
                kept.push((up, now));
                None
            }
            _ => Some(up),
        }
    }

    /// The sessions idle past the limit at `now`, out of the pool (to be closed).
    pub(super) fn expired(&self, now: Instant) -> Vec<T> {
        let mut idle = self.lock();
        let mut out = Vec::new();
        for kept in idle.iter_mut() {
            let fresh = kept
                .iter()
                .position(|(_, since)| now.duration_since(*since) < self.settings.idle)
                .unwrap_or(kept.len());
            out.extend(kept.drain(..fresh).map(|(up, _)| up));
        }
        out
    }

    /// Every kept session, out of the pool, which keeps none from now on (at shutdown).
    pub(super) fn drain(&self) -> Vec<T> {
        let mut idle = self.lock();
        self.closed.store(true, Ordering::Relaxed);
        idle.iter_mut()
            .flat_map(|kept| kept.drain(..).map(|(up, _)| up))
            .collect()
    }

    /// How many sessions are kept now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Fake {
        id: u32,
        messages: u32,
        open: bool,
    }

    impl Reusable for Fake {
        fn messages(&self) -> u32 {
            self.messages
        }
        fn still_open(&mut self) -> bool {
            self.open
        }
    }

    fn fake(id: u32) -> Fake {
        Fake {
            id,
            messages: 1,
            open: true,
        }
    }

    const SETTINGS: ReuseSettings = ReuseSettings {
        idle: Duration::from_secs(5),
        max_messages: 3,
        max_idle: 2,
    };

    #[test]
    fn a_kept_session_is_taken_again_by_its_route_only() {
        let pool = Pool::new(SETTINGS, 2);
        let t0 = Instant::now();
        assert_eq!(pool.put(0, fake(1), t0), None);
        assert_eq!(
            pool.take(1, t0).0,
            None,
            "another route's session is not shared"
        );
        assert_eq!(pool.take(7, t0).0, None, "no such route");
        let (got, stale) = pool.take(0, t0 + Duration::from_secs(4));
        assert_eq!(got.map(|f| f.id), Some(1));
        assert!(stale.is_empty());
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn stale_sessions_are_handed_back_and_the_newest_good_one_taken() {
        let pool = Pool::new(
            ReuseSettings {
                max_idle: 4,
                ..SETTINGS
            },
            1,
        );
        let t0 = Instant::now();
        pool.put(0, fake(1), t0);
        pool.put(0, fake(2), t0 + Duration::from_secs(3));
        let mut closed = fake(3);
        closed.open = false;
        pool.put(0, closed, t0 + Duration::from_secs(4));
        // At 6 s: #3 was closed by the upstream, #2 is fresh, #1 is past the limit.
        let (got, stale) = pool.take(0, t0 + Duration::from_secs(6));
        assert_eq!(got.map(|f| f.id), Some(2));
        assert_eq!(stale.iter().map(|f| f.id).collect::<Vec<_>>(), [3]);
        let (got, stale) = pool.take(0, t0 + Duration::from_secs(6));
        assert_eq!(got, None);
        assert_eq!(stale.iter().map(|f| f.id).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn caps_on_messages_and_on_sessions_kept() {
        let pool = Pool::new(SETTINGS, 1);
        let t0 = Instant::now();
        let mut worn = fake(1);
        worn.messages = 3;
        assert_eq!(pool.put(0, worn, t0).map(|f| f.id), Some(1), "at its cap");
        assert_eq!(pool.put(0, fake(2), t0), None);
        assert_eq!(pool.put(0, fake(3), t0), None);
        assert_eq!(
            pool.put(0, fake(4), t0).map(|f| f.id),
            Some(4),
            "the route keeps 2"
        );
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn expiry_takes_the_old_ones_and_drain_takes_all() {
        let pool = Pool::new(SETTINGS, 2);
        let t0 = Instant::now();
        pool.put(0, fake(1), t0);
        pool.put(0, fake(2), t0 + Duration::from_secs(2));
        pool.put(1, fake(3), t0 + Duration::from_secs(1));
        let gone = pool.expired(t0 + Duration::from_secs(6));
        assert_eq!(gone.iter().map(|f| f.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.expired(t0 + Duration::from_secs(6)), []);
        assert_eq!(pool.drain().iter().map(|f| f.id).collect::<Vec<_>>(), [2]);
        assert_eq!(pool.len(), 0);
        assert_eq!(
            pool.put(0, fake(4), t0).map(|f| f.id),
            Some(4),
            "none kept after"
        );
    }
}
