//! Lets a repeated log line through at most once per interval, counting the ones held back:
//! an outage of the database is then a few lines with their count, not one per request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One kind of repeated line. Cheap enough to sit in a `static`.
#[derive(Debug)]
pub struct Throttle {
    every_ms: i64,
    /// When the next line may go, in ms since this process first asked (a monotonic clock: a
    /// wall clock stepped back would silence every line for as long).
    next_ms: AtomicI64,
    held: AtomicU64,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every_ms: every.as_millis() as i64,
            next_ms: AtomicI64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// Whether to log now: `Some(n)` with how many were held back since the last line.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Self::now_ms())
    }

    /// [`Self::admit`] for a line that stands for `n` things (deliveries, say), counted as
    /// `n` when held back: `Some` with the count held back when the line is to be said now.
    /// What is held back is said by `later`, with its count, once the interval is over (in a
    /// task of the tokio runtime this runs in): a line held back with nothing after it would
    /// otherwise never be said.
    pub fn admit_or_later(&'static self, n: u64, later: fn(u64)) -> Option<u64> {
        match self.admit_counting(n) {
            Admit::Now(held_back) => Some(held_back),
            Admit::FirstHeld => {
                let every = Duration::from_millis(self.every_ms as u64);
                tokio::spawn(async move {
                    tokio::time::sleep(every).await;
                    if let Some(held) = self.take_held() {
                        later(held);
                    }
                });
                None
            }
            Admit::Held => None,
        }
    }

    /// Admits, or holds back `n`, telling apart the first held back since the last line.
    fn admit_counting(&self, n: u64) -> Admit {
        let now = Self::now_ms();
        match self.try_admit(now) {
            Some(held_back) => Admit::Now(held_back),
            None if self.held.fetch_add(n, Ordering::Relaxed) == 0 => Admit::FirstHeld,
            None => Admit::Held,
        }
    }

    /// Once the interval is over, what was held back since the last line (taken, and the next
    /// interval starts); `None` when nothing was, or a line went out meanwhile.
    fn take_held(&self) -> Option<u64> {
        self.take_held_at(Self::now_ms())
    }

    fn take_held_at(&self, now_ms: i64) -> Option<u64> {
        if self.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.try_admit(now_ms).filter(|&held| held > 0)
    }

    fn now_ms() -> i64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_millis() as i64
    }

    fn admit_at(&self, now_ms: i64) -> Option<u64> {
        let admitted = self.try_admit(now_ms);
        if admitted.is_none() {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Starts the next interval if this one is over: `Some` with the count held back.
    fn try_admit(&self, now_ms: i64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        None
    }
}

/// What [`Throttle::admit_counting`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Say it now; this many were held back since the last line.
    Now(u64),
    /// Held back, the first since the last line.
    FirstHeld,
    /// Held back.
    Held,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.admit_at(1_000), Some(0));
        for ms in [1_001, 5_000, 10_999] {
            assert_eq!(t.admit_at(ms), None);
        }
        assert_eq!(t.admit_at(11_000), Some(3));
        assert_eq!(t.admit_at(11_001), None);
        assert_eq!(t.admit_at(60_000), Some(1));
    }

    #[test]
    fn what_was_held_back_is_taken_once_the_interval_is_over() {
        let t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.try_admit(1_000), Some(0));
        assert_eq!(t.take_held_at(2_000), None, "nothing held");
        t.held.fetch_add(3, Ordering::Relaxed);
        assert_eq!(t.take_held_at(10_999), None, "the interval is not over");
        assert_eq!(t.take_held_at(11_000), Some(3));
        assert_eq!(t.take_held_at(30_000), None, "taken once");
    }

    #[test]
    fn the_first_held_back_is_told_apart() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.admit_counting(1), Admit::Now(0));
        assert_eq!(t.admit_counting(2), Admit::FirstHeld);
        assert_eq!(t.admit_counting(5), Admit::Held);
        assert_eq!(t.held.load(Ordering::Relaxed), 7);
    }
}
