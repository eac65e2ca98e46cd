//! The scheduler: sleeps until the earliest due delivery (or until woken), leases what is due
//! from the store and hands it to the dispatcher. It is the only reader of pending work in the
//! store: retries, deliveries ingest gave a first delay, and those ingest left in the store
//! because the dispatcher's memory was full ("spilled"), which it pulls as room frees and puts
//! off again while there is none. Most fresh deliveries never pass through it: ingest hands
//! them to the dispatcher in memory. It also renews the leases of deliveries queued in memory
//! before they end (`Dispatcher::renew_queued_leases`).

use std::time::Duration;

use tokio::sync::watch;

use crate::dispatcher::Dispatcher;

/// How many deliveries one claim leases.
const CLAIM_BATCH: u32 = 500;
/// How many spilled deliveries one write puts off again.
const REARM_BATCH: u32 = 2_000;
/// The longest the scheduler sleeps without looking, in case a wake-up was missed.
const IDLE_LOOK: Duration = Duration::from_secs(5);
/// How often the scheduler looks while memory is full or deliveries are spilled.
const FULL_LOOK: Duration = Duration::from_millis(200);
/// How long to wait before trying again after the store failed.
const STORE_BACKOFF: Duration = Duration::from_secs(1);
/// How many queued deliveries' leases one look renews at most.
const RENEW_BATCH: usize = 5_000;

/// How often the scheduler looks for queued deliveries whose leases end within half a lease
/// (an eighth of a lease, between 1 s and 30 s): each is renewed before it ends.
fn renew_look(lease: Duration) -> Duration {
    (lease / 8).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Runs until `shutdown` turns true.
pub async fn run(dispatcher: Dispatcher, mut shutdown: watch::Receiver<bool>) {
    // Since when the store has failed the scheduler: an outage is said when it starts (and
    // every minute while it lasts) and when it ends, not every second.
    let mut failing_since: Option<std::time::Instant> = None;
    let mut said_at = std::time::Instant::now();
    let renew_every = renew_look(dispatcher.settings().lease);
    let mut renew_at = tokio::time::Instant::now() + renew_every;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if tokio::time::Instant::now() >= renew_at {
            renew_at = tokio::time::Instant::now() + renew_every;
            let now = dispatcher.clock().now();
            if let Err(e) = dispatcher.renew_queued_leases(now, RENEW_BATCH).await {
                // The next tick meets the same store, and says so.
                tracing::debug!(error = %herald_core::error_chain(&e), "could not renew the leases of queued deliveries");
            }
        }
        let wait = match tick(&dispatcher).await {
            Ok(wait) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        after_secs = since.elapsed().as_secs(),
                        "the database answers again; due deliveries are sent"
                    );
                }
                wait
            }
            Err(e) => {
                dispatcher.saw_store_error(&e);
                let first = failing_since.is_none();
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if first || said_at.elapsed() >= Duration::from_secs(60) {
                    said_at = std::time::Instant::now();
                    tracing::error!(error = %herald_core::error_chain(&e), failing_secs = since.elapsed().as_secs(), "the scheduler cannot read due deliveries; trying again every second");
                }
                STORE_BACKOFF
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait.min(renew_every)) => {}
            _ = dispatcher.scheduler_woken() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Claims what is due; returns how long to sleep before looking again.
async fn tick(dispatcher: &Dispatcher) -> Result<Duration, herald_core::store::StoreError> {
    let store = dispatcher.store();
    let now = dispatcher.clock().now();
    let lease_until = now.plus_millis(dispatcher.settings().lease.as_millis() as i64);
    // Memory first: restore the budget if a webhook within its share was let past it, make room
    // for one that waits to pull its spilled deliveries, and let those with room pull them.
    let needy = dispatcher.blocked_pull();
    dispatcher.rebalance(needy.as_ref()).await;
    if dispatcher.pull_spilled().await? {
        return Ok(Duration::ZERO);
    }
    let room = dispatcher.claim_room();
    if room > 0 {
        let limit = CLAIM_BATCH.min(room as u32);
        let due = store.claim_due(now, lease_until, limit).await?;
        let full = due.len() as u32 == limit;
        if !due.is_empty() {
            tracing::debug!(count = due.len(), "leased due deliveries");
            dispatcher.enqueue(due, lease_until);
        }
        if full {
            return Ok(Duration::ZERO);
        }
    } else {
        // The dispatcher is full. If what is due first belongs to a webhook owed a share of
        // it, others give room back; if not, look again soon, once some is worked off.
        if let Some(webhook) = store.earliest_due_webhook(now).await? {
            if dispatcher.owed_room(&webhook) && dispatcher.rebalance(Some(&webhook)).await {
                return Ok(Duration::ZERO);
            }
            // Or it is what this node spilled for a webhook it still pulls for, come due as a
            // fallback: put off again, out of the other webhooks' way.
            if let Some(from) = dispatcher.spilled_from(&webhook)
                && store
                    .rearm_spilled(&webhook, &from, now, lease_until, REARM_BATCH)
                    .await?
                    > 0
            {
                return Ok(Duration::ZERO);
            }
        }
        return Ok(FULL_LOOK);
    }
    let wait = match store.next_due_at().await? {
        Some(at) => Duration::from_millis((at.as_millis() - now.as_millis()).max(1) as u64),
        None => IDLE_LOOK,
    };
    if dispatcher.any_spilled() {
        // A webhook's room for its spilled deliveries also opens as others finish theirs.
        return Ok(wait.min(FULL_LOOK));
    }
    Ok(wait.min(IDLE_LOOK))
}
