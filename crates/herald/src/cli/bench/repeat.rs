//! Repeated runs of one scenario (`--repeat`) become one outcome: the median run stands for the
//! scenario, every run's headline figure is kept beside it, and a scenario is complete only if
//! every run was. Figures on a two-core machine shared by server, load and receiver vary by about
//! ±10% from run to run, so one run is a sample, not a result.
//!
//! The comparisons of `slow-endpoint` and `failing-endpoint` with nine healthy webhooks alone are
//! written here too, from the medians, so a lucky or unlucky baseline does not decide them.

use serde_json::Value;

use super::report::{Outcome, change, thousands};

/// Combines the runs of one scenario (at least one).
pub fn combine(mut runs: Vec<Outcome>) -> Outcome {
    let latency = runs.first().is_some_and(|o| o.scenario == "latency");
    // What orders the runs: p99 for `latency`, the delivery rate for the rest.
    let key = |o: &Outcome| {
        if latency {
            o.latency_ms.map_or(f64::MAX, |l| l.p99)
        } else {
            o.deliveries_per_s.unwrap_or(0.0)
        }
    };
    let complete = runs.iter().all(|o| o.complete);
    let headline: Vec<f64> = runs
        .iter()
        .map(|o| (key(o) * 100.0).round() / 100.0)
        .collect();
    let alone = median(
        runs.iter()
            .filter_map(|o| figure(o, "healthy_deliveries_per_s_alone")),
    );
    let alone_p99 = median(
        runs.iter()
            .filter_map(|o| figure(o, "healthy_p99_ms_alone")),
    );
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let n = runs.len();
    // With an even number of runs, the worse of the two in the middle: the slower rate, the
    // higher p99 (the runs are sorted best-last for rates, best-first for latency).
    let mut o = runs.swap_remove(if latency { n / 2 } else { (n - 1) / 2 });
    o.complete = complete;
    if n > 1 {
        o.figure("runs", n);
        let name = if latency {
            "runs_p99_ms"
        } else {
            "runs_deliveries_per_s"
        };
        o.figure(name, headline.clone());
        let shown: Vec<String> = headline
            .iter()
            .map(|v| {
                if latency {
                    format!("{v:.2}")
                } else {
                    thousands(v.round() as u64)
                }
            })
            .collect();
        let which = if n % 2 == 1 {
            format!("median of {n} runs")
        } else {
            format!("the worse of the middle two of {n} runs")
        };
        o.note(format!(
            "{which} ({}: {})",
            if latency { "p99 ms" } else { "deliveries/s" },
            shown.join(", ")
        ));
    }
    if let Some(before) = alone {
        compare(&mut o, before, alone_p99);
    }
    o
}

/// Notes how the nine healthy webhooks fared beside the odd one, against them alone.
fn compare(o: &mut Outcome, before: f64, before_p99: Option<f64>) {
    let Some(now) = o.deliveries_per_s else {
        return;
    };
    o.figure("healthy_deliveries_per_s_alone", before.round());
    o.figure(
        "healthy_rate_change_pct",
        ((now / before - 1.0) * 1000.0).round() / 10.0,
    );
    let p99 = o.latency_ms.map(|l| l.p99);
    if let Some(p) = before_p99 {
        o.figure("healthy_p99_ms_alone", p);
    }
    let fmt = |p: Option<f64>| p.map_or("?".into(), |p| format!("{p:.2} ms"));
    o.notes.insert(
        0,
        format!(
            "the nine healthy webhooks took {} deliveries/s, against {} alone ({}); p99 {} against {}",
            thousands(now.round() as u64),
            thousands(before.round() as u64),
            change(now, before),
            fmt(p99),
            fmt(before_p99)
        ),
    );
    // A run of a few hundred events is over before the webhooks' connections are warm.
    if let Some(secs) = o.last_delivery_s.filter(|s| *s < 1.0) {
        o.notes.insert(
            1,
            format!(
                "a run of {secs:.2} s is mostly start-up, so this comparison says little; use --events 10,000 or more"
            ),
        );
    }
}

fn figure(o: &Outcome, name: &str) -> Option<f64> {
    o.figures.get(name).and_then(Value::as_f64)
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[(v.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: f64, complete: bool) -> Outcome {
        let mut o = Outcome::new("burst");
        o.deliveries_per_s = Some(rate);
        o.complete = complete;
        o
    }

    #[test]
    fn the_median_run_stands_for_the_scenario_and_one_failure_fails_it() {
        let o = combine(vec![run(30.0, true), run(10.0, true), run(20.0, false)]);
        assert_eq!(o.deliveries_per_s, Some(20.0));
        assert!(!o.complete);
        assert_eq!(o.figures["runs"], 3);
        assert_eq!(combine(vec![run(5.0, true)]).figures.get("runs"), None);
    }

    /// Of an even number of runs, the worse middle one: the slower, or the higher p99.
    #[test]
    fn of_two_runs_the_worse_stands_for_the_scenario() {
        let o = combine(vec![run(30.0, true), run(10.0, true)]);
        assert_eq!(o.deliveries_per_s, Some(10.0));
        assert!(
            o.notes[0].starts_with("the worse of the middle two"),
            "{:?}",
            o.notes
        );
        let latency = |p99: f64| {
            let mut o = Outcome::new("latency");
            o.latency_ms = Some(super::super::report::Latency {
                p50: 0.5,
                p90: 0.8,
                p99,
                max: p99,
                samples: 100,
            });
            o.complete = true;
            o
        };
        let o = combine(vec![latency(1.0), latency(2.0)]);
        assert_eq!(o.latency_ms.map(|l| l.p99), Some(2.0));
    }

    #[test]
    fn comparisons_use_the_median_baseline() {
        let with_alone = |rate: f64, alone: f64| {
            let mut o = run(rate, true);
            o.figure("healthy_deliveries_per_s_alone", alone);
            o
        };
        let o = combine(vec![
            with_alone(90.0, 100.0),
            with_alone(95.0, 200.0),
            with_alone(80.0, 50.0),
        ]);
        assert_eq!(o.figures["healthy_deliveries_per_s_alone"], 100.0);
        assert_eq!(o.figures["healthy_rate_change_pct"], -10.0);
        assert!(o.notes[0].contains("-10.0%"), "{:?}", o.notes);
        let says_short = |o: &Outcome| o.notes.iter().any(|n| n.contains("mostly start-up"));
        assert!(!says_short(&o), "{:?}", o.notes);

        // A run shorter than a second is said to say little.
        let mut short = with_alone(90.0, 100.0);
        short.last_delivery_s = Some(0.2);
        let o = combine(vec![short]);
        assert!(says_short(&o), "{:?}", o.notes);
    }
}
