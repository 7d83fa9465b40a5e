//! The mutants scored: the portable scenarios against the correct relay and each mutant,
//! all at once, and the table of which scenarios catch which.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Defect, start};
use crate::scenario::{Scenario, run};

/// How the portable scenarios fared against one mutant.
#[derive(Clone, Debug)]
pub struct Score {
    pub defect: Defect,
    pub outcomes: Vec<run::Outcome>,
}

impl Score {
    /// The scenarios that failed against it.
    pub fn failed(&self) -> Vec<&run::Outcome> {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.verdict, run::Verdict::Fail(_)))
            .collect()
    }

    /// Whether the mutant was caught (for the correct relay: whether it wrongly was).
    pub fn killed(&self) -> bool {
        !self.failed().is_empty()
    }
}

/// A free port on 127.0.0.1 for a fake upstream the runner restarts per scenario.
fn free_port() -> Result<SocketAddr, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// Runs the portable ones of `scenarios` against the correct relay and every mutant, all at
/// once (each its own relay and fake upstream, its scenarios one at a time).
pub async fn score(
    scenarios: &[Scenario],
    work_dir: &std::path::Path,
    timeout: Option<Duration>,
) -> Result<Vec<Score>, String> {
    let portable: Vec<Scenario> = scenarios
        .iter()
        .filter(|s| s.tags.iter().any(|t| t == "portable"))
        .cloned()
        .collect();
    let runs = std::iter::once(Defect::None)
        .chain(Defect::ALL)
        .map(|defect| {
            let portable = portable.clone();
            let dir = work_dir.join(format!("mutant-{}", defect.name()));
            async move {
                let upstream = free_port()?;
                let relay = start(defect, upstream)
                    .await
                    .map_err(|e| format!("mutant {}: {e}", defect.name()))?;
                let opts = run::Options {
                    target: run::Target::External {
                        relay: relay.addr(),
                        upstream_listen: upstream,
                    },
                    jobs: 1,
                    timeout,
                    work_dir: dir,
                    fail_fast: false,
                    settle: Duration::from_millis(500),
                    seed: 1,
                };
                let outcomes = crate::scenario::run_all(portable, &opts, |_| {})
                    .await?
                    .outcomes;
                relay.shutdown();
                Ok::<Score, String>(Score { defect, outcomes })
            }
        });
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .collect()
}

/// The table `smtp-relay scenarios --mutants` prints.
pub fn table(scores: &[Score]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{:<26} {:<9} caught by", "mutant", "verdict");
    let _ = writeln!(s, "{}", "-".repeat(78));
    for sc in scores {
        let failed: Vec<&str> = sc.failed().iter().map(|o| o.name.as_str()).collect();
        let (verdict, by) = match (sc.defect, failed.is_empty()) {
            (Defect::None, true) => (
                "passes",
                format!("every portable scenario ({})", sc.outcomes.len()),
            ),
            (Defect::None, false) => ("FAILS", failed.join(", ")),
            (_, true) => ("SURVIVES", format!("nothing: {}", sc.defect.describe())),
            (_, false) => ("caught", failed.join(", ")),
        };
        let _ = writeln!(s, "{:<26} {verdict:<9} {by}", sc.defect.name());
    }
    let mutants: Vec<&Score> = scores.iter().filter(|s| s.defect != Defect::None).collect();
    let caught = mutants.iter().filter(|s| s.killed()).count();
    let _ = writeln!(s, "\nmutants caught: {caught} of {}", mutants.len());
    s
}
