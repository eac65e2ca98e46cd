//! Whether the database's files are still the ones Herald opened. Removing `herald.db` or its
//! write-ahead log `herald.db-wal` under a running Herald (a clean-up script, an operator
//! tidying up) goes unseen by SQLite, which keeps writing to the removed files: everything
//! stored from then on, and in the log's case everything since the last checkpoint, is lost
//! when the process stops. So the store looks (at most once a second, a `stat` of each file)
//! before every write, refuses writes while either file is not the one it opened, and copies
//! what it can still see to a file of its own, once, for the operator to put back.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// What became of a copy of the database made after its files went (`VACUUM INTO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rescue {
    Copying(PathBuf),
    Saved(PathBuf),
    Failed(String),
}

pub(super) struct FileWatch {
    db: PathBuf,
    wal: PathBuf,
    /// The files opened; `None` where there was none to know (then that file is not watched).
    db_opened: Option<Identity>,
    wal_opened: Option<Identity>,
    /// The last look: when, and what was wrong.
    last: Mutex<Option<(Instant, Option<String>)>>,
    rescue: Mutex<Option<Rescue>>,
}

/// What a look found.
pub(super) struct Trouble {
    pub message: String,
    /// The first look to find it since the files were last as opened: the one to say it in
    /// the log, and to start the copy.
    pub new: bool,
}

impl FileWatch {
    /// Watches the database at `db` and its write-ahead log, as they are now (open, with the
    /// log made by the first write).
    pub(super) fn new(db: &Path) -> Self {
        let wal = wal_of(db);
        Self {
            db_opened: identity(db),
            wal_opened: identity(&wal),
            db: db.to_path_buf(),
            wal,
            last: Mutex::new(None),
            rescue: Mutex::new(None),
        }
    }

    /// Whether the database file is the one opened (for the stop's checkpoint, which must not
    /// write into a file put in its place).
    pub(super) fn database_is_the_one_opened(&self) -> bool {
        self.db_opened.is_some() && identity(&self.db) == self.db_opened
    }

    /// What is wrong with the files, from a look at most [`LOOK_EVERY`] old (writes, many a
    /// second), or from a look now (`fresh`: a readiness check).
    pub(super) fn trouble(&self, fresh: bool) -> Option<Trouble> {
        let mut last = self.last.lock().expect("file watch lock");
        if let Some((at, found)) = &*last
            && !fresh
            && at.elapsed() < LOOK_EVERY
        {
            return found.clone().map(|message| Trouble {
                message: self.with_rescue(message),
                new: false,
            });
        }
        let found = self.look();
        let new = found.is_some() && last.as_ref().is_none_or(|(_, before)| before.is_none());
        *last = Some((Instant::now(), found.clone()));
        found.map(|message| Trouble {
            message: self.with_rescue(message),
            new,
        })
    }

    fn look(&self) -> Option<String> {
        let moved =
            |opened: Option<Identity>, path: &Path| opened.is_some() && identity(path) != opened;
        let what = if moved(self.db_opened, &self.db) {
            format!("the database file {}", self.db.display())
        } else if moved(self.wal_opened, &self.wal) {
            format!(
                "its write-ahead log {} (which holds what was stored since the last checkpoint)",
                self.wal.display()
            )
        } else {
            return None;
        };
        Some(format!(
            "{what} was removed or replaced while Herald ran: what is stored now would go to the \
             removed file and be lost when Herald stops, so Herald stores nothing (events are \
             answered 503)"
        ))
    }

    /// The message, with where the copy of what Herald still sees stands.
    fn with_rescue(&self, message: String) -> String {
        let rescue = self.rescue.lock().expect("file watch lock").clone();
        let put_back = |path: &Path| {
            format!(
                "stop Herald, then move {} to {} and remove {} and {}-shm beside it before \
                 starting again",
                path.display(),
                self.db.display(),
                self.wal.display(),
                self.db.display()
            )
        };
        match rescue {
            None => format!("{message}. Stop Herald and restore herald.db from a backup"),
            Some(Rescue::Copying(path)) => format!(
                "{message}. Herald is copying what it stored to {} (this message says when it \
                 is done); then {}",
                path.display(),
                put_back(&path)
            ),
            Some(Rescue::Saved(path)) => format!(
                "{message}. Herald copied everything it had stored to {}: {}",
                path.display(),
                put_back(&path)
            ),
            Some(Rescue::Failed(why)) => format!(
                "{message}. Herald could not copy what it stored ({why}): stop Herald and \
                 restore herald.db from a backup"
            ),
        }
    }

    /// Where to copy the database now, unless a copy was made or begun already.
    pub(super) fn start_rescue(&self) -> Option<PathBuf> {
        let mut rescue = self.rescue.lock().expect("file watch lock");
        if rescue.is_some() {
            return None;
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = self.db.with_file_name(format!("herald.db.rescued-{stamp}"));
        *rescue = Some(Rescue::Copying(path.clone()));
        Some(path)
    }

    pub(super) fn rescue_ended(&self, outcome: Rescue) {
        *self.rescue.lock().expect("file watch lock") = Some(outcome);
    }
}

/// SQLite's name for a database's write-ahead log.
pub(super) fn wal_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}
