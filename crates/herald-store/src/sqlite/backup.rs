//! A consistent copy of the database while the server writes to it.
//!
//! Copying `herald.db` and its write-ahead log with `cp` while the writer commits gives a
//! corrupt copy more often than not, and SQLite's online backup starts over whenever the
//! database changes, so under steady load it never ends. `VACUUM INTO` writes the copy from one
//! read transaction: a snapshot of the last commit, however busy the writer, and compacted.
//! Dashboard sessions are left out of the copy.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Which side of a copy failed.
#[derive(Debug)]
pub enum CopyError {
    /// The database to copy could not be opened.
    Source(rusqlite::Error),
    /// The copy could not be written.
    Target(rusqlite::Error),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Source(e) | Self::Target(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CopyError {}

/// Writes a compacted copy of the database at `source` to `target` (a new file, readable by its
/// owner only from the start: it holds every event and secret); answers whether it holds
/// encrypted webhook secrets (which need their key to be of use). A copy that failed half-way
/// is removed; one whose source could not be opened is not begun.
pub fn copy(source: &Path, target: &Path) -> Result<bool, CopyError> {
    let conn = open_source(source).map_err(CopyError::Source)?;
    // `VACUUM INTO` writes into an empty file that is there, keeping its permissions. A file
    // already there is not ours to fill (or to remove if the copy fails).
    super::create_new_private(target)
        .map_err(|_| CopyError::Target(rusqlite::Error::InvalidPath(target.to_path_buf())))?;
    copy_into(&conn, target).map_err(CopyError::Target)
}

/// The database to copy, opened to read and write as a server's reader is (it may have to
/// recover the write-ahead log of a server that stopped without moving it in); where it may
/// not be written (a read-only snapshot or mount) and SQLite cannot make the shared-memory file
/// it reads a write-ahead log with, as a file that cannot change, which no server can be
/// writing to there (unless its write-ahead log holds commits, which that would leave out).
fn open_source(source: &Path) -> rusqlite::Result<Connection> {
    let open = |path: &str, flags| {
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        // A checkpoint may hold the database for a moment.
        conn.busy_timeout(Duration::from_secs(30))?;
        // Opening is lazy: this reads the schema, so that a file that cannot be read fails here.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(conn)
    };
    let path = source
        .to_str()
        .ok_or_else(|| rusqlite::Error::InvalidPath(source.to_path_buf()))?;
    open(path, OpenFlags::SQLITE_OPEN_READ_WRITE).or_else(|e| {
        // Read as a file that cannot change, SQLite leaves the write-ahead log out: one that
        // holds commits (a server that stopped without moving them in) is not copied without.
        let wal = source.with_extension("db-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            return Err(e);
        }
        // A URI's own characters in the path are escaped.
        let escaped = path
            .replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23");
        let immutable = format!("file:{escaped}?immutable=1");
        open(
            &immutable,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|_| e)
    })
}

fn copy_into(conn: &Connection, target: &Path) -> rusqlite::Result<bool> {
    let target_text = target
        .to_str()
        .ok_or_else(|| rusqlite::Error::InvalidPath(target.to_path_buf()))?;
    if let Err(e) = conn
        .execute("VACUUM INTO ?1", [target_text])
        .and_then(|_| end_sessions(target))
    {
        let _ = std::fs::remove_file(target);
        return Err(e);
    }
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM webhooks WHERE secret LIKE 'enc:%')",
        [],
        |r| r.get(0),
    )
}

/// Ends the dashboard sessions in the copy: restored, it would bring back sessions signed out
/// since (as `herald copy`, a backup carries no one's sign-in over).
fn end_sessions(copy: &Path) -> rusqlite::Result<()> {
    let conn = Connection::open(copy)?;
    let has_sessions: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dashboard_sessions')",
        [],
        |r| r.get(0),
    )?;
    if has_sessions {
        // No journal beside the copy: one left by a failure here would be replayed into the
        // next copy made in the same place (a failed copy is removed whole).
        conn.execute_batch(
            "PRAGMA journal_mode = MEMORY; PRAGMA secure_delete = ON; \
             DELETE FROM dashboard_flashes; DELETE FROM dashboard_sessions;",
        )?;
    }
    Ok(())
}
