//! Herald's own operational events, delivered like any other to the organization's webhooks that
//! subscribe to them (`events: ["webhook.disabled"]` or `channels: ["operations"]`):
//! `webhook.disabled`, `webhook.enabled` and `delivery.exhausted`.

use serde_json::{Value, json};

use herald_core::OrgId;
use herald_core::event::NewEvent;
use herald_core::event_type::{DELIVERY_EXHAUSTED, WEBHOOK_DISABLED, WEBHOOK_ENABLED};
use herald_core::store::DueDelivery;
use herald_core::webhook::Webhook;
use herald_dispatch::operations::Operations;

use super::ingest::{Origin, ingest_values};
use crate::app::AppState;

/// Turns the dispatcher's news into events. Emitting happens in the background: the dispatcher
/// never waits on it.
pub struct OperationalEvents {
    state: AppState,
}

impl OperationalEvents {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl Operations for OperationalEvents {
    fn webhook_disabled(&self, webhook: &Webhook, reason: &str) {
        let data = json!({ "webhook": summary(webhook), "reason": reason });
        emit(
            self.state.clone(),
            webhook.org_id.clone(),
            WEBHOOK_DISABLED,
            data,
        );
    }

    fn delivery_exhausted(&self, delivery: &DueDelivery, webhook: &Webhook, error: &str) {
        let data = json!({
            "webhook": summary(webhook),
            "delivery": { "id": delivery.delivery_id.as_str(), "event_id": delivery.event.id, "event_type": delivery.event.event_type },
            "attempts": delivery.attempt_count + 1,
            "last_error": error,
        });
        emit(
            self.state.clone(),
            webhook.org_id.clone(),
            DELIVERY_EXHAUSTED,
            data,
        );
    }
}

/// Emits `webhook.enabled` for a webhook a user switched back on.
pub fn webhook_enabled(state: &AppState, webhook: &Webhook) {
    emit(
        state.clone(),
        webhook.org_id.clone(),
        WEBHOOK_ENABLED,
        json!({ "webhook": summary(webhook) }),
    );
}

fn summary(webhook: &Webhook) -> Value {
    json!({ "id": webhook.id.as_str(), "name": webhook.name, "url": webhook.url.as_str() })
}

fn emit(state: AppState, org: OrgId, event_type: &'static str, data: Value) {
    tokio::spawn(async move {
        let event = json!({ "type": event_type, "data": data });
        if let Err(e) = ingest_values(
            &state,
            &org,
            vec![event],
            false,
            Origin::Herald,
            NewEvent::parse,
        )
        .await
        {
            tracing::error!(org = %org, event_type, error = %e, "could not record an operational event");
        }
    });
}
