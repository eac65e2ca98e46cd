//! `herald bench` at a tiny size, run as the real binary with the same flags a person would use:
//! every scenario must still complete with every acknowledged event delivered. Benchmarks are not
//! timed tests, so no figure is checked here, only that nothing was lost.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const EVERY: [&str; 9] = [
    "burst",
    "batch",
    "latency",
    "fanout",
    "slow-endpoint",
    "failing-endpoint",
    "backlog",
    "restart",
    "relay",
];

fn bench(scenarios: &str, data_dir: &Path, json: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["bench", "--scenario", scenarios])
        .args(["--events", "200", "--backlog", "2000", "--duration", "1"])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--json")
        .arg(json)
        .env_remove("HERALD_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the herald binary starts")
}

/// Waits for a bench run and answers its scenarios from the JSON it wrote.
fn finish(child: Child, json: &Path) -> Vec<Value> {
    let out = child.wait_with_output().expect("the bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "herald bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("scenario") && stdout.contains("result"),
        "a table: {stdout}"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(json).expect("the JSON was written"))
        .expect("the JSON parses");
    doc["scenarios"].as_array().expect("scenarios").clone()
}

#[test]
fn every_scenario_runs_at_a_tiny_size_and_delivers_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let (rest_json, backlog_json) = (
        dir.path().join("rest.json"),
        dir.path().join("backlog.json"),
    );
    // `backlog` spends ~30 s waiting for the circuit breaker's probe once its endpoint is back, so
    // it runs beside the others rather than after them.
    // Its events are padded to 2 KB, so that padded events are proven to arrive too (and a
    // request of them to fit under the body limit).
    let backlog = bench(
        "backlog",
        dir.path(),
        &backlog_json,
        &["--event-bytes", "2000"],
    );
    let others: Vec<&str> = EVERY.into_iter().filter(|s| *s != "backlog").collect();
    // The others send ids in no particular order, as UUIDs are.
    let rest = bench(&others.join(","), dir.path(), &rest_json, &["--random-ids"]);
    let mut scenarios = finish(rest, &rest_json);
    scenarios.extend(finish(backlog, &backlog_json));

    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["scenario"].as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    let mut every = EVERY.to_vec();
    every.sort_unstable();
    assert_eq!(sorted, every, "each scenario ran once");
    for s in &scenarios {
        let name = &s["scenario"];
        assert_eq!(s["complete"], true, "{name} is complete: {s:#}");
        assert!(
            s["events"].as_u64().unwrap() > 0,
            "{name} sent events: {s:#}"
        );
        assert_eq!(s["deliveries"], s["expected_deliveries"], "{name}: {s:#}");
    }
    let by_name = |n: &str| scenarios.iter().find(|s| s["scenario"] == n).unwrap();
    assert_eq!(
        by_name("fanout")["deliveries"],
        2000,
        "200 events to 10 webhooks"
    );
    assert_eq!(by_name("restart")["figures"]["lost"], 0);
    // burst and relay ran in the same invocation, so burst says what share of the relay it got.
    let share = &by_name("burst")["figures"]["share_of_relay"];
    assert!(share.as_f64().is_some_and(|s| s > 0.0), "{share}");
    assert_eq!(by_name("backlog")["figures"]["pending_when_up"], 2000);
    // batch and backlog say how many requests in flight their webhook was allowed at the end:
    // batch never saw overload (so at least the starting 16); backlog's 503s may have cut it.
    let limit = |n: &str| by_name(n)["figures"]["concurrency_limit"].as_u64();
    assert!(
        limit("batch").is_some_and(|l| (16..=64).contains(&l)),
        "{:#}",
        by_name("batch")
    );
    assert!(
        limit("backlog").is_some_and(|l| (1..=64).contains(&l)),
        "{:#}",
        by_name("backlog")
    );
}
