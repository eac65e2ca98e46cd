//! What the load generator and the receiver share to measure: one clock, a latency histogram and
//! a set of seen sequence numbers. All three are lock-free and allocate nothing per event, because
//! they run on the same two cores as the server they measure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Microseconds since the benchmark started. The producer writes it into each event and the
/// receiver reads it back; both run in this process, so a monotonic clock serves both.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// Sub-buckets per power of two: values are kept within 1/64 (about 1.6%).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB as usize;

/// A log-linear histogram of microseconds (the idea of HdrHistogram, fixed at two significant
/// digits): recording is one atomic add, and quantiles are read at the end.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        self.buckets[index(micros)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Adds every value of `other` to this one.
    pub fn merge(&self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter().zip(other.buckets.iter()) {
            let n = theirs.load(Ordering::Relaxed);
            if n > 0 {
                mine.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.max
            .fetch_max(other.max.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The value below which a fraction `q` of the recorded values lie (the bucket's upper
    /// bound, never above the maximum seen), or `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(upper_bound(i).min(self.max()));
            }
        }
        Some(self.max())
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() - SUB_BITS;
    let sub = (v >> exp) - SUB;
    ((u64::from(exp) + 1) * SUB + sub) as usize
}

fn upper_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = i / SUB - 1;
    let sub = i % SUB + SUB;
    ((sub + 1) << exp) - 1
}

/// Which sequence numbers in `0..capacity` were seen: one bit each, so a million events cost
/// 125 KB and the count of distinct deliveries is exact however many duplicates arrive.
pub struct Seen {
    words: Box<[AtomicU64]>,
    capacity: u64,
}

impl Seen {
    pub fn new(capacity: u64) -> Self {
        Self {
            words: (0..capacity.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            capacity,
        }
    }

    /// Marks `seq`; true if it was not seen before. A number out of range is never "new".
    pub fn insert(&self, seq: u64) -> bool {
        let Some(word) = self
            .words
            .get((seq / 64) as usize)
            .filter(|_| seq < self.capacity)
        else {
            return false;
        };
        let bit = 1 << (seq % 64);
        word.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    /// A copy of the set as it is now.
    pub fn snapshot(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }

    /// How many numbers of `snapshot` this set lacks.
    pub fn missing_from(&self, snapshot: &[u64]) -> u64 {
        snapshot
            .iter()
            .zip(self.words.iter())
            .map(|(want, have)| u64::from((want & !have.load(Ordering::Relaxed)).count_ones()))
            .sum()
    }
}

/// Keeps the smallest and the largest timestamp seen (`u64::MAX`/0 until then).
pub struct Span {
    first: AtomicU64,
    last: AtomicU64,
}

impl Default for Span {
    fn default() -> Self {
        Self {
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
        }
    }
}

impl Span {
    pub fn mark(&self, at_us: u64) {
        self.first.fetch_min(at_us, Ordering::Relaxed);
        self.last.fetch_max(at_us, Ordering::Relaxed);
    }

    pub fn first(&self) -> Option<u64> {
        Some(self.first.load(Ordering::Relaxed)).filter(|f| *f != u64::MAX)
    }

    pub fn last(&self) -> Option<u64> {
        self.first().map(|_| self.last.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values_within_two_percent() {
        for v in [
            0,
            1,
            63,
            64,
            65,
            127,
            128,
            1000,
            12_345,
            999_999,
            u64::MAX / 3,
        ] {
            let i = index(v);
            assert!(upper_bound(i) >= v, "{v}");
            assert!(i == 0 || upper_bound(i - 1) < v, "{v}");
            assert!(upper_bound(i) - v <= v / 60, "{v}");
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((495..=510).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), Some(1000));
        let other = Histogram::default();
        other.record(5000);
        h.merge(&other);
        assert_eq!(h.max(), 5000);
        assert_eq!(h.count(), 1001);
    }

    #[test]
    fn seen_counts_each_number_once() {
        let s = Seen::new(130);
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(129));
        assert!(!s.insert(130), "out of range");
        let snap = s.snapshot();
        let other = Seen::new(130);
        other.insert(3);
        assert_eq!(other.missing_from(&snap), 1);
    }
}
