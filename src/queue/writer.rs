//! The queue's committer: one thread that writes every change to the journal, many at a
//! time with one sync (group commit), answers them, and keeps the journal's size in check.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::index::{Index, Located, Where};
use super::journal;
use super::store::{Body, Commits, Queued, not_queued, subdir_of, sync_dir};

pub(super) type Done = tokio::sync::oneshot::Sender<std::io::Result<()>>;

pub(super) enum Job {
    /// A new message: its record, and its content (bytes, or a file under `tmp/` written
    /// and not yet synced).
    Put {
        record: Queued,
        body: Body,
        done: Done,
    },
    Update {
        record: Queued,
        done: Done,
    },
    Remove {
        id: String,
        done: Done,
    },
}

/// The committer's side: the segment being written, and the segments on disk.
pub(super) struct Writer {
    dir: PathBuf,
    seq: u64,
    file: std::fs::File,
    len: u64,
    /// Every segment on disk, this one included.
    segments: BTreeSet<u64>,
    commits: Arc<Commits>,
    limits: Limits,
    /// Set when the journal could not be written and a new segment could not be started:
    /// every later change fails with it.
    broken: Option<String>,
}

/// The journal's sizes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A segment is closed and a new one started past this size.
    pub segment_max: u64,
    /// Closed segments kept before the oldest one's live messages are copied forward (so
    /// that one message waiting for days does not keep every segment written since).
    pub max_closed: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            segment_max: 32 * 1024 * 1024,
            max_closed: 4,
        }
    }
}

impl Writer {
    pub(super) fn create(
        dir: &Path,
        seq: u64,
        existing: Vec<u64>,
        commits: Arc<Commits>,
        limits: Limits,
    ) -> std::io::Result<Writer> {
        let file = Writer::new_segment(dir, seq)?;
        commits.dir_syncs.fetch_add(1, Ordering::Relaxed);
        let mut segments: BTreeSet<u64> = existing.into_iter().collect();
        segments.insert(seq);
        Ok(Writer {
            dir: dir.to_path_buf(),
            seq,
            file,
            len: 0,
            segments,
            commits,
            limits,
            broken: None,
        })
    }

    /// Creates segment `seq`, its name durable before anything in it is acknowledged.
    fn new_segment(dir: &Path, seq: u64) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let journal = dir.join("journal");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .read(true)
            .create_new(true)
            .mode(smtp_net::files::FILE_MODE)
            .open(journal.join(journal::segment_name(seq)))?;
        sync_dir(&journal)?;
        Ok(file)
    }

    /// Writes entries (kind, record, inline content) with one sync and applies them to the
    /// index. On an error nothing of it counts: the segment is cut back (and a new one
    /// started, so that a region whose sync failed is never trusted).
    pub(super) fn append_all(
        &mut self,
        entries: Vec<(journal::Kind, Queued, Option<Vec<u8>>)>,
        index: &mut Index,
    ) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(e) = &self.broken {
            return Err(std::io::Error::other(e.clone()));
        }
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for (kind, record, content) in &entries {
            let json = match kind {
                journal::Kind::Remove => Vec::new(),
                _ => serde_json::to_vec(record).map_err(std::io::Error::other)?,
            };
            let bytes = content.as_deref().unwrap_or(&[]);
            let at = journal::encode(&mut buf, *kind, &record.id, &json, bytes);
            placed.push((self.len + at as u64, bytes.len() as u32));
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            if let Err(again) = self.rotate() {
                self.broken = Some(format!(
                    "the queue's journal cannot be written: {e}; nor a new segment started: {again}"
                ));
            }
            return Err(e);
        }
        self.commits.journal_syncs.fetch_add(1, Ordering::Relaxed);
        for ((kind, record, _), (at, len)) in entries.into_iter().zip(placed) {
            match kind {
                journal::Kind::Put => index.put(
                    record,
                    self.seq,
                    Where::Inline {
                        seg: self.seq,
                        at,
                        len,
                    },
                ),
                journal::Kind::PutExternal => index.put(record, self.seq, Where::External),
                journal::Kind::Update => index.update(record, self.seq),
                journal::Kind::Remove => {
                    if let Some(l) = index.remove(&record.id)
                        && matches!(l.content, Where::External)
                    {
                        let id = &record.id;
                        let _ = std::fs::remove_file(
                            subdir_of(&self.dir, id).join(format!("{id}.eml")),
                        );
                    }
                }
            }
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let seq = self.seq + 1;
        self.file = Writer::new_segment(&self.dir, seq)?;
        self.commits.dir_syncs.fetch_add(1, Ordering::Relaxed);
        self.seq = seq;
        self.len = 0;
        self.segments.insert(seq);
        Ok(())
    }

    /// Takes every job waiting, commits them together, answers them, then keeps the
    /// journal's size in check.
    pub(super) fn run(
        mut self,
        mut rx: tokio::sync::mpsc::Receiver<Job>,
        index: &std::sync::Mutex<Index>,
    ) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            self.commit(batch, index);
            if let Err(e) = self.maintain(index) {
                tracing::error!(error = %e, "queue: cannot reclaim the journal's old segments");
            }
        }
    }

    fn commit(&mut self, batch: Vec<Job>, index: &std::sync::Mutex<Index>) {
        // Large contents first: synced, moved into msg/, their directories synced, all
        // before the entries that name them.
        let externals = self.place_external(&batch);
        let mut entries = Vec::with_capacity(batch.len());
        let mut answers: Vec<(Done, Result<(), std::io::Error>)> = Vec::new();
        let mut pending = Vec::with_capacity(batch.len());
        {
            let live = index.lock().unwrap_or_else(|e| e.into_inner());
            for (job, external) in batch.into_iter().zip(externals) {
                match job {
                    Job::Put { record, body, done } => match (body, external) {
                        (_, Some(Err(e))) => answers.push((done, Err(e))),
                        (Body::Bytes(b), _) => {
                            entries.push((journal::Kind::Put, record, Some(b)));
                            pending.push((done, true));
                        }
                        (Body::File(_), _) => {
                            entries.push((journal::Kind::PutExternal, record, None));
                            pending.push((done, true));
                        }
                    },
                    Job::Update { record, done } => {
                        if live.live.contains_key(&record.id) {
                            entries.push((journal::Kind::Update, record, None));
                            pending.push((done, false));
                        } else {
                            let e = not_queued(&record.id);
                            answers.push((done, Err(e)));
                        }
                    }
                    Job::Remove { id, done } => {
                        if live.live.contains_key(&id) {
                            let record = live.live[&id].record.clone();
                            entries.push((journal::Kind::Remove, record, None));
                            pending.push((done, false));
                        } else {
                            answers.push((done, Ok(())));
                        }
                    }
                }
            }
        }
        let puts: Vec<String> = entries
            .iter()
            .filter(|(k, ..)| *k == journal::Kind::PutExternal)
            .map(|(_, r, _)| r.id.clone())
            .collect();
        let result = if entries.is_empty() {
            Ok(())
        } else {
            let mut live = index.lock().unwrap_or_else(|e| e.into_inner());
            self.append_all(entries, &mut live)
        };
        if result.is_err() {
            for id in &puts {
                let _ = std::fs::remove_file(subdir_of(&self.dir, id).join(format!("{id}.eml")));
            }
        }
        self.commits.batches.fetch_add(1, Ordering::Relaxed);
        for (done, is_put) in pending {
            let r = match &result {
                Ok(()) => {
                    if is_put {
                        self.commits.messages.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = done.send(r);
        }
        for (done, r) in answers {
            let _ = done.send(r);
        }
    }

    /// The large contents of a batch's puts: each file synced (in parallel: the disk takes
    /// them together), renamed into `msg/`, then each directory synced once. One result per
    /// job (`None` for those without a file).
    fn place_external(&self, batch: &[Job]) -> Vec<Option<std::io::Result<()>>> {
        let files: Vec<(usize, &PathBuf, &str)> = batch
            .iter()
            .enumerate()
            .filter_map(|(n, j)| match j {
                Job::Put {
                    record,
                    body: Body::File(p),
                    ..
                } => Some((n, p, record.id.as_str())),
                _ => None,
            })
            .collect();
        let mut out: Vec<Option<std::io::Result<()>>> = batch.iter().map(|_| None).collect();
        if files.is_empty() {
            return out;
        }
        let synced: Vec<std::io::Result<()>> = std::thread::scope(|scope| {
            let handles: Vec<_> = files
                .chunks(files.len().div_ceil(SYNC_THREADS).max(1))
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|(_, tmp, id)| {
                                std::fs::File::open(tmp)?.sync_all()?;
                                std::fs::rename(
                                    tmp,
                                    subdir_of(&self.dir, id).join(format!("{id}.eml")),
                                )
                            })
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
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .map(|(_, _, id)| subdir_of(&self.dir, id))
            .collect();
        let dir_error = dirs.iter().find_map(|d| sync_dir(d).err());
        self.commits
            .dir_syncs
            .fetch_add(dirs.len() as u64, Ordering::Relaxed);
        for ((n, tmp, _), r) in files.into_iter().zip(synced) {
            let r = match (r, &dir_error) {
                (Ok(()), Some(e)) => Err(std::io::Error::other(format!(
                    "the queue directory could not be synced: {e}"
                ))),
                (r, _) => r,
            };
            if r.is_err() {
                let _ = std::fs::remove_file(tmp);
            }
            out[n] = Some(r);
        }
        out
    }

    /// Starts a new segment past [`Limits::segment_max`]; removes the oldest segments that no live
    /// message needs (oldest first, each removal synced before the next: a `remove` entry
    /// never outlives the `put` it cancels); past [`Limits::max_closed`] closed segments, copies the
    /// oldest one's live messages forward so that it can go.
    pub(super) fn maintain(&mut self, index: &std::sync::Mutex<Index>) -> std::io::Result<()> {
        if self.len >= self.limits.segment_max {
            self.rotate()?;
        }
        loop {
            let Some(&oldest) = self.segments.first() else {
                return Ok(());
            };
            if oldest == self.seq {
                return Ok(());
            }
            let needed = {
                let live = index.lock().unwrap_or_else(|e| e.into_inner());
                live.refs.get(&oldest).copied().unwrap_or(0)
            };
            if needed == 0 {
                let journal = self.dir.join("journal");
                match std::fs::remove_file(journal.join(journal::segment_name(oldest))) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                sync_dir(&journal)?;
                self.commits.dir_syncs.fetch_add(1, Ordering::Relaxed);
                self.commits
                    .segments_reclaimed
                    .fetch_add(1, Ordering::Relaxed);
                self.segments.remove(&oldest);
                index
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .refs
                    .remove(&oldest);
                continue;
            }
            if self.segments.len() - 1 <= self.limits.max_closed {
                return Ok(());
            }
            self.relocate(oldest, index)?;
        }
    }

    /// Copies the live messages that need segment `seg` into the current one.
    fn relocate(&mut self, seg: u64, index: &std::sync::Mutex<Index>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let movers: Vec<Located> = {
            let live = index.lock().unwrap_or_else(|e| e.into_inner());
            live.live
                .values()
                .filter(|l| {
                    l.record_seg == seg
                        || matches!(l.content, Where::Inline { seg: s, .. } if s == seg)
                })
                .cloned()
                .collect()
        };
        let old = std::fs::File::open(self.dir.join("journal").join(journal::segment_name(seg)))?;
        let mut entries = Vec::with_capacity(movers.len());
        for l in movers {
            let entry = match l.content {
                Where::Inline { seg: s, at, len } if s == seg => {
                    let mut content = vec![0; len as usize];
                    old.read_exact_at(&mut content, at)?;
                    (journal::Kind::Put, l.record, Some(content))
                }
                Where::Inline { .. } => (journal::Kind::Update, l.record, None),
                Where::External => (journal::Kind::PutExternal, l.record, None),
            };
            entries.push(entry);
        }
        let n = entries.len() as u64;
        let mut live = index.lock().unwrap_or_else(|e| e.into_inner());
        self.append_all(entries, &mut live)?;
        self.commits.relocated.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// Threads that sync a batch's large files at once.
const SYNC_THREADS: usize = 8;

/// Jobs committed together at most.
const MAX_BATCH: usize = 1024;

/// Jobs waiting for the committer at most; beyond, a change waits for room (sessions are
/// bounded by `max_sessions` long before this, so it is a backstop, not a limit met).
pub(super) const MAX_PENDING_JOBS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// A write the journal refuses (here: a segment handle opened read-only, so that the
    /// write itself fails) fails its batch and nothing of it counts; the writer starts a new
    /// segment and the next batch is committed there.
    #[test]
    fn a_failed_write_fails_its_batch_and_the_next_goes_to_a_new_segment() {
        let dir = std::env::temp_dir().join(format!("queue-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("journal")).unwrap();
        let commits = Arc::new(Commits::default());
        let mut w = Writer::create(&dir, 0, Vec::new(), commits, Limits::default()).unwrap();
        let mut index = Index::default();
        let rec = super::super::store::tests::record;
        let put = |id: &str| (journal::Kind::Put, rec(id), Some(b"content".to_vec()));
        w.append_all(vec![put("a")], &mut index).unwrap();
        let path = dir.join("journal").join(journal::segment_name(0));
        w.file = std::fs::File::open(&path).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(w.append_all(vec![put("b")], &mut index).is_err());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len,
            "nothing of it written"
        );
        assert!(!index.live.contains_key("b"));
        assert_eq!(w.seq, 1, "a new segment");
        w.append_all(vec![put("c")], &mut index).unwrap();
        let (replayed, seqs) = super::super::index::replay(&dir.join("journal"), true).unwrap();
        assert_eq!(seqs, [0, 1]);
        let mut ids: Vec<&String> = replayed.live.keys().collect();
        ids.sort();
        assert_eq!(ids, ["a", "c"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
