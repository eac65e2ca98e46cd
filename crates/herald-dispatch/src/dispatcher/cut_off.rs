//! Requests a stop cuts off before their endpoints answer (its grace ran out). Such a request
//! went, and may have arrived: it is recorded as an attempt (error `interrupted`), so that the
//! history shows what the endpoint saw, and its delivery goes again without spending a retry
//! (Herald stopped, not the endpoint): at the next start, or at once from another node. A kill
//! or a crash leaves no such record: nothing runs then to write it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use herald_core::delivery::{Attempt, AttemptError};
use herald_core::retry::NextStep;
use herald_core::store::{AttemptRecord, DueDelivery};
use herald_core::{AttemptId, DeliveryId, OrgId, Timestamp};

/// One delivery of a request that was out when its task was stopped.
pub(crate) struct CutOffDelivery {
    org_id: OrgId,
    delivery_id: DeliveryId,
    /// Attempts the delivery had before this one.
    attempts_before: u32,
    started_at: Timestamp,
}

/// What the stopped tasks left unanswered, for `Dispatcher::drain` to record, and how many
/// requests are out: once none is, after the tasks were aborted, every one cut off is here.
#[derive(Default)]
pub(crate) struct CutOffDeliveries {
    left: Mutex<Vec<CutOffDelivery>>,
    out: AtomicUsize,
}

impl CutOffDeliveries {
    /// Whether a request is still out (a task aborted but not yet dropped holds one).
    pub(crate) fn any_out(&self) -> bool {
        self.out.load(Ordering::Acquire) > 0
    }

    /// What was left unanswered so far, taken.
    pub(crate) fn take(&self) -> Vec<CutOffDelivery> {
        std::mem::take(&mut *self.left.lock().expect("cut-off lock"))
    }
}

/// Armed while a request is out. Dropped armed (its task was aborted before the endpoint
/// answered), it leaves the request's deliveries in `into`.
pub(crate) struct Sending<'a> {
    into: &'a CutOffDeliveries,
    batch: &'a [DueDelivery],
    started_at: Timestamp,
    armed: bool,
}

impl<'a> Sending<'a> {
    pub(crate) fn new(
        into: &'a CutOffDeliveries,
        batch: &'a [DueDelivery],
        started_at: Timestamp,
    ) -> Self {
        into.out.fetch_add(1, Ordering::AcqRel);
        Self {
            into,
            batch,
            started_at,
            armed: true,
        }
    }

    /// The endpoint answered (or the request ended without one): nothing to leave behind.
    pub(crate) fn ended(mut self) {
        self.armed = false;
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        // A panic is no stop: the delivery's lease brings it back, and an entry kept until the
        // node stops could be matched with a later lease of the same delivery.
        if self.armed
            && !std::thread::panicking()
            // No `expect` here: a drop while a panic unwinds must not panic again.
            && let Ok(mut left) = self.into.left.lock()
        {
            left.extend(self.batch.iter().map(|d| CutOffDelivery {
                org_id: d.org_id.clone(),
                delivery_id: d.delivery_id.clone(),
                attempts_before: d.attempt_count,
                started_at: self.started_at,
            }));
        }
        // Counted out only once its entry is in: the stop waits for none to be out.
        self.into.out.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The attempts to record for what was left unanswered, each under the lease this node held
/// it by (`leases`; one not held any more is not this node's to record).
pub(crate) fn records(
    left: Vec<CutOffDelivery>,
    leases: &[(DeliveryId, Timestamp)],
    now: Timestamp,
) -> Vec<AttemptRecord> {
    let error = AttemptError::Interrupted;
    let leases: std::collections::HashMap<&DeliveryId, Timestamp> =
        leases.iter().map(|(id, lease)| (id, *lease)).collect();
    left.into_iter()
        .filter_map(|u| {
            let lease = *leases.get(&u.delivery_id)?;
            let duration = (now.as_millis() - u.started_at.as_millis()).max(0);
            Some(AttemptRecord {
                org_id: u.org_id,
                attempt: Attempt {
                    id: AttemptId::generate(),
                    delivery_id: u.delivery_id,
                    number: u.attempts_before + 1,
                    started_at: u.started_at,
                    duration_ms: u32::try_from(duration).unwrap_or(u32::MAX),
                    status: None,
                    error: Some(error.code().to_owned()),
                    error_message: Some(error.message()),
                    response_body: String::new(),
                },
                next: NextStep::RetryAt(now),
                lease_until: Some(lease),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_core::event::Event;
    use herald_core::{OrgId, WebhookId};

    use super::*;

    fn due(attempts: u32) -> DueDelivery {
        let at = Timestamp::from_millis(1_000);
        let event = Event {
            id: "evt_1".into(),
            org_id: OrgId::generate(),
            event_type: "user.created".into(),
            occurred_at: at,
            received_at: at,
            correlation_id: None,
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        };
        let mut d = DueDelivery::new(
            DeliveryId::generate(),
            event.org_id.clone(),
            WebhookId::generate(),
            Arc::new(event),
            at,
        );
        d.attempt_count = attempts;
        d
    }

    /// A request that ended leaves nothing; one whose task was dropped while it was out
    /// leaves its deliveries, and is counted out only once they are in.
    #[test]
    fn only_a_request_dropped_while_out_is_left_to_record() {
        let unanswered = CutOffDeliveries::default();
        let batch = [due(2)];
        let started = Timestamp::from_millis(5_000);
        let answered = Sending::new(&unanswered, &batch, started);
        assert!(unanswered.any_out());
        answered.ended();
        assert!(!unanswered.any_out());
        assert!(unanswered.take().is_empty());

        let cut = Sending::new(&unanswered, &batch, started);
        drop(cut);
        assert!(!unanswered.any_out());
        let left = unanswered.take();
        assert_eq!(left.len(), 1);
        // Recorded as the third attempt, under the lease held, and only under one.
        let lease = Timestamp::from_millis(60_000);
        let now = Timestamp::from_millis(9_000);
        let held = [(batch[0].delivery_id.clone(), lease)];
        let recorded = records(left, &held, now);
        assert_eq!(recorded.len(), 1);
        let r = &recorded[0];
        assert_eq!((r.attempt.number, r.lease_until), (3, Some(lease)));
        assert_eq!(r.attempt.duration_ms, 4_000);
        assert_eq!(r.attempt.error.as_deref(), Some("interrupted"));
        let cut = Sending::new(&unanswered, &batch, started);
        drop(cut);
        assert!(
            records(unanswered.take(), &[], now).is_empty(),
            "not held here"
        );
    }
}
