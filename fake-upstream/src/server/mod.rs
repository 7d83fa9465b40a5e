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
use crate::persona::{AuthRule, Limits, PlaintextAuth, SenderRule, UnknownRecipient, Vars};
use crate::store::{self, Received, Trace};
use crate::tls::{self, TlsFiles, TlsMaterial};

mod handle;
mod policy;
mod session;
mod transcript;
pub use handle::*;
use session::*;
pub use transcript::*;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to a client may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read size: also the most input a session buffers beyond one line.
const READ_SIZE: usize = 64 * 1024;

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
    /// The persona's limits as they stand: [`Handle::set_limit`] and
    /// [`Handle::set_quotas`] change them while the server runs.
    limits: std::sync::RwLock<Arc<Limits>>,
    /// The load generator's stamped messages, per run (`Config::tally_load`).
    load: Mutex<crate::loadstamp::Tallies>,
    /// Each accepted message, as it is accepted, to whoever subscribed
    /// ([`Handle::subscribe`]: the web page's live list).
    arrivals: tokio::sync::broadcast::Sender<Received>,
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

    /// The limits in force now.
    pub(crate) fn limits(&self) -> Arc<Limits> {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn faults(&self) -> Arc<FaultSet> {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
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
            limits: std::sync::RwLock::new(Arc::new(config.persona.limits.clone())),
            arrivals: tokio::sync::broadcast::channel(1024).0,
            load: Mutex::default(),
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
            shutdown: Arc::new(shutdown),
            tasks: Arc::new(Mutex::new(Some(tasks))),
        })
    }
}

/// Serves the connections of one listener until shutdown.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: Transport,
    shutdown: watch::Receiver<bool>,
) {
    smtp_net::accept_loop(listener, shutdown, move |tcp, peer, stop| {
        connection(shared.clone(), tcp, peer, kind, stop)
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
    let over = shared
        .limits()
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

/// How a connection is driven: 64 KiB reads, a write may take 30 s.
const DRIVE: smtp_net::server::DriveConfig = smtp_net::server::DriveConfig {
    write_timeout: WRITE_TIMEOUT,
    read_small: READ_SIZE,
    read_large: READ_SIZE,
};

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
