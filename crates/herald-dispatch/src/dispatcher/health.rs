//! Endpoint health: `410 Gone` disables a webhook at once; a webhook whose every attempt failed
//! for `disable_after` is disabled too. Either way the organization hears of it through an
//! operational event, and its pending deliveries wait (parked), they are not dropped.

use std::sync::Arc;

use herald_core::delivery::AttemptOutcome;
use herald_core::store::{DueDelivery, StoreError};
use herald_core::webhook::Webhook;

use super::Dispatcher;

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
        let known = shared
            .failing
            .lock()
            .expect("failing lock")
            .get(&webhook.id)
            .copied()
            .or(webhook.failing_since);
        if outcome.is_success() {
            if known.is_some() {
                shared
                    .store
                    .note_webhook_outcome(&webhook.id, false, now)
                    .await?;
                shared
                    .failing
                    .lock()
                    .expect("failing lock")
                    .remove(&webhook.id);
            }
            return Ok(());
        }
        let since = match known {
            Some(since) => since,
            None => {
                let since = shared
                    .store
                    .note_webhook_outcome(&webhook.id, true, now)
                    .await?
                    .unwrap_or(now);
                shared
                    .failing
                    .lock()
                    .expect("failing lock")
                    .insert(webhook.id.clone(), since);
                since
            }
        };
        let limit = shared.settings.disable_after;
        if now.as_millis() - since.as_millis() >= limit.as_millis() as i64 {
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

    async fn disable(&self, webhook: &Arc<Webhook>, reason: String) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut disabled = (**webhook).clone();
        if !disabled.active {
            return Ok(());
        }
        disabled.active = false;
        disabled.disabled_reason = Some(reason.clone());
        disabled.updated_at = shared.clock.now();
        shared.store.update_webhook(&disabled).await?;
        shared.directory.invalidate(&disabled.org_id);
        shared
            .failing
            .lock()
            .expect("failing lock")
            .remove(&disabled.id);
        tracing::warn!(webhook = %disabled.id, org = %disabled.org_id, reason, "webhook disabled");
        if let Some(ops) = shared.operations.get() {
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
