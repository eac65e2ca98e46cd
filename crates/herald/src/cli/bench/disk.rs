//! How long the disk under the bench's data directories takes to make a write durable. Every
//! `202` waits for its group's `fsync`, so at `latency`'s steady rate, where each event has a
//! commit of its own, that time is the floor under the p50: printed beside `latency`, it tells a
//! slow disk apart from a slow server. Some virtual disks flush far more slowly when idle than
//! when busy, so the writes are paced at `latency`'s rate (`scripts/bench-fsync` measures the
//! same at any rate).

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::measure::Histogram;
use super::report::Latency;

/// The size of each write: about what one event's commit writes to SQLite's log.
const WRITE_BYTES: usize = 16 * 1024;

/// Quantiles of the time one `fsync` took, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Durability {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub per_s: u32,
}

/// Writes 16 KiB and `fsync`s it, `per_s` times a second, 10 to 200 times (a second at
/// `latency`'s default 200), in an unnamed file under `dir` (gone when closed). Blocking.
pub fn probe(dir: &Path, per_s: u32) -> std::io::Result<Durability> {
    let writes = per_s.clamp(10, 200) as usize;
    let every = Duration::from_secs(1) / per_s.max(1);
    let mut file = tempfile::tempfile_in(dir)?;
    let block = vec![b'h'; WRITE_BYTES];
    let took = Histogram::default();
    let start = Instant::now();
    for i in 0..writes {
        if let Some(wait) = (start + every * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Over the same 64 blocks again and again, as SQLite's log is reused after a checkpoint.
        file.seek(SeekFrom::Start(((i % 64) * WRITE_BYTES) as u64))?;
        file.write_all(&block)?;
        let t = Instant::now();
        file.sync_all()?;
        took.record(t.elapsed().as_micros() as u64);
    }
    let quantiles = Latency::of(&took).ok_or_else(|| std::io::Error::other("nothing was timed"))?;
    Ok(Durability {
        p50_ms: quantiles.p50,
        p99_ms: quantiles.p99,
        per_s,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_probe_measures_something_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let d = super::probe(dir.path(), 1000).unwrap();
        assert!(d.p50_ms > 0.0 && d.p50_ms <= d.p99_ms, "{d:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
