//! Retention: finished history older than the retention period is deleted in small batches, so
//! the database does not grow without bound. Pending deliveries (and their events) are never
//! deleted. An organization can also purge its own history up to a time. The same task cancels
//! deliveries left pending for webhooks that were deleted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use herald_core::store::PurgeCount;
use herald_core::{OrgId, Timestamp};

use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

/// Events removed per step (one transaction each): small enough never to hold the writer for long.
const BATCH: u32 = 500;
/// How often the retention task looks, unless woken.
const EVERY: Duration = Duration::from_secs(600);
/// How long a purge waits for events another transaction holds (on PostgreSQL, a recovery's
/// deliveries) before it reads them again, and how many times (5 s in all) before it ends the
/// run there: a later purge takes them.
const HELD_BACK_WAIT: Duration = Duration::from_millis(200);
const HELD_BACK_STEPS: u32 = 25;

/// Deletes, in steps, finished history received before `cutoff`.
async fn purge(
    state: &AppState,
    org: Option<&OrgId>,
    cutoff: Timestamp,
) -> ServiceResult<PurgeCount> {
    let mut total = PurgeCount::default();
    let mut from = None;
    let mut held_back = 0;
    loop {
        let (batch, next) = state
            .store
            .purge_before(org, cutoff, BATCH, from.clone())
            .await
            .map_err(ServiceError::from_store("organization"))?;
        let purged = batch.events;
        total += batch;
        // The next step starts where this one ended: events kept back by a pending delivery
        // (or of other organizations) are not read again by every step of the run.
        let Some(next) = next else {
            return Ok(total);
        };
        // Back where it started, having purged nothing: the events there are held by another
        // transaction (a recovery of their deliveries, for seconds). It waits for them a while
        // rather than read them again at once, then ends the run there.
        if purged == 0 && from.as_ref() == Some(&next) {
            held_back += 1;
            if held_back > HELD_BACK_STEPS {
                tracing::info!(
                    org = org.map(OrgId::as_str),
                    "purge stopped at events another change held for 5 s; a later purge takes them"
                );
                return Ok(total);
            }
            tokio::time::sleep(HELD_BACK_WAIT).await;
        } else {
            held_back = 0;
        }
        from = Some(next);
        // Let other writers in between steps.
        tokio::task::yield_now().await;
    }
}

/// `POST /v1/orgs/{org}/purge`: the organization's finished history received before `before`.
pub async fn purge_org(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    before: Timestamp,
) -> ServiceResult<PurgeCount> {
    super::org_snapshot(state, scope, org).await?;
    let count = purge(state, Some(org), before).await?;
    tracing::info!(org = %org, events = count.events, deliveries = count.deliveries, attempts = count.attempts, "organization history purged");
    Ok(count)
}

/// The background task: every few minutes (or when woken), purge what is past retention.
pub async fn run(state: AppState, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let days = state.settings.delivery.retention_days;
    loop {
        // Each of these gives way to shutdown too: their steps are transactions of their own,
        // and what is left is done at the next start (a sweep of many deleted webhooks' backlogs
        // kept a node from stopping until it was done).
        let sweeps = async {
            cancel_orphaned(&state).await;
            sweep_deleted_orgs(&*state.store).await;
            state.directory.forget_unused_schemas();
            delete_expired_sessions(&state).await;
        };
        tokio::select! {
            _ = sweeps => {}
            _ = shutdown.changed() => return,
        }
        super::subscriptions::subscribe_all_new_topics(&state);
        if days > 0 {
            let cutoff = state.clock.now().plus_secs(-(days as i64) * 86_400);
            // A long purge gives way to shutdown between batches: each batch is a transaction
            // of its own, and what is left is purged at the next start.
            let purged = tokio::select! {
                purged = purge(&state, None, cutoff) => purged,
                _ = shutdown.changed() => return,
            };
            match purged {
                Ok(c) if c.events > 0 => {
                    tracing::info!(
                        events = c.events,
                        deliveries = c.deliveries,
                        attempts = c.attempts,
                        days,
                        "purged history past retention"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %herald_core::error_chain(&e), "retention purge failed; trying again later")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Dashboard sessions past their expiry: refused already, but each keeps what identifies the
/// token that signed it in (an API key's hash), which should not outlive it by much.
async fn delete_expired_sessions(state: &AppState) {
    match state.sessions.delete_expired().await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(sessions = n, "deleted expired dashboard sessions"),
        Err(e) => {
            tracing::warn!(error = %herald_core::error_chain(&e), "could not delete expired dashboard sessions; trying again at the next retention run")
        }
    }
}

/// Runs `sweep` on the store after each of `waits` in turn, in a task of its own: what writes
/// that raced a change (enabling or deleting a webhook, deleting an organization) left behind
/// is looked for once they are over, besides the retention task's run every ten minutes.
pub(super) fn sweep_later<F, Fut>(state: &AppState, waits: &'static [Duration], sweep: F)
where
    F: Fn(Arc<dyn herald_core::store::Store>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let store = state.store.clone();
    tokio::spawn(async move {
        for wait in waits {
            tokio::time::sleep(*wait).await;
            sweep(store.clone()).await;
        }
    });
}

/// Deletes what writes racing an organization's deletion stored for it (on PostgreSQL, where
/// they may come from other nodes): nothing of a deleted organization stays pending for good.
pub(super) async fn sweep_deleted_orgs(store: &dyn herald_core::store::Store) {
    match store.sweep_deleted_orgs().await {
        Ok(0) => {}
        Ok(rows) => tracing::info!(
            rows,
            "deleted what was stored for organizations just deleted (writes that raced the deletion)"
        ),
        Err(e) => {
            tracing::error!(error = %herald_core::error_chain(&e), "could not sweep organizations just deleted; trying again later")
        }
    }
}

/// Cancels deliveries stored for a webhook just after it was deleted (an ingest racing the
/// deletion), so that none stays pending for good. Deletions of the last day are looked at:
/// the race lasts milliseconds, and this runs every ten minutes (with retention off too).
async fn cancel_orphaned(state: &AppState) {
    let now = state.clock.now();
    cancel_orphaned_since(&*state.store, now.plus_secs(-86_400), now).await;
}

/// Cancels what is pending for webhooks deleted since `since` (`Store::cancel_orphaned`), and
/// says so.
pub(super) async fn cancel_orphaned_since(
    store: &dyn herald_core::store::Store,
    since: Timestamp,
    now: Timestamp,
) {
    match store.cancel_orphaned(since, now).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deliveries = n,
            "cancelled deliveries stored for webhooks just deleted"
        ),
        Err(e) => {
            tracing::error!(error = %herald_core::error_chain(&e), "could not cancel deliveries of deleted webhooks; trying again later")
        }
    }
}
