//! Delivery history: list a webhook's deliveries, read one with its attempts, resend one, and
//! recover every failed delivery since a time.

use serde::Serialize;

use herald_core::delivery::{Attempt, Delivery};
use herald_core::store::DeliveryFilter;
use herald_core::{DeliveryId, OrgId, Page, PageRequest, Timestamp, WebhookId};

use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
}

pub async fn list(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    webhook: &WebhookId,
    filter: DeliveryFilter,
    page: PageRequest,
) -> ServiceResult<Page<Delivery>> {
    super::webhooks::get(state, scope, org, webhook).await?;
    state
        .store
        .list_deliveries(org, webhook, &filter, &page)
        .await
        .map_err(ServiceError::from_store("webhook"))
}

pub async fn get(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &DeliveryId,
) -> ServiceResult<DeliveryDetail> {
    scope.check_org(org)?;
    let (delivery, attempts) = state
        .store
        .get_delivery(org, id)
        .await
        .map_err(ServiceError::from_store("delivery"))?;
    Ok(DeliveryDetail { delivery, attempts })
}

/// Sends a finished delivery again now, with a fresh retry schedule.
pub async fn resend(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &DeliveryId,
) -> ServiceResult<DeliveryDetail> {
    scope.check_org(org)?;
    let now = state.clock.now();
    let lease_until = state.lease_until(now);
    let due = state
        .store
        .resend_delivery(org, id, now, lease_until)
        .await
        .map_err(ServiceError::from_store("delivery"))?;
    state.dispatcher.enqueue(vec![due], lease_until);
    get(state, scope, org, id).await
}

/// Resends every failed delivery of the webhook created at or after `since`.
pub async fn recover(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    webhook: &WebhookId,
    since: Timestamp,
) -> ServiceResult<u64> {
    super::webhooks::get(state, scope, org, webhook).await?;
    let n = state
        .store
        .recover_failed(org, webhook, since, state.clock.now())
        .await
        .map_err(ServiceError::from_store("webhook"))?;
    if n > 0 {
        state.dispatcher.wake_scheduler();
        tracing::info!(webhook = %webhook, count = n, "recovering failed deliveries");
    }
    Ok(n)
}
