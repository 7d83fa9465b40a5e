//! Load under a failing upstream: the fake upstream behind the relay is given faults (the
//! scenario syntax: `end of data: delay 200ms, probability 0.1`) while the load runs, and a
//! sweep runs one step per value of a fault (`--sweep 'end of data: delay {0,50,200,1000}ms'`),
//! after a baseline with none. Each step holds its fault for a while, clears it, and goes on
//! loading: what the clients saw while it held (throughput, latency per phase, replies by
//! code, what a store-and-forward relay's queue absorbed), and how long after it cleared the
//! relay was itself again.
//!
//! The faults go to a fake upstream of ours ([`FaultControl`]): in-process with `--self`, or
//! through its HTTP API (`--fake-api`) in front of any relay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_upstream::Fault;
use fake_upstream::faults::parse_fault;

pub use super::control::FaultControl;

use super::stats::{Interval, Phase, Recorder};
use super::{Outcome, Progress, Run, Workload};

/// How often a step's figures are collected: the resolution of its recovery time.
pub const STEP_TICK: Duration = Duration::from_millis(250);

/// Recovery is judged on windows of this many ticks (1 s): a 250 ms tick's throughput moves by
/// a tenth on noise alone.
pub const WINDOW_TICKS: usize = 4;

/// Recovered: a window's throughput at least this share of the baseline's...
pub const RECOVERED_RATE: f64 = 0.9;
/// ...and its p99 at most this many times the baseline's (or the baseline's plus
/// [`RECOVERED_SLACK`], whichever is more: a sub-millisecond p99 doubles on noise alone).
pub const RECOVERED_P99: f64 = 2.0;
pub const RECOVERED_SLACK: Duration = Duration::from_millis(5);

/// The steps of a sweep: each `{a,b,...}` group in `template` taken in turn (several groups:
/// every combination, the first group slowest), each result read as a fault.
pub fn expand(template: &str) -> Result<Vec<(String, Fault)>, String> {
    let texts = expand_text(template)?;
    if texts.len() < 2 && !template.contains('{') {
        return Err(format!(
            "--sweep {template:?}: expected a fault with one {{a,b,...}} group to sweep, e.g. 'end of data: delay {{0,50,200,1000}}ms'"
        ));
    }
    texts
        .into_iter()
        .map(|t| {
            let f = parse_fault(&t).map_err(|e| format!("--sweep step {t:?}: {e}"))?;
            Ok((t, f))
        })
        .collect()
}

fn expand_text(template: &str) -> Result<Vec<String>, String> {
    let Some(open) = template.find('{') else {
        if template.contains('}') {
            return Err(format!("--sweep {template:?}: a '}}' without its '{{'"));
        }
        return Ok(vec![template.to_string()]);
    };
    let close = template[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| format!("--sweep {template:?}: a '{{' without its '}}'"))?;
    let (head, inner, tail) = (
        &template[..open],
        &template[open + 1..close],
        &template[close + 1..],
    );
    let values: Vec<&str> = inner.split(',').map(str::trim).collect();
    if values.iter().any(|v| v.is_empty() || v.contains('{')) {
        return Err(format!(
            "--sweep {template:?}: expected {{a,b,...}} with no empty value"
        ));
    }
    let mut out = Vec::new();
    for v in values {
        for rest in expand_text(tail)? {
            out.push(format!("{head}{v}{rest}"));
        }
    }
    Ok(out)
}

/// One step: its fault, what the clients saw while it held and after.
pub struct Step {
    /// `baseline`, or the fault's text.
    pub label: String,
    /// The whole step: the fault held, then cleared.
    pub outcome: Outcome,
    /// The intervals while the fault held, merged: what was done while it held (the
    /// throughput).
    pub during: Outcome,
    /// Every message meant to start while the fault held, however late it finished (open
    /// loop: latency from its intended start): the step's latencies, replies and failures.
    /// Judged by completion time instead, a step whose messages all wait past the clear
    /// would show only the few that got through.
    pub started: Outcome,
    /// When the fault was cleared, from the step's start.
    pub cleared_at: Duration,
    /// How long after it cleared the clients' throughput and p99 were the baseline's again
    /// for good; `None`: not within the step (or the baseline itself).
    pub recovery: Option<Duration>,
    /// Store and forward: messages in the relay's queue when the fault cleared, and at most.
    pub queued_at_clear: Option<u64>,
    pub queued_peak: Option<u64>,
    /// Store and forward: how long after the fault cleared the queue was back to the
    /// baseline's level; `None`: not within the step.
    pub drained: Option<Duration>,
}

/// What a step needs besides the workload.
pub struct StepSetup<'a> {
    pub control: &'a FaultControl,
    /// Faults held for the whole run (`--fault`).
    pub base: &'a [Fault],
    /// How long the step's fault holds; then how long the load goes on without it.
    pub hold: Duration,
    pub recovery: Duration,
    /// The relay's queue length (in-process, store and forward).
    pub queue_len: Option<Arc<dyn Fn() -> Option<u64> + Send + Sync>>,
    /// With `--self`: the run the sink's observer reports to.
    pub observe: Option<Arc<Mutex<Option<Arc<Run>>>>>,
}

/// The baseline's figures that recovery is judged against.
#[derive(Clone, Copy, Debug)]
pub struct Baseline {
    pub rate: f64,
    pub p99: Duration,
    pub queued_peak: u64,
}

impl Baseline {
    pub fn of(step: &Step, end: Duration) -> Baseline {
        let ivs: Vec<&Interval> = full(&step.outcome.intervals, STEP_TICK, end).collect();
        let rates: Vec<f64> = ivs.windows(WINDOW_TICKS).map(|w| merged(w).0).collect();
        Baseline {
            rate: median(rates),
            p99: Duration::from_micros(
                step.outcome
                    .total
                    .phase(Phase::Message)
                    .value_at_quantile(0.99),
            ),
            queued_peak: step.queued_peak.unwrap_or(0),
        }
    }
}

/// A window's throughput and whole-message p99.
fn merged(w: &[&Interval]) -> (f64, Duration, u64) {
    let mut data = Recorder::default();
    let mut length = Duration::ZERO;
    for iv in w {
        data.merge(&iv.data);
        length += iv.length;
    }
    (
        data.delivered as f64 / length.as_secs_f64().max(1e-9),
        Duration::from_micros(data.phase(Phase::Message).value_at_quantile(0.99)),
        data.delivered,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The intervals of a full tick before the run's `end` (after it, the workers wind down).
fn full(intervals: &[Interval], tick: Duration, end: Duration) -> impl Iterator<Item = &Interval> {
    intervals
        .iter()
        .filter(move |iv| iv.length >= tick / 2 && iv.start + iv.length <= end + tick / 4)
}

/// How long after `cleared_at` the clients' figures were the baseline's again and stayed so:
/// the earliest tick from which every window of [`WINDOW_TICKS`] ticks (up to the run's `end`)
/// has the throughput and p99 of [`RECOVERED_RATE`] and [`RECOVERED_P99`]; `None` when the
/// run ends before that.
pub fn recovery_time(
    intervals: &[Interval],
    cleared_at: Duration,
    tick: Duration,
    end: Duration,
    base: &Baseline,
) -> Option<Duration> {
    let p99_max = base
        .p99
        .mul_f64(RECOVERED_P99)
        .max(base.p99 + RECOVERED_SLACK);
    let after: Vec<&Interval> = full(intervals, tick, end)
        .filter(|iv| iv.start + iv.length / 2 >= cleared_at)
        .collect();
    if after.len() < WINDOW_TICKS {
        return None;
    }
    let ok = |w: &[&Interval]| {
        let (rate, p99, delivered) = merged(w);
        delivered > 0 && rate >= RECOVERED_RATE * base.rate && p99 <= p99_max
    };
    // The earliest start of an unbroken run of good windows to the end.
    let mut from = None;
    for (i, w) in after.windows(WINDOW_TICKS).enumerate().rev() {
        if ok(w) {
            from = Some(after[i].start);
        } else {
            break;
        }
    }
    from.map(|start| start.saturating_sub(cleared_at))
}

/// A run's intervals up to `until` (those mostly before it), merged into one outcome (for
/// its table and plot).
fn window(o: &Outcome, until: Duration) -> Outcome {
    let mut total = Recorder::default();
    let mut intervals = Vec::new();
    for iv in o
        .intervals
        .iter()
        .filter(|iv| iv.start + iv.length / 2 < until)
    {
        total.merge(&iv.data);
        intervals.push(Interval {
            start: iv.start,
            length: iv.length,
            data: iv.data.clone(),
        });
    }
    let elapsed = intervals
        .last()
        .map_or(Duration::ZERO, |iv: &Interval| iv.start + iv.length);
    Outcome {
        total,
        intervals,
        elapsed,
        started_at: o.started_at,
        not_run: 0,
        intact: 0,
        corrupted: 0,
        duplicates: 0,
        observed: false,
        before_cut: None,
    }
}

/// Runs one step: `fault` (none for the baseline) with the base faults for `hold`, then the
/// base faults alone for `recovery`, the load going on throughout.
pub async fn run_step(
    w: &Workload,
    label: &str,
    fault: Option<&Fault>,
    setup: &StepSetup<'_>,
    baseline: Option<&Baseline>,
    progress: Option<Progress>,
) -> Result<Step, String> {
    let mut faults = setup.base.to_vec();
    faults.extend(fault.cloned());
    setup.control.set(&faults).await?;
    let mut w = w.clone();
    w.duration = Some(setup.hold + setup.recovery);
    w.messages = None;
    w.tick = STEP_TICK;
    let run = Run::with_cut(&w.body, setup.hold);
    if let Some(current) = &setup.observe {
        *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(run.clone());
    }
    // The queue's length, sampled each tick; the fault cleared after `hold`.
    let samples: Arc<Mutex<Vec<(Duration, u64)>>> = Arc::default();
    let sampler = setup.queue_len.clone().map(|len| {
        let (samples, started) = (samples.clone(), run.started);
        let end = setup.hold + setup.recovery;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STEP_TICK / 2);
            loop {
                tick.tick().await;
                let t = started.elapsed();
                if let Some(n) = len() {
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((t, n));
                }
                if t > end {
                    break;
                }
            }
        })
    });
    let started = run.started;
    let (outcome, cleared) = tokio::join!(
        super::run(&w, run, setup.observe.is_some(), progress),
        async {
            tokio::time::sleep_until((started + setup.hold).into()).await;
            let result = setup.control.set(setup.base).await;
            (result, Instant::now() - started)
        }
    );
    if let Some(s) = sampler {
        s.abort();
    }
    let (cleared, cleared_at) = cleared;
    cleared?;
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let queued_at_clear = samples
        .iter()
        .filter(|(t, _)| *t <= cleared_at)
        .map(|(_, n)| *n)
        .next_back();
    let queued_peak = samples.iter().map(|(_, n)| *n).max();
    let drained = baseline.and_then(|b| {
        samples
            .iter()
            .find(|(t, n)| *t >= cleared_at && *n <= b.queued_peak.max(1))
            .map(|(t, _)| t.saturating_sub(cleared_at))
    });
    let end = setup.hold + setup.recovery;
    let recovery =
        baseline.and_then(|b| recovery_time(&outcome.intervals, cleared_at, STEP_TICK, end, b));
    Ok(Step {
        label: label.to_string(),
        during: window(&outcome, cleared_at),
        started: Outcome {
            total: outcome.before_cut.clone().unwrap_or_default(),
            intervals: Vec::new(),
            elapsed: setup.hold,
            ..window(&outcome, Duration::ZERO)
        },
        outcome,
        cleared_at,
        recovery,
        queued_at_clear,
        queued_peak,
        drained: if setup.queue_len.is_some() {
            drained
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_expands_each_group_in_turn() {
        let steps = expand("end of data: delay {0,50,200,1000}ms").unwrap();
        let texts: Vec<&str> = steps.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "end of data: delay 0ms",
                "end of data: delay 50ms",
                "end of data: delay 200ms",
                "end of data: delay 1000ms"
            ]
        );
        assert_eq!(steps[2].1.delay_ms, Some(200));
        let two = expand("MAIL: 451 busy, probability {0.1, 0.5}").unwrap();
        assert_eq!(two[1].1.probability, Some(0.5));
        assert_eq!(
            expand_text("a{1,2}b{x,y}").unwrap(),
            ["a1bx", "a1by", "a2bx", "a2by"]
        );
        for bad in [
            "end of data: delay 200ms",
            "end of data: delay {0,50ms",
            "end of data: delay 0,50}ms",
            "end of data: delay {0,,50}ms",
            "RCPX: 451 {a,b}",
        ] {
            assert!(expand(bad).is_err(), "{bad}");
        }
    }

    fn iv(start_ms: u64, delivered: u64, p99_ms: u64) -> Interval {
        let mut data = Recorder {
            delivered,
            ..Recorder::default()
        };
        for _ in 0..delivered {
            data.record(Phase::Message, Duration::from_millis(p99_ms));
        }
        Interval {
            start: Duration::from_millis(start_ms),
            length: STEP_TICK,
            data,
        }
    }

    #[test]
    fn recovery_is_the_start_of_the_good_tail_after_the_clear() {
        let base = Baseline {
            rate: 400.0, // 100 per 250 ms tick
            p99: Duration::from_millis(10),
            queued_peak: 0,
        };
        // Cleared at 1 s: slow ticks, a good one at 1.5 s, a slow one, then good to the end
        // (3.5 s); past the end, the workers wind down (not judged).
        let mut ivs: Vec<Interval> = (0..4).map(|i| iv(i * 250, 10, 200)).collect();
        ivs.extend([
            iv(1000, 20, 150),
            iv(1250, 10, 150),
            iv(1500, 100, 12),
            iv(1750, 5, 300),
        ]);
        ivs.extend((8..14).map(|i| iv(i * 250, 100, 11)));
        ivs.push(iv(3500, 1, 1));
        let (cleared, end) = (Duration::from_millis(1000), Duration::from_millis(3500));
        assert_eq!(
            recovery_time(&ivs, cleared, STEP_TICK, end, &base),
            Some(Duration::from_millis(1000)),
            "from 2 s on, not the lone good tick at 1.5 s, and the wind-down not judged"
        );
        // Never good again: not recovered.
        let stuck: Vec<Interval> = (0..14).map(|i| iv(i * 250, 10, 200)).collect();
        assert_eq!(recovery_time(&stuck, cleared, STEP_TICK, end, &base), None);
        // Good at once.
        let quick: Vec<Interval> = (0..14).map(|i| iv(i * 250, 100, 9)).collect();
        assert_eq!(
            recovery_time(&quick, cleared, STEP_TICK, end, &base),
            Some(Duration::ZERO)
        );
        // A window's p99 over the bound (2 x 10 ms, or 15 ms) is not recovered.
        let slow: Vec<Interval> = (0..14).map(|i| iv(i * 250, 100, 25)).collect();
        assert_eq!(recovery_time(&slow, cleared, STEP_TICK, end, &base), None);
    }
}
