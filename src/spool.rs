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

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub removed: usize,
    pub freed: u64,
    pub kept: usize,
    pub kept_bytes: u64,
}

/// Removes what the retention rules say must go. A message's `.eml` and `.json` share a stem
/// and go together.
pub fn sweep(dir: &Path, rules: &Retention, now: SystemTime) -> std::io::Result<Swept> {
    // (modified, stem, files with their sizes)
    let mut groups: std::collections::BTreeMap<String, (SystemTime, Vec<(PathBuf, u64)>)> =
        Default::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let path = entry.path();
        let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
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

    fn file(dir: &Path, name: &str, size: usize, age: Duration) {
        let path = dir.join(name);
        std::fs::write(&path, vec![b'x'; size]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn removes_by_age_then_oldest_first_by_size() {
        let dir = std::env::temp_dir().join(format!("spool-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let hour = Duration::from_secs(3600);
        file(&dir, "old.eml", 100, 48 * hour);
        file(&dir, "old.json", 10, 48 * hour);
        file(&dir, "mid.eml", 100, 3 * hour);
        file(&dir, "new.eml", 100, hour);
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
                freed: 210,
                kept: 1,
                kept_bytes: 100
            }
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["new.eml"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
