//! Replays scenarios: for each, fresh fake upstreams and (unless the target is someone
//! else's relay) a fresh smtp-relay in-process, all on 127.0.0.1 port 0; the client steps
//! under the scenario's timeout; then the checks on what the upstreams got, and a normalised
//! two-hop transcript.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use fake_upstream::tls::{TlsFiles, TlsMaterial};
use fake_upstream::{Config as FakeConfig, FakeUpstream, Persona};
use smtp_net::Io;
use smtp_wire::{BareLineEnding, ClientConnection, DataDecoder, DataProgress, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Check, CodePattern, ExpectReply, Scenario, Step, Upstream};
use crate::relay::{self, AuthMode, RelayConfig, RelayHandle};
use crate::route::Route;
use crate::upstream::{Timeouts, TlsMode, UpstreamConfig};
use crate::upstream_tls::{TlsPolicy, Trust};

/// Which relay the client steps talk to.
#[derive(Clone, Debug)]
pub enum Target {
    /// smtp-relay itself, started in-process for each scenario.
    Ours,
    /// Another relay, already running, configured to deliver to `upstream_listen` (plain
    /// SMTP) where the runner starts the fake upstream. Only scenarios tagged `portable` run;
    /// one at a time, since they share that address.
    External {
        relay: SocketAddr,
        upstream_listen: SocketAddr,
    },
}

/// How a run goes.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    /// Scenarios at once (external targets: always 1).
    pub jobs: usize,
    /// Overrides each scenario's own timeout.
    pub timeout: Option<Duration>,
    /// Fake upstream data, spools and the run's CA go here (one directory per scenario).
    pub work_dir: PathBuf,
    /// After the first failure, start no more scenarios (they are reported skipped).
    pub fail_fast: bool,
    /// Against another relay: how long the shared upstream must hear nothing before a
    /// scenario's checks run (a scenario's `settle:` overrides it).
    pub settle: Duration,
    /// Seeds the fake upstreams' randomness (faults with a probability, transaction ids,
    /// tokens); printed with every failure so that a run can be repeated (`--seed`).
    pub seed: u64,
}

/// What a whole run gave.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// In the scenarios' order.
    pub outcomes: Vec<Outcome>,
    /// Against another relay: messages that arrived outside the scenario that sent them.
    pub strays: Vec<Stray>,
}

/// A message the shared upstream received outside the window of the scenario that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stray {
    /// What arrived, when, and whose it was.
    pub what: String,
    /// It carries no scenario's token and came when no scenario ran: no verdict covered it
    /// (a smuggled message delivered late looks like this), so the run fails.
    pub unattributed: bool,
}

/// How a scenario ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Why, with the scenario line, the expected and the received reply.
    Fail(String),
    /// Not run against this target, and why.
    Skip(String),
    /// Failed as the run's baseline says this relay does (`--baseline`): the reason, and the
    /// baseline's.
    Known(String),
}

/// One scenario's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub name: String,
    pub path: PathBuf,
    pub verdict: Verdict,
    pub duration: Duration,
    /// The normalised two-hop transcript (empty when skipped).
    pub transcript: String,
}

/// Runs every scenario, `opts.jobs` at once; `done` is told of each as it ends. The
/// outcomes come back in the scenarios' order.
pub async fn run_all(
    scenarios: Vec<Scenario>,
    opts: &Options,
    done: impl Fn(&Outcome) + Send + Sync + 'static,
) -> Result<Run, String> {
    std::fs::create_dir_all(&opts.work_dir)
        .map_err(|e| format!("{}: {e}", opts.work_dir.display()))?;
    let tls = fake_upstream::tls::load_or_generate(TlsFiles::in_dir(&opts.work_dir))
        .map_err(|e| format!("the run's CA: {e}"))?;
    // Against another relay, one upstream for the whole run: a store-and-forward relay
    // delivers, and keeps its upstream sessions, across scenario boundaries.
    let shared = match opts.target {
        Target::Ours => None,
        Target::External {
            upstream_listen, ..
        } => Some(Arc::new(
            SharedUpstream::start(&scenarios, opts, &tls, upstream_listen).await?,
        )),
    };
    let jobs = match opts.target {
        Target::Ours => opts.jobs.max(1),
        Target::External { .. } => 1,
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(jobs));
    let done = Arc::new(done);
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(scenarios.len());
    for (index, sc) in scenarios.into_iter().enumerate() {
        let (done, opts, tls) = (done.clone(), opts.clone(), tls.clone());
        let failed = failed.clone();
        let shared = shared.clone();
        // Taken here, in the scenarios' order: they start in that order (one at a time, a
        // failure is seen before the next one starts).
        let permit = gate.clone().acquire_owned().await.expect("never closed");
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            use std::sync::atomic::Ordering;
            let outcome = if opts.fail_fast && failed.load(Ordering::SeqCst) {
                Outcome {
                    name: sc.name.clone(),
                    path: sc.path.clone(),
                    verdict: Verdict::Skip("not run: --fail-fast after a failure".into()),
                    duration: Duration::ZERO,
                    transcript: String::new(),
                }
            } else {
                run_one_in(&sc, &opts, &tls, shared.map(|s| (s, index))).await
            };
            if matches!(outcome.verdict, Verdict::Fail(_)) {
                failed.store(true, Ordering::SeqCst);
            }
            done(&outcome);
            outcome
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(
            t.await
                .map_err(|e| format!("a scenario task failed: {e}"))?,
        );
    }
    let strays = match &shared {
        Some(shared) => {
            // What a store-and-forward relay still delivers arrives now or is never seen: at
            // least 3 s of quiet (at most 15 s in all) before the strays are counted.
            shared
                .quiet(
                    opts.settle.max(Duration::from_secs(3)),
                    Duration::from_secs(15),
                )
                .await;
            let strays = shared.strays();
            shared.fake.shutdown().await;
            strays
        }
        None => Vec::new(),
    };
    Ok(Run { outcomes, strays })
}

/// Runs one scenario with the run's CA.
pub async fn run_one(sc: &Scenario, opts: &Options, tls: &TlsMaterial) -> Outcome {
    run_one_in(sc, opts, tls, None).await
}

/// The header line the runner puts first in every message it sends to another relay:
/// `X-Scenario-Token: <run>-<index> <name>`. It names the scenario (and the run) that sent a
/// message, whenever and however the relay delivers it.
const TOKEN_HEADER: &str = "X-Scenario-Token: ";

/// The upstream shared by every scenario of a run against another relay, and each scenario's
/// window on it.
struct SharedUpstream {
    fake: Arc<fake_upstream::Handle>,
    /// How it is set up: a scenario needing anything else (but faults) is skipped.
    upstream: Upstream,
    /// Tells this run's tokens from an earlier run's.
    run: String,
    names: Vec<String>,
    /// Per scenario that ran: its index, and the fake's received count when it started and
    /// when its checks ran.
    windows: std::sync::Mutex<Vec<(usize, u64, u64)>>,
}

impl SharedUpstream {
    async fn start(
        scenarios: &[Scenario],
        opts: &Options,
        tls: &TlsMaterial,
        listen: SocketAddr,
    ) -> Result<SharedUpstream, String> {
        let upstream = Upstream::new("sink");
        let dir = opts.work_dir.join("upstream");
        let _ = std::fs::remove_dir_all(&dir);
        let fake = start_fake(&upstream, &opts.work_dir, dir, tls, Some(listen), opts.seed).await?;
        let run = {
            use std::hash::BuildHasher;
            let random = std::collections::hash_map::RandomState::new();
            format!("{:08x}", random.hash_one(std::process::id()) as u32)
        };
        Ok(SharedUpstream {
            fake: Arc::new(fake),
            upstream,
            run,
            names: scenarios.iter().map(|s| s.name.clone()).collect(),
            windows: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// What scenario `index`'s messages begin with.
    fn header(&self, index: usize) -> String {
        format!(
            "{TOKEN_HEADER}{}-{index} {}\r\n",
            self.run, self.names[index]
        )
    }

    /// Whose token `content` carries: `Some(index)`, or `None` for no token of this run.
    fn owner(&self, content: &[u8]) -> Option<usize> {
        let needle = format!("{TOKEN_HEADER}{}-", self.run);
        let at = memchr::memmem::find(content, needle.as_bytes())? + needle.len();
        let digits: String = content[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        digits.parse().ok()
    }

    /// Waits until the fake heard nothing for `quiet` (at most `limit`).
    async fn quiet(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = (self.fake.activity(), Instant::now());
        while Instant::now() < deadline && last.1.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let a = self.fake.activity();
            if a != last.0 {
                last = (a, Instant::now());
            }
        }
    }

    /// Every received message with its position in the fake's count.
    fn received(&self) -> Vec<(u64, fake_upstream::Received)> {
        let all = self.fake.received();
        let first = self.fake.received_count() - all.len() as u64;
        (first..).zip(all).collect()
    }

    /// The messages that arrived outside their scenario's window, or in none.
    fn strays(&self) -> Vec<Stray> {
        let windows = self
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let during = |n: u64| windows.iter().find(|(_, from, to)| n >= *from && n < *to);
        let mut strays = Vec::new();
        for (n, r) in self.received() {
            let what = format!("a message from {} to {}", r.mail_from, r.rcpt_to.join(", "));
            let came = match during(n) {
                Some((i, _, _)) => format!("during {}", self.names[*i]),
                None => "when no scenario was running (between two, or after the last)".to_string(),
            };
            match (self.owner(&r.content), during(n)) {
                (Some(owner), Some((i, _, _))) if owner == *i => {}
                (Some(owner), _) => strays.push(Stray {
                    what: format!(
                        "{what} sent by {} arrived late, {came}",
                        self.names.get(owner).map_or("?", String::as_str)
                    ),
                    unattributed: false,
                }),
                (None, Some(_)) => {}
                (None, None) => strays.push(Stray {
                    what: format!(
                        "{what} that carries no scenario's token arrived {came}: no check saw it"
                    ),
                    unattributed: true,
                }),
            }
        }
        strays
    }
}

/// A scenario's view of the shared upstream.
struct Window {
    shared: Arc<SharedUpstream>,
    index: usize,
    /// When the scenario started, and the fake's received count then.
    start: Instant,
    from: u64,
}

impl Window {
    /// Its messages: those with its token, and those with none that came during it. The
    /// token line is taken out (the checks compare what the scenario itself sent).
    fn received(&self) -> Vec<fake_upstream::Received> {
        self.shared
            .received()
            .into_iter()
            .filter(|(n, r)| match self.shared.owner(&r.content) {
                Some(owner) => owner == self.index,
                None => *n >= self.from,
            })
            .map(|(_, mut r)| {
                r.content = Arc::new(without_token(&r.content));
                r
            })
            .collect()
    }

    /// The upstream sessions as this scenario saw them: the lines since it started, but for
    /// the transactions that carried another scenario's message; its DATA phases.
    fn transcripts(&self) -> Vec<fake_upstream::Transcript> {
        let mut out = Vec::new();
        for t in self.shared.fake.transcripts() {
            let mut keep: Vec<bool> = t.times.iter().map(|at| *at >= self.start).collect();
            let mut data = Vec::new();
            for d in &t.data {
                let owner = self.shared.owner(&d.raw);
                let mine = match owner {
                    Some(o) => o == self.index,
                    None => d.at.is_some_and(|at| at >= self.start),
                };
                if mine {
                    data.push(d.clone());
                } else if owner.is_some() {
                    // The MAIL that began its transaction up to the reply that ended it.
                    let begin = t.lines[..d.line.min(t.lines.len())]
                        .iter()
                        .rposition(|l| l.to_ascii_uppercase().starts_with("C: MAIL"))
                        .unwrap_or(d.line);
                    let end = t.lines[d.line.min(t.lines.len())..]
                        .iter()
                        .position(|l| l.starts_with("S: "))
                        .map_or(t.lines.len(), |e| d.line + e + 1);
                    for k in keep.iter_mut().take(end).skip(begin) {
                        *k = false;
                    }
                }
            }
            if !keep.contains(&true) && data.is_empty() {
                continue;
            }
            let mut mine = t.clone();
            (mine.lines, mine.times) = t
                .lines
                .iter()
                .zip(&t.times)
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|((l, at), _)| (l.clone(), *at))
                .unzip();
            mine.data = data;
            out.push(mine);
        }
        out
    }
}

/// `content` without the runner's token line.
fn without_token(content: &[u8]) -> Vec<u8> {
    let at = if content.starts_with(TOKEN_HEADER.as_bytes()) {
        Some(0)
    } else {
        memchr::memmem::find(content, format!("\n{TOKEN_HEADER}").as_bytes()).map(|i| i + 1)
    };
    match at {
        Some(i) => {
            let end = memchr::memchr(b'\n', &content[i..]).map_or(content.len(), |e| i + e + 1);
            [&content[..i], &content[end..]].concat()
        }
        None => content.to_vec(),
    }
}

/// Runs one scenario; against another relay, on the run's shared upstream as scenario
/// `index` of the run.
async fn run_one_in(
    sc: &Scenario,
    opts: &Options,
    tls: &TlsMaterial,
    shared: Option<(Arc<SharedUpstream>, usize)>,
) -> Outcome {
    let started = Instant::now();
    let outcome = |verdict, transcript| Outcome {
        name: sc.name.clone(),
        path: sc.path.clone(),
        verdict,
        duration: started.elapsed(),
        transcript,
    };
    if matches!(opts.target, Target::External { .. }) && !sc.tags.iter().any(|t| t == "portable") {
        return outcome(
            Verdict::Skip("depends on smtp-relay's own policy (not tagged portable)".into()),
            String::new(),
        );
    }
    if let Some((shared, _)) = &shared {
        let mut wants = sc.upstream.clone();
        wants.faults.clear();
        if wants != shared.upstream || !sc.routes.is_empty() {
            return outcome(
                Verdict::Skip(format!(
                    "needs an upstream of its own ({}{}); a run against another relay has one shared sink",
                    sc.upstream.persona,
                    if sc.routes.is_empty() {
                        ""
                    } else {
                        " and routes"
                    }
                )),
                String::new(),
            );
        }
    }
    let dir = opts.work_dir.join(&sc.name);
    let _ = std::fs::remove_dir_all(&dir);
    let env = match Env::start(sc, opts, tls, &dir, shared).await {
        Ok(env) => env,
        Err(e) => return outcome(Verdict::Fail(format!("setup: {e}")), String::new()),
    };
    if !sc.requires.is_empty() {
        match advertised(env.relay_addr).await {
            Ok(keywords) => {
                let missing: Vec<&str> = sc
                    .requires
                    .iter()
                    .filter(|r| !keywords.contains(r))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    env.stop_fakes().await;
                    if let Some(relay) = &env.relay {
                        relay.shutdown().await;
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    return outcome(
                        Verdict::Skip(format!(
                            "requires {}, which the relay does not advertise",
                            missing.join(" and ")
                        )),
                        String::new(),
                    );
                }
            }
            Err(e) => {
                return outcome(
                    Verdict::Fail(format!("setup: asking the relay what it offers: {e}")),
                    String::new(),
                );
            }
        }
    }
    let limit = opts.timeout.unwrap_or(sc.timeout);
    let mut client = Client::new(env.client_tls.clone());
    if let Some(w) = &env.window {
        w.shared.fake.set_faults(sc.upstream.faults.clone());
        client.token = Some(w.shared.header(w.index));
    }
    let steps = tokio::time::timeout(limit, drive(sc, &env, &mut client)).await;
    let mut verdict = match steps {
        Ok(Ok(())) => Verdict::Pass,
        Ok(Err(e)) => Verdict::Fail(e),
        Err(_) => Verdict::Fail(format!(
            "timed out after {}s at line {} ({})",
            limit.as_secs_f64(),
            client.at_line,
            client.at_step
        )),
    };
    drop(client.conn.take());
    client.held.clear();
    // Store and forward: the queue empties (delivered or bounced) before the relay stops.
    if let Some(dir) = &env.queue_dir {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline
            && crate::spool::files(&dir.join("msg")).map_or(0, |f| f.len()) > 0
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Let the relay finish: its sessions end, bounces go out, transcripts are written.
    if let Some(relay) = &env.relay {
        relay.shutdown().await;
        // Its upstream sessions end with it: their transcripts are complete once the fakes
        // count no open connection (the checks read them). A stalled fake session (a `stall`
        // fault) stays open whatever the relay did: the wait is short.
        for (_, fake) in &env.fakes {
            fake.wait_idle(Duration::from_secs(1)).await;
        }
    }
    // After a failed step the verdict is made: the upstream gets its quiet window for the
    // transcript, not the wait for messages that may never come.
    let failed = verdict != Verdict::Pass;
    env.settle(sc, opts.settle, &client.sent, &client.finals, failed)
        .await;
    if verdict == Verdict::Pass
        && let Err(e) = check_all(sc, &env, &client)
    {
        verdict = Verdict::Fail(e);
    }
    let transcript = normalize(&env.transcript(sc, &client));
    if let Some(w) = &env.window {
        w.shared.fake.set_faults(Vec::new());
        let to = w.shared.fake.received_count();
        w.shared
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((w.index, w.from, to));
    }
    env.stop_fakes().await;
    if verdict == Verdict::Pass {
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Every failure says how to repeat it.
    if let Verdict::Fail(why) = verdict {
        verdict = Verdict::Fail(format!("{why} [seed {}]", opts.seed));
    }
    outcome(verdict, transcript)
}

/// The EHLO keywords the relay advertises (upper case), asked on a connection of its own
/// (greeting, EHLO, QUIT; 5 s for each reply).
async fn advertised(relay: SocketAddr) -> Result<Vec<String>, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let wait = Duration::from_secs(5);
    let timed = |what: &'static str| move |_| format!("no {what} within 5 s");
    let tcp = tokio::time::timeout(wait, tokio::net::TcpStream::connect(relay))
        .await
        .map_err(timed("connection"))?
        .map_err(|e| format!("connect: {e}"))?;
    let mut io = BufReader::new(tcp);
    let reply = async |io: &mut BufReader<tokio::net::TcpStream>| -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(wait, io.read_line(&mut line))
                .await
                .map_err(timed("reply"))?
                .map_err(|e| e.to_string())?;
            if n == 0 || line.len() > 4096 || lines.len() > 100 {
                return Err("closed or overlong reply".into());
            }
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.trim_end().to_string());
            if last {
                return Ok(lines);
            }
        }
    };
    reply(&mut io).await?;
    io.get_mut()
        .write_all(b"EHLO requires.probe\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let ehlo = reply(&mut io).await?;
    let _ = io.get_mut().write_all(b"QUIT\r\n").await;
    let _ = reply(&mut io).await;
    Ok(ehlo
        .iter()
        .skip(1)
        .filter_map(|l| l.get(4..))
        .filter_map(|k| k.split_whitespace().next())
        .map(|k| k.to_ascii_uppercase())
        .collect())
}

/// The fake upstreams and the relay of one scenario.
struct Env {
    /// The default route's upstream first, then one per route (label, handle).
    fakes: Vec<(String, Arc<fake_upstream::Handle>)>,
    /// Against another relay: this scenario's part of the run's shared upstream.
    window: Option<Window>,
    relay: Option<RelayHandle>,
    relay_addr: SocketAddr,
    relay_tls_addr: Option<SocketAddr>,
    client_tls: Arc<rustls::ClientConfig>,
    external: bool,
    /// Where `message:` files are found.
    messages_dir: PathBuf,
    /// The relay's spool (smtp-relay only).
    spool_dir: Option<PathBuf>,
    /// The relay's queue, in store-and-forward mode.
    queue_dir: Option<PathBuf>,
    scenario_dir: PathBuf,
}

impl Env {
    async fn start(
        sc: &Scenario,
        opts: &Options,
        tls: &TlsMaterial,
        dir: &Path,
        shared: Option<(Arc<SharedUpstream>, usize)>,
    ) -> Result<Env, String> {
        let scenario_dir = sc
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut fakes = Vec::new();
        let window = match shared {
            Some((shared, index)) => {
                fakes.push(("default".to_string(), shared.fake.clone()));
                Some(Window {
                    from: shared.fake.received_count(),
                    start: Instant::now(),
                    shared,
                    index,
                })
            }
            None => {
                let fake = start_fake(
                    &sc.upstream,
                    &scenario_dir,
                    dir.join("upstream"),
                    tls,
                    None,
                    opts.seed,
                )
                .await?;
                fakes.push(("default".to_string(), Arc::new(fake)));
                for r in &sc.routes {
                    let fake = start_fake(
                        &r.upstream,
                        &scenario_dir,
                        dir.join(format!("upstream-{}", r.name)),
                        tls,
                        None,
                        opts.seed,
                    )
                    .await?;
                    fakes.push((r.name.clone(), Arc::new(fake)));
                }
                None
            }
        };
        let client_tls =
            fake_upstream::tls::client_config(&tls.ca_pem).map_err(|e| e.to_string())?;
        let common = Env {
            relay: None,
            relay_addr: "127.0.0.1:0".parse().expect("an address"),
            relay_tls_addr: None,
            client_tls,
            external: false,
            messages_dir: scenario_dir.join("messages"),
            spool_dir: None,
            queue_dir: None,
            scenario_dir,
            fakes,
            window,
        };
        match opts.target {
            Target::External { relay, .. } => Ok(Env {
                relay_addr: relay,
                external: true,
                ..common
            }),
            Target::Ours => {
                let mut config = relay_config(sc, &common, tls, dir)?;
                // The default route's accounts: the relay's users and secrets in queue mode.
                let accounts: Vec<(String, String)> = common.fakes[0]
                    .1
                    .users()
                    .iter()
                    .filter(|u| u.smtp)
                    .map(|u| (u.address.to_lowercase(), u.code.clone()))
                    .collect();
                let secrets: std::collections::HashMap<String, smtp_wire::Credentials> = accounts
                    .iter()
                    .map(|(a, c)| (a.clone(), smtp_wire::Credentials::new(a.clone(), c.clone())))
                    .collect();
                config.queue = Some(crate::relay::QueueSettings {
                    dir: dir.join("queue"),
                    retry: crate::queue::deliver::Retry {
                        first: Duration::from_millis(200),
                        max: Duration::from_secs(1),
                        lifetime: Duration::from_secs(60),
                        jitter: 0.0,
                    },
                    concurrency: 2,
                    tick: Duration::from_millis(50),
                    secrets: std::sync::Arc::new(move |who: &str| {
                        secrets.get(&who.to_lowercase()).cloned()
                    }),
                    route_limits: Default::default(),
                });
                for (k, v) in &sc.relay {
                    apply_relay_option(&mut config, &accounts, k, v)?;
                }
                if !config.default_queue {
                    config.queue = None;
                }
                let queue_dir = config.queue.as_ref().map(|q| q.dir.clone());
                let relay = relay::start(config)
                    .await
                    .map_err(|e| format!("relay: {e}"))?;
                Ok(Env {
                    spool_dir: Some(dir.join("spool")),
                    queue_dir,
                    relay_addr: relay.addr(),
                    relay_tls_addr: relay.tls_addr(),
                    relay: Some(relay),
                    ..common
                })
            }
        }
    }

    /// Waits until the upstreams stop receiving (a store-and-forward relay delivers after
    /// its 250): for an external relay, until the expected count arrived and no upstream
    /// heard anything new (a command, a reply, DATA bytes, on any session, open or closed)
    /// for a second (at most 15 s).
    /// With `expect consistent`, it also waits until every message the client was told 2xx
    /// for arrived or a bounce did (a relay bounces after it was refused upstream).
    async fn settle(
        &self,
        sc: &Scenario,
        quiet: Duration,
        sent: &[Vec<u8>],
        finals: &[Option<Reply>],
        failed: bool,
    ) {
        if !self.external {
            return;
        }
        let quiet = sc.settle.unwrap_or(quiet);
        let consistent = !failed && sc.checks.iter().any(|c| c.item == Check::Consistent);
        // As many messages arrived as were accepted (a repaired copy counts), or a bounce.
        let accounted = || {
            let received = self.received();
            let accepted = finals
                .iter()
                .take(sent.len())
                .filter(|r| {
                    r.as_ref()
                        .is_some_and(|r| r.severity() == smtp_wire::Severity::Completion)
                })
                .count();
            received.iter().any(|(_, r)| is_bounce(r))
                || received.iter().filter(|(_, r)| !is_bounce(r)).count() >= accepted
        };
        let want = sc
            .checks
            .iter()
            .filter(|_| !failed)
            .find_map(|c| match c.item {
                Check::Messages(n) => Some(n as u64),
                Check::Delivered(_) | Check::BodyIntact | Check::UpstreamGot(_) => Some(1),
                _ => None,
            });
        let deadline = Instant::now() + Duration::from_secs(15).max(quiet * 2);
        let activity = || self.fakes.iter().map(|(_, f)| f.activity()).sum::<u64>();
        let mut last = (activity(), Instant::now());
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = self.received_count();
            let a = activity();
            if a != last.0 {
                last = (a, Instant::now());
            }
            let enough = want.is_none_or(|w| n >= w) && (!consistent || accounted());
            if enough && last.1.elapsed() >= quiet {
                return;
            }
        }
    }

    fn received_count(&self) -> u64 {
        match &self.window {
            Some(w) => w.received().len() as u64,
            None => self.fakes.iter().map(|(_, f)| f.received_count()).sum(),
        }
    }

    /// Stops the scenario's own fakes (not the run's shared one).
    async fn stop_fakes(&self) {
        if self.window.is_none() {
            for (_, fake) in &self.fakes {
                fake.shutdown().await;
            }
        }
    }

    /// The upstream sessions of this scenario, by route label: for a shared upstream, its
    /// window on them.
    fn upstream_transcripts(&self) -> Vec<(String, fake_upstream::Transcript)> {
        if let Some(w) = &self.window {
            return w
                .transcripts()
                .into_iter()
                .map(|t| ("default".to_string(), t))
                .collect();
        }
        self.fakes
            .iter()
            .flat_map(|(label, f)| f.transcripts().into_iter().map(move |t| (label.clone(), t)))
            .collect()
    }

    fn received(&self) -> Vec<(String, fake_upstream::Received)> {
        if let Some(w) = &self.window {
            return w
                .received()
                .into_iter()
                .map(|r| ("default".to_string(), r))
                .collect();
        }
        self.fakes
            .iter()
            .flat_map(|(label, f)| f.received().into_iter().map(move |r| (label.clone(), r)))
            .collect()
    }

    /// The two-hop transcript: for our relay its own (both hops in time order, TLS and AUTH
    /// marked, secrets redacted); for another relay the client's side and the upstream's
    /// merged by time. Then what each upstream received, byte for byte.
    fn transcript(&self, sc: &Scenario, client: &Client) -> String {
        let mut out = format!("scenario {}: {}\n", sc.name, sc.description);
        match &self.relay {
            Some(relay) => {
                for t in relay.transcripts() {
                    out.push_str(&t);
                }
            }
            None => {
                let mut events: Vec<(Instant, String)> = client.events.clone();
                for (label, t) in self.upstream_transcripts() {
                    {
                        for (line, at) in t.lines.iter().zip(&t.times) {
                            let mark = if label == "default" {
                                "U".to_string()
                            } else {
                                format!("U[{label}]")
                            };
                            let shown = match line.split_once(": ") {
                                Some(("C", rest)) => format!("    {mark}> {rest}"),
                                Some(("S", rest)) => format!("    {mark}< {rest}"),
                                _ => format!("    {mark} {line}"),
                            };
                            events.push((*at, shown));
                        }
                    }
                }
                events.sort_by_key(|(at, _)| *at);
                for (_, line) in events {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        let received = self.received();
        for (label, fake) in &self.fakes {
            let got: Vec<&fake_upstream::Received> = received
                .iter()
                .filter(|(l, _)| l == label)
                .map(|(_, r)| r)
                .collect();
            out.push_str(&format!(
                "== upstream {label} ({}) received {} message(s)\n",
                fake.persona_name(),
                got.len()
            ));
            for r in got {
                out.push_str(&format!(
                    "-- MAIL FROM:{} RCPT TO:{} -> {}\n",
                    r.mail_from,
                    r.rcpt_to.join(","),
                    r.reply
                ));
                out.push_str(&show_bytes(&r.content, 4096));
            }
        }
        out
    }
}

/// A message's bytes, escaped (CR and LF visible), one line per LF: the trace headers in full,
/// then at most `max` octets of the rest, so that what is shown does not depend on the length
/// of a trace header's date.
fn show_bytes(bytes: &[u8], max: usize) -> String {
    let rest = strip_trace(bytes);
    let trace_len = bytes.len() - rest.len();
    let shown = &bytes[..trace_len + rest.len().min(max)];
    let mut out = String::new();
    for line in shown.split_inclusive(|&b| b == b'\n') {
        out.push_str("   | ");
        out.push_str(&super::escape(line));
        out.push('\n');
    }
    if rest.len() > max {
        out.push_str(&format!("   | ... ({} more octets)\n", rest.len() - max));
    }
    out
}

async fn start_fake(
    up: &Upstream,
    scenario_dir: &Path,
    data_dir: PathBuf,
    tls: &TlsMaterial,
    listen: Option<SocketAddr>,
    seed: u64,
) -> Result<fake_upstream::Handle, String> {
    let persona = if up.persona.ends_with(".toml") {
        scenario_dir
            .join(&up.persona)
            .to_string_lossy()
            .into_owned()
    } else {
        up.persona.clone()
    };
    let mut persona = Persona::load(&persona).map_err(|e| e.to_string())?;
    if let Some(p) = up.pipelining {
        persona.pipelining = Some(p);
    }
    persona.without.extend(up.without.iter().cloned());
    // The checks compare what the upstream got: the sink keeps its messages here.
    persona.rules.keep_messages = true;
    let mut config = FakeConfig::new(persona, data_dir);
    if let Some(era) = &up.era {
        config.persona.era = era.clone();
    }
    if let Some(addr) = listen {
        config.listen = addr;
        config.listen_tls = None;
    }
    config.tls_files = Some(match up.cert {
        // A certificate of the kind asked for, in the fake's own directory.
        Some(kind) => {
            let files = TlsFiles::in_dir(&config.data_dir.join("tls"));
            fake_upstream::tls::generate_kind(&files, kind).map_err(|e| e.to_string())?;
            files
        }
        None => tls.files.clone(),
    });
    config.seed = seed;
    config.transcripts = true;
    if let Some(users) = &up.users {
        config.users = users.clone();
    }
    config.faults = up.faults.clone();
    if up.no_limits {
        config = config.no_limits();
    }
    for (k, v) in &up.limits {
        config.persona.limits.set(k, v)?;
    }
    FakeUpstream::start(config)
        .await
        .map_err(|e| format!("fake upstream {}: {e}", up.persona))
}

/// The name the fake's certificate is verified as, and shown in replies.
fn upstream_names(persona: &str) -> (&'static str, &'static str) {
    match persona {
        "163" => ("smtp.163.com", "smtp.163.com (fake)"),
        "qq" => ("smtp.qq.com", "smtp.qq.com (fake)"),
        "qq-mx" => ("localhost", "mx1.qq.com (fake)"),
        "sink" => ("localhost", "sink (fake)"),
        _ => ("localhost", "upstream (fake)"),
    }
}

/// The relay's TLS policy towards a fake (`upstream-tls-policy:`), with what it trusts: the
/// fake's `ca.pem` (its CA, or for a self-signed certificate the certificate itself), the
/// bundled roots, or a pin of the fake's certificate, its key, or something else.
fn tls_policy(
    up: &Upstream,
    mode: TlsMode,
    fake: &fake_upstream::Handle,
) -> Result<(TlsPolicy, Option<Trust>), String> {
    let words: Vec<&str> = up
        .tls_policy
        .as_deref()
        .unwrap_or(if mode == TlsMode::None {
            "none"
        } else {
            "verify"
        })
        .split_whitespace()
        .collect();
    let cert = || -> Result<crate::upstream_tls::CertSummary, String> {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_file(fake.cert_path())
            .map_err(|e| format!("{}: {e}", fake.cert_path().display()))?;
        crate::upstream_tls::CertSummary::parse(&der)
            .ok_or("the fake's certificate is unreadable".into())
    };
    let (policy, trust) = match words.as_slice() {
        ["verify"] => (
            TlsPolicy::Verify,
            Some(Trust::ca_pem("ca.pem", fake.ca_pem())?),
        ),
        ["verify", "roots"] => (TlsPolicy::Verify, Some(Trust::PublicRoots)),
        ["fingerprint"] => (
            TlsPolicy::Fingerprint,
            Some(Trust::Pins(vec![cert()?.sha256])),
        ),
        ["fingerprint", "key"] => (
            TlsPolicy::Fingerprint,
            Some(Trust::Pins(vec![cert()?.sha256_key])),
        ),
        ["fingerprint", "other"] => (
            TlsPolicy::Fingerprint,
            Some(Trust::Pins(vec![crate::upstream_tls::Fingerprint(
                [0x5A; 32],
            )])),
        ),
        ["encrypt"] => (TlsPolicy::Encrypt, Some(Trust::Unchecked)),
        ["may"] => (TlsPolicy::May, Some(Trust::Unchecked)),
        ["none"] => (TlsPolicy::None, None),
        other => return Err(format!("upstream-tls-policy: {other:?}")),
    };
    match (mode, policy) {
        (TlsMode::None, TlsPolicy::None) => {}
        (TlsMode::None, _) | (_, TlsPolicy::None) => {
            return Err(
                "upstream-tls-policy: none goes with upstream-tls: none, and only it".into(),
            );
        }
        (TlsMode::Implicit, TlsPolicy::May) => {
            return Err("upstream-tls-policy: may needs upstream-tls: starttls".into());
        }
        _ => {}
    }
    Ok((policy, trust))
}

fn upstream_config(up: &Upstream, fake: &fake_upstream::Handle) -> Result<UpstreamConfig, String> {
    let (server_name, name) = upstream_names(&up.persona);
    let (mode, addr) = match up.tls.as_str() {
        "starttls" => (TlsMode::StartTls, fake.addr()),
        "none" => (TlsMode::None, fake.addr()),
        _ => (
            TlsMode::Implicit,
            fake.tls_addr()
                .ok_or("the fake upstream has no TLS listener")?,
        ),
    };
    let (policy, trust) = tls_policy(up, mode, fake)?;
    Ok(UpstreamConfig {
        name: name.into(),
        addr: addr.to_string(),
        server_name: server_name.into(),
        tls: mode,
        tls_policy: policy,
        tls_config: match trust {
            Some(trust) => Some(crate::upstream_tls::config_for(policy, trust)?),
            None => None,
        },
        config_at: "the scenario".into(),
        helo_name: "relay.test".into(),
        credentials: None,
        timeouts: Timeouts {
            command: Duration::from_secs(5),
            data_init: Duration::from_secs(5),
            data_end: Duration::from_secs(5),
            ..Timeouts::default()
        },
        transcript: true,
    })
}

fn relay_config(
    sc: &Scenario,
    env: &Env,
    tls: &TlsMaterial,
    dir: &Path,
) -> Result<RelayConfig, String> {
    let upstream = upstream_config(&sc.upstream, &env.fakes[0].1)?;
    let mut routes = Vec::new();
    for (r, (label, fake)) in sc.routes.iter().zip(env.fakes.iter().skip(1)) {
        routes.push(Route {
            label: label.clone(),
            domains: r.domains.clone(),
            upstream: upstream_config(&r.upstream, fake)?,
            passthrough: false,
            queue: false,
        });
    }
    Ok(RelayConfig {
        listen_tls: Some("127.0.0.1:0".parse().expect("an address")),
        tls: Some(tls.server_config.clone()),
        auth_failure_delay: Duration::ZERO,
        transcripts: Some(dir.join("transcripts")),
        routes,
        ..RelayConfig::new(
            "relay.test",
            "127.0.0.1:0".parse().expect("an address"),
            dir.join("spool"),
            upstream,
        )
    })
}

fn apply_relay_option(
    c: &mut RelayConfig,
    accounts: &[(String, String)],
    k: &str,
    v: &str,
) -> Result<(), String> {
    let num = || {
        v.parse::<u64>()
            .map_err(|_| format!("{k}={v}: expected a number"))
    };
    let dur = || super::parse_duration(v);
    match k {
        "auth" => {
            c.auth = match v {
                "none" => AuthMode::TrustedNetworks(vec![("127.0.0.0".parse().expect("ip"), 8)]),
                // The upstream's own accounts, checked by the relay (as `up --queue` does).
                "users" => {
                    AuthMode::Users(std::sync::Arc::new(crate::users::Users::from_passwords(
                        accounts.iter().map(|(a, c)| (a.as_str(), c.as_str())),
                    )))
                }
                _ => AuthMode::Passthrough,
            }
        }
        "queue" => c.default_queue = v == "on",
        "first_retry" => {
            if let Some(q) = c.queue.as_mut() {
                q.retry.first = dur()?;
            }
        }
        "max_recipients" => c.max_recipients = num()? as usize,
        "max_rcpt_commands" => c.max_rcpt_commands = num()? as usize,
        "min_data_rate" => c.min_data_rate = num()?,
        "auth_failures_per_client" => c.auth_limits.per_client = num()? as u32,
        "auth_failures_per_upstream" => c.auth_limits.per_upstream = num()? as u32,
        "line_timeout" => c.line_timeout = dur()?,
        "max_message_size" => c.max_message_size = num()?,
        "max_sessions" => c.max_sessions = num()? as usize,
        "max_sessions_per_ip" => c.max_sessions_per_ip = num()? as usize,
        "command_timeout" => c.command_timeout = dur()?,
        "data_timeout" => c.data_timeout = dur()?,
        "session_deadline" => c.session_deadline = dur()?,
        "auth_failure_delay" => c.auth_failure_delay = dur()?,
        "bare_line_endings" => {
            c.bare_line_endings = match v {
                "normalize" => BareLineEnding::Normalize,
                _ => BareLineEnding::Reject,
            }
        }
        "upstream_timeout" => {
            let d = dur()?;
            for t in std::iter::once(&mut c.upstream.timeouts)
                .chain(c.routes.iter_mut().map(|r| &mut r.upstream.timeouts))
            {
                t.command = d;
                t.data_init = d;
                t.data_end = d;
                t.greeting = d;
            }
        }
        other => return Err(format!("{other:?} is not a relay option")),
    }
    Ok(())
}

/// The client side of a scenario.
struct Client {
    conn: Option<Conn>,
    /// Earlier connections, kept open (idle) when the scenario connects again.
    held: Vec<Conn>,
    tls: Arc<rustls::ClientConfig>,
    /// Bytes of `C:`/`raw:` steps not yet written (one write: a pipelined group).
    pending: Vec<u8>,
    /// What the client said and heard, with times (for the merged transcript of external
    /// relays).
    events: Vec<(Instant, String)>,
    /// Messages the client sent (the DATA content after dot-unstuffing), in order.
    sent: Vec<Vec<u8>>,
    /// For each of `sent`: it had a bare CR or LF on the wire (a relay may repair those as
    /// it likes, so its copy is counted, not compared).
    bare: Vec<bool>,
    /// The message being sent has had a bare CR or LF so far; the last octet of it.
    bare_now: (bool, u8),
    /// Inside DATA after a 354: decodes what is sent.
    data: Option<(DataDecoder, Vec<u8>)>,
    /// The final reply to each message in `sent` (when it was read).
    finals: Vec<Option<Reply>>,
    /// A message ended and its final reply is the next one read.
    awaiting_final: bool,
    /// A `drain` saw the relay close: later sends are skipped.
    closed_seen: bool,
    /// Against another relay: the header line put first in every message (its scenario's
    /// token), taken out again of what `sent` keeps.
    token: Option<String>,
    /// The last write ended with a DATA command: a 354 now opens a message of the client's
    /// own (not one smuggled inside another).
    data_written: bool,
    at_line: usize,
    at_step: String,
}

struct Conn {
    io: Box<dyn Io>,
    /// The relay's replies: bytes read, whole replies out.
    replies: ClientConnection,
    eof: bool,
}

/// No single reply line longer than this is accepted from the relay.
const MAX_REPLY_LINE: usize = 8192;
/// A step that waits for the relay gives up after this.
const STEP_WAIT: Duration = Duration::from_secs(15);

impl Client {
    fn new(tls: Arc<rustls::ClientConfig>) -> Client {
        Client {
            conn: None,
            held: Vec::new(),
            tls,
            pending: Vec::new(),
            events: Vec::new(),
            sent: Vec::new(),
            bare: Vec::new(),
            bare_now: (false, 0),
            data: None,
            finals: Vec::new(),
            awaiting_final: false,
            closed_seen: false,
            token: None,
            data_written: false,
            at_line: 0,
            at_step: String::new(),
        }
    }

    fn note(&mut self, line: String) {
        self.events.push((Instant::now(), line));
    }

    fn conn(&mut self) -> Result<&mut Conn, String> {
        self.conn
            .as_mut()
            .ok_or_else(|| "not connected (the scenario needs connect first)".to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.closed_seen && self.conn.is_none() {
            let n = self.pending.len();
            self.pending.clear();
            self.note(format!(
                "* {n} octets not sent: the relay had closed the connection"
            ));
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.pending);
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let shown = match line.strip_suffix(b"\r\n") {
                Some(l) if !l.contains(&b'\r') && !l.contains(&b'\n') => {
                    super::escape(l).replace("\\\\", "\\")
                }
                _ => format!("<raw> {}", super::escape(line)),
            };
            self.note(format!("C: {shown}"));
        }
        self.track_data(&bytes);
        self.data_written = bytes.to_ascii_uppercase().ends_with(b"DATA\r\n");
        let conn = self.conn()?;
        match tokio::time::timeout(STEP_WAIT, conn.io.write_all(&bytes)).await {
            Ok(Ok(())) => {
                let _ = conn.io.flush().await;
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("write timed out (the relay does not read)".into()),
        }
    }

    /// Follows the DATA content the client sends after a 354, to know each message.
    fn track_data(&mut self, mut bytes: &[u8]) {
        let scan = |seen: &mut (bool, u8), part: &[u8]| {
            for &b in part {
                seen.0 |= (seen.1 == b'\r' && b != b'\n') || (b == b'\n' && seen.1 != b'\r');
                seen.1 = b;
            }
        };
        while let Some((decoder, out)) = self.data.as_mut() {
            match decoder.decode(bytes, out) {
                DataProgress::NeedMore => {
                    scan(&mut self.bare_now, bytes);
                    return;
                }
                DataProgress::Done { consumed } => {
                    scan(&mut self.bare_now, &bytes[..consumed]);
                    self.bare.push(std::mem::take(&mut self.bare_now).0);
                    let (_, msg) = self.data.take().expect("some");
                    let msg = match &self.token {
                        Some(_) => without_token(&msg),
                        None => msg,
                    };
                    self.sent.push(msg);
                    self.finals.push(None);
                    self.awaiting_final = true;
                    bytes = &bytes[consumed..];
                }
            }
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, String> {
        let conn = self.conn()?;
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            match conn.replies.next_reply() {
                Ok(Some(reply)) => {
                    for l in reply.to_string().split("\r\n") {
                        self.note(format!("S: {l}"));
                    }
                    if self.awaiting_final {
                        self.awaiting_final = false;
                        if let Some(last) = self.finals.last_mut() {
                            *last = Some(reply.clone());
                        }
                    }
                    if reply.code == 354 && self.data.is_none() {
                        self.data = Some((
                            DataDecoder::new(u64::MAX, BareLineEnding::Normalize),
                            Vec::new(),
                        ));
                        if let Some(token) = &self.token
                            && std::mem::take(&mut self.data_written)
                        {
                            self.pending.splice(0..0, token.bytes());
                        }
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if conn.eof {
                return Err(if conn.replies.buffered().is_empty() {
                    "the relay closed the connection".to_string()
                } else {
                    format!(
                        "the relay closed the connection after {:?}",
                        String::from_utf8_lossy(conn.replies.buffered())
                    )
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(left, conn.io.read(&mut chunk)).await {
                Err(_) => return Err(format!("no reply within {}s", STEP_WAIT.as_secs())),
                Ok(Ok(0)) => conn.eof = true,
                Ok(Ok(n)) => conn.replies.receive(&chunk[..n]),
                Ok(Err(e)) => {
                    if e.kind() == std::io::ErrorKind::ConnectionReset {
                        conn.eof = true;
                    } else {
                        return Err(format!("read failed: {e}"));
                    }
                }
            }
        }
    }

    /// Reads replies until the relay is quiet for 150 ms or closes.
    async fn drain(&mut self) -> Result<(), String> {
        if self.conn.is_none() {
            return Ok(());
        }
        loop {
            let conn = self.conn()?;
            if conn.replies.buffered().is_empty() && !conn.eof {
                let mut chunk = [0u8; 8192];
                match tokio::time::timeout(Duration::from_millis(150), conn.io.read(&mut chunk))
                    .await
                {
                    Err(_) => return Ok(()),
                    Ok(Ok(0)) | Ok(Err(_)) => conn.eof = true,
                    Ok(Ok(n)) => conn.replies.receive(&chunk[..n]),
                }
            }
            let conn = self.conn()?;
            if conn.eof && conn.replies.buffered().is_empty() {
                self.note("* closed by the relay".into());
                self.conn = None;
                self.closed_seen = true;
                return Ok(());
            }
            if conn.eof && memchr::memmem::find(conn.replies.buffered(), b"\r\n").is_none() {
                let rest = String::from_utf8_lossy(conn.replies.buffered()).into_owned();
                return Err(format!(
                    "the relay closed after an incomplete reply line {rest:?}"
                ));
            }
            self.read_reply().await?;
        }
    }

    async fn expect_close(&mut self) -> Result<(), String> {
        let conn = self.conn()?;
        let deadline = Instant::now() + STEP_WAIT;
        while !conn.eof {
            if !conn.replies.buffered().is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(left, conn.io.read(&mut chunk)).await {
                Err(_) => {
                    return Err("expected the relay to close the connection; it stayed open".into());
                }
                Ok(Ok(0)) | Ok(Err(_)) => conn.eof = true,
                Ok(Ok(n)) => conn.replies.receive(&chunk[..n]),
            }
        }
        if !conn.replies.buffered().is_empty() {
            let got = String::from_utf8_lossy(conn.replies.buffered()).into_owned();
            return Err(format!("expected the close, got {got:?}"));
        }
        self.note("* closed by the relay".into());
        self.conn = None;
        Ok(())
    }

    async fn handshake(&mut self) -> Result<(), String> {
        let mut conn = self.conn.take().ok_or("not connected")?;
        if !conn.replies.buffered().is_empty() {
            return Err(format!(
                "{} octets arrived after the 220 to STARTTLS (possible injection)",
                conn.replies.buffered().len()
            ));
        }
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let io = tokio::time::timeout(STEP_WAIT, connector.connect(name, conn.io))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        conn.io = Box::new(io);
        self.conn = Some(conn);
        self.note("* TLS handshake done (verified against the run's CA)".into());
        Ok(())
    }
}

/// Reply text as on the wire, per line, after the code and its separator.
fn wire_lines(reply: &Reply) -> Vec<String> {
    reply
        .to_string()
        .split("\r\n")
        .map(|l| l.get(4..).unwrap_or("").to_string())
        .collect()
}

/// `*` matches any run of characters (line breaks included); everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn show_expect(e: &ExpectReply) -> String {
    if !e.or.is_empty() {
        return e
            .lines
            .iter()
            .chain(&e.or)
            .map(|(CodePattern(c), t)| match t {
                Some(t) => format!("{c} {t}"),
                None => c.clone(),
            })
            .collect::<Vec<_>>()
            .join(" or ");
    }
    e.lines
        .iter()
        .enumerate()
        .map(|(i, (CodePattern(c), t))| {
            let sep = if i + 1 == e.lines.len() { ' ' } else { '-' };
            match t {
                Some(t) => format!("{c}{sep}{t}"),
                None => c.clone(),
            }
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Whether `reply` is what `e` describes: one pattern matches the code and the whole text
/// (lines joined with a line break); several must match line by line.
pub fn reply_matches(e: &ExpectReply, reply: &Reply) -> bool {
    let lines = wire_lines(reply);
    let one = |(code, text): &super::ReplyLinePattern| {
        code.matches(reply.code) && text.as_ref().is_none_or(|t| glob(t, &lines.join("\n")))
    };
    if e.or.iter().any(one) {
        return true;
    }
    match e.lines.as_slice() {
        [(code, text)] => {
            code.matches(reply.code) && text.as_ref().is_none_or(|t| glob(t, &lines.join("\n")))
        }
        many => {
            many.len() == lines.len()
                && many.iter().zip(&lines).all(|((code, text), line)| {
                    code.matches(reply.code) && text.as_ref().is_none_or(|t| glob(t, line))
                })
        }
    }
}

async fn drive(sc: &Scenario, env: &Env, c: &mut Client) -> Result<(), String> {
    // A `within` waiting for the next step that talks to the relay.
    let mut within: Option<(Duration, usize)> = None;
    for step in &sc.steps {
        c.at_line = step.line;
        c.at_step = format!("{:?}", step.item).chars().take(80).collect();
        let at = |e: String| format!("line {}: {e}", step.line);
        if let Step::Within(d) = step.item {
            within = Some((d, step.line));
            continue;
        }
        let deadline = match step.item {
            Step::Send(_) | Step::Flush => None,
            _ => within.take(),
        };
        if !matches!(step.item, Step::Send(_)) {
            c.flush().await.map_err(at)?;
        }
        // After a close that a `drain` saw, what would talk to the relay is skipped.
        if c.closed_seen
            && c.conn.is_none()
            && matches!(
                step.item,
                Step::Auth { .. }
                    | Step::StartTls
                    | Step::Tls
                    | Step::Message(_)
                    | Step::GeneratedMessage(_)
                    | Step::Quit
            )
        {
            c.note(format!(
                "* line {}: skipped, the relay had closed the connection",
                step.line
            ));
            continue;
        }
        let run = async {
            match &step.item {
                Step::Within(_) => {}
                Step::Connect { tls } => {
                    let addr = if *tls {
                        env.relay_tls_addr
                            .ok_or_else(|| at("this relay has no implicit-TLS listener".into()))?
                    } else {
                        env.relay_addr
                    };
                    let tcp = tokio::time::timeout(STEP_WAIT, TcpStream::connect(addr))
                        .await
                        .map_err(|_| at(format!("connect to {addr} timed out")))?
                        .map_err(|e| at(format!("cannot connect to {addr}: {e}")))?;
                    let _ = tcp.set_nodelay(true);
                    if let Some(old) = c.conn.take() {
                        c.held.push(old);
                        c.note("* the earlier connection stays open".into());
                    }
                    c.conn = Some(Conn {
                        io: Box::new(tcp),
                        replies: ClientConnection::keeping_bare_line_ends(MAX_REPLY_LINE),
                        eof: false,
                    });
                    c.note(format!(
                        "* connected to the relay{}",
                        if *tls { " (implicit TLS)" } else { "" }
                    ));
                    if *tls {
                        c.handshake().await.map_err(at)?;
                    }
                }
                Step::Send(bytes) => c.pending.extend_from_slice(bytes),
                Step::Flush => {}
                Step::Expect(e) => {
                    let reply = c
                        .read_reply()
                        .await
                        .map_err(|err| at(format!("expected {}, but {err}", show_expect(e))))?;
                    if !reply_matches(e, &reply) {
                        return Err(at(format!(
                            "expected {}, got {}",
                            show_expect(e),
                            reply.to_string().replace("\r\n", " / ")
                        )));
                    }
                }
                Step::Close => c.expect_close().await.map_err(at)?,
                Step::Sleep(d) => tokio::time::sleep(*d).await,
                Step::AdvanceClock(d) => {
                    for (_, fake) in &env.fakes {
                        fake.advance_clock(*d);
                    }
                    c.note(format!(
                        "* the upstream's clock moves {} ahead",
                        crate::scenario::format_duration(*d)
                    ));
                }
                Step::StartTls => {
                    c.pending.extend_from_slice(b"STARTTLS\r\n");
                    c.flush().await.map_err(at)?;
                    let r = c.read_reply().await.map_err(at)?;
                    if r.code != 220 {
                        return Err(at(format!("expected 220 to STARTTLS, got {r}")));
                    }
                    c.handshake().await.map_err(at)?;
                }
                Step::Tls => c.handshake().await.map_err(at)?,
                Step::Auth {
                    mechanism,
                    user,
                    secret,
                } => {
                    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
                    let conn = c.conn().map_err(at)?;
                    if mechanism == "plain" {
                        let mut raw = vec![0u8];
                        raw.extend_from_slice(user.as_bytes());
                        raw.push(0);
                        raw.extend_from_slice(secret.as_bytes());
                        let line = format!("AUTH PLAIN {}\r\n", b64(&raw));
                        write(conn, line.as_bytes()).await.map_err(at)?;
                        c.note("C: AUTH PLAIN <redacted>".into());
                    } else {
                        write(conn, b"AUTH LOGIN\r\n").await.map_err(at)?;
                        c.note("C: AUTH LOGIN".into());
                        for (i, part) in [user, secret].iter().enumerate() {
                            let r = c.read_reply().await.map_err(at)?;
                            if r.code != 334 {
                                return Err(at(format!(
                                    "AUTH LOGIN: expected 334 before the {}, got {r}",
                                    if i == 0 { "user name" } else { "password" }
                                )));
                            }
                            let conn = c.conn().map_err(at)?;
                            write(conn, format!("{}\r\n", b64(part.as_bytes())).as_bytes())
                                .await
                                .map_err(at)?;
                            c.note("C: <redacted>".into());
                        }
                    }
                }
                Step::Message(file) => {
                    let path = if file.is_absolute() {
                        file.clone()
                    } else if env.messages_dir.join(file).exists() {
                        env.messages_dir.join(file)
                    } else {
                        env.scenario_dir.join(file)
                    };
                    let content =
                        std::fs::read(&path).map_err(|e| at(format!("{}: {e}", path.display())))?;
                    let wire = stuff(&content);
                    c.pending.extend_from_slice(&wire);
                    let n = c.events.len();
                    c.flush().await.map_err(at)?;
                    // One transcript line for the whole message, not one per line.
                    c.events.truncate(n);
                    c.note(format!(
                        "C: <message {}: {} octets>",
                        file.display(),
                        content.len()
                    ));
                }
                Step::GeneratedMessage(size) => {
                    let content = generated_message(*size);
                    c.pending.extend_from_slice(&stuff(&content));
                    let n = c.events.len();
                    c.flush().await.map_err(at)?;
                    c.events.truncate(n);
                    c.note(format!("C: <generated message: {size} octets>"));
                }
                Step::Drain => c.drain().await.map_err(at)?,
                Step::Shutdown => match &env.relay {
                    Some(relay) => {
                        relay.begin_shutdown();
                        c.note("* the relay is told to shut down".into());
                    }
                    None => {
                        return Err(at(
                            "shutdown needs smtp-relay (not an external relay)".into()
                        ));
                    }
                },
                Step::Quit => {
                    c.pending.extend_from_slice(b"QUIT\r\n");
                    c.flush().await.map_err(at)?;
                    let r = c.read_reply().await.map_err(at)?;
                    if r.code != 221 {
                        return Err(at(format!("expected 221 to QUIT, got {r}")));
                    }
                    c.expect_close().await.map_err(at)?;
                }
            }
            Ok::<(), String>(())
        };
        match deadline {
            None => run.await?,
            Some((limit, from)) => match tokio::time::timeout(limit, run).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(at(format!(
                        "not done within {} (`within` at line {from})",
                        super::format_duration(limit)
                    )));
                }
            },
        }
    }
    c.flush()
        .await
        .map_err(|e| format!("at the end of the steps: {e}"))
}

async fn write(conn: &mut Conn, bytes: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(STEP_WAIT, conn.io.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err("write timed out".into()),
    }
}

/// A message of exactly `size` octets (at least its headers): a few headers, then lines of
/// 74 letters and CRLF, the last one shorter.
pub fn generated_message(size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: alice@163.com\r\nTo: bob@163.com\r\nSubject: generated\r\n\
         Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <generated-{size}@client.example>\r\n\r\n"
    )
    .into_bytes();
    let mut i = 0u64;
    while m.len() + 2 < size {
        let room = (size - m.len() - 2).min(74);
        m.extend((0..room).map(|k| b'a' + ((i + k as u64) % 26) as u8));
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

/// A message file as DATA content: CRLF line ends, dot-stuffed, then `.CRLF`.
fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 40 + 8);
    let mut encoder = smtp_wire::DataEncoder::new();
    encoder.encode(content, &mut out);
    encoder.finish(&mut out);
    out
}

/// The message after the trace headers (`Received:`, `Return-Path:`) put on top of it.
pub fn strip_trace(mut content: &[u8]) -> &[u8] {
    loop {
        let lower: Vec<u8> = content
            .iter()
            .take(12)
            .map(|b| b.to_ascii_lowercase())
            .collect();
        if !(lower.starts_with(b"received:") || lower.starts_with(b"return-path:")) {
            return content;
        }
        // Skip the header line and its continuation lines.
        loop {
            let Some(end) = memchr::memchr(b'\n', content) else {
                return &content[content.len()..];
            };
            content = &content[end + 1..];
            if !content.starts_with(b" ") && !content.starts_with(b"\t") {
                break;
            }
        }
    }
}

/// Whether `got` (the trace headers taken off) is the message `sent`: byte for byte, or with
/// header fields added and nothing else changed (every field of `sent` there, in order, and
/// the same body). A relay that adds a field (`X-Peer:`, a `Date:` to a message without one)
/// fails the one check that looks for that (`expect no header added`), not every check that
/// compares content.
///
/// `got` has had its trace fields taken off ([`strip_trace`]); so have the client's own, if its
/// message came with `Received:` lines (whether the relay kept those is for `expect upstream
/// data has` to say).
pub fn same_message(got: &[u8], sent: &[u8]) -> bool {
    let sent = strip_trace(sent);
    if got == sent {
        return true;
    }
    let split = |m: &[u8]| -> Option<(Vec<Vec<u8>>, Vec<u8>)> {
        let end = memchr::memmem::find(m, b"\r\n\r\n")?;
        let (head, body) = (&m[..end + 2], &m[end + 4..]);
        let mut fields: Vec<Vec<u8>> = Vec::new();
        for line in head.split_inclusive(|&b| b == b'\n') {
            match (line.first(), fields.last_mut()) {
                (Some(b' ' | b'\t'), Some(last)) => last.extend_from_slice(line),
                _ => fields.push(line.to_vec()),
            }
        }
        Some((fields, body.to_vec()))
    };
    let (Some((got_fields, got_body)), Some((sent_fields, sent_body))) = (split(got), split(sent))
    else {
        return false;
    };
    if got_body != sent_body || got_fields.len() <= sent_fields.len() {
        return false;
    }
    let mut rest = got_fields.iter();
    sent_fields.iter().all(|f| rest.any(|g| g == f))
}

/// Where `got` parts from the message of `sent` it shares the longest beginning with: the
/// octet, and the bytes around it on both sides (escaped once, CR and LF visible).
fn difference(got: &[u8], sent: &[Vec<u8>]) -> String {
    let common = |m: &[u8]| m.iter().zip(got).take_while(|(a, b)| a == b).count();
    let Some(m) = sent.iter().max_by_key(|m| common(m)) else {
        return format!(
            "it begins \"{}\"",
            super::escape(&got[..got.len().min(120)])
        );
    };
    let i = common(m);
    let from = i.saturating_sub(24);
    let around = |b: &[u8]| super::escape(&b[from.min(b.len())..(i + 48).min(b.len())]);
    format!(
        "from octet {i} on, the upstream got \"{}\" where the client sent \"{}\" ({} and {} octets in all)",
        around(got),
        around(m),
        got.len(),
        m.len()
    )
}

/// A delivery status notification: `multipart/report; report-type=delivery-status` (quoted
/// or not), or from the null reverse path (RFC 5321 4.5.5) with a bounce's subject, as
/// OpenSMTPD's `multipart/mixed` "Delivery status notification" and Postfix's "Undelivered
/// Mail Returned to Sender" are.
fn is_bounce(r: &fake_upstream::Received) -> bool {
    let head: Vec<u8> = r
        .content
        .iter()
        .take(64 * 1024)
        .map(u8::to_ascii_lowercase)
        .collect();
    let has = |needle: &[u8]| memchr::memmem::find(&head, needle).is_some();
    has(b"report-type=delivery-status")
        || has(b"report-type=\"delivery-status\"")
        || (r.mail_from == "<>"
            && (has(b"\nsubject: delivery status notification")
                || has(b"\nsubject: undelivered mail")))
}

fn check_all(sc: &Scenario, env: &Env, client: &Client) -> Result<(), String> {
    let received = env.received();
    // The fakes' live record: sessions still open are read as they stand.
    let transcripts = env.upstream_transcripts();
    let upstream_lines: Vec<String> = transcripts
        .iter()
        .flat_map(|(_, t)| t.lines.iter())
        .filter_map(|l| l.strip_prefix("C: ").map(str::to_string))
        .collect();
    let data_phases = || {
        transcripts
            .iter()
            .flat_map(|(label, t)| t.data.iter().map(move |d| (label.as_str(), t, d)))
    };
    let has = |hay: &str, needle: &str| {
        hay.to_ascii_lowercase()
            .contains(&needle.to_ascii_lowercase())
    };
    // Against another relay, a missing message may only be late: say what the client was told.
    let accepted = client
        .finals
        .iter()
        .filter(|r| r.as_ref().is_some_and(Reply::is_positive))
        .count();
    let late = |got: usize| {
        if env.external && accepted > got {
            format!(
                "; the relay answered 2xx to {accepted} message(s) and may still deliver: a store-and-forward relay needs its deliveries within the settle window (--settle, settle:)"
            )
        } else {
            String::new()
        }
    };
    for check in &sc.checks {
        let at = |e: String| format!("line {}: {e}", check.line);
        match &check.item {
            Check::Delivered(want) => {
                let mut got: Vec<String> = received
                    .iter()
                    .flat_map(|(_, r)| r.rcpt_to.iter().map(|a| a.to_ascii_lowercase()))
                    .collect();
                let mut want: Vec<String> = want.iter().map(|a| a.to_ascii_lowercase()).collect();
                got.sort();
                want.sort();
                if got != want {
                    return Err(at(format!(
                        "expected deliveries to [{}], the upstreams got [{}]{}",
                        want.join(" "),
                        got.join(" "),
                        late(received.len())
                    )));
                }
            }
            Check::NotDelivered(addresses) => {
                for a in addresses {
                    if let Some((label, r)) = received
                        .iter()
                        .find(|(_, r)| r.rcpt_to.iter().any(|t| t.eq_ignore_ascii_case(a)))
                    {
                        return Err(at(format!(
                            "upstream {label} got a copy for {a} (MAIL FROM:{} RCPT TO:{})",
                            r.mail_from,
                            r.rcpt_to.join(", ")
                        )));
                    }
                }
            }
            Check::NoHeaderAdded => {
                for (label, r) in received.iter().filter(|(_, r)| !is_bounce(r)) {
                    let body = strip_trace(&r.content);
                    if !client.sent.iter().any(|m| strip_trace(m) == body) {
                        return Err(at(format!(
                            "upstream {label} got a message that is not byte for byte one the client sent; {}",
                            difference(body, &client.sent)
                        )));
                    }
                }
            }
            Check::MessagesAtMost(n) => {
                if received.len() > *n {
                    return Err(at(format!(
                        "expected at most {n} message(s) upstream, the upstreams got {}",
                        received.len()
                    )));
                }
            }
            Check::UpstreamData7Bit => {
                if let Some((label, t, d)) = data_phases().find(|(_, _, d)| d.eight_bit > 0) {
                    let i = d.raw.iter().position(|b| *b > 127).unwrap_or(0);
                    let from = i.saturating_sub(20);
                    return Err(at(format!(
                        "upstream {label} received DATA with {} octet(s) above 127 (session {}): ...{}...",
                        d.eight_bit,
                        t.id,
                        super::escape(&d.raw[from..(i + 20).min(d.raw.len())])
                    )));
                }
            }
            Check::UpstreamDataMatches(pattern) => {
                let re = regex::bytes::Regex::new(pattern)
                    .map_err(|e| at(format!("{pattern:?}: {e}")))?;
                if !data_phases().any(|(_, _, d)| re.is_match(&d.raw)) {
                    return Err(at(format!(
                        "no DATA phase an upstream received matches {pattern:?} ({} phase(s) seen)",
                        data_phases().count()
                    )));
                }
            }
            Check::Messages(n) => {
                if received.len() != *n {
                    return Err(at(format!(
                        "expected {n} message(s) upstream, the upstreams got {}{}",
                        received.len(),
                        late(received.len())
                    )));
                }
            }
            Check::BodyIntact => {
                let mut compared = 0;
                for (label, r) in received.iter().filter(|(_, r)| !is_bounce(r)) {
                    let body = strip_trace(&r.content);
                    if !client.sent.iter().any(|m| same_message(body, m)) {
                        return Err(at(format!(
                            "upstream {label} got a message ({} octets after the trace headers) that is not byte for byte one the client sent ({} sent); {}",
                            body.len(),
                            client.sent.len(),
                            difference(body, &client.sent)
                        )));
                    }
                    compared += 1;
                }
                if compared == 0 {
                    return Err(at("no message reached an upstream to compare".into()));
                }
            }
            Check::UpstreamGot(want) => {
                let got: Vec<&fake_upstream::Received> = received
                    .iter()
                    .map(|(_, r)| r)
                    .filter(|r| !is_bounce(r))
                    .collect();
                match got.as_slice() {
                    [one] => {
                        let body = strip_trace(&one.content);
                        if !same_message(body, want) {
                            return Err(at(format!(
                                "the upstream did not get the expected message; {}",
                                difference(body, std::slice::from_ref(want))
                            )));
                        }
                    }
                    other => {
                        return Err(at(format!(
                            "expected exactly one message upstream, got {}",
                            other.len()
                        )));
                    }
                }
            }
            Check::UpstreamSaw(text) => {
                if !upstream_lines.iter().any(|l| has(l, text)) {
                    return Err(at(format!(
                        "no upstream received a line with {text:?} (in {} session(s), {} still open)",
                        transcripts.len(),
                        transcripts.iter().filter(|(_, t)| t.open).count()
                    )));
                }
            }
            Check::UpstreamNeverSaw(text) => {
                if let Some((label, t)) = transcripts
                    .iter()
                    .find(|(_, t)| t.lines.iter().any(|l| l.starts_with("C: ") && has(l, text)))
                {
                    let l = t
                        .lines
                        .iter()
                        .find(|l| l.starts_with("C: ") && has(l, text))
                        .map(String::as_str)
                        .unwrap_or_default();
                    return Err(at(format!(
                        "upstream {label} received {:?} (session {}{})",
                        l.trim_start_matches("C: "),
                        t.id,
                        if t.open { ", still open" } else { "" }
                    )));
                }
                if let Some((label, r)) = received.iter().find(|(_, r)| {
                    has(&r.mail_from, text) || r.rcpt_to.iter().any(|a| has(a, text))
                }) {
                    return Err(at(format!(
                        "upstream {label} received a message with {text:?} in its envelope: MAIL FROM:{} RCPT TO:{}",
                        r.mail_from,
                        r.rcpt_to.join(", ")
                    )));
                }
            }
            Check::UpstreamSender(want) => {
                let got: Vec<&fake_upstream::Received> = received
                    .iter()
                    .map(|(_, r)| r)
                    .filter(|r| !is_bounce(r))
                    .collect();
                if got.is_empty() {
                    return Err(at("no message reached an upstream".into()));
                }
                if let Some(r) = got.iter().find(|r| r.mail_from != *want) {
                    return Err(at(format!(
                        "an upstream got MAIL FROM:{}, expected {want} exactly",
                        r.mail_from
                    )));
                }
            }
            Check::UpstreamDataClean => {
                if let Some((label, t, d)) = data_phases().find(|(_, _, d)| !d.clean()) {
                    let at_byte = d
                        .raw
                        .windows(2)
                        .position(|w| w[0] == 0 || (w[0] == b'\r') != (w[1] == b'\n') || w[1] == 0)
                        .unwrap_or(0);
                    let from = at_byte.saturating_sub(20);
                    return Err(at(format!(
                        "upstream {label} received DATA with {} bare CR, {} bare LF, {} NUL (session {}, {} octets): ...{}...",
                        d.bare_cr,
                        d.bare_lf,
                        d.nul,
                        t.id,
                        d.octets,
                        super::escape(&d.raw[from..(at_byte + 20).min(d.raw.len())])
                    )));
                }
            }
            Check::UpstreamDataHas(bytes) => {
                if !data_phases().any(|(_, _, d)| d.contains(bytes)) {
                    return Err(at(format!(
                        "no DATA phase an upstream received has \"{}\" ({} phase(s) seen)",
                        super::escape(bytes),
                        data_phases().count()
                    )));
                }
            }
            Check::NothingUpstream => {
                let envelope = upstream_lines.iter().find(|l| {
                    let u = l.to_ascii_uppercase();
                    u.starts_with("MAIL") || u.starts_with("RCPT") || u.starts_with("DATA")
                });
                if let Some(l) = envelope {
                    return Err(at(format!("expected nothing upstream, it received {l:?}")));
                }
                if !received.is_empty() {
                    return Err(at(format!(
                        "expected nothing upstream, it got {} message(s)",
                        received.len()
                    )));
                }
            }
            Check::Consistent => {
                let positive = |i: usize| {
                    client
                        .finals
                        .get(i)
                        .is_some_and(|r| r.as_ref().is_some_and(Reply::is_positive))
                };
                let exact = |i: usize| {
                    received
                        .iter()
                        .any(|(_, r)| same_message(strip_trace(&r.content), &client.sent[i]))
                };
                // Messages sent with bare CR or LF, accepted, and arrived in a repaired form.
                let mut repaired: Vec<usize> = Vec::new();
                for (label, r) in received.iter().filter(|(_, r)| !is_bounce(r)) {
                    let body = strip_trace(&r.content);
                    let Some(i) = client.sent.iter().position(|m| same_message(body, m)) else {
                        let stand_in = (0..client.sent.len()).find(|&i| {
                            client.bare.get(i) == Some(&true)
                                && positive(i)
                                && !exact(i)
                                && !repaired.contains(&i)
                        });
                        if let Some(i) = stand_in {
                            repaired.push(i);
                            continue;
                        }
                        return Err(at(format!(
                            "upstream {label} got a message that the client never sent; {}",
                            difference(body, &client.sent)
                        )));
                    };
                    if let Some(Some(reply)) = client.finals.get(i)
                        && !reply.is_positive()
                    {
                        return Err(at(format!(
                            "upstream {label} got message {} although the client was told {reply}",
                            i + 1
                        )));
                    }
                }
                let bounced = received.iter().any(|(_, r)| is_bounce(r));
                for (i, (m, reply)) in client.sent.iter().zip(&client.finals).enumerate() {
                    let Some(reply) = reply else { continue };
                    let arrived = repaired.contains(&i)
                        || received
                            .iter()
                            .any(|(_, r)| same_message(strip_trace(&r.content), m));
                    if reply.severity() == smtp_wire::Severity::Completion && !arrived && !bounced {
                        return Err(at(format!(
                            "the client was told {reply} for message {}, but no upstream got it and no bounce went out",
                            i + 1
                        )));
                    }
                }
            }
            Check::NoSecrets => {
                let mut haystack = env.transcript(sc, client);
                for (_, t) in env.upstream_transcripts() {
                    haystack.push_str(&t.text());
                }
                if let Some(spool) = &env.spool_dir
                    && let Ok(files) = crate::spool::files(spool)
                {
                    for f in files {
                        if f.extension().is_some_and(|e| e == "json") {
                            haystack.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
                        }
                    }
                }
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                for secret in sc.secrets() {
                    if haystack.contains(&secret) || haystack.contains(&b64(&secret)) {
                        return Err(at(format!(
                            "the secret {secret:?} appears in a transcript or record"
                        )));
                    }
                }
            }
            Check::BounceTo(addr) => {
                let found = received.iter().any(|(_, r)| {
                    is_bounce(r) && r.rcpt_to.iter().any(|a| a.eq_ignore_ascii_case(addr))
                });
                if !found {
                    return Err(at(format!(
                        "no delivery status notification reached {addr}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Replaces what changes from run to run: ports, ids, dates (in the fake's normaliser), tokens.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in fake_upstream::testing::normalize(text).lines() {
        let mut l = line.to_string();
        // Every 127.0.0.1:PORT (the fake's normaliser takes the first only).
        let mut from = 0;
        while let Some(i) = l[from..].find("127.0.0.1:") {
            let start = from + i + "127.0.0.1:".len();
            let end = l[start..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(l.len(), |e| start + e);
            if end > start {
                l.replace_range(start..end, "<port>");
            }
            from = start;
        }
        l = replace_spool_ids(&l);
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `20261126T060149.779054-12` (the relay's message ids) becomes `<id>`.
fn replace_spool_ids(line: &str) -> String {
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < b.len() {
        let is_id = b.len() >= i + 23
            && b[i..i + 8].iter().all(u8::is_ascii_digit)
            && b[i + 8] == b'T'
            && b[i + 9..i + 15].iter().all(u8::is_ascii_digit)
            && b[i + 15] == b'.'
            && b[i + 16..i + 22].iter().all(u8::is_ascii_digit)
            && b[i + 22] == b'-';
        if is_id {
            let mut end = i + 23;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            out.push_str("<id>");
            i = end;
        } else {
            let ch = line[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("Mail OK", "Mail OK"));
        assert!(!glob("Mail OK", "Mail OK queued"));
        assert!(glob("Mail OK*", "Mail OK queued as x"));
        assert!(glob("*PIPELINING*", "relay.test\nPIPELINING\nSIZE"));
        assert!(glob(
            "5.1.3 *no @*",
            "5.1.3 Bad recipient address syntax: no @ in address"
        ));
        assert!(!glob("a*b", "acbd"));
    }

    #[test]
    fn the_same_message_with_a_header_field_added() {
        let sent = b"From: a@x\r\nSubject: s\r\n  folded\r\n\r\nbody\r\n".as_slice();
        assert!(same_message(sent, sent));
        let added = b"From: a@x\r\nSubject: s\r\n  folded\r\nX-Peer: 127.0.0.1\r\n\r\nbody\r\n";
        assert!(same_message(added, sent));
        let first = b"Date: now\r\nFrom: a@x\r\nSubject: s\r\n  folded\r\n\r\nbody\r\n";
        assert!(same_message(first, sent));
        for other in [
            &b"From: a@x\r\nSubject: S\r\n  folded\r\nX: 1\r\n\r\nbody\r\n"[..],
            b"From: a@x\r\nX: 1\r\n\r\nbody\r\n",
            b"From: a@x\r\nSubject: s\r\n  folded\r\nX: 1\r\n\r\nbody!\r\n",
            b"Subject: s\r\n  folded\r\nFrom: a@x\r\nX: 1\r\n\r\nbody\r\n",
            b"From: a@x\r\nSubject: s\r\n\r\nbody\r\n",
            b"no header block",
        ] {
            assert!(
                !same_message(other, sent),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn a_message_that_came_with_its_own_trace_line() {
        let sent = b"Received: from old.example\r\n\tby mx; now\r\nFrom: a@x\r\n\r\nbody\r\n";
        // The upstream's copy, trace lines taken off (the relay's and the client's alike).
        assert!(same_message(b"From: a@x\r\n\r\nbody\r\n", sent));
        assert!(!same_message(b"From: a@x\r\n\r\nbody!\r\n", sent));
        assert!(!same_message(b"From: b@x\r\n\r\nbody\r\n", sent));
    }

    #[test]
    fn trace_headers_are_stripped() {
        let m =
            b"Received: from x\r\n\tby y; date\r\nReturn-Path: <a@b>\r\nFrom: a\r\n\r\nbody\r\n";
        assert_eq!(strip_trace(m), b"From: a\r\n\r\nbody\r\n");
        assert_eq!(strip_trace(b"From: a\r\n"), b"From: a\r\n");
    }

    #[test]
    fn normalizing() {
        let t = "* client 127.0.0.1:5555 and 127.0.0.1:6666\nReceived ... id 20261126T060149.779054-12;\n\tThu, 26 Nov 2026 06:01:49 +0000\nThu, no date";
        let n = normalize(t);
        assert!(n.contains("127.0.0.1:<port> and 127.0.0.1:<port>"), "{n}");
        assert!(n.contains("id <id>;"), "{n}");
        assert!(n.contains("\t<date>"), "{n}");
        assert!(n.contains("Thu, no date"), "{n}");
    }

    #[test]
    fn shown_bytes_do_not_depend_on_the_trace_date() {
        let body = "a".repeat(100);
        let one = format!("Received: by x;\r\n\tTue, 1 Dec 2026 06:33:12 +0000\r\n\r\n{body}");
        let two = format!("Received: by x;\r\n\tThu, 10 Dec 2026 06:33:12 +0000\r\n\r\n{body}");
        let (a, b) = (
            show_bytes(one.as_bytes(), 50),
            show_bytes(two.as_bytes(), 50),
        );
        assert_eq!(normalize(&a), normalize(&b));
        assert!(a.ends_with("   | ... (52 more octets)\n"), "{a}");
    }

    #[test]
    fn stuffing() {
        assert_eq!(stuff(b"a\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(stuff(b"no end"), b"no end\r\n.\r\n");
    }
}
