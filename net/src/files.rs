//! Files a server writes about its sessions (transcripts, raw DATA copies): private to the user
//! that runs it, numbered on from the last run, never replacing a file that is there.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory the relay and the fake create: mail is nobody else's business.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file they create.
pub const FILE_MODE: u32 = 0o600;

/// Makes every file and directory this process creates from now on private (umask 077), as
/// Postfix does for its queue. Called first by the binaries; the library's own writes also
/// ask for private modes, so this covers what third-party code (the log appender) creates.
pub fn private_umask() {
    // SAFETY: umask only swaps the process's file mode mask; it has no failure mode.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `dir` and its missing parents as private directories, and makes `dir` itself
/// private if an earlier version left it open to others.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// The number a new run's first session takes so that its files follow the last run's: one
/// more than the highest number that starts a file name in `dir` (`000041.log`,
/// `000041-2.data`); 1 when there is none or `dir` cannot be read.
pub fn next_number(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 1;
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            let name = name.to_str()?;
            let digits = name
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(name.len());
            name[..digits].parse::<u64>().ok()
        })
        .max()
        .map_or(1, |n| n.saturating_add(1))
}

/// Writes `bytes` to `dir/<stem>.<ext>` as a new private file; when that name is taken (another
/// process sharing the directory, a clock or counter gone back), to `<stem>-2.<ext>`,
/// `<stem>-3.<ext>`... Never replaces a file. Returns the path written.
pub fn write_new(dir: &Path, stem: &str, ext: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    private_dir(dir)?;
    for n in 1u32.. {
        let path = match n {
            1 => dir.join(format!("{stem}.{ext}")),
            n => dir.join(format!("{stem}-{n}.{ext}")),
        };
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path);
        match opened {
            Ok(mut f) => {
                f.write_all(bytes)?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// [`write_new`] off the async threads.
pub async fn write_new_async(
    dir: PathBuf,
    stem: String,
    ext: &'static str,
    bytes: Vec<u8>,
) -> std::io::Result<PathBuf> {
    tokio::task::spawn_blocking(move || write_new(&dir, &stem, ext, &bytes))
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("smtp-net-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn numbering_goes_on_from_the_last_run() {
        let d = temp("next");
        assert_eq!(next_number(&d), 1);
        std::fs::create_dir_all(&d).unwrap();
        for name in ["000002.log", "000041-2.data", "notes.txt", "000007.log"] {
            std::fs::write(d.join(name), "").unwrap();
        }
        assert_eq!(next_number(&d), 42);
    }

    #[test]
    fn a_file_is_never_replaced_and_is_private() {
        let d = temp("new");
        let a = write_new(&d, "000001", "log", b"first").unwrap();
        let b = write_new(&d, "000001", "log", b"second").unwrap();
        assert_eq!(a, d.join("000001.log"));
        assert_eq!(b, d.join("000001-2.log"));
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        assert_eq!(std::fs::read(&b).unwrap(), b"second");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a), 0o600);
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn an_open_directory_is_made_private() {
        let d = temp("open");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
