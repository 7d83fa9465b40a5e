//! The web page's list of messages: one entry per accepted message of every server shown,
//! with what a list and a search need (envelope, decoded Subject, From and To headers), fed
//! live from each server's [`Handle::subscribe`] and, at start, from the history the server
//! remembers and the mailboxes an earlier run left on disk.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::{Notify, broadcast};

use crate::server::Handle;
use crate::store::{self, Received};

/// The most of a message read to list it: its header block is expected within.
pub const HEAD_MAX: usize = 64 * 1024;

/// The most messages the list holds (the oldest leave it first, their files stay): a load run
/// through a fake with its page on does not grow it without end.
pub const MAX_ENTRIES: usize = 100_000;

/// A message as the list shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// Newer messages have larger numbers (the list's order, and the SSE event id).
    pub seq: u64,
    /// The server that accepted it (`163`, `qq-mx`, ...).
    pub server: String,
    pub id: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Decoded (RFC 2047: `=?GB2312?B?...?=` as Foxmail sends it).
    pub subject: String,
    /// The From and To headers, decoded.
    pub from: String,
    pub to: String,
    pub size: u64,
    pub received_at: String,
    pub tls: bool,
    pub auth: Option<String>,
    pub reply: String,
    /// The message came from an earlier run's mailboxes, not from this server's memory.
    pub from_disk: bool,
    #[serde(skip)]
    pub received: Received,
    /// Lower-cased once, for searches: recipients and To; sender and From; Subject; id.
    #[serde(skip)]
    search: [String; 4],
}

impl Entry {
    /// An entry for `received`, its Subject, From and To read from `head` (its header block).
    pub fn new(server: &str, received: Received, head: &[u8], from_disk: bool) -> Entry {
        let parsed = mail_parser::MessageParser::default().parse_headers(head);
        let address = |a: Option<&mail_parser::Address<'_>>| {
            a.map(|a| {
                a.iter()
                    .map(|m| match (m.name(), m.address()) {
                        (Some(n), Some(a)) => format!("{n} <{a}>"),
                        (None, Some(a)) => a.to_string(),
                        (Some(n), None) => n.to_string(),
                        (None, None) => String::new(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
        };
        let (subject, from, to) = match &parsed {
            Some(m) => (
                m.subject().unwrap_or_default().to_string(),
                address(m.from()),
                address(m.to()),
            ),
            None => Default::default(),
        };
        let search = [
            format!("{} {}", received.rcpt_to.join(" "), to).to_lowercase(),
            format!("{} {}", received.mail_from, from).to_lowercase(),
            subject.to_lowercase(),
            received.id.to_lowercase(),
        ];
        Entry {
            search,
            seq: 0,
            server: server.to_string(),
            id: received.id.clone(),
            mail_from: received.mail_from.clone(),
            rcpt_to: received.rcpt_to.clone(),
            subject,
            from,
            to,
            size: received.size,
            received_at: received.received_at.clone(),
            tls: received.tls,
            auth: received.auth.clone(),
            reply: received.reply.clone(),
            from_disk,
            received,
        }
    }

    /// Whether it matches a search (each given field, case-insensitive, as a substring).
    pub fn matches(&self, f: &Filter) -> bool {
        let [to, from, subject, id] = &self.search;
        f.server
            .as_ref()
            .is_none_or(|s| self.server.eq_ignore_ascii_case(s))
            && f.to.as_ref().is_none_or(|t| to.contains(t.as_str()))
            && f.from.as_ref().is_none_or(|t| from.contains(t.as_str()))
            && f.subject
                .as_ref()
                .is_none_or(|t| subject.contains(t.as_str()))
            && f.q.as_ref().is_none_or(|t| {
                to.contains(t.as_str())
                    || from.contains(t.as_str())
                    || subject.contains(t.as_str())
                    || id.contains(t.as_str())
            })
    }
}

/// A search: every field given must match (lower-cased when built by [`Filter::new`]).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub server: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    pub subject: Option<String>,
    pub q: Option<String>,
}

impl Filter {
    pub fn new(
        server: Option<String>,
        to: Option<String>,
        from: Option<String>,
        subject: Option<String>,
        q: Option<String>,
    ) -> Filter {
        let clean =
            |v: Option<String>| v.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
        Filter {
            server: clean(server),
            to: clean(to),
            from: clean(from),
            subject: clean(subject),
            q: clean(q),
        }
    }
}

/// What the page is told as it happens (the SSE stream).
#[derive(Clone, Debug)]
pub enum Change {
    Added(Arc<Entry>),
    Deleted { server: String, id: String },
    Cleared,
    Faults { server: String },
}

#[derive(Default)]
struct Inner {
    by_seq: BTreeMap<u64, Arc<Entry>>,
    /// (server, id) to seq.
    by_id: HashMap<(String, String), u64>,
    next_seq: u64,
}

/// Every message of the servers shown, newest last.
pub struct Index {
    inner: RwLock<Inner>,
    /// Woken whenever a message is added (for `wait=`).
    pub added: Notify,
    pub changes: broadcast::Sender<Change>,
}

/// One page of a search.
#[derive(Serialize)]
pub struct Page {
    /// How many messages match in all.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// Newest first.
    pub messages: Vec<Arc<Entry>>,
}

impl Index {
    pub fn new() -> Arc<Index> {
        Arc::new(Index {
            inner: RwLock::default(),
            added: Notify::new(),
            changes: broadcast::channel(1024).0,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a message unless it is there already; whether it was added.
    pub fn add(&self, mut entry: Entry) -> bool {
        let entry = {
            let mut inner = self.write();
            let key = (entry.server.clone(), entry.id.clone());
            if inner.by_id.contains_key(&key) {
                return false;
            }
            inner.next_seq += 1;
            entry.seq = inner.next_seq;
            let entry = Arc::new(entry);
            inner.by_id.insert(key, entry.seq);
            inner.by_seq.insert(entry.seq, entry.clone());
            while inner.by_seq.len() > MAX_ENTRIES {
                if let Some((_, old)) = inner.by_seq.pop_first() {
                    inner.by_id.remove(&(old.server.clone(), old.id.clone()));
                }
            }
            entry
        };
        self.added.notify_waiters();
        let _ = self.changes.send(Change::Added(entry));
        true
    }

    pub fn len(&self) -> usize {
        self.read().by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message `id` (on `server` when given; ids of different servers may repeat). The
    /// id as its file is named (`/` as `_`: 163's ids may hold a `/`) finds it too.
    pub fn get(&self, server: Option<&str>, id: &str) -> Option<Arc<Entry>> {
        let inner = self.read();
        let exact = match server {
            Some(s) => inner
                .by_id
                .get(&(s.to_string(), id.to_string()))
                .and_then(|seq| inner.by_seq.get(seq))
                .cloned(),
            None => inner.by_seq.values().rev().find(|e| e.id == id).cloned(),
        };
        exact.or_else(|| {
            inner
                .by_seq
                .values()
                .rev()
                .find(|e| {
                    store::file_stem(&e.id) == id
                        && server.is_none_or(|s| e.server.eq_ignore_ascii_case(s))
                })
                .cloned()
        })
    }

    /// Newest first: the `limit` messages after the first `offset` that match.
    pub fn search(&self, filter: &Filter, offset: usize, limit: usize) -> Page {
        let inner = self.read();
        let mut total = 0;
        let mut messages = Vec::new();
        for e in inner.by_seq.values().rev() {
            if !e.matches(filter) {
                continue;
            }
            if total >= offset && messages.len() < limit {
                messages.push(e.clone());
            }
            total += 1;
        }
        Page {
            total,
            offset,
            limit,
            messages,
        }
    }

    /// Removes a message from the list (its files are the caller's).
    pub fn remove(&self, server: &str, id: &str) -> Option<Arc<Entry>> {
        let removed = {
            let mut inner = self.write();
            let seq = inner.by_id.remove(&(server.to_string(), id.to_string()))?;
            inner.by_seq.remove(&seq)
        };
        let _ = self.changes.send(Change::Deleted {
            server: server.to_string(),
            id: id.to_string(),
        });
        removed
    }

    /// Empties the list; what it held.
    pub fn clear(&self) -> Vec<Arc<Entry>> {
        let all = {
            let mut inner = self.write();
            inner.by_id.clear();
            std::mem::take(&mut inner.by_seq).into_values().collect()
        };
        let _ = self.changes.send(Change::Cleared);
        all
    }

    /// Lists `handle`'s messages, from now on as they arrive: the mailboxes an earlier run
    /// left in its data directory, the history it remembers, then each new one.
    pub fn follow(self: &Arc<Index>, name: String, handle: Handle) {
        // Subscribed before the history is read: nothing falls between the two (the index
        // drops what it has twice).
        let mut arrivals = handle.subscribe();
        let index = self.clone();
        tokio::spawn(async move {
            let dir = handle.data_dir().join("mailboxes");
            let remembered: std::collections::HashSet<String> =
                handle.received().into_iter().map(|r| r.id).collect();
            let old = tokio::task::spawn_blocking(move || from_disk(&dir))
                .await
                .unwrap_or_default();
            for (r, head) in old {
                if !remembered.contains(&r.id) {
                    index.add(Entry::new(&name, r, &head, true));
                }
            }
            for r in handle.received() {
                index.add(entry_of(&name, r).await);
            }
            loop {
                match arrivals.recv().await {
                    Ok(r) => {
                        index.add(entry_of(&name, r).await);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for r in handle.received() {
                            index.add(entry_of(&name, r).await);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}

/// An entry for a message the server remembers: its header block from memory, or from its
/// delivered copy on disk when the server kept no content.
async fn entry_of(server: &str, r: Received) -> Entry {
    let head = if r.content.is_empty() {
        match r.files.first() {
            Some(path) => read_head(path).await,
            None => Vec::new(),
        }
    } else {
        head_of(&r.content).to_vec()
    };
    Entry::new(server, r, &head, false)
}

/// The header block of a message (at most [`HEAD_MAX`] octets).
pub fn head_of(message: &[u8]) -> &[u8] {
    let cut = &message[..message.len().min(HEAD_MAX)];
    match memchr::memmem::find(cut, b"\r\n\r\n") {
        Some(i) => &cut[..i + 4],
        None => cut,
    }
}

/// The first [`HEAD_MAX`] octets of a file, cut at its header block's end.
pub async fn read_head(path: &Path) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    if let Ok(f) = tokio::fs::File::open(path).await {
        let _ = f.take(HEAD_MAX as u64).read_to_end(&mut buf).await;
    }
    let n = head_of(&buf).len();
    buf.truncate(n);
    buf
}

/// The messages in `mailboxes/*/<id>.json` with their delivered copies' header blocks; a
/// message to several recipients once (its JSON lists every copy).
fn from_disk(mailboxes: &Path) -> Vec<(Received, Vec<u8>)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let Ok(boxes) = std::fs::read_dir(mailboxes) else {
        return out;
    };
    let mut jsons: Vec<std::path::PathBuf> = boxes
        .flatten()
        .filter_map(|b| std::fs::read_dir(b.path()).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    jsons.sort();
    for path in jsons {
        let Some(r) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Received>(&b).ok())
        else {
            continue;
        };
        if !seen.insert(r.id.clone()) {
            continue;
        }
        let head = {
            use std::io::Read;
            let mut buf = Vec::new();
            if let Ok(f) = std::fs::File::open(path.with_extension("eml")) {
                let _ = f.take(HEAD_MAX as u64).read_to_end(&mut buf);
            }
            let n = head_of(&buf).len();
            buf.truncate(n);
            buf
        };
        out.push((r, head));
    }
    // Oldest first, as they arrived (RFC 3339 times of one clock sort as text).
    out.sort_by(|a, b| a.0.received_at.cmp(&b.0.received_at));
    out
}

/// Deletes the files of a message the server no longer remembers (an earlier run's).
pub async fn remove_files(r: &Received) {
    store::remove_message(r).await;
}
