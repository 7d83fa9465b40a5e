//! The durable queue of store-and-forward mode: every queued message is two files,
//! `msg/<h>/<id>.eml` (its content, never changed) and `msg/<h>/<id>.json` (its envelope and
//! delivery state, replaced atomically). A message is in the queue exactly when its `.json`
//! exists.
//!
//! Enqueueing is crash-safe: the content is written to `tmp/` and `fsync`ed, the record too,
//! both are renamed into place (content first, record last) and the directory is `fsync`ed;
//! only then does [`Queue::enqueue`] return, and only then may the client hear 250. A crash at
//! any point leaves either no record (the client got no 250; a leftover content file is
//! removed at the next start) or a complete message.
//!
//! Group commit: enqueues that arrive together are committed together by one thread, each
//! directory `fsync`ed once per batch instead of once per message.
//!
//! The records are also kept in memory (read once, then updated by this process's own
//! enqueues, updates and removals): the scheduler's looks and the metrics read no file. The
//! admin commands, in another process, write `changed` after they change the queue; a
//! running relay then reads the disk again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use smtp_wire::{ForwardPath, MailParams, ReversePath};

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
}

impl Queued {
    /// Recipients still to deliver.
    pub fn pending(&self) -> impl Iterator<Item = &Rcpt> {
        self.rcpts
            .iter()
            .filter(|r| matches!(r.state, RcptState::Pending { .. }))
    }

    /// Nothing left to deliver: the message can leave the queue.
    pub fn done(&self) -> bool {
        self.pending().next().is_none()
    }
}

/// What [`Queue::list`] finds: the records, and the unreadable ones with why.
pub type Listing = (Vec<Queued>, Vec<(PathBuf, String)>);

/// Counters of the committer, for tests and metrics.
#[derive(Debug, Default)]
pub struct Commits {
    /// Batches committed.
    pub batches: AtomicU64,
    /// Messages committed.
    pub messages: AtomicU64,
    /// Directory fsyncs.
    pub dir_syncs: AtomicU64,
}

enum Job {
    /// Content already written to `tmp` (not yet synced), and its record.
    Enqueue {
        content: PathBuf,
        record: Queued,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
}

/// The queue directory.
#[derive(Clone)]
pub struct Queue {
    dir: PathBuf,
    /// Bounded: an enqueue waits for room rather than letting jobs pile up in memory.
    jobs: tokio::sync::mpsc::Sender<Job>,
    pub commits: Arc<Commits>,
    next_tmp: Arc<AtomicU64>,
    index: Arc<std::sync::Mutex<Index>>,
}

/// The records in memory: read from the disk at the first [`Queue::records`], then kept up to
/// date by this process's enqueues, updates and removals, so that the scheduler's every look
/// and every metrics scrape costs no disk read. Read again when another process (`smtp-relay
/// queue retry|delete`) says it changed the queue ([`Queue::announce_change`]).
#[derive(Debug, Default)]
struct Index {
    /// By id; `None` until first read.
    records: Option<std::collections::HashMap<String, Queued>>,
    bad: Vec<(PathBuf, String)>,
    /// The `changed` file as it was when the disk was read.
    seen: Option<Vec<u8>>,
}

/// Written by the admin commands after they change the queue: a running relay reads the
/// queue again when it differs.
const CHANGED: &str = "changed";

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn subdir_of(dir: &Path, id: &str) -> PathBuf {
    dir.join("msg").join(crate::spool::subdir(id))
}

/// Writes `bytes` to `path` and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = crate::spool::create_private_sync(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Queue {
    /// Opens (or creates) a queue directory. Recovery: `tmp/` is emptied (nothing there was
    /// acknowledged), and content files without a record are removed.
    pub fn open(dir: &Path) -> std::io::Result<Queue> {
        smtp_net::files::private_dir(dir)?;
        smtp_net::files::private_dir(&dir.join("tmp"))?;
        smtp_net::files::private_dir(&dir.join("msg"))?;
        for i in 0..crate::spool::SUBDIRS {
            smtp_net::files::private_dir(&dir.join("msg").join(format!("{i:x}")))?;
        }
        for entry in std::fs::read_dir(dir.join("tmp"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        for path in crate::spool::files(&dir.join("msg"))? {
            if path.extension().is_some_and(|e| e == "eml") && !path.with_extension("json").exists()
            {
                std::fs::remove_file(&path)?;
            }
        }
        Queue::open_existing(dir)
    }

    /// Opens a queue without the recovery (for the admin commands, beside a running relay
    /// whose `tmp/` files are messages being received).
    pub fn open_existing(dir: &Path) -> std::io::Result<Queue> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(MAX_PENDING_JOBS);
        let commits = Arc::new(Commits::default());
        let (d, c) = (dir.to_path_buf(), commits.clone());
        std::thread::Builder::new()
            .name("smtp-relay-queue".into())
            .spawn(move || committer(&d, rx, &c))?;
        Ok(Queue {
            dir: dir.to_path_buf(),
            jobs: tx,
            commits,
            next_tmp: Arc::new(AtomicU64::new(0)),
            index: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh path in `tmp/` to stream a message's content to before [`Queue::enqueue`].
    pub fn tmp_path(&self, id: &str) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.dir.join("tmp").join(format!("{id}.{n}.eml"))
    }

    /// Where a queued message's content is.
    pub fn message_path(&self, id: &str) -> PathBuf {
        subdir_of(&self.dir, id).join(format!("{id}.eml"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        subdir_of(&self.dir, id).join(format!("{id}.json"))
    }

    /// Makes the message durable: `content` (a file under `tmp/`, written, not yet synced)
    /// and `record` are synced and moved into the queue, the directory synced. Returns when
    /// that is done: only then may the client hear 250.
    pub async fn enqueue(&self, content: PathBuf, record: Queued) -> std::io::Result<()> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let kept = record.clone();
        self.jobs
            .send(Job::Enqueue {
                content,
                record,
                done,
            })
            .await
            .map_err(|_| std::io::Error::other("the queue's committer has stopped"))?;
        rx.await
            .map_err(|_| std::io::Error::other("the queue's committer has stopped"))??;
        self.indexed(|records| {
            records.insert(kept.id.clone(), kept);
        });
        Ok(())
    }

    /// Changes the in-memory index, once it has been read.
    fn indexed(&self, change: impl FnOnce(&mut std::collections::HashMap<String, Queued>)) {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(records) = index.records.as_mut() {
            change(records);
        }
    }

    /// Every queued message's record, oldest first, and the records that could not be read
    /// (with why), as the disk has them now (the admin commands, an observer). Blocking.
    pub fn list(&self) -> std::io::Result<Listing> {
        self.read_disk()
    }

    /// [`Queue::list`] for the process that owns the queue (the relay's scheduler): from
    /// memory, the disk read at the first call and after another process announced a change.
    /// Blocking (it may read the disk): async callers use `spawn_blocking`.
    pub fn records(&self) -> std::io::Result<Listing> {
        let stamp = std::fs::read(self.dir.join(CHANGED)).ok();
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if index.records.is_none() || index.seen != stamp {
            let (records, bad) = self.read_disk()?;
            index.records = Some(records.into_iter().map(|r| (r.id.clone(), r)).collect());
            index.bad = bad;
            index.seen = stamp;
        }
        let mut records: Vec<Queued> = index
            .records
            .iter()
            .flat_map(|r| r.values())
            .cloned()
            .collect();
        records.sort_by(|a, b| a.received_at.cmp(&b.received_at).then(a.id.cmp(&b.id)));
        Ok((records, index.bad.clone()))
    }

    /// How many messages are queued and when the oldest came, from memory (nothing before
    /// the first [`Queue::records`]): for the metrics.
    pub fn summary(&self) -> (u64, Option<Time>) {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let records = index.records.iter().flat_map(|r| r.values());
        let oldest = records.clone().map(|r| r.received_at).min();
        (records.count() as u64, oldest)
    }

    /// Tells a relay running on this queue that another process changed it (the admin
    /// commands): its next look reads the disk again.
    pub fn announce_change(&self) -> std::io::Result<()> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        std::fs::write(
            self.dir.join(CHANGED),
            format!("{nanos} {}\n", std::process::id()),
        )
    }

    /// Whether the message is still queued (its record on disk), without blocking.
    pub async fn is_queued(&self, id: &str) -> bool {
        tokio::fs::try_exists(self.record_path(id))
            .await
            .unwrap_or(false)
    }

    /// Every record on the disk.
    fn read_disk(&self) -> std::io::Result<Listing> {
        let mut records = Vec::new();
        let mut bad = Vec::new();
        for path in crate::spool::files(&self.dir.join("msg"))? {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Queued>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => records.push(r),
                Err(e) => bad.push((path, e)),
            }
        }
        records.sort_by(|a, b| a.received_at.cmp(&b.received_at).then(a.id.cmp(&b.id)));
        Ok((records, bad))
    }

    pub fn load(&self, id: &str) -> std::io::Result<Queued> {
        let bytes = std::fs::read(self.record_path(id))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// Replaces a record atomically and durably (write to `tmp/`, sync, rename, sync dir).
    pub async fn update(&self, record: &Queued) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        let tmp = self.tmp_path(&record.id).with_extension("json");
        let dest = self.record_path(&record.id);
        tokio::task::spawn_blocking(move || {
            write_synced(&tmp, &json)?;
            std::fs::rename(&tmp, &dest)?;
            sync_dir(dest.parent().expect("in a subdirectory"))
        })
        .await
        .map_err(std::io::Error::other)??;
        let kept = record.clone();
        self.indexed(|records| {
            records.insert(kept.id.clone(), kept);
        });
        Ok(())
    }

    /// Takes a message out of the queue: the record first (from then on it is not queued),
    /// then the content.
    pub async fn remove(&self, id: &str) -> std::io::Result<()> {
        let (record, content) = (self.record_path(id), self.message_path(id));
        tokio::task::spawn_blocking(move || {
            std::fs::remove_file(&record)?;
            let _ = std::fs::remove_file(&content);
            sync_dir(record.parent().expect("in a subdirectory"))
        })
        .await
        .map_err(std::io::Error::other)??;
        self.indexed(|records| {
            records.remove(id);
        });
        Ok(())
    }
}

/// The committer thread: takes every job waiting, syncs their files, renames them into
/// place, syncs each directory touched once, then answers them all.
fn committer(dir: &Path, mut rx: tokio::sync::mpsc::Receiver<Job>, stats: &Commits) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // Each message's files are synced in parallel (the file system's journal merges
        // concurrent syncs into one commit), then renamed, then each directory synced once.
        let synced: Vec<std::io::Result<()>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .chunks(batch.len().div_ceil(SYNC_THREADS).max(1))
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(
                                |Job::Enqueue {
                                     content, record, ..
                                 }| {
                                    std::fs::File::open(content)?.sync_all()?;
                                    let json = serde_json::to_vec_pretty(record)
                                        .map_err(std::io::Error::other)?;
                                    write_synced(&content.with_extension("json"), &json)
                                },
                            )
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(std::io::Error::other("a sync thread panicked"))]
                    })
                })
                .collect()
        });
        let mut dirs = BTreeSet::new();
        let mut results: Vec<(std::io::Result<()>, tokio::sync::oneshot::Sender<_>)> =
            Vec::with_capacity(batch.len());
        for (job, synced) in batch.into_iter().zip(synced) {
            let Job::Enqueue {
                content,
                record,
                done,
            } = job;
            let sub = subdir_of(dir, &record.id);
            let tmp_json = content.with_extension("json");
            let r = synced.and_then(|()| {
                std::fs::rename(&content, sub.join(format!("{}.eml", record.id)))?;
                std::fs::rename(&tmp_json, sub.join(format!("{}.json", record.id)))
            });
            if r.is_ok() {
                dirs.insert(sub);
            } else {
                let _ = std::fs::remove_file(&content);
                let _ = std::fs::remove_file(&tmp_json);
            }
            results.push((r, done));
        }
        // One fsync per directory for the whole batch: the renames are durable after it.
        let dir_errors: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = dirs
                .iter()
                .map(|d| scope.spawn(move || sync_dir(d).err().map(|e| e.to_string())))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .collect()
        });
        stats
            .dir_syncs
            .fetch_add(dirs.len() as u64, Ordering::Relaxed);
        let dir_error = dir_errors.into_iter().next();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        for (r, done) in results {
            let r = match (r, &dir_error) {
                (Ok(()), Some(e)) => Err(std::io::Error::other(format!(
                    "the queue directory could not be synced: {e}"
                ))),
                (r, _) => r,
            };
            if r.is_ok() {
                stats.messages.fetch_add(1, Ordering::Relaxed);
            }
            let _ = done.send(r);
        }
    }
}

/// Threads that sync a batch's files at once.
const SYNC_THREADS: usize = 16;

/// Enqueues waiting for the committer at most; beyond, an enqueue waits for room (sessions
/// are bounded by `max_sessions` long before this, so it is a backstop, not a limit met).
const MAX_PENDING_JOBS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Queued {
        Queued {
            id: id.into(),
            route: "default".into(),
            mail_from: "<alice@163.com>".parse().unwrap(),
            mail_params: " BODY=8BITMIME".parse().unwrap(),
            rcpts: vec![
                Rcpt {
                    to: "<bob@163.com>".parse().unwrap(),
                    state: RcptState::Pending { last: None },
                },
                Rcpt {
                    to: "<friend@qq.com>".parse().unwrap(),
                    state: RcptState::Delivered {
                        reply: "250 OK".into(),
                    },
                },
            ],
            auth_user: Some("alice@163.com".into()),
            size: 5,
            received_at: "2026-11-26T07:00:00Z".parse().unwrap(),
            attempts: 0,
            next_attempt: "2026-11-26T07:00:00Z".parse().unwrap(),
            last_error: None,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("queue-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn enqueue_list_update_remove() {
        let dir = temp("basic");
        let q = Queue::open(&dir).unwrap();
        let tmp = q.tmp_path("m1");
        std::fs::write(&tmp, b"hello").unwrap();
        q.enqueue(tmp.clone(), record("m1")).await.unwrap();
        assert!(!tmp.exists(), "moved out of tmp/");
        assert_eq!(std::fs::read(q.message_path("m1")).unwrap(), b"hello");
        let (all, bad) = q.list().unwrap();
        assert!(bad.is_empty());
        assert_eq!(all, vec![record("m1")]);
        assert_eq!(all[0].pending().count(), 1);
        let mut r = q.load("m1").unwrap();
        r.rcpts[0].state = RcptState::Delivered {
            reply: "250 Mail OK".into(),
        };
        r.attempts = 1;
        q.update(&r).await.unwrap();
        let again = q.load("m1").unwrap();
        assert!(again.done());
        assert_eq!(again.attempts, 1);
        q.remove("m1").await.unwrap();
        assert!(q.list().unwrap().0.is_empty());
        assert!(!q.message_path("m1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The file keeps paths and parameters in their wire form and times in RFC 3339; a record
    /// in the form earlier versions wrote (offsets as `+00:00`) reads the same; one whose
    /// sender does not parse is refused with the reason, never read as something else.
    #[test]
    fn a_record_is_typed_and_its_file_is_wire_text() {
        let json = serde_json::to_value(record("m1")).unwrap();
        assert_eq!(json["mail_from"], "<alice@163.com>");
        assert_eq!(json["mail_params"], " BODY=8BITMIME");
        assert_eq!(json["rcpts"][0]["to"], "<bob@163.com>");
        assert_eq!(json["received_at"], "2026-11-26T07:00:00Z");
        let older = r#"{"id":"m1","route":"default","mail_from":"<alice@163.com>",
            "mail_params":" BODY=8BITMIME","rcpts":[{"to":"<bob@163.com>","state":"pending",
            "last":null},{"to":"<friend@qq.com>","state":"delivered","reply":"250 OK"}],
            "auth_user":"alice@163.com","size":5,"received_at":"2026-11-26T07:00:00+00:00",
            "attempts":0,"next_attempt":"2026-11-26T15:00:00+08:00"}"#;
        assert_eq!(serde_json::from_str::<Queued>(older).unwrap(), record("m1"));
        let bad = older.replace("<alice@163.com>", "<alice@>");
        let e = serde_json::from_str::<Queued>(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"<alice@>\""), "{e}");
    }

    /// The scheduler's looks and the metrics come from memory: a record taken away behind the
    /// queue's back is still listed, until another process announces a change; this
    /// process's own enqueues and removals show at once.
    #[tokio::test]
    async fn the_index_is_read_once_and_again_after_an_announced_change() {
        let dir = temp("index");
        let q = Queue::open(&dir).unwrap();
        for id in ["i1", "i2"] {
            let tmp = q.tmp_path(id);
            std::fs::write(&tmp, b"hello").unwrap();
            q.enqueue(tmp, record(id)).await.unwrap();
        }
        let ids = |q: &Queue| -> Vec<String> {
            q.records().unwrap().0.into_iter().map(|r| r.id).collect()
        };
        assert_eq!(ids(&q), ["i1", "i2"]);
        assert_eq!(q.summary().0, 2);
        std::fs::remove_file(q.record_path("i1")).unwrap();
        assert_eq!(ids(&q), ["i1", "i2"], "no disk read for a look");
        assert!(!q.is_queued("i1").await, "the disk says it is gone");
        q.remove("i2").await.unwrap();
        assert_eq!(ids(&q), ["i1"], "this process's removal shows at once");
        // Another process (the admin commands) announces what it did.
        Queue::open_existing(&dir)
            .unwrap()
            .announce_change()
            .unwrap();
        assert!(ids(&q).is_empty(), "read again after the announced change");
        assert_eq!(q.summary(), (0, None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn enqueues_arriving_together_share_commits() {
        let dir = temp("group");
        let q = Queue::open(&dir).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("g{i}");
                let tmp = q.tmp_path(&id);
                std::fs::write(&tmp, format!("message {i}")).unwrap();
                q.enqueue(tmp, record(&id)).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(q.list().unwrap().0.len(), 200);
        let c = &q.commits;
        assert_eq!(c.messages.load(Ordering::Relaxed), 200);
        let batches = c.batches.load(Ordering::Relaxed);
        let syncs = c.dir_syncs.load(Ordering::Relaxed);
        // At most one sync per subdirectory per batch; fewer batches than messages when they
        // arrive together.
        assert!(
            syncs <= batches * crate::spool::SUBDIRS,
            "{syncs} {batches}"
        );
        assert!(batches < 200, "{batches} batches for 200 messages");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn opening_recovers_from_a_crash_mid_enqueue() {
        let dir = temp("recover");
        let q = Queue::open(&dir).unwrap();
        let tmp = q.tmp_path("kept");
        std::fs::write(&tmp, b"kept").unwrap();
        q.enqueue(tmp, record("kept")).await.unwrap();
        // A crash between the two renames: content without its record; and a half-written
        // temporary file.
        std::fs::write(q.message_path("orphan"), b"never acknowledged").unwrap();
        std::fs::write(q.tmp_path("half"), b"half").unwrap();
        drop(q);
        let q = Queue::open(&dir).unwrap();
        let (all, _) = q.list().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, "kept");
        assert!(!q.message_path("orphan").exists());
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failed_enqueue_leaves_nothing_half_written() {
        let dir = temp("fail");
        let q = Queue::open(&dir).unwrap();
        // The content was never written: the commit fails, nothing is queued, tmp is clean.
        let err = q.enqueue(q.tmp_path("missing"), record("missing")).await;
        assert!(err.is_err());
        assert!(q.list().unwrap().0.is_empty());
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_never_hold_a_secret_field() {
        let json = serde_json::to_string(&record("x")).unwrap();
        for key in ["password", "secret", "code", "credential"] {
            assert!(!json.to_lowercase().contains(key), "{json}");
        }
    }
}
