//! `smtp-relay load`: the command line, the progress bar, `--self`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_wire::Credentials;

use super::{Model, Outcome, Run, Workload, report, stats};
use crate::upstream::TlsMode;

#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub command: Option<LoadCommand>,
    /// The SMTP server or relay to load (required unless --self).
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "self_test")]
    pub target: Option<String>,
    /// Start our relay and a sink in-process and measure direct-to-sink and through-the-relay
    /// with the same workload, then print the ratio.
    #[arg(long = "self", id = "self_test")]
    pub self_test: bool,
    /// STARTTLS after EHLO (required: a server without it is an error).
    #[arg(long, conflicts_with = "tls")]
    pub starttls: bool,
    /// TLS from the first byte (port 465 style).
    #[arg(long)]
    pub tls: bool,
    /// Verify the server against this CA (PEM) instead of the public roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The certificate name to verify (default: the target's host).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// AUTH with these (PLAIN when offered, else LOGIN).
    #[arg(long, value_name = "USER:CODE")]
    pub auth: Option<String>,
    #[arg(long, default_value = "load@example.com")]
    pub from: String,
    /// Recipient address. It may hold the placeholders n (the message number) and r (the
    /// recipient's index in the message) in curly braces, for distinct recipients.
    #[arg(long, default_value = "rcpt{r}@example.org")]
    pub to: String,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    pub recipients: usize,
    /// Body size in octets (generated text), unless --body.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Send this file as the body (line ends made CRLF).
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// Send MAIL and the RCPTs as one group when the server offers PIPELINING.
    #[arg(long)]
    pub pipelining: bool,
    /// Messages per connection before QUIT and a new connection.
    #[arg(long, default_value_t = 1)]
    pub per_connection: u64,
    /// Connections at once (closed loop), or the most the open loop may use.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Open loop: start this many messages a second on a fixed schedule; latency is counted
    /// from each message's intended start (coordinated omission corrected).
    #[arg(long, value_name = "MSGS_PER_S")]
    pub rate: Option<f64>,
    /// Stop after this many messages.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Stop after this many seconds (10 when neither this nor --messages is given).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the latencies in the HdrHistogram interval-log format (one histogram per phase
    /// and second), for HdrHistogram's own tools.
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,
    /// Write a self-contained HTML report (latency percentiles, throughput over time).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Worker threads of the load generator's runtime. Default: one against a target (a
    /// single event loop, as smtp-source; the other cores are the server's), all cores with
    /// --self (the relay and the sink run in the same process).
    #[arg(long)]
    pub threads: Option<usize>,
    /// A fault for the fake upstream behind the relay, held for the whole run (the scenario
    /// syntax: `end of data: delay 200ms, probability 0.1`); repeatable. With --self, on its
    /// sink; with --target, through --fake-api.
    #[arg(long = "fault", value_name = "FAULT")]
    pub faults: Vec<String>,
    /// Sweep a fault: one step per value of its `{a,b,...}` group, after a baseline step
    /// without it (`'end of data: delay {0,50,200,1000}ms'`). Each step holds its fault for
    /// --duration seconds (default 10), then clears it and goes on for --recovery seconds.
    #[arg(long, value_name = "FAULT")]
    pub sweep: Option<String>,
    /// With --sweep: seconds of load after each step's fault cleared, to see the recovery.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub recovery: f64,
    /// With --self: the relay stores and forwards (a 250 once queued): what its queue
    /// absorbs while the upstream fails.
    #[arg(long, requires = "self_test")]
    pub queue: bool,
    /// With --target: the HTTP API of the fake upstream behind the relay under test (the
    /// page of `fake-upstream` or `smtp-relay up`, e.g. http://127.0.0.1:8025), where the
    /// faults are set.
    #[arg(long, value_name = "URL", conflicts_with = "self_test")]
    pub fake_api: Option<String>,
    /// With --fake-api: its token, and which of its servers (default: its first).
    #[arg(long, value_name = "TOKEN", requires = "fake_api")]
    pub fake_token: Option<String>,
    #[arg(long, value_name = "NAME", requires = "fake_api")]
    pub fake_server: Option<String>,
    /// The run's id in every message's integrity header (16 hex digits): the same for every
    /// generator of one run, so that a sink counts them together. Random by default.
    #[arg(long, value_name = "HEX", value_parser = parse_run_id)]
    pub run_id: Option<u64>,
    /// This generator's share of a run several make together, I of N (`--share 2/3`): it
    /// takes 1/N of --rate and of --messages, and numbers its messages apart from the others'.
    #[arg(long, value_name = "I/N", value_parser = parse_share)]
    pub share: Option<(u64, u64)>,
    /// Send each message in BDAT chunks of this many octets (RFC 3030; 262144 when no size
    /// is given) when the server offers CHUNKING, not DATA. With --self, the relay sends
    /// BDAT to the sink too.
    #[arg(long, value_name = "OCTETS", num_args = 0..=1, default_missing_value = "262144")]
    pub bdat: Option<usize>,
}

/// `smtp-relay load report`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LoadCommand {
    /// Merge the interval logs (--hlog) and JSON reports (--json) of several generators of
    /// one run into one report: the histograms added exactly, the counts summed.
    Report(super::merge::ReportArgs),
}

pub(super) fn parse_run_id(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| format!("{s:?}: expected up to 16 hex digits"))
}

/// `I/N` with 1 <= I <= N, as (I - 1, N).
fn parse_share(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{s:?}: expected I/N with 1 <= I <= N, e.g. 2/3");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (u64, u64) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i - 1, n))
}

impl LoadArgs {
    /// This generator's run: the shared id and its share.
    pub fn new_run(&self, body: &[u8]) -> Arc<Run> {
        Run::shared(self.run_id, self.share.unwrap_or((0, 1)), body)
    }
}

impl LoadArgs {
    /// The workload these arguments describe, against `target`.
    pub fn workload(&self, target: &str) -> Result<Workload, String> {
        let mut server = super::plain_server("127.0.0.1:25".parse().expect("an address"));
        server.name = target.to_string();
        server.addr = target.to_string();
        let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
        server.server_name = self
            .server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(|c| c == '[' || c == ']').to_string());
        server.tls = if self.tls {
            TlsMode::Implicit
        } else if self.starttls {
            TlsMode::StartTls
        } else {
            TlsMode::None
        };
        if server.tls != TlsMode::None {
            server.tls_config = Some(match &self.ca {
                Some(ca) => {
                    let pem = std::fs::read_to_string(ca)
                        .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
                    crate::upstream_tls::verify_ca_pem(&format!("--ca {}", ca.display()), &pem)?
                }
                None => crate::upstream_tls::public_roots(),
            });
        }
        server.bdat = self.bdat.map(|n| n.max(1));
        if let Some(auth) = &self.auth {
            let (user, code) = auth
                .split_once(':')
                .ok_or_else(|| format!("--auth {auth:?}: expected USER:CODE"))?;
            server.credentials = Some(Credentials::new(user.to_string(), code.to_string()));
        }
        let body = match &self.body {
            Some(path) => {
                let raw =
                    std::fs::read(path).map_err(|e| format!("--body {}: {e}", path.display()))?;
                crlf(&raw)
            }
            None => super::generated_body(self.size),
        };
        if self.recipients == 0 {
            return Err("--recipients must be at least 1".into());
        }
        if self.per_connection == 0 {
            return Err("--per-connection must be at least 1".into());
        }
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        let duration = match (self.duration, self.messages) {
            (Some(d), _) if !(d > 0.0 && d.is_finite()) => {
                return Err("--duration must be a positive number of seconds".into());
            }
            (Some(d), _) => Some(Duration::from_secs_f64(d)),
            (None, None) => Some(Duration::from_secs(10)),
            (None, Some(_)) => None,
        };
        let model = match self.rate {
            Some(r) if !(r > 0.0 && r.is_finite()) => {
                return Err("--rate must be a positive number of messages a second".into());
            }
            Some(rate) => Model::Open {
                rate: rate / self.share.map_or(1, |s| s.1) as f64,
                connections: self.connections,
            },
            None => Model::Closed {
                connections: self.connections,
            },
        };
        Ok(Workload {
            server,
            from: self.from.clone(),
            to: self.to.clone(),
            recipients: self.recipients,
            body: Arc::new(body),
            pipelining: self.pipelining,
            per_connection: self.per_connection,
            model,
            // Its share of the run's messages: the first `M mod N` generators one more.
            messages: self.messages.map(|m| match self.share {
                Some((i, n)) => m / n + u64::from(i < m % n),
                None => m,
            }),
            duration,
            tick: Duration::from_secs(1),
        })
    }
}

/// Line ends made CRLF, and a last CRLF.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 50 + 2);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        if prev == b'\r' && b != b'\n' {
            out.push(b'\n');
        }
        out.push(b);
        prev = b;
    }
    if prev == b'\r' {
        out.push(b'\n');
    } else if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A progress bar on standard error (hidden when it is not a terminal or with --quiet).
fn progress(label: &str, w: &Workload, quiet: bool) -> (indicatif::ProgressBar, super::Progress) {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else if let Some(n) = w.messages {
        indicatif::ProgressBar::new(n)
    } else {
        indicatif::ProgressBar::new(w.duration.map_or(0, |d| d.as_secs()))
    };
    let by_messages = w.messages.is_some();
    let style = if by_messages {
        "{prefix:>8} [{bar:30}] {pos}/{len} msgs {elapsed_precise} {msg}"
    } else {
        "{prefix:>8} [{bar:30}] {pos}/{len} s {msg}"
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(style)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    let b = bar.clone();
    let started = std::time::Instant::now();
    let update: super::Progress = Box::new(move |iv: &stats::Interval, total: &stats::Recorder| {
        let rate = iv.data.delivered as f64 / iv.length.as_secs_f64().max(1e-9);
        b.set_message(format!("{rate:.0} msgs/s, {} failed", total.failed));
        if by_messages {
            b.set_position(total.delivered + total.failed);
        } else {
            b.set_position(started.elapsed().as_secs());
        }
    });
    (bar, update)
}

/// Runs one workload with a progress bar.
async fn measured(
    label: &str,
    w: &Workload,
    run: Arc<Run>,
    observed: bool,
    quiet: bool,
) -> Outcome {
    let (bar, update) = progress(label, w, quiet);
    let o = super::run(w, run, observed, Some(update)).await;
    bar.finish_and_clear();
    o
}

pub async fn run(args: LoadArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smtp-relay load: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run_inner(args: LoadArgs) -> Result<ExitCode, String> {
    if let Some(LoadCommand::Report(r)) = &args.command {
        return super::merge::run(r).await;
    }
    let base: Vec<fake_upstream::Fault> = args
        .faults
        .iter()
        .map(|f| fake_upstream::faults::parse_fault(f).map_err(|e| format!("--fault {f:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if (args.sweep.is_some() || !base.is_empty()) && !args.self_test && args.fake_api.is_none() {
        return Err(
            "--fault and --sweep need a fake upstream to put the faults on: --self, or --fake-api URL (the fake's page behind the relay under test)".into(),
        );
    }
    if let Some(template) = &args.sweep {
        return sweep(&args, template, base).await;
    }
    let mut runs: Vec<(String, Outcome)> = Vec::new();
    let mut ratio = None;
    let api = args.fake_api.as_ref().map(|url| {
        super::sweep::FaultControl::api(url, args.fake_token.clone(), args.fake_server.clone())
    });
    if args.self_test {
        let setup = SelfSetup::start(args.queue, args.bdat).await?;
        setup.sink.set_faults(base.clone());
        let direct = args.workload(&setup.sink.addr().to_string())?;
        let relayed = args.workload(&setup.relay.addr().to_string())?;
        for (label, w) in [("direct", direct), ("relay", relayed)] {
            let run = args.new_run(&w.body);
            *setup.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(run.clone());
            let o = measured(label, &w, run, true, args.quiet).await;
            smtp_net::say(&report::table(&describe(&w, label), &o));
            runs.push((label.to_string(), o));
        }
        let r = runs[1].1.rate() / runs[0].1.rate().max(1e-9);
        ratio = Some(r);
        smtp_net::say(&format!(
            "\nthrough the relay / direct to the sink: {r:.2} of the throughput ({:.0} vs {:.0} msgs/s)\n",
            runs[1].1.rate(),
            runs[0].1.rate()
        ));
        setup.relay.shutdown().await;
        setup.sink.shutdown().await;
    } else {
        let target = args.target.clone().expect("required by clap");
        let w = args.workload(&target)?;
        if let Some(api) = &api {
            api.set(&base).await?;
        }
        let run = args.new_run(&w.body);
        let run_id = run.id;
        let mut o = measured("load", &w, run, false, args.quiet).await;
        if let Some(api) = &api {
            api.set(&[]).await?;
            // The fake's count of this run (all its generators so far), when it keeps one.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if args.share.is_none()
                && let Some(t) = api.tally(run_id).await?
            {
                o.intact = t.intact;
                o.corrupted = t.corrupted;
                o.duplicates = t.duplicates;
                o.observed = true;
            }
        }
        smtp_net::say(&report::table(&describe(&w, &target), &o));
        runs.push((target, o));
    }
    let named: Vec<(&str, &Outcome)> = runs.iter().map(|(n, o)| (n.as_str(), o)).collect();
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&named, ratio))
            .map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::html("smtp-relay load", &named, ratio))
            .map_err(|e| format!("--html {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.hlog {
        let mut all = Vec::new();
        for (name, o) in &runs {
            let log = stats::interval_log(
                &o.intervals,
                o.started_at,
                &format!("smtp-relay load: {name}"),
            )?;
            all.extend_from_slice(&log);
        }
        std::fs::write(path, all).map_err(|e| format!("--hlog {}: {e}", path.display()))?;
    }
    let failed = runs
        .iter()
        .any(|(_, o)| o.total.delivered == 0 || o.corrupted > 0 || o.lost() > 0);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--sweep`: the baseline and each step against the relay (with --self, ours in front of
/// an in-process sink; else the target, the faults through --fake-api).
async fn sweep(
    args: &LoadArgs,
    template: &str,
    base: Vec<fake_upstream::Fault>,
) -> Result<ExitCode, String> {
    use super::sweep::{Baseline, FaultControl, StepSetup, expand, run_step};
    let steps = expand(template)?;
    if args.messages.is_some() {
        return Err("--sweep runs each step for --duration seconds: no --messages".into());
    }
    let hold = Duration::from_secs_f64(args.duration.unwrap_or(10.0));
    if !(args.recovery >= 0.0 && args.recovery.is_finite()) {
        return Err("--recovery must be a number of seconds".into());
    }
    let recovery = Duration::from_secs_f64(args.recovery);
    let self_setup = if args.self_test {
        Some(SelfSetup::start(args.queue, args.bdat).await?)
    } else {
        None
    };
    let (target, control) = match &self_setup {
        Some(s) => (
            s.relay.addr().to_string(),
            FaultControl::Local(s.sink.clone()),
        ),
        None => (
            args.target.clone().expect("required by clap"),
            FaultControl::api(
                args.fake_api.as_deref().expect("checked above"),
                args.fake_token.clone(),
                args.fake_server.clone(),
            ),
        ),
    };
    let w = args.workload(&target)?;
    let queue_len = self_setup.as_ref().filter(|_| args.queue).map(|s| {
        let relay = s.relay.clone();
        Arc::new(move || relay.queue_len()) as Arc<dyn Fn() -> Option<u64> + Send + Sync>
    });
    let setup = StepSetup {
        control: &control,
        base: &base,
        hold,
        recovery,
        queue_len,
        observe: self_setup.as_ref().map(|s| s.current.clone()),
    };
    let mut done: Vec<super::sweep::Step> = Vec::new();
    let mut baseline: Option<Baseline> = None;
    let all: Vec<(String, Option<fake_upstream::Fault>)> =
        std::iter::once(("baseline".to_string(), None))
            .chain(steps.into_iter().map(|(t, f)| (t, Some(f))))
            .collect();
    let n = all.len();
    for (i, (label, fault)) in all.iter().enumerate() {
        let mut pw = w.clone();
        pw.duration = Some(hold + recovery);
        pw.messages = None;
        let (bar, update) = progress(&format!("{}/{n}", i + 1), &pw, args.quiet);
        let step = run_step(
            &w,
            label,
            fault.as_ref(),
            &setup,
            baseline.as_ref(),
            Some(update),
        )
        .await;
        bar.finish_and_clear();
        let step = step?;
        if baseline.is_none() {
            baseline = Some(Baseline::of(&step, hold + recovery));
        }
        if !args.quiet {
            smtp_net::say(&report::step_line(&step));
        }
        done.push(step);
    }
    let title = format!("{} under {template}", describe(&w, &target));
    smtp_net::say(&report::sweep_table(&title, &done, hold, recovery));
    write_sweep_reports(args, &title, &done, hold, recovery)?;
    control.set(&[]).await?;
    if let Some(s) = self_setup {
        s.relay.shutdown().await;
        s.sink.shutdown().await;
    }
    let corrupted = done.iter().any(|s| s.outcome.corrupted > 0);
    Ok(
        if corrupted || done.iter().all(|s| s.outcome.total.delivered == 0) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// `--json`, `--html` and `--hlog` for a sweep.
fn write_sweep_reports(
    args: &LoadArgs,
    title: &str,
    done: &[super::sweep::Step],
    hold: Duration,
    recovery: Duration,
) -> Result<(), String> {
    if let Some(path) = &args.json {
        std::fs::write(path, report::sweep_json(title, done, hold, recovery))
            .map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::sweep_html(title, done, hold, recovery))
            .map_err(|e| format!("--html {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.hlog {
        let mut all = Vec::new();
        for s in done {
            let log = stats::interval_log(
                &s.outcome.intervals,
                s.outcome.started_at,
                &format!("smtp-relay load --sweep: {}", s.label),
            )?;
            all.extend_from_slice(&log);
        }
        std::fs::write(path, all).map_err(|e| format!("--hlog {}: {e}", path.display()))?;
    }
    Ok(())
}

fn describe(w: &Workload, target: &str) -> String {
    let model = match w.model {
        Model::Closed { connections } => format!("closed loop, {connections} connections"),
        Model::Open { rate, connections } => {
            format!("open loop, {rate:.0} msgs/s on at most {connections} connections")
        }
    };
    format!(
        "{target}: {model}, {} octets, {} recipient(s), {} per connection{}",
        w.body.len(),
        w.recipients,
        w.per_connection,
        if w.pipelining { ", pipelining" } else { "" }
    )
}

/// `--self`: a sink and our relay in front of it, in-process on 127.0.0.1, plain SMTP on
/// both hops (the load measures the relay, not TLS), no limits, no transcripts.
pub struct SelfSetup {
    pub sink: fake_upstream::Handle,
    pub relay: crate::relay::RelayHandle,
    /// The run the sink's observer reports to.
    pub current: Arc<Mutex<Option<Arc<Run>>>>,
    _dir: TempDir,
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl SelfSetup {
    /// The sink and the relay; with `queue`, the relay stores and forwards; with `bdat`, it
    /// sends the sink BDAT chunks of that size.
    pub async fn start(queue: bool, bdat: Option<usize>) -> Result<SelfSetup, String> {
        // SMTP_RELAY_LOAD_DIR: where the relay's spool goes (e.g. a tmpfs, to measure the
        // relay without the disk).
        let base = std::env::var_os("SMTP_RELAY_LOAD_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        // One directory per setup: several in one process (tests) must not share a spool,
        // a queue or TLS files.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("smtp-relay-load-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let current: Arc<Mutex<Option<Arc<Run>>>> = Arc::default();
        let persona = fake_upstream::Persona::load("sink").map_err(|e| e.to_string())?;
        let mut config = fake_upstream::Config::new(persona, dir.join("sink"));
        config = config.no_limits();
        config.listen_tls = None;
        config.transcripts = false;
        config.write_transcripts = false;
        config.history = 0;
        let c = current.clone();
        config.observer = Some(fake_upstream::Observer(Arc::new(move |m: &[u8]| {
            let run = c.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(run) = run {
                run.observe(m);
            }
        })));
        let sink = fake_upstream::FakeUpstream::start(config)
            .await
            .map_err(|e| format!("the sink: {e}"))?;
        let mut upstream = super::plain_server(sink.addr());
        upstream.name = format!("sink {}", sink.addr());
        upstream.bdat = bdat;
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let mut relay_config =
            crate::relay::RelayConfig::new("relay.load", listen, dir.join("spool"), upstream);
        relay_config.auth = crate::relay::AuthMode::TrustedNetworks(vec![(
            "127.0.0.0".parse().expect("an address"),
            8,
        )]);
        relay_config.max_sessions = 20_000;
        relay_config.max_sessions_per_ip = 20_000;
        relay_config.max_recipients = 1000;
        relay_config.max_message_size = 1 << 30;
        if queue {
            relay_config.default_queue = true;
            relay_config.queue = Some(crate::relay::QueueSettings {
                dir: dir.join("queue"),
                retry: crate::queue::deliver::Retry {
                    first: Duration::from_millis(500),
                    max: Duration::from_secs(5),
                    ..crate::queue::deliver::Retry::default()
                },
                concurrency: 16,
                tick: Duration::from_millis(100),
                secrets: crate::queue::deliver::secrets_of(&[]),
                route_limits: Default::default(),
            });
        }
        let relay = crate::relay::start(relay_config)
            .await
            .map_err(|e| format!("the relay: {e}"))?;
        Ok(SelfSetup {
            sink,
            relay,
            current,
            _dir: TempDir(dir),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_become_crlf() {
        assert_eq!(crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(crlf(b""), b"\r\n");
        assert_eq!(crlf(b"x\r"), b"x\r\n");
    }
}
