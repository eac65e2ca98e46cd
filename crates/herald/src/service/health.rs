//! Delivery health of one webhook: success rate, latency percentiles and backlog over the last
//! day, for the dashboard's plots.

use herald_core::health::{HealthSeries, HealthWindow};
use herald_core::{OrgId, WebhookId};

use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

/// How far back the plots look, in hourly buckets.
pub const HOURS: u32 = 24;

pub async fn webhook_health(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
) -> ServiceResult<HealthSeries> {
    super::webhooks::get(state, scope, org, id).await?;
    let window = HealthWindow::hourly_until(state.clock.now(), HOURS);
    let rows = state
        .store
        .webhook_health(org, id, &window)
        .await
        .map_err(ServiceError::from_store("webhook"))?;
    Ok(HealthSeries::from_rows(&window, &rows))
}
