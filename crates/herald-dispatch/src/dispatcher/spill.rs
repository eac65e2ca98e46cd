//! The store as the overflow of memory, shared fairly (see `held.rs`): where ingest places new
//! deliveries, how a webhook past its share gives deliveries back (spills them), and how it
//! pulls them again once it has room.

use foldhash::HashMap;
use std::sync::atomic::Ordering;

use herald_core::store::{DueDelivery, IngestItem, Placement, StoreError};
use herald_core::{DeliveryId, WebhookId};

use super::held::{Budget, Pull};
use super::{Dispatcher, Queued};

/// The most deliveries one pull leases: a pull is one write, and a large one would hold up
/// ingest behind it.
const PULL_BATCH: usize = 2_000;

impl Dispatcher {
    /// Decides, for each pending delivery of an ingest request, whether this node holds it in
    /// memory (leased) or it waits in the store for its webhook to pull it (spilled). A
    /// delivery with a first delay is left to the scheduler whatever is chosen here. Returns
    /// whether a webhook within its share was let past the budget: the scheduler must then be
    /// woken, once the deliveries are handed over, to restore it.
    pub fn place(&self, items: &mut [IngestItem]) -> bool {
        let budget = self.budget();
        if self.fits_with_headroom(items, budget) {
            // Shares only matter near the limit.
            for d in items.iter_mut().flat_map(|i| i.deliveries.iter_mut()) {
                d.placement = Placement::Leased;
            }
            return false;
        }
        let held = self.shared.held.lock().expect("held lock");
        let mut total = Budget {
            deliveries: held.len(),
            bytes: held.bytes(),
        };
        // Each webhook the request names, with what it holds (counting what was placed so
        // far) and its share.
        let mut placed: HashMap<&WebhookId, (Budget, Budget)> = HashMap::default();
        let mut overrun = false;
        for item in items.iter_mut() {
            let bytes = item.event.approx_bytes();
            for d in item.deliveries.iter_mut() {
                if d.skip.is_some() || d.not_before.is_some() {
                    continue;
                }
                let (mine, share) = placed.entry(&d.webhook_id).or_insert_with(|| {
                    (
                        held.load_of(&d.webhook_id),
                        held.share_of(&d.webhook_id, budget),
                    )
                });
                d.placement = if held.admits(*mine, *share, total, budget) {
                    mine.deliveries += 1;
                    mine.bytes += bytes;
                    total.deliveries += 1;
                    total.bytes += bytes;
                    overrun |= total.deliveries > budget.deliveries || total.bytes > budget.bytes;
                    Placement::Leased
                } else {
                    Placement::Spilled
                };
            }
        }
        overrun
    }

    /// Whether the request's deliveries fit in the budget with the headroom still free, from
    /// the published counts and without the lock: then every one of them is admitted.
    fn fits_with_headroom(&self, items: &[IngestItem], budget: Budget) -> bool {
        let (mut count, mut bytes) = (0, 0);
        for item in items {
            let n = item.deliveries.len();
            count += n;
            bytes += n * item.event.approx_bytes();
        }
        let spare = budget.headroom();
        self.held() + count + spare.deliveries < budget.deliveries
            && self.held_bytes() + bytes + spare.bytes < budget.bytes
    }

    /// Notes new deliveries just stored spilled (and counts them), so that their webhooks pull
    /// them when they can.
    pub fn note_new_spilled(&self, spilled: &[(WebhookId, DeliveryId)]) {
        self.shared.metrics.spilled.add(spilled.len() as u64);
        self.note_spilled(spilled.iter().map(|(w, id)| (w, id)));
    }

    /// Notes deliveries just stored spilled, so that their webhooks pull them when they can.
    pub fn note_spilled<'a>(
        &self,
        spilled: impl IntoIterator<Item = (&'a WebhookId, &'a DeliveryId)>,
    ) {
        let mut any = false;
        {
            let mut held = self.shared.held.lock().expect("held lock");
            for (webhook, id) in spilled {
                held.note_spilled(webhook, id);
                any = true;
            }
        }
        if any {
            self.wake_delivery_scheduler();
        }
    }

    /// Whether a queued copy may still be attempted (it was not left behind by an eviction or
    /// a resend). Until this node has left any behind there is no such copy, and no lock is
    /// taken (the check is only an early drop: `start` decides).
    pub(super) fn is_current(&self, queued: &Queued) -> bool {
        if self.shared.stale_copies.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let held = self.shared.held.lock().expect("held lock");
        held.is_current(&queued.delivery.delivery_id, queued.hold)
    }

    /// Takes for an attempt each delivery of `batch` that is still current, dropping those
    /// evicted while they waited (they are back in the store).
    pub(super) fn start(&self, batch: Vec<Queued>) -> Vec<DueDelivery> {
        let mut held = self.shared.held.lock().expect("held lock");
        batch
            .into_iter()
            .filter(|q| held.start(&q.delivery.delivery_id, q.hold))
            .map(|q| q.delivery)
            .collect()
    }

    /// Restores the budget after a webhook within its share was let past it, or makes room for
    /// `needy`, a webhook within its share with work in the store: the newest queued
    /// deliveries of webhooks past their share are given back to the store. `true` if any was.
    pub(crate) async fn rebalance(&self, needy: Option<&WebhookId>) -> bool {
        let now = self.shared.clock.now();
        let evicted = {
            let mut held = self.shared.held.lock().expect("held lock");
            let evicted = held.evict(self.budget(), needy, now);
            if !evicted.is_empty() {
                self.shared.stale_copies.fetch_add(1, Ordering::Relaxed);
            }
            self.note_held(&held);
            evicted
        };
        for (webhook, leases) in &evicted {
            tracing::debug!(webhook = %webhook, count = leases.len(), "gave queued deliveries back to the store to make room for other webhooks");
            match self.shared.store.spill_deliveries(leases).await {
                // Noted only now: a pull before the commit would not find them.
                Ok(()) => {
                    self.shared.metrics.given_back.add(leases.len() as u64);
                    self.note_spilled(leases.iter().map(|(id, _)| (webhook, id)));
                }
                Err(e) => {
                    tracing::error!(webhook = %webhook, error = %herald_core::error_chain(&e), "could not give deliveries back to the store; they come back when their lease ends");
                }
            }
        }
        !evicted.is_empty()
    }

    /// Whether some webhook may pull spilled deliveries but finds no room; if so, which.
    pub(crate) fn blocked_pull(&self) -> Option<WebhookId> {
        let held = self.shared.held.lock().expect("held lock");
        held.blocked_pull(
            self.budget(),
            held.room(self.budget(), self.typical_event_bytes()),
        )
    }

    /// Whether `webhook`, with due work in the store, is owed room it cannot find.
    pub(crate) fn owed_room(&self, webhook: &WebhookId) -> bool {
        let held = self.shared.held.lock().expect("held lock");
        let (load, share) = (held.load_of(webhook), held.share_of(webhook, self.budget()));
        load.deliveries < share.deliveries && load.bytes < share.bytes
    }

    /// Where this node pulls `webhook`'s spilled deliveries from, if it does.
    pub(crate) fn spilled_from(&self, webhook: &WebhookId) -> Option<DeliveryId> {
        let held = self.shared.held.lock().expect("held lock");
        held.spilled_from(webhook)
    }

    /// Whether any webhook has deliveries spilled in the store (the scheduler then looks
    /// often, in case one can pull them).
    pub(crate) fn any_spilled(&self) -> bool {
        self.shared.held.lock().expect("held lock").any_spilled()
    }

    /// Pulls back spilled deliveries for each webhook that has room for them; `true` if a
    /// pull found all it asked for (there may be more at once).
    pub(crate) async fn pull_spilled(&self) -> Result<bool, StoreError> {
        let pulls: Vec<Pull> = {
            let held = self.shared.held.lock().expect("held lock");
            held.pulls(
                self.budget(),
                held.room(self.budget(), self.typical_event_bytes()),
            )
        };
        // Read after the spills were: every delivery noted spilled was stored by now, with its
        // schedule's time no later than this.
        let now = self.shared.clock.now();
        let lease_until = now.plus_millis(self.shared.settings.lease.as_millis() as i64);
        let mut more = false;
        for pull in pulls {
            let limit = pull.limit.min(PULL_BATCH);
            let due = self
                .shared
                .store
                .claim_spilled(
                    &pull.webhook,
                    &pull.spill.from,
                    now,
                    lease_until,
                    limit as u32,
                )
                .await?;
            let exhausted = due.len() < limit;
            more |= !exhausted;
            let last = due.iter().map(|d| &d.delivery_id).max().cloned();
            self.shared
                .held
                .lock()
                .expect("held lock")
                .pulled(&pull, last.as_ref(), exhausted);
            if !due.is_empty() {
                tracing::debug!(webhook = %pull.webhook, count = due.len(), "pulled spilled deliveries back");
                self.enqueue(due, lease_until);
            }
        }
        Ok(more)
    }

    pub(super) fn budget(&self) -> Budget {
        Budget {
            deliveries: self.shared.settings.max_in_memory,
            bytes: self.shared.settings.max_bytes_in_memory,
        }
    }
}
