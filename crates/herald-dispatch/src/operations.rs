//! What the dispatcher tells the rest of Herald about endpoint health, so that it can become
//! operational events (`webhook.disabled`, `delivery.exhausted`) the organization's own webhooks
//! can subscribe to. The app implements it; the dispatcher only calls it.

use herald_core::store::DueDelivery;
use herald_core::webhook::Webhook;

pub trait Operations: Send + Sync {
    /// Herald disabled `webhook` (it is already saved inactive) for `reason`.
    fn webhook_disabled(&self, webhook: &Webhook, reason: &str);
    /// `delivery` failed its last attempt with `error`.
    fn delivery_exhausted(&self, delivery: &DueDelivery, webhook: &Webhook, error: &str);
}
