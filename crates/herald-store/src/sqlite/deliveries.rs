//! Events, deliveries and attempts: ingest, claiming due work, recording outcomes, history.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use herald_core::delivery::{Attempt, Delivery, DeliveryState};
use herald_core::event::{Event, EventSummary};
use herald_core::retry::NextStep;
use herald_core::store::{AttemptRecord, DeliveryFilter, DueDelivery, IngestItem, IngestResult};
use herald_core::store::{EventFilter, PurgeCount, PurgeFrom};
use herald_core::{DeliveryId, OrgId, Page, PageRequest, Timestamp, WebhookId};

use super::rows;
use super::{DbResult, conflict, not_found};
use crate::paginate;

/// `value` as a pending delivery's `due_at`, or NULL (parked) if its webhook is inactive.
macro_rules! unless_parked {
    ($value:literal) => {
        concat!(
            "CASE WHEN (SELECT active FROM webhooks WHERE id = deliveries.webhook_id) = 1 THEN ",
            $value,
            " ELSE NULL END"
        )
    };
}

pub(crate) fn insert_events(
    conn: &Connection,
    org: &OrgId,
    items: &[IngestItem],
    now: Timestamp,
    lease_until: Timestamp,
) -> DbResult<Vec<IngestResult>> {
    let mut insert_event = conn.prepare_cached(
        "INSERT INTO events (org_id, id, type, occurred_at, received_at, correlation_id, data) \
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (org_id, id) DO NOTHING",
    )?;
    let mut insert_delivery = conn.prepare_cached(
        "INSERT INTO deliveries (id, org_id, webhook_id, event_id, event_seq, event_type, state, \
         attempt_count, schedule_base, next_attempt_at, due_at, lease_until, last_error, \
         created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?)",
    )?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let e = &item.event;
        let inserted = insert_event.execute(params![
            org.as_str(),
            e.id,
            e.event_type,
            e.occurred_at.as_millis(),
            e.received_at.as_millis(),
            e.correlation_id,
            e.data.get()
        ])?;
        if inserted == 0 {
            results.push(IngestResult::Duplicate);
            continue;
        }
        // The event's sequence number (`seq` aliases the rowid), by which its deliveries name it.
        let seq = conn.last_insert_rowid();
        for d in &item.deliveries {
            let (state, next, due, lease) = match &d.skip {
                Some(_) => ("skipped", None, None, None),
                None => {
                    let (next, due, lease) = d.stored_times(now, lease_until);
                    let lease = lease.map(Timestamp::as_millis);
                    (
                        "pending",
                        Some(next.as_millis()),
                        Some(due.as_millis()),
                        lease,
                    )
                }
            };
            insert_delivery.execute(params![
                d.id.as_str(),
                org.as_str(),
                d.webhook_id.as_str(),
                e.id,
                seq,
                e.event_type,
                state,
                next,
                due,
                lease,
                d.skip,
                now.as_millis(),
                now.as_millis()
            ])?;
        }
        results.push(IngestResult::Stored);
    }
    Ok(results)
}

/// A due delivery with its event, found by the event's sequence number (its rowid): one
/// integer lookup instead of a search of the `(org_id, id)` index by two strings.
const DUE_SELECT: &str = "SELECT d.id, d.org_id, d.webhook_id, d.attempt_count, d.schedule_base, \
     e.org_id, e.id, e.type, e.occurred_at, e.received_at, e.correlation_id, e.data, d.updated_at, d.last_status \
     FROM deliveries d JOIN events e ON e.seq = d.event_seq AND e.org_id = d.org_id";

fn due_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DueDelivery> {
    Ok(DueDelivery {
        delivery_id: DeliveryId::from_trusted(row.get(0)?),
        org_id: OrgId::from_trusted(row.get(1)?),
        webhook_id: WebhookId::from_trusted(row.get(2)?),
        attempt_count: row.get(3)?,
        schedule_base: row.get(4)?,
        event: Arc::new(rows::event_at(row, 5)?),
        updated_at: Timestamp::from_millis(row.get(12)?),
        last_status: row.get(13)?,
    })
}

/// Due deliveries of active webhooks, earliest first.
fn claim_sql() -> String {
    format!(
        "{DUE_SELECT} JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.state = 'pending' AND d.due_at <= ?1 AND w.active = 1 AND w.deleted_at IS NULL \
         ORDER BY d.due_at LIMIT ?2"
    )
}

pub(crate) fn claim_due(
    conn: &Connection,
    now: Timestamp,
    lease_until: Timestamp,
    limit: u32,
) -> DbResult<Vec<DueDelivery>> {
    let due = conn
        .prepare_cached(&claim_sql())?
        .query_map(params![now.as_millis(), limit], due_row)?
        .collect::<Result<Vec<_>, _>>()?;
    lease(conn, &due, lease_until)?;
    Ok(due)
}

/// Leases deliveries just read to this node until `lease_until`.
fn lease(conn: &Connection, due: &[DueDelivery], lease_until: Timestamp) -> DbResult<()> {
    let mut lease =
        conn.prepare_cached("UPDATE deliveries SET lease_until = ?1, due_at = ?1 WHERE id = ?2")?;
    for d in due {
        lease.execute(params![lease_until.as_millis(), d.delivery_id.as_str()])?;
    }
    Ok(())
}

/// One webhook's spilled deliveries from `from` on, in id order, through
/// `deliveries_by_webhook`: pending and unleased, due by their schedule (`next_attempt_at`) but
/// with `due_at` put off. Plain due ones in the range match too; deferred ones (whose
/// `next_attempt_at` moved) and parked ones (no `due_at`) do not.
pub(crate) fn claim_spilled(
    conn: &Connection,
    webhook: &WebhookId,
    from: &DeliveryId,
    now: Timestamp,
    lease_until: Timestamp,
    limit: u32,
) -> DbResult<Vec<DueDelivery>> {
    let sql = format!(
        "{DUE_SELECT} JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.webhook_id = ?1 AND d.id >= ?2 AND d.state = 'pending' AND d.lease_until IS NULL \
         AND d.due_at IS NOT NULL AND d.next_attempt_at <= ?3 AND w.active = 1 AND w.deleted_at IS NULL \
         ORDER BY d.id LIMIT ?4"
    );
    let due = conn
        .prepare_cached(&sql)?
        .query_map(
            params![webhook.as_str(), from.as_str(), now.as_millis(), limit],
            due_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    lease(conn, &due, lease_until)?;
    Ok(due)
}

/// Unleases deliveries this node gives back to the store, leaving `due_at` at the lease's end
/// (or parking them, if their webhook was deactivated meanwhile), each only if it still has
/// the lease this node took.
pub(crate) fn spill(conn: &Connection, leases: &[(DeliveryId, Timestamp)]) -> DbResult<()> {
    let mut spill = conn.prepare_cached(concat!(
        "UPDATE deliveries SET lease_until = NULL, due_at = ",
        unless_parked!("due_at"),
        " WHERE id = ?1 AND state = 'pending' AND lease_until = ?2"
    ))?;
    for (id, lease_until) in leases {
        spill.execute(params![id.as_str(), lease_until.as_millis()])?;
    }
    Ok(())
}

/// A spilled delivery: pending and unleased, with `due_at` (its fallback) after its schedule.
const SPILLED: &str = "state = 'pending' AND lease_until IS NULL AND due_at > next_attempt_at";

pub(crate) fn rearm_spilled(
    conn: &Connection,
    webhook: &WebhookId,
    from: &DeliveryId,
    now: Timestamp,
    until: Timestamp,
    limit: u32,
) -> DbResult<u64> {
    // Through `deliveries_by_webhook` from the cursor: only what this node will pull, and
    // without reading other webhooks' due deliveries.
    let n = conn
        .prepare_cached(&format!(
            "UPDATE deliveries SET due_at = ?4 WHERE id IN ( \
                 SELECT id FROM deliveries INDEXED BY deliveries_by_webhook \
                 WHERE webhook_id = ?1 AND id >= ?2 AND {SPILLED} AND due_at <= ?3 \
                 ORDER BY id LIMIT ?5)"
        ))?
        .execute(params![
            webhook.as_str(),
            from.as_str(),
            now.as_millis(),
            until.as_millis(),
            limit
        ])?;
    Ok(n as u64)
}

pub(crate) fn spilled_starts(conn: &Connection) -> DbResult<Vec<(WebhookId, DeliveryId)>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT webhook_id, MIN(id) FROM deliveries INDEXED BY deliveries_due \
             WHERE {SPILLED} AND webhook_id IN \
                 (SELECT id FROM webhooks WHERE active = 1 AND deleted_at IS NULL) \
             GROUP BY webhook_id"
        ))?
        .query_map([], |r| {
            Ok((
                WebhookId::from_trusted(r.get(0)?),
                DeliveryId::from_trusted(r.get(1)?),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn earliest_due_webhook(
    conn: &Connection,
    now: Timestamp,
) -> DbResult<Option<WebhookId>> {
    let webhook: Option<String> = conn
        .prepare_cached(
            "SELECT d.webhook_id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.state = 'pending' AND d.due_at <= ?1 AND w.active = 1 AND w.deleted_at IS NULL \
             ORDER BY d.due_at LIMIT 1",
        )?
        .query_row([now.as_millis()], |r| r.get(0))
        .optional()?;
    Ok(webhook.map(WebhookId::from_trusted))
}

pub(crate) fn next_due_at(conn: &Connection) -> DbResult<Option<Timestamp>> {
    let next: Option<i64> = conn
        .prepare_cached(
            "SELECT d.due_at FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.state = 'pending' AND d.due_at IS NOT NULL AND w.active = 1 AND w.deleted_at IS NULL \
             ORDER BY d.due_at LIMIT 1",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(next.map(Timestamp::from_millis))
}

/// `due_at` for a delivery going back on its schedule: parked (NULL) if its webhook is inactive.
const DUE_UNLESS_PARKED: &str = unless_parked!("next_attempt_at");

/// Records attempts and moves their deliveries on (`Store::record_attempts`), answering which
/// did. A delivery cancelled while its attempt was in flight (its webhook deleted) that the
/// endpoint accepted is recorded as succeeded: the receiver has it, and its history should say
/// so. Each statement is taken from the cache once for all the records: taking it and giving it
/// back hashes its whole text, which cost about a tenth of recording an attempt when done for
/// each one.
pub(crate) fn record_attempts(conn: &Connection, records: &[AttemptRecord]) -> DbResult<Vec<bool>> {
    let mut insert_attempt = conn.prepare_cached(INSERT_ATTEMPT)?;
    let mut update_delivery = conn.prepare_cached(
        "UPDATE deliveries SET state = ?1, attempt_count = ?2, next_attempt_at = ?3, \
         due_at = CASE WHEN ?3 IS NOT NULL \
             AND (SELECT active FROM webhooks WHERE id = deliveries.webhook_id) = 1 THEN ?3 ELSE NULL END, \
         lease_until = NULL, last_status = ?4, last_error = ?5, updated_at = ?6 \
         WHERE id = ?7 AND org_id = ?8 AND ((state = 'pending' AND (?9 IS NULL OR lease_until = ?9)) \
             OR (state = 'cancelled' AND ?1 = 'succeeded'))",
    )?;
    let mut moved = Vec::with_capacity(records.len());
    for r in records {
        let a = &r.attempt;
        let (state, next_at) = match r.next {
            NextStep::Succeeded => ("succeeded", None),
            NextStep::Failed => ("failed", None),
            NextStep::RetryAt(at) => ("pending", Some(at.as_millis())),
        };
        let updated_at = a.started_at.as_millis() + i64::from(a.duration_ms);
        let applied = update_delivery.execute(params![
            state,
            a.number,
            next_at,
            a.status,
            a.error,
            updated_at,
            a.delivery_id.as_str(),
            r.org_id.as_str(),
            r.lease_until.map(Timestamp::as_millis)
        ])? == 1;
        // Not moved on: its lease passed to another node, or an earlier try stored it already.
        let stored_before = !applied && attempt_exists(conn, &a.id)?;
        let cancelled = !applied && !stored_before && is_cancelled(conn, &a.delivery_id)?;
        if cancelled {
            // Out when its webhook was deleted: part of its history, and of its summary.
            conn.prepare_cached(
                "UPDATE deliveries SET attempt_count = MAX(attempt_count, ?1), last_status = ?2, \
                 last_error = ?3, updated_at = MAX(updated_at, ?4) \
                 WHERE id = ?5 AND state = 'cancelled'",
            )?
            .execute(params![
                a.number,
                a.status,
                a.error,
                updated_at,
                a.delivery_id.as_str()
            ])?;
        }
        if !stored_before && (applied || cancelled) {
            insert(&mut insert_attempt, a)?;
        }
        moved.push(applied || stored_before);
    }
    Ok(moved)
}

/// Stores the attempts a stop cut off (`Store::record_cut_off`): each delivery still under the
/// record's lease, with as many attempts as the record's number follows, counts the attempt,
/// due again as it was (its time, now past), with its schedule's base moved on with it so that
/// no retry is spent.
pub(crate) fn record_cut_off(
    conn: &Connection,
    records: &[AttemptRecord],
) -> DbResult<Vec<DeliveryId>> {
    let mut update_delivery = conn.prepare_cached(&format!(
        "UPDATE deliveries SET attempt_count = ?1, schedule_base = MIN(schedule_base + 1, ?1), \
         lease_until = NULL, due_at = {DUE_UNLESS_PARKED}, last_status = NULL, last_error = ?2, \
         updated_at = ?3 WHERE id = ?4 AND org_id = ?5 AND state = 'pending' AND lease_until = ?6 \
         AND attempt_count = ?1 - 1"
    ))?;
    let mut insert_attempt = conn.prepare_cached(INSERT_ATTEMPT)?;
    let mut stored = Vec::new();
    for r in records {
        let (a, Some(lease)) = (&r.attempt, r.lease_until) else {
            continue;
        };
        let updated_at = a.started_at.as_millis() + i64::from(a.duration_ms);
        let applied = update_delivery.execute(params![
            a.number,
            a.error,
            updated_at,
            a.delivery_id.as_str(),
            r.org_id.as_str(),
            lease.as_millis()
        ])? == 1;
        if applied {
            insert(&mut insert_attempt, a)?;
            stored.push(a.delivery_id.clone());
        }
    }
    Ok(stored)
}

const INSERT_ATTEMPT: &str = "INSERT INTO attempts (id, delivery_id, number, started_at, \
     duration_ms, status, error, error_message, response_body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Stores one attempt with `INSERT_ATTEMPT`.
fn insert(statement: &mut rusqlite::CachedStatement<'_>, a: &Attempt) -> DbResult<()> {
    statement.execute(params![
        a.id.as_str(),
        a.delivery_id.as_str(),
        a.number,
        a.started_at.as_millis(),
        a.duration_ms,
        a.status,
        a.error,
        a.error_message,
        a.response_body
    ])?;
    Ok(())
}

fn attempt_exists(conn: &Connection, id: &herald_core::AttemptId) -> DbResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM attempts WHERE id = ?")?
        .query_row([id.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Whether the delivery was cancelled: an attempt that was out meanwhile is part of its history.
fn is_cancelled(conn: &Connection, id: &DeliveryId) -> DbResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM deliveries WHERE id = ? AND state = 'cancelled'")?
        .query_row([id.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(crate) fn release_lease(
    conn: &Connection,
    id: &DeliveryId,
    lease_until: Timestamp,
) -> DbResult<()> {
    conn.prepare_cached(&format!(
        "UPDATE deliveries SET lease_until = NULL, due_at = {DUE_UNLESS_PARKED} \
         WHERE id = ?1 AND state = 'pending' AND lease_until = ?2"
    ))?
    .execute(params![id.as_str(), lease_until.as_millis()])?;
    Ok(())
}

pub(crate) fn release_all_leases(conn: &Connection) -> DbResult<u64> {
    let n = conn.execute(
        &format!(
            "UPDATE deliveries SET lease_until = NULL, due_at = {DUE_UNLESS_PARKED} \
             WHERE state = 'pending' AND lease_until IS NOT NULL"
        ),
        [],
    )?;
    Ok(n as u64)
}

pub(crate) fn list(
    conn: &Connection,
    org: &OrgId,
    webhook: &WebhookId,
    filter: &DeliveryFilter,
    page: &PageRequest,
) -> DbResult<Page<Delivery>> {
    let items = conn
        .prepare_cached(&list_sql(page.cursor.is_some()))?
        .query_map(
            params![
                webhook.as_str(),
                org.as_str(),
                page.cursor,
                filter.state.map(|s| s.as_str()),
                filter.event_type,
                page.limit + 1
            ],
            rows::delivery,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(paginate(items, page, |d| d.id.to_string()))
}

/// A page of a webhook's deliveries, newest first. With a cursor the statement says `id < ?3`
/// plainly, so that the index starts at the cursor: written as `?3 IS NULL OR id < ?3` it would
/// start every page at the newest delivery and walk down to the cursor.
fn list_sql(after_cursor: bool) -> String {
    format!(
        "SELECT {} FROM deliveries WHERE webhook_id = ?1 AND org_id = ?2 AND {} \
         AND (?4 IS NULL OR state = ?4) AND (?5 IS NULL OR event_type = ?5) \
         ORDER BY id DESC LIMIT ?6",
        rows::DELIVERY_COLUMNS,
        if after_cursor {
            "id < ?3"
        } else {
            "?3 IS NULL"
        }
    )
}

pub(crate) fn get(
    conn: &Connection,
    org: &OrgId,
    id: &DeliveryId,
) -> DbResult<(Delivery, Vec<Attempt>)> {
    // One snapshot for both reads: between them an attempt's outcome may be committed, and a
    // delivery still `pending` would show the attempt that made it `succeeded`.
    let snapshot = conn.unchecked_transaction()?;
    let sql = format!(
        "SELECT {} FROM deliveries WHERE org_id = ? AND id = ?",
        rows::DELIVERY_COLUMNS
    );
    let delivery = conn
        .prepare_cached(&sql)?
        .query_row([org.as_str(), id.as_str()], rows::delivery)
        .optional()?
        .ok_or_else(not_found)?;
    let sql = format!(
        "SELECT {} FROM attempts WHERE delivery_id = ? ORDER BY number, started_at",
        rows::ATTEMPT_COLUMNS
    );
    let attempts = conn
        .prepare_cached(&sql)?
        .query_map([id.as_str()], rows::attempt)?
        .collect::<Result<Vec<_>, _>>()?;
    snapshot.commit()?;
    Ok((delivery, attempts))
}

/// An event and its deliveries, in one snapshot: its deliveries name it by its sequence number.
pub(crate) fn event_deliveries(
    conn: &Connection,
    org: &OrgId,
    id: &str,
    limit: u32,
) -> DbResult<(Event, Vec<Delivery>)> {
    let snapshot = conn.unchecked_transaction()?;
    let event = get_event(conn, org, id)?;
    let sql = format!(
        "SELECT {} FROM deliveries WHERE event_seq = \
         (SELECT seq FROM events WHERE org_id = ?1 AND id = ?2) AND org_id = ?1 \
         ORDER BY id LIMIT ?3",
        rows::DELIVERY_COLUMNS
    );
    let deliveries = conn
        .prepare_cached(&sql)?
        .query_map(params![org.as_str(), id, limit], rows::delivery)?
        .collect::<Result<Vec<_>, _>>()?;
    snapshot.commit()?;
    Ok((event, deliveries))
}

pub(crate) fn get_event(conn: &Connection, org: &OrgId, id: &str) -> DbResult<Event> {
    let sql = format!(
        "SELECT {} FROM events WHERE org_id = ? AND id = ?",
        rows::EVENT_COLUMNS
    );
    conn.prepare_cached(&sql)?
        .query_row([org.as_str(), id], |r| rows::event_at(r, 0))
        .optional()?
        .ok_or_else(not_found)
}

/// A page of the organization's events, newest first (by time received, then by id), through
/// `events_by_org`. After a cursor, in two statements that each start the index where they
/// should: the rest of the cursor's millisecond, then what was received before it. (Written
/// as one row-value comparison, SQLite bounds the index by the time alone and walks the
/// millisecond's other events, a thousand for each batch stored in it.)
pub(crate) fn list_events(
    conn: &Connection,
    org: &OrgId,
    filter: &EventFilter,
    page: &PageRequest,
) -> DbResult<Page<EventSummary>> {
    let since = filter.since.map(|t| t.as_millis());
    let want = page.limit as usize + 1;
    let summary = |r: &rusqlite::Row<'_>| {
        Ok(EventSummary {
            id: r.get(0)?,
            event_type: r.get(1)?,
            occurred_at: Timestamp::from_millis(r.get(2)?),
            received_at: Timestamp::from_millis(r.get(3)?),
            correlation_id: r.get(4)?,
        })
    };
    // One snapshot for both statements: an event stored between them is in neither or both.
    let _snapshot = conn.unchecked_transaction()?;
    let cursor = crate::event_cursor(page);
    let mut items = Vec::new();
    if let Some(cursor) = &cursor {
        items = conn
            .prepare_cached(&list_events_sql(EventsFrom::SameMillisecond))?
            .query_map(
                params![
                    org.as_str(),
                    cursor.received_at.as_millis(),
                    cursor.id,
                    filter.event_type,
                    want,
                    since
                ],
                summary,
            )?
            .collect::<Result<Vec<_>, _>>()?;
    }
    if items.len() < want {
        let from = if cursor.is_some() {
            EventsFrom::Before
        } else {
            EventsFrom::Newest
        };
        let rest = conn
            .prepare_cached(&list_events_sql(from))?
            .query_map(
                params![
                    org.as_str(),
                    cursor.as_ref().map(|c| c.received_at.as_millis()),
                    None::<String>,
                    filter.event_type,
                    want - items.len(),
                    since
                ],
                summary,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        items.extend(rest);
    }
    Ok(paginate(items, page, EventSummary::cursor))
}

/// Where a statement of [`list_events`] starts.
#[derive(Clone, Copy)]
enum EventsFrom {
    Newest,
    /// After the cursor's event, in its millisecond.
    SameMillisecond,
    /// Received before the cursor's millisecond.
    Before,
}

fn list_events_sql(from: EventsFrom) -> String {
    let start = match from {
        EventsFrom::Newest => "?2 IS NULL AND ?3 IS NULL",
        EventsFrom::SameMillisecond => "received_at = ?2 AND id < ?3",
        EventsFrom::Before => "received_at < ?2 AND ?3 IS NULL",
    };
    format!(
        "SELECT {EVENT_SUMMARY} FROM events INDEXED BY events_by_org \
         WHERE org_id = ?1 AND {start} AND (?4 IS NULL OR type = ?4) \
         AND received_at >= coalesce(?6, -9223372036854775808) \
         ORDER BY received_at DESC, id DESC LIMIT ?5"
    )
}

/// What a list shows of an event.
const EVENT_SUMMARY: &str = "id, type, occurred_at, received_at, correlation_id";

/// Those of `ids` the organization has, each found by its index (the lookups share one
/// prepared statement and one read).
pub(crate) fn get_events(conn: &Connection, org: &OrgId, ids: &[String]) -> DbResult<Vec<Event>> {
    let sql = format!(
        "SELECT {} FROM events WHERE org_id = ? AND id = ?",
        rows::EVENT_COLUMNS
    );
    let mut select = conn.prepare_cached(&sql)?;
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(event) = select
            .query_row([org.as_str(), id], |r| rows::event_at(r, 0))
            .optional()?
        {
            found.push(event);
        }
    }
    Ok(found)
}

pub(crate) fn resend(
    conn: &Connection,
    org: &OrgId,
    id: &DeliveryId,
    now: Timestamp,
    lease_until: Timestamp,
) -> DbResult<DueDelivery> {
    let state: Option<(String, bool, bool, bool)> = conn
        .prepare_cached(
            "SELECT d.state, w.active, w.deleted_at IS NOT NULL, \
               COALESCE(d.lease_until > ?3, 0) FROM deliveries d \
             JOIN webhooks w ON w.id = d.webhook_id WHERE d.org_id = ?1 AND d.id = ?2",
        )?
        .query_row(params![org.as_str(), id.as_str(), now.as_millis()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((state, active, deleted, leased)) = state else {
        return Err(not_found());
    };
    if let Some(why) = herald_core::delivery::resend_refusal(&state, active, deleted, leased) {
        return Err(conflict(why.into()));
    }
    // A finished delivery starts its schedule over. A pending one waiting for its next attempt
    // has one now, besides its schedule (which does not count it: if it fails, the step it
    // waited for comes again), unless its schedule has made none yet (then this is its first);
    // one due already just has its attempt now.
    conn.prepare_cached(
        "UPDATE deliveries SET schedule_base = CASE \
           WHEN state = 'pending' AND next_attempt_at > ?1 \
             THEN MIN(schedule_base + 1, attempt_count) \
           WHEN state = 'pending' THEN schedule_base ELSE attempt_count END, state = 'pending', next_attempt_at = ?1, \
         due_at = ?2, lease_until = ?2, updated_at = ?1 WHERE id = ?3",
    )?
    .execute(params![
        now.as_millis(),
        lease_until.as_millis(),
        id.as_str()
    ])?;
    let sql = format!("{DUE_SELECT} WHERE d.id = ?");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id.as_str()], due_row)?)
}

/// The most events one step of a purge looks at. Each step is one job of the writer that every
/// tenant shares, and an organization may have millions of events kept back by a pending
/// delivery: passing over 2,000 takes about 0.4 ms.
const PURGE_SCAN: u32 = 2_000;
/// What moving on to the next organization counts for, in events looked at: two seeks, each
/// dearer than a step along the index, so that a step of a purge of every organization stays
/// bounded however many organizations have nothing to purge.
const PURGE_ORG_HOP: u32 = 20;

/// One step of a purge: deletes up to `limit` events received before `cutoff` (of one
/// organization, or all) that have no pending delivery, with their deliveries and attempts.
/// Answers what went and where the next step starts (`None`: nothing left to look at).
pub(crate) fn purge(
    conn: &Connection,
    org: Option<&OrgId>,
    cutoff: Timestamp,
    limit: u32,
    from: Option<PurgeFrom>,
) -> DbResult<(PurgeCount, Option<PurgeFrom>)> {
    // Deliveries name their event by its sequence number (migration 8), so each step here goes
    // through an index: an organization's events by age (`events_by_org`, whose entries end
    // with the sequence number, which orders the events of one millisecond), deliveries by
    // event sequence, attempts by delivery. Events with something pending are passed over, at
    // most PURGE_SCAN of them per step. (SQLite bounds the index by the time alone and steps
    // over the start's millisecond to the sequence number; a step stopped in a batch of a
    // thousand events starts there again.) A purge of every organization walks them one after
    // another, in the order of their ids, each move counting PURGE_ORG_HOP.
    let (mut at, mut seq) = from
        .as_ref()
        .map_or((i64::MIN, i64::MIN), |f| (f.received_at.as_millis(), f.seq));
    let mut walked = match (org, from.and_then(|f| f.org)) {
        (Some(org), _) => Some(org.to_string()),
        (None, Some(walked)) => Some(walked.to_string()),
        (None, None) => next_org_with_events(conn, "")?,
    };
    let mut look = conn.prepare_cached(
        "SELECT e.seq, e.received_at, NOT EXISTS (SELECT 1 FROM deliveries d \
             WHERE d.event_seq = e.seq AND d.state = 'pending') \
         FROM events e INDEXED BY events_by_org \
         WHERE e.org_id = ?1 AND e.received_at < ?2 AND (e.received_at, e.seq) > (?3, ?4) \
         ORDER BY e.received_at, e.seq LIMIT ?5",
    )?;
    let mut victims = Vec::new();
    let mut looked_at = 0;
    let next = loop {
        let Some(current) = walked.take() else {
            break None;
        };
        let rows: Vec<(i64, i64, bool)> = look
            .query_map(
                params![current, cutoff.as_millis(), at, seq, PURGE_SCAN - looked_at],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<Result<_, _>>()?;
        looked_at += rows.len() as u32;
        // Where the next step starts: after this event (of this organization, when walking all).
        let after = |&(event, received, _): &(i64, i64, bool)| {
            purge_from(received, event, org.is_none().then_some(current.as_str()))
        };
        let mut filled = None;
        for row in &rows {
            if row.2 {
                victims.push(row.0);
                if victims.len() >= limit as usize {
                    filled = Some(after(row));
                    break;
                }
            }
        }
        if filled.is_some() {
            break filled;
        }
        if looked_at >= PURGE_SCAN {
            break rows.last().map(after);
        }
        // This organization is done; when walking all, the next one from its first event.
        if org.is_some() {
            break None;
        }
        looked_at += PURGE_ORG_HOP;
        walked = next_org_with_events(conn, &current)?;
        (at, seq) = (i64::MIN, i64::MIN);
        if looked_at >= PURGE_SCAN {
            break walked.map(|next| purge_from(at, seq, Some(&next)));
        }
    };
    let mut count = PurgeCount::default();
    let mut attempts = conn.prepare_cached(
        "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_seq = ?1)",
    )?;
    let mut deliveries = conn.prepare_cached("DELETE FROM deliveries WHERE event_seq = ?1")?;
    let mut events = conn.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
    for seq in &victims {
        count.attempts += attempts.execute([seq])? as u64;
        count.deliveries += deliveries.execute([seq])? as u64;
        count.events += events.execute([seq])? as u64;
    }
    Ok((count, next))
}

fn purge_from(received_at: i64, seq: i64, org: Option<&str>) -> PurgeFrom {
    PurgeFrom {
        received_at: Timestamp::from_millis(received_at),
        seq,
        org: org.map(|o| OrgId::from_trusted(o.to_owned())),
    }
}

/// The first organization after `after` (by id) that has events, found by one seek.
fn next_org_with_events(conn: &Connection, after: &str) -> DbResult<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT org_id FROM events INDEXED BY events_by_org WHERE org_id > ?1 \
             ORDER BY org_id LIMIT 1",
        )?
        .query_row([after], |r| r.get(0))
        .optional()?)
}

pub(crate) fn renew_leases(
    conn: &Connection,
    leases: &[(DeliveryId, Timestamp)],
    until: Timestamp,
) -> DbResult<Vec<DeliveryId>> {
    let mut renew = conn.prepare_cached(
        "UPDATE deliveries SET lease_until = ?1, due_at = ?1 \
         WHERE id = ?2 AND state = 'pending' AND lease_until = ?3",
    )?;
    let mut renewed = Vec::with_capacity(leases.len());
    for (id, lease_until) in leases {
        if renew.execute(params![
            until.as_millis(),
            id.as_str(),
            lease_until.as_millis()
        ])? == 1
        {
            renewed.push(id.clone());
        }
    }
    Ok(renewed)
}

pub(crate) fn defer(
    conn: &Connection,
    org: &OrgId,
    leases: &[(DeliveryId, Timestamp)],
    until: Timestamp,
) -> DbResult<usize> {
    // Parked if the webhook was paused meanwhile: its pause's walk may have gone past it.
    let mut defer = conn.prepare_cached(concat!(
        "UPDATE deliveries SET lease_until = NULL, next_attempt_at = MAX(COALESCE(next_attempt_at, ?1), ?1), \
         due_at = ",
        unless_parked!("MAX(COALESCE(next_attempt_at, ?1), ?1)"),
        " WHERE id = ?2 AND org_id = ?3 AND state = 'pending' AND lease_until = ?4"
    ))?;
    let mut deferred = 0;
    for (id, lease_until) in leases {
        deferred += defer.execute(params![
            until.as_millis(),
            id.as_str(),
            org.as_str(),
            lease_until.as_millis()
        ])?;
    }
    Ok(deferred)
}

/// Ends leased deliveries unsent, as `state` (see `Store::end_unsent`).
pub(crate) fn end_unsent(
    conn: &Connection,
    org: &OrgId,
    leases: &[(DeliveryId, Timestamp)],
    state: DeliveryState,
    error: &str,
    now: Timestamp,
) -> DbResult<Vec<DeliveryId>> {
    let mut end = conn.prepare_cached(
        "UPDATE deliveries SET state = ?1, next_attempt_at = NULL, due_at = NULL, \
         lease_until = NULL, last_error = ?2, updated_at = ?3 \
         WHERE id = ?4 AND org_id = ?5 AND state = 'pending' AND lease_until = ?6",
    )?;
    let mut ended = Vec::new();
    for (id, lease_until) in leases {
        let changed = end.execute(params![
            state.as_str(),
            error,
            now.as_millis(),
            id.as_str(),
            org.as_str(),
            lease_until.as_millis()
        ])?;
        if changed == 1 {
            ended.push(id.clone());
        }
    }
    Ok(ended)
}

/// Pending deliveries per webhook, for every `/metrics` scrape. It reads only the pending ones,
/// through the index that holds just those; left to itself, SQLite would rather walk
/// `deliveries_by_webhook` (already grouped) and so read every delivery ever kept.
pub(crate) const PENDING_BY_WEBHOOK: &str = "SELECT p.webhook_id, p.n, p.oldest, \
     COALESCE(w.active, 1), p.org_id FROM (SELECT webhook_id, org_id, COUNT(*) AS n, \
     MIN(created_at) AS oldest FROM deliveries INDEXED BY deliveries_due WHERE state = 'pending' \
     GROUP BY webhook_id, org_id) p LEFT JOIN webhooks w ON w.id = p.webhook_id";

pub(crate) fn pending_by_webhook(
    conn: &Connection,
) -> DbResult<Vec<herald_core::store::PendingStat>> {
    Ok(conn
        .prepare_cached(PENDING_BY_WEBHOOK)?
        .query_map([], |r| {
            Ok(herald_core::store::PendingStat {
                webhook_id: WebhookId::from_trusted(r.get(0)?),
                org_id: OrgId::from_trusted(r.get(4)?),
                count: r.get(1)?,
                oldest: Timestamp::from_millis(r.get(2)?),
                active: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

/// Links to their events the deliveries stored without the event's sequence number: a Herald
/// from before that number (migration 8) ran again on this database after an upgrade and
/// wrote them so. Nothing finds such a delivery (its event is joined by that number): it would
/// never be sent, and retention would purge its event under it. A pending one whose event is
/// gone that way can never be sent: it fails, `event_missing`, rather than stay due for ever
/// (the scheduler would look for it every millisecond); finished ones stay history. Run at
/// start; the index on `event_seq` holds the missing ones, so it costs nothing when there are
/// none.
pub(crate) fn link_to_their_events(conn: &Connection) -> DbResult<()> {
    // Its event: same organization, id and type, stored no later than the delivery (a
    // producer that reused a purged event's id must not have its new event sent in its place).
    const THEIR_EVENT: &str = "FROM events e WHERE e.org_id = deliveries.org_id \
         AND e.id = deliveries.event_id AND e.type = deliveries.event_type \
         AND e.received_at <= deliveries.created_at";
    let tx = conn.unchecked_transaction()?;
    let linked = tx.execute(
        &format!(
            "UPDATE deliveries SET event_seq = (SELECT seq {THEIR_EVENT}) \
             WHERE event_seq IS NULL AND EXISTS (SELECT 1 {THEIR_EVENT})"
        ),
        [],
    )?;
    let failed = tx.execute(
        "UPDATE deliveries SET state = 'failed', last_error = 'event_missing', \
             next_attempt_at = NULL, due_at = NULL, lease_until = NULL \
         WHERE event_seq IS NULL AND state = 'pending'",
        [],
    )?;
    tx.commit()?;
    if linked + failed > 0 {
        tracing::warn!(
            linked,
            failed,
            "found deliveries an older Herald stored on this database after it was upgraded: linked those whose event is here, failed those still pending whose event it purged (they cannot be sent); downgrading is not supported: restore the backup taken before the upgrade instead"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite means to run `sql`, one line per step, on a fresh database with the schema.
    fn plan(sql: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open_connection(&dir.path().join("plan.db"), false).unwrap();
        assert!(super::super::migrate(&conn).is_ok());
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let unbound = vec![rusqlite::types::Null; explain.parameter_count()];
        let steps = explain
            .query_map(rusqlite::params_from_iter(unbound), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        steps.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    /// The statements that run on every scrape, page or admin action read what they need, not the
    /// whole delivery history.
    #[test]
    fn frequent_statements_read_only_what_they_need() {
        assert_eq!(
            plan(&list_sql(true)),
            "SEARCH deliveries USING INDEX deliveries_by_webhook (webhook_id=? AND id<?)",
            "a page after a cursor starts at the cursor"
        );
        assert_eq!(
            plan(&list_sql(false)),
            "SEARCH deliveries USING INDEX deliveries_by_webhook (webhook_id=?)"
        );
        let events = |from| plan(&list_events_sql(from));
        assert!(
            events(EventsFrom::SameMillisecond).starts_with(
                "SEARCH events USING INDEX events_by_org (org_id=? AND received_at=?)"
            ),
            "the rest of the cursor's millisecond: {}",
            events(EventsFrom::SameMillisecond)
        );
        assert!(
            events(EventsFrom::Before).starts_with(
                "SEARCH events USING INDEX events_by_org (org_id=? AND received_at>? AND received_at<?)"
            ),
            "{}",
            events(EventsFrom::Before)
        );
        assert!(
            events(EventsFrom::Newest).starts_with(
                "SEARCH events USING INDEX events_by_org (org_id=? AND received_at>?)"
            ),
            "{}",
            events(EventsFrom::Newest)
        );
        let claim = plan(&claim_sql());
        assert!(
            claim.contains("SEARCH e USING INTEGER PRIMARY KEY (rowid=?)"),
            "a claimed delivery's event is found by its sequence number: {claim}"
        );
        let pending = plan(PENDING_BY_WEBHOOK);
        assert!(
            pending.contains("SCAN deliveries USING INDEX deliveries_due"),
            "{pending}"
        );
    }
}
