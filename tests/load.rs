//! The load generator against real servers on 127.0.0.1: bounded runs whose counts must add
//! up, the open-loop schedule and its latency from the intended start, the report files.

use std::sync::Arc;
use std::time::Duration;

use fake_upstream::{Fault, Stage};
use smtp_relay::load::cli::SelfSetup;
use smtp_relay::load::stats::Phase;
use smtp_relay::load::{self, Model, Run, Workload};

fn workload(target: std::net::SocketAddr, model: Model, messages: u64) -> Workload {
    Workload {
        tick: std::time::Duration::from_secs(1),
        server: load::plain_server(target),
        from: "load@example.com".into(),
        to: "rcpt{r}-{n}@example.org".into(),
        recipients: 2,
        body: Arc::new(load::generated_body(2000)),
        pipelining: true,
        per_connection: 10,
        model,
        messages: Some(messages),
        duration: Some(Duration::from_secs(30)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_run_through_the_relay_adds_up() {
    let setup = SelfSetup::start(false, None).await.unwrap();
    let w = workload(setup.relay.addr(), Model::Closed { connections: 4 }, 200);
    let run = Run::new(&w.body);
    *setup.current.lock().unwrap() = Some(run.clone());
    let o = load::run(&w, run, true, None).await;
    let t = &o.total;
    assert_eq!((t.delivered, t.failed), (200, 0), "{:?}", t.codes);
    assert_eq!(t.codes.get("250"), Some(&200));
    assert_eq!(t.bytes, 200 * 2000);
    assert_eq!(
        (o.intact, o.corrupted, o.lost(), o.duplicates),
        (200, 0, 0, 0)
    );
    assert_eq!(t.phase(Phase::Message).len(), 200);
    assert_eq!(t.phase(Phase::EndOfData).len(), 200);
    assert_eq!(t.phase(Phase::EndToEnd).len(), 200);
    // MAIL and both RCPTs pipelined (the relay offers PIPELINING).
    assert_eq!(t.phase(Phase::Envelope).len(), 200);
    assert_eq!(t.phase(Phase::Mail).len(), 0);
    // Ten messages a connection: at least 20 connections, a few more when the 200 do not
    // divide evenly over the 4 workers.
    let connects = t.phase(Phase::Connect).len();
    assert!((20..=24).contains(&connects), "{connects}");
    // The intervals add up to the total.
    let summed: u64 = o.intervals.iter().map(|i| i.data.delivered).sum();
    assert_eq!(summed, 200);
    // End to end (client's first byte to the sink) is within the whole-message latency's
    // order: the message is at the sink before the client hears 250.
    assert!(
        t.phase(Phase::EndToEnd).value_at_quantile(0.5)
            <= t.phase(Phase::Message).value_at_quantile(0.5) + 1000
    );
    setup.relay.shutdown().await;
    setup.sink.shutdown().await;
}

/// Open loop: messages start on schedule whatever the server does. One connection, 50
/// messages a second, and the server stalls 400 ms on the fifth message: the messages meant
/// to start during the stall wait, and their latency counts from when they were meant to
/// start (coordinated omission corrected), so many of them, not just one, are slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_counts_latency_from_the_intended_start() {
    let mut config = fake_upstream::testing::config("sink", "load-open-loop");
    config.faults = vec![Fault::on(Stage::EndOfData).nth(5).delay_ms(400)];
    let sink = fake_upstream::testing::start(config).await;
    let mut w = workload(
        sink.addr(),
        Model::Open {
            rate: 50.0,
            connections: 1,
        },
        40,
    );
    w.per_connection = 1000;
    let started = std::time::Instant::now();
    let o = load::run(&w, Run::new(&w.body), false, None).await;
    let took = started.elapsed();
    assert_eq!(o.total.delivered, 40, "{:?}", o.total.codes);
    // 40 messages at 50/s take 0.78 s by the schedule, not less.
    assert!(took >= Duration::from_millis(770), "{took:?}");
    let message = o.total.phase(Phase::Message);
    let end = o.total.phase(Phase::EndOfData);
    // Only one end of data was slow...
    assert!(
        end.value_at_quantile(0.9) < 100_000,
        "{}",
        end.value_at_quantile(0.9)
    );
    // ...but about 20 messages were meant to start during those 400 ms and waited.
    let slow = message.count_between(100_000, u64::MAX);
    assert!(
        slow >= 10,
        "{slow} slow messages; p50 {} µs",
        message.value_at_quantile(0.5)
    );
    sink.shutdown().await;
}

/// The same run, closed loop, to show the difference: only the stalled message is slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closed_loop_sees_one_slow_message() {
    let mut config = fake_upstream::testing::config("sink", "load-closed-loop");
    config.faults = vec![Fault::on(Stage::EndOfData).nth(5).delay_ms(400)];
    let sink = fake_upstream::testing::start(config).await;
    let mut w = workload(sink.addr(), Model::Closed { connections: 1 }, 40);
    w.per_connection = 1000;
    let o = load::run(&w, Run::new(&w.body), false, None).await;
    assert_eq!(o.total.delivered, 40);
    let slow = o
        .total
        .phase(Phase::Message)
        .count_between(100_000, u64::MAX);
    assert_eq!(slow, 1);
    sink.shutdown().await;
}

#[tokio::test]
async fn refusals_and_errors_are_counted_by_code_never_swallowed() {
    let mut config = fake_upstream::testing::config("sink", "load-refusals");
    config.faults = vec![
        Fault::on(Stage::Mail).nth(2).reply("451 4.3.0 busy"),
        Fault::on(Stage::EndOfData).nth(3).reply("554 5.7.1 no"),
    ];
    let sink = fake_upstream::testing::start(config).await;
    let mut w = workload(sink.addr(), Model::Closed { connections: 1 }, 10);
    w.per_connection = 100;
    let o = load::run(&w, Run::new(&w.body), false, None).await;
    assert_eq!(
        (o.total.delivered, o.total.failed),
        (8, 2),
        "{:?}",
        o.total.codes
    );
    assert_eq!(o.total.codes.get("451"), Some(&1));
    assert_eq!(o.total.codes.get("554"), Some(&1));
    assert_eq!(o.total.codes.get("250"), Some(&8));
    sink.shutdown().await;
    // A server that is not there: every message counted as a connect error, and the run
    // still ends (bounded).
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let w = workload(gone, Model::Closed { connections: 2 }, 20);
    let o = load::run(&w, Run::new(&w.body), false, None).await;
    assert_eq!(o.total.delivered, 0);
    assert_eq!(o.total.codes.get("error: connect"), Some(&20));
}

/// A sweep's step against our relay in front of the sink: while `end of data: delay 200ms`
/// holds, four connections cannot pass five messages a second each and every message takes
/// 200 ms more; once it clears the sink has no fault left and the load goes on at full
/// speed. The baseline's figures are what the step is judged against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_step_holds_its_fault_then_clears_it() {
    use smtp_relay::load::sweep::{Baseline, FaultControl, StepSetup, run_step};
    let setup = SelfSetup::start(false, None).await.unwrap();
    let mut w = workload(setup.relay.addr(), Model::Closed { connections: 4 }, 0);
    w.per_connection = 1;
    let control = FaultControl::Local(setup.sink.clone());
    let steps = StepSetup {
        control: &control,
        base: &[],
        hold: Duration::from_millis(1500),
        recovery: Duration::from_millis(1500),
        queue_len: None,
        observe: Some(setup.current.clone()),
    };
    let base = run_step(&w, "baseline", None, &steps, None, None)
        .await
        .unwrap();
    assert!(base.recovery.is_none(), "the baseline is not judged");
    let baseline = Baseline::of(&base, Duration::from_secs(3));
    let fault = fake_upstream::faults::parse_fault("end of data: delay 200ms").unwrap();
    let step = run_step(&w, "delay", Some(&fault), &steps, Some(&baseline), None)
        .await
        .unwrap();
    assert!(setup.sink.faults().is_empty(), "cleared after the hold");
    let held = &step.during;
    let p50 = Duration::from_micros(held.total.phase(Phase::Message).value_at_quantile(0.5));
    assert!(p50 >= Duration::from_millis(200), "{p50:?}");
    // Four connections, 200 ms each at least: at most 20 a second while it held.
    assert!(held.rate() <= 22.0, "{}", held.rate());
    assert!(
        base.during.rate() > 2.0 * held.rate(),
        "{} vs {}",
        base.during.rate(),
        held.rate()
    );
    // After the clear, the messages are fast again (the last second's p99 well under 200 ms).
    let late: Vec<_> = step
        .outcome
        .intervals
        .iter()
        .filter(|iv| {
            iv.start >= step.cleared_at + Duration::from_millis(500)
                && iv.start < Duration::from_millis(2750)
        })
        .collect();
    assert!(!late.is_empty());
    for iv in &late {
        assert!(
            iv.data.phase(Phase::Message).value_at_quantile(0.5) < 150_000,
            "still slow at {:?}",
            iv.start
        );
    }
    assert!(step.cleared_at >= Duration::from_millis(1500));
    assert_eq!(step.outcome.corrupted, 0);
    assert_eq!(held.total.failed, 0, "{:?}", held.total.codes);
    setup.relay.shutdown().await;
    setup.sink.shutdown().await;
}

/// A step's latencies are those of the messages meant to start while its fault held, however
/// late they finished: here every one of them ends after the clear (a 1.5 s end of data held
/// 0.6 s), so judged by completion time the step would show nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_counts_the_messages_meant_while_it_held_wherever_they_finish() {
    use smtp_relay::load::sweep::{FaultControl, StepSetup, run_step};
    let setup = SelfSetup::start(false, None).await.unwrap();
    let mut w = workload(
        setup.relay.addr(),
        Model::Open {
            rate: 40.0,
            connections: 80,
        },
        0,
    );
    w.per_connection = 1;
    let control = FaultControl::Local(setup.sink.clone());
    let steps = StepSetup {
        control: &control,
        base: &[],
        hold: Duration::from_millis(600),
        recovery: Duration::from_millis(2500),
        queue_len: None,
        observe: Some(setup.current.clone()),
    };
    let fault = fake_upstream::faults::parse_fault("end of data: delay 1500ms").unwrap();
    let step = run_step(&w, "delay", Some(&fault), &steps, None, None)
        .await
        .unwrap();
    assert_eq!(step.during.total.delivered, 0, "none done while it held");
    let started = &step.started.total;
    // 40 a second for 0.6 s: 24 meant (the scheduler's first may come at 0).
    assert!(
        (20..=26).contains(&started.delivered),
        "{} meant while it held",
        started.delivered
    );
    assert_eq!(started.failed, 0, "{:?}", started.codes);
    let p50 = Duration::from_micros(started.phase(Phase::Message).value_at_quantile(0.5));
    assert!(p50 >= Duration::from_millis(1500), "{p50:?}");
    // The table's p99 is theirs.
    let table = smtp_relay::load::report::sweep_table(
        "t",
        std::slice::from_ref(&step),
        steps.hold,
        steps.recovery,
    );
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("delay"))
        .unwrap();
    let p99: f64 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(p99 >= 1500.0, "{row}");
    setup.relay.shutdown().await;
    setup.sink.shutdown().await;
}

/// Store and forward under a refusing upstream: the clients hear 250 (queued) while the sink
/// answers 451; the queue holds what it could not deliver, then empties once the fault clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_absorbs_an_upstream_that_refuses_and_drains_after() {
    use smtp_relay::load::sweep::{FaultControl, StepSetup, run_step};
    let setup = SelfSetup::start(true, None).await.unwrap();
    let mut w = workload(setup.relay.addr(), Model::Closed { connections: 4 }, 0);
    w.per_connection = 1;
    let control = FaultControl::Local(setup.sink.clone());
    let relay = setup.relay.clone();
    let steps = StepSetup {
        control: &control,
        base: &[],
        hold: Duration::from_millis(1000),
        recovery: Duration::from_millis(500),
        queue_len: Some(std::sync::Arc::new(move || relay.queue_len())),
        observe: Some(setup.current.clone()),
    };
    let fault =
        fake_upstream::faults::parse_fault("end of data: 451 4.3.0 try again later").unwrap();
    let step = run_step(&w, "refuse", Some(&fault), &steps, None, None)
        .await
        .unwrap();
    let t = &step.during.total;
    assert!(t.delivered > 0);
    assert_eq!(
        t.codes.keys().collect::<Vec<_>>(),
        ["250"],
        "the clients never see the upstream's 451"
    );
    assert!(
        step.queued_peak.unwrap() > 0,
        "the queue held the refused messages"
    );
    // Retried from 0.5 s on: the queue empties once the fault is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while setup.relay.queue_len() != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?} still queued",
            setup.relay.queue_len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    setup.relay.shutdown().await;
    setup.sink.shutdown().await;
}

/// `--fake-api`: the faults of a fake behind some other relay, set through its page's API.
#[tokio::test]
async fn faults_reach_a_fake_through_its_http_api() {
    use smtp_relay::load::sweep::FaultControl;
    let sink =
        fake_upstream::testing::start(fake_upstream::testing::config("sink", "load-api")).await;
    let web = fake_upstream::web::Web::start(fake_upstream::web::WebConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        vec![fake_upstream::web::Server {
            name: "sink".into(),
            handle: sink.clone(),
        }],
    ))
    .await
    .unwrap();
    let control = FaultControl::api(&format!("http://{}/", web.addr()), None, None);
    let faults = vec![
        fake_upstream::faults::parse_fault("end of data: delay 200ms, probability 0.1").unwrap(),
        fake_upstream::faults::parse_fault("RCPT bob@163.com: 451 busy, twice").unwrap(),
    ];
    control.set(&faults).await.unwrap();
    let set: Vec<_> = sink.faults().into_iter().map(|(f, _)| f).collect();
    assert_eq!(set, faults);
    control.set(&[]).await.unwrap();
    assert!(sink.faults().is_empty());
    // A fake that is not there: an error that names the address.
    let gone = FaultControl::api("http://127.0.0.1:9", None, None);
    let e = gone.set(&faults).await.unwrap_err();
    assert!(e.contains("--fake-api http://127.0.0.1:9"), "{e}");
    sink.shutdown().await;
}

/// Two generators share one run against one relay (`--run-id`, `--share 1/2` and `2/2`, as
/// two machines would): the sink counts both generators' messages as one run's (each number
/// once, all intact), and `load report` merges their interval logs and JSON reports into the
/// run's totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_generators_make_one_run_and_one_report() {
    let setup = SelfSetup::start(false, None).await.unwrap();
    let id = 0x5eed_0000_0000_0042u64;
    let run = Run::shared(Some(id), (0, 1), &load::generated_body(2000));
    *setup.current.lock().unwrap() = Some(run.clone());
    let dir = fake_upstream::testing::temp_dir("load-two-generators");
    let relay = setup.relay.addr().to_string();
    two_generators(
        &dir,
        &relay,
        "5eed000000000042",
        &[
            "--messages",
            "301",
            "--size",
            "2000",
            "--connections",
            "3",
            "--per-connection",
            "10",
        ],
    )
    .await;
    // 301 split as 151 and 150; every number of 0..301 once, intact, at the one sink.
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let a = run.arrivals.lock().unwrap();
        assert_eq!((a.intact, a.corrupted, a.duplicates), (301, 0, 0));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
        .args(["load", "report"])
        .arg(dir.join("g1.hlog"))
        .arg(dir.join("g2.hlog"))
        .arg(dir.join("g1.json"))
        .arg(dir.join("g2.json"))
        .arg("--json")
        .arg(dir.join("merged.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("301 messages delivered, 0 failed"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("note:"),
        "the logs and the reports agree: {stdout}"
    );
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("merged.json")).unwrap()).unwrap();
    let r = &merged["runs"][0];
    assert_eq!(r["delivered"], 301);
    assert_eq!(r["replies"]["250"], 301);
    let message = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "message")
        .unwrap();
    assert_eq!(
        message["count"], 301,
        "every message's latency, from both logs"
    );
    // One log alone: half the messages, and the note that a log is missing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
        .args(["load", "report"])
        .arg(dir.join("g1.hlog"))
        .arg(dir.join("g1.json"))
        .arg(dir.join("g2.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("151 messages delivered")
            && stdout.contains("note: the interval logs hold 151"),
        "{stdout}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
        .args(["load", "report"])
        .arg(dir.join("g1.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no interval log"));
    setup.relay.shutdown().await;
    setup.sink.shutdown().await;
}

/// Several machines' generators against a fake upstream that tallies load runs
/// (`fake-upstream --tally-load`, as `up` does): `load report --fake-api` takes the fake's
/// count of the run, across both generators, for the integrity line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_counts_a_run_across_generators_for_the_report() {
    let mut config = fake_upstream::testing::config("sink", "load-tally");
    config.tally_load = true;
    config.transcripts = false;
    let sink = fake_upstream::testing::start(config).await;
    let web = fake_upstream::web::Web::start(fake_upstream::web::WebConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        vec![fake_upstream::web::Server {
            name: "sink".into(),
            handle: sink.clone(),
        }],
    ))
    .await
    .unwrap();
    let dir = fake_upstream::testing::temp_dir("load-tally");
    let target = sink.addr().to_string();
    two_generators(&dir, &target, "00000000000000aa", &["--messages", "200"]).await;
    let t = sink.load_tally(0xaa).unwrap();
    assert_eq!(
        (t.intact, t.corrupted, t.duplicates, t.unique),
        (200, 0, 0, 200)
    );
    let api = format!("http://{}", web.addr());
    let out = tokio::task::spawn_blocking({
        let (api, dir) = (api.clone(), dir.clone());
        move || {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"));
            c.args(["load", "report", "--fake-api", &api, "--run-id", "aa"]);
            for f in ["g1.hlog", "g2.hlog", "g1.json", "g2.json"] {
                c.arg(dir.join(f));
            }
            c.output().unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("integrity    200 intact, 0 corrupted, 0 lost, 0 duplicated"),
        "{stdout}"
    );
    // A run the fake never saw: an error that says so.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
            .args(["load", "report", "--fake-api", &api, "--run-id", "bb"])
            .arg(dir.join("g1.hlog"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no message of run 00000000000000bb"));
    sink.shutdown().await;
}

/// BDAT on both hops (`--bdat`): the generator's chunks to our relay, the relay's to the sink;
/// every message intact at the sink, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_run_in_bdat_through_the_relay_arrives_intact() {
    let setup = SelfSetup::start(false, Some(700)).await.unwrap();
    let mut w = workload(setup.relay.addr(), Model::Closed { connections: 4 }, 120);
    w.server.bdat = Some(500);
    let run = Run::new(&w.body);
    *setup.current.lock().unwrap() = Some(run.clone());
    let o = load::run(&w, run, true, None).await;
    assert_eq!(
        (o.total.delivered, o.total.failed),
        (120, 0),
        "{:?}",
        o.total.codes
    );
    assert_eq!(
        (o.intact, o.corrupted, o.lost(), o.duplicates),
        (120, 0, 0, 0)
    );
    setup.relay.shutdown().await;
    setup.sink.shutdown().await;
}

/// Two `smtp-relay load` processes at once against `target`, sharing run `run_id` (1/2 and
/// 2/2), each writing `g<i>.hlog` and `g<i>.json` into `dir`; both must succeed.
async fn two_generators(dir: &std::path::Path, target: &str, run_id: &str, extra: &[&str]) {
    let generator = |i: u32| {
        let (dir, target, run_id) = (dir.to_path_buf(), target.to_string(), run_id.to_string());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
                .args(["load", "--target", &target, "--run-id", &run_id, "--quiet"])
                .args(["--share", &format!("{i}/2")])
                .args(&extra)
                .arg("--hlog")
                .arg(dir.join(format!("g{i}.hlog")))
                .arg("--json")
                .arg(dir.join(format!("g{i}.json")))
                .output()
                .unwrap()
        })
    };
    let (a, b) = tokio::join!(generator(1), generator(2));
    for out in [a.unwrap(), b.unwrap()] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
