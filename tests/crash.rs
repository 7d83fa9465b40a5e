//! The crash test of store-and-forward mode: the relay binary runs as a child process in
//! queue mode, a client sends messages in a loop, and the relay is killed with SIGKILL at
//! seeded random moments, many times, and restarted. At the end every message that got a 250
//! must have reached the upstream at least once, intact; duplicates are counted and reported
//! (at-least-once delivery: a crash between the upstream's 250 and the record's update sends
//! a message again).
//!
//! `SMTP_RELAY_CRASH_ROUNDS=200 cargo test --test crash -- --nocapture` for a long run
//! (default 6 rounds); `SMTP_RELAY_CRASH_SEED` to repeat one.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_relay::upstream::Upstream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The relay child, killed when dropped: a failing test must not leave it running.
fn start_relay(config: &std::path::Path) -> fake_upstream::testing::Reap {
    fake_upstream::testing::Reap(spawn_relay(config))
}

fn spawn_relay(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the relay did not come up on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body(n: u64) -> Vec<u8> {
    format!(
        "From: load@example.com\r\nTo: rcpt@example.org\r\nSubject: crash {n}\r\nX-Crash-Marker: crash-{n}\r\n\r\n{}\r\n",
        format!("line of message {n} ").repeat(40)
    )
    .into_bytes()
}

/// Sends messages one after another until the relay dies; records the numbers that got 250.
async fn client(addr: SocketAddr, next: Arc<Mutex<u64>>, acked: Arc<Mutex<HashSet<u64>>>) {
    let server = smtp_relay::load::plain_server(addr);
    loop {
        let Ok(mut up) = Upstream::connect(&server).await else {
            return;
        };
        for _ in 0..20 {
            let n = {
                let mut g = next.lock().unwrap();
                *g += 1;
                *g
            };
            let from = match smtp_wire::Command::parse(b"MAIL FROM:<load@example.com>") {
                Ok(smtp_wire::Command::Mail { from, .. }) => from,
                _ => unreachable!(),
            };
            let to = match smtp_wire::Command::parse(b"RCPT TO:<rcpt@example.org>") {
                Ok(smtp_wire::Command::Rcpt { to, params }) => (to, params),
                _ => unreachable!(),
            };
            let sent = async {
                let env = up.envelope(&from, &Default::default(), &[to]).await?;
                if !env.mail.is_positive() || !env.rcpts[0].is_positive() {
                    return Ok(None);
                }
                let r = up.data().await?;
                if r.code != 354 {
                    return Ok(None);
                }
                up.body(&body(n)).await?;
                up.end_of_data().await.map(Some)
            }
            .await;
            match sent {
                Ok(Some(r)) if r.code == 250 => {
                    acked.lock().unwrap().insert(n);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
        up.quit().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_is_delivered_across_kill_9() {
    let rounds: u64 = std::env::var("SMTP_RELAY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("SMTP_RELAY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261126);
    let mut rng = fastrand::Rng::with_seed(seed);

    let dir = fake_upstream::testing::temp_dir("crash");
    let mut sink_config = fake_upstream::testing::config("sink", "crash-sink");
    sink_config.persona.rules.keep_messages = true;
    sink_config.listen_tls = None;
    sink_config.history = 1_000_000;
    let sink = fake_upstream::testing::start(sink_config).await;

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"hostname = "relay.crash"
listen = "127.0.0.1:{port}"
spool_dir = "spool"
[auth]
mode = "none"
trusted_networks = ["127.0.0.0/8"]
[upstream]
host = "127.0.0.1"
port = {sink}
tls = "none"
mode = "queue"
[queue]
dir = "queue"
first_retry_secs = 1
max_retry_secs = 1
concurrency = 4
"#,
            sink = sink.addr().port()
        ),
    )
    .unwrap();

    let next = Arc::new(Mutex::new(0u64));
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    for round in 0..rounds {
        let mut relay = start_relay(&config);
        wait_port(addr).await;
        let clients: Vec<_> = (0..3)
            .map(|_| tokio::spawn(client(addr, next.clone(), acked.clone())))
            .collect();
        let life = Duration::from_millis(rng.u64(150..700));
        tokio::time::sleep(life).await;
        relay.0.kill().unwrap(); // SIGKILL
        relay.0.wait().unwrap();
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
        }
        eprintln!(
            "round {round}: killed after {life:?}; {} acknowledged so far",
            acked.lock().unwrap().len()
        );
    }

    // A last start: the relay picks up the queue and delivers what is left.
    let mut relay = start_relay(&config);
    wait_port(addr).await;
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "no message was acknowledged at all");
    let deadline = Instant::now() + Duration::from_secs(60);
    let arrived = loop {
        let mut arrived: HashMap<u64, u32> = HashMap::new();
        let mut corrupted = Vec::new();
        for m in sink.received() {
            let text = String::from_utf8_lossy(&m.content);
            let Some(n) = text
                .split("X-Crash-Marker: crash-")
                .nth(1)
                .and_then(|r| r.split("\r\n").next())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if !m.content.ends_with(&body(n)) {
                corrupted.push(n);
            }
            *arrived.entry(n).or_insert(0) += 1;
        }
        assert!(corrupted.is_empty(), "corrupted messages: {corrupted:?}");
        let missing = acked.iter().filter(|n| !arrived.contains_key(n)).count();
        if missing == 0 {
            break arrived;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged messages never arrived",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    relay.0.kill().unwrap();
    relay.0.wait().unwrap();
    let duplicates: u32 = arrived.values().map(|c| c - 1).sum();
    let unacked_arrived = arrived.keys().filter(|n| !acked.contains(n)).count();
    eprintln!(
        "{rounds} kills (seed {seed}): {} acknowledged, all delivered; {duplicates} duplicate deliveries; {unacked_arrived} delivered without a 250 (killed before it went out)",
        acked.len()
    );
    sink.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
