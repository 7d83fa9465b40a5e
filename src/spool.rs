//! Spool retention: the spool keeps every message, so it is swept by age and by total size
//! (oldest first), or it would fill the disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long and how much the spool keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Files older than this are removed.
    pub max_age: Duration,
    /// Beyond this total, the oldest files are removed first.
    pub max_bytes: u64,
    /// How often the sweep runs.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(30 * 86_400),
            max_bytes: 10 * 1024 * 1024 * 1024,
            interval: Duration::from_secs(600),
        }
    }
}

/// Messages are spread over this many subdirectories (`0`..`f`), as Postfix hashes its
/// queue: file creation in one directory serialises on the directory's lock, and measured
/// here (ext4, 8 writers) one directory took 2,300 files/s where 16 took 25,000.
pub const SUBDIRS: u64 = 16;

/// The subdirectory of message `id`: one hex digit of a hash of the id.
pub fn subdir(id: &str) -> String {
    // The high bits: FNV-1a's low bits spread poorly.
    format!("{:x}", (crate::fnv64(id.as_bytes()) >> 32) % SUBDIRS)
}

/// `dir/<subdir>/<id>.<ext>`.
pub fn path_for(dir: &Path, id: &str, ext: &str) -> PathBuf {
    dir.join(subdir(id)).join(format!("{id}.{ext}"))
}

/// Creates the spool directory and its subdirectories, private to the relay's user.
pub fn create(dir: &Path) -> std::io::Result<()> {
    smtp_net::files::private_dir(dir)?;
    for i in 0..SUBDIRS {
        smtp_net::files::private_dir(&dir.join(format!("{i:x}")))?;
    }
    smtp_net::files::private_dir(&dir.join(RECORDS))
}

/// The spool's record logs: `<n>.jsonl`, a message's record per line.
pub const RECORDS: &str = "records";

/// The number after the highest record log in `dir` (1 when there is none).
pub fn next_record_log(dir: &Path) -> std::io::Result<u64> {
    let mut next = 1;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            next = next.max(n + 1);
        }
    }
    Ok(next)
}

/// Opens a new record log in `dir` for appending, numbered from `next`; never one that exists
/// (no file of an earlier run is replaced).
pub fn new_record_log(
    dir: &Path,
    next: &std::sync::atomic::AtomicU64,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    loop {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(smtp_net::files::FILE_MODE)
            .open(dir.join(format!("{n:08}.jsonl")))
        {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            opened => return opened,
        }
    }
}

/// Every message record in the spool in `dir`, oldest log first, in the order written (a line
/// that does not parse, as a torn last line after a crash, is skipped).
pub fn records(dir: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    let logs = dir.join(RECORDS);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&logs)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read(&path)?;
        out.extend(
            text.split(|b| *b == b'\n')
                .filter_map(|line| serde_json::from_slice(line).ok()),
        );
    }
    Ok(out)
}

/// The record of message `id` (the last, if several).
pub fn record(dir: &Path, id: &str) -> std::io::Result<Option<serde_json::Value>> {
    Ok(records(dir)?.into_iter().rev().find(|r| r["id"] == id))
}

/// Creates (or truncates) a file only the relay's user can read: every message, record and
/// queue file goes through here or [`write_private`].
pub async fn create_private(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(smtp_net::files::FILE_MODE)
        .open(path)
        .await
}

/// [`create_private`] for blocking code.
pub fn create_private_sync(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(smtp_net::files::FILE_MODE)
        .open(path)
}

/// Writes `bytes` to a private file (see [`create_private`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    create_private_sync(path)?.write_all(bytes)
}

/// Every file of the spool: in its subdirectories, and directly in it (older spools).
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() {
            out.push(entry.path());
        } else if kind.is_dir() {
            for inner in std::fs::read_dir(entry.path())? {
                let inner = inner?;
                if inner.file_type()?.is_file() {
                    out.push(inner.path());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub removed: usize,
    pub freed: u64,
    pub kept: usize,
    pub kept_bytes: u64,
}

/// Removes what the retention rules say must go. A message's `.eml` and `.dsn.eml` (and, in
/// spools of earlier versions, `.json`) share a stem and go together; a record log is a file
/// of its own, removed by age or oldest first like the others.
pub fn sweep(dir: &Path, rules: &Retention, now: SystemTime) -> std::io::Result<Swept> {
    // (modified, stem, files with their sizes)
    let mut groups: std::collections::BTreeMap<String, (SystemTime, Vec<(PathBuf, u64)>)> =
        Default::default();
    for path in files(dir)? {
        let meta = std::fs::metadata(&path)?;
        // A message's files share its id: `<id>.eml`, `<id>.json`, `<id>.dsn.eml`.
        let Some(name) = path.file_name().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let stem = [".dsn.eml", ".eml", ".json"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext))
            .unwrap_or(&name)
            .to_string();
        let modified = meta.modified().unwrap_or(now);
        let group = groups.entry(stem).or_insert((modified, Vec::new()));
        group.0 = group.0.max(modified);
        group.1.push((path, meta.len()));
    }
    let mut groups: Vec<(SystemTime, Vec<(PathBuf, u64)>)> = groups.into_values().collect();
    groups.sort_by_key(|(t, _)| *t);
    let mut total: u64 = groups
        .iter()
        .flat_map(|(_, f)| f.iter().map(|(_, n)| n))
        .sum();
    let mut swept = Swept::default();
    for (modified, files) in &groups {
        let size: u64 = files.iter().map(|(_, n)| n).sum();
        let too_old = now.duration_since(*modified).unwrap_or_default() > rules.max_age;
        if too_old || total > rules.max_bytes {
            for (path, _) in files {
                std::fs::remove_file(path)?;
            }
            swept.removed += 1;
            swept.freed += size;
            total -= size;
        } else {
            swept.kept += 1;
            swept.kept_bytes += size;
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, id: &str, ext: &str, size: usize, age: Duration) {
        let path = path_for(dir, id, ext);
        std::fs::write(&path, vec![b'x'; size]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn removes_by_age_then_oldest_first_by_size() {
        let dir = std::env::temp_dir().join(format!("spool-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        create(&dir).unwrap();
        let hour = Duration::from_secs(3600);
        // Ids hold dots, as the relay's do; a message's three files go together.
        let old = "20261124T060000.000001-1";
        file(&dir, old, "eml", 100, 48 * hour);
        file(&dir, old, "json", 10, 48 * hour);
        file(&dir, old, "dsn.eml", 5, 48 * hour);
        file(&dir, "20261126T030000.000001-2", "eml", 100, 3 * hour);
        file(&dir, "20261126T050000.000001-3", "eml", 100, hour);
        let rules = Retention {
            max_age: 24 * hour,
            max_bytes: 150,
            interval: hour,
        };
        let swept = sweep(&dir, &rules, SystemTime::now()).unwrap();
        assert_eq!(
            swept,
            Swept {
                removed: 2,
                freed: 215,
                kept: 1,
                kept_bytes: 100
            }
        );
        let left: Vec<_> = files(&dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["20261126T050000.000001-3.eml"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids_spread_over_the_subdirectories() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let d = subdir(&format!("20261126T060000.{i:06}-{i}"));
            assert_eq!(d.len(), 1);
            seen.insert(d);
        }
        assert_eq!(seen.len() as u64, SUBDIRS);
    }
}
