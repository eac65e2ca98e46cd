//! Endpoint health: `410 Gone` disables a webhook at once; a webhook whose every attempt failed
//! for `disable_after` is disabled too. Either way the organization hears of it through an
//! operational event, and its pending deliveries wait (parked), they are not dropped.

use std::sync::Arc;

use herald_core::Timestamp;
use herald_core::delivery::AttemptOutcome;
use herald_core::store::{DueDelivery, StoreError};
use herald_core::webhook::Webhook;

use super::Dispatcher;

/// A webhook's failing streak as this node last saved it: since when every attempt failed, or
/// `None` once one succeeded. The directory's copy of the webhook (`failing_since`) is read when
/// the organization is loaded and is not reloaded when the streak changes, so this one is newer,
/// as long as it was noted for the same version of the webhook (`updated_at`): after a user
/// changes the webhook (re-enabling it clears its streak), the directory's fresh copy is right.
#[derive(Debug, Clone, Copy)]
pub(super) struct Streak {
    since: Option<Timestamp>,
    version: Timestamp,
}

impl Dispatcher {
    /// Updates the webhook's failing streak after an attempt, and disables it when it must be.
    pub(super) async fn track_health(
        &self,
        webhook: &Arc<Webhook>,
        outcome: &AttemptOutcome,
    ) -> Result<(), StoreError> {
        let shared = &self.shared;
        let now = shared.clock.now();
        if outcome.status == Some(410) {
            return self
                .disable(webhook, "the endpoint answered 410 Gone".to_owned())
                .await;
        }
        let known = self.failing_since(webhook);
        if outcome.is_success() {
            if known.is_some() {
                shared
                    .store
                    .note_webhook_outcome(&webhook.id, false, now)
                    .await?;
                if webhook.failing_since.is_some() {
                    // The directory's copy still says failing: remember that it is not.
                    self.note_streak(webhook, None);
                } else {
                    self.forget_streak(webhook);
                }
            }
            return Ok(());
        }
        let since = match known {
            Some(since) => since,
            None => self.note_failure(webhook, now).await?,
        };
        let limit = shared.settings.disable_after;
        let long_enough =
            |since: Timestamp| now.as_millis() - since.as_millis() >= limit.as_millis() as i64;
        if !long_enough(since) {
            return Ok(());
        }
        // This node's memory of the streak may be stale: another node's success since (with
        // several nodes) cleared it in the store. The store's answer decides.
        let since = match known {
            Some(_) => self.note_failure(webhook, now).await?,
            None => since,
        };
        if long_enough(since) {
            let days = limit.as_secs_f64() / 86_400.0;
            return self
                .disable(
                    webhook,
                    format!(
                        "every attempt failed since {} ({days:.1} days or more)",
                        since.to_rfc3339()
                    ),
                )
                .await;
        }
        Ok(())
    }

    /// Notes a failure in the store (which starts a streak if none runs) and here; answers since
    /// when the webhook has been failing, as the store says.
    async fn note_failure(
        &self,
        webhook: &Webhook,
        now: Timestamp,
    ) -> Result<Timestamp, StoreError> {
        let since = self
            .shared
            .store
            .note_webhook_outcome(&webhook.id, true, now)
            .await?
            .unwrap_or(now);
        self.note_streak(webhook, Some(since));
        Ok(since)
    }

    /// Since when every attempt to the webhook failed, as far as this node knows.
    fn failing_since(&self, webhook: &Webhook) -> Option<Timestamp> {
        match self
            .shared
            .failing
            .lock()
            .expect("failing lock")
            .get(&webhook.id)
        {
            Some(streak) if streak.version == webhook.updated_at => streak.since,
            _ => webhook.failing_since,
        }
    }

    fn note_streak(&self, webhook: &Webhook, since: Option<Timestamp>) {
        let streak = Streak {
            since,
            version: webhook.updated_at,
        };
        self.shared
            .failing
            .lock()
            .expect("failing lock")
            .insert(webhook.id.clone(), streak);
    }

    fn forget_streak(&self, webhook: &Webhook) {
        self.shared
            .failing
            .lock()
            .expect("failing lock")
            .remove(&webhook.id);
    }

    /// Disables the webhook, changing nothing else of it: the copy the attempt used may be
    /// older than what a user saved meanwhile (a new secret, say), which must not be undone.
    async fn disable(&self, webhook: &Arc<Webhook>, reason: String) -> Result<(), StoreError> {
        let shared = &self.shared;
        if !webhook.active {
            return Ok(());
        }
        let now = shared.clock.now();
        let disabled = shared
            .store
            .disable_webhook(&webhook.org_id, &webhook.id, &reason, now)
            .await?;
        shared.directory.invalidate(&webhook.org_id);
        self.forget_streak(webhook);
        if !disabled {
            // Already disabled (by a user, or by another attempt), or deleted.
            return Ok(());
        }
        tracing::warn!(webhook = %webhook.id, org = %webhook.org_id, reason, "webhook disabled");
        if let Some(ops) = shared.operations.get() {
            let disabled = Webhook {
                active: false,
                disabled_reason: Some(reason.clone()),
                updated_at: now,
                ..(**webhook).clone()
            };
            ops.webhook_disabled(&disabled, &reason);
        }
        Ok(())
    }

    /// Tells the organization a delivery failed its last attempt (not for operational events
    /// themselves, so that a failing endpoint cannot feed itself forever).
    pub(super) fn report_exhausted(&self, due: &DueDelivery, webhook: &Webhook, error: &str) {
        if herald_core::event_type::is_operational(&due.event.event_type) {
            return;
        }
        if let Some(ops) = self.shared.operations.get() {
            ops.delivery_exhausted(due, webhook, error);
        }
    }
}
