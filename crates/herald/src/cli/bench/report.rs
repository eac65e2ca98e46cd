//! What a scenario found, and how it is shown: one table row per scenario on stdout, the
//! scenario-specific figures as notes under it, and everything as JSON with `--json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use super::measure::Histogram;

/// Latency quantiles, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: u64,
}

impl Latency {
    pub fn of(h: &Histogram) -> Option<Self> {
        let ms = |q: f64| h.quantile(q).map(|us| us as f64 / 1000.0);
        Some(Self {
            p50: ms(0.5)?,
            p90: ms(0.9)?,
            p99: ms(0.99)?,
            max: h.max() as f64 / 1000.0,
            samples: h.count(),
        })
    }
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    /// Every event that was acknowledged reached every healthy endpoint.
    pub complete: bool,
    /// Events acknowledged with 202.
    pub events: u64,
    /// Deliveries the healthy endpoints should get, and got (each event counted once).
    pub expected_deliveries: u64,
    pub deliveries: u64,
    /// 202s per second, first send to last 202 (events per second).
    pub ingest_per_s: Option<f64>,
    /// Deliveries per second, first arrival to last.
    pub deliveries_per_s: Option<f64>,
    /// Events per second, first send to last arrival.
    pub end_to_end_per_s: Option<f64>,
    /// Seconds from the first send to the last arrival.
    pub last_delivery_s: Option<f64>,
    /// From the send time carried in each event to its arrival at a healthy endpoint.
    pub latency_ms: Option<Latency>,
    /// Figures particular to the scenario.
    pub figures: BTreeMap<String, Value>,
    /// What the figures mean, in words.
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            complete: false,
            events: 0,
            expected_deliveries: 0,
            deliveries: 0,
            ingest_per_s: None,
            deliveries_per_s: None,
            end_to_end_per_s: None,
            last_delivery_s: None,
            latency_ms: None,
            figures: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    pub fn figure(&mut self, name: &str, value: impl Into<Value>) {
        self.figures.insert(name.to_owned(), value.into());
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// A scenario that could not run here.
    pub fn skipped(scenario: &str, why: &str) -> Self {
        let mut o = Self::new(scenario);
        o.complete = true;
        o.note(format!("skipped: {why}"));
        o.figure("skipped", true);
        o
    }
}

const HEADERS: [&str; 10] = [
    "scenario",
    "events",
    "deliveries",
    "ingest/s",
    "deliver/s",
    "e2e ev/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "result",
];

/// Prints the table, then each scenario's notes.
pub fn print_table(outcomes: &[Outcome], out: &mut impl Write) -> std::io::Result<()> {
    let rows: Vec<[String; 10]> = outcomes.iter().map(row).collect();
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([HEADERS[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let headers: Vec<String> = HEADERS.iter().map(|h| (*h).to_owned()).collect();
    writeln!(out, "{}", line(&headers))?;
    writeln!(
        out,
        "{}",
        "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
    )?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    for o in outcomes.iter().filter(|o| !o.notes.is_empty()) {
        writeln!(out, "\n{}:", o.scenario)?;
        for n in &o.notes {
            writeln!(out, "  - {n}")?;
        }
    }
    Ok(())
}

fn row(o: &Outcome) -> [String; 10] {
    let rate = |r: Option<f64>| r.map_or("-".into(), |r| thousands(r.round() as u64));
    let ms = |f: fn(&Latency) -> f64| {
        o.latency_ms
            .as_ref()
            .map_or("-".into(), |l| format!("{:.2}", f(l)))
    };
    let result = if o.figures.contains_key("skipped") {
        "skipped".into()
    } else if o.complete {
        "ok".into()
    } else {
        format!(
            "MISSING {}",
            thousands(o.expected_deliveries.saturating_sub(o.deliveries))
        )
    };
    [
        o.scenario.clone(),
        thousands(o.events),
        thousands(o.deliveries),
        rate(o.ingest_per_s),
        rate(o.deliveries_per_s),
        rate(o.end_to_end_per_s),
        ms(|l| l.p50),
        ms(|l| l.p99),
        ms(|l| l.max),
        result,
    ]
}

/// Writes every outcome, with the settings they ran with, as JSON.
pub fn write_json(path: &Path, settings: Value, outcomes: &[Outcome]) -> anyhow::Result<()> {
    use herald_core::Clock;
    let doc = serde_json::json!({
        "herald_version": herald_core::VERSION,
        // Empty when built outside a git checkout.
        "herald_commit": crate::COMMIT,
        "written_at": herald_core::SystemClock.now().to_rfc3339(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model(),
        // Virtual machines often name every processor alike ("Intel(R) Xeon(R) Processor"):
        // the family and model tell them apart.
        "cpu_family_model": cpu_field("cpu family").zip(cpu_field("model")).map(|(f, m)| format!("{f}/{m}")),
        "memory_mib": memory_mib(),
        "settings": settings,
        "scenarios": outcomes,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("could not write the results to {}", path.display()))
}

/// The processor's name as Linux reports it (figures from different processors differ more
/// than most changes do); `None` elsewhere.
fn cpu_model() -> Option<String> {
    cpu_field("model name")
}

/// A field of the first processor in `/proc/cpuinfo` (`model name`, `cpu family`, `model`).
fn cpu_field(name: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().to_owned())
}

/// The machine's memory, from `/proc/meminfo`; `None` elsewhere.
fn memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio as a signed percentage change: `0.93` → `-7.0%`.
pub fn change(now: f64, before: f64) -> String {
    if before <= 0.0 {
        return "n/a".into();
    }
    format!("{:+.1}%", (now / before - 1.0) * 100.0)
}

pub fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(change(93.0, 100.0), "-7.0%");
    }

    #[test]
    fn the_table_has_a_row_per_scenario_and_names_what_is_missing() {
        let mut done = Outcome::new("burst");
        done.complete = true;
        done.events = 10;
        let mut short = Outcome::new("batch");
        short.expected_deliveries = 10;
        short.deliveries = 7;
        short.note("three never came");
        let mut out = Vec::new();
        print_table(&[done, short], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("burst") && text.contains("ok"));
        assert!(text.contains("MISSING 3"));
        assert!(text.contains("  - three never came"));
    }
}
