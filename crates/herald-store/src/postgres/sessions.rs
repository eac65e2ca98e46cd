//! Dashboard sessions and the messages waiting for their next page.

use herald_core::Timestamp;
use herald_core::store::{DashboardSession, SessionLimits};

use super::{Conn, DbResult};

/// Serialises sign-ins (any constant; "heraldse" in ASCII): two nodes trimming the same
/// owner's oldest sessions at once locked rows in opposite orders and deadlocked, and neither
/// saw the other's new session, so together they kept more than the limit.
const SIGN_IN_LOCK: i64 = 0x6865_7261_6c64_7365;

pub(crate) async fn create(
    c: &impl Conn,
    session: &DashboardSession,
    now: Timestamp,
    limits: SessionLimits,
) -> DbResult<()> {
    c.exec("SELECT pg_advisory_xact_lock($1)", &[&SIGN_IN_LOCK])
        .await?;
    // Their messages go with them (`ON DELETE CASCADE`).
    c.exec(
        "DELETE FROM dashboard_sessions WHERE expires_at <= $1",
        &[&now.as_millis()],
    )
    .await?;
    // Room for the new one: the owner's closest to expiry, then anyone's.
    c.exec(
        "DELETE FROM dashboard_sessions WHERE id_hash IN (SELECT id_hash FROM dashboard_sessions \
         WHERE owner = $1 ORDER BY expires_at DESC OFFSET $2)",
        &[&session.owner, &count(limits.per_owner.saturating_sub(1))],
    )
    .await?;
    c.exec(
        "DELETE FROM dashboard_sessions WHERE id_hash IN (SELECT id_hash FROM dashboard_sessions \
         ORDER BY expires_at DESC OFFSET $1)",
        &[&count(limits.total.saturating_sub(1))],
    )
    .await?;
    c.exec(
        "INSERT INTO dashboard_sessions (id_hash, owner, credential, expires_at) \
         VALUES ($1, $2, $3, $4)",
        &[
            &session.id_hash,
            &session.owner,
            &session.credential,
            &session.expires_at.as_millis(),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn get(
    c: &impl Conn,
    id_hash: &str,
    now: Timestamp,
) -> DbResult<Option<DashboardSession>> {
    let Some(row) = c
        .opt_row(
            "SELECT id_hash, owner, credential, expires_at FROM dashboard_sessions \
             WHERE id_hash = $1 AND expires_at > $2",
            &[&id_hash, &now.as_millis()],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(DashboardSession {
        id_hash: row.try_get(0)?,
        owner: row.try_get(1)?,
        credential: row.try_get(2)?,
        expires_at: Timestamp::from_millis(row.try_get(3)?),
    }))
}

/// Their messages go with them (`ON DELETE CASCADE`). In the sign-ins' turn, as their own
/// deletion of expired sessions is, so that the two never lock rows in opposite orders.
pub(crate) async fn delete_expired(c: &impl Conn, now: Timestamp) -> DbResult<u64> {
    c.exec("SELECT pg_advisory_xact_lock($1)", &[&SIGN_IN_LOCK])
        .await?;
    c.exec(
        "DELETE FROM dashboard_sessions WHERE expires_at <= $1",
        &[&now.as_millis()],
    )
    .await
    .map_err(Into::into)
}

/// Its messages go with it (`ON DELETE CASCADE`), in the order a sign-in's trimming removes
/// them, so that the two cannot deadlock.
pub(crate) async fn delete(c: &impl Conn, id_hash: &str) -> DbResult<()> {
    c.exec(
        "DELETE FROM dashboard_sessions WHERE id_hash = $1",
        &[&id_hash],
    )
    .await?;
    Ok(())
}

pub(crate) async fn add_flash(
    c: &impl Conn,
    id_hash: &str,
    page: &str,
    sealed: &str,
    keep: usize,
) -> DbResult<()> {
    // Only for a session that still exists: one ended meanwhile leaves nothing behind.
    let added = c
        .exec(
            "INSERT INTO dashboard_flashes (session, page, sealed) \
             SELECT id_hash, $2, $3 FROM dashboard_sessions WHERE id_hash = $1",
            &[&id_hash, &page, &sealed],
        )
        .await?;
    if added > 0 {
        c.exec(
            "DELETE FROM dashboard_flashes WHERE session = $1 AND seq NOT IN \
             (SELECT seq FROM dashboard_flashes WHERE session = $1 ORDER BY seq DESC LIMIT $2)",
            &[&id_hash, &count(keep)],
        )
        .await?;
    }
    Ok(())
}

pub(crate) async fn take_flashes(
    c: &impl Conn,
    id_hash: &str,
    page: &str,
) -> DbResult<Vec<String>> {
    let found = c
        .rows(
            "DELETE FROM dashboard_flashes WHERE session = $1 AND page = $2 RETURNING seq, sealed",
            &[&id_hash, &page],
        )
        .await?;
    let mut taken = Vec::with_capacity(found.len());
    for row in found {
        taken.push((row.try_get::<_, i64>(0)?, row.try_get::<_, String>(1)?));
    }
    taken.sort_by_key(|(seq, _)| *seq);
    Ok(taken.into_iter().map(|(_, sealed)| sealed).collect())
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
