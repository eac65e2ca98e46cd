//! Dashboard sessions and the messages waiting for their next page.

use rusqlite::{Connection, OptionalExtension, params};

use herald_core::Timestamp;
use herald_core::store::{DashboardSession, SessionLimits};

use super::DbResult;

pub(crate) fn create(
    conn: &Connection,
    session: &DashboardSession,
    now: Timestamp,
    limits: SessionLimits,
) -> DbResult<()> {
    conn.prepare_cached("DELETE FROM dashboard_sessions WHERE expires_at <= ?")?
        .execute([now.as_millis()])?;
    // Room for the new one: the owner's closest to expiry, then anyone's.
    conn.prepare_cached(
        "DELETE FROM dashboard_sessions WHERE id_hash IN (SELECT id_hash FROM dashboard_sessions \
         WHERE owner = ? ORDER BY expires_at DESC LIMIT -1 OFFSET ?)",
    )?
    .execute(params![
        session.owner,
        limits.per_owner.saturating_sub(1) as i64
    ])?;
    conn.prepare_cached(
        "DELETE FROM dashboard_sessions WHERE id_hash IN (SELECT id_hash FROM dashboard_sessions \
         ORDER BY expires_at DESC LIMIT -1 OFFSET ?)",
    )?
    .execute([limits.total.saturating_sub(1) as i64])?;
    // Their messages with them (no foreign keys here: SQLite's are off).
    conn.prepare_cached(
        "DELETE FROM dashboard_flashes WHERE session NOT IN (SELECT id_hash FROM dashboard_sessions)",
    )?
    .execute([])?;
    conn.prepare_cached(
        "INSERT INTO dashboard_sessions (id_hash, owner, credential, expires_at) \
         VALUES (?, ?, ?, ?)",
    )?
    .execute(params![
        session.id_hash,
        session.owner,
        session.credential,
        session.expires_at.as_millis(),
    ])?;
    Ok(())
}

pub(crate) fn get(
    conn: &Connection,
    id_hash: &str,
    now: Timestamp,
) -> DbResult<Option<DashboardSession>> {
    Ok(conn
        .prepare_cached(
            "SELECT id_hash, owner, credential, expires_at FROM dashboard_sessions \
             WHERE id_hash = ? AND expires_at > ?",
        )?
        .query_row(params![id_hash, now.as_millis()], |r| {
            Ok(DashboardSession {
                id_hash: r.get(0)?,
                owner: r.get(1)?,
                credential: r.get(2)?,
                expires_at: Timestamp::from_millis(r.get(3)?),
            })
        })
        .optional()?)
}

pub(crate) fn delete_expired(conn: &Connection, now: Timestamp) -> DbResult<u64> {
    let deleted = conn
        .prepare_cached("DELETE FROM dashboard_sessions WHERE expires_at <= ?")?
        .execute([now.as_millis()])?;
    if deleted > 0 {
        conn.prepare_cached(
            "DELETE FROM dashboard_flashes WHERE session NOT IN (SELECT id_hash FROM dashboard_sessions)",
        )?
        .execute([])?;
    }
    Ok(deleted as u64)
}

pub(crate) fn delete(conn: &Connection, id_hash: &str) -> DbResult<()> {
    conn.prepare_cached("DELETE FROM dashboard_flashes WHERE session = ?")?
        .execute([id_hash])?;
    conn.prepare_cached("DELETE FROM dashboard_sessions WHERE id_hash = ?")?
        .execute([id_hash])?;
    Ok(())
}

pub(crate) fn add_flash(
    conn: &Connection,
    id_hash: &str,
    page: &str,
    sealed: &str,
    keep: usize,
) -> DbResult<()> {
    // Only for a session that still exists: one ended meanwhile leaves nothing behind.
    let added = conn
        .prepare_cached(
            "INSERT INTO dashboard_flashes (session, page, sealed) \
             SELECT id_hash, ?, ? FROM dashboard_sessions WHERE id_hash = ?",
        )?
        .execute(params![page, sealed, id_hash])?;
    if added > 0 {
        conn.prepare_cached(
            "DELETE FROM dashboard_flashes WHERE session = ? AND seq NOT IN \
             (SELECT seq FROM dashboard_flashes WHERE session = ? ORDER BY seq DESC LIMIT ?)",
        )?
        .execute(params![id_hash, id_hash, keep as i64])?;
    }
    Ok(())
}

/// Whether any message waits for `page` (read first, so that a page view with none writes
/// nothing).
pub(crate) fn has_flashes(conn: &Connection, id_hash: &str, page: &str) -> DbResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM dashboard_flashes WHERE session = ? AND page = ? LIMIT 1")?
        .query_row([id_hash, page], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(crate) fn take_flashes(conn: &Connection, id_hash: &str, page: &str) -> DbResult<Vec<String>> {
    let mut taken: Vec<(i64, String)> = conn
        .prepare_cached(
            "DELETE FROM dashboard_flashes WHERE session = ? AND page = ? RETURNING seq, sealed",
        )?
        .query_map([id_hash, page], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    taken.sort_by_key(|(seq, _)| *seq);
    Ok(taken.into_iter().map(|(_, sealed)| sealed).collect())
}
