//! One Herald per embedded database. A node on SQLite takes every pending delivery back on start
//! (whatever a previous run held in memory died with it), so a second process on the same file
//! would take the first one's deliveries too and send each of them twice. `serve` and `migrate`
//! hold an exclusive lock on `<database>.lock` while they use the file; the operating system lets
//! go of it when the process ends, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long to wait for a lock held by someone else: a process that is stopping, or an app of
/// this process's own that is (tests, embedding), lets go of it within that.
const WAIT: Duration = Duration::from_secs(3);

/// Held while the database is in use; dropping it unlocks.
#[derive(Debug)]
pub struct DatabaseLock {
    _file: File,
}

impl DatabaseLock {
    /// Locks the database at `db_path`, or says who holds it.
    pub fn acquire(db_path: &Path) -> anyhow::Result<Self> {
        Self::acquire_or_advise(
            db_path,
            "stop it first, or give this one a --data-dir of its own (nodes that share data use \
             PostgreSQL: --database-url)",
        )
    }

    /// [`Self::acquire`], with `advice` on what to do when another process holds it.
    pub fn acquire_or_advise(db_path: &Path, advice: &str) -> anyhow::Result<Self> {
        let path = lock_path(db_path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                let dir = path.parent().unwrap_or(&path);
                let hint = crate::data_dir::permission_hint(&e, dir);
                anyhow::Error::new(e).context(format!(
                    "could not open the lock file {}{hint}",
                    path.display()
                ))
            })?;
        let deadline = Instant::now() + WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    let holder = read_holder(&mut file);
                    bail!(
                        "another Herald{holder} is using this database (it holds {}); {advice}",
                        path.display()
                    );
                }
                // A file system without locks (NFS without its lock daemon answers ENOLCK): run,
                // as before there was a lock, and say so.
                Err(TryLockError::Error(e)) if cannot_lock(&e) => {
                    tracing::warn!(
                        lock = %path.display(),
                        "this file system cannot lock files; make sure no other Herald uses this \
                         data directory"
                    );
                    break;
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("could not lock {}", path.display()));
                }
            }
        }
        // Who holds it, for the message a second process shows; the lock is what counts.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(Self { _file: file })
    }
}

/// Whether an error says that this file system has no locks, rather than that locking failed.
fn cannot_lock(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(e.raw_os_error(), Some(code) if code == libc::ENOLCK || code == libc::ENOTSUP || code == libc::EOPNOTSUPP)
}

fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// ` (process 1234)` from the lock file, or nothing if it says nothing readable.
fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match text.trim().parse::<u32>() {
        Ok(pid) => format!(" (process {pid})"),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_database_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("herald.db");
        let first = DatabaseLock::acquire(&db).unwrap();
        let started = Instant::now();
        let err = DatabaseLock::acquire(&db).unwrap_err();
        assert!(started.elapsed() >= WAIT, "it waited before refusing");
        let message = format!("{err:#}");
        assert!(
            message.contains(&format!("process {}", std::process::id()))
                && message.contains("herald.db.lock")
                && message.contains("--data-dir"),
            "{message}"
        );
        drop(first);
        DatabaseLock::acquire(&db).expect("free once the first is dropped");
    }
}
