//! Requests a stop cuts off before their endpoints answer (its grace ran out). Such a request
//! went, and may have arrived: it is recorded as an attempt (error `interrupted`), so that the
//! history shows what the endpoint saw, and its delivery goes again without spending a retry
//! (Herald stopped, not the endpoint): at the next start, or at once from another node. A kill
//! or a crash leaves no such record: nothing runs then to write it.

use std::sync::Mutex;

use herald_core::delivery::{Attempt, AttemptError};
use herald_core::retry::NextStep;
use herald_core::store::{AttemptRecord, DueDelivery};
use herald_core::{AttemptId, DeliveryId, OrgId, Timestamp};

/// One delivery of a request that was out when its task was stopped.
pub(crate) struct Unanswered {
    org_id: OrgId,
    delivery_id: DeliveryId,
    /// Attempts the delivery had before this one.
    attempts_before: u32,
    started_at: Timestamp,
}

/// What the stopped tasks left unanswered, for `Dispatcher::drain` to record.
pub(crate) type Unanswereds = Mutex<Vec<Unanswered>>;

/// Armed while a request is out. Dropped armed (its task was aborted before the endpoint
/// answered), it leaves the request's deliveries in `into`.
pub(crate) struct Sending<'a> {
    into: &'a Unanswereds,
    batch: &'a [DueDelivery],
    started_at: Timestamp,
    armed: bool,
}

impl<'a> Sending<'a> {
    pub(crate) fn new(
        into: &'a Unanswereds,
        batch: &'a [DueDelivery],
        started_at: Timestamp,
    ) -> Self {
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
        if !self.armed || std::thread::panicking() {
            return;
        }
        // No `expect` here: a drop while a panic unwinds must not panic again.
        if let Ok(mut left) = self.into.lock() {
            left.extend(self.batch.iter().map(|d| Unanswered {
                org_id: d.org_id.clone(),
                delivery_id: d.delivery_id.clone(),
                attempts_before: d.attempt_count,
                started_at: self.started_at,
            }));
        }
    }
}

/// The attempts to record for what was left unanswered, each under the lease this node held
/// it by (`leases`; one not held any more is not this node's to record).
pub(crate) fn records(
    left: Vec<Unanswered>,
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
