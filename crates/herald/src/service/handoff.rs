//! Deliveries stored leased to this node are handed to its dispatcher in memory once the store
//! answers. A request's future can be dropped before that: a client that disconnects makes
//! hyper drop it. What the store's writer already took is committed anyway, and those
//! deliveries would wait for their lease to end (5 minutes by default). The guard here gives
//! their leases back instead, so that they are due at once.

use herald_core::store::{IngestItem, Placement};
use herald_core::{DeliveryId, Timestamp};

use crate::app::AppState;

/// Armed while a request waits for the store; disarmed once the store has answered.
pub(crate) struct GiveBackIfDropped<'a> {
    state: &'a AppState,
    deliveries: Deliveries<'a>,
    now: Timestamp,
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
    pub(crate) fn items(state: &'a AppState, items: &'a [IngestItem], now: Timestamp) -> Self {
        Self::new(state, Deliveries::HeldOf(items), now)
    }

    /// For one delivery (a resend).
    pub(crate) fn one(state: &'a AppState, id: &'a DeliveryId, now: Timestamp) -> Self {
        Self::new(state, Deliveries::One(id), now)
    }

    fn new(state: &'a AppState, deliveries: Deliveries<'a>, now: Timestamp) -> Self {
        Self {
            state,
            deliveries,
            now,
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
        let ids: Vec<DeliveryId> = match self.deliveries {
            Deliveries::HeldOf(items) => items
                .iter()
                .flat_map(|i| &i.deliveries)
                .filter(|d| {
                    d.placement == Placement::Leased && d.skip.is_none() && d.not_before.is_none()
                })
                .map(|d| d.id.clone())
                .collect(),
            Deliveries::One(id) => vec![id.clone()],
        };
        if ids.is_empty() {
            return;
        }
        // SQLite's writer runs jobs in the order they came, so this runs after the write it
        // follows, and finds nothing pending if that write never ran. On PostgreSQL it may run
        // before that write commits; the lease then ends as it would have.
        let (state, now) = (self.state.clone(), self.now);
        runtime.spawn(async move {
            match state.store.defer_deliveries(&ids, now).await {
                Ok(()) => {
                    tracing::debug!(
                        deliveries = ids.len(),
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
