//! Counters kept in memory and served at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    events_ingested: AtomicU64,
    deliveries_created: AtomicU64,
}

impl Metrics {
    pub fn events_ingested(&self, events: usize, deliveries: usize) {
        self.events_ingested
            .fetch_add(events as u64, Ordering::Relaxed);
        self.deliveries_created
            .fetch_add(deliveries as u64, Ordering::Relaxed);
    }

    /// The Prometheus exposition text; `held` is the dispatcher's in-memory count.
    pub fn render(&self, held: usize) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64, kind: &str| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        counter(
            "herald_events_ingested_total",
            "Events accepted (duplicates excluded).",
            self.events_ingested.load(Ordering::Relaxed),
            "counter",
        );
        counter(
            "herald_deliveries_created_total",
            "Deliveries created by fan-out.",
            self.deliveries_created.load(Ordering::Relaxed),
            "counter",
        );
        counter(
            "herald_deliveries_in_memory",
            "Deliveries queued or in flight in this node's dispatcher.",
            held as u64,
            "gauge",
        );
        out
    }
}
