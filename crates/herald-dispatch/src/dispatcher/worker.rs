//! One webhook's task: takes its deliveries in arrival order and runs up to its concurrency
//! limit at once. For a webhook with a batch window (Opal), deliveries that arrive within the
//! window after the first share one request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use herald_core::WebhookId;
use herald_core::store::DueDelivery;

use super::Dispatcher;

/// The most deliveries one batched request carries.
pub(crate) const MAX_BATCH: usize = 100;

impl Dispatcher {
    pub(super) async fn run_worker(
        self,
        webhook_id: WebhookId,
        mut rx: mpsc::UnboundedReceiver<DueDelivery>,
    ) {
        let slots = Arc::new(Semaphore::new(self.shared.settings.per_webhook_concurrency));
        let mut in_flight = JoinSet::new();
        loop {
            let next = tokio::select! {
                d = rx.recv() => d,
                _ = tokio::time::sleep(self.shared.settings.idle_worker) => None,
            };
            let first = match next {
                Some(d) => d,
                None => {
                    // Idle (or shut down): leave unless something arrived while we decided.
                    let mut workers = self.shared.workers.lock().expect("workers lock");
                    match rx.try_recv() {
                        Ok(d) => d,
                        Err(_) => {
                            workers.remove(&webhook_id);
                            break;
                        }
                    }
                }
            };
            let mut batch = vec![first];
            if let Some(window) = self.batch_window(&batch[0]).await {
                let deadline = tokio::time::Instant::now() + window;
                while batch.len() < MAX_BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(d)) => batch.push(d),
                        _ => break,
                    }
                }
            }
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            if self.shared.stopping.load(Ordering::SeqCst) {
                // Shutting down: what has not started stays leased in the store and is picked
                // up again at the next start, rather than being sent and cut off half-way.
                for d in &batch {
                    self.release_held(&d.delivery_id);
                }
                continue;
            }
            let this = self.clone();
            in_flight.spawn(async move {
                this.attempt(batch).await;
                drop(permit);
            });
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// The webhook's batch window, if it has one.
    async fn batch_window(&self, due: &DueDelivery) -> Option<Duration> {
        let snapshot = self.shared.directory.snapshot(&due.org_id).await.ok()?;
        let webhook = snapshot.webhook(&due.webhook_id)?;
        webhook
            .batch_window_ms()
            .map(|ms| Duration::from_millis(u64::from(ms)))
    }
}
