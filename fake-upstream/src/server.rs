//! The running server: two listeners (plain with STARTTLS, implicit TLS), one task per
//! connection driving a `smtp_wire::ServerConnection`, the persona's policy for each decision,
//! scripted faults, limits, and a clean shutdown that sends `421` to idle sessions.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_net::Io;
use smtp_net::server::{Next, Wire};
use smtp_wire::{
    Decision, Event, ForwardPath, LineEndings, Reply, ReplyKind, ReversePath, ServerConnection,
    Transport, Verb, Verdict,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::config::{Config, User};
use crate::error::Error;
use crate::faults::{Action, DropWhen, FaultSet, Stage};
use crate::persona::{AuthRule, PlaintextAuth, SenderRule, UnknownRecipient, Vars};
use crate::store::{self, Received, Trace};
use crate::tls::{self, TlsFiles, TlsMaterial};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to a client may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read size: also the most input a session buffers beyond one line.
const READ_SIZE: usize = 64 * 1024;

/// One session's transcript: `C:` and `S:` lines, `*` for events; secrets redacted. Written
/// as the session goes: [`Handle::transcripts`] reads the sessions still open too.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    pub id: u64,
    pub client: Option<SocketAddr>,
    pub lines: Vec<String>,
    /// When each line was recorded (same length as `lines`): to interleave this side with
    /// another's in time order.
    pub times: Vec<std::time::Instant>,
    /// Every DATA (or BDAT) phase of the session, as its bytes arrived.
    pub data: Vec<DataPhase>,
    /// The session was still open when this copy was taken.
    pub open: bool,
    /// Lines beyond [`TRANSCRIPT_LINES`] were not kept.
    pub truncated: bool,
    /// A DATA phase is being received (the last of `data`).
    in_data: bool,
}

/// The most lines one transcript keeps.
pub const TRANSCRIPT_LINES: usize = 100_000;

/// The most raw octets of one DATA phase a transcript keeps (the counts cover all of it).
pub const RAW_KEPT: usize = 1 << 20;

/// One DATA phase (or the chunks of one BDAT transaction) exactly as the bytes came off the
/// wire, before dot-unstuffing or any line-ending repair: the first [`RAW_KEPT`] octets, and
/// counts over every octet of what no correct relay passes on (bare CR, bare LF, NUL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataPhase {
    pub raw: Vec<u8>,
    pub octets: u64,
    /// A CR not followed by LF.
    pub bare_cr: u64,
    /// An LF not preceded by CR.
    pub bare_lf: u64,
    pub nul: u64,
    /// Octets above 127.
    pub eight_bit: u64,
    /// The phase ended (the terminator or the last chunk came, or it was cut off).
    pub ended: bool,
    /// How many transcript lines came before it (the phase sits between `lines[line - 1]`
    /// and `lines[line]`).
    pub line: usize,
    /// When its first bytes came.
    pub at: Option<std::time::Instant>,
    last: u8,
}

impl DataPhase {
    /// Counts and keeps the next bytes of the phase.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.raw.len() < RAW_KEPT {
            let room = RAW_KEPT - self.raw.len();
            self.raw.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        for &b in chunk {
            if self.last == b'\r' && b != b'\n' && self.octets > 0 {
                self.bare_cr += 1;
            }
            match b {
                b'\n' if self.last != b'\r' || self.octets == 0 => self.bare_lf += 1,
                0 => self.nul += 1,
                128.. => self.eight_bit += 1,
                _ => {}
            }
            self.last = b;
            self.octets += 1;
        }
    }

    /// The phase is over: a CR at its very end was bare.
    pub fn end(&mut self) {
        if !self.ended && self.octets > 0 && self.last == b'\r' {
            self.bare_cr += 1;
        }
        self.ended = true;
    }

    /// No bare CR, bare LF or NUL in it.
    pub fn clean(&self) -> bool {
        self.bare_cr == 0 && self.bare_lf == 0 && self.nul == 0
    }

    /// Whether the raw bytes kept contain `needle`.
    pub fn contains(&self, needle: &[u8]) -> bool {
        memchr::memmem::find(&self.raw, needle).is_some()
    }
}

impl Transcript {
    fn push(&mut self, line: String) {
        if self.lines.len() >= TRANSCRIPT_LINES {
            self.truncated = true;
            return;
        }
        self.lines.push(line);
        self.times.push(std::time::Instant::now());
    }

    /// The lines joined with newlines.
    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

/// A session's transcript while it is written, shared with [`Handle::transcripts`].
struct Live {
    id: u64,
    /// The fake's count of recorded events ([`Handle::activity`]).
    activity: Arc<AtomicU64>,
    /// Off for load runs (`Config::transcripts`): nothing is recorded.
    recording: bool,
    inner: Arc<Mutex<Transcript>>,
}

impl Live {
    fn new(shared: &Shared, id: u64, client: SocketAddr) -> Live {
        let recording = shared.config.transcripts;
        let inner = Arc::new(Mutex::new(Transcript {
            id,
            client: Some(client),
            open: true,
            ..Transcript::default()
        }));
        if recording {
            shared.state().open.insert(id, inner.clone());
        }
        Live {
            id,
            activity: shared.activity.clone(),
            recording,
            inner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Transcript> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: String) {
        if self.recording {
            self.lock().push(line);
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bytes of the DATA phase under way (a new phase when none is).
    fn data(&self, raw: &[u8]) {
        if !self.recording {
            return;
        }
        let mut t = self.lock();
        if !t.in_data {
            t.in_data = true;
            let line = t.lines.len();
            t.data.push(DataPhase {
                line,
                at: Some(std::time::Instant::now()),
                ..DataPhase::default()
            });
        }
        if let Some(phase) = t.data.last_mut() {
            phase.feed(raw);
        }
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// The DATA phase under way ended.
    fn end_data(&self) {
        if !self.recording {
            return;
        }
        let mut t = self.lock();
        if t.in_data {
            t.in_data = false;
            if let Some(phase) = t.data.last_mut() {
                phase.end();
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// The most recent accepted messages (at most `Config::history`).
    received: VecDeque<Received>,
    received_total: u64,
    transcripts: VecDeque<Transcript>,
    /// The transcripts of the sessions open now, by connection id.
    open: std::collections::BTreeMap<u64, Arc<Mutex<Transcript>>>,
    auth_failures: HashMap<IpAddr, u32>,
    bans: HashMap<IpAddr, Instant>,
    /// Failed AUTHs per account (lowercase address), and accounts barred until when.
    account_failures: HashMap<String, u32>,
    account_bans: HashMap<String, Instant>,
    /// Accepted messages per sender, and recipients per sender, with their times.
    sent: HashMap<String, VecDeque<(Instant, u32)>>,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The session configuration, when the persona's texts have no per-connection
    /// placeholders (the sink): built once instead of per connection.
    base_config: Option<smtp_wire::ServerConfig>,
    pub(crate) tls: TlsMaterial,
    /// Swapped whole by [`Handle::set_faults`] (counters start again).
    faults: std::sync::RwLock<Arc<FaultSet>>,
    state: Mutex<State>,
    /// Connections open per client address.
    per_ip: Arc<smtp_net::admission::PerIp>,
    received_notify: Notify,
    next_conn: AtomicU64,
    /// Lines and DATA chunks recorded so far, over every session.
    activity: Arc<AtomicU64>,
    next_message: AtomicU64,
    /// How far [`Handle::advance_clock`] has moved the policy clock (quotas, bans, faults
    /// over time) ahead of the real one, in milliseconds.
    clock_ahead_ms: AtomicU64,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy clock: now, plus whatever the clock was advanced by.
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.clock_ahead_ms.load(Ordering::Relaxed))
    }

    /// The faults' action at this stage, on the policy clock.
    fn fault(&self, stage: Stage, address: Option<&str>) -> Action {
        self.faults().check_at(stage, address, self.now())
    }

    fn faults(&self) -> Arc<FaultSet> {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A running fake upstream. Dropping it does not stop the server: call [`Handle::shutdown`]
/// (after which the handle still answers `received()` and `transcripts()`).
pub struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The entry point: `FakeUpstream::start(config).await?`.
pub struct FakeUpstream;

impl FakeUpstream {
    /// Binds the listeners, prepares TLS (generating the CA and certificate on first start)
    /// and serves until [`Handle::shutdown`].
    pub async fn start(config: Config) -> Result<Handle, Error> {
        smtp_net::files::private_dir(&config.data_dir)
            .map_err(|e| Error::io(&config.data_dir, e))?;
        let files = config
            .tls_files
            .clone()
            .unwrap_or_else(|| TlsFiles::in_dir(&config.data_dir));
        let tls = if config.tls_files.is_some() {
            tls::load(files)?
        } else {
            tls::load_or_generate(files)?
        };
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })
        };
        let plain = bind(config.listen).await?;
        let implicit = match config.listen_tls {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let addr = plain.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let tls_addr = implicit.as_ref().and_then(|l| l.local_addr().ok());
        let base_config = (!config.persona.has_templates())
            .then(|| config.persona.server_config(&Vars::default(), true));
        // Numbered on from the last run in this directory, so that no file of it is replaced.
        let first_conn = smtp_net::files::next_number(&config.data_dir.join("transcripts"))
            .max(smtp_net::files::next_number(&config.data_dir.join("raw")));
        let shared = Arc::new(Shared {
            base_config,
            faults: std::sync::RwLock::new(Arc::new(FaultSet::new(
                config.faults.clone(),
                config.seed,
            ))),
            config,
            tls,
            state: Mutex::new(State::default()),
            per_ip: Arc::default(),
            received_notify: Notify::new(),
            next_conn: AtomicU64::new(first_conn),
            activity: Arc::default(),
            next_message: AtomicU64::new(1),
            clock_ahead_ms: AtomicU64::new(0),
        });
        let (shutdown, rx) = watch::channel(false);
        let s = shared.clone();
        let tasks = tokio::spawn(async move {
            let mut set = JoinSet::new();
            set.spawn(accept_loop(s.clone(), plain, Transport::Plain, rx.clone()));
            if let Some(l) = implicit {
                set.spawn(accept_loop(s, l, Transport::Tls, rx));
            }
            while set.join_next().await.is_some() {}
        });
        Ok(Handle {
            shared,
            addr,
            tls_addr,
            shutdown,
            tasks: Mutex::new(Some(tasks)),
        })
    }
}

impl Handle {
    /// The plain (STARTTLS) listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The implicit-TLS listener's address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The CA certificate (PEM) that the server certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.shared.tls.ca_pem
    }

    pub fn ca_path(&self) -> &std::path::Path {
        &self.shared.tls.files.ca
    }

    /// The server's certificate (PEM), the first of its chain.
    pub fn cert_path(&self) -> &std::path::Path {
        &self.shared.tls.files.cert
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.shared.config.data_dir
    }

    pub fn users(&self) -> &[User] {
        &self.shared.config.users
    }

    pub fn persona_name(&self) -> &str {
        &self.shared.config.persona.name
    }

    /// The messages accepted so far, in order (the most recent `Config::history` of them).
    pub fn received(&self) -> Vec<Received> {
        self.shared.state().received.iter().cloned().collect()
    }

    /// How many messages were accepted in all.
    pub fn received_count(&self) -> u64 {
        self.shared.state().received_total
    }

    /// Waits until at least `n` messages were accepted, or `timeout` passed; returns what
    /// was received either way (`Err` on timeout).
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Received>, Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.received_notify.notified();
            if self.received_count() >= n as u64 {
                return Ok(self.received());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.received());
            }
        }
    }

    /// Transcripts of the sessions that ended, in the order they ended (the last 1000), then
    /// those still open as they stand now (`open` set), by connection; none when
    /// `Config::transcripts` is off. Every command, reply and DATA byte is in it as soon as
    /// the fake has read it, whether or not the sender ever closes its session.
    pub fn transcripts(&self) -> Vec<Transcript> {
        let st = self.shared.state();
        let mut all: Vec<Transcript> = st.transcripts.iter().cloned().collect();
        for live in st.open.values() {
            let t = live.lock().unwrap_or_else(|e| e.into_inner()).clone();
            all.push(t);
        }
        all
    }

    /// Replaces the scripted faults while the server runs (their counters start from zero):
    /// what a long-lived fake shared by many scenarios, or a user at run time, needs.
    pub fn set_faults(&self, faults: Vec<crate::faults::Fault>) {
        let set = Arc::new(FaultSet::new_at(
            faults,
            self.shared.config.seed,
            self.shared.now(),
        ));
        *self
            .shared
            .faults
            .write()
            .unwrap_or_else(|e| e.into_inner()) = set;
    }

    /// Moves the fake's policy clock ahead: quotas refill, bans and `for` faults end as if
    /// `by` had passed (so that a test of 163's 15-minute quota takes no 15 minutes).
    pub fn advance_clock(&self, by: Duration) {
        self.shared
            .clock_ahead_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// How many lines and DATA chunks the transcripts have recorded so far: a number that
    /// changes while anyone talks to the fake (to wait for quiet).
    pub fn activity(&self) -> u64 {
        self.shared.activity.load(Ordering::Relaxed)
    }

    /// Connections open now, on every listener. A connection's transcript is among
    /// [`Handle::transcripts`] before it stops counting here.
    pub fn open_connections(&self) -> u32 {
        self.shared.per_ip.total()
    }

    /// Waits until no connection is open, at most `limit`; whether none is.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.open_connections() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops accepting, sends `421` to every session waiting for a command, and waits for
    /// the sessions to end (at most 5 seconds).
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: Transport,
    shutdown: watch::Receiver<bool>,
) {
    let rx = shutdown.clone();
    smtp_net::accept_loop(listener, shutdown, move |tcp, peer| {
        connection(shared.clone(), tcp, peer, kind, rx.clone())
    })
    .await;
}

/// The connection counted against its address, or refused (a banned address, too many
/// connections from it) with the persona's words in the greeting's place: in clear on the
/// plain listener, inside TLS on the implicit-TLS one (a TLS client could not read it
/// otherwise).
async fn admit(
    shared: &Shared,
    tcp: &mut TcpStream,
    peer: SocketAddr,
    kind: Transport,
    vars: &Vars,
    transcript: &Live,
) -> Option<smtp_net::admission::IpSlot> {
    let persona = &shared.config.persona;
    let banned = shared
        .state()
        .bans
        .get(&peer.ip())
        .is_some_and(|until| *until > shared.now());
    let slot = shared.per_ip.enter(peer.ip());
    let over = persona
        .limits
        .connections_per_ip
        .is_some_and(|max| slot.count() > max);
    let text = match (banned, over) {
        (true, _) => &persona.texts.auth_ip_banned,
        (_, true) => &persona.texts.too_many_connections,
        _ => return Some(slot),
    };
    let reply = persona.text(text, vars);
    transcript.push(format!("S: {reply}"));
    match kind {
        Transport::Plain => {
            let _ = write_all(tcp, &reply.to_bytes()).await;
        }
        Transport::Tls => {
            if let Ok(mut stream) = accept_tls(shared, tcp).await {
                let _ = write_all(&mut stream, &reply.to_bytes()).await;
                let _ = stream.shutdown().await;
            }
        }
    }
    None
}

async fn connection(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    kind: Transport,
    shutdown: watch::Receiver<bool>,
) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let persona = &shared.config.persona;
    let mut rng =
        fastrand::Rng::with_seed(shared.config.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let vars = Vars {
        hostid: persona.hostid.clone(),
        transid: store::transid(&mut rng, id),
        ts: chrono::Utc::now().timestamp(),
        ip: peer.ip().to_string(),
        coremail: store::coremail_token(&mut rng),
    };
    let transcript = Live::new(&shared, id, peer);
    transcript.push(format!("* connect from {peer} ({kind:?} listener)"));

    // Connection-level refusals: a banned IP, too many connections from it.
    let Some(_slot) = admit(&shared, &mut tcp, peer, kind, &vars, &transcript).await else {
        finish(&shared, &transcript);
        return;
    };

    let action = shared.fault(Stage::Connect, None);
    let mut rx = shutdown.clone();
    if let Some(end) = apply_before(&action, &transcript, smtp_net::stopped(&mut rx)).await {
        transcript.push(end);
        finish(&shared, &transcript);
        return;
    }
    if action.tls_fail && kind == Transport::Tls {
        transcript.push("* fault: TLS handshake broken".into());
        let _ = write_all(&mut tcp, b"\x15\x03\x03\x00\x02\x02\x28").await;
        finish(&shared, &transcript);
        return;
    }

    let config = match &shared.base_config {
        Some(c) => c.clone(),
        None => persona.server_config(&vars, true),
    };
    let conn = ServerConnection::new(
        config,
        kind,
        LineEndings::CrlfOnly,
        shared.config.bare_line_endings,
    );
    let mut session = Session {
        shared: shared.clone(),
        conn,
        vars,
        peer,
        tls: kind == Transport::Tls,
        implicit_tls: kind == Transport::Tls,
        transcript,
        lines_seen: 0,
        message: Vec::new(),
        raw: Vec::new(),
        messages_here: 0,
        data_phases: 0,
        close_after_write: false,
        waiting: Duration::ZERO,
        rng,
    };
    let io: Option<Box<dyn Io>> = match kind {
        Transport::Plain => Some(Box::new(tcp)),
        Transport::Tls => match accept_tls(&shared, tcp).await {
            Ok(stream) => {
                session.note("* TLS handshake done (implicit TLS)");
                Some(Box::new(stream))
            }
            Err(e) => {
                session.note(&format!("* TLS handshake failed: {e}"));
                None
            }
        },
    };
    if let Some(io) = io {
        let result = smtp_net::server::serve(&mut session, io, shutdown, DRIVE).await;
        // An error before TLS is noted; one inside TLS ends the session silently.
        if let Err(e) = result
            && !session.tls
        {
            session.note(&format!("* error: {e}"));
        }
    }
    finish(&shared, &session.transcript);
}

/// Delay, stall or drop-before of a fault. Returns the transcript line when the connection
/// must end here.
async fn apply_before(
    action: &Action,
    transcript: &Live,
    stopped: impl std::future::Future<Output = ()>,
) -> Option<String> {
    if action.delay_ms > 0 {
        transcript.push(format!("* fault: delay {} ms", action.delay_ms));
        tokio::time::sleep(Duration::from_millis(action.delay_ms)).await;
    }
    if action.drop == Some(DropWhen::Before) {
        return Some("* fault: connection dropped".into());
    }
    if action.stall {
        transcript.push("* fault: stall".into());
        stopped.await;
        return Some("* stalled until shutdown".into());
    }
    None
}

/// Transcripts kept in memory for `Handle::transcripts` (the oldest are dropped first).
const TRANSCRIPTS_KEPT: usize = 1000;

fn finish(shared: &Shared, live: &Live) {
    if !live.recording {
        return;
    }
    live.end_data();
    // Moved from the open sessions to the closed ones under the state's lock, so that a
    // reader of `Handle::transcripts` sees it in one or the other, never in neither.
    let text = {
        let mut st = shared.state();
        let mut transcript = std::mem::take(&mut *live.lock());
        transcript.open = false;
        transcript.push("* closed".into());
        let text = shared
            .config
            .write_transcripts
            .then(|| (transcript.id, transcript.text()));
        st.open.remove(&live.id);
        if st.transcripts.len() >= TRANSCRIPTS_KEPT {
            st.transcripts.pop_front();
        }
        st.transcripts.push_back(transcript);
        text
    };
    if let Some((id, text)) = text {
        let dir = shared.config.data_dir.join("transcripts");
        let _ = smtp_net::files::write_new(&dir, &format!("{id:06}"), "log", text.as_bytes());
    }
}

async fn accept_tls<IO: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: IO,
) -> Result<tokio_rustls::server::TlsStream<IO>, smtp_net::tls::AcceptError> {
    smtp_net::tls::accept(shared.tls.server_config.clone(), io, HANDSHAKE_TIMEOUT).await
}

async fn write_all<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    smtp_net::write_all(io, bytes, WRITE_TIMEOUT).await
}

/// What a decision turned into once faults were applied.
enum Flow {
    Verdict(Verdict),
    Drop,
    Stall,
}

struct Session {
    shared: Arc<Shared>,
    conn: ServerConnection,
    vars: Vars,
    peer: SocketAddr,
    tls: bool,
    /// Came in on the implicit-TLS listener (the submission port).
    implicit_tls: bool,
    transcript: Live,
    lines_seen: u64,
    /// The message being received (unstuffed), and its raw DATA bytes.
    message: Vec<u8>,
    raw: Vec<u8>,
    messages_here: u32,
    /// DATA phases seen on this connection (names the raw files).
    data_phases: u32,
    close_after_write: bool,
    /// The last wait for the client (for the note when it runs out).
    waiting: Duration,
    rng: fastrand::Rng,
}

impl Session {
    fn note(&mut self, line: &str) {
        self.transcript.push(line.to_string());
    }

    fn greeting(&mut self) -> Reply {
        let action = self.shared.fault(Stage::Greeting, None);
        action.reply.unwrap_or_else(|| self.conn.greeting())
    }

    /// Queues a reply on the wire, noting its lines.
    fn queue(&mut self, wire: &mut Wire<'_>, reply: &Reply) {
        self.note_reply(reply);
        wire.queue(reply);
    }

    fn note_reply(&mut self, reply: &Reply) {
        if self.transcript.recording {
            for line in reply.to_string().split("\r\n") {
                self.transcript.push(format!("S: {line}"));
            }
        }
    }

    /// Logs the client's line if a new one was handled.
    fn note_client_line(&mut self) {
        if self.transcript.recording && self.conn.lines_handled() != self.lines_seen {
            self.lines_seen = self.conn.lines_handled();
            let line = self.conn.transcript_line();
            self.transcript.push(format!("C: {line}"));
        }
    }

    /// Every event of the buffered input: replies through the faults, decisions by the
    /// persona's policy.
    async fn events(&mut self, wire: &mut Wire<'_>) -> std::io::Result<Next> {
        loop {
            let decision = match self.conn.next_event() {
                None => break,
                Some(Event::Content { data, raw }) => {
                    // Disjoint fields: `data` and `raw` borrow the connection's buffer.
                    self.transcript.data(raw);
                    let rules = &self.shared.config.persona.rules;
                    if rules.keep_messages
                        || rules.inspects_content()
                        || self.shared.config.observer.is_some()
                    {
                        self.message.extend_from_slice(data);
                    }
                    // Raw bytes are at most twice the decoded size (dot-stuffing), so past
                    // that bound the message is refused anyway: stop keeping them.
                    let raw_cap = 2 * self.shared.config.persona.limits.max_message_size + 65_536;
                    if rules.keep_messages && (self.raw.len() as u64) < raw_cap {
                        self.raw.extend_from_slice(raw);
                    }
                    continue;
                }
                Some(Event::Discard) => {
                    self.message.clear();
                    self.save_raw().await;
                    continue;
                }
                Some(Event::Reply(r)) => {
                    self.note_client_line();
                    let stage = match self.conn.session().last_verb() {
                        Some(Verb::Ehlo) => Some(Stage::Ehlo),
                        Some(Verb::Helo) => Some(Stage::Helo),
                        _ => None,
                    };
                    if !self.reply_with_faults(wire, r, stage).await? {
                        return Ok(Next::End);
                    }
                    continue;
                }
                Some(Event::Close(r)) => {
                    self.note_client_line();
                    let stage = (self.conn.session().last_verb() == Some(Verb::Quit))
                        .then_some(Stage::Quit);
                    self.reply_with_faults(wire, r, stage).await?;
                    return Ok(Next::Close);
                }
                Some(Event::StartTls { reply, discarded }) => {
                    self.note_client_line();
                    self.queue(wire, &reply);
                    if discarded > 0 {
                        self.note(&format!(
                            "* STARTTLS: {discarded} octets pipelined in plaintext discarded"
                        ));
                    }
                    return Ok(Next::StartTls);
                }
                Some(Event::Decide(d)) => d,
            };
            self.note_client_line();
            if matches!(decision, Decision::Deliver(_)) && self.transcript.recording {
                self.note(&format!("C: <message data: {} octets>", self.message.len()));
            }
            match self.decide_with_faults(decision).await {
                Flow::Verdict(v) => self.conn.decide(v),
                Flow::Drop => {
                    wire.flush().await?;
                    self.note("* fault: connection dropped");
                    return Ok(Next::End);
                }
                Flow::Stall => {
                    wire.flush().await?;
                    self.note("* fault: stall");
                    wire.stopped().await;
                    return Ok(Next::End);
                }
            }
        }
        Ok(if self.close_after_write {
            Next::Close
        } else {
            Next::Continue
        })
    }

    /// Queues a reply through the faults of `stage`. Returns false when the connection must
    /// end.
    async fn reply_with_faults(
        &mut self,
        wire: &mut Wire<'_>,
        reply: Reply,
        stage: Option<Stage>,
    ) -> std::io::Result<bool> {
        let action = match stage {
            Some(s) => self.shared.fault(s, None),
            None => Action::default(),
        };
        if !action.is_none() {
            wire.flush().await?;
        }
        if let Some(line) = apply_before(&action, &self.transcript, wire.stopped()).await {
            self.note(&line);
            return Ok(false);
        }
        self.queue(wire, &action.reply.unwrap_or(reply));
        if action.drop == Some(DropWhen::After) {
            wire.flush().await?;
            self.note("* fault: connection dropped after the reply");
            return Ok(false);
        }
        Ok(true)
    }

    async fn decide_with_faults(&mut self, d: Decision) -> Flow {
        let (stage, address) = match &d {
            Decision::Authenticate(_) => (Stage::Auth, None),
            Decision::Mail { from, .. } => (Stage::Mail, from.mailbox().map(|m| m.to_string())),
            Decision::Rcpt { to, .. } => (Stage::Rcpt, to.mailbox().map(|m| m.to_string())),
            Decision::BeginData => (Stage::Data, None),
            Decision::Deliver(_) => (Stage::EndOfData, None),
        };
        let action = self.shared.fault(stage, address.as_deref());
        if action.delay_ms > 0 {
            self.note(&format!("* fault: delay {} ms", action.delay_ms));
            tokio::time::sleep(Duration::from_millis(action.delay_ms)).await;
        }
        if action.drop == Some(DropWhen::Before) {
            return Flow::Drop;
        }
        if action.stall {
            return Flow::Stall;
        }
        if action.drop == Some(DropWhen::After) {
            self.close_after_write = true;
        }
        if let Some(reply) = action.reply {
            self.note("* fault: reply replaced");
            if matches!(d, Decision::Deliver(_)) {
                self.message.clear();
                self.save_raw().await;
            }
            return Flow::Verdict(Verdict::Reply(reply));
        }
        Flow::Verdict(self.policy(d).await)
    }

    /// Writes the raw bytes of the DATA phase that just ended (delivered or not) as
    /// `raw/<connection>-<n>.data`, when the persona keeps messages.
    async fn save_raw(&mut self) -> Option<PathBuf> {
        self.transcript.end_data();
        let raw = std::mem::take(&mut self.raw);
        if raw.is_empty() || !self.shared.config.persona.rules.keep_messages {
            return None;
        }
        self.data_phases += 1;
        let dir = self.shared.config.data_dir.join("raw");
        let stem = format!("{:06}-{}", self.transcript.id, self.data_phases);
        let path = dir.join(format!("{stem}.data"));
        match smtp_net::files::write_new_async(dir, stem, "data", raw).await {
            Ok(path) => Some(path),
            Err(e) => {
                self.note(&format!(
                    "* cannot keep raw DATA in {}: {e}",
                    path.display()
                ));
                None
            }
        }
    }

    /// A persona text; one that carries a transaction id gets a fresh one (163 gives every
    /// error its own, persona-163 4.3), and the time now.
    fn text(&mut self, template: &str) -> Verdict {
        if template.contains("{transid}") || template.contains("{suffix}") {
            let n = self.shared.next_message.fetch_add(1, Ordering::Relaxed);
            self.vars.transid = store::transid(&mut self.rng, n);
            self.vars.ts = chrono::Utc::now().timestamp();
        }
        Verdict::Reply(self.shared.config.persona.text(template, &self.vars))
    }

    /// What this listener does with an unknown local recipient.
    fn unknown_recipient_rule(&self) -> UnknownRecipient {
        let rules = &self.shared.config.persona.rules;
        match rules.unknown_recipient_implicit_tls {
            Some(rule) if self.implicit_tls => rule,
            _ => rules.unknown_recipient,
        }
    }

    fn refuse(&self, kind: ReplyKind) -> Verdict {
        Verdict::Reply(self.conn.session().reply(kind))
    }

    fn user(&self, address: &str) -> Option<&User> {
        self.shared
            .config
            .users
            .iter()
            .find(|u| u.address.eq_ignore_ascii_case(address))
    }

    /// The persona's policy for one decision.
    async fn policy(&mut self, d: Decision) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let texts = &persona.texts;
        match d {
            Decision::Authenticate(c) => {
                if persona.rules.plaintext_auth == PlaintextAuth::RefuseAfterPassword && !self.tls {
                    self.close_after_write = true;
                    return self.text(&texts.plaintext_auth_refused);
                }
                if persona.rules.auth == AuthRule::Any {
                    return Verdict::Accept;
                }
                let account = c.username.to_lowercase();
                let barred = self
                    .shared
                    .state()
                    .account_bans
                    .get(&account)
                    .is_some_and(|until| *until > self.shared.now());
                if barred {
                    return self.text(&texts.auth_account_banned);
                }
                match self.user(&c.username) {
                    Some(u) if u.code == c.secret && !u.smtp => {
                        self.text(&texts.auth_no_permission)
                    }
                    Some(u) if u.code == c.secret => {
                        let mut st = self.shared.state();
                        st.auth_failures.remove(&self.peer.ip());
                        st.account_failures.remove(&account);
                        Verdict::Accept
                    }
                    _ => self.auth_failure(&account),
                }
            }
            Decision::Mail { from, .. } => self.mail_policy(&from),
            Decision::Rcpt { to, .. } => self.rcpt_policy(&to),
            Decision::BeginData => Verdict::Accept,
            Decision::Deliver(env) => self.deliver(env).await,
        }
    }

    fn auth_failure(&mut self, account: &str) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let ip = self.peer.ip();
        let now = self.shared.now();
        let mut st = self.shared.state();
        let ban = Duration::from_secs(persona.limits.ban_minutes * 60);
        // Bounded: names an attacker makes up do not grow these maps without end.
        if st.account_failures.len() >= 10_000 {
            st.account_failures.clear();
        }
        if st.account_bans.len() >= 10_000 {
            st.account_bans.retain(|_, until| *until > now);
        }
        let per_account = st.account_failures.entry(account.to_string()).or_insert(0);
        *per_account += 1;
        let account_barred = persona
            .limits
            .auth_failures_per_account
            .is_some_and(|max| *per_account >= max);
        if account_barred {
            st.account_failures.remove(account);
            st.account_bans.insert(account.to_string(), now + ban);
        }
        let failures = st.auth_failures.entry(ip).or_insert(0);
        *failures += 1;
        if let Some(max) = persona.limits.auth_failures_before_ban
            && *failures >= max
        {
            st.auth_failures.remove(&ip);
            st.bans.insert(
                ip,
                now + Duration::from_secs(persona.limits.ban_minutes * 60),
            );
            drop(st);
            self.close_after_write = true;
            return self.text(&persona.texts.auth_ip_banned);
        }
        drop(st);
        if account_barred {
            return self.text(&persona.texts.auth_account_banned);
        }
        self.refuse(ReplyKind::AuthFailed)
    }

    fn mail_policy(&mut self, from: &ReversePath) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let texts = &persona.texts;
        let authed = self.conn.session().authenticated().map(str::to_string);
        let is_user = |m: &smtp_wire::Mailbox| {
            authed
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(&m.to_string()))
        };
        match persona.rules.sender {
            SenderRule::Any => {}
            SenderRule::Coremail => match (authed.is_some(), from) {
                (false, ReversePath::Mailbox(m)) if persona.is_local(&m.domain().to_string()) => {
                    return self.text(&texts.mail_auth_required_local);
                }
                (false, _) => return self.text(&texts.mail_auth_required_foreign),
                (true, ReversePath::Null) => return self.text(&texts.mail_null_sender),
                (true, ReversePath::Mailbox(m)) if !is_user(m) => {
                    return self.text(&texts.mail_not_user);
                }
                _ => {}
            },
            SenderRule::Qq => match (authed.is_some(), from) {
                (false, _) => return self.text(&texts.mail_auth_required_local),
                (true, ReversePath::Mailbox(m)) if is_user(m) => {}
                (true, _) => return self.text(&texts.mail_not_user),
            },
        }
        let limits = &persona.limits;
        if limits
            .messages_per_connection
            .is_some_and(|max| self.messages_here >= max)
        {
            return self.text(&texts.too_many_messages);
        }
        if limits.sender_per_15min.is_none() && limits.sender_per_day.is_none() {
            return Verdict::Accept;
        }
        let sender = from.to_string().to_lowercase();
        let (last_15, last_day) = self.sent_counts(&sender, |_| 1);
        if limits.sender_per_15min.is_some_and(|max| last_15 >= max) {
            return self.text(&texts.sender_quota_15min);
        }
        if limits.sender_per_day.is_some_and(|max| last_day >= max) {
            return self.text(&texts.sender_quota_day);
        }
        Verdict::Accept
    }

    /// (last 15 minutes, last day) sums of `f` over this sender's accepted messages.
    fn sent_counts(&self, sender: &str, f: impl Fn(u32) -> u32) -> (u32, u32) {
        let now = self.shared.now();
        let mut st = self.shared.state();
        let Some(log) = st.sent.get_mut(sender) else {
            return (0, 0);
        };
        while log
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(86_400))
        {
            log.pop_front();
        }
        let day = log.iter().map(|(_, n)| f(*n)).sum();
        let quarter = log
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= Duration::from_secs(900))
            .map(|(_, n)| f(*n))
            .sum();
        (quarter, day)
    }

    fn rcpt_policy(&mut self, to: &ForwardPath) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let texts = &persona.texts;
        let envelope = self.conn.session().envelope();
        if envelope.rcpts.len() >= persona.limits.max_recipients {
            return self.text(&texts.rcpt_too_many);
        }
        if self.unknown_recipient_rule() == UnknownRecipient::Rcpt && self.is_unknown_local(to) {
            return self.text(&texts.rcpt_unknown_user);
        }
        let limits = &persona.limits;
        if limits.recipients_per_15min.is_none() && limits.recipients_per_day.is_none() {
            return Verdict::Accept;
        }
        let sender = envelope
            .from
            .as_ref()
            .map(|f| f.to_string().to_lowercase())
            .unwrap_or_default();
        let pending = envelope.rcpts.len() as u32;
        let (last_15, last_day) = self.sent_counts(&sender, |n| n);
        if limits
            .recipients_per_15min
            .is_some_and(|max| last_15 + pending >= max)
        {
            return self.text(&texts.rcpt_quota_15min);
        }
        if limits
            .recipients_per_day
            .is_some_and(|max| last_day + pending >= max)
        {
            return self.text(&texts.rcpt_quota_day);
        }
        Verdict::Accept
    }

    fn is_unknown_local(&self, to: &ForwardPath) -> bool {
        match to.mailbox() {
            Some(m) => {
                self.shared.config.persona.is_local(&m.domain().to_string())
                    && self.user(&m.to_string()).is_none()
            }
            None => false,
        }
    }

    async fn deliver(&mut self, env: smtp_wire::Envelope) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let texts = &persona.texts;
        let message = std::mem::take(&mut self.message);
        let raw_file = self.save_raw().await;
        if self.unknown_recipient_rule() == UnknownRecipient::EndOfData
            && env.rcpts.iter().any(|(r, _)| self.is_unknown_local(r))
        {
            return self.text(&texts.rcpt_unknown_user);
        }
        let sender = env
            .from
            .as_ref()
            .and_then(|f| f.mailbox())
            .map(|m| m.to_string())
            .unwrap_or_default();
        if persona.rules.header_from_must_match {
            let from = store::header_value(&message, "From").map(|v| store::header_address(&v));
            if !from.is_some_and(|f| f.eq_ignore_ascii_case(&sender)) {
                return self.text(&texts.header_from_mismatch);
            }
        }
        let spam = persona
            .rules
            .spam_words
            .iter()
            .any(|w| memchr::memmem::find(&message, w.as_bytes()).is_some())
            || (!persona.rules.spam_subjects.is_empty() && {
                let subject = decoded_subject(&message);
                persona
                    .rules
                    .spam_subjects
                    .iter()
                    .any(|w| contains_word(&subject, w))
            });
        if spam {
            return self.text(&texts.spam);
        }

        let n = self.shared.next_message.fetch_add(1, Ordering::Relaxed);
        let mut vars = self.vars.clone();
        vars.transid = store::transid(&mut self.rng, n);
        vars.ts = chrono::Utc::now().timestamp();
        let reply = persona.text(&texts.message_accepted, &vars);
        let helo = self.conn.session().helo().unwrap_or("unknown").to_string();
        let (eml, layout) = store::delivered_copy(
            persona.delivered.headers,
            &message,
            &Trace {
                helo: &helo,
                hostid: &vars.hostid,
                transid: &vars.transid,
                client_ip: &vars.ip,
                sender: &sender,
                domain: persona
                    .local_domains
                    .first()
                    .map(String::as_str)
                    .unwrap_or(""),
            },
        );
        if let Some(observer) = &shared.config.observer {
            (observer.0)(&message);
        }
        let mut received = Received {
            id: vars.transid.clone(),
            mail_from: env
                .from
                .as_ref()
                .map(|f| f.to_string())
                .unwrap_or_else(|| "<>".into()),
            rcpt_to: env.rcpts.iter().map(|(r, _)| path_text(r)).collect(),
            client: self.peer,
            helo: self.conn.session().helo().map(str::to_string),
            tls: self.tls,
            auth: self.conn.session().authenticated().map(str::to_string),
            size: env.size,
            reply: reply.to_string(),
            received_at: chrono::Utc::now().to_rfc3339(),
            files: Vec::<PathBuf>::new(),
            raw_file,
            layout,
            content: Arc::new(if persona.rules.keep_messages {
                message
            } else {
                Vec::new()
            }),
        };
        if persona.rules.keep_messages
            && let Err(e) =
                store::write_message(&self.shared.config.data_dir, &mut received, &eml).await
        {
            self.note(&format!("* storage error: {e}"));
            return Verdict::Reply(Reply::plain(
                451,
                "Requested action aborted: local error in processing",
            ));
        }
        self.messages_here += 1;
        {
            let limits = &persona.limits;
            let quotas = limits.sender_per_15min.is_some()
                || limits.sender_per_day.is_some()
                || limits.recipients_per_15min.is_some()
                || limits.recipients_per_day.is_some();
            let now = self.shared.now();
            let mut st = self.shared.state();
            if quotas {
                st.sent
                    .entry(received.mail_from.to_lowercase())
                    .or_default()
                    .push_back((now, received.rcpt_to.len() as u32));
            }
            if st.received.len() >= self.shared.config.history.max(1) {
                st.received.pop_front();
            }
            st.received.push_back(received);
            st.received_total += 1;
        }
        self.shared.received_notify.notify_waiters();
        Verdict::Reply(reply)
    }
}

/// The Subject as a reader sees it: RFC 2047 encoded words decoded (`=?GB2312?B?...?=` as
/// Foxmail sends them), by mail-parser; the raw header when it has none.
fn decoded_subject(message: &[u8]) -> String {
    let head_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4);
    mail_parser::MessageParser::default()
        .parse_headers(&message[..head_end])
        .and_then(|m| m.subject().map(str::to_string))
        .or_else(|| store::header_value(message, "Subject"))
        .unwrap_or_default()
}

/// Whether `text` contains `word` (case-insensitive): as a whole word when `word` is ASCII
/// letters and digits ("test" in "Test mail", not in "attestation"), anywhere otherwise
/// ("测试" in "功能测试").
fn contains_word(text: &str, word: &str) -> bool {
    let (text, word) = (text.to_lowercase(), word.to_lowercase());
    if word.is_empty() {
        return false;
    }
    if !word.chars().all(|c| c.is_ascii_alphanumeric()) {
        return text.contains(&word);
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
    text.match_indices(&word).any(|(i, w)| {
        !alnum(text[..i].chars().next_back()) && !alnum(text[i + w.len()..].chars().next())
    })
}

fn path_text(p: &ForwardPath) -> String {
    match p {
        ForwardPath::Postmaster(s) => s.clone(),
        ForwardPath::Mailbox(m) => m.to_string(),
    }
}

/// How a connection is driven: 64 KiB reads, a write may take 30 s.
const DRIVE: smtp_net::server::DriveConfig = smtp_net::server::DriveConfig {
    write_timeout: WRITE_TIMEOUT,
    read_small: READ_SIZE,
    read_large: READ_SIZE,
};

/// The fake's session under the shared driver ([`smtp_net::server::serve`]): the persona's
/// idle timeout (twice as long inside DATA), its faults on the greeting and on STARTTLS.
impl smtp_net::server::Session for Session {
    fn conn(&mut self) -> &mut ServerConnection {
        &mut self.conn
    }

    async fn greet(&mut self, wire: &mut Wire<'_>) -> std::io::Result<Next> {
        let greeting = self.greeting();
        self.queue(wire, &greeting);
        // Written at once; a client gone before it ends the session without a word.
        Ok(match wire.flush().await {
            Ok(()) => Next::Continue,
            Err(_) => Next::End,
        })
    }

    async fn process(&mut self, wire: &mut Wire<'_>) -> std::io::Result<Next> {
        self.events(wire).await
    }

    async fn start_tls(&mut self, mut io: Box<dyn Io>) -> Option<Box<dyn Io>> {
        let action = self.shared.fault(Stage::Starttls, None);
        if action.tls_fail {
            self.note("* fault: TLS handshake broken");
            let _ = write_all(&mut io, b"\x15\x03\x03\x00\x02\x02\x28").await;
            return None;
        }
        match accept_tls(&self.shared, io).await {
            Ok(stream) => {
                self.note("* TLS handshake done (STARTTLS)");
                self.tls = true;
                self.conn.tls_established();
                Some(Box::new(stream))
            }
            Err(e) => {
                self.note(&format!("* TLS handshake failed: {e}"));
                None
            }
        }
    }

    fn wait(&mut self) -> Duration {
        let idle = Duration::from_secs(self.shared.config.persona.limits.idle_timeout_secs.max(1));
        self.waiting = if self.conn.in_data() { idle * 2 } else { idle };
        self.waiting
    }

    fn timed_out(&mut self) -> Reply {
        let reply = self.conn.timeout_reply();
        self.note(&format!("* idle for {}s", self.waiting.as_secs()));
        self.note_reply(&reply);
        reply
    }

    fn client_closed(&mut self) {
        self.note("* client closed the connection");
    }

    fn shutting_down(&mut self) -> Reply {
        let reply = self.conn.shutdown_reply();
        self.note_reply(&reply);
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::DataPhase;

    fn phase(chunks: &[&[u8]]) -> DataPhase {
        let mut d = DataPhase::default();
        for c in chunks {
            d.feed(c);
        }
        d.end();
        d
    }

    #[test]
    fn line_endings_are_judged_across_chunks() {
        let counts = |d: DataPhase| (d.bare_cr, d.bare_lf, d.nul, d.eight_bit);
        assert_eq!(counts(phase(&[b"a\r", b"\nb\r\n"])), (0, 0, 0, 0));
        assert_eq!(counts(phase(&[b"a\r", b"b\r\n"])), (1, 0, 0, 0));
        assert_eq!(counts(phase(&[b"\n", b"x\r\n"])), (0, 1, 0, 0));
        assert_eq!(counts(phase(&[b"a\r\n", b"\n"])), (0, 1, 0, 0));
        assert_eq!(counts(phase(&[b"a\r"])), (1, 0, 0, 0));
        assert_eq!(counts(phase(&[b"\r\r\n"])), (1, 0, 0, 0));
        assert_eq!(counts(phase(&[b"\0\xe4\xbd\xa0\r\n"])), (0, 0, 1, 3));
        assert!(phase(&[b"ok\r\n", b"still ok\r\n"]).clean());
    }

    #[test]
    fn the_raw_bytes_kept_are_bounded_and_the_counts_are_not() {
        let mut d = DataPhase::default();
        let block = vec![b'\n'; 64 * 1024];
        for _ in 0..20 {
            d.feed(&block);
        }
        assert_eq!(d.raw.len(), super::RAW_KEPT);
        assert_eq!(d.bare_lf, 20 * 64 * 1024);
        assert_eq!(d.octets, 20 * 64 * 1024);
    }
}
