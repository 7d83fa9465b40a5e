//! A session's transcript as the fake writes it: `C:`/`S:` lines and events, bounded, and
//! each DATA phase's raw bytes with the counts no correct relay passes on (bare CR, bare LF,
//! NUL).

use super::*;

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
    pub(super) in_data: bool,
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
    pub(super) last: u8,
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
    pub(super) fn push(&mut self, line: String) {
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
pub(super) struct Live {
    pub(super) id: u64,
    /// The fake's count of recorded events ([`Handle::activity`]).
    pub(super) activity: Arc<AtomicU64>,
    /// Off for load runs (`Config::transcripts`): nothing is recorded.
    pub(super) recording: bool,
    pub(super) inner: Arc<Mutex<Transcript>>,
}

impl Live {
    pub(super) fn new(shared: &Shared, id: u64, client: SocketAddr) -> Live {
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

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Transcript> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn push(&self, line: String) {
        if self.recording {
            self.lock().push(line);
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bytes of the DATA phase under way (a new phase when none is).
    pub(super) fn data(&self, raw: &[u8]) {
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
    pub(super) fn end_data(&self) {
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
