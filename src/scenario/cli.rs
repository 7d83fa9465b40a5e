//! `smtp-relay scenarios [PATH...]`: finds the scenario files, runs them, prints a line per
//! scenario and a table, writes JUnit XML and transcripts when asked; exit status 1 when a
//! scenario fails, 2 when a file cannot be read or parsed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::run::{Options, Target, Verdict};
use super::{Scenario, report};

#[derive(Debug, Clone, clap::Args)]
pub struct ScenariosArgs {
    /// Scenario files or directories of them (`*.scn`).
    #[arg(default_value = "scenarios")]
    pub paths: Vec<PathBuf>,
    /// Scenarios run at once (each has its own relay and fake upstreams on port 0).
    #[arg(long, default_value_t = default_jobs())]
    pub jobs: usize,
    /// Only the scenarios whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Write JUnit XML here (for CI systems).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write each scenario's normalised two-hop transcript here (`<name>.log`).
    #[arg(long, value_name = "DIR")]
    pub transcripts: Option<PathBuf>,
    /// Seconds per scenario, overriding the scenario's own timeout.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Run the client side against this relay instead of smtp-relay (only scenarios tagged
    /// portable; one at a time).
    #[arg(long, value_name = "HOST:PORT", requires = "upstream_listen")]
    pub relay: Option<SocketAddr>,
    /// With --relay: where the fake upstream listens (plain SMTP), i.e. where that relay is
    /// configured to deliver.
    #[arg(long, value_name = "ADDR")]
    pub upstream_listen: Option<SocketAddr>,
    /// Print the scenarios selected (name, tags, description) and exit.
    #[arg(long)]
    pub list: bool,
    /// Only the scenarios with this tag (repeatable: any of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Leave out the scenarios with this tag (repeatable).
    #[arg(long = "exclude-tag", value_name = "TAG")]
    pub exclude_tags: Vec<String>,
    /// Run the I-th of N parts of the selection (1-based, by name), e.g. --shard 2/4 on the
    /// second of four CI machines.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// After the first failure, start no more scenarios.
    #[arg(long)]
    pub fail_fast: bool,
    /// Write the outcomes as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the outcomes in TAP (version 13) here.
    #[arg(long, value_name = "FILE")]
    pub tap: Option<PathBuf>,
    /// Print a line per scenario and the whole table (with --relay only the failures and
    /// the counts are printed by default).
    #[arg(long)]
    pub verbose: bool,
    /// Test the harness: run the portable scenarios against a correct small relay and against
    /// each of its mutants (one defect each: LF.LF taken as the end of data, bare line ends
    /// passed on, a header added, a recipient dropped, ...), print which scenarios catch
    /// each; exit 1 when a mutant survives or the correct relay fails.
    #[arg(long, conflicts_with = "relay")]
    pub mutants: bool,
    /// The relay's known findings (`relays/<name>.expected`: one scenario per line, `line N`
    /// and a reason): those failures are reported `known` and do not fail the run; a listed
    /// scenario that passes, or fails elsewhere, does.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// With --relay: seconds the upstream must hear nothing before a scenario's checks run
    /// (late deliveries of a store-and-forward relay); a scenario's `settle:` overrides it.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub settle: f64,
    /// Seeds the fake upstreams (faults with a probability, transaction ids); every failure
    /// names it, so that a run can be repeated exactly.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print which numbered cases of this edge-case catalogue (`smtp-edge-cases.md`) the
    /// selected scenarios test (their `covers:` lines and "Edge case N" comments), the RFC
    /// sections those cases cite, and what no scenario tests; run nothing.
    #[arg(long, value_name = "CASES.md", conflicts_with_all = ["relay", "mutants", "list"])]
    pub coverage: Option<PathBuf>,
    /// Where the run keeps its CA, fake mailboxes and spools (a failed scenario's stay).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// `2/4`: the second of four parts.
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{s:?}: expected I/N with 1 <= I <= N, e.g. 2/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

/// The scenarios `args` select, in name order: tags, exclusions, the shard.
pub fn select(mut scenarios: Vec<Scenario>, args: &ScenariosArgs) -> Vec<Scenario> {
    scenarios.sort_by(|a, b| a.name.cmp(&b.name));
    scenarios.retain(|sc| {
        (args.tags.is_empty() || sc.tags.iter().any(|t| args.tags.contains(t)))
            && !sc.tags.iter().any(|t| args.exclude_tags.contains(t))
    });
    if let Some((i, n)) = args.shard {
        scenarios = scenarios
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % n == i - 1)
            .map(|(_, sc)| sc)
            .collect();
    }
    scenarios
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
}

pub async fn run(args: ScenariosArgs) -> ExitCode {
    let (scenarios, baseline) = match load(&args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if let Some(catalogue) = &args.coverage {
        let files: Vec<PathBuf> = scenarios.iter().map(|s| s.path.clone()).collect();
        return match super::coverage::run(catalogue, &files) {
            Ok(report) => {
                smtp_net::say(&report);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("smtp-relay scenarios: {e}");
                ExitCode::from(2)
            }
        };
    }
    if args.list {
        for sc in &scenarios {
            smtp_net::say(&format!(
                "{:<48} [{}] {}\n",
                sc.name,
                sc.tags.join(","),
                sc.description
            ));
        }
        smtp_net::say(&format!("{} scenario(s)\n", scenarios.len()));
        return ExitCode::SUCCESS;
    }
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("smtp-relay-scenarios-{}", std::process::id()))
    });
    if args.mutants {
        return mutants(&scenarios, &work_dir, &args).await;
    }
    let target = match (args.relay, args.upstream_listen) {
        (Some(relay), Some(upstream_listen)) => Target::External {
            relay,
            upstream_listen,
        },
        _ => Target::Ours,
    };
    let opts = Options {
        target,
        jobs: args.jobs,
        timeout: args.timeout.map(Duration::from_secs_f64),
        work_dir: work_dir.clone(),
        fail_fast: args.fail_fast,
        settle: Duration::from_secs_f64(args.settle.clamp(0.0, 600.0)),
        seed: args.seed,
    };
    let quiet = args.relay.is_some() && !args.verbose;
    smtp_net::say(&format!(
        "smtp-relay scenarios: {} scenario(s), {} at once, work directory {}\n",
        scenarios.len(),
        match opts.target {
            Target::Ours => args.jobs.max(1),
            Target::External { .. } => 1,
        },
        work_dir.display()
    ));
    let live_baseline = baseline.clone();
    let run = match super::run_all(scenarios, &opts, move |o| {
        let mut one = [o.clone()];
        if let Some(b) = &live_baseline {
            b.apply(&mut one);
        }
        if !quiet || matches!(one[0].verdict, Verdict::Fail(_)) {
            smtp_net::say(&(report::line(&one[0]) + "\n"))
        }
    })
    .await
    {
        Ok(run) => run,
        Err(e) => {
            eprintln!("smtp-relay scenarios: {e}");
            return ExitCode::from(2);
        }
    };
    let mut outcomes = run.outcomes;
    if let Some(b) = &baseline {
        b.apply(&mut outcomes);
    }
    smtp_net::say(&format!(
        "\n{}",
        if quiet {
            report::failures_only(&outcomes)
        } else {
            report::table(&outcomes)
        }
    ));
    if let Err(code) = write_reports(&args, &outcomes) {
        return code;
    }
    finish(&run.strays, &outcomes, &work_dir)
}

/// The scenarios to run (parsed, selected; only the portable ones against another relay)
/// and the baseline; a problem with either is said, and the exit code is 2.
fn load(
    args: &ScenariosArgs,
) -> Result<
    (
        Vec<Scenario>,
        Option<std::sync::Arc<super::baseline::Baseline>>,
    ),
    ExitCode,
> {
    let baseline = match args
        .baseline
        .as_deref()
        .map(super::baseline::Baseline::load)
    {
        None => None,
        Some(Ok(b)) => Some(std::sync::Arc::new(b)),
        Some(Err(e)) => {
            eprintln!("smtp-relay scenarios: baseline {e}");
            return Err(ExitCode::from(2));
        }
    };
    let files = match super::find(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("smtp-relay scenarios: {e}");
            return Err(ExitCode::from(2));
        }
    };
    let mut scenarios = Vec::new();
    let mut bad = 0;
    let mut names = std::collections::HashSet::new();
    for f in files {
        match Scenario::load(&f) {
            Ok(sc) => {
                names.insert(sc.name.clone());
                if args
                    .filter
                    .as_ref()
                    .is_none_or(|p| sc.name.contains(p.as_str()))
                {
                    scenarios.push(sc);
                }
            }
            Err(e) => {
                eprintln!("smtp-relay scenarios: {e}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        return Err(ExitCode::from(2));
    }
    // A baseline line naming no scenario at all is a typo (one left out by the selection is
    // not).
    if let Some(b) = &baseline
        && let Some(e) = b.entries.iter().find(|e| !names.contains(&e.name))
    {
        eprintln!(
            "smtp-relay scenarios: baseline {}:{}: no scenario is named {}",
            b.file, e.at, e.name
        );
        return Err(ExitCode::from(2));
    }
    let mut scenarios = select(scenarios, args);
    if args.relay.is_some() {
        // Against another relay only the portable ones mean anything: the rest are counted
        // once here, not reported one by one.
        let before = scenarios.len();
        scenarios.retain(|sc| sc.tags.iter().any(|t| t == "portable"));
        let left_out = before - scenarios.len();
        if left_out > 0 {
            smtp_net::say(&format!(
                "smtp-relay scenarios: {left_out} scenario(s) not tagged portable (they depend on smtp-relay's own policy): not run\n"
            ));
        }
    }
    if scenarios.is_empty() {
        eprintln!("smtp-relay scenarios: no scenario matched");
        return Err(ExitCode::from(2));
    }
    Ok((scenarios, baseline))
}

/// `--mutants`: the portable scenarios against a correct relay and each mutant; the table,
/// and success when the correct one passes and every mutant is caught.
async fn mutants(
    scenarios: &[Scenario],
    work_dir: &std::path::Path,
    args: &ScenariosArgs,
) -> ExitCode {
    smtp_net::say(&format!(
        "smtp-relay scenarios --mutants: the portable scenarios against a correct relay and {} mutants, work directory {}\n",
        super::mutant::Defect::ALL.len(),
        work_dir.display()
    ));
    let timeout = args.timeout.map(Duration::from_secs_f64);
    match super::mutant::score(scenarios, work_dir, timeout).await {
        Ok(scores) => {
            smtp_net::say(&super::mutant::table(&scores));
            let ok = scores
                .iter()
                .all(|s| s.killed() != (s.defect == super::mutant::Defect::None));
            if ok {
                let _ = std::fs::remove_dir_all(work_dir);
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("smtp-relay scenarios: {e}");
            ExitCode::from(2)
        }
    }
}

/// The reports asked for: `--json`, `--tap`, `--junit`, `--transcripts`.
fn write_reports(args: &ScenariosArgs, outcomes: &[super::Outcome]) -> Result<(), ExitCode> {
    for (path, text) in [
        (
            &args.json,
            args.json.as_ref().map(|_| report::json(outcomes)),
        ),
        (&args.tap, args.tap.as_ref().map(|_| report::tap(outcomes))),
    ] {
        if let (Some(path), Some(text)) = (path, text)
            && let Err(e) = std::fs::write(path, text)
        {
            eprintln!("smtp-relay scenarios: {}: {e}", path.display());
            return Err(ExitCode::from(2));
        }
    }
    if let Some(path) = &args.junit
        && let Err(e) = std::fs::write(path, report::junit(outcomes))
    {
        eprintln!("smtp-relay scenarios: {}: {e}", path.display());
        return Err(ExitCode::from(2));
    }
    if let Some(dir) = &args.transcripts {
        let _ = std::fs::create_dir_all(dir);
        for o in outcomes.iter().filter(|o| !o.transcript.is_empty()) {
            let _ = std::fs::write(dir.join(format!("{}.log", o.name)), &o.transcript);
        }
    }
    Ok(())
}

/// The stray messages said, and the exit code: success (the work directory removed) when
/// nothing failed and every message upstream was some scenario's; else where the failures'
/// data is kept.
fn finish(
    strays: &[super::run::Stray],
    outcomes: &[super::Outcome],
    work_dir: &std::path::Path,
) -> ExitCode {
    if !strays.is_empty() {
        smtp_net::say(&report::strays(strays));
    }
    let unattributed = strays.iter().filter(|s| s.unattributed).count();
    let (_, failed, _) = report::counts(outcomes);
    if failed == 0 && unattributed == 0 {
        let _ = std::fs::remove_dir_all(work_dir);
        ExitCode::SUCCESS
    } else if failed == 0 {
        eprintln!(
            "smtp-relay scenarios: {unattributed} message(s) reached the upstream that no scenario's checks saw"
        );
        ExitCode::from(1)
    } else {
        let kept: Vec<_> = outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Fail(_)))
            .map(|o| work_dir.join(&o.name).display().to_string())
            .collect();
        eprintln!(
            "smtp-relay scenarios: {failed} failed; their upstream data and spools are kept in\n  {}",
            kept.join("\n  ")
        );
        ExitCode::from(1)
    }
}
