//! `smtp-relay load`: a load generator for SMTP servers and relays. Two models: closed loop
//! (N connections sending as fast as they are answered) and open loop (messages started on a
//! schedule whatever the server does; latency measured from each message's intended start,
//! so that a server that stalls is charged for the messages it delayed: coordinated omission
//! corrected, as wrk2 does). Latency per phase in HdrHistogram; replies counted by code;
//! every message carries an integrity header that a fake upstream checks on arrival.
//!
//! The client side is the relay's own upstream client ([`crate::upstream::Upstream`]): TLS,
//! AUTH, pipelining, a dot-stuffing encoder, a timeout per phase.

pub mod cli;
pub mod control;
pub mod merge;
pub mod report;
pub mod stats;
pub mod sweep;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use smtp_wire::{ForwardPath, MailParams, RcptParams, ReversePath};

use crate::upstream::{Timeouts, TlsMode, Upstream, UpstreamConfig, UpstreamError};
use stats::{Interval, Phase, Recorder};

/// How messages are started.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Model {
    /// `connections` at once, each sending its next message when the last was answered.
    Closed { connections: usize },
    /// `rate` messages a second on a fixed schedule, over at most `connections` at once.
    Open { rate: f64, connections: usize },
}

/// A workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// How to reach the server (address, TLS, AUTH, timeouts).
    pub server: UpstreamConfig,
    pub from: String,
    /// Recipient template: `{n}` is the message number, `{r}` the recipient's index in it.
    pub to: String,
    pub recipients: usize,
    /// The body after the headers the generator writes (CRLF line ends).
    pub body: Arc<Vec<u8>>,
    /// MAIL and RCPTs in one write when the server offers PIPELINING.
    pub pipelining: bool,
    /// Messages on one connection before QUIT and a new one.
    pub per_connection: u64,
    pub model: Model,
    /// Stop after this many messages...
    pub messages: Option<u64>,
    /// ...or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// How often the run's figures are collected into an interval (1 s; a sweep's steps
    /// use 250 ms, to see how fast the server recovers).
    pub tick: Duration,
}

/// A run in progress, shared by its workers, its scheduler and (with `--self`) the fake
/// upstream's observer.
pub struct Run {
    /// Identifies this run's messages in the integrity header.
    pub id: u64,
    pub started: Instant,
    pub started_at: SystemTime,
    /// Per-worker recorders for the current interval.
    slots: Mutex<Vec<Arc<Mutex<stats::Samples>>>>,
    /// Messages started so far.
    pub started_count: AtomicU64,
    /// What the upstream observer saw (arrivals, integrity, end-to-end latency).
    pub arrivals: Mutex<Arrivals>,
    pub stop: AtomicBool,
    body_hash: u64,
    /// This generator's share of a run several generators make together: it is number
    /// `.0` (from 0) of `.1`, and its message `n` is the run's `n * .1 + .0`.
    pub share: (u64, u64),
    /// A sweep step's fault holds until this (from the start): the messages meant to start
    /// before it are recorded apart as well, however late they finish ([`Outcome::before_cut`]).
    cut: Option<Duration>,
    before_cut: Mutex<Recorder>,
}

/// What arrived at the observed upstream.
#[derive(Debug)]
pub struct Arrivals {
    /// Intact messages of this run.
    pub intact: u64,
    /// Messages of this run whose body hash does not match.
    pub corrupted: u64,
    /// A message number seen more than once.
    pub duplicates: u64,
    seen: std::collections::HashSet<u64>,
    /// End-to-end latency of the arrivals since the last collection.
    pub end_to_end: hdrhistogram::Histogram<u64>,
}

/// The integrity header every message carries: the run, the message number, when it was
/// started (µs from the run's start) and a hash of the body.
pub const CHECK_HEADER: &str = fake_upstream::loadstamp::HEADER;

pub use crate::fnv64;

/// A body of `size` octets: 76-character lines of text ending in CRLF, no line starting
/// with a dot.
pub fn generated_body(size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size);
    let mut i = 0usize;
    while body.len() + 2 < size {
        let room = (size - body.len() - 2).min(76);
        body.extend((0..room).map(|k| b'a' + ((i + k) % 26) as u8));
        body.extend_from_slice(b"\r\n");
        i += 1;
    }
    // One octet short (a line needs two for its CRLF): the last line takes it.
    if body.len() + 1 == size && body.len() >= 2 {
        let at = body.len() - 2;
        body.insert(at, b'z');
    }
    body
}

impl Run {
    pub fn new(body: &[u8]) -> Arc<Run> {
        Run::shared(None, (0, 1), body)
    }

    /// A run whose messages meant to start before `cut` are also recorded apart.
    pub fn with_cut(body: &[u8], cut: Duration) -> Arc<Run> {
        let mut run = Run::make(None, (0, 1), body);
        run.cut = Some(cut);
        Arc::new(run)
    }

    /// A run with a given id (`--run-id`, the same for every generator of one run) and this
    /// generator's share of it (`--share I/N`: `(I - 1, N)`).
    pub fn shared(id: Option<u64>, share: (u64, u64), body: &[u8]) -> Arc<Run> {
        Arc::new(Run::make(id, share, body))
    }

    fn make(id: Option<u64>, share: (u64, u64), body: &[u8]) -> Run {
        Run {
            share: (share.0, share.1.max(1)),
            id: id.unwrap_or_else(fastrand_id),
            started: Instant::now(),
            started_at: SystemTime::now(),
            slots: Mutex::new(Vec::new()),
            started_count: AtomicU64::new(0),
            arrivals: Mutex::new(Arrivals {
                intact: 0,
                corrupted: 0,
                duplicates: 0,
                seen: Default::default(),
                end_to_end: stats::histogram(),
            }),
            stop: AtomicBool::new(false),
            body_hash: fnv64(body),
            cut: None,
            before_cut: Mutex::new(Recorder::default()),
        }
    }

    fn slot(&self) -> Arc<Mutex<stats::Samples>> {
        let slot = Arc::new(Mutex::new(stats::Samples::default()));
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        slot
    }

    /// Takes what every worker recorded since the last call, and the end-to-end latencies.
    pub fn collect(&self) -> Recorder {
        let mut total = Recorder::default();
        for slot in self.slots.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let mut taken = std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(early) = taken.before_cut.take() {
                self.before_cut
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .absorb(*early);
            }
            total.absorb(taken);
        }
        let mut a = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        let e2e = &mut total.phases[Phase::ALL
            .iter()
            .position(|p| *p == Phase::EndToEnd)
            .expect("listed")];
        let _ = e2e.add(&a.end_to_end);
        a.end_to_end.reset();
        total
    }

    /// The header for message `n`, started `at`.
    fn header(&self, n: u64, at: Instant) -> String {
        let n = n * self.share.1 + self.share.0;
        format!(
            "{CHECK_HEADER}: {:016x} {n} {} {:016x}\r\n",
            self.id,
            at.saturating_duration_since(self.started).as_micros(),
            self.body_hash
        )
    }

    /// For the fake upstream's observer: checks an arrived message's integrity header and
    /// body, and records its end-to-end latency.
    pub fn observe(&self, message: &[u8]) {
        let now = Instant::now();
        let Some(stamp) = fake_upstream::loadstamp::read(message) else {
            return;
        };
        if stamp.run != self.id {
            return;
        }
        let intact = stamp.intact && stamp.hash == self.body_hash;
        let e2e =
            now.saturating_duration_since(self.started + Duration::from_micros(stamp.started_us));
        let mut a = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        if !a.seen.insert(stamp.n) {
            a.duplicates += 1;
        }
        if intact {
            a.intact += 1;
        } else {
            a.corrupted += 1;
        }
        let us = (e2e.as_micros() as u64).clamp(1, 3_600_000_000);
        a.end_to_end.saturating_record(us);
    }
}

fn fastrand_id() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    fnv64(&(t ^ u64::from(std::process::id())).to_le_bytes())
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub total: Recorder,
    pub intervals: Vec<Interval>,
    pub elapsed: Duration,
    pub started_at: SystemTime,
    /// Messages scheduled (open loop) or started that never ran: the run ended first.
    pub not_run: u64,
    /// Filled when an observer watched the upstream.
    pub intact: u64,
    pub corrupted: u64,
    pub duplicates: u64,
    pub observed: bool,
    /// With a cut ([`Run::with_cut`]): every message meant to start before it, however late
    /// it finished (its latencies from its intended start, its replies, its failures).
    pub before_cut: Option<Recorder>,
}

impl Outcome {
    /// Messages that got a 250 but never arrived (when an observer watched).
    pub fn lost(&self) -> u64 {
        if !self.observed {
            return 0;
        }
        self.total
            .delivered
            .saturating_sub(self.intact + self.corrupted)
    }

    pub fn rate(&self) -> f64 {
        self.total.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Called once a tick with the interval just collected and the totals so far.
pub type Progress = Box<dyn FnMut(&Interval, &Recorder) + Send>;

/// Runs a workload to its end (messages or duration), collecting once a tick.
pub async fn run(
    w: &Workload,
    run: Arc<Run>,
    observed: bool,
    mut progress: Option<Progress>,
) -> Outcome {
    let w = Arc::new(w.clone());
    let deadline = w.duration.map(|d| run.started + d);
    let limit = w.messages.unwrap_or(u64::MAX);
    let mut workers = tokio::task::JoinSet::new();
    let not_run = Arc::new(AtomicU64::new(0));
    match w.model {
        Model::Closed { connections } => {
            spawn_closed(&mut workers, &w, &run, connections, deadline, limit)
        }
        Model::Open { rate, connections } => spawn_open(
            &mut workers,
            &w,
            &run,
            (rate, connections),
            deadline,
            limit,
            &not_run,
        ),
    }
    let mut total = Recorder::default();
    let mut intervals = Vec::new();
    let mut last = run.started;
    let every = w.tick.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at((run.started + every).into(), every);
    loop {
        tokio::select! {
            joined = workers.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let data = run.collect();
                let iv = Interval {
                    start: last - run.started,
                    length: now - last,
                    data,
                };
                last = now;
                total.merge(&iv.data);
                if let Some(p) = progress.as_mut() {
                    p(&iv, &total);
                }
                intervals.push(iv);
            }
        }
    }
    // What the last partial interval holds; with an observer, a moment for the last
    // messages to arrive.
    if observed {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = Instant::now();
    let data = run.collect();
    let iv = Interval {
        start: last - run.started,
        length: now - last,
        data,
    };
    total.merge(&iv.data);
    if let Some(p) = progress.as_mut() {
        p(&iv, &total);
    }
    intervals.push(iv);
    let elapsed = intervals
        .iter()
        .rev()
        .find(|i| !i.data.is_empty())
        .map_or(now - run.started, |i| i.start + i.length);
    let a = run.arrivals.lock().unwrap_or_else(|e| e.into_inner());
    Outcome {
        total,
        intervals,
        elapsed,
        started_at: run.started_at,
        not_run: not_run.load(Ordering::Relaxed),
        intact: a.intact,
        corrupted: a.corrupted,
        duplicates: a.duplicates,
        observed,
        before_cut: run.cut.map(|_| {
            run.before_cut
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }),
    }
}

/// The most intended sends the open-loop generator holds ahead of its workers.
const OPEN_BACKLOG: usize = 65_536;

/// Closed loop: `connections` workers, each sending its next message when the last is done.
fn spawn_closed(
    workers: &mut tokio::task::JoinSet<()>,
    w: &Arc<Workload>,
    run: &Arc<Run>,
    connections: usize,
    deadline: Option<Instant>,
    limit: u64,
) {
    for _ in 0..connections.max(1) {
        let (w, run) = (w.clone(), run.clone());
        workers.spawn(async move {
            let mut worker = Worker::new(&w, &run);
            loop {
                if run.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
                let n = run.started_count.fetch_add(1, Ordering::Relaxed);
                if n >= limit {
                    break;
                }
                worker.message(n, Instant::now()).await;
            }
            worker.close().await;
        });
    }
}

/// Open loop: a generator that schedules a message every `1 / rate` seconds, and
/// `connections` workers that send them (a message not sent by the end is counted in
/// `not_run`).
fn spawn_open(
    workers: &mut tokio::task::JoinSet<()>,
    w: &Arc<Workload>,
    run: &Arc<Run>,
    (rate, connections): (f64, usize),
    deadline: Option<Instant>,
    limit: u64,
    not_run: &Arc<AtomicU64>,
) {
    // Bounded: a generator far ahead of its workers waits for room; the intended times
    // stay on the schedule (latency is measured from them).
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(OPEN_BACKLOG);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..connections.max(1) {
        let (w, run, rx, not_run) = (w.clone(), run.clone(), rx.clone(), not_run.clone());
        workers.spawn(async move {
            let mut worker = Worker::new(&w, &run);
            loop {
                let next = rx.lock().await.recv().await;
                let Some((n, intended)) = next else { break };
                // Past the end (plus a grace for the backlog): counted, not sent.
                if run.stop.load(Ordering::Relaxed)
                    || deadline.is_some_and(|d| Instant::now() >= d + Duration::from_secs(5))
                {
                    not_run.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                worker.message(n, intended).await;
            }
            worker.close().await;
        });
    }
    let run2 = run.clone();
    workers.spawn(async move {
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-3));
        let mut n = 0u64;
        loop {
            let intended = run2.started + period.mul_f64(n as f64);
            if n >= limit
                || deadline.is_some_and(|d| intended >= d)
                || run2.stop.load(Ordering::Relaxed)
            {
                break;
            }
            tokio::time::sleep_until(intended.into()).await;
            run2.started_count.fetch_add(1, Ordering::Relaxed);
            if tx.send((n, intended)).await.is_err() {
                break;
            }
            n += 1;
        }
    });
}

/// One connection's worth of work: sends messages, reconnecting after `per_connection`.
struct Worker {
    w: Arc<Workload>,
    run: Arc<Run>,
    rec: Arc<Mutex<stats::Samples>>,
    up: Option<Upstream>,
    sent_here: u64,
    from: ReversePath,
    /// Reused between messages: the header is the only part that changes.
    scratch: Vec<(ForwardPath, RcptParams)>,
}

impl Worker {
    fn new(w: &Arc<Workload>, run: &Arc<Run>) -> Worker {
        let from = w.from.parse().unwrap_or(ReversePath::Null);
        Worker {
            w: w.clone(),
            run: run.clone(),
            rec: run.slot(),
            up: None,
            sent_here: 0,
            from,
            scratch: Vec::new(),
        }
    }

    /// Records for the message meant to start at `start` (also apart when before the cut).
    fn record(&self, start: Instant, f: impl Fn(&mut stats::Samples)) {
        let mut rec = self.rec.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut rec);
        if self.run.cut.is_some_and(|c| start < self.run.started + c) {
            f(rec.before_cut.get_or_insert_with(Default::default));
        }
    }

    fn fail(&mut self, start: Instant, code: &str) {
        self.record(start, |r| {
            r.failed += 1;
            r.count(code);
        });
    }

    /// Sends message `n`, started (or meant to start) at `start`.
    async fn message(&mut self, n: u64, start: Instant) {
        if self.up.is_none() {
            match Upstream::connect(&self.w.server).await {
                Ok(up) => {
                    let times: Vec<_> = up.handshake_times().to_vec();
                    self.record(start, |r| {
                        for &(p, d) in &times {
                            if let Some(p) = Phase::from_upstream(p) {
                                r.record(p, d);
                            }
                        }
                    });
                    self.up = Some(up);
                    self.sent_here = 0;
                }
                Err(e) => {
                    let code = error_code(&e);
                    self.fail(start, &code);
                    // Not a busy loop against a server that refuses connections.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return;
                }
            }
        }
        let result = self.transaction(n, start).await;
        let up_ok = match result {
            Ok(code) => {
                if code / 100 == 2 {
                    let (size, took) = (self.w.body.len() as u64, start.elapsed());
                    self.record(start, |r| {
                        r.delivered += 1;
                        r.bytes += size;
                        r.count(&code.to_string());
                        r.record(Phase::Message, took);
                    });
                } else {
                    self.fail(start, &code.to_string());
                }
                true
            }
            Err(e) => {
                let code = error_code(&e);
                self.fail(start, &code);
                false
            }
        };
        self.sent_here += 1;
        if !up_ok {
            if let Some(up) = self.up.take() {
                up.abort().await;
            }
        } else if self.sent_here >= self.w.per_connection
            && let Some(up) = self.up.take()
        {
            up.quit().await;
        }
    }

    /// One transaction; the final (or refusing) reply's code.
    async fn transaction(&mut self, n: u64, start: Instant) -> Result<u16, UpstreamError> {
        let w = self.w.clone();
        self.scratch.clear();
        for r in 0..w.recipients.max(1) {
            let addr =
                w.to.replace("{n}", &n.to_string())
                    .replace("{r}", &r.to_string());
            if let Ok(to) = addr.parse() {
                self.scratch.push((to, RcptParams::default()));
            }
        }
        let header = format!(
            "From: <{}>\r\nTo: <{}>\r\nSubject: smtp-relay load {n}\r\nMessage-ID: <{n}.{:016x}@smtp-relay-load>\r\n{}\r\n",
            w.from,
            self.scratch
                .first()
                .map(|(t, _)| t.to_string())
                .unwrap_or_default()
                .trim_matches(|c| c == '<' || c == '>'),
            self.run.id,
            self.run.header(n, start)
        );
        let msg = crate::upstream::Outbound {
            from: &self.from,
            params: &MailParams::default(),
            rcpts: &self.scratch,
            content: crate::upstream::Content::Pieces(&[header.as_bytes(), &w.body]),
            pipelining: w.pipelining,
        };
        let up = self.up.as_mut().expect("connected");
        let rec = &self.rec;
        let early = self.run.cut.is_some_and(|c| start < self.run.started + c);
        let mut timing = |step: crate::upstream::Step, took: Duration| {
            let phase = match step {
                crate::upstream::Step::Envelope => Phase::Envelope,
                crate::upstream::Step::Mail => Phase::Mail,
                crate::upstream::Step::Rcpt => Phase::Rcpt,
                crate::upstream::Step::Data => Phase::Data,
                crate::upstream::Step::EndOfData => Phase::EndOfData,
            };
            let mut rec = rec.lock().unwrap_or_else(|e| e.into_inner());
            rec.record(phase, took);
            if early {
                rec.before_cut
                    .get_or_insert_with(Default::default)
                    .record(phase, took);
            }
        };
        let sent = up.send_message(&msg, &mut timing).await?;
        if !sent.reusable
            && let Some(up) = self.up.take()
        {
            up.abort().await;
        }
        Ok(sent.verdict().code)
    }

    async fn close(mut self) {
        if let Some(up) = self.up.take() {
            up.quit().await;
        }
    }
}

/// An error's name in the reply-code table.
fn error_code(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Connect { .. } => "error: connect".into(),
        UpstreamError::Tls { .. } => "error: tls".into(),
        UpstreamError::Timeout { phase, .. } => format!("error: timeout ({phase})"),
        UpstreamError::Closed { phase, .. } => format!("error: closed ({phase})"),
        UpstreamError::Io { .. } => "error: i/o".into(),
        UpstreamError::Refused { reply, .. }
        | UpstreamError::Bug { reply, .. }
        | UpstreamError::AuthRejected { reply, .. } => reply.code.to_string(),
        UpstreamError::Protocol { .. } => "error: protocol".into(),
        UpstreamError::Busy { .. } => "error: busy".into(),
    }
}

/// A server config for a plain target without TLS or AUTH (tests, `--self`).
pub fn plain_server(addr: std::net::SocketAddr) -> UpstreamConfig {
    UpstreamConfig {
        name: addr.to_string(),
        addr: addr.to_string(),
        server_name: "localhost".into(),
        tls: TlsMode::None,
        tls_policy: crate::upstream_tls::TlsPolicy::None,
        tls_config: None,
        config_at: String::new(),
        helo_name: "load.smtp-relay".into(),
        credentials: None,
        timeouts: Timeouts {
            connect: Duration::from_secs(10),
            greeting: Duration::from_secs(30),
            command: Duration::from_secs(30),
            data_init: Duration::from_secs(30),
            data_block: Duration::from_secs(30),
            data_end: Duration::from_secs(60),
        },
        transcript: false,
        bdat: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_bodies_have_the_size_and_no_dot_lines() {
        for size in [0, 1, 2, 3, 78, 79, 1000, 4096] {
            let b = generated_body(size);
            assert!(b.len() <= size.max(2), "{size}: {}", b.len());
            assert!(size < 3 || b.len() == size, "{size}: {}", b.len());
            assert!(!b.split(|&c| c == b'\n').any(|l| l.starts_with(b".")));
        }
    }

    #[test]
    fn the_observer_checks_integrity_and_counts_duplicates() {
        let body = generated_body(500);
        let run = Run::new(&body);
        let header = run.header(7, run.started);
        let message = [
            format!("Received: x\r\nSubject: s\r\n{header}\r\n").as_bytes(),
            &body,
        ]
        .concat();
        run.observe(&message);
        run.observe(&message);
        let mut corrupted = message.clone();
        let last = corrupted.len() - 3;
        corrupted[last] ^= 1;
        run.observe(&corrupted);
        // Another run's message and a message without the header are ignored.
        let other = Run::new(&body);
        run.observe(
            &[
                format!("{}\r\n", other.header(1, other.started)).as_bytes(),
                &body,
            ]
            .concat(),
        );
        run.observe(b"Subject: x\r\n\r\nhello\r\n");
        let a = run.arrivals.lock().unwrap();
        assert_eq!((a.intact, a.corrupted, a.duplicates), (2, 1, 2));
        assert_eq!(a.end_to_end.len(), 3);
    }
}
