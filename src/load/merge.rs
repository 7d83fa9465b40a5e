//! `smtp-relay load report FILE...`: one report from several generators of one run (each
//! started with the same `--run-id` and its `--share I/N`, on this machine or others). Their
//! interval logs (`--hlog`) are read back and added, histogram by histogram: HdrHistogram's
//! counts add exactly, so the merged percentiles are those of all the messages, not an average
//! of percentiles. Their JSON reports (`--json`) add the counts an interval log does not hold
//! (failures, replies by code, messages not run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

use super::Outcome;
use super::report;
use super::stats::{Interval, Phase, Recorder};

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The generators' interval logs (`.hlog`) and, for their counts, JSON reports (`.json`).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Write the merged report as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the merged report as a self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// The HTTP API of the fake upstream behind the relay (started with --tally-load, or
    /// `smtp-relay up`): its count of the run's messages, across every generator, gives the
    /// integrity line (intact, corrupted, lost, duplicated).
    #[arg(long, value_name = "URL", requires = "run_id")]
    pub fake_api: Option<String>,
    /// The run's id, as given to every generator (`--run-id`).
    #[arg(long, value_name = "HEX", value_parser = super::cli::parse_run_id)]
    pub run_id: Option<u64>,
    #[arg(long, value_name = "TOKEN", requires = "fake_api")]
    pub fake_token: Option<String>,
    #[arg(long, value_name = "NAME", requires = "fake_api")]
    pub fake_server: Option<String>,
}

/// What the files added up to.
#[derive(Default)]
pub struct Merged {
    pub total: Recorder,
    /// By second since the earliest log's start.
    pub seconds: BTreeMap<u64, Recorder>,
    pub start: Option<SystemTime>,
    pub logs: usize,
    /// From the JSON reports: (delivered, failed, not run, replies by code), and how many.
    pub counted: Option<(u64, u64, u64, BTreeMap<String, u64>)>,
    pub reports: usize,
}

/// An interval log's histograms, at their absolute times.
fn read_hlog(
    path: &Path,
) -> Result<Vec<(SystemTime, Phase, hdrhistogram::Histogram<u64>)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut base = SystemTime::UNIX_EPOCH;
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&bytes) {
        let entry =
            entry.map_err(|e| format!("{}: not an interval log ({e:?})", path.display()))?;
        match entry {
            LogEntry::StartTime(t) | LogEntry::BaseTime(t) => base = SystemTime::UNIX_EPOCH + t,
            LogEntry::Interval(h) => {
                let tag = h.tag().map(|t| t.as_str().to_string()).unwrap_or_default();
                let Some(phase) = Phase::ALL.iter().copied().find(|p| p.name() == tag) else {
                    return Err(format!(
                        "{}: a histogram tagged {tag:?}, not a phase of smtp-relay load",
                        path.display()
                    ));
                };
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(h.encoded_histogram())
                    .map_err(|e| {
                        format!("{}: a histogram that is not base64: {e}", path.display())
                    })?;
                let hist: hdrhistogram::Histogram<u64> =
                    de.deserialize(&mut &raw[..]).map_err(|e| {
                        format!(
                            "{}: a histogram that does not decode: {e:?}",
                            path.display()
                        )
                    })?;
                out.push((base + h.start_timestamp(), phase, hist));
            }
        }
    }
    Ok(out)
}

/// The counts of a `--json` report (every run in it).
fn read_json(path: &Path) -> Result<(u64, u64, u64, BTreeMap<String, u64>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let runs = v["runs"]
        .as_array()
        .ok_or_else(|| format!("{}: not a report of smtp-relay load --json", path.display()))?;
    let mut c = (0, 0, 0, BTreeMap::new());
    for r in runs {
        c.0 += r["delivered"].as_u64().unwrap_or(0);
        c.1 += r["failed"].as_u64().unwrap_or(0);
        c.2 += r["not_run"].as_u64().unwrap_or(0);
        for (code, n) in r["replies"].as_object().into_iter().flatten() {
            *c.3.entry(code.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    }
    Ok(c)
}

/// Adds every file.
pub fn merge(files: &[PathBuf]) -> Result<Merged, String> {
    let mut m = Merged::default();
    let mut all = Vec::new();
    for f in files {
        match f.extension().and_then(|e| e.to_str()) {
            Some("hlog") => {
                all.extend(read_hlog(f)?);
                m.logs += 1;
            }
            Some("json") => {
                let c = read_json(f)?;
                let acc = m.counted.get_or_insert_with(Default::default);
                acc.0 += c.0;
                acc.1 += c.1;
                acc.2 += c.2;
                for (code, n) in c.3 {
                    *acc.3.entry(code).or_insert(0) += n;
                }
                m.reports += 1;
            }
            _ => {
                return Err(format!(
                    "{}: expected an interval log (.hlog) or a JSON report (.json)",
                    f.display()
                ));
            }
        }
    }
    if m.logs == 0 {
        return Err(
            "no interval log: give the generators' --hlog files (and their --json for the counts)"
                .into(),
        );
    }
    m.start = all.iter().map(|(t, _, _)| *t).min();
    let start = m.start.unwrap_or(SystemTime::UNIX_EPOCH);
    for (t, phase, h) in all {
        let second = t.duration_since(start).unwrap_or_default().as_secs();
        let bucket = m.seconds.entry(second).or_default();
        add(bucket, phase, &h);
        add(&mut m.total, phase, &h);
    }
    for r in m.seconds.values_mut() {
        r.delivered = r.phase(Phase::Message).len();
    }
    m.total.delivered = m.total.phase(Phase::Message).len();
    if let Some((_, failed, _, codes)) = &m.counted {
        m.total.failed = *failed;
        m.total.codes = codes.clone();
    }
    Ok(m)
}

fn add(r: &mut Recorder, phase: Phase, h: &hdrhistogram::Histogram<u64>) {
    let at = Phase::ALL.iter().position(|p| *p == phase).expect("listed");
    // Same bounds (the logs are ours); a foreign one's values beyond them saturate.
    if r.phases[at].add(h).is_err() {
        for v in h.iter_recorded() {
            r.phases[at].saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

impl Merged {
    /// The merged run as one outcome (one interval per second).
    pub fn outcome(&self) -> Outcome {
        let intervals: Vec<Interval> = self
            .seconds
            .iter()
            .map(|(s, r)| Interval {
                start: Duration::from_secs(*s),
                length: Duration::from_secs(1),
                data: r.clone(),
            })
            .collect();
        let elapsed = intervals
            .last()
            .map_or(Duration::from_secs(1), |i| i.start + i.length);
        Outcome {
            before_cut: None,
            total: self.total.clone(),
            intervals,
            elapsed,
            started_at: self.start.unwrap_or(SystemTime::UNIX_EPOCH),
            not_run: self.counted.as_ref().map_or(0, |c| c.2),
            intact: 0,
            corrupted: 0,
            duplicates: 0,
            observed: false,
        }
    }
}

pub async fn run(args: &ReportArgs) -> Result<ExitCode, String> {
    let m = merge(&args.files)?;
    let mut o = m.outcome();
    if let (Some(url), Some(run)) = (&args.fake_api, args.run_id) {
        let api =
            super::sweep::FaultControl::api(url, args.fake_token.clone(), args.fake_server.clone());
        let t = api.tally(run).await?.ok_or_else(|| {
            format!("--fake-api {url}: the fake has no message of run {run:016x} (or does not tally load runs: fake-upstream --tally-load)")
        })?;
        o.intact = t.intact;
        o.corrupted = t.corrupted;
        o.duplicates = t.duplicates;
        o.observed = true;
    }
    let title = format!(
        "merged: {} interval log(s), {} JSON report(s)",
        m.logs, m.reports
    );
    let mut text = report::table(&title, &o);
    if let Some((delivered, ..)) = &m.counted
        && *delivered != o.total.delivered
    {
        text.push_str(&format!(
            "  note: the interval logs hold {} delivered messages, the JSON reports {delivered} (a log or a report missing?)\n",
            o.total.delivered
        ));
    }
    smtp_net::say(&text);
    let failed = o.observed && (o.corrupted > 0 || o.lost() > 0);
    let named = [("merged", &o)];
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&named, None))
            .map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::html("smtp-relay load report", &named, None))
            .map_err(|e| format!("--html {}: {e}", path.display()))?;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
