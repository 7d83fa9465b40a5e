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

use super::{Check, CodePattern, ExpectReply, MessageSource, Scenario, Step, Upstream};
use crate::relay::{self, AuthMode, RelayConfig, RelayHandle};
use crate::route::Route;
use crate::upstream::{Timeouts, TlsMode, UpstreamConfig};
use crate::upstream_tls::{TlsPolicy, Trust};

mod checks;
mod client;
mod drive;
mod env;
mod normalize;
mod upstreams;
use checks::*;
pub use checks::{generated_message, same_message, strip_trace};
use client::*;
use drive::*;
pub use drive::{glob, reply_matches};
use env::*;
pub use normalize::normalize;
use normalize::*;
use upstreams::*;

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
    if let Some(why) = not_for(sc, opts, shared.as_ref().map(|(s, _)| &**s)) {
        return outcome(Verdict::Skip(why), String::new());
    }
    let dir = opts.work_dir.join(&sc.name);
    let _ = std::fs::remove_dir_all(&dir);
    let env = match Env::start(sc, opts, tls, &dir, shared).await {
        Ok(env) => env,
        Err(e) => return outcome(Verdict::Fail(format!("setup: {e}")), String::new()),
    };
    match unmet(sc, &env).await {
        Ok(None) => {}
        Ok(Some(why)) => {
            env.stop_fakes().await;
            if let Some(relay) = &env.relay {
                relay.shutdown().await;
            }
            let _ = std::fs::remove_dir_all(&dir);
            return outcome(Verdict::Skip(why), String::new());
        }
        Err(e) => return outcome(Verdict::Fail(e), String::new()),
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
    wind_down(&env).await;
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
        w.close();
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

/// Why a scenario is not played in this run: against another relay, one not tagged
/// portable, or one that needs an upstream of its own when the run shares one sink.
fn not_for(sc: &Scenario, opts: &Options, shared: Option<&SharedUpstream>) -> Option<String> {
    if matches!(opts.target, Target::External { .. }) && !sc.tags.iter().any(|t| t == "portable") {
        return Some("depends on smtp-relay's own policy (not tagged portable)".into());
    }
    let shared = shared?;
    let mut wants = sc.upstream.clone();
    wants.faults.clear();
    (wants != shared.upstream || !sc.routes.is_empty()).then(|| {
        format!(
            "needs an upstream of its own ({}{}); a run against another relay has one shared sink",
            sc.upstream.persona,
            if sc.routes.is_empty() {
                ""
            } else {
                " and routes"
            }
        )
    })
}

/// What the scenario `requires` that the relay does not advertise in its EHLO, as the skip's
/// reason; an error when the relay could not be asked.
async fn unmet(sc: &Scenario, env: &Env) -> Result<Option<String>, String> {
    if sc.requires.is_empty() {
        return Ok(None);
    }
    let keywords = advertised(env.relay_addr)
        .await
        .map_err(|e| format!("setup: asking the relay what it offers: {e}"))?;
    let missing: Vec<&str> = sc
        .requires
        .iter()
        .filter(|r| !keywords.contains(r))
        .map(String::as_str)
        .collect();
    Ok((!missing.is_empty()).then(|| {
        format!(
            "requires {}, which the relay does not advertise",
            missing.join(" and ")
        )
    }))
}

/// After the steps: the queue empties (delivered or bounced) and the relay stops, its
/// sessions ended, bounces sent and transcripts written; then the fakes' sessions end.
async fn wind_down(env: &Env) {
    if let Some(dir) = &env.queue_dir {
        let deadline = Instant::now() + Duration::from_secs(15);
        // The relay holds the queue: its journal read beside it.
        let queue = crate::queue::store::Queue::observe(dir);
        while Instant::now() < deadline && queue.list().map_or(0, |(r, _)| r.len()) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if let Some(relay) = &env.relay {
        relay.shutdown().await;
        // Its upstream sessions end with it: their transcripts are complete once the fakes
        // count no open connection (the checks read them). A stalled fake session (a `stall`
        // fault) stays open whatever the relay did: the wait is short.
        for (_, fake) in &env.fakes {
            fake.wait_idle(Duration::from_secs(1)).await;
        }
    }
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
