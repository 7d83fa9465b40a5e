//! Store-and-forward delivery against the fake upstream: retries until an upstream that was
//! down comes back, a route backed off on quota replies, bounces for permanent failures and
//! expiry (none for a null sender).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_upstream::{Fault, Stage};
use smtp_relay::queue::deliver::{Retry, RouteLimits, Routes, Scheduler};
use smtp_relay::queue::store::{Body, Queue, Queued, Rcpt, RcptState};
use smtp_relay::upstream::UpstreamConfig;

struct To(UpstreamConfig);

/// A route with limits.
struct Limited(UpstreamConfig, RouteLimits);

impl Routes for Limited {
    fn upstream(&self, _: &Queued) -> Option<UpstreamConfig> {
        Some(self.0.clone())
    }
    fn bounces(&self, _: &str) -> Option<UpstreamConfig> {
        Some(self.0.clone())
    }
    fn limits(&self, _: &str) -> RouteLimits {
        self.1
    }
}

impl Routes for To {
    fn upstream(&self, _: &Queued) -> Option<UpstreamConfig> {
        Some(self.0.clone())
    }
    fn bounces(&self, _: &str) -> Option<UpstreamConfig> {
        Some(self.0.clone())
    }
}

const MESSAGE: &[u8] =
    b"From: alice@163.com\r\nTo: bob@163.com\r\nSubject: queued\r\n\r\nLater is fine.\r\n";

fn record(id: &str, from: &str, to: &[&str], lifetime_ago: i64) -> Queued {
    let t = chrono::Utc::now() - chrono::Duration::seconds(lifetime_ago);
    Queued {
        id: id.into(),
        route: "default".into(),
        mail_from: format!("<{from}>").parse().unwrap(),
        mail_params: Default::default(),
        rcpts: to
            .iter()
            .map(|t| Rcpt {
                to: format!("<{t}>").parse().unwrap(),
                state: RcptState::Pending { last: None },
            })
            .collect(),
        auth_user: None,
        size: MESSAGE.len() as u64,
        received_at: t,
        attempts: 0,
        next_attempt: t,
        last_error: None,
        trace: None,
    }
}

async fn enqueue(q: &Queue, rec: Queued) {
    q.enqueue(Body::Bytes(MESSAGE.to_vec()), rec).await.unwrap();
}

fn quick() -> Retry {
    Retry {
        first: Duration::from_millis(200),
        max: Duration::from_secs(1),
        lifetime: Duration::from_secs(60),
        jitter: 0.0,
    }
}

fn scheduler(q: &Queue, to: UpstreamConfig, retry: Retry) -> Scheduler {
    Scheduler {
        queue: q.clone(),
        routes: Arc::new(To(to)),
        retry,
        concurrency: 1,
        tick: Duration::from_millis(20),
        hostname: "relay.test".into(),
        wake: Arc::default(),
        metrics: None,
    }
}

/// A sink that keeps what it gets and its transcripts (the checks read them).
fn sink_config(name: &str) -> fake_upstream::Config {
    let mut config = fake_upstream::testing::config("sink", name);
    config.persona.rules.keep_messages = true;
    config.transcripts = true;
    config
}

/// When the sink received each MAIL command, in order, once it has seen at least `n` (a
/// session's transcript is complete only when the sink has closed it, a moment after the
/// relay's QUIT).
async fn mail_times(sink: &fake_upstream::Handle, n: usize) -> Vec<Instant> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let times = mail_times_now(sink);
        if times.len() >= n || Instant::now() >= deadline {
            return times;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mail_times_now(sink: &fake_upstream::Handle) -> Vec<Instant> {
    let mut times: Vec<Instant> = sink
        .transcripts()
        .iter()
        .flat_map(|t| {
            t.lines
                .iter()
                .zip(&t.times)
                .filter(|(l, _)| l.starts_with("C: MAIL"))
                .map(|(_, at)| *at)
                .collect::<Vec<_>>()
        })
        .collect();
    times.sort();
    times
}

fn queue_dir(name: &str) -> std::path::PathBuf {
    fake_upstream::testing::temp_dir(&format!("queue-{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_down_for_a_while_gets_everything_when_it_returns() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let q = Queue::open(&queue_dir("down")).unwrap();
    for i in 0..3 {
        enqueue(
            &q,
            record(
                &format!("down{i}"),
                "alice@163.com",
                &["bob@example.org"],
                0,
            ),
        )
        .await;
    }
    let (stop, rx) = tokio::sync::watch::channel(false);
    let sched = tokio::spawn(scheduler(&q, smtp_relay::load::plain_server(addr), quick()).run(rx));
    // While it is down: attempts fail, each message waits with the reason and a later time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = q.load("down0").unwrap();
    assert!(r.attempts >= 1, "{r:?}");
    assert!(
        r.last_error.as_deref().unwrap().contains("cannot connect"),
        "{r:?}"
    );
    assert!(r.next_attempt > chrono::Utc::now(), "{r:?}");
    // Back: within the backoff (at most 1 s), all three arrive, once each.
    let mut config = sink_config("queue-down-sink");
    config.listen = addr;
    config.listen_tls = None;
    let sink = fake_upstream::testing::start(config).await;
    let got = sink.wait_for(3, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|m| m.content.as_slice() == MESSAGE));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !q.list().unwrap().0.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        q.list().unwrap().0.is_empty(),
        "delivered messages leave the queue"
    );
    stop.send(true).unwrap();
    sched.await.unwrap();
    assert_eq!(sink.received_count(), 3, "no duplicates");
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_reply_backs_the_whole_route_off() {
    let mut config = sink_config("queue-quota");
    config.faults = vec![
        Fault::on(Stage::Mail)
            .first(1)
            .reply("451 MI:SFQ 163 smtp9,DcCow 1795672909"),
    ];
    let sink = fake_upstream::testing::start(config).await;
    let q = Queue::open(&queue_dir("quota")).unwrap();
    enqueue(&q, record("qa", "alice@163.com", &["bob@example.org"], 0)).await;
    enqueue(&q, record("qb", "alice@163.com", &["carol@example.org"], 0)).await;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let sched =
        tokio::spawn(scheduler(&q, smtp_relay::load::plain_server(sink.addr()), quick()).run(rx));
    sink.wait_for(2, Duration::from_secs(5)).await.unwrap();
    stop.send(true).unwrap();
    sched.await.unwrap();
    // The MAIL commands the sink saw, with when: after the quota reply, nothing for the
    // route's back-off (200 ms), although the second message was due.
    let mails = mail_times(&sink, 3).await;
    assert_eq!(mails.len(), 3, "one refused, then one each");
    let gap = mails[1] - mails[0];
    assert!(
        gap >= Duration::from_millis(180),
        "the route waited {gap:?}"
    );
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_and_expiry_bounce_to_the_sender_never_for_null() {
    let mut config = sink_config("queue-bounce");
    config.faults = vec![
        Fault::on(Stage::Rcpt)
            .address("nobody@example.org")
            .reply("550 5.1.1 no such user"),
        Fault::on(Stage::Rcpt)
            .address("later@example.org")
            .reply("451 4.2.0 mailbox busy"),
    ];
    let sink = fake_upstream::testing::start(config).await;
    let q = Queue::open(&queue_dir("bounce")).unwrap();
    // A 5xx for one recipient: the other delivered, a bounce for the one.
    enqueue(
        &q,
        record(
            "b1",
            "alice@163.com",
            &["nobody@example.org", "carol@example.org"],
            0,
        ),
    )
    .await;
    // A 4xx past the message's lifetime: expired, bounced.
    enqueue(
        &q,
        record("b2", "alice@163.com", &["later@example.org"], 120),
    )
    .await;
    // A null sender's failure: no bounce.
    enqueue(&q, record("b3", "", &["nobody@example.org"], 0)).await;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let sched =
        tokio::spawn(scheduler(&q, smtp_relay::load::plain_server(sink.addr()), quick()).run(rx));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !q.list().unwrap().0.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(q.list().unwrap().0.is_empty());
    stop.send(true).unwrap();
    sched.await.unwrap();
    let got = sink.received();
    let to = |who: &str| -> Vec<&fake_upstream::Received> {
        got.iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r == who))
            .collect()
    };
    assert_eq!(to("carol@example.org").len(), 1);
    let bounces = to("alice@163.com");
    assert_eq!(
        bounces.len(),
        2,
        "one for b1, one for b2; none for the null sender"
    );
    let texts: Vec<String> = bounces
        .iter()
        .map(|m| String::from_utf8_lossy(&m.content).into_owned())
        .collect();
    assert!(
        texts.iter().any(
            |t| t.contains("Final-Recipient: rfc822; nobody@example.org")
                && t.contains("Status: 5.1.1")
                && t.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user")
        ),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Final-Recipient: rfc822; later@example.org")
                && t.contains("expired after 1 attempts")),
        "{texts:?}"
    );
    for m in &bounces {
        assert_eq!(m.mail_from.to_string(), "<>");
        let parsed = mail_parser::MessageParser::default()
            .parse(m.content.as_slice())
            .unwrap();
        assert_eq!(
            parsed.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
    }
    sink.shutdown().await;
}

/// The relay in store-and-forward mode, in front of an upstream that is not there yet.
async fn queue_relay(
    name: &str,
    upstream: std::net::SocketAddr,
) -> (smtp_relay::relay::RelayHandle, Queue, std::path::PathBuf) {
    let dir = queue_dir(name);
    let mut config = smtp_relay::relay::RelayConfig::new(
        "relay.test",
        "127.0.0.1:0".parse().unwrap(),
        dir.join("spool"),
        smtp_relay::load::plain_server(upstream),
    );
    config.auth =
        smtp_relay::relay::AuthMode::TrustedNetworks(vec![("127.0.0.0".parse().unwrap(), 8)]);
    config.default_queue = true;
    config.probe_routes = false;
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    config.queue = Some(smtp_relay::relay::QueueSettings {
        dir: dir.join("queue"),
        retry: quick(),
        concurrency: 2,
        tick: Duration::from_millis(20),
        secrets: Arc::new(|_: &str| None),
        route_limits: Default::default(),
    });
    let relay = smtp_relay::relay::start(config).await.unwrap();
    // The relay holds the queue: the test observes it.
    let queue = Queue::open_existing(&dir.join("queue")).unwrap();
    assert!(!queue.holds());
    (relay, queue, dir)
}

async fn send(relay: std::net::SocketAddr) -> String {
    send_content(relay, MESSAGE).await
}

async fn send_content(relay: std::net::SocketAddr, content: &[u8]) -> String {
    let mut c = fake_upstream::testing::Client::connect(relay).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.com>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.org>").await,
        "250 2.1.5 Recipient OK, queued for delivery"
    );
    let go = c.cmd("DATA").await;
    if !go.starts_with("354") {
        c.cmd("QUIT").await;
        return go;
    }
    c.send_raw(content).await;
    c.send_raw(b".\r\n").await;
    let r = c.reply().await.to_string();
    c.cmd("QUIT").await;
    r
}

/// 250 only once the message is durable in the queue; delivered when the upstream is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_answers_250_when_durable_and_delivers_later() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (relay, queue, _dir) = queue_relay("relay-queue", addr).await;
    let reply = send(relay.addr()).await;
    assert!(reply.starts_with("250 2.0.0 queued as "), "{reply}");
    // Durable before the 250: the record and the content are in the queue.
    let (records, _) = queue.list().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].rcpts[0].to.to_string(), "<bob@example.org>");
    let content = match queue.content(&records[0].id).await.unwrap() {
        Body::Bytes(b) => b,
        Body::File(p) => std::fs::read(p).unwrap(),
    };
    // The content as the client sent it, the relay's trace header in the record.
    assert_eq!(content, MESSAGE);
    let trace = records[0].trace.as_deref().unwrap();
    assert!(
        trace.starts_with("Received: from client.example"),
        "{trace}"
    );
    // A first attempt fails while nothing listens (waited for: under load the scheduler's
    // first tick may come late, and the deferral counted below must have happened).
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue
        .list()
        .unwrap()
        .0
        .first()
        .is_some_and(|r| r.attempts == 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The upstream comes: the message goes, once, and leaves the queue.
    let mut config = sink_config("relay-queue-sink");
    config.listen = addr;
    config.listen_tls = None;
    let sink = fake_upstream::testing::start(config).await;
    let got = sink.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(*got[0].content, [trace.as_bytes(), MESSAGE].concat());
    assert_eq!(got[0].mail_from.to_string(), "<alice@example.com>");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !queue.list().unwrap().0.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(queue.list().unwrap().0.is_empty());
    // The counters, as Prometheus scrapes them (curl, a real HTTP client).
    let url = format!("http://{}/metrics", relay.metrics_addr().unwrap());
    let out = std::process::Command::new("curl")
        .args(["-sf", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "smtp_relay_sessions_total 1",
        "smtp_relay_messages_accepted_total 1",
        "smtp_relay_queued_total 1",
        "smtp_relay_delivered_total 1",
        "smtp_relay_queue_messages 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("smtp_relay_deferred_total ")
                && l != "smtp_relay_deferred_total 0"),
        "the first attempts failed: {text}"
    );
    relay.shutdown().await;
    assert_eq!(sink.received_count(), 1);
    sink.shutdown().await;
}

/// A message too large for the journal is one file on disk: the spool's, hard-linked into
/// the queue (before the 250), the trace header in the record; the upstream gets the header
/// and then the content, and the spool keeps its copy after the queue lets go of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_queued_message_is_the_spools_file_hard_linked() {
    use std::os::unix::fs::MetadataExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (relay, queue, dir) = queue_relay("relay-queue-large", addr).await;
    let line = b"a line of a message too large for the journal, kept in the spool's file\r\n";
    let large: Vec<u8> = [MESSAGE, &line.repeat(3000)].concat();
    let reply = send_content(relay.addr(), &large).await;
    assert!(reply.starts_with("250 2.0.0 queued as "), "{reply}");
    let (records, _) = queue.list().unwrap();
    assert_eq!(records.len(), 1);
    let rec = &records[0];
    let Body::File(queued) = queue.content(&rec.id).await.unwrap() else {
        panic!("a large message is a file of its own");
    };
    let spooled = smtp_relay::spool::path_for(&dir.join("spool"), &rec.id, "eml");
    let (q, s) = (
        std::fs::metadata(&queued).unwrap(),
        std::fs::metadata(&spooled).unwrap(),
    );
    assert_eq!(
        (q.dev(), q.ino()),
        (s.dev(), s.ino()),
        "one file, two names"
    );
    assert_eq!(q.nlink(), 2);
    assert_eq!(std::fs::read(&queued).unwrap(), large);
    let trace = rec.trace.as_deref().unwrap();
    assert!(
        trace.starts_with("Received: from client.example"),
        "{trace}"
    );
    assert_eq!(rec.size, (trace.len() + large.len()) as u64);
    // The upstream comes: the header, then the content, once.
    let mut config = sink_config("relay-queue-large-sink");
    config.listen = addr;
    config.listen_tls = None;
    let sink = fake_upstream::testing::start(config).await;
    let got = sink.wait_for(1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(*got[0].content, [trace.as_bytes(), &large].concat());
    // (The record leaves the index a moment before its file's name goes.)
    let deadline = Instant::now() + Duration::from_secs(5);
    while (!queue.list().unwrap().0.is_empty() || queued.exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(queue.list().unwrap().0.is_empty());
    assert!(!queued.exists(), "the queue let go of its name");
    assert_eq!(
        std::fs::read(&spooled).unwrap(),
        large,
        "the spool's copy stays"
    );
    relay.shutdown().await;
    sink.shutdown().await;
}

/// The spool cannot keep a large message in queue mode: its file was to be the queue's copy,
/// so the client hears 452 4.3.1 (nothing queued, nothing lost); a small message, kept in the
/// journal, is still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_the_spool_cannot_keep_is_452_in_queue_mode() {
    let sink = fake_upstream::testing::start(sink_config("relay-queue-nospool-sink")).await;
    let (relay, queue, dir) = queue_relay("relay-queue-nospool", sink.addr()).await;
    // Every spool subdirectory made a file: no message file can be created.
    let spool = dir.join("spool");
    for entry in std::fs::read_dir(&spool).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
            std::fs::write(&path, b"not a directory").unwrap();
        }
    }
    let line = b"a line of a message too large for the journal, kept in the spool's file\r\n";
    let large: Vec<u8> = [MESSAGE, &line.repeat(3000)].concat();
    let reply = send_content(relay.addr(), &large).await;
    assert!(
        reply.starts_with("452 4.3.1 cannot queue the message: the spool's copy"),
        "{reply}"
    );
    assert!(queue.list().unwrap().0.is_empty());
    let reply = send(relay.addr()).await;
    assert!(reply.starts_with("250 2.0.0 queued as "), "{reply}");
    sink.wait_for(1, Duration::from_secs(5)).await.unwrap();
    relay.shutdown().await;
    assert_eq!(
        sink.received_count(),
        1,
        "the refused message was not delivered"
    );
    sink.shutdown().await;
}

/// The queue cannot take a large message's file: 452 4.3.1 at the end of data, nothing
/// half-written; once it can, service resumes. (A journal write that fails is tested in
/// the queue's own tests, on a segment that refuses writes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_cannot_be_written_is_452_and_then_recovers() {
    let sink = fake_upstream::testing::start(sink_config("relay-queue-full-sink")).await;
    let (relay, queue, dir) = queue_relay("relay-queue-full", sink.addr()).await;
    let tmp = dir.join("queue/tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let line = b"a line of a message too large for the journal, streamed to its own file\r\n";
    let large: Vec<u8> = [MESSAGE, &line.repeat(3000)].concat();
    let reply = send_content(relay.addr(), &large).await;
    assert!(
        reply.starts_with("452 4.3.1 cannot queue the message"),
        "{reply}"
    );
    assert!(queue.list().unwrap().0.is_empty());
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    let reply = send(relay.addr()).await;
    assert!(reply.starts_with("250 2.0.0 queued as "), "{reply}");
    sink.wait_for(1, Duration::from_secs(5)).await.unwrap();
    relay.shutdown().await;
    assert_eq!(
        sink.received_count(),
        1,
        "the refused message was not delivered"
    );
    sink.shutdown().await;
}

/// `smtp-relay queue list|show|retry|delete` on a queue directory: on its own (the command
/// holds the queue), and beside the process that holds it (as a running relay does: the
/// command leaves a request, the holder carries it out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_commands() {
    let dir = queue_dir("admin");
    let q = Queue::open(&dir).unwrap();
    let mut later = record("adm1", "alice@163.com", &["bob@example.org"], 0);
    later.next_attempt = chrono::Utc::now() + chrono::Duration::hours(1);
    later.attempts = 3;
    later.last_error = Some("451 4.4.1 upstream x: cannot connect".into());
    enqueue(&q, later).await;
    enqueue(&q, record("adm2", "carol@163.com", &["dan@example.org"], 0)).await;
    let run_in = dir.clone();
    let run = move |args: &[&str]| {
        let dir = &run_in;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
            .arg("queue")
            .arg("--dir")
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    drop(q);
    let q = Queue::observe(&dir);
    let (ok, list, _) = run(&["list"]);
    assert!(ok);
    assert!(
        list.contains("adm1")
            && list.contains("<bob@example.org>")
            && list.contains("last: 451 4.4.1"),
        "{list}"
    );
    assert!(list.contains("2 message(s) queued"), "{list}");
    let (ok, show, _) = run(&["show", "adm1"]);
    assert!(ok, "{show}");
    assert!(show.contains("<bob@example.org>: pending"), "{show}");
    assert!(show.contains("Later is fine."), "{show}");
    let (ok, out, _) = run(&["retry", "adm1"]);
    assert!(ok && out.contains("1 message(s) due now"), "{out}");
    assert!(q.load("adm1").unwrap().next_attempt <= chrono::Utc::now());
    assert_eq!(
        q.load("adm1").unwrap().attempts,
        3,
        "a retry keeps the count"
    );
    // A holder (a relay) on the queue: the command asks it.
    let holder = Queue::open(&dir).unwrap();
    let asking = std::thread::spawn({
        let run = run.clone();
        move || run(&["delete", "adm2"])
    });
    while !asking.is_finished() {
        holder.take_requests().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (ok, out, err) = asking.join().unwrap();
    assert!(ok && out.contains("adm2 deleted"), "{out}{err}");
    assert!(holder.load("adm2").is_err());
    assert!(q.load("adm2").is_err());
    drop(holder);
    let (ok, _, err) = run(&["show", "adm2"]);
    assert!(!ok && err.contains("adm2"), "{err}");
    let (ok, _, err) = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
        .args(["queue", "--dir", "/nonexistent", "list"])
        .output()
        .map(|o| {
            (
                o.status.success(),
                (),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert!(!ok && err.contains("not a queue directory"), "{err}");
}

/// A route limited to 120 deliveries a minute starts one every half second, however many are
/// due, instead of running into the upstream's quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_rate_limit_spaces_its_deliveries() {
    let sink = fake_upstream::testing::start(sink_config("queue-rate")).await;
    let q = Queue::open(&queue_dir("rate")).unwrap();
    for i in 0..3 {
        enqueue(
            &q,
            record(&format!("r{i}"), "alice@163.com", &["bob@example.org"], 0),
        )
        .await;
    }
    let mut s = scheduler(&q, smtp_relay::load::plain_server(sink.addr()), quick());
    s.concurrency = 8;
    s.routes = Arc::new(Limited(
        smtp_relay::load::plain_server(sink.addr()),
        RouteLimits {
            concurrency: Some(2),
            per_minute: Some(120),
        },
    ));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let sched = tokio::spawn(s.run(rx));
    sink.wait_for(3, Duration::from_secs(10)).await.unwrap();
    stop.send(true).unwrap();
    sched.await.unwrap();
    let mails = mail_times(&sink, 3).await;
    assert_eq!(mails.len(), 3);
    for w in mails.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(450),
            "{:?} apart",
            w[1] - w[0]
        );
    }
    sink.shutdown().await;
}

/// Due messages of one route and sender go over one upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_messages_share_a_connection() {
    let mut config = sink_config("queue-batch");
    config.transcripts = true;
    let sink = fake_upstream::testing::start(config).await;
    let q = Queue::open(&queue_dir("batch")).unwrap();
    for i in 0..5 {
        enqueue(
            &q,
            record(&format!("b{i}"), "alice@163.com", &["bob@example.org"], 0),
        )
        .await;
    }
    let (stop, rx) = tokio::sync::watch::channel(false);
    let sched =
        tokio::spawn(scheduler(&q, smtp_relay::load::plain_server(sink.addr()), quick()).run(rx));
    sink.wait_for(5, Duration::from_secs(5)).await.unwrap();
    stop.send(true).unwrap();
    sched.await.unwrap();
    // The sink files a transcript when its connection closes; wait for it.
    mail_times(&sink, 5).await;
    let sessions: Vec<usize> = sink
        .transcripts()
        .iter()
        .map(|t| t.lines.iter().filter(|l| l.starts_with("C: MAIL")).count())
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(sessions, [5], "five messages over one connection");
    sink.shutdown().await;
}
