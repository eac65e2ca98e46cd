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

/// Writes a compacted copy of the database at `source` to `target` (a new file, readable by its
/// owner only from the start: it holds every event and secret); answers whether it holds
/// encrypted webhook secrets (which need their key to be of use). A copy that failed half-way
/// is removed.
pub fn copy(source: &Path, target: &Path) -> rusqlite::Result<bool> {
    // `VACUUM INTO` writes into an empty file that is there, keeping its permissions. A file
    // already there is not ours to fill (or to remove if the copy fails).
    super::create_new_private(target)
        .map_err(|_| rusqlite::Error::InvalidPath(target.to_path_buf()))?;
    let conn = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // A checkpoint may hold the database for a moment.
    conn.busy_timeout(Duration::from_secs(30))?;
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
