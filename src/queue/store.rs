//! The durable queue of store-and-forward mode: an append-only journal (see [`journal`] for
//! its format) of segment files under `journal/`, in which each message is a `put` entry (its
//! envelope and delivery state, and its content when it is small), later `update` entries
//! (a new delivery state) and a `remove` entry. A message larger than [`journal::INLINE_MAX`]
//! keeps its content in a file of its own, `msg/<h>/<id>.eml`: when the relay's spool is on
//! the same file system, a hard link to the spool's file (the content is the message as the
//! client sent it, the record's `trace` header goes before it), synced before the entry that
//! names it is written.
//!
//! Group commit: every change that arrives while the committer is busy is written with the
//! next one in one write and made durable with one `fdatasync`; only then does
//! [`Queue::enqueue`] return, and only then may the client hear 250. Postfix pays a file and
//! an fsync per message; on this file system (ext4) a file created and deleted per message
//! costs more than the sync itself. A crash at any point leaves either no entry (a torn last
//! write is cut off when the journal is read again: the client got no 250) or a whole one.
//!
//! The holder (the relay: one process at a time, `lock` in the queue directory) keeps the
//! live messages in memory (read from the journal at start): the scheduler's looks and the
//! metrics read no file. A segment no live message needs is removed, oldest first; when
//! closed segments pile up behind an old message, it is copied forward. Other processes
//! (`smtp-relay queue`) read the journal, and leave their changes in `requests/` for the
//! holder to carry out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use smtp_wire::{ForwardPath, MailParams, ReversePath};

use super::index::{Index, Located, Where, replay};
use super::journal;
pub use super::writer::Limits;
use super::writer::{Done, Job, MAX_PENDING_JOBS, Writer};

/// A time in a record: RFC 3339, UTC.
pub type Time = chrono::DateTime<chrono::Utc>;

/// Paths and parameters in a record, in their wire form: written with `Display`, read back
/// with `FromStr` (a record that does not parse is listed as unreadable, with why).
mod wire_form {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
    }
}

/// A recipient's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RcptState {
    /// Still to be delivered (after `attempts` tries; `last` is what the upstream said).
    Pending { last: Option<String> },
    /// The upstream took it, with these words.
    Delivered { reply: String },
    /// Permanently refused, or given up; a bounce was (or will be) sent.
    Failed { reply: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rcpt {
    /// `<bob@163.com>` in the file.
    #[serde(with = "wire_form")]
    pub to: ForwardPath,
    #[serde(flatten)]
    pub state: RcptState,
}

/// A queued message's envelope and delivery state (`<id>.json`). Never holds a secret: the
/// credentials to deliver it are looked up by `auth_user` in the relay's secrets store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub id: String,
    /// The route it goes to (`default` or a route's label).
    pub route: String,
    /// `<alice@163.com>` or `<>` in the file.
    #[serde(with = "wire_form")]
    pub mail_from: ReversePath,
    /// MAIL parameters to pass on (`BODY=8BITMIME`, ...), as the client gave them.
    #[serde(default, with = "wire_form")]
    pub mail_params: MailParams,
    pub rcpts: Vec<Rcpt>,
    /// Who the client authenticated as (to pick the credentials to deliver with).
    pub auth_user: Option<String>,
    pub size: u64,
    pub received_at: Time,
    pub attempts: u32,
    /// Not before this.
    pub next_attempt: Time,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The relay's trace header (`Received:`), sent before the content. The content is then
    /// the message as the client sent it: a large one is the spool's own file, hard-linked
    /// (one copy on disk). Records written before this field have the header in their content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl Queued {
    /// Recipients still to deliver.
    pub fn pending(&self) -> impl Iterator<Item = &Rcpt> {
        self.rcpts
            .iter()
            .filter(|r| matches!(r.state, RcptState::Pending { .. }))
    }

    /// What goes before the content: the trace header, if the record keeps it apart.
    pub fn trace(&self) -> &[u8] {
        self.trace.as_deref().unwrap_or_default().as_bytes()
    }

    /// Nothing left to deliver: the message can leave the queue.
    pub fn done(&self) -> bool {
        self.pending().next().is_none()
    }
}

/// What [`Queue::list`] finds: the records, and what could not be read (where, and why).
pub type Listing = (Vec<Queued>, Vec<(PathBuf, String)>);

/// Counters of the committer, for tests and metrics.
#[derive(Debug, Default)]
pub struct Commits {
    /// Batches committed.
    pub batches: AtomicU64,
    /// Messages enqueued.
    pub messages: AtomicU64,
    /// `fdatasync`s of the journal.
    pub journal_syncs: AtomicU64,
    /// Directory fsyncs (large messages' files, new and removed segments).
    pub dir_syncs: AtomicU64,
    /// Segments removed once nothing in them was needed.
    pub segments_reclaimed: AtomicU64,
    /// Messages copied forward out of an old segment so that it could be removed.
    pub relocated: AtomicU64,
}

/// A queued message's content: in memory (a small message, or one read from the journal), or
/// a file.
#[derive(Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Body {
    /// The start of the content, at most `max` octets (a bounce's returned headers, `queue
    /// show`).
    pub fn head(&self, max: usize) -> std::io::Result<Vec<u8>> {
        match self {
            Body::Bytes(b) => Ok(b[..b.len().min(max)].to_vec()),
            Body::File(p) => {
                use std::io::Read;
                let mut out = Vec::new();
                std::fs::File::open(p)?
                    .take(max as u64)
                    .read_to_end(&mut out)?;
                Ok(out)
            }
        }
    }

    /// The whole size.
    pub fn len(&self) -> std::io::Result<u64> {
        match self {
            Body::Bytes(b) => Ok(b.len() as u64),
            Body::File(p) => Ok(std::fs::metadata(p)?.len()),
        }
    }

    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// The queue directory.
#[derive(Clone)]
pub struct Queue {
    dir: PathBuf,
    /// `None` for an observer (another process holds the queue): it reads the journal, and
    /// hands changes to the holder as requests.
    jobs: Option<tokio::sync::mpsc::Sender<Job>>,
    pub commits: Arc<Commits>,
    next_tmp: Arc<AtomicU64>,
    index: Arc<std::sync::Mutex<Index>>,
    /// The holder's lock on `lock`, kept while the queue is open.
    _lock: Option<Arc<std::fs::File>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.dir)
            .field("holder", &self.jobs.is_some())
            .finish_non_exhaustive()
    }
}

/// A change asked of the relay that holds the queue, by `smtp-relay queue retry|delete` in
/// another process: a file in `requests/`, taken away once done.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
enum Request {
    /// Due now: one message, or every one.
    Retry { id: Option<String> },
    /// Out of the queue, undelivered, no bounce.
    Delete { id: String },
}

/// How long `smtp-relay queue retry|delete` waits for the running relay to take a request
/// (it looks at every scheduler tick).
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn subdir_of(dir: &Path, id: &str) -> PathBuf {
    dir.join("msg").join(crate::spool::subdir(id))
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub(super) fn not_queued(id: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{id}: not in the queue"),
    )
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the queue's committer has stopped")
}

impl Queue {
    /// Opens (or creates) a queue directory and holds it (one process at a time: a second
    /// one is refused). Recovery: the journal is replayed (a torn last write cut off),
    /// `tmp/` emptied and content files without a message removed (nothing there was
    /// acknowledged), and a queue in the older layout (a `.json` record per message) moved
    /// into the journal.
    pub fn open(dir: &Path) -> std::io::Result<Queue> {
        Queue::open_with(dir, Limits::default())
    }

    /// [`Queue::open`] with other journal sizes (tests and benchmarks).
    pub fn open_with(dir: &Path, limits: Limits) -> std::io::Result<Queue> {
        smtp_net::files::private_dir(dir)?;
        for sub in ["tmp", "msg", "journal", "requests"] {
            smtp_net::files::private_dir(&dir.join(sub))?;
        }
        for i in 0..crate::spool::SUBDIRS {
            smtp_net::files::private_dir(&dir.join("msg").join(format!("{i:x}")))?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        if let Err(e) = lock.try_lock() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{}: the queue is held by another process (a relay running on it?): {e}",
                    dir.display()
                ),
            ));
        }
        let journal_dir = dir.join("journal");
        let (mut index, seqs) = replay(&journal_dir, true)?;
        for entry in std::fs::read_dir(dir.join("tmp"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        let older = migrate_older_layout(dir, &index)?;
        for path in crate::spool::files(&dir.join("msg"))? {
            let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let external = index
                .live
                .get(id)
                .is_some_and(|l| matches!(l.content, Where::External));
            let migrating = older.iter().any(|r| r.id == id);
            if path.extension().is_some_and(|e| e == "eml") && !external && !migrating {
                std::fs::remove_file(&path)?;
            }
        }
        // New entries go to a new segment: the old ones are only read from now on.
        let seq = seqs.last().map_or(0, |s| s + 1);
        let commits = Arc::new(Commits::default());
        let mut writer = Writer::create(dir, seq, seqs, commits.clone(), limits)?;
        let moved: Vec<String> = older.iter().map(|r| r.id.clone()).collect();
        if !older.is_empty() {
            let entries = older
                .into_iter()
                .map(|r| (journal::Kind::PutExternal, r, None))
                .collect();
            writer.append_all(entries, &mut index)?;
        }
        for id in moved {
            std::fs::remove_file(subdir_of(dir, &id).join(format!("{id}.json")))?;
        }
        // A request being carried out when the last holder stopped: its asker has given up.
        for entry in std::fs::read_dir(dir.join("requests"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "taking") {
                let _ = std::fs::remove_file(path);
            }
        }
        let index = Arc::new(std::sync::Mutex::new(index));
        // Segments left with nothing needed in them (the last start's empty one, say).
        writer.maintain(&index)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(MAX_PENDING_JOBS);
        let shared = index.clone();
        std::thread::Builder::new()
            .name("smtp-relay-queue".into())
            .spawn(move || writer.run(rx, &shared))?;
        Ok(Queue {
            dir: dir.to_path_buf(),
            jobs: Some(tx),
            commits,
            next_tmp: Arc::new(AtomicU64::new(0)),
            index,
            _lock: Some(Arc::new(lock)),
        })
    }

    /// Opens a queue another process may hold (`smtp-relay queue`, a test beside a relay):
    /// held when no one holds it, an observer otherwise: it reads the journal at every look
    /// and asks the holder for changes ([`Queue::retry`], [`Queue::delete`]).
    pub fn open_existing(dir: &Path) -> std::io::Result<Queue> {
        match Queue::open(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Queue::observe(dir)),
            other => other,
        }
    }

    /// An observer of a queue held by another process.
    pub fn observe(dir: &Path) -> Queue {
        Queue {
            dir: dir.to_path_buf(),
            jobs: None,
            commits: Arc::default(),
            next_tmp: Arc::new(AtomicU64::new(0)),
            index: Arc::default(),
            _lock: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this process holds the queue (else it observes one a relay holds).
    pub fn holds(&self) -> bool {
        self.jobs.is_some()
    }

    /// A fresh path in `tmp/` to stream a large message's content to before
    /// [`Queue::enqueue`].
    pub fn tmp_path(&self, id: &str) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.dir.join("tmp").join(format!("{id}.{n}.eml"))
    }

    /// Whether a file made in `dir` can be hard-linked into the queue (the same file system):
    /// tried with a file of its own, removed after.
    pub fn links_from(&self, dir: &Path) -> bool {
        let probe = dir.join(format!(".link-probe-{}", std::process::id()));
        let link = self.tmp_path(".link-probe");
        let linked = crate::spool::write_private(&probe, b"")
            .and_then(|()| std::fs::hard_link(&probe, &link))
            .is_ok();
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_file(&probe);
        linked
    }

    fn jobs(&self) -> std::io::Result<&tokio::sync::mpsc::Sender<Job>> {
        self.jobs.as_ref().ok_or_else(|| {
            std::io::Error::other(
                "the queue is held by another process: changes go to it as requests",
            )
        })
    }

    async fn submit(&self, job: impl FnOnce(Done) -> Job) -> std::io::Result<()> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.jobs()?.send(job(done)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Makes a message durable: its record and content written to the journal (a large
    /// content, a file under `tmp/`, synced and moved into `msg/`) with one sync for every
    /// message that arrived meanwhile. Returns when that is done: only then may the client
    /// hear 250.
    pub async fn enqueue(&self, body: Body, record: Queued) -> std::io::Result<()> {
        self.submit(|done| Job::Put { record, body, done }).await
    }

    /// Replaces a message's record durably.
    pub async fn update(&self, record: &Queued) -> std::io::Result<()> {
        let record = record.clone();
        self.submit(|done| Job::Update { record, done }).await
    }

    /// Takes a message out of the queue (durably; a large content's file is removed after).
    pub async fn remove(&self, id: &str) -> std::io::Result<()> {
        let id = id.to_string();
        self.submit(|done| Job::Remove { id, done }).await
    }

    /// Makes one message (or every one) due now; gives how many. An observer asks the
    /// holder and waits for it to take the request.
    pub async fn retry(&self, id: Option<&str>) -> std::io::Result<usize> {
        if !self.holds() {
            let n = match id {
                Some(id) => self.load(id).map(|_| 1)?,
                None => self.list()?.0.len(),
            };
            self.request(&Request::Retry {
                id: id.map(str::to_string),
            })
            .await?;
            return Ok(n);
        }
        let now = chrono::Utc::now();
        let records: Vec<Queued> = match id {
            Some(id) => vec![self.load(id)?],
            None => self.list()?.0,
        };
        let mut n = 0;
        for mut r in records {
            r.next_attempt = now;
            match self.update(&r).await {
                Ok(()) => n += 1,
                // Delivered or deleted meanwhile: nothing left to retry.
                Err(e) if id.is_none() && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Deletes a message (undelivered, no bounce). An observer asks the holder.
    pub async fn delete(&self, id: &str) -> std::io::Result<()> {
        self.load(id)?;
        if self.holds() {
            self.remove(id).await
        } else {
            self.request(&Request::Delete { id: id.to_string() }).await
        }
    }

    /// Writes a request for the holder and waits for its outcome: `<name>.done`, or
    /// `<name>.err` with why it could not be carried out.
    async fn request(&self, request: &Request) -> std::io::Result<()> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let name = format!("{nanos:032}-{}", std::process::id());
        let at = |ext: &str| self.dir.join("requests").join(format!("{name}.{ext}"));
        let path = at("json");
        std::fs::write(
            at("tmp"),
            serde_json::to_vec(request).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(at("tmp"), &path)?;
        let mut deadline = tokio::time::Instant::now() + REQUEST_WAIT;
        let mut taken = false;
        loop {
            if std::fs::remove_file(at("done")).is_ok() {
                return Ok(());
            }
            if let Ok(why) = std::fs::read_to_string(at("err")) {
                let _ = std::fs::remove_file(at("err"));
                return Err(std::io::Error::other(why));
            }
            if tokio::time::Instant::now() >= deadline {
                // Taken back unless the holder has it already (then its outcome is awaited).
                if !taken && std::fs::remove_file(&path).is_err() {
                    taken = true;
                    deadline += REQUEST_WAIT;
                    continue;
                }
                let why = if taken {
                    "took the request but gave no outcome"
                } else {
                    "did not take the request (is it stuck?); nothing was changed"
                };
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the relay holding {} {why} within {} s",
                        self.dir.display(),
                        REQUEST_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The holder: carries out the requests other processes left in `requests/` (the
    /// scheduler calls this at every look), each claimed first (renamed, so that one the
    /// asker took back is not carried out), its outcome left for the asker.
    pub async fn take_requests(&self) {
        if !self.holds() {
            return;
        }
        let dir = self.dir.join("requests");
        let Ok(mut names) = std::fs::read_dir(&dir).map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect::<Vec<_>>()
        }) else {
            return;
        };
        names.sort();
        for path in names {
            let taking = path.with_extension("taking");
            if std::fs::rename(&path, &taking).is_err() {
                continue;
            }
            let request = std::fs::read(&taking)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Request>(&b).map_err(|e| e.to_string()));
            let done = match request {
                Ok(Request::Retry { id }) => self.retry(id.as_deref()).await.map(|_| ()),
                Ok(Request::Delete { id }) => self.remove(&id).await,
                Err(e) => Err(std::io::Error::other(e)),
            };
            let outcome = match &done {
                Ok(()) => {
                    tracing::info!(request = %path.display(), "queue: request carried out");
                    std::fs::write(path.with_extension("done"), b"")
                }
                Err(e) => {
                    tracing::warn!(request = %path.display(), error = %e, "queue: request not carried out");
                    std::fs::write(path.with_extension("err"), e.to_string())
                }
            };
            if let Err(e) = outcome {
                tracing::warn!(request = %path.display(), error = %e, "queue: cannot leave a request's outcome");
            }
            let _ = std::fs::remove_file(&taking);
        }
    }

    /// Every queued message's record, oldest first, and what could not be read (with why).
    /// The holder answers from memory; an observer reads the journal. Blocking.
    pub fn list(&self) -> std::io::Result<Listing> {
        if self.holds() {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            return Ok((index.sorted(), index.bad.clone()));
        }
        let (index, _) = replay(&self.dir.join("journal"), false)?;
        Ok((index.sorted(), index.bad))
    }

    /// How many messages are queued and when the oldest came, from memory: for the metrics.
    pub fn summary(&self) -> (u64, Option<Time>) {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = index.live.values().map(|l| l.record.received_at).min();
        (index.live.len() as u64, oldest)
    }

    /// Whether the message is still queued.
    pub async fn is_queued(&self, id: &str) -> bool {
        if self.holds() {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            return index.live.contains_key(id);
        }
        self.load(id).is_ok()
    }

    fn located(&self, id: &str) -> std::io::Result<Located> {
        if self.holds() {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            return index.live.get(id).cloned().ok_or_else(|| not_queued(id));
        }
        let (mut index, _) = replay(&self.dir.join("journal"), false)?;
        index.live.remove(id).ok_or_else(|| not_queued(id))
    }

    /// A message's record. Blocking (an observer reads the journal).
    pub fn load(&self, id: &str) -> std::io::Result<Queued> {
        Ok(self.located(id)?.record)
    }

    /// A message's content: read from the journal, or its file's path. Blocking.
    pub fn content_blocking(&self, id: &str) -> std::io::Result<Body> {
        use std::os::unix::fs::FileExt;
        // Copied forward into a newer segment between the look and the read: look again.
        for _ in 0..3 {
            match self.located(id)?.content {
                Where::External => {
                    return Ok(Body::File(
                        subdir_of(&self.dir, id).join(format!("{id}.eml")),
                    ));
                }
                Where::Inline { seg, at, len } => {
                    let path = self.dir.join("journal").join(journal::segment_name(seg));
                    match std::fs::File::open(&path) {
                        Ok(f) => {
                            let mut out = vec![0; len as usize];
                            f.read_exact_at(&mut out, at)?;
                            return Ok(Body::Bytes(out));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(not_queued(id))
    }

    /// [`Queue::content_blocking`] off the async threads.
    pub async fn content(&self, id: &str) -> std::io::Result<Body> {
        let (q, id) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || q.content_blocking(&id))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// A queue in the layout before the journal (`msg/<h>/<id>.json` beside each `.eml`): its
/// records, to be put into the journal with their content files as they are.
fn migrate_older_layout(dir: &Path, index: &Index) -> std::io::Result<Vec<Queued>> {
    let mut older = Vec::new();
    for path in crate::spool::files(&dir.join("msg"))? {
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let record = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Queued>(&b).map_err(|e| e.to_string()));
        match record {
            Ok(r) if !index.live.contains_key(&r.id) => older.push(r),
            // Already moved (a crash after the journal's write, before the file's removal).
            Ok(_) => std::fs::remove_file(&path)?,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "queue: an older record cannot be read; left where it is")
            }
        }
    }
    Ok(older)
}

#[cfg(test)]
#[path = "store_tests.rs"]
pub(in crate::queue) mod tests;
