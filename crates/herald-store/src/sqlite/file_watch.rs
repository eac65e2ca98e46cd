//! Whether the database's files are still there. Removing `herald.db` or its write-ahead log
//! `herald.db-wal` under a running Herald (a clean-up script, an operator tidying up) goes
//! unseen by SQLite, which keeps writing to the removed files: what is stored from then on,
//! and in the log's case what was stored since the last checkpoint, is lost when the process
//! exits. So the writer thread looks (a `stat` of each file, at most once a second) before each
//! group commit, and while either file is missing commits nothing. The first time, still on the
//! writer's connection, which has both removed files open and sees everything committed, it
//! puts what it can back where a restart finds it: a missing log is checkpointed into
//! `herald.db`; a missing `herald.db` is copied whole beside it.
//!
//! Only a missing file counts: a file put in the place of one (a restore while running) is
//! reported by `/readyz` ([`FileWatch::replaced`]) but does not stop writes, and an error
//! other than "not found" (a permission, a network file system's hiccup) is no proof either.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How long a look at the files is trusted.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A file as the file system knows it: device and inode.
pub(super) type Identity = (u64, u64);

pub(super) fn identity(path: &Path) -> Option<Identity> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn missing(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// What was done, once, for what the removed files hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rescue {
    /// The removed log's content is in `herald.db` now.
    Checkpointed,
    /// `herald.db` is copied whole to this file.
    Copied(PathBuf),
    Failed(String),
}

pub(super) struct FileWatch {
    db: PathBuf,
    wal: PathBuf,
    /// The database file opened, to tell a file put in its place.
    db_opened: Option<Identity>,
    /// The writer's last look: when, and what was missing.
    last: Mutex<Option<(Instant, Option<String>)>>,
    rescue: Mutex<Option<Rescue>>,
}

impl FileWatch {
    pub(super) fn new(db: &Path) -> Self {
        Self {
            db_opened: identity(db),
            db: db.to_path_buf(),
            wal: wal_of(db),
            last: Mutex::new(None),
            rescue: Mutex::new(None),
        }
    }

    /// Whether the database file is the one opened (for the stop's checkpoint, which must not
    /// write into a file put in its place).
    pub(super) fn database_is_the_one_opened(&self) -> bool {
        self.db_opened.is_some() && identity(&self.db) == self.db_opened
    }

    /// Which of the files is missing, in words. A log moved into `herald.db` stays so until a
    /// restart, whatever is at its path since: SQLite writes on to the one it has open.
    fn look(&self) -> Option<String> {
        let moved_in = *self.rescue.lock().expect("file watch lock") == Some(Rescue::Checkpointed);
        if missing(&self.db) {
            Some(format!("the database file {}", self.db.display()))
        } else if moved_in || missing(&self.wal) {
            Some(format!(
                "its write-ahead log {} (which holds what was stored since the last checkpoint)",
                self.wal.display()
            ))
        } else {
            None
        }
    }

    /// Run by the writer thread before each group, between transactions: why nothing may be
    /// committed now, if a file is missing (a look at most [`LOOK_EVERY`] old). The first time,
    /// it is logged, and what the removed files hold is put back through `conn`.
    pub(super) fn before_commit(&self, conn: &Connection) -> Option<String> {
        let missing = {
            let mut last = self.last.lock().expect("file watch lock");
            match &*last {
                Some((at, found)) if at.elapsed() < LOOK_EVERY => found.clone(),
                _ => {
                    let found = self.look();
                    *last = Some((Instant::now(), found.clone()));
                    found
                }
            }
        };
        let Some(missing) = missing else {
            // Put back where they were (a directory moved and moved back): writes go on, and
            // a later removal saves again what it holds then.
            if self
                .rescue
                .lock()
                .expect("file watch lock")
                .take()
                .is_some()
            {
                tracing::warn!(
                    "the database's files are back where Herald opened them: it stores again"
                );
            }
            return None;
        };
        let first = self.rescue.lock().expect("file watch lock").is_none();
        if first {
            tracing::error!(
                "{missing} was removed while Herald ran: Herald stores nothing more until it is \
                 restarted (events are answered 503)"
            );
            let rescue = self.put_back(conn);
            match &rescue {
                Rescue::Failed(why) => {
                    tracing::error!(error = %why, "could not save what the removed file holds")
                }
                _ => tracing::error!("{}", Self::after(&rescue, &self.db)),
            }
            *self.rescue.lock().expect("file watch lock") = Some(rescue);
        }
        Some(self.message(&missing))
    }

    /// Puts what the removed files hold where a restart finds it, through the writer's
    /// connection (outside a transaction).
    fn put_back(&self, conn: &Connection) -> Rescue {
        if !conn.is_autocommit() {
            // A transaction a failed group could not end: neither a checkpoint nor a copy runs
            // inside one.
            let _ = conn.execute_batch("ROLLBACK");
        }
        if !missing(&self.db) && self.database_is_the_one_opened() {
            // Only the log is gone: its frames go into the database file, which is still the
            // one opened, and then that file alone holds everything.
            let done: rusqlite::Result<(i64, i64, i64)> =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                });
            match done {
                Ok((0, log, moved)) if log == moved => return Rescue::Checkpointed,
                // A reader's snapshot held some back: a copy has it all.
                Ok(_) | Err(_) => {}
            }
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let copy = self.db.with_file_name(format!("herald.db.rescued-{stamp}"));
        match copy_into(conn, &copy) {
            Ok(()) => Rescue::Copied(copy),
            Err(e) => {
                let _ = std::fs::remove_file(&copy);
                Rescue::Failed(e)
            }
        }
    }

    /// What to do once the removed files' content was put back.
    fn after(rescue: &Rescue, db: &Path) -> String {
        match rescue {
            Rescue::Checkpointed => format!(
                "Herald moved what the removed log held into {}, which holds everything stored: \
                 restart Herald to store again",
                db.display()
            ),
            Rescue::Copied(copy) => format!(
                "Herald copied everything it had stored to {}: stop Herald, then put that file \
                 in place of {} and remove herald.db-wal and herald.db-shm beside it before \
                 starting again",
                copy.display(),
                db.display()
            ),
            Rescue::Failed(why) => format!(
                "Herald could not save what the removed file holds ({why}). If the file or its \
                 directory was moved, move it back while Herald runs: it then stores again and \
                 nothing is lost. Otherwise stop Herald and restore herald.db from a backup"
            ),
        }
    }

    fn message(&self, missing: &str) -> String {
        let rescue = self.rescue.lock().expect("file watch lock").clone();
        let next = match rescue {
            Some(rescue) => Self::after(&rescue, &self.db),
            // Said by `/readyz` before the writer looked: it does at its next write.
            None => "Herald is saving what it holds (this message says where once done)".into(),
        };
        format!(
            "{missing} was removed while Herald ran, so Herald stores nothing (events are \
             answered 503). {next}"
        )
    }

    /// For `/readyz`: a file missing (looked at now), or the database file replaced by
    /// another. `None` when neither.
    pub(super) fn trouble_now(&self) -> Option<Trouble> {
        if let Some(missing) = self.look() {
            // The writer's next group looks again rather than trust its last look.
            *self.last.lock().expect("file watch lock") = None;
            return Some(Trouble::Missing(self.message(&missing)));
        }
        (!self.database_is_the_one_opened() && self.db_opened.is_some()).then(|| {
            Trouble::Replaced(format!(
                "the database file {} was replaced while Herald ran: what it stores now goes to \
                 the file it opened, which is no longer there. Stop Herald, then remove \
                 herald.db-wal and herald.db-shm beside the file now there (they belong to the \
                 one replaced) and start it again",
                self.db.display()
            ))
        })
    }

    /// Whether the writer has not yet looked since a file went missing (`/readyz` saw it
    /// first), so that nothing was saved yet.
    pub(super) fn not_saved_yet(&self) -> bool {
        self.rescue.lock().expect("file watch lock").is_none()
    }
}

/// What `/readyz` found.
pub(super) enum Trouble {
    /// A file is missing: nothing is stored.
    Missing(String),
    /// The database file is another: writes go on into the one opened.
    Replaced(String),
}

impl Trouble {
    pub(super) fn into_message(self) -> String {
        match self {
            Trouble::Missing(m) | Trouble::Replaced(m) => m,
        }
    }
}

/// A whole copy of what `conn` sees, in a new file readable by its owner only, as the database
/// is.
fn copy_into(conn: &Connection, copy: &Path) -> Result<(), String> {
    super::create_new_private(copy)
        .map_err(|e| format!("could not create {}: {e}", copy.display()))?;
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
        .map(drop)
        .map_err(|e| e.to_string())
}

/// SQLite's name for a database's write-ahead log.
pub(super) fn wal_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}
