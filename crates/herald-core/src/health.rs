//! Delivery health of one webhook over time: success rate, attempt latency percentiles and
//! backlog, in equal time buckets (the dashboard's plots).
//!
//! A store answers with counts only ([`HealthRows`]: attempts per bucket and latency class,
//! deliveries created and finished per bucket), so the answer stays small however busy the
//! webhook is; [`HealthSeries::from_rows`] turns them into the series shown. Latencies are
//! counted in fixed classes ([`DURATION_BOUNDS_MS`]), so a percentile is the upper bound of the
//! class it falls in, not an exact duration.

use serde::Serialize;

use crate::Timestamp;

/// Upper bounds (inclusive, milliseconds) of the latency classes; a last, open class holds
/// anything slower. Roughly 1-2-5 steps, so a percentile is within a factor of about two.
pub const DURATION_BOUNDS_MS: &[u32] = &[
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000,
];

/// The class of a duration: the index of the first bound it does not exceed, or
/// `DURATION_BOUNDS_MS.len()` for the open class.
pub fn duration_class(ms: u32) -> usize {
    DURATION_BOUNDS_MS
        .iter()
        .position(|&b| ms <= b)
        .unwrap_or(DURATION_BOUNDS_MS.len())
}

/// Which time span to look at: `buckets` buckets of `bucket_ms` from `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthWindow {
    pub since: Timestamp,
    pub bucket_ms: i64,
    pub buckets: u32,
}

impl HealthWindow {
    /// `hours` whole clock hours (UTC) ending with the current one, which is still going on
    /// at `now`: plots then read 14:00, 15:00… rather than 14:37, 15:37….
    pub fn hourly_until(now: Timestamp, hours: u32) -> Self {
        let bucket_ms = 3_600_000;
        let end = (now.as_millis().div_euclid(bucket_ms) + 1) * bucket_ms;
        Self {
            since: Timestamp::from_millis(end - i64::from(hours) * bucket_ms),
            bucket_ms,
            buckets: hours,
        }
    }

    pub fn until(&self) -> Timestamp {
        self.since
            .plus_millis(self.bucket_ms * i64::from(self.buckets))
    }

    /// When bucket `i` starts.
    pub fn bucket_start(&self, i: u32) -> Timestamp {
        self.since.plus_millis(self.bucket_ms * i64::from(i))
    }
}

/// Attempts of one bucket and latency class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCounts {
    pub bucket: u32,
    /// An index into [`DURATION_BOUNDS_MS`] (its length for the open class).
    pub class: u32,
    pub succeeded: u64,
    pub failed: u64,
}

/// What a store counts for [`HealthSeries`]. Buckets outside the window are not returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthRows {
    pub attempts: Vec<AttemptCounts>,
    /// Deliveries created per bucket: `(bucket, count)`.
    pub created: Vec<(u32, u64)>,
    /// Deliveries that reached a final state per bucket (by their last change): `(bucket, count)`.
    pub finished: Vec<(u32, u64)>,
    /// Deliveries created before the window that had not finished when it started.
    pub backlog_at_start: u64,
}

/// One bucket of the series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthPoint {
    pub start: Timestamp,
    pub attempts: u64,
    pub succeeded: u64,
    /// `None` when there was no attempt.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<u32>,
    pub p90_ms: Option<u32>,
    pub p99_ms: Option<u32>,
    /// Deliveries not finished at the end of the bucket (derived: see [`HealthRows`]).
    pub backlog: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSeries {
    pub bucket_ms: i64,
    pub points: Vec<HealthPoint>,
    /// The window held more deliveries than the counts look at ([`SCAN_LIMIT`], the latest):
    /// the older ones in it are not counted.
    pub capped: bool,
}

/// How many of a webhook's most recent deliveries the health counts look at, so that a plot
/// costs a bounded scan of one index however much history is kept.
pub const SCAN_LIMIT: u64 = 100_000;

impl HealthSeries {
    pub fn from_rows(window: &HealthWindow, rows: &HealthRows) -> Self {
        let n = window.buckets as usize;
        let classes = DURATION_BOUNDS_MS.len() + 1;
        let mut histogram = vec![vec![0u64; classes]; n];
        let mut succeeded = vec![0u64; n];
        for a in &rows.attempts {
            let (b, c) = (a.bucket as usize, (a.class as usize).min(classes - 1));
            if b < n {
                histogram[b][c] += a.succeeded + a.failed;
                succeeded[b] += a.succeeded;
            }
        }
        let per_bucket = |list: &[(u32, u64)]| {
            let mut out = vec![0u64; n];
            for &(b, count) in list {
                if let Some(slot) = out.get_mut(b as usize) {
                    *slot += count;
                }
            }
            out
        };
        let (created, finished) = (per_bucket(&rows.created), per_bucket(&rows.finished));
        let mut backlog = rows.backlog_at_start as i64;
        let points = (0..n)
            .map(|i| {
                let total: u64 = histogram[i].iter().sum();
                backlog += created[i] as i64 - finished[i] as i64;
                HealthPoint {
                    start: window.bucket_start(i as u32),
                    attempts: total,
                    succeeded: succeeded[i],
                    success_rate: (total > 0).then(|| succeeded[i] as f64 / total as f64),
                    p50_ms: percentile(&histogram[i], 0.50),
                    p90_ms: percentile(&histogram[i], 0.90),
                    p99_ms: percentile(&histogram[i], 0.99),
                    // Deliveries finished in the window but created before it (and not counted
                    // at its start, e.g. resent ones) could push the derivation below zero.
                    backlog: backlog.max(0) as u64,
                }
            })
            .collect();
        Self {
            bucket_ms: window.bucket_ms,
            points,
            capped: created.iter().sum::<u64>() >= SCAN_LIMIT,
        }
    }
}

/// The upper bound of the class holding the `q` quantile; the open class reports the last
/// bound (the plot caps it there).
fn percentile(histogram: &[u64], q: f64) -> Option<u32> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (class, count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let last = DURATION_BOUNDS_MS.len() - 1;
            return Some(DURATION_BOUNDS_MS[class.min(last)]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_the_first_class_they_do_not_exceed() {
        assert_eq!(duration_class(0), 0);
        assert_eq!(duration_class(1), 0);
        assert_eq!(duration_class(3), 2);
        assert_eq!(duration_class(1_000), 9);
        assert_eq!(duration_class(60_001), DURATION_BOUNDS_MS.len());
    }

    #[test]
    fn an_hourly_window_ends_with_the_current_clock_hour() {
        let now = Timestamp::parse_rfc3339("2026-05-01T12:34:56Z", "t").unwrap();
        let w = HealthWindow::hourly_until(now, 24);
        assert_eq!(w.since.to_rfc3339(), "2026-04-30T13:00:00.000Z");
        assert_eq!(w.until().to_rfc3339(), "2026-05-01T13:00:00.000Z");
    }

    #[test]
    fn percentiles_are_class_upper_bounds() {
        let mut h = vec![0u64; DURATION_BOUNDS_MS.len() + 1];
        h[duration_class(8)] = 90; // ≤ 10 ms
        h[duration_class(400)] = 9; // ≤ 500 ms
        h[duration_class(3_000)] = 1; // ≤ 5 s
        assert_eq!(percentile(&h, 0.5), Some(10));
        assert_eq!(percentile(&h, 0.9), Some(10));
        assert_eq!(percentile(&h, 0.99), Some(500));
        assert_eq!(percentile(&[0; 3], 0.5), None);
    }

    #[test]
    fn backlog_is_what_was_left_plus_created_minus_finished() {
        let window = HealthWindow {
            since: Timestamp::from_millis(0),
            bucket_ms: 1000,
            buckets: 3,
        };
        let rows = HealthRows {
            attempts: vec![AttemptCounts {
                bucket: 1,
                class: 3,
                succeeded: 3,
                failed: 1,
            }],
            created: vec![(0, 5), (2, 1)],
            finished: vec![(1, 4), (2, 1)],
            backlog_at_start: 2,
        };
        let s = HealthSeries::from_rows(&window, &rows);
        let backlog: Vec<u64> = s.points.iter().map(|p| p.backlog).collect();
        assert_eq!(backlog, vec![7, 3, 3]);
        assert_eq!(s.points[0].success_rate, None);
        assert_eq!(s.points[1].success_rate, Some(0.75));
        assert_eq!(s.points[1].p50_ms, Some(10));
        assert!(!s.capped);
        let full = HealthRows {
            created: vec![(0, SCAN_LIMIT - 1), (2, 1)],
            ..rows
        };
        assert!(
            HealthSeries::from_rows(&window, &full).capped,
            "the scan's limit reached within the window"
        );
    }
}
