//! Endpoint health: `410 Gone` disables a webhook at once; a webhook whose every attempt failed
//! for `disable_after`, in at least `MIN_FAILURES_TO_DISABLE` attempts, is disabled too. Either
//! way the organization hears of it through an operational event, and its pending deliveries
//! wait (parked), they are not dropped. A
//! delivery whose endpoint's circuit stays open past the end of its retry schedule fails, unsent,
//! as it would have after its last attempt.

use std::sync::Arc;
use std::time::Duration;

use herald_core::delivery::{AttemptError, AttemptOutcome, CIRCUIT_OPEN, DeliveryState};
use herald_core::store::{DueDelivery, StoreError};
use herald_core::throttle::Throttle;
use herald_core::webhook::Webhook;
use herald_core::{Timestamp, WebhookId};

use super::Dispatcher;
use super::breaker::Outage;

/// Whether a delivery put off to `until` (by an open circuit, or while its WebSub channel is
/// not verified) is to end instead, its retry schedule having run out. What is left of its
/// schedule (every delay from its next attempt's on, each with its whole tenth of jitter) runs
/// from the latest of: when it last moved on (stored, its last attempt, a resend), when its
/// webhook last changed (re-enabled, say), and, for an open circuit, when it opened (a backlog
/// queued before the endpoint went down is not held to a schedule that ran out while it
/// queued). A WebSub wait ends when the deferral would carry the delivery past that end. An
/// open circuit ends it only once the endpoint failed a request (a probe) at or after that end:
/// its last attempt, made then, would have failed too, and no request succeeded since. So a
/// delivery whose schedule ends during a cool-down is not failed for the circuit's blindness:
/// if the endpoint is back, the next probe finds it and the delivery goes; and a node whose
/// circuit is stale fails nothing.
pub(super) fn past_schedule(
    due: &DueDelivery,
    webhook: &Webhook,
    until: Timestamp,
    outage: Option<Outage>,
) -> bool {
    let moved = due.updated_at.max(webhook.updated_at);
    let from = outage.map_or(moved, |o| moved.max(o.since));
    let made = due.attempt_count.saturating_sub(due.schedule_base) as usize;
    let asked_to_wait = made > 0 && matches!(due.last_status, Some(429 | 503));
    let end = from.plus_millis(
        webhook
            .effective_retry_schedule()
            .latest_span_ms(made, asked_to_wait),
    );
    match outage {
        // Unless a request succeeded after the last failure: then the probe decides.
        Some(o) => o.last_failure >= end && o.last_success.is_none_or(|s| s < o.last_failure),
        None => until > end,
    }
}

/// Failed attempts a streak needs, as this node counted them, besides its length, before it
/// disables the webhook: a rarely used endpoint that failed once, got nothing for days and
/// failed once more has not been shown to fail all that while. Five is one delivery's whole
/// default schedule. Counted in memory, so a restart makes it count again (later, never sooner).
const MIN_FAILURES_TO_DISABLE: u32 = 5;

/// When a switched webhook's deliveries are looked at again
/// ([`Dispatcher::look_again_after_switch`]), each wait after the one before: once writes
/// racing the switch are over (an attempt lasts its timeout at most). On a shared store, a
/// disabled webhook's are looked at once more when every lease taken before the switch has
/// ended.
const LOOK_AGAIN_AFTER: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(30)];

/// Deliveries failed unsent behind an open circuit: one line per 10 s. A backlog ends a chunk
/// of up to 500 at a time, and a line for each said one webhook's 3–4 times in 2 s.
static FAILED_UNSENT: Throttle = Throttle::new(Duration::from_secs(10));

/// `HERALD_DISABLE_AFTER_HOURS` as the reason for disabling says it: `36 hours`, `5 days`.
fn in_hours_or_days(limit: std::time::Duration) -> String {
    let hours = limit.as_secs() / 3600;
    match hours {
        1 => "1 hour".to_owned(),
        h if h < 48 || h % 24 != 0 => format!("{h} hours"),
        h => format!("{} days", h / 24),
    }
}

/// A webhook's failing streak as this node last saved it: since when every attempt failed, or
/// `None` once one succeeded. The directory's copy of the webhook (`failing_since`) is read when
/// the organization is loaded and is not reloaded when the streak changes, so this one is newer,
/// as long as it was noted for the same version of the webhook (`updated_at`): after a user
/// changes the webhook (re-enabling it clears its streak), the directory's fresh copy is right.
#[derive(Debug, Clone, Copy)]
pub(super) struct Streak {
    since: Option<Timestamp>,
    version: Timestamp,
    /// Failed attempts of the streak this node has seen.
    failures: u32,
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
        if matches!(outcome.error, Some(AttemptError::CutShort)) {
            // Given up because this node was full of slow requests, not failed by the endpoint
            // within its timeout: neither a failure of its streak (which disables it, for good
            // until someone enables it) nor an answer that ends one.
            return Ok(());
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
        let failures = self.count_failure(webhook, since);
        let limit = shared.settings.disable_after;
        let long_enough =
            |since: Timestamp| now.as_millis() - since.as_millis() >= limit.as_millis() as i64;
        if !long_enough(since) || failures < MIN_FAILURES_TO_DISABLE {
            return Ok(());
        }
        // This node's memory of the streak may be stale: another node's success since (with
        // several nodes) cleared it in the store. The store's answer decides.
        let since = match known {
            Some(_) => self.note_failure(webhook, now).await?,
            None => since,
        };
        if long_enough(since) {
            return self
                .disable(
                    webhook,
                    format!(
                        "every attempt failed since {} ({} or more; {failures} attempts)",
                        since.to_rfc3339(),
                        in_hours_or_days(limit)
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

    /// Notes since when the webhook has been failing (`None`: it is not), keeping the count of
    /// failures this node saw while the streak is the same one.
    fn note_streak(&self, webhook: &Webhook, since: Option<Timestamp>) {
        let mut failing = self.shared.failing.lock().expect("failing lock");
        let failures = match failing.get(&webhook.id) {
            // The same streak: the store still says it began then.
            Some(s) if s.version == webhook.updated_at && since.is_some() && s.since == since => {
                s.failures
            }
            _ => 0,
        };
        failing.insert(
            webhook.id.clone(),
            Streak {
                since,
                version: webhook.updated_at,
                failures,
            },
        );
    }

    /// Counts one more failed attempt in the streak running `since`; answers how many this
    /// node has seen.
    fn count_failure(&self, webhook: &Webhook, since: Timestamp) -> u32 {
        let mut failing = self.shared.failing.lock().expect("failing lock");
        let streak = failing.entry(webhook.id.clone()).or_insert(Streak {
            since: Some(since),
            version: webhook.updated_at,
            failures: 0,
        });
        if streak.version != webhook.updated_at || streak.since != Some(since) {
            *streak = Streak {
                since: Some(since),
                version: webhook.updated_at,
                failures: 0,
            };
        }
        streak.failures += 1;
        streak.failures
    }

    fn forget_streak(&self, webhook: &Webhook) {
        self.shared
            .failing
            .lock()
            .expect("failing lock")
            .remove(&webhook.id);
    }

    /// Looks again, a little later, for what writes that raced the webhook's switch to `active`
    /// left behind, which nothing would ever claim: deliveries parked after it was enabled (an
    /// attempt's outcome committed with the change, an ingest on a node that had not heard of
    /// it), or left due after it was disabled, by a user or by its endpoint's failures (an
    /// ingest, a deferral by an open circuit; a probe of two nodes under churn found such ones
    /// after every pause, passed over by every look of the scheduler), or leased by a node
    /// that stopped before it gave them back (parked once its lease ended, on a shared store).
    /// Each look does nothing once the webhook was switched back.
    pub fn look_again_after_switch(&self, webhook: &WebhookId, active: bool) {
        let (store, id) = (self.shared.store.clone(), webhook.clone());
        let clock = self.shared.clock.clone();
        let (did, switched) = if active {
            ("put back on schedule deliveries parked", "enabled")
        } else {
            ("parked deliveries left due", "disabled")
        };
        // Only where a node that stopped leaves leases behind: SQLite's one process gives its
        // own back at its next start, and a look there walks every webhook's backlog.
        let leases_ended =
            (!active && self.shared.store.is_shared()).then_some(self.shared.settings.lease);
        tokio::spawn(async move {
            for wait in LOOK_AGAIN_AFTER.into_iter().chain(leases_ended) {
                tokio::time::sleep(wait).await;
                let looked = if active {
                    store.unpark_active(&id).await
                } else {
                    store.park_inactive(&id, clock.now()).await
                };
                match looked {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(webhook = %id, deliveries = n, "{did} while the webhook was being {switched}")
                    }
                    Err(e) => {
                        tracing::warn!(webhook = %id, error = %herald_core::error_chain(&e), "could not look for deliveries the webhook's being {switched} left behind")
                    }
                }
            }
        });
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
        self.look_again_after_switch(&webhook.id, false);
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

    /// Fails these held deliveries unsent, their endpoint's circuit being open past the end of
    /// their retry schedules ([`past_schedule`]), and tells the organization of each.
    pub(super) async fn fail_past_schedule(&self, webhook: &Webhook, ended: &[&DueDelivery]) {
        let Some(first) = ended.first() else {
            return;
        };
        let shared = &self.shared;
        let leases = self.release_held_leases(ended.iter().map(|d| &d.delivery_id));
        if leases.is_empty() {
            return;
        }
        let failed = match shared
            .store
            .end_unsent(
                &first.org_id,
                &leases,
                DeliveryState::Failed,
                CIRCUIT_OPEN,
                shared.clock.now(),
            )
            .await
        {
            Ok(failed) => failed,
            Err(e) => {
                tracing::error!(webhook = %webhook.id, error = %herald_core::error_chain(&e), "could not fail deliveries past their retry schedule; they come back when their leases end");
                return;
            }
        };
        if failed.is_empty() {
            return;
        }
        shared.metrics.exhausted.add(failed.len() as u64);
        let said_later = |held: u64| {
            tracing::warn!(
                deliveries = held,
                "more deliveries failed unsent in the last 10 s, their endpoints' circuits open past their retry schedules (each is in its webhook's history; herald_deliveries_exhausted_total counts them)"
            );
        };
        if let Some(held_back) = FAILED_UNSENT.admit_or_later(failed.len() as u64, said_later) {
            tracing::warn!(webhook = %webhook.id, org = %webhook.org_id, deliveries = failed.len(), held_back, "deliveries failed unsent: the endpoint's circuit stayed open past their retry schedule (said once per 10 s; held_back counts the deliveries since)");
        }
        let failed: foldhash::HashSet<_> = failed.into_iter().collect();
        for due in ended.iter().filter(|d| failed.contains(&d.delivery_id)) {
            self.report_exhausted(
                due,
                webhook,
                due.attempt_count,
                "no further attempt: the endpoint's last requests failed, and its circuit stayed open past the delivery's retry schedule",
            );
        }
    }

    /// Tells the organization a delivery failed for good after `attempts` (not for operational
    /// events themselves, so that a failing endpoint cannot feed itself forever).
    pub(super) fn report_exhausted(
        &self,
        due: &DueDelivery,
        webhook: &Webhook,
        attempts: u32,
        error: &str,
    ) {
        if herald_core::event_type::is_operational(&due.event.event_type) {
            return;
        }
        if let Some(ops) = self.shared.operations.get() {
            ops.delivery_exhausted(due, webhook, attempts, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::in_hours_or_days;
    use std::time::Duration;

    #[test]
    fn the_disabling_threshold_reads_in_hours_or_whole_days() {
        let hours = |h: u64| in_hours_or_days(Duration::from_secs(h * 3600));
        assert_eq!(hours(1), "1 hour");
        assert_eq!(hours(36), "36 hours");
        assert_eq!(hours(120), "5 days");
        assert_eq!(hours(50), "50 hours");
    }
}
