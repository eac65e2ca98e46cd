//! Events, deliveries and attempts: the SQL of ingest (`ingest.rs` groups the requests),
//! claiming due work, leases, recording outcomes, history and purges.
//!
//! Leases are how nodes share work. A delivery a node holds in memory has `lease_until` set and
//! `due_at` equal to it, so when the node dies its deliveries simply become due at the end of the
//! lease and any node's `claim_due` takes them. `claim_due` locks the rows it takes with
//! `FOR UPDATE SKIP LOCKED`: nodes claiming at the same moment each get different deliveries
//! and never wait for each other.
//!
//! Whatever makes work due that no node holds (a delivery stored without a lease, a retry
//! scheduled, a lease given back, a webhook activated) is announced on `herald_work` in the same
//! transaction; PostgreSQL delivers the notification at commit, and idle nodes look at once.
//!
//! Collations. Ids sort as "C" (0001), but the columns that name them in other tables
//! (`attempts.delivery_id`, `deliveries.event_id`, each `org_id`...) sort by the database's
//! collation, and so do their indexes. Compared as they are, the two compare as "C", and
//! PostgreSQL cannot look the naming side up in its index: it scans the whole table. A
//! statement that finds rows by such a column names the database's collation on the id's side
//! (`id COLLATE "default"`). Giving those columns "C" instead would change the result type of
//! the statements that nodes still running the previous version (a rolling upgrade) keep
//! prepared: every one would fail (`cached plan must not change result type`) until the node
//! restarted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_core::delivery::{Attempt, Delivery, DeliveryState};
use herald_core::event::{Event, EventSummary};
use herald_core::retry::NextStep;
use herald_core::store::{
    AttemptRecord, ConfigMark, DeliveryFilter, DueDelivery, EventFilter, IngestItem, IngestResult,
    NewDelivery, PendingStat, PurgeCount, PurgeFrom, StoreError,
};
use herald_core::{DeliveryId, OrgId, Page, PageRequest, Timestamp, WebhookId};
use tokio_postgres::types::ToSql;

use super::rows::{self, big};
use deadpool_postgres::Pool;

use super::orgs::changed_after_mark;
use super::{Conn, DbResult, conflict, not_found};
use crate::paginate;

/// `value` as a pending delivery's `due_at`, or NULL (parked) if its webhook is inactive.
macro_rules! unless_parked {
    ($value:literal) => {
        concat!(
            "CASE WHEN (SELECT active FROM webhooks WHERE id = deliveries.webhook_id) THEN ",
            $value,
            " ELSE NULL END"
        )
    };
}

/// Tells every node (at commit) that work may be due.
pub(crate) async fn announce_work(c: &impl Conn) -> DbResult<()> {
    c.exec("SELECT pg_notify($1, '')", &[&super::signals::WORK_CHANNEL])
        .await?;
    Ok(())
}

/// Stores the events of one or more ingest requests and their deliveries in one statement: one
/// round trip whatever the number of events (row by row, a batch of 100 events took 200
/// sequential round trips). Events whose id is already stored in their organization are
/// duplicates: nothing of theirs is written. No id may be repeated among the events.
///
/// A request fanned out from a read of its organization that `$20` marks (a `pg_snapshot`;
/// `$19` is its organization, `$21` each event's request by its number from 1) is stale if a
/// change to the organization's configuration was committed after that mark
/// ([`changed_after_mark`]): nothing of it is written, and its number is answered.
const INSERT_EVENTS: &str = concat!(
    "WITH stale AS ( \
       SELECT r.n FROM UNNEST($19::TEXT[], $20::TEXT[]) WITH ORDINALITY AS r(org_id, seen, n) \
       WHERE r.seen IS NOT NULL AND ",
    changed_after_mark!("r.org_id", "r.seen"),
    "), \
     ev AS ( \
       INSERT INTO events (org_id, id, type, occurred_at, received_at, correlation_id, data) \
       SELECT e.org_id, e.id, e.type, e.occurred_at, e.received_at, e.correlation_id, e.data \
       FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], \
         $6::TEXT[], $7::TEXT[], $21::BIGINT[]) \
         AS e(org_id, id, type, occurred_at, received_at, correlation_id, data, request) \
       WHERE e.request NOT IN (SELECT n FROM stale) \
       ON CONFLICT (org_id, id) DO NOTHING \
       RETURNING org_id, id), \
     dl AS ( \
       INSERT INTO deliveries (id, org_id, webhook_id, event_id, event_type, state, attempt_count, \
         schedule_base, next_attempt_at, due_at, lease_until, last_error, created_at, updated_at) \
       SELECT d.id, d.org_id, d.webhook_id, d.event_id, d.event_type, d.state, 0, 0, d.next_at, \
         d.due_at, d.lease, d.skip, d.created, d.created \
       FROM UNNEST($8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], \
         $14::BIGINT[], $15::BIGINT[], $16::BIGINT[], $17::TEXT[], $18::BIGINT[]) \
         AS d(id, org_id, webhook_id, event_id, event_type, state, next_at, due_at, lease, skip, \
           created) \
       WHERE (d.org_id, d.event_id) IN (SELECT org_id, id FROM ev)) \
     SELECT org_id, id, NULL::BIGINT FROM ev UNION ALL SELECT NULL, NULL, n FROM stale"
);

/// One ingest request's part of [`insert_events`].
pub(crate) struct IngestRequest<'a> {
    pub org: &'a OrgId,
    /// The read of the organization its items were fanned out from
    /// ([`herald_core::store::Store::insert_events_unless_changed`]).
    pub seen: Option<&'a ConfigMark>,
    pub items: &'a [IngestItem],
    pub now: Timestamp,
    pub lease_until: Timestamp,
}

impl IngestRequest<'_> {
    /// Whether storing it must wake the schedulers: it has deliveries stored without a lease,
    /// which no node holds yet.
    pub(crate) fn announces(&self) -> bool {
        self.items
            .iter()
            .any(|i| i.deliveries.iter().any(NewDelivery::for_scheduler))
    }
}

/// The columns of [`INSERT_EVENTS`], one array per column.
#[derive(Default)]
struct IngestColumns<'a> {
    request_orgs: Vec<&'a str>,
    request_seen: Vec<Option<&'a str>>,
    /// Each event's request, numbered from 1 as `WITH ORDINALITY` numbers them.
    event_requests: Vec<i64>,
    event_orgs: Vec<&'a str>,
    event_ids: Vec<&'a str>,
    types: Vec<&'a str>,
    occurred: Vec<i64>,
    received: Vec<i64>,
    correlation: Vec<Option<&'a str>>,
    data: Vec<&'a str>,
    delivery_ids: Vec<&'a str>,
    delivery_orgs: Vec<&'a str>,
    webhooks: Vec<&'a str>,
    delivery_events: Vec<&'a str>,
    delivery_types: Vec<&'a str>,
    states: Vec<&'static str>,
    next_at: Vec<Option<i64>>,
    due_at: Vec<Option<i64>>,
    lease: Vec<Option<i64>>,
    skip: Vec<Option<&'a str>>,
    created: Vec<i64>,
}

impl<'a> IngestColumns<'a> {
    fn push_event(&mut self, n: usize, r: &IngestRequest<'a>, item: &'a IngestItem) {
        let e = &item.event;
        let org = r.org.as_str();
        self.event_requests.push(n as i64 + 1);
        self.event_orgs.push(org);
        self.event_ids.push(&e.id);
        self.types.push(&e.event_type);
        self.occurred.push(e.occurred_at.as_millis());
        self.received.push(e.received_at.as_millis());
        self.correlation.push(e.correlation_id.as_deref());
        self.data.push(e.data.get());
        for d in &item.deliveries {
            let (state, next, due, lease) = match &d.skip {
                Some(_) => ("skipped", None, None, None),
                None => {
                    let (next, due, lease) = d.stored_times(r.now, r.lease_until);
                    let lease = lease.map(Timestamp::as_millis);
                    (
                        "pending",
                        Some(next.as_millis()),
                        Some(due.as_millis()),
                        lease,
                    )
                }
            };
            self.delivery_ids.push(d.id.as_str());
            self.delivery_orgs.push(org);
            self.webhooks.push(d.webhook_id.as_str());
            self.delivery_events.push(&e.id);
            self.delivery_types.push(&e.event_type);
            self.states.push(state);
            self.next_at.push(next);
            self.due_at.push(due);
            self.lease.push(lease);
            self.skip.push(d.skip.as_deref());
            self.created.push(r.now.as_millis());
        }
    }
}

/// How many of the first `requests` repeat no id of another among them: at least one, if there
/// are any (a request may repeat its own: its first occurrence counts).
pub(crate) fn without_repeats(requests: &[IngestRequest<'_>]) -> usize {
    let mut first_in: HashMap<(&str, &str), usize> = HashMap::new();
    for (n, r) in requests.iter().enumerate() {
        for item in r.items {
            let first = *first_in
                .entry((r.org.as_str(), item.event.id.as_str()))
                .or_insert(n);
            if first != n {
                return n;
            }
        }
    }
    requests.len()
}

/// Stores the requests' events and deliveries with one statement, and answers each request's
/// results in its items' order, as if the requests had been stored one after the other: a
/// request whose organization changed after the read it was fanned out from stores nothing and
/// is answered [`StoreError::DirectoryChanged`]. The requests repeat no id of one another
/// ([`without_repeats`]: the caller stores those that do in a statement after).
pub(crate) async fn insert_events(
    c: &impl Conn,
    requests: &[IngestRequest<'_>],
) -> DbResult<Vec<Result<Vec<IngestResult>, StoreError>>> {
    debug_assert_eq!(without_repeats(requests), requests.len());
    let mut events: Vec<(usize, &IngestRequest<'_>, &IngestItem)> =
        Vec::with_capacity(requests.iter().map(|r| r.items.len()).sum());
    let mut cols = IngestColumns::default();
    let mut first_of_id = HashSet::new();
    for (n, r) in requests.iter().enumerate() {
        cols.request_orgs.push(r.org.as_str());
        cols.request_seen.push(r.seen.map(|s| s.0.as_str()));
        first_of_id.clear();
        events.extend(
            r.items
                .iter()
                .filter(|item| first_of_id.insert(item.event.id.as_str()))
                .map(|item| (n, r, item)),
        );
    }
    // Inserted in one order whatever the order sent: two statements storing some of the same
    // ids (a producer's retry on another node, batches sent at once) then wait for each other
    // instead of deadlocking, which PostgreSQL would end by failing one of them.
    events.sort_unstable_by_key(|(_, r, item)| (r.org.as_str(), item.event.id.as_str()));
    for (n, r, item) in events {
        cols.push_event(n, r, item);
    }
    let rows = c
        .rows(
            INSERT_EVENTS,
            &[
                &cols.event_orgs,
                &cols.event_ids,
                &cols.types,
                &cols.occurred,
                &cols.received,
                &cols.correlation,
                &cols.data,
                &cols.delivery_ids,
                &cols.delivery_orgs,
                &cols.webhooks,
                &cols.delivery_events,
                &cols.delivery_types,
                &cols.states,
                &cols.next_at,
                &cols.due_at,
                &cols.lease,
                &cols.skip,
                &cols.created,
                &cols.request_orgs,
                &cols.request_seen,
                &cols.event_requests,
            ],
        )
        .await?;
    // The ids stored, by organization, and the requests found stale.
    let mut stored: HashMap<String, HashSet<String>> = HashMap::new();
    let mut stale = HashSet::new();
    for row in &rows {
        match row.try_get::<_, Option<i64>>(2)? {
            Some(n) => {
                stale.insert(n as usize - 1);
            }
            None => {
                let (org, id) = (row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?);
                stored.entry(org).or_default().insert(id);
            }
        }
    }
    // The first occurrence of a stored id is the one stored; any later one is a duplicate.
    let mut announce = false;
    let mut results = Vec::with_capacity(requests.len());
    for (n, r) in requests.iter().enumerate() {
        if stale.contains(&n) {
            results.push(Err(StoreError::DirectoryChanged));
            continue;
        }
        let mut stored = stored.get_mut(r.org.as_str());
        let answers = r.items.iter().map(|item| {
            if stored
                .as_mut()
                .is_some_and(|ids| ids.remove(item.event.id.as_str()))
            {
                announce |= item.deliveries.iter().any(NewDelivery::for_scheduler);
                IngestResult::Stored
            } else {
                IngestResult::Duplicate
            }
        });
        results.push(Ok(answers.collect()));
    }
    if announce {
        announce_work(c).await?;
    }
    Ok(results)
}

const DUE_COLUMNS: &str = "d.id, d.org_id, d.webhook_id, d.attempt_count, d.schedule_base, \
     e.org_id, e.id, e.type, e.occurred_at, e.received_at, e.correlation_id, e.data, d.updated_at, d.last_status";

fn due_row(row: &tokio_postgres::Row) -> DbResult<DueDelivery> {
    Ok(DueDelivery {
        delivery_id: DeliveryId::from_trusted(row.try_get(0)?),
        org_id: OrgId::from_trusted(row.try_get(1)?),
        webhook_id: WebhookId::from_trusted(row.try_get(2)?),
        attempt_count: rows::int(row, 3)?,
        schedule_base: rows::int(row, 4)?,
        event: Arc::new(rows::event_at(row, 5)?),
        updated_at: Timestamp::from_millis(row.try_get(12)?),
        last_status: rows::opt_int(row, 13)?,
    })
}

/// A statement that leases the deliveries `due` selects (locking them, skipping rows other
/// nodes hold) until the parameter `lease_until`, and returns them with their events.
fn leasing(due: &str, lease_until: &str) -> String {
    format!(
        "WITH due AS ({due}), leased AS ( \
             UPDATE deliveries SET lease_until = {lease_until}, due_at = {lease_until} \
             FROM due WHERE deliveries.id = due.id RETURNING deliveries.* \
         ) \
         SELECT {DUE_COLUMNS}, due.held_until IS NOT NULL FROM leased d \
         JOIN due ON due.id = d.id JOIN events e ON e.org_id = d.org_id AND e.id = d.event_id"
    )
}

/// Whether a row of [`leasing`] was leased before, its lease run out: taken over.
fn was_taken_over(row: &tokio_postgres::Row) -> DbResult<bool> {
    Ok(row.try_get(14)?)
}

/// Leases what is due. Rows another node is claiming at this moment are skipped, not waited
/// for; a row whose lease another node renewed meanwhile is re-checked by PostgreSQL and left.
/// Answers how many of them were taken over too (their lease had run out).
pub(crate) async fn claim_due(
    c: &impl Conn,
    now: Timestamp,
    lease_until: Timestamp,
    limit: u32,
) -> DbResult<(Vec<DueDelivery>, u64)> {
    let sql = leasing(
        "SELECT d.id, d.lease_until AS held_until FROM deliveries d \
         JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.state = 'pending' AND d.due_at <= $1 AND w.active AND w.deleted_at IS NULL \
         ORDER BY d.due_at LIMIT $2 \
         FOR UPDATE OF d SKIP LOCKED",
        "$3",
    );
    let found = c
        .rows(
            &sql,
            &[&now.as_millis(), &big(limit), &lease_until.as_millis()],
        )
        .await?;
    let mut taken_over = 0;
    for row in &found {
        taken_over += u64::from(was_taken_over(row)?);
    }
    Ok((rows::all(found, due_row)?, taken_over))
}

/// Deliveries taken over: one line per 10 s, and the rest said once the 10 s are over.
static TAKEN_OVER: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(std::time::Duration::from_secs(10));

/// Says that `n` deliveries were leased after another lease on them ran out (once the lease
/// is committed): it explains the duplicates their endpoints may see.
pub(crate) fn say_taken_over(n: u64) {
    fn said(deliveries: u64) {
        tracing::warn!(
            deliveries,
            "took over deliveries whose lease had run out: the node holding them stopped without giving them back, or stalled; an endpoint may get one of them a second time"
        );
    }
    if let Some(held_back) = TAKEN_OVER.admit_or_later(n, said) {
        said(n + held_back);
    }
}

/// One webhook's spilled deliveries from `from` on, in id order (see the SQLite store's).
pub(crate) async fn claim_spilled(
    c: &impl Conn,
    webhook: &WebhookId,
    from: &DeliveryId,
    now: Timestamp,
    lease_until: Timestamp,
    limit: u32,
) -> DbResult<Vec<DueDelivery>> {
    let sql = leasing(
        "SELECT d.id, d.lease_until AS held_until FROM deliveries d \
         JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.webhook_id = $1 AND d.id >= $2 AND d.state = 'pending' \
         AND d.lease_until IS NULL AND d.due_at IS NOT NULL AND d.next_attempt_at <= $3 \
         AND w.active AND w.deleted_at IS NULL \
         ORDER BY d.id LIMIT $4 \
         FOR UPDATE OF d SKIP LOCKED",
        "$5",
    ) + " ORDER BY d.id";
    let found = c
        .rows(
            &sql,
            &[
                &webhook.as_str(),
                &from.as_str(),
                &now.as_millis(),
                &big(limit),
                &lease_until.as_millis(),
            ],
        )
        .await?;
    rows::all(found, due_row)
}

/// Unleases deliveries this node gives back, leaving `due_at` at the lease's end (or parking
/// them), each only if it still has the lease this node took. Not announced: no scheduler may
/// take them before then.
pub(crate) async fn spill(c: &impl Conn, leases: &[(DeliveryId, Timestamp)]) -> DbResult<()> {
    let ids: Vec<&str> = leases.iter().map(|(id, _)| id.as_str()).collect();
    let ends: Vec<i64> = leases.iter().map(|(_, end)| end.as_millis()).collect();
    c.exec(
        concat!(
            "UPDATE deliveries SET lease_until = NULL, due_at = ",
            unless_parked!("due_at"),
            " FROM UNNEST($1::text[], $2::bigint[]) AS given(id, lease_until) \
             WHERE deliveries.id = given.id AND deliveries.lease_until = given.lease_until \
             AND deliveries.state = 'pending'"
        ),
        &[&ids, &ends],
    )
    .await?;
    Ok(())
}

/// A spilled delivery: pending and unleased, with `due_at` (its fallback) after its schedule.
const SPILLED: &str = "state = 'pending' AND lease_until IS NULL AND due_at > next_attempt_at";

pub(crate) async fn rearm_spilled(
    c: &impl Conn,
    webhook: &WebhookId,
    from: &DeliveryId,
    now: Timestamp,
    until: Timestamp,
    limit: u32,
) -> DbResult<u64> {
    Ok(c.exec(
        &format!(
            "UPDATE deliveries SET due_at = $4 WHERE id IN ( \
                 SELECT id FROM deliveries WHERE webhook_id = $1 AND id >= $2 AND {SPILLED} \
                 AND due_at <= $3 ORDER BY id LIMIT $5 FOR UPDATE SKIP LOCKED)"
        ),
        &[
            &webhook.as_str(),
            &from.as_str(),
            &now.as_millis(),
            &until.as_millis(),
            &big(limit),
        ],
    )
    .await?)
}

pub(crate) async fn spilled_starts(c: &impl Conn) -> DbResult<Vec<(WebhookId, DeliveryId)>> {
    let found = c
        .rows(
            &format!(
                "SELECT webhook_id, MIN(id) FROM deliveries WHERE {SPILLED} AND webhook_id IN \
                 (SELECT id FROM webhooks WHERE active AND deleted_at IS NULL) GROUP BY webhook_id"
            ),
            &[],
        )
        .await?;
    rows::all(found, |r| {
        Ok((
            WebhookId::from_trusted(r.try_get(0)?),
            DeliveryId::from_trusted(r.try_get(1)?),
        ))
    })
}

pub(crate) async fn earliest_due_webhook(
    c: &impl Conn,
    now: Timestamp,
) -> DbResult<Option<WebhookId>> {
    let webhook: Option<String> = c
        .opt_row(
            "SELECT d.webhook_id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.state = 'pending' AND d.due_at <= $1 AND w.active AND w.deleted_at IS NULL \
             ORDER BY d.due_at LIMIT 1",
            &[&now.as_millis()],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(webhook.map(WebhookId::from_trusted))
}

pub(crate) async fn next_due_at(c: &impl Conn) -> DbResult<Option<Timestamp>> {
    let next: Option<i64> = c
        .opt_row(
            "SELECT d.due_at FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.state = 'pending' AND d.due_at IS NOT NULL AND w.active AND w.deleted_at IS NULL \
             ORDER BY d.due_at LIMIT 1",
            &[],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(next.map(Timestamp::from_millis))
}

/// `due_at` for a delivery going back on its schedule: parked (NULL) if its webhook is inactive.
const DUE_UNLESS_PARKED: &str = unless_parked!("next_attempt_at");

/// A group's attempts, one array per column: one statement whatever the group's size.
const INSERT_ATTEMPTS: &str = "INSERT INTO attempts (id, delivery_id, number, started_at, \
     duration_ms, status, error, error_message, response_body) \
     SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], \
       $6::BIGINT[], $7::TEXT[], $8::TEXT[], $9::TEXT[]) \
     ON CONFLICT (id) DO NOTHING RETURNING id";

/// A delivery's state after an attempt that ended it (succeeded, or failed for good). One
/// statement per delivery: an `UPDATE … FROM UNNEST` for the group was planned as a scan of the
/// partial index `deliveries_due` (see BENCHMARKS, "PostgreSQL"), while this one always goes
/// through the primary key. A delivery cancelled while its attempt was in flight (its webhook
/// deleted) that the endpoint accepted becomes succeeded: the receiver has it.
///
/// Two statements, this one and [`RETRY_AFTER_ATTEMPT`], each of a fixed shape, so that
/// PostgreSQL settles on one generic plan for each instead of planning every execution again:
/// one statement for both, whose `CASE` on "is there a next attempt?" folds away when the
/// parameter is known, always looked cheaper planned afresh (`pg_prepared_statements` counted
/// 15,001 custom plans and no generic one in a `burst` run), and planning was about a fifth of
/// PostgreSQL's CPU in `batch`.
///
/// A generic plan is made once, with the statistics of that moment, and kept until the next
/// `ANALYZE`: on a new install, while the table is nearly empty, every index looks as cheap as
/// the primary key. So the primary key is the only index these statements can use: `state`
/// is compared with a parameter (`'pending'`), whose value a generic plan does not know, so
/// `deliveries_due` (`WHERE state = 'pending'`) cannot serve it; and the organization is
/// checked with `IS NOT DISTINCT FROM` (the same test, `org_id` being `NOT NULL`), which no
/// index serves, so `deliveries_by_event` (`org_id`, `event_id`) cannot either. Asked on an
/// empty table, `org_id = $n` got a generic plan through `deliveries_by_event`.
const FINISH_AFTER_ATTEMPT: &str = "UPDATE deliveries SET state = $1, attempt_count = $2, \
     next_attempt_at = NULL, due_at = NULL, lease_until = NULL, last_status = $3, \
     last_error = $4, updated_at = $5 \
     WHERE id = $6 AND org_id IS NOT DISTINCT FROM $7 \
     AND ((state = $8 AND ($9::BIGINT IS NULL OR lease_until = $9::BIGINT)) \
     OR (state = 'cancelled' AND $1 = 'succeeded'))";

/// A delivery going back on its schedule after a failed attempt: due at its next attempt, or
/// parked if its webhook is inactive. See [`FINISH_AFTER_ATTEMPT`] for why it is a statement of
/// its own.
const RETRY_AFTER_ATTEMPT: &str = concat!(
    "UPDATE deliveries SET next_attempt_at = $1::BIGINT, due_at = ",
    unless_parked!("$1::BIGINT"),
    ", attempt_count = $2, lease_until = NULL, last_status = $3, last_error = $4, \
     updated_at = $5 WHERE id = $6 AND org_id IS NOT DISTINCT FROM $7 AND state = $8 \
     AND ($9::BIGINT IS NULL OR lease_until = $9::BIGINT)"
);

/// Records attempts and moves their deliveries on (`Store::record_attempts`), answering which
/// did.
pub(crate) async fn record_attempts(
    c: &impl Conn,
    records: &[AttemptRecord],
) -> DbResult<Vec<bool>> {
    // Pipelined: the attempts' insert and every delivery's update go to the server together
    // instead of waiting for a round trip each (a group from the recorder holds up to 512).
    let insert = insert_attempts(c, records);
    let updates = futures::future::try_join_all(records.iter().map(|r| update_delivery(c, r)));
    let (inserted, mut moved) = futures::future::try_join(insert, updates).await?;
    // An attempt already there was stored by an earlier try whose answer was lost (a commit
    // the server took after Herald stopped waiting), which moved its delivery on then.
    if inserted.len() < records.len() {
        let inserted: HashSet<&str> = inserted.iter().map(String::as_str).collect();
        for (r, moved) in records.iter().zip(moved.iter_mut()) {
            *moved |= !inserted.contains(r.attempt.id.as_str());
        }
    }
    // Rarely any: the attempts of a node that lost its leases (it stalled) are not the
    // deliveries' history.
    let stale: Vec<&str> = records
        .iter()
        .zip(&moved)
        .filter(|(_, moved)| !**moved)
        .map(|(r, _)| r.attempt.id.as_str())
        .collect();
    if !stale.is_empty() {
        // Those out when their webhook was deleted are part of the delivery's history, and of
        // its summary. First, as it holds the delivery (or waits for a purge that holds it):
        // the delete after it then sees a delivery purged meanwhile gone, and takes its
        // attempt too, which would otherwise be left with no delivery (a review).
        c.exec(
            "UPDATE deliveries d SET attempt_count = GREATEST(d.attempt_count, a.number), \
             last_status = a.status, last_error = a.error, \
             updated_at = GREATEST(d.updated_at, a.started_at + a.duration_ms) \
             FROM attempts a WHERE a.id = ANY($1) AND d.id = a.delivery_id \
             AND d.state = 'cancelled'",
            &[&stale],
        )
        .await?;
        c.exec(
            "DELETE FROM attempts a WHERE a.id = ANY($1) AND NOT EXISTS \
             (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id AND d.state = 'cancelled')",
            &[&stale],
        )
        .await?;
    }
    if records
        .iter()
        .any(|r| matches!(r.next, NextStep::RetryAt(_)))
    {
        announce_work(c).await?;
    }
    Ok(moved)
}

/// Inserts the attempts not stored yet; answers the ids it inserted.
async fn insert_attempts(c: &impl Conn, records: &[AttemptRecord]) -> DbResult<Vec<String>> {
    let attempts = || records.iter().map(|r| &r.attempt);
    let ids: Vec<&str> = attempts().map(|a| a.id.as_str()).collect();
    let deliveries: Vec<&str> = attempts().map(|a| a.delivery_id.as_str()).collect();
    let numbers: Vec<i64> = attempts().map(|a| big(a.number)).collect();
    let started: Vec<i64> = attempts().map(|a| a.started_at.as_millis()).collect();
    let durations: Vec<i64> = attempts().map(|a| big(a.duration_ms)).collect();
    let statuses: Vec<Option<i64>> = attempts().map(|a| a.status.map(big)).collect();
    let errors: Vec<Option<&str>> = attempts().map(|a| a.error.as_deref()).collect();
    let messages: Vec<Option<&str>> = attempts().map(|a| a.error_message.as_deref()).collect();
    let bodies: Vec<&str> = attempts().map(|a| a.response_body.as_str()).collect();
    let rows = c
        .rows(
            INSERT_ATTEMPTS,
            &[
                &ids,
                &deliveries,
                &numbers,
                &started,
                &durations,
                &statuses,
                &errors,
                &messages,
                &bodies,
            ],
        )
        .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// Moves the delivery on after its attempt; answers whether it did.
async fn update_delivery(c: &impl Conn, r: &AttemptRecord) -> DbResult<bool> {
    let a = &r.attempt;
    let updated_at = a.started_at.as_millis() + i64::from(a.duration_ms);
    let (number, status) = (big(a.number), a.status.map(big));
    let (id, org) = (a.delivery_id.as_str(), r.org_id.as_str());
    let lease = r.lease_until.map(Timestamp::as_millis);
    let [pending, succeeded, failed] = [
        DeliveryState::Pending,
        DeliveryState::Succeeded,
        DeliveryState::Failed,
    ]
    .map(|s| s.as_str());
    // The two statements differ only in their first parameter: the final state, or when the
    // next attempt is due.
    let next_at;
    let (sql, first): (&str, &(dyn ToSql + Sync)) = match r.next {
        NextStep::Succeeded => (FINISH_AFTER_ATTEMPT, &succeeded),
        NextStep::Failed => (FINISH_AFTER_ATTEMPT, &failed),
        NextStep::RetryAt(at) => {
            next_at = at.as_millis();
            (RETRY_AFTER_ATTEMPT, &next_at)
        }
    };
    c.exec(
        sql,
        &[
            first,
            &number,
            &status,
            &a.error,
            &updated_at,
            &id,
            &org,
            &pending,
            &lease,
        ],
    )
    .await
    .map(|changed| changed == 1)
    .map_err(Into::into)
}

/// Stores the attempts a stop cut off (`Store::record_cut_off`): each delivery still under the
/// record's lease, with as many attempts as the record's number follows, counts the attempt,
/// due again as it was (its time, now past), with its schedule's base moved on with it so that
/// no retry is spent. Rare (a stop whose grace ran out), so one statement each.
pub(crate) async fn record_cut_off(
    c: &impl Conn,
    records: &[AttemptRecord],
) -> DbResult<Vec<DeliveryId>> {
    let mut stored = Vec::with_capacity(records.len());
    for r in records {
        let (a, Some(lease)) = (&r.attempt, r.lease_until) else {
            continue;
        };
        let number = big(a.number);
        let updated_at = a.started_at.as_millis() + i64::from(a.duration_ms);
        let applied = c
            .exec(
                &format!(
                    "UPDATE deliveries SET attempt_count = $1::BIGINT, \
                     schedule_base = LEAST(schedule_base + 1, $1::BIGINT), lease_until = NULL, \
                     due_at = {DUE_UNLESS_PARKED}, last_status = NULL, last_error = $2, \
                     updated_at = $3 WHERE id = $4 AND org_id = $5 AND state = 'pending' \
                     AND lease_until = $6 AND attempt_count = $1::BIGINT - 1"
                ),
                &[
                    &number,
                    &a.error,
                    &updated_at,
                    &a.delivery_id.as_str(),
                    &r.org_id.as_str(),
                    &lease.as_millis(),
                ],
            )
            .await?
            == 1;
        if applied {
            stored.push(r.clone());
        }
    }
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    insert_attempts(c, &stored).await?;
    announce_work(c).await?;
    Ok(stored.into_iter().map(|r| r.attempt.delivery_id).collect())
}

pub(crate) async fn release_lease(
    c: &impl Conn,
    id: &DeliveryId,
    lease_until: Timestamp,
) -> DbResult<()> {
    c.exec(
        &format!(
            "UPDATE deliveries SET lease_until = NULL, due_at = {DUE_UNLESS_PARKED} \
             WHERE id = $1 AND state = 'pending' AND lease_until = $2"
        ),
        &[&id.as_str(), &lease_until.as_millis()],
    )
    .await?;
    announce_work(c).await
}

pub(crate) async fn release_all_leases(c: &impl Conn) -> DbResult<u64> {
    let n = c
        .exec(
            &format!(
                "UPDATE deliveries SET lease_until = NULL, due_at = {DUE_UNLESS_PARKED} \
                 WHERE state = 'pending' AND lease_until IS NOT NULL"
            ),
            &[],
        )
        .await?;
    if n > 0 {
        announce_work(c).await?;
    }
    Ok(n)
}

pub(crate) async fn list(
    c: &impl Conn,
    org: &OrgId,
    webhook: &WebhookId,
    filter: &DeliveryFilter,
    page: &PageRequest,
) -> DbResult<Page<Delivery>> {
    // With a cursor the statement says `id < $3` plainly: statements are prepared once and may
    // get a generic plan, which cannot start the index at `$3 IS NULL OR id < $3`.
    let sql = format!(
        "SELECT {} FROM deliveries WHERE webhook_id = $1 AND org_id = $2 AND {} \
         AND ($4::TEXT IS NULL OR state = $4) \
         AND ($5::TEXT IS NULL OR event_type = $5) ORDER BY id DESC LIMIT $6",
        rows::DELIVERY_COLUMNS,
        if page.cursor.is_some() {
            "id < $3"
        } else {
            "$3::TEXT IS NULL"
        }
    );
    let found = c
        .rows(
            &sql,
            &[
                &webhook.as_str(),
                &org.as_str(),
                &page.cursor,
                &filter.state.map(|s| s.as_str()),
                &filter.event_type,
                &big(page.limit + 1),
            ],
        )
        .await?;
    let items = rows::all(found, rows::delivery)?;
    Ok(paginate(items, page, |d| d.id.to_string()))
}

pub(crate) async fn get(
    c: &impl Conn,
    org: &OrgId,
    id: &DeliveryId,
) -> DbResult<(Delivery, Vec<Attempt>)> {
    let sql = format!(
        "SELECT {} FROM deliveries WHERE org_id = $1 AND id = $2",
        rows::DELIVERY_COLUMNS
    );
    let delivery = match c.opt_row(&sql, &[&org.as_str(), &id.as_str()]).await? {
        Some(row) => rows::delivery(&row)?,
        None => return Err(not_found()),
    };
    let sql = format!(
        "SELECT {} FROM attempts WHERE delivery_id = $1 ORDER BY number, started_at",
        rows::ATTEMPT_COLUMNS
    );
    let attempts = rows::all(c.rows(&sql, &[&id.as_str()]).await?, rows::attempt)?;
    Ok((delivery, attempts))
}

/// An event and its deliveries (found by `deliveries_by_event`).
pub(crate) async fn event_deliveries(
    c: &impl Conn,
    org: &OrgId,
    id: &str,
    limit: u32,
) -> DbResult<(Event, Vec<Delivery>)> {
    let event = get_event(c, org, id).await?;
    let sql = format!(
        "SELECT {} FROM deliveries WHERE org_id = $1 AND event_id = $2 ORDER BY id LIMIT $3",
        rows::DELIVERY_COLUMNS
    );
    let limit = i64::from(limit);
    let deliveries = rows::all(
        c.rows(&sql, &[&org.as_str(), &id, &limit]).await?,
        rows::delivery,
    )?;
    Ok((event, deliveries))
}

pub(crate) async fn get_event(c: &impl Conn, org: &OrgId, id: &str) -> DbResult<Event> {
    let sql = format!(
        "SELECT {} FROM events WHERE org_id = $1 AND id = $2",
        rows::EVENT_COLUMNS
    );
    match c.opt_row(&sql, &[&org.as_str(), &id]).await? {
        Some(row) => rows::event_at(&row, 0),
        None => Err(not_found()),
    }
}

/// A page of the organization's events, newest first (by time received, then by id: `"C"`,
/// byte order, as SQLite's), through `events_by_org` (migration 11), which PostgreSQL starts at
/// the cursor's row value. With a cursor the statement says so plainly (as [`list`] explains).
pub(crate) async fn list_events(
    c: &impl Conn,
    org: &OrgId,
    filter: &EventFilter,
    page: &PageRequest,
) -> DbResult<Page<EventSummary>> {
    let cursor = crate::event_cursor(page);
    let sql = format!(
        "SELECT id, type, occurred_at, received_at, correlation_id FROM events \
         WHERE org_id = $1 AND {} AND ($4::TEXT IS NULL OR type = $4) \
         AND received_at >= coalesce($6::BIGINT, -9223372036854775808) \
         ORDER BY received_at DESC, id DESC LIMIT $5",
        if cursor.is_some() {
            "(received_at, id) < ($2, $3)"
        } else {
            "$2::BIGINT IS NULL AND $3::TEXT IS NULL"
        }
    );
    // Planned for each call's values: see `rows_planned_each_time`.
    let found = c
        .rows_planned_each_time(
            &sql,
            &[
                &org.as_str(),
                &cursor.as_ref().map(|c| c.received_at.as_millis()),
                &cursor.as_ref().map(|c| c.id.as_str()),
                &filter.event_type,
                &big(page.limit + 1),
                &filter.since.map(|t| t.as_millis()),
            ],
        )
        .await?;
    let items = rows::all(found, |r| {
        Ok(EventSummary {
            id: r.try_get(0)?,
            event_type: r.try_get(1)?,
            occurred_at: Timestamp::from_millis(r.try_get(2)?),
            received_at: Timestamp::from_millis(r.try_get(3)?),
            correlation_id: r.try_get(4)?,
        })
    })?;
    Ok(paginate(items, page, EventSummary::cursor))
}

pub(crate) async fn get_events(c: &impl Conn, org: &OrgId, ids: &[String]) -> DbResult<Vec<Event>> {
    let sql = format!(
        "SELECT {} FROM events WHERE org_id = $1 AND id = ANY($2::TEXT[])",
        rows::EVENT_COLUMNS
    );
    rows::all(c.rows(&sql, &[&org.as_str(), &ids]).await?, |row| {
        rows::event_at(row, 0)
    })
}

pub(crate) async fn resend(
    c: &impl Conn,
    org: &OrgId,
    id: &DeliveryId,
    now: Timestamp,
    lease_until: Timestamp,
) -> DbResult<DueDelivery> {
    let row = c
        .opt_row(
            "SELECT d.state, w.active, w.deleted_at IS NOT NULL, \
               COALESCE(d.lease_until > $3, false) FROM deliveries d \
             JOIN webhooks w ON w.id = d.webhook_id WHERE d.org_id = $1 AND d.id = $2 FOR UPDATE OF d",
            &[&org.as_str(), &id.as_str(), &now.as_millis()],
        )
        .await?
        .ok_or_else(not_found)?;
    let (state, active, deleted, leased): (String, bool, bool, bool) = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    if let Some(why) = herald_core::delivery::resend_refusal(&state, active, deleted, leased) {
        return Err(conflict(why.into()));
    }
    // A finished delivery starts its schedule over. A pending one waiting for its next attempt
    // has one now, besides its schedule (which does not count it: if it fails, the step it
    // waited for comes again), unless its schedule has made none yet (then this is its first);
    // one due already just has its attempt now.
    c.exec(
        "UPDATE deliveries SET schedule_base = CASE \
           WHEN state = 'pending' AND next_attempt_at > $1 \
             THEN LEAST(schedule_base + 1, attempt_count) \
           WHEN state = 'pending' THEN schedule_base ELSE attempt_count END, state = 'pending', next_attempt_at = $1, \
         due_at = $2, lease_until = $2, updated_at = $1 WHERE id = $3",
        &[&now.as_millis(), &lease_until.as_millis(), &id.as_str()],
    )
    .await?;
    let sql = format!(
        "SELECT {DUE_COLUMNS} FROM deliveries d \
         JOIN events e ON e.org_id = d.org_id AND e.id = d.event_id WHERE d.id = $1"
    );
    let row = c
        .opt_row(&sql, &[&id.as_str()])
        .await?
        .ok_or_else(not_found)?;
    due_row(&row)
}

pub(crate) async fn retry_waiting(
    c: &impl Conn,
    org: &OrgId,
    webhook: &WebhookId,
    now: Timestamp,
) -> DbResult<u64> {
    let n = c
        .exec(
            // Waiting: its next attempt is later (a spilled delivery's is already due, and
            // its webhook's backlog brings it in turn), and nobody holds it. Rows another
            // transaction has locked (claimed, or moved by a probe's answer) are passed over
            // rather than waited for, so that this never deadlocks with them. One changed at
            // `now` or later was just attempted or made due, as in SQLite's walk; one dated
            // much later was written before the clock was set back, and waits.
            "UPDATE deliveries SET next_attempt_at = $1::BIGINT, due_at = $1::BIGINT, \
             updated_at = $1::BIGINT, schedule_base = LEAST(schedule_base + 1, attempt_count) \
             WHERE id IN (SELECT id FROM deliveries \
             WHERE org_id = $2 AND webhook_id = $3 AND state = 'pending' \
             AND lease_until IS NULL AND due_at > $1::BIGINT AND next_attempt_at > $1::BIGINT \
             AND (updated_at < $1::BIGINT OR updated_at > $4::BIGINT) FOR UPDATE SKIP LOCKED)",
            &[
                &now.as_millis(),
                &org.as_str(),
                &webhook.as_str(),
                &now.as_millis()
                    .saturating_add(herald_core::store::LATER_THAN_A_CALL_MS),
            ],
        )
        .await?;
    if n > 0 {
        announce_work(c).await?;
    }
    Ok(n)
}

pub(crate) async fn recover_failed(
    c: &impl Conn,
    org: &OrgId,
    webhook: &WebhookId,
    since: Timestamp,
    now: Timestamp,
    skipped: bool,
) -> DbResult<u64> {
    let n = c
        .exec(
            "UPDATE deliveries SET state = 'pending', schedule_base = attempt_count, \
             next_attempt_at = $1::BIGINT, \
             due_at = CASE WHEN (SELECT active FROM webhooks WHERE id = deliveries.webhook_id) \
                 THEN $1::BIGINT ELSE NULL END, \
             lease_until = NULL, updated_at = $1::BIGINT \
             WHERE org_id = $2 AND webhook_id = $3 AND created_at >= $4 \
             AND (state = 'failed' OR ($5 AND state = 'skipped'))",
            &[
                &now.as_millis(),
                &org.as_str(),
                &webhook.as_str(),
                &since.as_millis(),
                &skipped,
            ],
        )
        .await?;
    if n > 0 {
        announce_work(c).await?;
    }
    Ok(n)
}

/// The most events one step of the retention task's purge reads, beyond the rest of the last
/// millisecond it reaches (`victims_by_walk`).
const PURGE_SCAN: i64 = 2_000;

/// An event to purge: its organization and id.
type Victim = (String, String);

/// One step of a purge: deletes up to `limit` events received before `cutoff` (of one
/// organization, or all) that have no pending delivery, with their deliveries and attempts.
/// Other tenants' writes go on meanwhile: a step reads a snapshot and locks only the events it
/// chose and their deliveries (SKIP LOCKED, so that another node purging at the same time, an
/// organization's deletion or a recovery keeps those instead of waiting; see
/// [`finished_and_held`]). The next step starts at a time received (events
/// have no sequence number here), and reads that millisecond again.
pub(crate) async fn purge(
    c: &impl Conn,
    org: Option<&OrgId>,
    cutoff: Timestamp,
    limit: u32,
    from: Option<PurgeFrom>,
) -> DbResult<(PurgeCount, Option<PurgeFrom>)> {
    let from = from.map_or(i64::MIN, |f| f.received_at.as_millis());
    let (victims, next) = match org {
        Some(org) => victims_of_org(c, org, cutoff, limit, from).await?,
        None => victims_by_walk(c, cutoff, limit, from).await?,
    };
    let victims = finished_and_held(c, victims).await?;
    // Three statements for the whole step, the events given as two arrays (organizations,
    // ids): one event at a time took three round trips each, and 156 s to purge 500,000 events
    // (7 s on SQLite). Each statement can find its rows by an index (`deliveries_by_event`,
    // `attempts_by_delivery`; see "Collations" above), and does once PostgreSQL plans it
    // generically or has statistics: the first five runs on a connection are planned for their
    // arguments, and on tables never analyzed the attempts' delete then scanned the table (a
    // review measured 204 ms a step at 1.19 million attempts, against 6 ms planned generically).
    let (orgs, ids): (Vec<String>, Vec<String>) = victims.into_iter().unzip();
    let events: [&(dyn ToSql + Sync); 2] = [&orgs, &ids];
    let count = PurgeCount {
        attempts: c.exec(PURGE_ATTEMPTS, &events).await?,
        deliveries: c.exec(PURGE_DELIVERIES, &events).await?,
        events: c.exec(PURGE_EVENTS, &events).await?,
    };
    Ok((count, next))
}

/// The purged events (`$1` their organizations, `$2` their ids, in pairs).
macro_rules! purged {
    () => {
        "UNNEST($1::TEXT[], $2::TEXT[]) AS v(org_id, event_id)"
    };
}

/// Of the `victims` (their events locked), those whose every delivery this step now holds
/// (`FOR UPDATE`) and finds finished: the others are kept whole, this time.
///
/// The victims were chosen from a snapshot, and a resend or a recovery may make one of their
/// deliveries pending since (a purge that did not look again deleted an event's finished
/// deliveries and attempts and kept the event with its recovered delivery alone: a probe, 21
/// events of 30). A delivery held here is read as last committed, and cannot change before
/// this step commits; one another transaction holds (a recovery's update under way) is
/// skipped, and its event kept. An event gets no new delivery once stored, so the count of
/// its deliveries tells whether every one is held.
async fn finished_and_held(c: &impl Conn, victims: Vec<Victim>) -> DbResult<Vec<Victim>> {
    if victims.is_empty() {
        return Ok(victims);
    }
    let (orgs, ids): (Vec<String>, Vec<String>) = victims.into_iter().unzip();
    c.rows(FINISHED_AND_HELD, &[&orgs, &ids])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// [`finished_and_held`]'s statement: every delivery of the events held once, then tallied
/// per event (a hash join: looked up per event in what was held, it cost 6.3 s a step of 500
/// events of 200 deliveries each, a review). An event with no delivery qualifies (0 = 0).
const FINISHED_AND_HELD: &str = concat!(
    "WITH v AS (SELECT * FROM ",
    purged!(),
    "), held AS MATERIALIZED (SELECT d.org_id, d.event_id, d.state FROM deliveries d ",
    "JOIN v ON d.org_id = v.org_id AND d.event_id = v.event_id FOR UPDATE OF d SKIP LOCKED), ",
    "tally AS (SELECT org_id, event_id, count(*) AS n, bool_or(state = 'pending') AS pending ",
    "FROM held GROUP BY org_id, event_id) ",
    "SELECT v.org_id, v.event_id FROM v LEFT JOIN tally t ",
    "ON t.org_id = v.org_id AND t.event_id = v.event_id ",
    "WHERE NOT COALESCE(t.pending, false) AND COALESCE(t.n, 0) = (SELECT count(*) ",
    "FROM deliveries d WHERE d.org_id = v.org_id AND d.event_id = v.event_id)"
);

/// The purged events' attempts, through their index (see "Collations" above). Without it each
/// purged event scanned every attempt stored: 99 ms an event at 500,000 attempts, and a step
/// of 500 events ran out of time, so nothing was purged.
const PURGE_ATTEMPTS: &str = concat!(
    "DELETE FROM attempts WHERE delivery_id IN (SELECT d.id COLLATE \"default\" ",
    "FROM ",
    purged!(),
    " JOIN deliveries d ON d.org_id = v.org_id AND d.event_id = v.event_id ",
    "WHERE d.state <> 'pending')"
);
/// The purged events' deliveries.
const PURGE_DELIVERIES: &str = concat!(
    "DELETE FROM deliveries d USING ",
    purged!(),
    " ",
    "WHERE d.org_id = v.org_id AND d.event_id = v.event_id AND d.state <> 'pending'"
);
/// The purged events, each unless a delivery of it is left.
const PURGE_EVENTS: &str = concat!(
    "DELETE FROM events e USING ",
    purged!(),
    " WHERE e.org_id = v.org_id AND e.id = v.event_id ",
    "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.org_id = v.org_id ",
    "AND d.event_id = v.event_id)"
);

/// One organization's events to purge: PostgreSQL finds them through the primary key, whatever
/// other organizations hold, and the first `limit` without pending work are taken.
async fn victims_of_org(
    c: &impl Conn,
    org: &OrgId,
    cutoff: Timestamp,
    limit: u32,
    from: i64,
) -> DbResult<(Vec<Victim>, Option<PurgeFrom>)> {
    let rows = c
        .rows(
            "SELECT e.org_id, e.id, e.received_at FROM events e WHERE e.received_at < $1 \
             AND e.received_at >= $4 AND e.org_id = $2 \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.org_id = $2 \
                             AND d.event_id = e.id COLLATE \"default\" AND d.state = 'pending') \
             ORDER BY e.received_at LIMIT $3 FOR UPDATE OF e SKIP LOCKED",
            &[&cutoff.as_millis(), &org.as_str(), &big(limit), &from],
        )
        .await?;
    // Fewer than `limit`: nothing else before the cutoff is a victim (as of this snapshot).
    let next = match rows.last() {
        Some(row) if rows.len() >= limit as usize => {
            Some(PurgeFrom::at(Timestamp::from_millis(row.try_get(2)?)))
        }
        _ => None,
    };
    let victims = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<DbResult<_>>()?;
    Ok((victims, next))
}

/// Every organization's events to purge, for the retention task: the events are walked by time
/// received, PURGE_SCAN at a time plus the rest of the last millisecond reached, so that a step
/// costs the same however many events before the cutoff are kept back by pending work (asked
/// for "the first 500 without pending work", PostgreSQL joined every event with every pending
/// delivery, 1.1 s per step with a million events and 900,000 pending).
async fn victims_by_walk(
    c: &impl Conn,
    cutoff: Timestamp,
    limit: u32,
    from: i64,
) -> DbResult<(Vec<Victim>, Option<PurgeFrom>)> {
    // Through `deliveries_by_event` (see "Collations" above).
    const LOOK: &str = "SELECT e.org_id, e.id, e.received_at, NOT EXISTS (SELECT 1 FROM deliveries d \
         WHERE d.org_id = e.org_id AND d.event_id = e.id COLLATE \"default\" AND d.state = 'pending') \
         FROM events e";
    let mut rows = c
        .rows(
            &format!(
                "{LOOK} WHERE e.received_at < $1 AND e.received_at >= $2 \
                 ORDER BY e.received_at LIMIT $3"
            ),
            &[&cutoff.as_millis(), &from, &PURGE_SCAN],
        )
        .await?;
    let millis = |row: &tokio_postgres::Row| row.try_get::<_, i64>(2);
    // A full step: the first and last milliseconds it reached.
    let reached = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) if rows.len() as i64 >= PURGE_SCAN => {
            Some((millis(first)?, millis(last)?))
        }
        _ => None,
    };
    // A whole step within one millisecond (batches of a thousand share one): read all of it,
    // so that the next step can start after it.
    if let Some((at, last)) = reached
        && at == last
    {
        rows = c
            .rows(&format!("{LOOK} WHERE e.received_at = $1"), &[&at])
            .await?;
    }
    let (mut orgs, mut ids): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let mut limit_reached_at = None;
    for row in &rows {
        if row.try_get::<_, bool>(3)? {
            orgs.push(row.try_get(0)?);
            ids.push(row.try_get(1)?);
            if ids.len() >= limit as usize {
                limit_reached_at = Some(millis(row)?);
                break;
            }
        }
    }
    let next = match (limit_reached_at, reached) {
        // From this millisecond again: what was removed is gone, the rest is read again.
        (Some(at), _) => Some(at),
        (None, Some((first, last))) if first == last => Some(last + 1),
        (None, Some((_, last))) => Some(last),
        (None, None) => None,
    };
    let victims = if ids.is_empty() {
        Vec::new()
    } else {
        c.rows(
            "SELECT e.org_id, e.id FROM events e \
             WHERE (e.org_id, e.id) IN (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) \
             FOR UPDATE OF e SKIP LOCKED",
            &[&orgs, &ids],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<DbResult<_>>()?
    };
    Ok((
        victims,
        next.map(|at| PurgeFrom::at(Timestamp::from_millis(at))),
    ))
}

/// Leases written about in one statement at most.
const HELD_CHUNK: usize = 10_000;

/// The deliveries still held under the leases named by `$1` (ids) and `$2` (each one's lease),
/// pending and of the organization `$3` (any, if `NULL`).
macro_rules! still_held {
    () => {
        "SELECT d.id FROM deliveries d \
         JOIN unnest($1::text[], $2::bigint[]) AS l(id, lease_until) ON d.id = l.id \
         WHERE d.state = 'pending' AND d.lease_until = l.lease_until \
         AND ($3::text IS NULL OR d.org_id = $3)"
    };
}

/// [`still_held!`], locked for the statement that follows. Rows another transaction holds are
/// skipped rather than waited for: a change to all of a webhook's deliveries (a pause, a
/// deletion) holding some of these and waiting for others would deadlock with it.
/// [`write_held`] tries those again.
const STILL_HELD: &str = concat!(
    "WITH mine AS (",
    still_held!(),
    " FOR UPDATE OF d SKIP LOCKED) "
);

/// [`still_held!`] without locking (nor waiting for) them.
const STILL_HELD_UNLOCKED: &str = still_held!();

/// How many more times [`write_held`] tries the rows it skipped, pausing 10 ms, then twice as
/// long each time (310 ms in all).
const SKIPPED_RETRIES: u32 = 5;
const SKIPPED_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Runs `sql` for `leases` of `org` (any, if `None`), and answers the ids it changed: a
/// [`STILL_HELD`] statement that answers those ids, `$1` and `$2` the leases, `$3` the
/// organization, `rest` its parameters from `$4` on. The rows it skipped while another
/// statement held them, and still held under their leases, are tried again after a pause: such
/// a lock is most often another node's claim of due work, whose snapshot predates this node's
/// lease and which keeps the rows it read locked until its statement ends, a few milliseconds.
/// Skipped for good, a delivery would be in no node's memory and due for none until its lease
/// ended (a two-node soak left 1,624 so, for five minutes, all deferred by open circuits). Each
/// statement commits on its own, and each round takes a connection from `pool` and gives it
/// back before pausing: a webhook's attempts renewing leases while its pause holds their rows
/// would otherwise hold a connection each through every pause, and drain the pool.
///
/// What a round changed is committed: if a later round fails, those ids are still answered
/// (the rest keep their leases), so that a caller does not take deliveries it failed or
/// renewed for untouched.
async fn write_held(
    pool: &Pool,
    sql: &str,
    leases: &[(DeliveryId, Timestamp)],
    org: Option<&str>,
    rest: &[&(dyn ToSql + Sync)],
) -> DbResult<Vec<DeliveryId>> {
    let mut changed = Vec::with_capacity(leases.len());
    let mut left: Vec<(&str, i64)> = leases
        .iter()
        .map(|(id, lease)| (id.as_str(), lease.as_millis()))
        .collect();
    let mut pause = SKIPPED_FIRST_PAUSE;
    for retry in 0..=SKIPPED_RETRIES {
        if retry > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        match write_round(pool, sql, &left, org, rest, &mut changed).await {
            Ok(locked) => left.retain(|(id, _)| locked.contains(*id)),
            Err(e) if !changed.is_empty() => {
                let e = StoreError::from(e);
                tracing::warn!(
                    deliveries = left.len(),
                    error = %herald_core::error_chain(&e),
                    "could not finish writing deliveries held by this node; the rest come due when their leases end"
                );
                return Ok(changed);
            }
            Err(e) => return Err(e),
        }
        if left.is_empty() {
            break;
        }
    }
    if !left.is_empty() {
        tracing::info!(
            deliveries = left.len(),
            "deliveries locked by another statement kept this node's lease; they come due when it ends"
        );
    }
    Ok(changed)
}

/// One round of [`write_held`]: runs `sql` for `left`, adding the ids it changed to `changed`,
/// and answers which of the others are still held under their leases but were locked.
async fn write_round(
    pool: &Pool,
    sql: &str,
    left: &[(&str, i64)],
    org: Option<&str>,
    rest: &[&(dyn ToSql + Sync)],
    changed: &mut Vec<DeliveryId>,
) -> DbResult<HashSet<String>> {
    let c = pool.get().await.map_err(super::pool_error)?;
    let mut done = HashSet::new();
    for chunk in left.chunks(HELD_CHUNK) {
        let (ids, held): (Vec<&str>, Vec<i64>) = chunk.iter().copied().unzip();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids, &held, &org];
        params.extend_from_slice(rest);
        for row in c.rows(sql, &params).await? {
            let id: String = row.try_get(0)?;
            changed.push(DeliveryId::from_trusted(id.clone()));
            done.insert(id);
        }
    }
    // The others either are no longer under these leases (finished, cancelled, another node's)
    // and are left alone, or were locked.
    let mut locked = HashSet::new();
    let others: Vec<(&str, i64)> = left
        .iter()
        .copied()
        .filter(|(id, _)| !done.contains(*id))
        .collect();
    for chunk in others.chunks(HELD_CHUNK) {
        let (ids, held): (Vec<&str>, Vec<i64>) = chunk.iter().copied().unzip();
        for row in c.rows(STILL_HELD_UNLOCKED, &[&ids, &held, &org]).await? {
            locked.insert(row.try_get::<_, String>(0)?);
        }
    }
    Ok(locked)
}

/// Extends leases still held as given; answers the ids renewed ([`write_held`]).
pub(crate) async fn renew_leases(
    pool: &Pool,
    leases: &[(DeliveryId, Timestamp)],
    until: Timestamp,
) -> DbResult<Vec<DeliveryId>> {
    let sql = format!(
        "{STILL_HELD} UPDATE deliveries d SET lease_until = $4, due_at = $4 \
         FROM mine WHERE d.id = mine.id RETURNING d.id"
    );
    write_held(pool, &sql, leases, None, &[&until.as_millis()]).await
}

/// Gives leased deliveries back, due at `until` at the soonest; answers how many
/// ([`write_held`]). One statement for a whole backlog (up to a thousand from an open circuit,
/// or a webhook's queue on shutdown), not a round trip per delivery.
pub(crate) async fn defer(
    pool: &Pool,
    org: &OrgId,
    leases: &[(DeliveryId, Timestamp)],
    until: Timestamp,
) -> DbResult<usize> {
    // Parked if the webhook was paused meanwhile (as an attempt's outcome is).
    let sql = format!(
        "{STILL_HELD} UPDATE deliveries d SET lease_until = NULL, \
         next_attempt_at = GREATEST(COALESCE(d.next_attempt_at, $4), $4), \
         due_at = CASE WHEN (SELECT active FROM webhooks WHERE id = d.webhook_id) \
             THEN GREATEST(COALESCE(d.next_attempt_at, $4), $4) ELSE NULL END \
         FROM mine WHERE d.id = mine.id RETURNING d.id"
    );
    let org = Some(org.as_str());
    let deferred = write_held(pool, &sql, leases, org, &[&until.as_millis()]).await?;
    if !deferred.is_empty() {
        let c = pool.get().await.map_err(super::pool_error)?;
        announce_work(&c).await?;
    }
    Ok(deferred.len())
}

/// Ends leased deliveries unsent, as `state` (see `Store::end_unsent`; [`write_held`]).
pub(crate) async fn end_unsent(
    pool: &Pool,
    org: &OrgId,
    leases: &[(DeliveryId, Timestamp)],
    state: DeliveryState,
    error: &str,
    now: Timestamp,
) -> DbResult<Vec<DeliveryId>> {
    let sql = format!(
        "{STILL_HELD} UPDATE deliveries d SET state = $6, next_attempt_at = NULL, due_at = NULL, \
         lease_until = NULL, last_error = $4, updated_at = $5 \
         FROM mine WHERE d.id = mine.id RETURNING d.id"
    );
    let rest: [&(dyn ToSql + Sync); 3] = [&error, &now.as_millis(), &state.as_str()];
    write_held(pool, &sql, leases, Some(org.as_str()), &rest).await
}

/// A webhook's deliveries deferred to exactly `deferred_to`, moved to `to` (found through
/// `deliveries_due` by that one time); other nodes are told there is work.
pub(crate) async fn move_deferred(
    c: &impl Conn,
    webhook: &WebhookId,
    deferred_to: Timestamp,
    to: Timestamp,
) -> DbResult<u64> {
    let moved = c
        .exec(
            concat!(
                "UPDATE deliveries SET next_attempt_at = $3::BIGINT, due_at = ",
                unless_parked!("$3::BIGINT"),
                " WHERE due_at = $1 AND state = 'pending' AND webhook_id = $2 \
                 AND lease_until IS NULL AND next_attempt_at = $1"
            ),
            &[&deferred_to.as_millis(), &webhook.as_str(), &to.as_millis()],
        )
        .await?;
    if moved > 0 {
        announce_work(c).await?;
    }
    Ok(moved)
}

pub(crate) async fn pending_by_webhook(c: &impl Conn) -> DbResult<Vec<PendingStat>> {
    let found = c
        .rows(
            "SELECT p.webhook_id, p.n, p.oldest, COALESCE(w.active, true), p.org_id FROM \
             (SELECT webhook_id, org_id, COUNT(*) AS n, MIN(created_at) AS oldest FROM \
             deliveries WHERE state = 'pending' GROUP BY webhook_id, org_id) p LEFT JOIN \
             webhooks w ON w.id = p.webhook_id",
            &[],
        )
        .await?;
    rows::all(found, |r| {
        Ok(PendingStat {
            webhook_id: WebhookId::from_trusted(r.try_get(0)?),
            org_id: OrgId::from_trusted(r.try_get(4)?),
            count: rows::int(r, 1)?,
            oldest: Timestamp::from_millis(r.try_get(2)?),
            active: r.try_get(3)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::SecretCipher;
    use crate::{PostgresOptions, PostgresStore};

    /// The plan PostgreSQL keeps for `statement` once it settles on a generic one, on a fresh,
    /// empty schema (where every index looks as cheap as any other), after `settings`.
    async fn generic_plan(url: &str, settings: &str, statement: &str, arguments: &str) -> String {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connecting to HERALD_TEST_DATABASE_URL");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "SET plan_cache_mode = force_generic_plan; {settings} PREPARE probe AS {statement}"
            ))
            .await
            .expect("the statement prepares");
        let lines = client
            .simple_query(&format!("EXPLAIN EXECUTE probe({arguments})"))
            .await
            .expect("the statement explains");
        lines
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A schema of its own, migrated, on the test server: the admin connection (which drops it
    /// when done), its URL, and its name. None without HERALD_TEST_DATABASE_URL.
    async fn fresh_schema() -> Option<(tokio_postgres::Client, String, String)> {
        let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") else {
            eprintln!("HERALD_TEST_DATABASE_URL is not set: skipping (./scripts/test sets it)");
            return None;
        };
        let schema = format!("herald_plans_{:016x}", rand::random::<u64>());
        let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connecting to HERALD_TEST_DATABASE_URL");
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let separator = if url.contains('?') { '&' } else { '?' };
        let scoped = format!("{url}{separator}options=-c%20search_path%3D{schema}");
        let store = PostgresStore::new(
            &scoped,
            PostgresOptions { pool_size: 1 },
            SecretCipher::none(),
        )
        .unwrap();
        store.migrate().await.expect("migrating the schema");
        Some((admin, scoped, schema))
    }

    /// An event for ingest with one delivery to `wh_x`, held in memory.
    fn ingest_item(org: &str, id: &str) -> IngestItem {
        IngestItem {
            event: Arc::new(Event {
                id: id.into(),
                org_id: OrgId::from_trusted(org.into()),
                event_type: "user.created".into(),
                occurred_at: Timestamp::from_millis(1),
                received_at: Timestamp::from_millis(1),
                correlation_id: None,
                data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            }),
            deliveries: vec![NewDelivery {
                id: DeliveryId::generate(),
                webhook_id: WebhookId::from_trusted("wh_x".into()),
                placement: herald_core::store::Placement::Leased,
                skip: None,
                not_before: None,
            }],
        }
    }

    /// [`insert_events`]'s answers, which must come.
    async fn answers(
        c: &impl Conn,
        requests: &[IngestRequest<'_>],
    ) -> Vec<Result<Vec<IngestResult>, StoreError>> {
        insert_events(c, requests)
            .await
            .map_err(StoreError::from)
            .unwrap()
    }

    /// Ingest's check against changes another node made: a request fanned out from a read of
    /// its organization older than a committed change stores nothing (not even the events it
    /// shares with a request stored after, which are stored with that request's deliveries),
    /// while requests of the same statement without the check, with a newer read, or of an
    /// organization unchanged since, are stored. A change whose transaction was still open
    /// when the read was marked counts as after it.
    #[tokio::test]
    async fn a_request_fanned_out_before_a_change_to_its_organization_stores_nothing() {
        use herald_core::store::Store;
        let Some((admin, scoped, schema)) = fresh_schema().await else {
            return;
        };
        let store = PostgresStore::new(
            &scoped,
            PostgresOptions { pool_size: 2 },
            SecretCipher::none(),
        )
        .unwrap();
        let (other_node, connection) = tokio_postgres::connect(&scoped, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        other_node
            .batch_execute(
                "INSERT INTO organizations (id, name, handle, catalogs, created_at, updated_at) \
                 VALUES ('org_a', 'A', 'a', '[]', 0, 0), ('org_b', 'B', 'b', '[]', 0, 0); \
                 INSERT INTO webhooks (id, org_id, name, url, events, channels, profile, secret, \
                   active, headers, created_at, updated_at) VALUES ('wh_b', 'org_b', 'b', \
                   'https://b.example/h', '[]', '[]', 'standard', 's', true, '{}', 0, 0)",
            )
            .await
            .unwrap();
        let seen = || async { store.config_mark().await.unwrap().unwrap() };
        let before = seen().await;
        other_node
            .batch_execute("UPDATE organizations SET name = 'A2' WHERE id = 'org_a'")
            .await
            .unwrap();
        let after = seen().await;
        let (org_a, org_b) = (
            OrgId::from_trusted("org_a".into()),
            OrgId::from_trusted("org_b".into()),
        );
        let request = |org, seen, items| IngestRequest {
            org,
            seen,
            items,
            now: Timestamp::from_millis(1),
            lease_until: Timestamp::from_millis(1_000),
        };
        let stale = [ingest_item("org_a", "x"), ingest_item("org_a", "y")];
        let unchecked = [ingest_item("org_a", "x"), ingest_item("org_a", "z")];
        let unchanged = [ingest_item("org_b", "w")];
        let newer = [ingest_item("org_a", "v")];
        let again = [ingest_item("org_b", "w")];
        let client = store.pool.get().await.unwrap();
        let results = answers(
            &client,
            &[
                request(&org_a, Some(&before), &stale),
                request(&org_b, Some(&before), &unchanged),
                request(&org_a, Some(&after), &newer),
            ],
        )
        .await;
        let stored = IngestResult::Stored;
        assert!(matches!(results[0], Err(StoreError::DirectoryChanged)));
        assert_eq!(results[1].as_ref().unwrap(), &[stored]);
        assert_eq!(results[2].as_ref().unwrap(), &[stored]);
        // Stored after: the stale request's `x` is new, the first request's `w` is not.
        let results = answers(
            &client,
            &[
                request(&org_a, None, &unchecked),
                request(&org_b, None, &again),
            ],
        )
        .await;
        assert_eq!(results[0].as_ref().unwrap(), &[stored, stored]);
        assert_eq!(results[1].as_ref().unwrap(), &[IngestResult::Duplicate]);

        // A change made by a transaction open while the read was marked, committed after. (A
        // later transaction ends first, so that the open one is listed as such in the mark, not
        // only past its end.)
        other_node
            .batch_execute("BEGIN; UPDATE organizations SET name = 'A3' WHERE id = 'org_a'")
            .await
            .unwrap();
        client
            .batch_execute("UPDATE organizations SET name = 'B2' WHERE id = 'org_b'")
            .await
            .unwrap();
        let during = seen().await;
        other_node.batch_execute("COMMIT").await.unwrap();
        let late = [ingest_item("org_a", "u")];
        let results = answers(&client, &[request(&org_a, Some(&during), &late)]).await;
        assert!(matches!(results[0], Err(StoreError::DirectoryChanged)));

        // A webhook's failing streak starting is nothing ingest fans out by; its switching
        // off is.
        let marked = seen().await;
        other_node
            .batch_execute("UPDATE webhooks SET failing_since = 5 WHERE id = 'wh_b'")
            .await
            .unwrap();
        let streak = [ingest_item("org_b", "s")];
        let results = answers(&client, &[request(&org_b, Some(&marked), &streak)]).await;
        assert_eq!(results[0].as_ref().unwrap(), &[stored]);
        other_node
            .batch_execute("UPDATE webhooks SET active = false WHERE id = 'wh_b'")
            .await
            .unwrap();
        let off = [ingest_item("org_b", "t")];
        let results = answers(&client, &[request(&org_b, Some(&marked), &off)]).await;
        assert!(matches!(results[0], Err(StoreError::DirectoryChanged)));

        let rows = client
            .query(
                "SELECT e.org_id || '/' || e.id, d.id FROM events e \
                 JOIN deliveries d ON d.org_id = e.org_id AND d.event_id = e.id \
                 ORDER BY e.org_id, e.id",
                &[],
            )
            .await
            .unwrap();
        drop(client);
        admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
        let events: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            events,
            ["org_a/v", "org_a/x", "org_a/z", "org_b/s", "org_b/w"]
        );
        let x_delivery: String = rows[1].get(1);
        assert_eq!(x_delivery, unchecked[0].deliveries[0].id.as_str());
    }

    /// Requests that repeat an id of an earlier one (in their organization) start a new run;
    /// one that repeats its own, or another organization's, does not.
    #[test]
    fn a_run_ends_before_a_request_that_repeats_an_earlier_ones_id() {
        let (a, b) = (
            OrgId::from_trusted("org_a".into()),
            OrgId::from_trusted("org_b".into()),
        );
        let items = |org: &str, ids: &[&str]| -> Vec<IngestItem> {
            ids.iter().map(|id| ingest_item(org, id)).collect()
        };
        let (x, xx, yx, bx) = (
            items("org_a", &["x"]),
            items("org_a", &["x", "x"]),
            items("org_a", &["y", "x"]),
            items("org_b", &["x"]),
        );
        let request = |org, items| IngestRequest {
            org,
            seen: None,
            items,
            now: Timestamp::from_millis(1),
            lease_until: Timestamp::from_millis(1),
        };
        assert_eq!(without_repeats(&[request(&a, &xx)]), 1);
        assert_eq!(without_repeats(&[request(&a, &xx), request(&b, &bx)]), 2);
        assert_eq!(
            without_repeats(&[request(&a, &x), request(&b, &bx), request(&a, &yx)]),
            2
        );
        assert_eq!(without_repeats(&[]), 0);
    }

    /// Recording an outcome runs once per attempt, with a plan kept for the connection's life:
    /// it must find the delivery through its primary key whatever the statistics said when the
    /// plan was made. Through `deliveries_by_event` it would read every delivery of the
    /// organization for each attempt; through `deliveries_due`, every pending one.
    #[tokio::test]
    async fn attempt_outcomes_keep_to_the_primary_key_in_a_generic_plan() {
        let Some((admin, scoped, schema)) = fresh_schema().await else {
            return;
        };
        let finish = generic_plan(
            &scoped,
            "",
            FINISH_AFTER_ATTEMPT,
            "'succeeded', 1, 200, NULL, 5, 'dlv_x', 'org_x', 'pending', 30",
        )
        .await;
        let retry = generic_plan(
            &scoped,
            "",
            RETRY_AFTER_ATTEMPT,
            "100, 1, 500, 'http', 5, 'dlv_x', 'org_x', 'pending', 30",
        )
        .await;
        admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
        for plan in [finish, retry] {
            assert!(plan.contains("deliveries_pkey"), "{plan}");
            assert!(!plan.contains("deliveries_by_event"), "{plan}");
            assert!(!plan.contains("deliveries_by_webhook"), "{plan}");
            assert!(!plan.contains("deliveries_due"), "{plan}");
        }
    }

    /// Statements that find rows by a column naming another table's id reach them through its
    /// index, which they can only while they compare in that column's collation ("Collations"
    /// above): otherwise each purged event read every attempt stored, and so did the health
    /// page for each delivery. Scans are priced out here, so a plan that still has one found
    /// no index to use.
    #[tokio::test]
    async fn statements_by_reference_can_use_their_indexes() {
        let Some((admin, scoped, schema)) = fresh_schema().await else {
            return;
        };
        let no_scans = "SET enable_seqscan = off;";
        let events = "ARRAY['org_x'], ARRAY['evt_x']";
        let statements = [
            (PURGE_ATTEMPTS.to_owned(), events, "attempts_by_delivery"),
            (PURGE_DELIVERIES.to_owned(), events, "deliveries_by_event"),
            (PURGE_EVENTS.to_owned(), events, "deliveries_by_event"),
            (PURGE_EVENTS.to_owned(), events, "events_pkey"),
            (FINISHED_AND_HELD.to_owned(), events, "deliveries_by_event"),
            (
                super::super::orgs::DELETE_ATTEMPTS.to_owned(),
                "'org_x'",
                "attempts_by_delivery",
            ),
            (
                super::super::health::attempts_sql(),
                "'org_x', 'wh_x', 0, 1000, 60000, 500",
                "attempts_by_delivery",
            ),
        ];
        let mut plans = Vec::new();
        for (statement, arguments, index) in &statements {
            let plan = generic_plan(&scoped, no_scans, statement, arguments).await;
            plans.push((plan, *index));
        }
        admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
        for (plan, index) in plans {
            assert!(!plan.contains("Seq Scan"), "{plan}");
            assert!(plan.contains(index), "{index}: {plan}");
        }
    }

    /// A delivery that another statement holds locked for a moment when this node gives it
    /// back (another node's claim of due work keeps the rows it read locked until it ends) is
    /// tried again, not left leased to nobody until its lease ends; one whose lease is no
    /// longer the one named is left alone. The pool's one connection is free between tries:
    /// another operation of the node's goes meanwhile.
    #[tokio::test]
    async fn deliveries_locked_for_a_moment_are_given_back_all_the_same() {
        use herald_core::store::Store;
        let Some((admin, scoped, schema)) = fresh_schema().await else {
            return;
        };
        let lease = 1_000_000_i64;
        let (locker, connection) = tokio_postgres::connect(&scoped, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        locker
            .batch_execute(&format!(
                "INSERT INTO deliveries (id, org_id, webhook_id, event_id, event_type, state, \
                 due_at, lease_until, created_at, updated_at) VALUES \
                 ('dlv_a', 'org_x', 'wh_x', 'evt_a', 't', 'pending', {lease}, {lease}, 0, 0), \
                 ('dlv_b', 'org_x', 'wh_x', 'evt_b', 't', 'pending', {lease}, {lease}, 0, 0), \
                 ('dlv_c', 'org_x', 'wh_x', 'evt_c', 't', 'pending', 5, 5, 0, 0)"
            ))
            .await
            .unwrap();
        let store = PostgresStore::new(
            &scoped,
            PostgresOptions { pool_size: 1 },
            SecretCipher::none(),
        )
        .unwrap();
        let (org, until) = (
            OrgId::from_trusted("org_x".into()),
            Timestamp::from_millis(7),
        );
        let held = |id: &str| {
            (
                DeliveryId::from_trusted(id.into()),
                Timestamp::from_millis(lease),
            )
        };
        // The pool's connection is made before the lock is taken, so that the first try
        // finds the row locked.
        assert_eq!(store.defer_deliveries(&org, &[], until).await.unwrap(), 0);
        locker
            .batch_execute("BEGIN; SELECT 1 FROM deliveries WHERE id = 'dlv_a' FOR UPDATE")
            .await
            .unwrap();
        let unlocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let release = tokio::spawn({
            let unlocked = unlocked.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                locker.batch_execute("COMMIT").await.unwrap();
                unlocked.store(true, std::sync::atomic::Ordering::SeqCst);
                locker
            }
        });
        let (deferred, went_while_locked) = tokio::join!(
            async {
                store
                    .defer_deliveries(&org, &[held("dlv_a"), held("dlv_b"), held("dlv_c")], until)
                    .await
                    .unwrap()
            },
            async {
                tokio::time::sleep(std::time::Duration::from_millis(60)).await;
                store.next_due_at().await.unwrap();
                !unlocked.load(std::sync::atomic::Ordering::SeqCst)
            }
        );
        assert!(
            went_while_locked,
            "another operation waited for the retries to end"
        );
        let locker = release.await.unwrap();
        let rows = locker
            .query("SELECT id, lease_until FROM deliveries ORDER BY id", &[])
            .await
            .unwrap();
        admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
        let leases: Vec<(String, Option<i64>)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(deferred, 2, "{leases:?}");
        assert_eq!(
            leases,
            [
                ("dlv_a".to_owned(), None),
                ("dlv_b".to_owned(), None),
                ("dlv_c".to_owned(), Some(5))
            ]
        );
    }
}
