//! Leases: how long this node may hold a delivery before another node takes it over. What
//! waits in memory has its lease renewed before it ends, an attempt gets a new one when what
//! is left would cut its timeout short, and no attempt runs past the end of its lease.

use foldhash::HashMap;
use std::time::Duration;

use herald_core::store::{DueDelivery, StoreError};
use herald_core::webhook::Webhook;
use herald_core::{Timestamp, WebhookId};

use super::Dispatcher;

/// Time kept free between the end of an attempt (or of trying to store its outcome) and the
/// end of its lease: clock differences between nodes, writing the outcome.
pub(super) const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// The shortest attempt worth starting.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// How often the webhooks whose events arrive late are looked for (it reads every delivery
/// held in memory).
static LOOK_FOR_LATE: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(Duration::from_secs(10));
/// A webhook named as arriving late is not named again for this long.
const SAY_LATE_AGAIN: Duration = Duration::from_secs(300);
/// The most webhooks one look names.
const NAMED: usize = 3;

/// Part of a batch was taken over by another node before its attempt: it is not sent here.
pub(super) struct Lost;

/// Which of the late webhooks (`behind`, the most late first) to name now: those not named within
/// [`SAY_LATE_AGAIN`], at most [`NAMED`] of them; `said` remembers when each was named. One
/// webhook that stays late does not keep another that falls behind later out of the log.
fn newly_late<'a>(
    said: &mut HashMap<WebhookId, std::time::Instant>,
    behind: &'a [(WebhookId, usize, usize)],
    now: std::time::Instant,
) -> Vec<&'a (WebhookId, usize, usize)> {
    said.retain(|_, at| now.duration_since(*at) < SAY_LATE_AGAIN);
    let named: Vec<_> = behind
        .iter()
        .filter(|(webhook, ..)| !said.contains_key(webhook))
        .take(NAMED)
        .collect();
    for (webhook, ..) in &named {
        said.insert(webhook.clone(), now);
    }
    named
}

impl Dispatcher {
    /// Renews, for a whole lease from `now`, the leases of deliveries queued here that end
    /// within half a lease (up to `most` of them): a backlog to a slow endpoint can outlast the
    /// leases it was taken under, and another node would then take what this one was about to
    /// send, and say so as if this one had stopped. Those found another node's meanwhile are
    /// forgotten here. Answers how many were renewed.
    pub(crate) async fn renew_queued_leases(
        &self,
        now: Timestamp,
        most: usize,
    ) -> Result<usize, StoreError> {
        let lease = self.shared.settings.lease.as_millis() as i64;
        let soon = now.plus_millis(lease / 2);
        let leases = {
            let held = self.shared.held.lock().expect("held lock");
            held.queued_leases_ending_before(soon, most)
        };
        if leases.is_empty() {
            return Ok(0);
        }
        self.say_who_falls_behind(soon);
        let (renewed, lost) = self.renew_held(&leases, now.plus_millis(lease)).await?;
        // One whose attempt began meanwhile is that attempt's to judge: its own look at its
        // lease finds it lost and does not send it. Forgotten here under it, it went out with
        // no lease to keep within.
        let lost: Vec<_> = {
            let held = self.shared.held.lock().expect("held lock");
            lost.into_iter().filter(|id| !held.is_started(id)).collect()
        };
        if !lost.is_empty() {
            tracing::debug!(
                lost = lost.len(),
                "queued deliveries another node took over; not sending those"
            );
            self.release_held_leases(&lost);
        }
        tracing::debug!(renewed, "renewed the leases of deliveries queued here");
        Ok(renewed)
    }

    /// Names the webhooks whose deliveries have waited in this node's queue for over half a
    /// lease (their leases end before `soon`): their events arrive late, and nothing else in
    /// the log would say so while their endpoints keep answering. Not while attempts wait for
    /// the database, which is said already.
    fn say_who_falls_behind(&self, soon: Timestamp) {
        if self.attempts_paused() || LOOK_FOR_LATE.admit().is_none() {
            return;
        }
        let behind = {
            let held = self.shared.held.lock().expect("held lock");
            held.late_by_webhook(soon)
        };
        let named = {
            let mut said = self.shared.late_said.lock().expect("late lock");
            newly_late(&mut said, &behind, std::time::Instant::now())
        };
        if named.is_empty() {
            return;
        }
        let limits = self.concurrency_limits();
        let waited = self.shared.settings.lease.as_secs() / 2;
        for (webhook, late, held) in named {
            let found = limits.iter().find(|(id, _, _)| id == webhook);
            let (org, at_once) = (found.map(|(_, o, _)| o.as_str()), found.map(|(_, _, l)| *l));
            tracing::warn!(webhook = %webhook, org, late, held, requests_at_once = at_once, late_webhooks = behind.len(), "a webhook's events arrive late: {late} of its deliveries have waited in this node's queue for over {waited} s, a backlog going out more slowly than that (its endpoint answers slowly or takes few requests at once, its rate limit, or this node's --max-requests-in-flight); said at most every 5 min for each webhook, herald_webhook_oldest_pending_seconds in /metrics follows it");
        }
    }

    /// Renews these held leases in the store until `until`. Answers how many were renewed,
    /// and those lost: another node's now, or settled. Not those this node's own scheduler
    /// took again meanwhile: their held lease was then raised past the one sent, and they are
    /// this node's under that one.
    pub(super) async fn renew_held(
        &self,
        leases: &[(herald_core::DeliveryId, Timestamp)],
        until: Timestamp,
    ) -> Result<(usize, Vec<herald_core::DeliveryId>), StoreError> {
        let renewed = self.shared.store.renew_leases(leases, until).await?;
        let mut held = self.shared.held.lock().expect("held lock");
        for id in &renewed {
            held.renewed(id, until);
        }
        let lost = leases
            .iter()
            .filter(|(id, sent)| {
                !renewed.contains(id) && held.leases_of([id]).first().map(|(_, l)| l) == Some(sent)
            })
            .map(|(id, _)| id.clone())
            .collect();
        Ok((renewed.len(), lost))
    }

    /// When the first of the batch's leases ends (`None`: not held here), renewed for a whole
    /// lease from `now` when what is left would not cover an attempt with the webhook's full
    /// timeout: a backlog queued in memory can outlast the leases it was taken under, and an
    /// attempt cut to fit one would be recorded as the endpoint's timeout. `Err(Lost)` when
    /// the batch may not go: a delivery whose lease could not be renewed is another node's (or
    /// settled), and is forgotten here; the rest of such a batch is given back, due now. So is
    /// a batch with a delivery forgotten since it was taken (the renewal of queued leases found
    /// it another node's while the batch formed): read as "not held, so no lease to keep
    /// within", it was sent with the full timeout, and a node resumed after a stall sent again
    /// what the node that took its leases over had delivered.
    pub(super) async fn lease_for_attempt(
        &self,
        batch: &[DueDelivery],
        webhook: &Webhook,
        now: Timestamp,
    ) -> Result<Result<Option<Timestamp>, Lost>, StoreError> {
        let shared = &self.shared;
        let forgotten = self.not_held(batch);
        if !forgotten.is_empty() {
            return self.not_sending(batch, webhook, &forgotten, now).await;
        }
        let needed = i64::from(webhook.effective_timeout_ms()) + LEASE_MARGIN.as_millis() as i64;
        let lease = shared.settings.lease.as_millis() as i64;
        let ends = self.lease_ends(batch);
        match ends.map(|ends| ends.as_millis() - now.as_millis()) {
            // Short, and a new lease adds more than half of one: with a lease setting barely
            // above the timeout even a fresh lease is short, and renewing it would gain nothing.
            Some(left) if left < needed && lease - left > lease / 2 => {}
            _ => return Ok(Ok(ends)),
        }
        let leases = {
            let held = shared.held.lock().expect("held lock");
            held.leases_of(batch.iter().map(|d| &d.delivery_id))
        };
        let (_, mut lost) = self.renew_held(&leases, now.plus_millis(lease)).await?;
        // Forgotten while the renewal ran (found another node's by the renewal of queued
        // leases) are not sent either: with no lease left here to keep within, they went with
        // the full timeout.
        for id in self.not_held(batch) {
            if !lost.contains(&id) {
                lost.push(id);
            }
        }
        if lost.is_empty() {
            // Renewed here, or taken again by this node's own scheduler: read them afresh.
            return Ok(Ok(self.lease_ends(batch)));
        }
        self.not_sending(batch, webhook, &lost, now).await
    }

    /// The batch's deliveries this node no longer holds.
    fn not_held(&self, batch: &[DueDelivery]) -> Vec<herald_core::DeliveryId> {
        let held = self.shared.held.lock().expect("held lock");
        batch
            .iter()
            .map(|d| &d.delivery_id)
            .filter(|id| !held.holds(id))
            .cloned()
            .collect()
    }

    /// Sends none of the batch: `lost` are another node's (or settled), and forgotten here;
    /// the rest are given back, due now.
    async fn not_sending(
        &self,
        batch: &[DueDelivery],
        webhook: &Webhook,
        lost: &[herald_core::DeliveryId],
        now: Timestamp,
    ) -> Result<Result<Option<Timestamp>, Lost>, StoreError> {
        tracing::debug!(webhook = %webhook.id, lost = lost.len(), "leases taken over before an attempt; not sending those");
        self.release_held_leases(lost);
        let kept = batch
            .iter()
            .map(|d| &d.delivery_id)
            .filter(|id| !lost.contains(id));
        self.defer_held(&batch[0].org_id, kept, now).await?;
        self.wake_delivery_scheduler();
        Ok(Err(Lost))
    }

    /// The webhook's timeout, shortened if needed so that the attempt ends before the batch's
    /// lease (ending at `ends`) does, with a margin: after that, another node may take the
    /// deliveries over, and a delivery must never be attempted by two nodes at once. `None` if
    /// too little is left.
    pub(super) fn timeout_within_lease(
        ends: Option<Timestamp>,
        webhook: &Webhook,
        now: Timestamp,
    ) -> Option<Duration> {
        let wanted = Duration::from_millis(u64::from(webhook.effective_timeout_ms()));
        let Some(ends) = ends else {
            return Some(wanted);
        };
        let left = ends.as_millis() - now.as_millis() - LEASE_MARGIN.as_millis() as i64;
        let left = Duration::from_millis(u64::try_from(left).ok()?);
        (left >= MIN_ATTEMPT).then(|| wanted.min(left))
    }
}

#[cfg(test)]
mod tests {
    use foldhash::HashMapExt;

    use super::*;

    #[test]
    fn each_late_webhook_is_named_once_per_while_and_others_are_not_held_back() {
        let hooks: Vec<WebhookId> = (0..5).map(|_| WebhookId::generate()).collect();
        let late = |ids: &[usize]| -> Vec<(WebhookId, usize, usize)> {
            ids.iter().map(|&i| (hooks[i].clone(), 10, 20)).collect()
        };
        let ids = |named: Vec<&(WebhookId, usize, usize)>| -> Vec<WebhookId> {
            named.into_iter().map(|(w, ..)| w.clone()).collect()
        };
        let mut said = HashMap::new();
        let t0 = std::time::Instant::now();
        // Four late: three named, the fourth at the next look.
        let behind = late(&[0, 1, 2, 3]);
        assert_eq!(ids(newly_late(&mut said, &behind, t0)), hooks[..3]);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            ids(newly_late(&mut said, &behind, later)),
            [hooks[3].clone()]
        );
        // One that falls behind a minute later is named though the others are still late.
        let behind = late(&[0, 1, 2, 3, 4]);
        let minute = t0 + Duration::from_secs(60);
        assert_eq!(
            ids(newly_late(&mut said, &behind, minute)),
            [hooks[4].clone()]
        );
        assert!(newly_late(&mut said, &behind, minute).is_empty());
        // Once the while has passed, they are named again.
        let again = t0 + SAY_LATE_AGAIN + Duration::from_secs(1);
        assert_eq!(ids(newly_late(&mut said, &behind, again)), hooks[..3]);
    }
}
