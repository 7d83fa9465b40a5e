//! Scripted faults: per stage of a session, override the reply, delay it, drop the connection
//! before or after replying, stall, or fail the TLS handshake; selected by occurrence, by
//! address, or with a seeded probability. Deterministic for a given seed and client script.
//!
//! In a config file:
//! ```toml
//! [[faults]]
//! stage = "rcpt"
//! address = "bob@163.com"
//! first = 2
//! reply = "451 Requested action aborted: local error in processing"
//! ```
//! and through the API: `Fault::on(Stage::Rcpt).address("bob@163.com").first(2).reply("451 ...")`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use smtp_wire::Reply;

use crate::error::Error;

mod text;
use crate::persona::parse_reply;
pub use text::{fault_text, parse_duration, parse_fault};

/// Where in a session a fault applies.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The TCP connection is accepted (before the greeting, before TLS on the TLS listener).
    Connect,
    Greeting,
    Ehlo,
    Helo,
    Starttls,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// After the end of data, before the final reply.
    EndOfData,
    Quit,
}

/// Drop the connection before or after sending the reply.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DropWhen {
    Before,
    After,
}

/// One fault: a selector and what to do.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub stage: Stage,
    /// For `mail` and `rcpt`: only this address (case-insensitive).
    #[serde(default)]
    pub address: Option<String>,
    /// Only the n-th matching occurrence (from 1).
    #[serde(default)]
    pub nth: Option<u64>,
    /// The first n matching occurrences.
    #[serde(default)]
    pub first: Option<u64>,
    /// Every k-th matching occurrence.
    #[serde(default)]
    pub every: Option<u64>,
    /// Each matching occurrence with this probability (seeded by the config's `seed`).
    #[serde(default)]
    pub probability: Option<f64>,
    /// Send this reply instead (for `end_of_data`: the message is not kept).
    #[serde(default)]
    pub reply: Option<String>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub drop: Option<DropWhen>,
    /// Never answer; the connection stays open until the client gives up or shutdown.
    #[serde(default)]
    pub stall: bool,
    /// For `connect` on the TLS listener and for `starttls`: break the handshake.
    #[serde(default)]
    pub tls_fail: bool,
    /// Only in the first this many milliseconds after the faults were set (the server's start,
    /// or [`crate::Handle::set_faults`]): an outage that ends by itself.
    #[serde(default)]
    pub for_ms: Option<u64>,
    /// A quota that refills: the first `count` matching occurrences in any `per_ms` window
    /// pass, the ones beyond fire (`quota = { count = 3, per_ms = 900000 }`). Occurrences
    /// that fired do not use the quota up, so it refills as the window slides.
    #[serde(default)]
    pub quota: Option<Quota>,
}

/// `count` per `per_ms` milliseconds, sliding.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub count: u64,
    pub per_ms: u64,
}

impl Fault {
    /// A fault at `stage` that applies every time until narrowed.
    pub fn on(stage: Stage) -> Fault {
        Fault {
            stage,
            address: None,
            nth: None,
            first: None,
            every: None,
            probability: None,
            reply: None,
            delay_ms: None,
            drop: None,
            stall: false,
            tls_fail: false,
            for_ms: None,
            quota: None,
        }
    }

    /// Fires beyond `count` occurrences in any window of `per_ms` milliseconds.
    pub fn quota(mut self, count: u64, per_ms: u64) -> Fault {
        self.quota = Some(Quota { count, per_ms });
        self
    }

    /// Only for the first `ms` milliseconds after the faults are set.
    pub fn for_ms(mut self, ms: u64) -> Fault {
        self.for_ms = Some(ms);
        self
    }

    pub fn address(mut self, a: &str) -> Fault {
        self.address = Some(a.to_string());
        self
    }

    pub fn nth(mut self, n: u64) -> Fault {
        self.nth = Some(n);
        self
    }

    pub fn first(mut self, n: u64) -> Fault {
        self.first = Some(n);
        self
    }

    pub fn every(mut self, k: u64) -> Fault {
        self.every = Some(k);
        self
    }

    pub fn probability(mut self, p: f64) -> Fault {
        self.probability = Some(p);
        self
    }

    pub fn reply(mut self, r: &str) -> Fault {
        self.reply = Some(r.to_string());
        self
    }

    pub fn delay_ms(mut self, ms: u64) -> Fault {
        self.delay_ms = Some(ms);
        self
    }

    pub fn drop(mut self, when: DropWhen) -> Fault {
        self.drop = Some(when);
        self
    }

    pub fn stall(mut self) -> Fault {
        self.stall = true;
        self
    }

    pub fn tls_fail(mut self) -> Fault {
        self.tls_fail = true;
        self
    }

    /// Checks the values a file may get wrong; `origin` names the file.
    pub fn check(&self, origin: &str, index: usize) -> Result<(), Error> {
        let bad =
            |key: &str, what: &str| Error::config(origin, format!("faults[{index}].{key}: {what}"));
        if let Some(r) = &self.reply
            && parse_reply(r).is_none()
        {
            return Err(bad(
                "reply",
                "expected a reply such as \"451 Try again later\"",
            ));
        }
        if let Some(p) = self.probability
            && !(0.0..=1.0).contains(&p)
        {
            return Err(bad("probability", "expected a number from 0 to 1"));
        }
        if self.quota.is_some_and(|q| q.count == 0 || q.per_ms == 0) {
            return Err(bad("quota", "expected a count and a window from 1"));
        }
        if self.nth == Some(0) || self.every == Some(0) {
            return Err(bad("nth/every", "expected a count from 1"));
        }
        if self.address.is_some() && !matches!(self.stage, Stage::Mail | Stage::Rcpt) {
            return Err(bad("address", "only for stage \"mail\" or \"rcpt\""));
        }
        Ok(())
    }
}

/// What the driver must do at a stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Action {
    pub reply: Option<Reply>,
    pub delay_ms: u64,
    pub drop: Option<DropWhen>,
    pub stall: bool,
    pub tls_fail: bool,
}

impl Action {
    pub fn is_none(&self) -> bool {
        *self == Action::default()
    }
}

/// The faults of a running server, with their occurrence counters.
#[derive(Debug)]
pub struct FaultSet {
    faults: Vec<(Fault, AtomicU64)>,
    /// Per fault with a quota: when the occurrences that passed happened (at most `count`).
    passed: Vec<Mutex<std::collections::VecDeque<std::time::Instant>>>,
    rng: Mutex<fastrand::Rng>,
    /// When each fault was set (its `for_ms` counts from there).
    set_at: Vec<std::time::Instant>,
}

impl FaultSet {
    pub fn new(faults: Vec<Fault>, seed: u64) -> FaultSet {
        FaultSet::new_at(faults, seed, std::time::Instant::now())
    }

    /// [`FaultSet::new`] set at `since` on the caller's clock (`for` counts from there).
    pub fn new_at(faults: Vec<Fault>, seed: u64, since: std::time::Instant) -> FaultSet {
        let faults_len = faults.len();
        FaultSet {
            passed: faults.iter().map(|_| Mutex::default()).collect(),
            faults: faults.into_iter().map(|f| (f, AtomicU64::new(0))).collect(),
            set_at: vec![since; faults_len],
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// The faults, each with how many times its stage (and address) came up so far.
    pub fn list(&self) -> Vec<(Fault, u64)> {
        self.faults
            .iter()
            .map(|(f, n)| (f.clone(), n.load(Ordering::SeqCst)))
            .collect()
    }

    /// A copy without the faults `remove` says, with `add` after the rest: the faults kept
    /// keep their counters, their quotas' history and the time they were set (so that a
    /// `twice` that fired once fires once more, whatever is added beside it).
    pub fn edited(
        &self,
        remove: impl Fn(usize) -> bool,
        add: Vec<Fault>,
        now: std::time::Instant,
    ) -> FaultSet {
        let mut faults = Vec::new();
        let mut passed = Vec::new();
        let mut set_at = Vec::new();
        for (i, ((f, n), p)) in self.faults.iter().zip(&self.passed).enumerate() {
            if remove(i) {
                continue;
            }
            faults.push((f.clone(), AtomicU64::new(n.load(Ordering::SeqCst))));
            passed.push(Mutex::new(
                p.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            ));
            set_at.push(self.set_at[i]);
        }
        for f in add {
            faults.push((f, AtomicU64::new(0)));
            passed.push(Mutex::default());
            set_at.push(now);
        }
        let rng = self.rng.lock().unwrap_or_else(|e| e.into_inner()).clone();
        FaultSet {
            faults,
            passed,
            set_at,
            rng: Mutex::new(rng),
        }
    }

    /// The combined action of every fault that fires at this stage (and address).
    pub fn check(&self, stage: Stage, address: Option<&str>) -> Action {
        self.check_at(stage, address, std::time::Instant::now())
    }

    /// [`FaultSet::check`] as if it were `now` (the clock is the caller's).
    pub fn check_at(&self, stage: Stage, address: Option<&str>, now: std::time::Instant) -> Action {
        let mut action = Action::default();
        for (((f, count), passed), set_at) in self.faults.iter().zip(&self.passed).zip(&self.set_at)
        {
            let elapsed = now.saturating_duration_since(*set_at);
            if f.stage != stage || f.for_ms.is_some_and(|ms| elapsed.as_millis() >= ms as u128) {
                continue;
            }
            if let Some(want) = &f.address
                && !address.is_some_and(|a| a.eq_ignore_ascii_case(want))
            {
                continue;
            }
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let fires = f.nth.is_none_or(|k| n == k)
                && f.first.is_none_or(|k| n <= k)
                && f.every.is_none_or(|k| n % k == 0)
                && f.probability.is_none_or(|p| {
                    let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                    rng.f64() < p
                })
                && f.quota.is_none_or(|q| {
                    let mut passed = passed.lock().unwrap_or_else(|e| e.into_inner());
                    let window = std::time::Duration::from_millis(q.per_ms);
                    while passed
                        .front()
                        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
                    {
                        passed.pop_front();
                    }
                    if (passed.len() as u64) < q.count {
                        passed.push_back(now);
                        false
                    } else {
                        true
                    }
                });
            if !fires {
                continue;
            }
            if let Some(r) = f.reply.as_deref().and_then(parse_reply) {
                action.reply = Some(r);
            }
            action.delay_ms += f.delay_ms.unwrap_or(0);
            action.drop = action.drop.or(f.drop);
            action.stall |= f.stall;
            action.tls_fail |= f.tls_fail;
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_that_ends_by_itself() {
        let set = FaultSet::new(
            vec![Fault::on(Stage::Connect).reply("421 busy").for_ms(200)],
            1,
        );
        let at = |ms| set.set_at[0] + std::time::Duration::from_millis(ms);
        assert!(set.check_at(Stage::Connect, None, at(0)).reply.is_some());
        assert!(set.check_at(Stage::Connect, None, at(199)).reply.is_some());
        assert!(set.check_at(Stage::Connect, None, at(200)).is_none());
    }

    #[test]
    fn a_quota_refills_as_its_window_slides() {
        let set = FaultSet::new(
            vec![Fault::on(Stage::Mail).reply("451 MI:SFQ").quota(2, 1000)],
            1,
        );
        let at = |ms| set.set_at[0] + std::time::Duration::from_millis(ms);
        let fired = |ms| set.check_at(Stage::Mail, None, at(ms)).reply.is_some();
        // Two pass at 0 and 400; the third and fourth, inside the window, are refused.
        assert_eq!(
            [fired(0), fired(400), fired(500), fired(999)],
            [false, false, true, true]
        );
        // At 1000 the first has left the window: one more passes, then it is full again.
        assert_eq!([fired(1000), fired(1100)], [false, true]);
        // Refusals did not use the quota up: at 1400 the second has left too.
        assert_eq!([fired(1400), fired(1401)], [false, true]);
        assert!(
            Fault::on(Stage::Mail)
                .quota(0, 10)
                .check("c.toml", 0)
                .is_err()
        );
    }

    #[test]
    fn first_two_then_normal() {
        let set = FaultSet::new(
            vec![
                Fault::on(Stage::Rcpt)
                    .address("bob@163.com")
                    .first(2)
                    .reply("451 later"),
            ],
            1,
        );
        let fired: Vec<bool> = (0..4)
            .map(|_| set.check(Stage::Rcpt, Some("BOB@163.com")).reply.is_some())
            .collect();
        assert_eq!(fired, [true, true, false, false]);
        assert!(set.check(Stage::Rcpt, Some("alice@163.com")).is_none());
        assert!(set.check(Stage::Mail, Some("bob@163.com")).is_none());
    }

    #[test]
    fn every_third_and_nth() {
        let set = FaultSet::new(
            vec![
                Fault::on(Stage::EndOfData).every(3).drop(DropWhen::Before),
                Fault::on(Stage::Greeting).nth(2).delay_ms(5),
            ],
            1,
        );
        let drops: Vec<bool> = (0..6)
            .map(|_| set.check(Stage::EndOfData, None).drop.is_some())
            .collect();
        assert_eq!(drops, [false, false, true, false, false, true]);
        let delays: Vec<u64> = (0..3)
            .map(|_| set.check(Stage::Greeting, None).delay_ms)
            .collect();
        assert_eq!(delays, [0, 5, 0]);
    }

    #[test]
    fn probability_is_seeded() {
        let run = |seed| {
            let set = FaultSet::new(vec![Fault::on(Stage::Mail).probability(0.5).stall()], seed);
            (0..64)
                .map(|_| set.check(Stage::Mail, None).stall)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let hits = run(7).iter().filter(|&&b| b).count();
        assert!((16..48).contains(&hits), "{hits}");
    }

    #[test]
    fn bad_fault_names_the_key() {
        let e = Fault::on(Stage::Ehlo)
            .address("x@y")
            .check("c.toml", 3)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "c.toml: faults[3].address: only for stage \"mail\" or \"rcpt\""
        );
    }
}
