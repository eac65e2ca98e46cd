//! Changes to many of one webhook's deliveries, made in steps: parking them when the webhook is
//! paused or disabled, putting them back when it is resumed, cancelling them when it is deleted,
//! recovering its failed ones, moving what its circuit breaker put off, and deleting them with
//! their organization.
//!
//! SQLite has one writer, and every tenant's ingest waits for its commits. One statement over a
//! million deliveries held it for 4.4–6.4 s (pausing, resuming or deleting a webhook, or its
//! organization, with a million pending), and every `202` in that time with it. Each change
//! here is therefore a series of writer jobs of at most [`STEP`] deliveries, and other jobs run
//! between them.
//!
//! A step selects only deliveries that still need the change, from where the last one ended
//! (the cursor), and checks that the webhook still asks for it: a step that comes after the
//! webhook was resumed again parks nothing, and the series ends. A series cut short by a stop is
//! finished at the next start ([`finish_interrupted`]), or by the sweep of deleted webhooks'
//! deliveries (`Store::cancel_orphaned`).

use rusqlite::{Connection, ToSql, params};

use herald_core::{OrgId, Timestamp, WebhookId};

use super::DbResult;

/// The most deliveries one step changes: about 5 ms of the writer's time.
pub(crate) const STEP: usize = 1_000;
/// The most rows one step reads looking for deliveries to change: a step walks either the
/// webhook's whole history (most of which needs no change) or every webhook's pending
/// deliveries (most of which are not this webhook's).
const SCAN: usize = 5 * STEP;

/// What one step did, and where the next starts (`None`: the change is complete).
#[derive(Debug)]
pub(crate) struct Step<C> {
    pub(crate) changed: u64,
    pub(crate) next: Option<C>,
}

impl<C> Step<C> {
    /// A step that changed `changed` deliveries and read `read` of at most `limit`: a full read
    /// means there may be more, from `cursor`.
    fn after(changed: usize, read: usize, limit: usize, cursor: Option<C>) -> Self {
        Self {
            changed: changed as u64,
            next: if read < limit { None } else { cursor },
        }
    }

    fn new(changed: usize, next: Option<C>) -> Self {
        Self {
            changed: changed as u64,
            next,
        }
    }
}

/// Where a walk over pending deliveries in `deliveries_due` has got to: the parked ones (no
/// `due_at`) in id order, or the due ones from a time in (due, id) order. The next step starts
/// after the last row the previous one read, so that a walk reads each row once however many
/// share a due time (unless a row moves ahead of the walk between steps: a lease taken, say).
#[derive(Debug, Clone)]
pub(crate) enum Walk {
    Parked { after: String },
    Due { from: i64, after: String },
}

impl Walk {
    pub(crate) fn parked() -> Self {
        Self::Parked {
            after: String::new(),
        }
    }

    /// The due ones from `from` on (an empty id comes before every other).
    pub(crate) fn due_from(from: i64) -> Self {
        Self::Due {
            from,
            after: String::new(),
        }
    }
}

/// The next up to [`STEP`] pending deliveries of `webhook` from `walk` that match `filter` (SQL
/// over the `deliveries` row, which may name `?4`… for `values`), with where the next step
/// starts (`None`: the walk is over).
///
/// `deliveries_due` holds every webhook's pending deliveries, and not their webhook. A step
/// therefore reads at most [`SCAN`] rows of it: one that read until it had found `STEP` of
/// this webhook's read a whole backlog of another's when this one had few, in one writer job
/// that held every tenant's ingest (pausing a webhook beside 200,000 deliveries pending for
/// another: the figures are in BENCHMARKS.md).
fn next_batch(
    conn: &Connection,
    webhook: &WebhookId,
    walk: &Walk,
    filter: &str,
    values: &[&dyn ToSql],
) -> DbResult<(Vec<String>, Option<Walk>)> {
    let (from, after) = match walk {
        Walk::Parked { after } => (None, after),
        Walk::Due { from, after } => (Some(*from), after),
    };
    let mut select = conn.prepare_cached(&walk_sql(walk, filter))?;
    let webhook = webhook.as_str();
    let mut bound: Vec<&dyn ToSql> = vec![&webhook, &from, after];
    bound.extend_from_slice(values);
    let mut rows = select.query(bound.as_slice())?;
    let (mut ids, mut read, mut last) = (Vec::new(), 0, None);
    while let Some(row) = rows.next()? {
        let (id, due, wanted): (String, Option<i64>, bool) =
            (row.get(0)?, row.get(1)?, row.get(2)?);
        read += 1;
        if wanted {
            ids.push(id.clone());
        }
        last = Some((due, id));
        if ids.len() == STEP {
            break;
        }
    }
    let more = ids.len() == STEP || read == SCAN;
    let next = last.filter(|_| more).map(|(due, after)| match due {
        Some(from) => Walk::Due { from, after },
        None => Walk::Parked { after },
    });
    Ok((ids, next))
}

/// A step of `walk`: the next [`SCAN`] rows from the cursor (`?2`, `?3`), each with whether it
/// is `?1`'s and matches `filter`. The cursor is a range of the index, so that a step reads no
/// row before it.
fn walk_sql(walk: &Walk, filter: &str) -> String {
    let (range, order) = match walk {
        Walk::Parked { .. } => ("due_at IS NULL AND id > ?3", "id"),
        Walk::Due { .. } => ("(due_at, id) > (?2, ?3)", "due_at, id"),
    };
    format!(
        "SELECT id, due_at, IFNULL(webhook_id = ?1 AND ({filter}), 0) \
         FROM deliveries INDEXED BY deliveries_due \
         WHERE state = 'pending' AND {range} ORDER BY {order} LIMIT {SCAN}"
    )
}

/// Whether `webhook` still asks for a change: `condition` over its row. A step that comes after
/// it changed its mind (resumed before a pause's next step, say) changes nothing, and the
/// series ends.
fn webhook_is(conn: &Connection, webhook: &WebhookId, condition: &str) -> DbResult<bool> {
    conn.prepare_cached(&format!(
        "SELECT 1 FROM webhooks WHERE id = ?1 AND {condition}"
    ))?
    .exists([webhook.as_str()])
    .map_err(Into::into)
}

/// Runs `sql` on each of `ids` (`?1`, followed by `rest` as `?2`…); answers how many rows it
/// changed.
fn update_each<'a>(
    conn: &Connection,
    sql: &str,
    ids: impl IntoIterator<Item = &'a String>,
    rest: &[&dyn ToSql],
) -> DbResult<usize> {
    let mut update = conn.prepare_cached(sql)?;
    let mut changed = 0;
    for id in ids {
        let mut values: Vec<&dyn ToSql> = vec![id];
        values.extend_from_slice(rest);
        changed += update.execute(values.as_slice())?;
    }
    Ok(changed)
}

/// Parks the due, unleased deliveries of an inactive webhook: no `due_at` until it is active
/// again, so the scheduler skips them cheaply. Leased ones keep their lease; whoever holds them
/// gives them back parked.
pub(crate) fn park(conn: &Connection, webhook: &WebhookId, walk: &Walk) -> DbResult<Step<Walk>> {
    if !webhook_is(conn, webhook, "active = 0")? {
        return Ok(Step::new(0, None));
    }
    let (ids, next) = next_batch(conn, webhook, walk, "lease_until IS NULL", &[])?;
    let changed = update_each(
        conn,
        "UPDATE deliveries SET due_at = NULL WHERE id = ?1",
        &ids,
        &[],
    )?;
    Ok(Step::new(changed, next))
}

/// Puts the parked deliveries of an active webhook back on their schedule.
pub(crate) fn unpark(conn: &Connection, webhook: &WebhookId, walk: &Walk) -> DbResult<Step<Walk>> {
    if !webhook_is(conn, webhook, "active = 1 AND deleted_at IS NULL")? {
        return Ok(Step::new(0, None));
    }
    let (ids, next) = next_batch(conn, webhook, walk, "1", &[])?;
    let changed = update_each(
        conn,
        "UPDATE deliveries SET due_at = next_attempt_at, lease_until = NULL WHERE id = ?1",
        &ids,
        &[],
    )?;
    Ok(Step::new(changed, next))
}

/// Cancels the pending deliveries of a deleted webhook, parked or not, leased or not (an
/// attempt in flight then records its attempt, and `succeeded` if the endpoint accepted it).
/// The webhook's deliveries are read in id order through its own index, at most
/// [`SCAN`] per step, and up to [`STEP`] pending ones cancelled; `after` is the last id
/// the previous step went past. Not through `deliveries_due`, which holds every webhook's
/// pending deliveries: a deleted webhook with nothing pending read all of them, filtered by
/// webhook, and the sweep of deleted webhooks (`Store::cancel_orphaned`, every 10 minutes over
/// the last day's deletions) walked it again for each, holding the writer: with 400,000
/// deliveries pending for another webhook and a few thousand deleted, it ran for minutes and
/// the node would not stop meanwhile.
pub(crate) fn cancel(
    conn: &Connection,
    webhook: &WebhookId,
    now: Timestamp,
    after: &str,
) -> DbResult<Step<String>> {
    let read: Vec<(String, bool)> = conn
        .prepare_cached(&format!(
            "SELECT id, state = 'pending' FROM deliveries INDEXED BY deliveries_by_webhook \
             WHERE webhook_id = ?1 AND id > ?2 ORDER BY id LIMIT {SCAN}"
        ))?
        .query_map(params![webhook.as_str(), after], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    // Up to STEP pending ones; the next step starts after the last row this one went past.
    let mut ids = Vec::new();
    let mut passed = 0;
    for (id, pending) in &read {
        if *pending && ids.len() == STEP {
            break;
        }
        passed += 1;
        if *pending {
            ids.push(id.clone());
        }
    }
    let next = (passed < read.len() || read.len() == SCAN).then(|| read[passed - 1].0.clone());
    let changed = update_each(
        conn,
        "UPDATE deliveries SET state = 'cancelled', next_attempt_at = NULL, due_at = NULL, \
         lease_until = NULL, updated_at = ?2 WHERE id = ?1 AND state = 'pending'",
        &ids,
        &[&now.as_millis()],
    )?;
    Ok(Step::new(changed, next))
}

/// Makes the deliveries of `webhook` that its breaker put off to exactly `deferred_to` (and that
/// nobody has leased since) due at `to` instead. They are found through `deliveries_due` by that
/// one time (named, so that SQLite does not walk the webhook's whole history through
/// `deliveries_by_webhook` instead); a delivery whose own retry comes later kept its time when
/// it was deferred, and so is left alone. Parked instead if the webhook was paused meanwhile.
/// `after` is the last id the previous step moved.
pub(crate) fn move_deferred(
    conn: &Connection,
    webhook: &WebhookId,
    deferred_to: Timestamp,
    to: Timestamp,
    after: &str,
) -> DbResult<Step<String>> {
    let ids: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT id FROM deliveries INDEXED BY deliveries_due \
             WHERE due_at = ?1 AND id > ?3 AND state = 'pending' AND webhook_id = ?2 \
             AND lease_until IS NULL AND next_attempt_at = ?1 ORDER BY id LIMIT {STEP}"
        ))?
        .query_map(
            params![deferred_to.as_millis(), webhook.as_str(), after],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    let changed = update_each(
        conn,
        "UPDATE deliveries SET next_attempt_at = ?2, due_at = CASE WHEN \
         (SELECT active FROM webhooks WHERE id = deliveries.webhook_id) = 1 THEN ?2 ELSE NULL END \
         WHERE id = ?1",
        &ids,
        &[&to.as_millis()],
    )?;
    Ok(Step::after(changed, ids.len(), STEP, ids.last().cloned()))
}

/// Puts the failed deliveries of `webhook` created since `since` (and the skipped ones, with
/// `skipped`) back to pending, due `now` (or parked, if the webhook is inactive). The webhook's
/// deliveries are read in id order through its index, at most [`SCAN`] per step
/// whatever their state, since most of its history has nothing to recover; `after` is the last
/// id the previous step read.
pub(crate) fn recover_failed(
    conn: &Connection,
    org: &OrgId,
    webhook: &WebhookId,
    since: Timestamp,
    now: Timestamp,
    skipped: bool,
    after: &str,
) -> DbResult<Step<String>> {
    // Deleted since the recovery began: what it has not reached stays as it is (made pending
    // now, it would wait for a webhook that is gone until the sweep of deleted webhooks).
    if !webhook_is(conn, webhook, "deleted_at IS NULL")? {
        return Ok(Step::new(0, None));
    }
    let read: Vec<(String, bool)> = conn
        .prepare_cached(&format!(
            "SELECT id, org_id = ?2 AND created_at >= ?3 \
                 AND (state = 'failed' OR (?5 AND state = 'skipped')) \
             FROM deliveries INDEXED BY deliveries_by_webhook \
             WHERE webhook_id = ?1 AND id > ?4 ORDER BY id LIMIT {SCAN}"
        ))?
        .query_map(
            params![
                webhook.as_str(),
                org.as_str(),
                since.as_millis(),
                after,
                skipped
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    let changed = update_each(
        conn,
        "UPDATE deliveries SET state = 'pending', schedule_base = attempt_count, \
         next_attempt_at = ?2, \
         due_at = CASE WHEN (SELECT active FROM webhooks WHERE id = deliveries.webhook_id) = 1 \
             THEN ?2 ELSE NULL END, \
         lease_until = NULL, updated_at = ?2 \
         WHERE id = ?1 AND state IN ('failed', 'skipped')",
        read.iter()
            .filter(|(_, recover)| *recover)
            .map(|(id, _)| id),
        &[&now.as_millis()],
    )?;
    let last = read.last().map(|(id, _)| id.clone());
    Ok(Step::after(changed, read.len(), SCAN, last))
}

/// Makes the pending deliveries of `org`'s `webhook` that wait for their next attempt (due after
/// `now`) and that nobody holds due at `now`, for an attempt their schedule does not count.
/// The walk starts after `now`: a changed delivery leaves its range.
pub(crate) fn retry_waiting(
    conn: &Connection,
    org: &OrgId,
    webhook: &WebhookId,
    now: Timestamp,
    walk: &Walk,
) -> DbResult<Step<Walk>> {
    // Still the organization's, and still asking for it: a step after a pause (whose walk may
    // have gone past the deliveries this one would make due now) or a deletion ends the series.
    let theirs = conn
        .prepare_cached(
            "SELECT 1 FROM webhooks WHERE id = ?1 AND org_id = ?2 AND active = 1 \
             AND deleted_at IS NULL",
        )?
        .exists(params![webhook.as_str(), org.as_str()])?;
    if !theirs {
        return Ok(Step::new(0, None));
    }
    // Waiting: its next attempt is later (a spilled delivery's is already due, and its own
    // webhook's backlog brings it in turn), and nobody holds it. Changed since the walk began
    // (by this walk, or claimed and put off again by an open circuit, or attempted): passed
    // over, so that the walk ends; one dated much later was written before the clock was set
    // back, and waits.
    let (ids, next) = next_batch(
        conn,
        webhook,
        walk,
        "lease_until IS NULL AND next_attempt_at > ?4 AND (updated_at < ?4 OR updated_at > ?5)",
        &[&now.as_millis(), &later_than_the_call(now)],
    )?;
    let changed = update_each(
        conn,
        "UPDATE deliveries SET next_attempt_at = ?2, due_at = ?2, updated_at = ?2, \
         schedule_base = MIN(schedule_base + 1, attempt_count) \
         WHERE id = ?1 AND state = 'pending' AND lease_until IS NULL AND due_at > ?2 \
         AND next_attempt_at > ?2 AND (updated_at < ?2 OR updated_at > ?3)",
        &ids,
        &[&now.as_millis(), &later_than_the_call(now)],
    )?;
    Ok(Step::new(changed, next))
}

/// A time after which a delivery's change is not one made while a call at `now` ran.
fn later_than_the_call(now: Timestamp) -> i64 {
    now.as_millis()
        .saturating_add(herald_core::store::LATER_THAN_A_CALL_MS)
}

/// Deletes up to [`STEP`] of a webhook's deliveries, whatever their state, with their attempts:
/// the first part of deleting its organization.
pub(crate) fn delete_deliveries(conn: &Connection, webhook: &WebhookId) -> DbResult<Step<()>> {
    let ids: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT id FROM deliveries INDEXED BY deliveries_by_webhook WHERE webhook_id = ?1 \
             ORDER BY id LIMIT {STEP}"
        ))?
        .query_map([webhook.as_str()], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    update_each(
        conn,
        "DELETE FROM attempts WHERE delivery_id = ?1",
        &ids,
        &[],
    )?;
    let deleted = update_each(conn, "DELETE FROM deliveries WHERE id = ?1", &ids, &[])?;
    Ok(Step::after(deleted, ids.len(), STEP, Some(())))
}

/// Deletes up to [`STEP`] of an organization's events, once their deliveries are gone.
pub(crate) fn delete_events(conn: &Connection, org: &OrgId) -> DbResult<Step<()>> {
    let deleted = conn
        .prepare_cached(&format!(
            "DELETE FROM events WHERE seq IN \
                 (SELECT seq FROM events WHERE org_id = ?1 LIMIT {STEP})"
        ))?
        .execute([org.as_str()])?;
    Ok(Step::after(deleted, deleted, STEP, Some(())))
}

/// Finishes what a pause or a resume left half-done when the process stopped between its steps:
/// parked deliveries of active webhooks are put back on their schedule, and due, unleased ones
/// of inactive webhooks are parked. Run once when the store opens.
pub(crate) fn finish_interrupted(conn: &Connection) -> DbResult<()> {
    conn.execute(
        "UPDATE deliveries INDEXED BY deliveries_due SET due_at = next_attempt_at \
         WHERE due_at IS NULL AND state = 'pending' AND webhook_id IN \
             (SELECT id FROM webhooks WHERE active = 1 AND deleted_at IS NULL)",
        [],
    )?;
    conn.execute(
        "UPDATE deliveries INDEXED BY deliveries_due SET due_at = NULL \
         WHERE due_at IS NOT NULL AND state = 'pending' AND lease_until IS NULL AND webhook_id IN \
             (SELECT id FROM webhooks WHERE active = 0 AND deleted_at IS NULL)",
        [],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::{FromDb, SqliteStore, migrate, open_connection};
    use herald_core::store::StoreError;

    const HOOK: &str = "wh_big";
    const OTHER: &str = "wh_other";

    /// A database with two webhooks (`active`) and `n` pending deliveries of the first, due at
    /// 1,000 ms plus their number (the last `leased` of them leased), and one of the second.
    fn backlog(n: usize, leased: usize, active: bool) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("herald.db"), false).unwrap();
        migrate(&conn).unwrap();
        for hook in [HOOK, OTHER] {
            conn.execute(
                "INSERT INTO webhooks (id, org_id, name, url, events, channels, profile, secret, \
                 active, headers, created_at, updated_at) \
                 VALUES (?1, 'org_1', 'n', 'https://example.com', '[]', '[]', 'standard', 's', ?2, '{}', 0, 0)",
                params![hook, active],
            )
            .unwrap();
        }
        conn.execute_batch("BEGIN").unwrap();
        let mut insert = conn
            .prepare(
                "INSERT INTO deliveries (id, org_id, webhook_id, event_id, event_type, state, \
                 next_attempt_at, due_at, lease_until, created_at, updated_at, event_seq) \
                 VALUES (?1, 'org_1', ?2, 'ev', 'user.created', 'pending', ?3, ?4, ?5, 0, 0, 1)",
            )
            .unwrap();
        for i in 0..n {
            let due = 1_000 + i as i64;
            let lease = (i >= n - leased).then_some(due);
            insert
                .execute(params![format!("dlv_{i:05}"), HOOK, due, due, lease])
                .unwrap();
        }
        insert
            .execute(params!["dlv_other", OTHER, 5_000, 5_000, None::<i64>])
            .unwrap();
        drop(insert);
        conn.execute_batch("COMMIT").unwrap();
        (dir, conn)
    }

    fn count(conn: &Connection, filter: &str) -> i64 {
        conn.query_row(
            &format!("SELECT COUNT(*) FROM deliveries WHERE {filter}"),
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// Runs steps from `start` to the end; answers each step's count of changed deliveries.
    fn run<C: Clone>(start: C, step: impl Fn(&C) -> Step<C>) -> Vec<u64> {
        let mut cursor = Some(start);
        let mut counts = Vec::new();
        while let Some(c) = cursor {
            assert!(counts.len() < 100, "a series of steps that does not end");
            let done = step(&c);
            counts.push(done.changed);
            cursor = done.next;
        }
        counts
    }

    fn ok<T>(result: DbResult<T>) -> T {
        result.map_err(StoreError::from_db).unwrap()
    }

    fn hook() -> WebhookId {
        WebhookId::from_trusted(HOOK.into())
    }

    #[test]
    fn parking_goes_a_step_at_a_time_and_leaves_leased_and_others_alone() {
        let (_dir, conn) = backlog(2_500, 10, false);
        let steps = run(Walk::due_from(i64::MIN), |w| ok(park(&conn, &hook(), w)));
        assert_eq!(steps, [1_000, 1_000, 490]);
        assert_eq!(count(&conn, "due_at IS NULL"), 2_490);
        assert_eq!(
            count(&conn, "due_at IS NULL AND lease_until IS NOT NULL"),
            0
        );
        assert_eq!(count(&conn, "webhook_id = 'wh_other' AND due_at = 5000"), 1);

        // Resumed: each step takes up to STEP of the parked ones, in id order.
        conn.execute("UPDATE webhooks SET active = 1", []).unwrap();
        let steps = run(Walk::parked(), |w| ok(unpark(&conn, &hook(), w)));
        assert_eq!(steps, [1_000, 1_000, 490]);
        assert_eq!(count(&conn, "due_at IS NULL"), 0);
        assert_eq!(
            count(&conn, "due_at = next_attempt_at AND lease_until IS NULL"),
            2_491
        );
    }

    #[test]
    fn a_step_after_the_webhook_changed_back_changes_nothing() {
        let (_dir, conn) = backlog(1_500, 0, false);
        let first = ok(park(&conn, &hook(), &Walk::due_from(i64::MIN)));
        assert_eq!(first.changed, 1_000);
        // Resumed before the next step: the pause's series ends, and leaves the rest due.
        conn.execute("UPDATE webhooks SET active = 1", []).unwrap();
        let next = ok(park(&conn, &hook(), &first.next.unwrap()));
        assert_eq!((next.changed, next.next.is_some()), (0, false));
        assert_eq!(count(&conn, "due_at IS NOT NULL"), 501);

        // Paused again before a resume's next step: that series ends as well.
        let first = ok(unpark(&conn, &hook(), &Walk::parked()));
        assert_eq!(first.changed, 1_000);
        conn.execute("UPDATE webhooks SET active = 0", []).unwrap();
        let next = ok(unpark(&conn, &hook(), &first.next.unwrap()));
        assert_eq!((next.changed, next.next.is_some()), (0, false));
    }

    #[test]
    fn walks_read_a_bounded_step_of_other_webhooks_pending_deliveries() {
        // 12,000 pending for one webhook; the other's one delivery, due at 5,000 ms, is the
        // 4,001st in due order. Pausing the other reads 5,000 rows a step (finding its one in
        // the first), not all 12,001 at once.
        let (_dir, conn) = backlog(12_000, 0, true);
        conn.execute("UPDATE webhooks SET active = 0 WHERE id = ?1", [OTHER])
            .unwrap();
        let other = WebhookId::from_trusted(OTHER.into());
        let steps = run(Walk::due_from(i64::MIN), |w| ok(park(&conn, &other, w)));
        assert_eq!(steps, [1, 0, 0]);
        assert_eq!(count(&conn, "due_at IS NULL"), 1);

        // Resumed: the parked walk reads only parked rows; the other's is the one.
        conn.execute("UPDATE webhooks SET active = 1 WHERE id = ?1", [OTHER])
            .unwrap();
        let steps = run(Walk::parked(), |w| ok(unpark(&conn, &other, w)));
        assert_eq!(steps, [1]);
        assert_eq!(count(&conn, "webhook_id = 'wh_other' AND due_at = 5000"), 1);
    }

    #[test]
    fn a_walk_starts_each_step_where_the_index_has_its_cursor() {
        let (_dir, conn) = backlog(10, 0, true);
        let plan = |walk: Walk| -> String {
            let sql = format!(
                "EXPLAIN QUERY PLAN {}",
                walk_sql(&walk, "lease_until IS NULL")
            );
            let mut explain = conn.prepare(&sql).unwrap();
            let rows = explain
                .query_map(params![HOOK, 0, ""], |r| r.get::<_, String>(3))
                .unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
        };
        // In the index's order (no sort), from the cursor on.
        assert_eq!(
            plan(Walk::due_from(0)),
            "SEARCH deliveries USING INDEX deliveries_due ((due_at,id)>(?,?))"
        );
        assert_eq!(
            plan(Walk::parked()),
            "SEARCH deliveries USING INDEX deliveries_due (due_at=? AND id>?)"
        );
    }

    #[test]
    fn a_resume_goes_past_a_step_of_other_webhooks_parked_deliveries() {
        // 7,000 parked for the big webhook (paused), then the other's one, after them in id
        // order: the parked walk reads 5,000 a step and finds the other's in the second.
        let (_dir, conn) = backlog(7_000, 0, true);
        conn.execute("UPDATE deliveries SET due_at = NULL", [])
            .unwrap();
        conn.execute("UPDATE webhooks SET active = 0 WHERE id = ?1", [HOOK])
            .unwrap();
        let other = WebhookId::from_trusted(OTHER.into());
        let steps = run(Walk::parked(), |w| ok(unpark(&conn, &other, w)));
        assert_eq!(steps, [0, 1]);
        assert_eq!(count(&conn, "webhook_id = 'wh_other' AND due_at = 5000"), 1);
        assert_eq!(
            count(&conn, "webhook_id = 'wh_big' AND due_at IS NULL"),
            7_000
        );
    }

    #[test]
    fn retrying_waiting_deliveries_goes_past_a_step_of_others_due_at_one_time() {
        // Every delivery waits for its retry at 10,000 ms; "retry now" at 5,000 ms for the
        // other webhook reads the big one's 7,000 in two steps and changes only its own.
        let (_dir, conn) = backlog(7_000, 0, true);
        conn.execute(
            "UPDATE deliveries SET due_at = 10000, next_attempt_at = 10000",
            [],
        )
        .unwrap();
        let org = OrgId::from_trusted("org_1".into());
        let now = Timestamp::from_millis(5_000);
        let after_now = || Walk::due_from(5_001);
        let other = WebhookId::from_trusted(OTHER.into());
        let steps = run(after_now(), |w| {
            ok(retry_waiting(&conn, &org, &other, now, w))
        });
        assert_eq!(steps, [0, 1]);
        assert_eq!(count(&conn, "webhook_id = 'wh_other' AND due_at = 5000"), 1);
        assert_eq!(
            count(&conn, "webhook_id = 'wh_big' AND due_at = 10000"),
            7_000
        );
        // The big one's: a step of 1,000 at a time, each changed once (a last step finds
        // that none is left).
        let steps = run(after_now(), |w| {
            ok(retry_waiting(&conn, &org, &hook(), now, w))
        });
        assert_eq!(steps, [1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 0]);
        assert_eq!(count(&conn, "due_at = 5000 AND updated_at = 5000"), 7_001);

        // Paused, or deleted, between two steps: the next changes nothing and ends the series.
        conn.execute(
            "UPDATE deliveries SET due_at = 10000, next_attempt_at = 10000, updated_at = 0",
            [],
        )
        .unwrap();
        for (change, back) in [
            ("active = 0", "active = 1"),
            ("deleted_at = 1", "deleted_at = NULL"),
        ] {
            let first = ok(retry_waiting(&conn, &org, &hook(), now, &after_now()));
            assert_eq!(first.changed, 1_000);
            conn.execute(
                &format!("UPDATE webhooks SET {change} WHERE id = ?1"),
                [HOOK],
            )
            .unwrap();
            let next = ok(retry_waiting(
                &conn,
                &org,
                &hook(),
                now,
                &first.next.unwrap(),
            ));
            assert_eq!((next.changed, next.next.is_some()), (0, false), "{change}");
            conn.execute(&format!("UPDATE webhooks SET {back} WHERE id = ?1"), [HOOK])
                .unwrap();
        }
        assert_eq!(count(&conn, "due_at = 5000"), 2_000);
    }

    #[test]
    fn deliveries_moved_after_a_probe_are_parked_if_their_webhook_is_paused() {
        // Two put off to 5,000 ms by an open circuit; the webhook paused before the probe's
        // answer moves them (a pause whose walk had gone past them).
        let (_dir, conn) = backlog(2, 0, false);
        conn.execute(
            "UPDATE deliveries SET due_at = 5000, next_attempt_at = 5000 WHERE webhook_id = ?1",
            [HOOK],
        )
        .unwrap();
        let (from, to) = (Timestamp::from_millis(5_000), Timestamp::from_millis(9_000));
        let step = ok(move_deferred(&conn, &hook(), from, to, ""));
        assert_eq!(step.changed, 2);
        assert_eq!(
            count(
                &conn,
                "webhook_id = 'wh_big' AND due_at IS NULL AND next_attempt_at = 9000"
            ),
            2
        );
    }

    #[test]
    fn a_recovery_stops_once_its_webhook_is_deleted() {
        let (_dir, conn) = backlog(7_000, 0, true);
        conn.execute(
            "UPDATE deliveries SET state = 'failed', due_at = NULL, next_attempt_at = NULL",
            [],
        )
        .unwrap();
        let org = OrgId::from_trusted("org_1".into());
        let (since, now) = (Timestamp::from_millis(0), Timestamp::from_millis(9));
        let first = ok(recover_failed(&conn, &org, &hook(), since, now, false, ""));
        assert_eq!(first.changed, 5_000);
        conn.execute("UPDATE webhooks SET deleted_at = 10 WHERE id = ?1", [HOOK])
            .unwrap();
        let next = first.next.unwrap();
        let rest = ok(recover_failed(
            &conn,
            &org,
            &hook(),
            since,
            now,
            false,
            &next,
        ));
        assert_eq!((rest.changed, rest.next.is_some()), (0, false));
        assert_eq!(
            count(&conn, "webhook_id = 'wh_big' AND state = 'failed'"),
            2_000
        );
    }

    #[test]
    fn a_walk_goes_past_many_deliveries_due_at_the_same_time() {
        // 7,000 of the big webhook's and the other's one, all due at the same millisecond:
        // each step goes on from the last (due, id) it read, so none is read twice and the
        // other's, after them in id order, is found in the second step.
        let (_dir, conn) = backlog(7_000, 0, true);
        conn.execute("UPDATE deliveries SET due_at = 7, next_attempt_at = 7", [])
            .unwrap();
        conn.execute("UPDATE webhooks SET active = 0 WHERE id = ?1", [OTHER])
            .unwrap();
        let other = WebhookId::from_trusted(OTHER.into());
        let steps = run(Walk::due_from(i64::MIN), |w| ok(park(&conn, &other, w)));
        assert_eq!(steps, [0, 1]);
        assert_eq!(
            count(&conn, "webhook_id = 'wh_other' AND due_at IS NULL"),
            1
        );
        assert_eq!(count(&conn, "webhook_id = 'wh_big' AND due_at = 7"), 7_000);
    }

    #[test]
    fn cancelling_reads_the_webhooks_own_history_a_bounded_step_at_a_time() {
        // 6,000 finished deliveries, then 10 pending: the first step reads 5,000 and cancels
        // none, the second goes on from there.
        let (_dir, conn) = backlog(6_010, 0, false);
        conn.execute(
            "UPDATE deliveries SET state = 'succeeded', due_at = NULL \
             WHERE webhook_id = ?1 AND id < 'dlv_06000'",
            [HOOK],
        )
        .unwrap();
        let steps = run(String::new(), |after| {
            ok(cancel(&conn, &hook(), Timestamp::from_millis(9), after))
        });
        assert_eq!(steps, [0, 10]);
        assert_eq!(count(&conn, "state = 'cancelled'"), 10);
        assert_eq!(count(&conn, "state = 'succeeded'"), 6_000);
        // The other webhook: its one pending delivery, in one step.
        let other = WebhookId::from_trusted(OTHER.into());
        let steps = run(String::new(), |after| {
            ok(cancel(&conn, &other, Timestamp::from_millis(9), after))
        });
        assert_eq!(steps, [1]);
    }

    #[test]
    fn cancelling_takes_every_pending_one_parked_due_or_leased() {
        let (_dir, conn) = backlog(2_200, 100, false);
        conn.execute(
            "UPDATE deliveries SET due_at = NULL WHERE webhook_id = ?1 AND id < 'dlv_01200'",
            [HOOK],
        )
        .unwrap();
        let steps = run(String::new(), |after| {
            ok(cancel(&conn, &hook(), Timestamp::from_millis(9), after))
        });
        // The webhook's 2,200 pending ones, parked, due or leased, a step of 1,000 at a time.
        assert_eq!(steps, [1_000, 1_000, 200]);
        assert_eq!(
            count(&conn, "state = 'cancelled' AND updated_at = 9"),
            2_200
        );
        assert_eq!(count(&conn, "state = 'pending'"), 1, "the other webhook's");
    }

    /// A resume whose caller gives up halfway (hyper drops a request's future when its client
    /// disconnects) still puts every delivery back on its schedule.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_whose_caller_gives_up_is_still_made_whole() {
        use herald_core::store::Store;
        const N: usize = 30_000;
        let (dir, conn) = backlog(N, 0, false);
        conn.execute(
            "UPDATE deliveries SET due_at = NULL WHERE webhook_id = ?1",
            [HOOK],
        )
        .unwrap();
        drop(conn);
        let path = dir.path().join("herald.db");
        let store = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
        let org = herald_core::OrgId::from_trusted("org_1".into());
        let resumed = herald_core::webhook::Webhook {
            active: true,
            ..store.get_webhook(&org, &hook()).await.unwrap()
        };
        let caller = tokio::spawn({
            let store = store.clone();
            async move { store.update_webhook(&resumed).await }
        });
        // The caller goes away once the first step is committed.
        let watch = open_connection(&path, true).unwrap();
        let parked = |watch: &Connection| count(watch, "webhook_id = 'wh_big' AND due_at IS NULL");
        for _ in 0..5_000 {
            if parked(&watch) < N as i64 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        caller.abort();
        let mut left = parked(&watch);
        for _ in 0..1_000 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            left = parked(&watch);
        }
        assert_eq!(left, 0, "deliveries left parked by a resume given up");
    }

    #[test]
    fn a_stop_between_steps_is_finished_when_the_store_opens() {
        // A resume cut short: the webhook is active and some of its deliveries still parked.
        let (dir, conn) = backlog(300, 0, true);
        conn.execute(
            "UPDATE deliveries SET due_at = NULL WHERE id < 'dlv_00200'",
            [],
        )
        .unwrap();
        // A pause cut short: the other webhook is inactive and its delivery still due.
        conn.execute("UPDATE webhooks SET active = 0 WHERE id = ?1", [OTHER])
            .unwrap();
        drop(conn);
        let path = dir.path().join("herald.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = open_connection(&path, false).unwrap();
        assert_eq!(
            count(&conn, "webhook_id = 'wh_big' AND due_at = next_attempt_at"),
            300
        );
        assert_eq!(
            count(&conn, "webhook_id = 'wh_other' AND due_at IS NULL"),
            1
        );
    }
}
