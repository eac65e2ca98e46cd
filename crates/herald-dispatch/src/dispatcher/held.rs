//! The deliveries this node holds in memory (queued or in flight), each with the end of its
//! lease and what its event weighs. The scheduler never hands out a delivery held here, and new
//! deliveries are left in the store once either budget is spent: a count, and bytes of events,
//! since a count alone would let large events take any amount of memory.

use foldhash::HashMap;
use std::collections::hash_map::Entry;

use herald_core::{DeliveryId, Timestamp};

/// How much may be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub deliveries: usize,
    pub bytes: usize,
}

struct Held {
    lease_until: Timestamp,
    bytes: usize,
}

#[derive(Default)]
pub(crate) struct HeldDeliveries {
    /// Hashed with foldhash (seeded per process), like the dispatcher's other maps: each
    /// delivery is looked up here three times, and std's SipHash cost about 230 instructions a
    /// time for an id. The ids are Herald's own, so nothing outside chooses what collides.
    by_id: HashMap<DeliveryId, Held>,
    bytes: usize,
}

impl HeldDeliveries {
    /// Holds a delivery leased until `lease_until`; `true` if it was not held yet. One held
    /// already only learns that its lease lasts longer.
    pub(crate) fn hold(&mut self, id: &DeliveryId, lease_until: Timestamp, bytes: usize) -> bool {
        match self.by_id.entry(id.clone()) {
            Entry::Vacant(e) => {
                e.insert(Held { lease_until, bytes });
                self.bytes += bytes;
                true
            }
            Entry::Occupied(mut e) => {
                let held = e.get_mut();
                held.lease_until = held.lease_until.max(lease_until);
                false
            }
        }
    }

    /// Forgets a delivery; `true` if it was held.
    pub(crate) fn release(&mut self, id: &DeliveryId) -> bool {
        match self.by_id.remove(id) {
            Some(held) => {
                self.bytes -= held.bytes;
                true
            }
            None => false,
        }
    }

    /// When the first of these deliveries' leases ends, if any of them is held.
    pub(crate) fn lease_ends<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a DeliveryId>,
    ) -> Option<Timestamp> {
        ids.into_iter()
            .filter_map(|id| self.by_id.get(id).map(|h| h.lease_until))
            .min()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many more deliveries of `typical` bytes fit in `budget` (at least one while both
    /// budgets have room, so that a single huge event still gets through).
    pub(crate) fn room(&self, budget: Budget, typical: usize) -> usize {
        if self.len() >= budget.deliveries || self.bytes >= budget.bytes {
            return 0;
        }
        let by_bytes = (budget.bytes - self.bytes) / typical.max(1);
        (budget.deliveries - self.len()).min(by_bytes.max(1))
    }
}

/// The next estimate of what an event weighs, after a batch whose largest weighed `largest`:
/// up to it at once, down towards it by a quarter of the way (claims sized by a low estimate
/// would overshoot the byte budget; by a high one, they are only smaller).
pub(crate) fn next_estimate(before: usize, largest: usize) -> usize {
    largest.max((before * 3 + largest) / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget {
        deliveries: 10,
        bytes: 1_000,
    };

    fn ids(n: usize) -> Vec<DeliveryId> {
        (0..n).map(|_| DeliveryId::generate()).collect()
    }

    #[test]
    fn large_events_spend_the_byte_budget_before_the_count() {
        let mut held = HeldDeliveries::default();
        let ids = ids(3);
        assert_eq!(
            held.room(BUDGET, 400),
            2,
            "two events of 400 bytes fit in 1,000"
        );
        assert!(held.hold(&ids[0], Timestamp::from_millis(1), 400));
        assert!(held.hold(&ids[1], Timestamp::from_millis(1), 400));
        assert_eq!(
            held.room(BUDGET, 400),
            1,
            "less than one is left: one more goes"
        );
        assert!(held.hold(&ids[2], Timestamp::from_millis(1), 400));
        assert_eq!(held.room(BUDGET, 400), 0, "1,200 bytes held: nothing more");
        assert!(held.release(&ids[0]));
        assert_eq!(held.bytes(), 800);
        assert_eq!(held.room(BUDGET, 400), 1);
    }

    #[test]
    fn the_estimate_follows_larger_events_at_once_and_smaller_ones_slowly() {
        assert_eq!(next_estimate(1_000, 4_000), 4_000);
        assert_eq!(next_estimate(4_000, 400), 3_100);
        let mut estimate = 1 << 20;
        for _ in 0..40 {
            estimate = next_estimate(estimate, 300);
        }
        assert!(estimate < 400, "{estimate}");
    }

    #[test]
    fn small_events_are_bounded_by_the_count() {
        let mut held = HeldDeliveries::default();
        for id in ids(10) {
            assert!(held.hold(&id, Timestamp::from_millis(1), 10));
        }
        assert_eq!(held.bytes(), 100);
        assert_eq!(held.room(BUDGET, 10), 0);
    }

    #[test]
    fn holding_a_delivery_again_extends_its_lease_and_counts_it_once() {
        let mut held = HeldDeliveries::default();
        let ids = ids(2);
        assert!(held.hold(&ids[0], Timestamp::from_millis(50), 100));
        assert!(!held.hold(&ids[0], Timestamp::from_millis(80), 100));
        assert!(held.hold(&ids[1], Timestamp::from_millis(70), 100));
        assert_eq!((held.len(), held.bytes()), (2, 200));
        assert_eq!(held.lease_ends(&ids), Some(Timestamp::from_millis(70)));
        assert_eq!(held.lease_ends(&ids[..1]), Some(Timestamp::from_millis(80)));
        assert!(held.release(&ids[0]));
        assert!(!held.release(&ids[0]), "released once");
        assert_eq!((held.len(), held.bytes()), (1, 100));
    }
}
