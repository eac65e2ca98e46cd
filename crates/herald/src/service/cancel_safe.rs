//! What a request must finish even if its client goes away. Hyper drops a request's future
//! when the client disconnects, and what the store's writer already took is committed anyway;
//! what was to follow in this node's memory would then never happen.
//!
//! - [`to_the_end`]: a write and what follows it in memory (forgetting a cached snapshot or an
//!   API key) run in a task of their own, so a revoked key is never left admitted, nor a paused
//!   webhook given new deliveries, until the process restarts. [`write_then_forget`] is its
//!   usual case: a write, then the organization's cached snapshot forgotten.
//! - [`GiveBackIfDropped`]: deliveries stored leased to this node are handed to its dispatcher
//!   once the store answers; if the request is dropped first, their leases are given back so
//!   that they are due at once instead of when the lease ends (5 minutes by default). Ingest
//!   takes this path for every request, so it costs nothing unless the request is dropped.

use std::future::Future;
use std::sync::Arc;

use herald_core::store::{IngestItem, Store, StoreResult};
use herald_core::{DeliveryId, OrgId, Timestamp};

use crate::app::AppState;

use super::{ServiceError, ServiceResult};

/// Runs `change` (a write to the store and what must follow it in memory) in a task of its own,
/// and waits for it: it goes on if the caller is dropped.
pub(crate) async fn to_the_end<T, F, Fut>(state: &AppState, change: F) -> ServiceResult<T>
where
    T: Send + 'static,
    F: FnOnce(AppState) -> Fut,
    Fut: Future<Output = ServiceResult<T>> + Send + 'static,
{
    tokio::spawn(change(state.clone())).await.map_err(|e| {
        ServiceError::Internal(herald_core::store::StoreError::Other(
            format!("a change stopped halfway: {e}").into(),
        ))
    })?
}

/// Writes with `write` and then forgets what is cached of `org` (even if the write failed), to
/// the end (`to_the_end`).
/// `what` names the thing a store's "not found" is about.
pub(crate) async fn write_then_forget<T, F, Fut>(
    state: &AppState,
    org: &OrgId,
    what: &'static str,
    write: F,
) -> ServiceResult<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = StoreResult<T>> + Send + 'static,
{
    let (org, written) = (org.clone(), write(state.store.clone()));
    to_the_end(state, |state| async move {
        let written = written.await.map_err(ServiceError::from_store(what));
        // Whatever the answer: a change that failed halfway (a pause whose steps failed after
        // its flag was written) may be partly in the store, and forgetting costs one reload.
        state.directory.invalidate(&org);
        written
    })
    .await
}

/// Armed while a request waits for the store; disarmed once the store has answered.
pub(crate) struct GiveBackIfDropped<'a> {
    state: &'a AppState,
    /// The request's organization: only its deliveries are given back, whatever ids it named.
    org: &'a OrgId,
    deliveries: Deliveries<'a>,
    now: Timestamp,
    /// The lease the write gives them: they are given back only while they still have it.
    lease_until: Timestamp,
    armed: bool,
}

/// Which deliveries to give back. Ingest's are read from its items only if it is dropped, so
/// that the usual path allocates nothing for the guard.
enum Deliveries<'a> {
    HeldOf(&'a [IngestItem]),
    One(&'a DeliveryId),
}

impl<'a> GiveBackIfDropped<'a> {
    /// For the deliveries of `items` placed to be held in memory.
    pub(crate) fn items(
        state: &'a AppState,
        org: &'a OrgId,
        items: &'a [IngestItem],
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Self {
        Self::new(state, org, Deliveries::HeldOf(items), now, lease_until)
    }

    /// For one delivery (a resend).
    pub(crate) fn one(
        state: &'a AppState,
        org: &'a OrgId,
        id: &'a DeliveryId,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Self {
        Self::new(state, org, Deliveries::One(id), now, lease_until)
    }

    fn new(
        state: &'a AppState,
        org: &'a OrgId,
        deliveries: Deliveries<'a>,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Self {
        Self {
            state,
            org,
            deliveries,
            now,
            lease_until,
            armed: true,
        }
    }

    /// The store answered: the request goes on and hands its deliveries over itself.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for GiveBackIfDropped<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Without a runtime the process is stopping, and the leases end by themselves.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lease_until = self.lease_until;
        let ids: Vec<(DeliveryId, Timestamp)> = match self.deliveries {
            Deliveries::HeldOf(items) => items
                .iter()
                .flat_map(|i| &i.deliveries)
                .filter(|d| d.held_at_ingest())
                .map(|d| (d.id.clone(), lease_until))
                .collect(),
            // A resend refused (a node holds the delivery) wrote no lease, so this leaves
            // whoever holds it alone: the give-back applies only under this request's lease.
            Deliveries::One(id) => vec![(id.clone(), lease_until)],
        };
        if ids.is_empty() {
            return;
        }
        // SQLite's writer runs jobs in the order they came, so this runs after the write it
        // follows, and finds nothing pending if that write never ran. On PostgreSQL it may run
        // before that write commits; the store then gives the leases back itself once the
        // write is committed and nobody waits for its answer (`postgres/ingest.rs`).
        let (state, org, now) = (self.state.clone(), self.org.clone(), self.now);
        runtime.spawn(async move {
            match state.store.defer_deliveries(&org, &ids, now).await {
                Ok(deferred) => {
                    tracing::debug!(
                        deliveries = deferred,
                        "a client went away while its deliveries were stored; they are due now"
                    );
                    state.dispatcher.wake_delivery_scheduler();
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not give back the deliveries of a request whose client went away; \
                     they are attempted when their lease ends"
                ),
            }
        });
    }
}
