//! What the dispatcher tells the rest of Herald about endpoint health, so that it can become
//! operational events (`webhook.disabled`, `delivery.exhausted`) the organization's own webhooks
//! can subscribe to. The app implements it; the dispatcher only calls it.

use herald_core::store::DueDelivery;
use herald_core::webhook::Webhook;

pub trait Operations: Send + Sync {
    /// Herald disabled `webhook` (it is already saved inactive) for `reason`.
    fn webhook_disabled(&self, webhook: &Webhook, reason: &str);
    /// `delivery` failed for good after `attempts` attempts, the last with `error` (or
    /// without another attempt: its endpoint's circuit stayed open past its retry schedule).
    fn delivery_exhausted(
        &self,
        delivery: &DueDelivery,
        webhook: &Webhook,
        attempts: u32,
        error: &str,
    );
}
