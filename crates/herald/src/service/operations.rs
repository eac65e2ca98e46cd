//! Herald's own operational events, delivered like any other to the organization's webhooks that
//! subscribe to them (`events: ["webhook.disabled"]` or `channels: ["operations"]`):
//! `webhook.disabled`, `webhook.enabled` and `delivery.exhausted`.

use std::time::Duration;

use serde_json::{Value, json};

use herald_core::OrgId;
use herald_core::event::{NewEvent, generate_event_id};
use herald_core::event_type::{DELIVERY_EXHAUSTED, WEBHOOK_DISABLED, WEBHOOK_ENABLED};
use herald_core::store::DueDelivery;
use herald_core::webhook::Webhook;
use herald_dispatch::operations::Operations;

use super::ingest::{Origin, ingest_values};
use super::{ServiceError, ServiceResult};
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

    fn delivery_exhausted(
        &self,
        delivery: &DueDelivery,
        webhook: &Webhook,
        attempts: u32,
        error: &str,
    ) {
        let data = json!({
            "webhook": summary(webhook),
            "delivery": { "id": delivery.delivery_id.as_str(), "event_id": delivery.event.id, "event_type": delivery.event.event_type },
            "attempts": attempts,
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

/// How long to wait before each try after the first to store an operational event: about half
/// a minute in all, while the database is away.
const WAITS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];

fn emit(state: AppState, org: OrgId, event_type: &'static str, data: Value) {
    // The id is chosen once, so that a try whose answer was lost (the commit went through, the
    // connection did not) and the next one store one event, not two.
    let event = json!({ "id": generate_event_id(), "type": event_type, "data": data });
    tokio::spawn(async move {
        let stored = retry_transient(&WAITS, || {
            ingest_values(
                &state,
                &org,
                vec![event.clone()],
                false,
                Origin::Herald,
                NewEvent::parse,
            )
        })
        .await;
        if let Err(e) = stored {
            tracing::error!(org = %org, event_type, error = %herald_core::error_chain(&e), "could not record an operational event");
        }
    });
}

/// Runs `attempt`, and again after each of `waits` while it fails because the database is away
/// (a later try may find it back); any other answer is final.
async fn retry_transient<T, F, Fut>(waits: &[Duration], mut attempt: F) -> ServiceResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ServiceResult<T>>,
{
    let mut result = attempt().await;
    for wait in waits {
        match &result {
            Err(e @ (ServiceError::Unavailable(_) | ServiceError::Internal(_))) => {
                tracing::debug!(error = %herald_core::error_chain(e), "storing an operational event failed; trying again");
            }
            _ => break,
        }
        tokio::time::sleep(*wait).await;
        result = attempt().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::store::StoreError;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// As many tries as the real schedule, without its waits.
    const NOW: [Duration; WAITS.len()] = [Duration::ZERO; WAITS.len()];

    fn away() -> ServiceError {
        ServiceError::Unavailable(StoreError::Unavailable("the database is away".into()))
    }

    #[tokio::test]
    async fn a_store_that_comes_back_gets_the_event() {
        let tries = AtomicU32::new(0);
        let stored = retry_transient(&NOW, || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0..=2 => Err(away()),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(stored.unwrap(), 3);
    }

    #[tokio::test]
    async fn it_gives_up_after_the_last_delay_and_at_once_on_other_errors() {
        let tries = AtomicU32::new(0);
        let stored: ServiceResult<()> = retry_transient(&NOW, || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(away())
        })
        .await;
        assert!(matches!(stored, Err(ServiceError::Unavailable(_))));
        assert_eq!(tries.load(Ordering::SeqCst), WAITS.len() as u32 + 1);

        let tries = AtomicU32::new(0);
        let stored: ServiceResult<()> = retry_transient(&NOW, || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(ServiceError::NotFound("organization"))
        })
        .await;
        assert!(matches!(stored, Err(ServiceError::NotFound(_))));
        assert_eq!(
            tries.load(Ordering::SeqCst),
            1,
            "an organization gone stays gone"
        );
    }
}
