//! The deliveries this node holds in memory (queued or in flight), each with the end of its
//! lease and what its event weighs. The scheduler never hands out a delivery held here, and new
//! deliveries are left in the store once either budget is spent: a count, and bytes of events,
//! since a count alone would let large events take any amount of memory.
//!
//! The budget is shared fairly between webhooks. While one webhook alone has work, it may take
//! all of it; once several have, each is owed an equal share, so that an endpoint that answers
//! slowly (but in time) cannot keep the others' deliveries waiting in the store (SPEC 5). A
//! webhook past its share has its new deliveries *spilled*: stored unleased, to be pulled back
//! by id when it has room again; and when a webhook within its share needs room that others
//! hold, the newest deliveries they have not started are *evicted* (spilled in turn).

use foldhash::HashMap;

use herald_core::{DeliveryId, Timestamp, WebhookId};

/// How much may be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub deliveries: usize,
    pub bytes: usize,
}

impl Budget {
    /// What eviction keeps free once several webhooks compete: a sixteenth of the budget,
    /// between 1 and 1,000 deliveries, so that a webhook within its share rarely waits for an
    /// eviction.
    pub(crate) fn headroom(self) -> Budget {
        Budget {
            deliveries: (self.deliveries / 16).clamp(1, 1_000),
            bytes: self.bytes / 16,
        }
    }

    fn divided(self, parts: usize) -> Budget {
        let parts = parts.max(1);
        Budget {
            deliveries: self.deliveries / parts,
            bytes: self.bytes / parts,
        }
    }
}

struct Held {
    lease_until: Timestamp,
    /// Which hold this is: a delivery evicted and pulled back is queued again while its first
    /// copy may still wait in its webhook's queue, and only the copy of the current hold runs.
    hold: u64,
    bytes: usize,
    /// Which entry of `loads` (its webhook's).
    load: usize,
    /// Taken by its webhook's task for an attempt: it may no longer be evicted.
    started: bool,
}

/// What one webhook holds, and where its spilled deliveries start.
struct Load {
    webhook: WebhookId,
    count: usize,
    bytes: usize,
    spilled: Option<Spill>,
}

impl Load {
    fn active(&self) -> bool {
        self.count > 0 || self.spilled.is_some()
    }
}

/// Where a webhook's spilled deliveries begin, as far as this node knows. Delivery ids grow
/// with time, so its deliveries spilled since are all at `from` or after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spill {
    pub from: DeliveryId,
    /// Counts the spills noted, so that a pull that found nothing more can tell whether some
    /// were noted meanwhile (and must not forget them).
    pub notes: u64,
}

/// A pull the scheduler may make now: up to `limit` of `webhook`'s spilled deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pull {
    pub webhook: WebhookId,
    pub spill: Spill,
    pub limit: usize,
}

/// Below this capacity the map of held deliveries is left as it is (a few hundred KiB at most).
const SPARSE_FROM: usize = 4096;

#[derive(Default)]
pub(crate) struct HeldDeliveries {
    /// Hashed with foldhash (seeded per process), like the dispatcher's other maps: each
    /// delivery is looked up here three times, and std's SipHash cost about 230 instructions a
    /// time for an id. The ids are Herald's own, so nothing outside chooses what collides.
    by_id: HashMap<DeliveryId, Held>,
    /// Each webhook that has held a delivery on this node, by its entry in `loads` (kept once
    /// made: a webhook that had work is likely to have more, and an entry is small).
    load_index: HashMap<WebhookId, usize>,
    loads: Vec<Load>,
    /// Webhooks that hold deliveries or have spilled ones: those the budget is shared between.
    active: usize,
    bytes: usize,
    /// Numbers the holds.
    holds: u64,
}

impl HeldDeliveries {
    /// Holds a delivery leased until `lease_until`; the hold's number if it was not held yet
    /// (its copy in the webhook's queue carries it). One held already only learns that its
    /// lease lasts longer.
    pub(crate) fn hold(
        &mut self,
        id: &DeliveryId,
        webhook: &WebhookId,
        lease_until: Timestamp,
        bytes: usize,
    ) -> Option<u64> {
        if let Some(held) = self.by_id.get_mut(id) {
            held.lease_until = held.lease_until.max(lease_until);
            return None;
        }
        let load = self.load_entry(webhook);
        self.holds += 1;
        self.by_id.insert(
            id.clone(),
            Held {
                lease_until,
                hold: self.holds,
                bytes,
                load,
                started: false,
            },
        );
        let entry = &mut self.loads[load];
        if !entry.active() {
            self.active += 1;
        }
        entry.count += 1;
        entry.bytes += bytes;
        self.bytes += bytes;
        Some(self.holds)
    }

    /// Whether the delivery is held and queued, not yet started.
    pub(crate) fn is_queued(&self, id: &DeliveryId) -> bool {
        self.by_id.get(id).is_some_and(|h| !h.started)
    }

    /// Holds a delivery to be queued urgent (a resend): as [`Self::hold`], except that one held
    /// already but not started is numbered anew, so that the copy queued urgent now is the one
    /// attempted and the copy waiting in the regular queue is dropped when it comes up. A
    /// delivery queued behind a slow endpoint's backlog for longer than its lease can be resent
    /// (its lease ran out in the store), and must then go ahead of that backlog as promised.
    pub(crate) fn hold_urgent(
        &mut self,
        id: &DeliveryId,
        webhook: &WebhookId,
        lease_until: Timestamp,
        bytes: usize,
    ) -> Option<u64> {
        match self.by_id.get_mut(id) {
            Some(held) if !held.started => {
                self.holds += 1;
                held.hold = self.holds;
                held.lease_until = held.lease_until.max(lease_until);
                Some(self.holds)
            }
            _ => self.hold(id, webhook, lease_until, bytes),
        }
    }

    fn load_entry(&mut self, webhook: &WebhookId) -> usize {
        // Looked up before inserting: an entry would need an owned id, cloned on every hold.
        if let Some(&i) = self.load_index.get(webhook) {
            return i;
        }
        self.loads.push(Load {
            webhook: webhook.clone(),
            count: 0,
            bytes: 0,
            spilled: None,
        });
        self.load_index
            .insert(webhook.clone(), self.loads.len() - 1);
        self.loads.len() - 1
    }

    /// Forgets a delivery: `None` if it was not held, else whether its webhook has spilled
    /// deliveries and now holds few enough to pull them (the scheduler should be woken), and
    /// the lease it was held under.
    pub(crate) fn release(&mut self, id: &DeliveryId, budget: Budget) -> Option<(bool, Timestamp)> {
        let held = self.by_id.remove(id)?;
        self.forget(&held);
        self.shrink_if_sparse();
        let load = &self.loads[held.load];
        Some((
            load.spilled.is_some() && self.may_pull(load, budget),
            held.lease_until,
        ))
    }

    /// Gives back the map's room once a backlog has gone: a map keeps the capacity of its
    /// largest size, 64 bytes an entry (8 MiB for the 100,000 a node holds by default). Only
    /// when it is an eighth full, to half, so that a steady flow does not grow and shrink it by
    /// turns.
    fn shrink_if_sparse(&mut self) {
        let capacity = self.by_id.capacity();
        if capacity > SPARSE_FROM && self.by_id.len() < capacity / 8 {
            self.by_id.shrink_to(self.by_id.len() * 2);
        }
    }

    fn forget(&mut self, held: &Held) {
        self.bytes -= held.bytes;
        let load = &mut self.loads[held.load];
        load.count -= 1;
        load.bytes -= held.bytes;
        if !load.active() {
            self.active -= 1;
        }
    }

    /// Whether a queued copy of hold `hold` may still be attempted: it is that delivery's
    /// current hold, not started yet. A copy left behind by an eviction is not.
    pub(crate) fn is_current(&self, id: &DeliveryId, hold: u64) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|h| h.hold == hold && !h.started)
    }

    /// Marks the copy of hold `hold` as taken for an attempt; `false` if it is not current
    /// (see [`Self::is_current`]): it must then be dropped.
    pub(crate) fn start(&mut self, id: &DeliveryId, hold: u64) -> bool {
        match self.by_id.get_mut(id) {
            Some(held) if held.hold == hold && !held.started => {
                held.started = true;
                true
            }
            _ => false,
        }
    }

    /// Whether the delivery is held here.
    pub(crate) fn holds(&self, id: &DeliveryId) -> bool {
        self.by_id.contains_key(id)
    }

    /// Whether the delivery is held here and its attempt has begun.
    pub(crate) fn is_started(&self, id: &DeliveryId) -> bool {
        self.by_id.get(id).is_some_and(|h| h.started)
    }

    /// The leases these deliveries are held under (those held).
    pub(crate) fn leases_of<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a DeliveryId>,
    ) -> Vec<(DeliveryId, Timestamp)> {
        ids.into_iter()
            .filter_map(|id| Some((id.clone(), self.by_id.get(id)?.lease_until)))
            .collect()
    }

    /// Every held delivery with the lease it is held under.
    pub(crate) fn all_leases(&self) -> Vec<(DeliveryId, Timestamp)> {
        self.by_id
            .iter()
            .map(|(id, h)| (id.clone(), h.lease_until))
            .collect()
    }

    /// Up to `most` queued deliveries (not started) whose leases end before `soon`, with
    /// those leases.
    pub(crate) fn queued_leases_ending_before(
        &self,
        soon: Timestamp,
        most: usize,
    ) -> Vec<(DeliveryId, Timestamp)> {
        self.by_id
            .iter()
            .filter(|(_, h)| !h.started && h.lease_until < soon)
            .take(most)
            .map(|(id, h)| (id.clone(), h.lease_until))
            .collect()
    }

    /// Each webhook with deliveries queued here (not started) whose leases end before `soon`:
    /// how many, and how many it has held here in all, the most late first.
    pub(crate) fn late_by_webhook(&self, soon: Timestamp) -> Vec<(WebhookId, usize, usize)> {
        let mut late = vec![0; self.loads.len()];
        for held in self.by_id.values() {
            if !held.started && held.lease_until < soon {
                late[held.load] += 1;
            }
        }
        let mut late: Vec<_> = late
            .into_iter()
            .enumerate()
            .filter(|&(_, n)| n > 0)
            .map(|(load, n)| (self.loads[load].webhook.clone(), n, self.loads[load].count))
            .collect();
        late.sort_unstable_by_key(|l| std::cmp::Reverse(l.1));
        late
    }

    /// Notes that a held delivery's lease was renewed in the store until `until`.
    pub(crate) fn renewed(&mut self, id: &DeliveryId, until: Timestamp) {
        if let Some(held) = self.by_id.get_mut(id) {
            held.lease_until = until;
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

    /// How many more deliveries the scheduler may claim from the due order: the room, less the
    /// headroom kept for webhooks within their share once several have work (claims would
    /// otherwise refill it with whatever is due first, often the backlog of the webhook that
    /// just had to give room back).
    pub(crate) fn claim_room(&self, budget: Budget, typical: usize) -> usize {
        if self.active < 2 {
            return self.room(budget, typical);
        }
        let spare = budget.headroom();
        let less = Budget {
            deliveries: budget.deliveries.saturating_sub(spare.deliveries),
            bytes: budget.bytes.saturating_sub(spare.bytes),
        };
        self.room(less, typical)
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

    /// What and how much `webhook` holds.
    pub(crate) fn load_of(&self, webhook: &WebhookId) -> Budget {
        match self.load_index.get(webhook) {
            Some(&i) => Budget {
                deliveries: self.loads[i].count,
                bytes: self.loads[i].bytes,
            },
            None => Budget {
                deliveries: 0,
                bytes: 0,
            },
        }
    }

    /// The share of `budget` owed to `webhook`: an equal part for each webhook with work,
    /// counting this one.
    pub(crate) fn share_of(&self, webhook: &WebhookId, budget: Budget) -> Budget {
        let active = self
            .load_index
            .get(webhook)
            .is_some_and(|&i| self.loads[i].active());
        budget.divided(self.active + usize::from(!active))
    }

    /// Whether a new delivery may be held for a webhook owed `share`, when `load` is what it
    /// holds (with what this request already placed) and `total` what everyone does: while the
    /// budget has room to spare, or while the webhook is within its share. In the second case
    /// the budget may be overrun until [`Self::evict`] runs.
    pub(crate) fn admits(
        &self,
        load: Budget,
        share: Budget,
        total: Budget,
        budget: Budget,
    ) -> bool {
        if load.deliveries < share.deliveries && load.bytes < share.bytes {
            return true;
        }
        // Past its share, a webhook takes only what is free, less the headroom kept for others.
        let keep = if self.active > 1 {
            budget.headroom()
        } else {
            Budget {
                deliveries: 0,
                bytes: 0,
            }
        };
        total.deliveries + keep.deliveries < budget.deliveries
            && total.bytes + keep.bytes < budget.bytes
    }

    /// Takes back, from webhooks holding more than their share, the newest deliveries they
    /// have not started: down to the budget less its headroom when the budget was overrun, or
    /// less twice that when no room is left for a claim and `needy` (a webhook within its
    /// share, with work in the store) needs some. Returns what was evicted, by webhook, with
    /// the leases: the caller gives it back to the store and notes the spills.
    pub(crate) fn evict(
        &mut self,
        budget: Budget,
        needy: Option<&WebhookId>,
        now: Timestamp,
    ) -> Vec<(WebhookId, Vec<(DeliveryId, Timestamp)>)> {
        let spare = budget.headroom();
        let over = self.len() > budget.deliveries || self.bytes > budget.bytes;
        // No room left for a claim (see `claim_room`).
        let full = self.len() + spare.deliveries >= budget.deliveries
            || self.bytes + spare.bytes >= budget.bytes;
        // A needy webhook with nothing held or spilled yet is owed a share all the same.
        let newcomer = needy.is_some_and(|w| {
            !self
                .load_index
                .get(w)
                .is_some_and(|&i| self.loads[i].active())
        });
        let parts = self.active + usize::from(newcomer);
        if !(over || (needy.is_some() && full)) || parts < 2 {
            return Vec::new();
        }
        let share = budget.divided(parts);
        // Down to the headroom; for a needy webhook, with as much again for it to take.
        let keep = if needy.is_some() { 2 } else { 1 };
        let target = Budget {
            deliveries: budget.deliveries.saturating_sub(keep * spare.deliveries),
            bytes: budget.bytes.saturating_sub(keep * spare.bytes),
        };
        let mut evicted = Vec::new();
        // Each webhook once at most, the one furthest past its share first.
        let mut tried = Vec::new();
        loop {
            let need_count = self.len().saturating_sub(target.deliveries);
            let need_bytes = self.bytes.saturating_sub(target.bytes);
            if need_count == 0 && need_bytes == 0 {
                break;
            }
            let Some(victim) = self
                .loads
                .iter()
                .enumerate()
                .filter(|(i, l)| {
                    (l.count > share.deliveries || l.bytes > share.bytes) && !tried.contains(i)
                })
                .max_by_key(|(_, l)| l.count.saturating_sub(share.deliveries))
                .map(|(i, _)| i)
            else {
                break;
            };
            tried.push(victim);
            let ids = self.evict_from(victim, share, need_count, need_bytes, now);
            if !ids.is_empty() {
                evicted.push((self.loads[victim].webhook.clone(), ids));
            }
        }
        evicted
    }

    /// Evicts `load`'s newest unstarted deliveries until `count` and `bytes` are freed or it is
    /// down to its share; with each, the lease this node took on it. Those whose lease has
    /// ended are left alone: another node may have leased them since. Scans every held
    /// delivery, so it runs only when the budget is overrun or a webhook is owed room.
    fn evict_from(
        &mut self,
        load: usize,
        share: Budget,
        count: usize,
        bytes: usize,
        now: Timestamp,
    ) -> Vec<(DeliveryId, Timestamp)> {
        let mut queued: Vec<(&DeliveryId, usize, Timestamp)> = self
            .by_id
            .iter()
            .filter(|(_, h)| h.load == load && !h.started && h.lease_until > now)
            .map(|(id, h)| (id, h.bytes, h.lease_until))
            .collect();
        queued.sort_unstable_by(|a, b| b.0.cmp(a.0));
        let l = &self.loads[load];
        let (mut left_count, mut left_bytes) = (l.count, l.bytes);
        let (mut freed_count, mut freed_bytes) = (0, 0);
        let mut chosen = Vec::new();
        for (id, size, lease_until) in queued {
            let enough = freed_count >= count && freed_bytes >= bytes;
            let within = left_count <= share.deliveries && left_bytes <= share.bytes;
            if enough || within {
                break;
            }
            chosen.push((id.clone(), lease_until));
            freed_count += 1;
            freed_bytes += size;
            left_count -= 1;
            left_bytes -= size;
        }
        for (id, _) in &chosen {
            if let Some(held) = self.by_id.remove(id) {
                self.forget(&held);
            }
        }
        chosen
    }

    /// Notes that `webhook`'s delivery `id` waits in the store, spilled.
    pub(crate) fn note_spilled(&mut self, webhook: &WebhookId, id: &DeliveryId) {
        let i = self.load_entry(webhook);
        let load = &mut self.loads[i];
        match &mut load.spilled {
            Some(spill) => {
                if *id < spill.from {
                    spill.from = id.clone();
                }
                spill.notes += 1;
            }
            None => {
                if !load.active() {
                    self.active += 1;
                }
                self.loads[i].spilled = Some(Spill {
                    from: id.clone(),
                    notes: 1,
                });
            }
        }
    }

    /// A webhook pulls its spilled deliveries once it holds less than half its share (or
    /// nothing, when more webhooks have work than the budget has deliveries).
    fn may_pull(&self, load: &Load, budget: Budget) -> bool {
        let share = budget.divided(self.active);
        load.count < share.deliveries.max(1).div_ceil(2)
            && load.bytes < share.bytes.max(1).div_ceil(2)
    }

    /// The pulls to make now, within `room` (deliveries of the typical size that still fit).
    pub(crate) fn pulls(&self, budget: Budget, room: usize) -> Vec<Pull> {
        let share = budget.divided(self.active);
        let mut room = room;
        let mut pulls = Vec::new();
        for load in &self.loads {
            let Some(spill) = &load.spilled else { continue };
            if room == 0 {
                break;
            }
            if !self.may_pull(load, budget) {
                continue;
            }
            let limit = share.deliveries.saturating_sub(load.count).min(room).max(1);
            room = room.saturating_sub(limit);
            pulls.push(Pull {
                webhook: load.webhook.clone(),
                spill: spill.clone(),
                limit,
            });
        }
        pulls
    }

    /// A webhook with spilled deliveries that may pull them but finds no room, if any.
    pub(crate) fn blocked_pull(&self, budget: Budget, room: usize) -> Option<WebhookId> {
        if room > 0 {
            return None;
        }
        self.loads
            .iter()
            .find(|l| l.spilled.is_some() && self.may_pull(l, budget))
            .map(|l| l.webhook.clone())
    }

    /// Where `webhook`'s spilled deliveries to pull begin, if it has any.
    pub(crate) fn spilled_from(&self, webhook: &WebhookId) -> Option<DeliveryId> {
        let &i = self.load_index.get(webhook)?;
        self.loads[i].spilled.as_ref().map(|s| s.from.clone())
    }

    /// Whether any webhook has spilled deliveries.
    pub(crate) fn any_spilled(&self) -> bool {
        self.loads.iter().any(|l| l.spilled.is_some())
    }

    /// Records a pull of `pull.spill`: it went up to `last`; `exhausted` if it found fewer than
    /// it asked for. The spill is forgotten when nothing more was found and none was noted
    /// meanwhile; otherwise the next pull starts from `last`, or where it started if spills
    /// were noted meanwhile.
    pub(crate) fn pulled(&mut self, pull: &Pull, last: Option<&DeliveryId>, exhausted: bool) {
        let Some(&i) = self.load_index.get(&pull.webhook) else {
            return;
        };
        let load = &mut self.loads[i];
        let Some(spill) = &mut load.spilled else {
            return;
        };
        let untouched = spill.notes == pull.spill.notes;
        if exhausted && untouched {
            load.spilled = None;
            if !load.active() {
                self.active -= 1;
            }
            return;
        }
        // Only when no spill was noted meanwhile: one noted during the pull may lie before
        // `last` without the pull having seen it.
        if let Some(last) = last
            && untouched
            && *last > spill.from
        {
            spill.from = last.clone();
        }
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
    /// When the tests' leases end, and a time before that.
    const T: Timestamp = Timestamp::from_millis(1_000);
    const T0: Timestamp = Timestamp::from_millis(0);

    fn ids(n: usize) -> Vec<DeliveryId> {
        (0..n).map(|_| DeliveryId::generate()).collect()
    }

    fn hook() -> WebhookId {
        WebhookId::generate()
    }

    #[test]
    fn the_map_gives_its_room_back_once_a_backlog_has_gone() {
        let (mut held, wh) = (HeldDeliveries::default(), hook());
        let backlog = ids(50_000);
        for id in &backlog {
            held.hold(id, &wh, T, 10);
        }
        let full = held.by_id.capacity();
        assert!(full >= 50_000, "{full}");
        // Draining to a fifth leaves its room (a shrink would leave twice what is held): a flow
        // that comes and goes does not shrink and grow it by turns.
        for id in &backlog[..40_000] {
            held.release(id, BUDGET);
        }
        assert!(held.by_id.capacity() > 30_000, "{}", held.by_id.capacity());
        for id in &backlog[40_000..49_990] {
            held.release(id, BUDGET);
        }
        assert!(
            held.by_id.capacity() <= SPARSE_FROM,
            "{}",
            held.by_id.capacity()
        );
        // What is left is still held.
        for id in &backlog[49_990..] {
            assert_eq!(held.release(id, BUDGET).map(|(_, lease)| lease), Some(T));
        }
    }

    #[test]
    fn large_events_spend_the_byte_budget_before_the_count() {
        let mut held = HeldDeliveries::default();
        let (ids, w) = (ids(3), hook());
        assert_eq!(
            held.room(BUDGET, 400),
            2,
            "two events of 400 bytes fit in 1,000"
        );
        assert!(held.hold(&ids[0], &w, T, 400).is_some());
        assert!(held.hold(&ids[1], &w, T, 400).is_some());
        assert_eq!(
            held.room(BUDGET, 400),
            1,
            "less than one is left: one more goes"
        );
        assert!(held.hold(&ids[2], &w, T, 400).is_some());
        assert_eq!(held.room(BUDGET, 400), 0, "1,200 bytes held: nothing more");
        assert_eq!(
            held.release(&ids[0], BUDGET).map(|(pull, _)| pull),
            Some(false)
        );
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
        let w = hook();
        for id in ids(10) {
            assert!(held.hold(&id, &w, T, 10).is_some());
        }
        assert_eq!(held.bytes(), 100);
        assert_eq!(held.room(BUDGET, 10), 0);
    }

    #[test]
    fn holding_a_delivery_again_extends_its_lease_and_counts_it_once() {
        let mut held = HeldDeliveries::default();
        let (ids, w) = (ids(2), hook());
        assert!(
            held.hold(&ids[0], &w, Timestamp::from_millis(50), 100)
                .is_some()
        );
        assert!(
            held.hold(&ids[0], &w, Timestamp::from_millis(80), 100)
                .is_none()
        );
        assert!(
            held.hold(&ids[1], &w, Timestamp::from_millis(70), 100)
                .is_some()
        );
        assert_eq!((held.len(), held.bytes()), (2, 200));
        assert_eq!(held.lease_ends(&ids), Some(Timestamp::from_millis(70)));
        assert_eq!(held.lease_ends(&ids[..1]), Some(Timestamp::from_millis(80)));
        assert!(held.release(&ids[0], BUDGET).is_some());
        assert!(held.release(&ids[0], BUDGET).is_none(), "released once");
        assert_eq!((held.len(), held.bytes()), (1, 100));
    }

    #[test]
    fn webhooks_whose_queued_deliveries_wait_long_are_named_the_most_late_first() {
        let mut held = HeldDeliveries::default();
        let ids = ids(6);
        let (slow, quick) = (hook(), WebhookId::from_trusted("wh_quick".into()));
        let at = Timestamp::from_millis;
        for (id, lease) in ids[..3].iter().zip([10, 20, 90]) {
            held.hold(id, &slow, at(lease), 1);
        }
        held.hold(&ids[3], &quick, at(15), 1);
        held.hold(&ids[4], &quick, at(95), 1);
        // One of the slow webhook's is under way: not waiting in the queue any more.
        let hold = held.hold(&ids[5], &slow, at(5), 1).unwrap();
        assert!(held.start(&ids[5], hold));
        assert_eq!(
            held.late_by_webhook(at(50)),
            [(slow.clone(), 2, 4), (quick, 1, 2)]
        );
        assert!(held.late_by_webhook(at(5)).is_empty());
    }

    fn admits(held: &HeldDeliveries, w: &WebhookId) -> bool {
        let total = Budget {
            deliveries: held.len(),
            bytes: held.bytes(),
        };
        held.admits(held.load_of(w), held.share_of(w, BUDGET), total, BUDGET)
    }

    #[test]
    fn a_webhook_alone_may_take_the_whole_budget_but_not_another_ones_share() {
        let mut held = HeldDeliveries::default();
        let (slow, other) = (hook(), hook());
        for id in ids(10) {
            assert!(admits(&held, &slow));
            held.hold(&id, &slow, T, 10);
        }
        assert!(!admits(&held, &slow), "the budget is spent");
        assert!(admits(&held, &other), "the other is owed half of it");
        held.hold(&DeliveryId::generate(), &other, T, 10);
        assert_eq!(held.len(), 11, "overrun until eviction");

        let evicted = held.evict(BUDGET, None, T0);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].0, slow);
        assert_eq!(
            evicted[0].1.len(),
            2,
            "back within the budget, and one spare"
        );
        assert_eq!(held.len(), 9);
        assert!(
            !admits(&held, &slow),
            "past its share, it leaves the rest alone"
        );
    }

    #[test]
    fn a_delivery_resent_while_queued_is_attempted_from_its_urgent_copy() {
        let mut held = HeldDeliveries::default();
        let w = hook();
        let [queued, in_flight, new]: [DeliveryId; 3] = ids(3).try_into().unwrap();
        let regular = held.hold(&queued, &w, T0, 10).unwrap();
        let started = held.hold(&in_flight, &w, T0, 10).unwrap();
        assert!(held.start(&in_flight, started));

        assert!(held.is_queued(&queued) && !held.is_queued(&in_flight));
        let urgent = held.hold_urgent(&queued, &w, T, 10).unwrap();
        assert!(!held.start(&queued, regular), "the regular copy is dropped");
        assert!(held.start(&queued, urgent));
        assert_eq!(held.leases_of([&queued]), vec![(queued.clone(), T)]);
        assert_eq!(held.len(), 2, "held once");
        assert_eq!(
            held.hold_urgent(&in_flight, &w, T, 10),
            None,
            "one under way is not queued again"
        );
        assert!(held.hold_urgent(&new, &w, T, 10).is_some());
    }

    #[test]
    fn eviction_takes_the_newest_deliveries_not_yet_started() {
        let mut held = HeldDeliveries::default();
        let (slow, other) = (hook(), hook());
        let slow_ids = ids(10);
        let holds: Vec<u64> = slow_ids
            .iter()
            .map(|id| held.hold(id, &slow, T, 10).unwrap())
            .collect();
        assert!(
            held.start(&slow_ids[9], holds[9]),
            "the newest is in flight"
        );
        held.hold(&DeliveryId::generate(), &other, T, 10);
        held.hold(&DeliveryId::generate(), &other, T, 10);

        let evicted = held.evict(BUDGET, None, T0);
        let expected: Vec<_> = slow_ids[6..9]
            .iter()
            .rev()
            .map(|id| (id.clone(), T))
            .collect();
        assert_eq!(evicted[0].1, expected, "with the lease this node took");
        assert!(
            !held.start(&slow_ids[8], holds[8]),
            "an evicted delivery is not started"
        );
        assert!(held.start(&slow_ids[0], holds[0]));

        // Pulled back, it is queued again beside the stale copy: only the new copy starts,
        // even when the stale one comes first.
        let again = held.hold(&slow_ids[8], &slow, T, 10).unwrap();
        assert!(!held.is_current(&slow_ids[8], holds[8]));
        assert!(
            !held.start(&slow_ids[8], holds[8]),
            "the stale copy is dropped"
        );
        assert!(held.is_current(&slow_ids[8], again));
        assert!(held.start(&slow_ids[8], again));
        assert!(!held.start(&slow_ids[8], again), "started once");
    }

    #[test]
    fn a_delivery_whose_lease_ended_is_not_evicted() {
        let mut held = HeldDeliveries::default();
        let (slow, other) = (hook(), hook());
        let expired = DeliveryId::generate();
        for id in ids(9) {
            held.hold(&id, &slow, T, 10);
        }
        held.hold(&expired, &slow, T0, 10);
        held.hold(&DeliveryId::generate(), &other, T, 10);
        held.hold(&DeliveryId::generate(), &other, T, 10);
        // Another node may lease it now: giving it back would undo that node's lease.
        let evicted = held.evict(BUDGET, None, T0.plus_millis(1));
        assert!(evicted[0].1.iter().all(|(id, _)| *id != expired));
        assert_eq!(evicted[0].1.len(), 3);
    }

    #[test]
    fn eviction_never_goes_below_a_share_and_needs_a_reason() {
        let mut held = HeldDeliveries::default();
        let (a, b) = (hook(), hook());
        for id in ids(5) {
            held.hold(&id, &a, T, 10);
        }
        for id in ids(5) {
            held.hold(&id, &b, T, 10);
        }
        assert!(
            held.evict(BUDGET, Some(&a), T0).is_empty(),
            "both are within their share"
        );
        let mut alone = HeldDeliveries::default();
        for id in ids(10) {
            alone.hold(&id, &a, T, 10);
        }
        assert!(
            alone.evict(BUDGET, Some(&a), T0).is_empty(),
            "a webhook alone keeps it all"
        );
        let evicted = alone.evict(BUDGET, Some(&b), T0);
        assert_eq!(
            evicted[0].1.len(),
            2,
            "the headroom and as much again, for a webhook with due work"
        );
    }

    #[test]
    fn claims_leave_the_headroom_to_webhooks_within_their_share() {
        let mut held = HeldDeliveries::default();
        let (a, b) = (hook(), hook());
        for id in ids(8) {
            held.hold(&id, &a, T, 10);
        }
        assert_eq!(held.claim_room(BUDGET, 10), 2, "alone: the whole room");
        held.hold(&DeliveryId::generate(), &b, T, 10);
        assert_eq!(held.room(BUDGET, 10), 1);
        assert_eq!(
            held.claim_room(BUDGET, 10),
            0,
            "the last one is kept for a webhook within its share"
        );
    }

    #[test]
    fn a_spill_is_pulled_from_its_first_id_and_forgotten_once_exhausted() {
        let mut held = HeldDeliveries::default();
        let (w, other) = (hook(), hook());
        let spilled = ids(3);
        held.note_spilled(&w, &spilled[1]);
        held.note_spilled(&w, &spilled[0]);
        held.note_spilled(&w, &spilled[2]);
        for id in ids(9) {
            held.hold(&id, &other, T, 10);
        }
        let pulls = held.pulls(BUDGET, 1);
        assert_eq!(pulls.len(), 1);
        assert_eq!(pulls[0].spill.from, spilled[0]);
        assert_eq!(pulls[0].limit, 1, "as much as the room allows");
        assert_eq!(held.blocked_pull(BUDGET, 1), None);
        assert_eq!(held.blocked_pull(BUDGET, 0), Some(w.clone()));

        held.pulled(&pulls[0], Some(&spilled[1]), false);
        let again = held.pulls(BUDGET, 5);
        assert_eq!(
            again[0].spill.from, spilled[1],
            "from where the last pull ended"
        );
        held.note_spilled(&w, &spilled[2]);
        held.pulled(&again[0], Some(&spilled[2]), true);
        assert!(held.any_spilled(), "a spill noted while it pulled: kept");
        let last = held.pulls(BUDGET, 5);
        assert_eq!(
            last[0].spill.from, spilled[1],
            "from where that pull started: it may have missed the spill noted meanwhile"
        );
        held.pulled(&last[0], None, true);
        assert!(!held.any_spilled());
        assert!(held.pulls(BUDGET, 5).is_empty());
    }

    #[test]
    fn with_more_webhooks_than_room_one_holding_nothing_may_still_pull() {
        let mut held = HeldDeliveries::default();
        for _ in 0..11 {
            held.hold(&DeliveryId::generate(), &hook(), T, 10);
        }
        let w = hook();
        held.note_spilled(&w, &DeliveryId::generate());
        assert_eq!(held.blocked_pull(BUDGET, 0), Some(w), "a share of none");
    }

    #[test]
    fn a_webhook_pulls_only_below_half_its_share_and_a_release_says_when() {
        let mut held = HeldDeliveries::default();
        let w = hook();
        let mine = ids(6);
        for id in &mine {
            held.hold(id, &w, T, 10);
        }
        held.note_spilled(&w, &DeliveryId::generate());
        assert!(held.pulls(BUDGET, 4).is_empty(), "6 of a share of 10");
        assert_eq!(
            held.release(&mine[0], BUDGET).map(|(pull, _)| pull),
            Some(false)
        );
        assert_eq!(
            held.release(&mine[1], BUDGET).map(|(pull, _)| pull),
            Some(true),
            "down to 4"
        );
        assert_eq!(held.pulls(BUDGET, 8)[0].limit, 6);
    }
}
