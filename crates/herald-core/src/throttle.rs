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
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_millis() as i64;
        self.admit_at(now)
    }

    fn admit_at(&self, now_ms: i64) -> Option<u64> {
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
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
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
}
