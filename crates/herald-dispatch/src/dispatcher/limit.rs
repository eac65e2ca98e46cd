//! How many requests one webhook may have in flight: adaptive, the way TCP sizes its window.
//!
//! A webhook starts at [`START`] requests at once (or its ceiling, if lower). While every slot
//! is busy and the endpoint keeps answering, it gets one more slot per full round of answers,
//! up to the ceiling (`--endpoint-concurrency`). An endpoint that says it is overloaded (429,
//! 503) halves it, as do signs of strain (a timeout, a refused connection, 502 or 504) on more
//! than a fifth of a window of answers (as many as the limit, at least [`MIN_WINDOW`]); at most
//! once per round: requests that started before the last cut do not cut again. So a backlog
//! drains as fast as the endpoint can take it, and an endpoint that struggles gets fewer
//! requests, down to one.
//!
//! Signs of strain cut only in numbers: an endpoint whose answers mostly come at once but now
//! and then take past the timeout (a slow tail: a lock, a pause) is not overloaded by Herald's
//! requests, and halving at each of its timeouts held one that timed out on a tenth of them at
//! four or five requests at once, a quarter of what its events needed, so that its backlog grew
//! for as long as they came (a soak with such an endpoint: 12 deliveries a second for 50
//! arriving). The price: a server at its capacity, whose queue makes requests time out
//! together, gets 20-35 of them timed out before the cut rather than about 5 (an A/B probe:
//! 3% of its events processed twice rather than 0.6%).
//!
//! A connection reset after the request was sent does not count: servers close idle keep-alive
//! connections all the time. The limit lives as long as the webhook's task, which ends after a
//! minute without work; the next one starts at [`START`] again.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use herald_core::delivery::{AttemptError, AttemptOutcome};

/// Requests in flight a webhook starts with.
pub(super) const START: usize = 16;

/// The fewest answers a window holds, whatever the limit: at a low limit, one timeout in a
/// handful of answers would otherwise be the fifth that cuts.
pub(super) const MIN_WINDOW: usize = 8;

/// More than one answer in this many showing strain, within a window, cuts the limit.
const STRAIN_SHARE: usize = 5;

/// What an answered (or failed) request says about the endpoint's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// It answered in time, success or not: it could take this request.
    Answered,
    /// It said it is overloaded: 429, 503.
    Overloaded,
    /// It may be overloaded, or unreachable: a timeout, a refused connection, 502, 504.
    Strained,
    /// Nothing was learned (the request was never sent).
    Unknown,
}

impl Signal {
    pub(super) fn of(outcome: &AttemptOutcome) -> Self {
        match &outcome.error {
            None => Self::Answered,
            // `attempt` passes `Unknown` instead when it had shortened the timeout to fit the
            // lease, since timing out then says nothing about the endpoint.
            Some(AttemptError::Timeout | AttemptError::CutShort | AttemptError::Connect(_)) => {
                Self::Strained
            }
            Some(AttemptError::Status(429 | 503)) => Self::Overloaded,
            Some(AttemptError::Status(502 | 504)) => Self::Strained,
            Some(AttemptError::Status(_)) => Self::Answered,
            Some(
                AttemptError::Dns(_)
                | AttemptError::Tls(_)
                | AttemptError::Blocked(_)
                | AttemptError::Request(_)
                | AttemptError::Local(_)
                | AttemptError::Interrupted,
            ) => Self::Unknown,
        }
    }
}

/// One webhook's adaptive limit. Shared by its task and its attempts.
pub(super) struct Limit {
    slots: Arc<Semaphore>,
    ceiling: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Slots the webhook may use now (in use plus free, once `owed` is paid).
    limit: usize,
    /// Answers in time with every slot busy since the limit last grew.
    busy_answers: usize,
    /// Slots still to take out of circulation after a cut: permits are forgotten as they come
    /// back rather than taken from requests in flight.
    owed: usize,
    /// Bumped at every cut; a slot remembers the round it was taken in.
    round: u64,
    /// Answers in the current window, and how many of them showed strain.
    window_answers: usize,
    window_strained: usize,
}

/// A taken slot. Give it back with [`Slot::finish`]; dropping it gives it back as
/// [`Signal::Unknown`].
pub(super) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    round: u64,
    limit: Arc<Limit>,
    /// The node's permit for a request in flight (to any webhook), given back with the slot;
    /// once the request is slow, a permit of the node's bound on slow requests instead.
    outgoing: Option<OwnedSemaphorePermit>,
}

impl Limit {
    pub(super) fn new(ceiling: usize) -> Arc<Self> {
        let ceiling = ceiling.max(1);
        let start = START.min(ceiling);
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(start)),
            ceiling,
            state: Mutex::new(State {
                limit: start,
                busy_answers: 0,
                owed: 0,
                round: 0,
                window_answers: 0,
                window_strained: 0,
            }),
        })
    }

    /// Waits for a free slot.
    pub(super) async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // Read after the wait: a slot granted just as a cut happens may count in the new round
        // and cut once more, which only errs on the side of sparing the endpoint.
        let round = self.state.lock().expect("limit lock").round;
        Slot {
            permit: Some(permit),
            round,
            limit: self.clone(),
            outgoing: None,
        }
    }

    /// Requests the webhook may have in flight now.
    pub(super) fn current(&self) -> usize {
        self.state.lock().expect("limit lock").limit
    }

    /// Returns the new limit if this answer lowered it.
    fn give_back(&self, permit: OwnedSemaphorePermit, round: u64, signal: Signal) -> Option<usize> {
        let mut state = self.state.lock().expect("limit lock");
        let before = state.limit;
        match signal {
            Signal::Answered => {
                // Grow only when demand is above the limit: every other slot is taken.
                let all_busy = self.slots.available_permits() == 0;
                if all_busy && state.owed == 0 && state.limit < self.ceiling {
                    state.busy_answers += 1;
                    if state.busy_answers >= state.limit {
                        state.busy_answers = 0;
                        state.limit += 1;
                        self.slots.add_permits(1);
                    }
                }
            }
            Signal::Strained if round == state.round => state.window_strained += 1,
            Signal::Overloaded | Signal::Strained | Signal::Unknown => {}
        }
        if signal != Signal::Unknown {
            state.window_answers += 1;
            let window = state.limit.max(MIN_WINDOW);
            let said = signal == Signal::Overloaded && round == state.round;
            if said || state.window_strained * STRAIN_SHARE > window {
                let halved = (state.limit / 2).max(1);
                state.owed += state.limit - halved;
                state.limit = halved;
                state.busy_answers = 0;
                state.round += 1;
                (state.window_answers, state.window_strained) = (0, 0);
            } else if state.window_answers >= window {
                (state.window_answers, state.window_strained) = (0, 0);
            }
        }
        if state.owed > 0 {
            permit.forget();
            state.owed -= 1;
            let taken = self.slots.forget_permits(state.owed);
            state.owed -= taken;
        }
        // Otherwise the permit goes back when it is dropped here.
        (state.limit < before).then_some(state.limit)
    }
}

impl Slot {
    /// The slot, holding also the node's permit for one more request in flight.
    pub(super) fn with_outgoing(mut self, permit: OwnedSemaphorePermit) -> Self {
        self.outgoing = Some(permit);
        self
    }

    /// The request has waited long for its answer: its room among the node's requests in flight
    /// goes back for others, for one among the slow ones. `false` if none is free: the request
    /// is to be given up, rather than hold the node's room until its timeout.
    pub(super) fn slow(&mut self, slow: &Arc<Semaphore>) -> bool {
        if self.outgoing.is_none() {
            return true;
        }
        match slow.clone().try_acquire_owned() {
            Ok(permit) => {
                self.outgoing = Some(permit);
                true
            }
            Err(_) => false,
        }
    }

    /// Gives the slot back with what the request said about the endpoint; returns the
    /// webhook's new limit if this answer lowered it.
    pub(super) fn finish(mut self, signal: Signal) -> Option<usize> {
        let permit = self.permit.take()?;
        self.limit.give_back(permit, self.round, signal)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.limit.give_back(permit, self.round, Signal::Unknown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots in circulation: free plus taken.
    fn circulating(limit: &Limit, taken: usize) -> usize {
        limit.slots.available_permits() + taken
    }

    async fn take(limit: &Arc<Limit>, n: usize) -> Vec<Slot> {
        let mut slots = Vec::new();
        for _ in 0..n {
            slots.push(limit.acquire().await);
        }
        slots
    }

    #[tokio::test]
    async fn starts_at_start_or_at_a_lower_ceiling() {
        assert_eq!(Limit::new(64).current(), START);
        assert_eq!(Limit::new(4).current(), 4);
        assert_eq!(Limit::new(0).current(), 1);
    }

    #[tokio::test]
    async fn grows_by_one_per_round_of_answers_while_every_slot_is_busy() {
        let limit = Limit::new(64);
        // A full round: each answer comes back while all the other slots are taken.
        for _ in 0..START {
            let mut slots = take(&limit, START).await;
            slots.pop().unwrap().finish(Signal::Answered);
            drop(slots);
        }
        assert_eq!(limit.current(), START + 1);
        assert_eq!(circulating(&limit, 0), START + 1);
    }

    #[tokio::test]
    async fn does_not_grow_when_slots_are_free() {
        let limit = Limit::new(64);
        for _ in 0..1000 {
            limit.acquire().await.finish(Signal::Answered);
        }
        assert_eq!(limit.current(), START);
    }

    #[tokio::test]
    async fn never_grows_past_the_ceiling() {
        let limit = Limit::new(START + 2);
        for _ in 0..100 {
            let n = limit.current();
            let mut slots = take(&limit, n).await;
            slots.pop().unwrap().finish(Signal::Answered);
        }
        assert_eq!(limit.current(), START + 2);
        assert_eq!(circulating(&limit, 0), START + 2);
    }

    #[tokio::test]
    async fn overload_halves_once_per_round_and_never_below_one() {
        let limit = Limit::new(64);
        // Sixteen requests of the same round all time out: the fourth, more than a fifth of
        // the window of sixteen, cuts; the rest of that round do not cut again.
        let slots = take(&limit, START).await;
        let cuts: Vec<_> = slots
            .into_iter()
            .filter_map(|slot| slot.finish(Signal::Strained))
            .collect();
        assert_eq!(cuts, [START / 2], "one cut, reported once");
        assert_eq!(limit.current(), START / 2);
        assert_eq!(circulating(&limit, 0), START / 2);
        // Each later round cuts again at its second timeout (more than a fifth of a window of
        // eight), down to one.
        for (expected, reported) in [(4, Some(4)), (2, Some(2)), (1, Some(1)), (1, None)] {
            assert_eq!(limit.acquire().await.finish(Signal::Strained), None);
            assert_eq!(limit.acquire().await.finish(Signal::Strained), reported);
            assert_eq!(limit.current(), expected);
        }
        assert_eq!(circulating(&limit, 0), 1);
    }

    #[tokio::test]
    async fn an_endpoint_that_says_it_is_overloaded_is_heard_at_once() {
        let limit = Limit::new(64);
        let mut slots = take(&limit, START).await;
        // One 429 cuts, the rest of its round do not cut again; the next round's first does.
        assert_eq!(
            slots.pop().unwrap().finish(Signal::Overloaded),
            Some(START / 2)
        );
        for slot in slots {
            assert_eq!(slot.finish(Signal::Overloaded), None);
        }
        assert_eq!(
            limit.acquire().await.finish(Signal::Overloaded),
            Some(START / 4)
        );
    }

    #[tokio::test]
    async fn a_slow_tail_does_not_cut() {
        let limit = Limit::new(64);
        // One answer in ten is a timeout, every slot busy: never more than a fifth of a
        // window, so the limit grows as it would without them.
        for i in 0..2_000 {
            let mut slots = take(&limit, limit.current()).await;
            let signal = if i % 10 == 0 {
                Signal::Strained
            } else {
                Signal::Answered
            };
            assert_eq!(slots.pop().unwrap().finish(signal), None, "answer {i}");
        }
        assert!(limit.current() > 32, "{}", limit.current());
        // A run of them does cut, within two windows' fifths (the run may straddle two).
        let n = limit.current();
        let mut slots = take(&limit, n).await;
        let cut = (0..2 * (n / STRAIN_SHARE + 1))
            .find_map(|_| slots.pop().unwrap().finish(Signal::Strained));
        assert_eq!(cut, Some(n / 2));
    }

    #[tokio::test]
    async fn a_cut_waits_for_slots_in_flight_instead_of_taking_them() {
        let limit = Limit::new(64);
        let mut slots = take(&limit, START).await;
        for _ in 0..3 {
            assert_eq!(slots.pop().unwrap().finish(Signal::Strained), None);
        }
        // The fourth timeout of sixteen cuts to eight with twelve still out: the three given
        // back before it leave circulation at once, and the next four to come back too.
        assert_eq!(
            slots.pop().unwrap().finish(Signal::Strained),
            Some(START / 2)
        );
        assert_eq!(limit.slots.available_permits(), 0);
        for _ in 0..4 {
            slots.pop().unwrap().finish(Signal::Answered);
        }
        assert_eq!(limit.slots.available_permits(), 0);
        let left = slots.len();
        drop(slots);
        assert_eq!(left, 8);
        assert_eq!(circulating(&limit, 0), START / 2);
    }

    #[tokio::test]
    async fn answers_that_are_not_overload_do_not_cut() {
        let limit = Limit::new(64);
        let outcome =
            AttemptOutcome::failed(AttemptError::Status(500), Some(500), 3, String::new(), None);
        assert_eq!(Signal::of(&outcome), Signal::Answered);
        limit.acquire().await.finish(Signal::of(&outcome));
        limit.acquire().await.finish(Signal::Unknown);
        assert_eq!(limit.current(), START);
        let timeout = AttemptOutcome::failed(AttemptError::Timeout, None, 3, String::new(), None);
        assert_eq!(Signal::of(&timeout), Signal::Strained);
        let busy =
            AttemptOutcome::failed(AttemptError::Status(503), Some(503), 3, String::new(), None);
        assert_eq!(Signal::of(&busy), Signal::Overloaded);
    }
}
