//! The queue's live messages in memory, and where their parts are in the journal: built by
//! replaying the segments, kept up to date by the committer ([`super::writer`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::journal;
use super::store::Queued;

/// Where a live message's parts are.
#[derive(Clone, Debug)]
pub(super) struct Located {
    pub(super) record: Queued,
    /// The segment of the entry that holds the current record.
    pub(super) record_seg: u64,
    pub(super) content: Where,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Where {
    /// In a `put` entry of segment `seg`, at `at`.
    Inline { seg: u64, at: u64, len: u32 },
    /// In `msg/<h>/<id>.eml`.
    External,
}

/// The live messages and which segments they need: a segment that no live message needs is
/// removed (oldest first).
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) live: HashMap<String, Located>,
    /// Segment -> how many live records and contents are in it.
    pub(super) refs: BTreeMap<u64, usize>,
    /// What could not be read when the journal was replayed.
    pub(super) bad: Vec<(PathBuf, String)>,
}

impl Index {
    fn hold(&mut self, seg: u64) {
        *self.refs.entry(seg).or_default() += 1;
    }

    fn release(&mut self, seg: u64) {
        if let Some(n) = self.refs.get_mut(&seg) {
            *n = n.saturating_sub(1);
        }
    }

    fn release_all(&mut self, l: &Located) {
        self.release(l.record_seg);
        if let Where::Inline { seg, .. } = l.content {
            self.release(seg);
        }
    }

    /// A message put (or put again, when copied forward).
    pub(super) fn put(&mut self, record: Queued, seg: u64, content: Where) {
        self.hold(seg);
        if let Where::Inline { seg, .. } = content {
            self.hold(seg);
        }
        let id = record.id.clone();
        let located = Located {
            record,
            record_seg: seg,
            content,
        };
        if let Some(old) = self.live.insert(id, located) {
            self.release_all(&old);
        }
    }

    pub(super) fn update(&mut self, record: Queued, seg: u64) {
        let Some(l) = self.live.get_mut(&record.id) else {
            return;
        };
        let old = std::mem::replace(&mut l.record_seg, seg);
        l.record = record;
        self.hold(seg);
        self.release(old);
    }

    pub(super) fn remove(&mut self, id: &str) -> Option<Located> {
        let l = self.live.remove(id)?;
        self.release_all(&l);
        Some(l)
    }

    /// One entry read back from segment `seg`.
    pub(super) fn replay(&mut self, seg: u64, path: &Path, e: journal::Entry) {
        let record = || -> Result<Queued, String> {
            let r: Queued = serde_json::from_slice(&e.record).map_err(|x| x.to_string())?;
            if r.id != e.id {
                return Err(format!("the record is {:?}'s", r.id));
            }
            Ok(r)
        };
        let bad = |index: &mut Index, why: String| {
            index
                .bad
                .push((path.to_path_buf(), format!("{}: {why}", e.id)))
        };
        match e.kind {
            journal::Kind::Put | journal::Kind::PutExternal => match record() {
                Ok(r) => {
                    let content = if e.kind == journal::Kind::Put {
                        Where::Inline {
                            seg,
                            at: e.content_at,
                            len: e.content_len,
                        }
                    } else {
                        Where::External
                    };
                    self.put(r, seg, content);
                }
                Err(why) => bad(self, why),
            },
            journal::Kind::Update => match record() {
                Ok(r) => self.update(r, seg),
                Err(why) => bad(self, why),
            },
            journal::Kind::Remove => {
                self.remove(&e.id);
            }
        }
    }

    pub(super) fn sorted(&self) -> Vec<Queued> {
        let mut records: Vec<Queued> = self.live.values().map(|l| l.record.clone()).collect();
        records.sort_by(|a, b| a.received_at.cmp(&b.received_at).then(a.id.cmp(&b.id)));
        records
    }
}

/// The segments in `journal/`, by sequence number.
pub(super) fn segments(journal: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(journal)? {
        if let Some(seq) = entry?.file_name().to_str().and_then(journal::segment_seq) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Reads every segment into an index. The holder cuts a torn tail off the last segment (a
/// crash during a write: nothing from there on was acknowledged); an observer leaves it (it
/// may be a write in progress). A bad entry anywhere else is damage: reported, and what
/// follows it in that segment is not read.
pub(super) fn replay(journal: &Path, holder: bool) -> std::io::Result<(Index, Vec<u64>)> {
    let seqs = segments(journal)?;
    let mut index = Index::default();
    for (n, &seq) in seqs.iter().enumerate() {
        let path = journal.join(journal::segment_name(seq));
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Reclaimed by the holder since the listing (an observer).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !holder => continue,
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        let end = journal::scan(&file, |e| entries.push(e))?;
        for e in entries {
            index.replay(seq, &path, e);
        }
        if let journal::End::Torn { offset, why } = end {
            let last = n + 1 == seqs.len();
            if holder && last {
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(offset)?;
                f.sync_all()?;
            } else if holder || !last {
                index.bad.push((
                    path.clone(),
                    format!("at offset {offset}: {why}; the rest of this segment is not read"),
                ));
            }
        }
    }
    Ok((index, seqs))
}
