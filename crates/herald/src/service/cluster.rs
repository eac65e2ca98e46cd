//! Several nodes on one database: what the other nodes did reaches this node through the
//! store's signals (PostgreSQL `LISTEN/NOTIFY`). A change to an organization, its webhooks,
//! types, subscriptions or API keys makes this node forget its cached copy, so the change takes effect
//! here as soon as the notification arrives; work made due elsewhere wakes this node's
//! scheduler at once instead of at its next look.
//!
//! A single-node store (SQLite) has no signals and this task does not run.

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use herald_core::store::StoreSignal;

use crate::app::AppState;

/// Follows `signals` until `shutdown` turns true.
pub async fn run(
    state: AppState,
    mut signals: Receiver<StoreSignal>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let signal = tokio::select! {
            s = signals.recv() => s,
            _ = shutdown.changed() => return,
        };
        match signal {
            Ok(StoreSignal::WorkDue) => state.dispatcher.wake_delivery_scheduler(),
            Ok(StoreSignal::OrgChanged(org)) => {
                state.directory.invalidate(&org);
                // One of its API keys may have been revoked.
                crate::service::auth::forget_org(&state, &org);
                // An activated webhook may have made parked deliveries due.
                state.dispatcher.wake_scheduler_and_renewals();
                // A webhook pointed elsewhere ends what this node's circuit or the endpoint's
                // wait holds back for it now, not at its next delivery here.
                let state = state.clone();
                tokio::spawn(async move {
                    crate::service::webhooks::changed_elsewhere(&state, &org).await;
                });
            }
            Ok(StoreSignal::Resync) | Err(RecvError::Lagged(_)) => {
                tracing::info!("may have missed other nodes' changes; reloading caches");
                state.directory.invalidate_all();
                crate::service::auth::forget_all(&state);
                state.dispatcher.wake_scheduler_and_renewals();
            }
            Err(RecvError::Closed) => return,
        }
    }
}
