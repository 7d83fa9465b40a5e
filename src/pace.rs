//! How long the relay waits for a client's next octets, and which limit a wait that runs out
//! broke: the idle timeouts, the time to complete one command line, the minimum data rate
//! inside DATA and the whole-session deadline. Pure: every call is given the time, so the
//! tests drive a clock of their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The limits, from [`crate::relay::RelayConfig`].
#[derive(Clone, Copy, Debug)]
pub struct PaceConfig {
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub line_timeout: Duration,
    /// Octets per second inside DATA; 0: only the idle timeout.
    pub min_data_rate: u64,
    pub session_deadline: Duration,
}

/// The limit a wait ends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Nothing arrived for the idle timeout (command or data).
    Idle,
    /// A command line was begun and not completed within `line_timeout`.
    Line,
    /// Inside DATA, the octets came slower than `min_data_rate`.
    DataRate,
    /// The whole session lasted `session_deadline`.
    Session,
}

impl Limit {
    /// For the log line.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Idle => "idle timeout",
            Limit::Line => "command line time limit",
            Limit::DataRate => "minimum data rate",
            Limit::Session => "session deadline",
        }
    }
}

/// A client's pace, followed read by read.
#[derive(Debug)]
pub struct Pace {
    /// Shared by every session (an idle session carries a pointer, not the limits).
    cfg: Arc<PaceConfig>,
    started: Instant,
    /// When the first octet of the command line not yet complete came.
    line_started: Option<Instant>,
    /// Inside DATA: the time the client has earned, as of `at`.
    data: Option<(Duration, Instant)>,
}

impl Pace {
    pub fn new(cfg: impl Into<Arc<PaceConfig>>, now: Instant) -> Pace {
        Pace {
            cfg: cfg.into(),
            started: now,
            line_started: None,
            data: None,
        }
    }

    /// How long to wait for the next read, and the limit that ends the wait if nothing comes.
    pub fn wait(&self, now: Instant, in_data: bool) -> (Duration, Limit) {
        let (mut wait, mut limit) = if in_data {
            match self.data {
                Some((balance, at)) if self.cfg.min_data_rate > 0 => {
                    let left = balance.saturating_sub(now.saturating_duration_since(at));
                    if balance >= self.cfg.data_timeout {
                        (left, Limit::Idle)
                    } else {
                        (left, Limit::DataRate)
                    }
                }
                _ => (self.cfg.data_timeout, Limit::Idle),
            }
        } else {
            (self.cfg.command_timeout, Limit::Idle)
        };
        if !in_data && let Some(t) = self.line_started {
            let left = self
                .cfg
                .line_timeout
                .saturating_sub(now.saturating_duration_since(t));
            if left < wait {
                (wait, limit) = (left, Limit::Line);
            }
        }
        let session_left = self
            .cfg
            .session_deadline
            .saturating_sub(now.saturating_duration_since(self.started));
        if session_left < wait {
            (wait, limit) = (session_left, Limit::Session);
        }
        (wait, limit)
    }

    /// `n` octets arrived at `now`; `in_data`: the connection was reading message content.
    pub fn received(&mut self, now: Instant, n: usize, in_data: bool) {
        if in_data {
            if let Some((balance, at)) = self.data.as_mut()
                && self.cfg.min_data_rate > 0
            {
                let earned = Duration::from_secs_f64(n as f64 / self.cfg.min_data_rate as f64);
                *balance = (balance.saturating_sub(now.saturating_duration_since(*at)) + earned)
                    .min(self.cfg.data_timeout);
                *at = now;
            }
        } else if self.line_started.is_none() {
            self.line_started = Some(now);
        }
    }

    /// The connection handled what it had: `in_data` now, whether a command line (or more)
    /// was completed, and whether the octets of an incomplete one wait in its buffer.
    pub fn processed(&mut self, now: Instant, in_data: bool, completed: bool, partial: bool) {
        if in_data {
            self.line_started = None;
            if self.data.is_none() {
                self.data = Some((self.cfg.data_timeout, now));
            }
            return;
        }
        self.data = None;
        if completed {
            self.line_started = partial.then_some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PaceConfig {
        PaceConfig {
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            line_timeout: Duration::from_secs(60),
            min_data_rate: 500,
            session_deadline: Duration::from_secs(3600),
        }
    }

    /// A client sending `n` octets every `every`, until a wait runs out: how long it lasted
    /// and which limit ended it (`completes`: the line is done after each read, as for a
    /// client pipelining whole commands).
    fn trickle(in_data: bool, n: usize, every: Duration, completes: bool) -> (Duration, Limit) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut pace = Pace::new(cfg(), now);
        pace.processed(now, in_data, false, false);
        loop {
            let (wait, limit) = pace.wait(now, in_data);
            if wait < every {
                return (now + wait - t0, limit);
            }
            now += every;
            pace.received(now, n, in_data);
            pace.processed(now, in_data, completes, false);
        }
    }

    #[test]
    fn one_byte_every_five_seconds_in_a_command_line_ends_at_the_line_limit() {
        let (lasted, limit) = trickle(false, 1, Duration::from_secs(5), false);
        assert_eq!(limit, Limit::Line);
        assert_eq!(
            lasted,
            Duration::from_secs(65),
            "the line began at the first octet"
        );
    }

    #[test]
    fn one_byte_every_five_seconds_in_data_ends_at_the_rate_limit() {
        let (lasted, limit) = trickle(true, 1, Duration::from_secs(5), false);
        assert_eq!(limit, Limit::DataRate);
        assert!(
            lasted > Duration::from_secs(180) && lasted < Duration::from_secs(190),
            "{lasted:?}"
        );
    }

    #[test]
    fn a_client_at_the_rate_lasts_until_the_session_deadline() {
        // 600 octets/s in DATA: above 500, never runs out.
        let (lasted, limit) = trickle(true, 600, Duration::from_secs(1), false);
        assert_eq!((lasted, limit), (Duration::from_secs(3600), Limit::Session));
        // Whole commands every 10 s: each line completes, the idle timeout never runs out.
        let (lasted, limit) = trickle(false, 6, Duration::from_secs(10), true);
        assert_eq!((lasted, limit), (Duration::from_secs(3600), Limit::Session));
    }

    #[test]
    fn silence_is_the_idle_timeout_and_zero_rate_turns_the_rate_off() {
        let now = Instant::now();
        let pace = Pace::new(cfg(), now);
        assert_eq!(
            pace.wait(now, false),
            (Duration::from_secs(300), Limit::Idle)
        );
        let mut pace = Pace::new(
            PaceConfig {
                min_data_rate: 0,
                ..cfg()
            },
            now,
        );
        pace.processed(now, true, true, false);
        pace.received(now + Duration::from_secs(100), 1, true);
        let later = now + Duration::from_secs(100);
        assert_eq!(
            pace.wait(later, true),
            (Duration::from_secs(180), Limit::Idle)
        );
        let (_, limit) = trickle(true, 0, Duration::from_secs(200), false);
        assert_eq!(limit, Limit::Idle, "no octet at all: idle");
    }

    #[test]
    fn a_partial_line_behind_a_complete_one_starts_its_own_clock() {
        let t0 = Instant::now();
        let mut pace = Pace::new(cfg(), t0);
        pace.received(t0, 10, false);
        let t1 = t0 + Duration::from_secs(50);
        pace.received(t1, 10, false);
        pace.processed(t1, false, true, true);
        assert_eq!(pace.wait(t1, false), (Duration::from_secs(60), Limit::Line));
    }
}
