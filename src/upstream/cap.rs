//! A cap on the sessions open at once to one upstream. Providers count a sender's concurrent
//! connections and refuse the one past their limit at the greeting (163: `421 HL:ICC`, "too
//! many concurrent connections from this IP", and a while of refusals after); a relay whose
//! clients all go out through one address must stay under it. Each open session, busy or kept
//! idle for the next client, holds a [`Slot`]; a session that finds none free waits for one
//! (or for a kept session to come back) up to a deadline, then gives up with a transient
//! reply ([`UpstreamError::Busy`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::UpstreamError;

/// The cap of one upstream (shared by the sessions that go there).
#[derive(Debug)]
pub struct SessionCap {
    slots: Arc<Semaphore>,
    max: usize,
    /// Rung when a slot is given back or a session is kept for the next client: either may
    /// be what a waiting session needs.
    freed: Notify,
}

/// One of the cap's slots, held by an open session; given back when dropped (the session
/// closed).
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    cap: Arc<SessionCap>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The slot first, then the bell: a waiter woken before the slot is free would find
        // none and wait again, and the notification would be spent.
        drop(self.permit.take());
        self.cap.freed.notify_one();
    }
}

/// What a session waiting under the cap got.
#[derive(Debug)]
pub enum Granted<T> {
    /// A slot for a new session.
    Slot(Slot),
    /// What `reuse` found (a kept session: it holds its own slot).
    Kept(T),
}

impl SessionCap {
    /// A cap of `max` sessions (at least one).
    pub fn new(max: usize) -> Arc<SessionCap> {
        let max = max.max(1);
        Arc::new(SessionCap {
            slots: Arc::new(Semaphore::new(max)),
            max,
            freed: Notify::new(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// A slot if one is free now.
    pub fn try_slot(self: &Arc<Self>) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(Slot {
                permit: Some(permit),
                cap: self.clone(),
            }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => None,
        }
    }

    /// Says that a session was kept for the next client (a waiter may take it).
    pub fn kept(&self) {
        self.freed.notify_one();
    }

    /// A kept session (`reuse`, tried first each time) or a free slot, waiting up to `wait`
    /// for either; `on_wait` runs once, when the wait begins. Past `wait`: the error for the
    /// client, naming `upstream`.
    pub async fn wait<T, F, Fut>(
        self: &Arc<Self>,
        upstream: &str,
        wait: Duration,
        mut reuse: F,
        on_wait: impl FnOnce(usize),
    ) -> Result<Granted<T>, UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        let mut on_wait = Some(on_wait);
        loop {
            // Registered before looking, so that a slot freed between the look and the wait
            // is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(kept) = reuse().await {
                return Ok(Granted::Kept(kept));
            }
            if let Some(slot) = self.try_slot() {
                return Ok(Granted::Slot(slot));
            }
            if let Some(f) = on_wait.take() {
                f(self.open());
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(UpstreamError::Busy {
                    upstream: upstream.to_string(),
                    open: self.max,
                    waited: wait,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn nothing_kept() -> Option<u32> {
        None
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_given_back_goes_to_the_waiter() {
        let cap = SessionCap::new(2);
        let a = cap.try_slot().unwrap();
        let _b = cap.try_slot().unwrap();
        assert!(cap.try_slot().is_none());
        assert_eq!(cap.open(), 2);
        let waiter = {
            let cap = cap.clone();
            tokio::spawn(async move {
                let mut waited = None;
                let got = cap
                    .wait("up", Duration::from_secs(30), nothing_kept, |open| {
                        waited = Some(open)
                    })
                    .await;
                (got, waited)
            })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiter.is_finished());
        drop(a);
        let (got, waited) = waiter.await.unwrap();
        assert!(matches!(got, Ok(Granted::Slot(_))), "{got:?}");
        assert_eq!(waited, Some(2));
        assert_eq!(cap.open(), 2, "the waiter holds the slot given back");
        drop(got);
        assert_eq!(cap.open(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_kept_meanwhile_goes_to_the_waiter() {
        let cap = SessionCap::new(1);
        let _busy = cap.try_slot().unwrap();
        let pool = Arc::new(std::sync::Mutex::new(None::<u32>));
        let waiter = {
            let (cap, pool) = (cap.clone(), pool.clone());
            tokio::spawn(async move {
                cap.wait(
                    "up",
                    Duration::from_secs(30),
                    || {
                        let got = pool.lock().unwrap().take();
                        async move { got }
                    },
                    |_| {},
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        *pool.lock().unwrap() = Some(7);
        cap.kept();
        assert!(matches!(waiter.await.unwrap(), Ok(Granted::Kept(7))));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_wait_the_client_hears_a_transient_reply() {
        let cap = SessionCap::new(1);
        let _busy = cap.try_slot().unwrap();
        let t0 = tokio::time::Instant::now();
        let e = cap
            .wait(
                "smtp.163.com:465",
                Duration::from_secs(30),
                nothing_kept,
                |_| {},
            )
            .await
            .unwrap_err();
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        let reply = e.client_reply();
        assert_eq!(reply.code, 451);
        assert_eq!(
            reply.to_string(),
            "451 4.4.5 upstream smtp.163.com:465: sessions: 1 of 1 busy (max_sessions) for 30s, try again later"
        );
    }

    #[test]
    fn a_cap_is_at_least_one() {
        let cap = SessionCap::new(0);
        assert_eq!(cap.max(), 1);
        let s = cap.try_slot();
        assert!(s.is_some());
        assert!(cap.try_slot().is_none());
        drop(s);
        assert!(cap.try_slot().is_some());
    }
}
