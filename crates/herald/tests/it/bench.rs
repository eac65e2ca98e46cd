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
    // What machine, and when: virtual machines name their processors alike.
    assert!(doc["written_at"].is_string(), "{doc:#}");
    assert!(doc["cpu_family_model"].is_string(), "{doc:#}");
    assert!(doc["memory_mib"].as_u64().is_some_and(|m| m > 0), "{doc:#}");
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
        &["--event-bytes", "2000", "--after-drain-secs", "1"],
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
    // backlog watched the server's memory for a second after the drain.
    let rss = |f: &str| by_name("backlog")["figures"][f].as_f64();
    assert!(
        rss("rss_drained_mib").is_some_and(|m| m > 0.0)
            && rss("rss_after_drain_mib").is_some_and(|m| m > 0.0),
        "{:#}",
        by_name("backlog")
    );
    // latency says how long this disk takes to make a write durable: the floor under its p50.
    let fsync = &by_name("latency")["figures"];
    assert!(
        fsync["disk_fsync_p50_ms"]
            .as_f64()
            .zip(fsync["disk_fsync_p99_ms"].as_f64())
            .is_some_and(|(p50, p99)| 0.0 < p50 && p50 <= p99),
        "{fsync:#}"
    );
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

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (name) state ppid …": the name may hold spaces, so read after its parenthesis.
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if after_name.split_whitespace().nth(1) == Some(pid.to_string().as_str()) {
            found.extend(
                entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok()),
            );
        }
    }
    found
}

/// Ctrl-C in the middle of a run stops the `herald serve` it started and removes the temporary
/// data directories: a benchmark interrupted by hand leaves no server running (which would skew
/// the next one) and no hundreds of megabytes behind.
#[test]
fn ctrl_c_stops_what_the_run_started_and_removes_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["bench", "--scenario", "backlog", "--backlog", "500000"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("HERALD_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the herald binary starts");
    let bench_pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let server = loop {
        let started = std::fs::read_dir(dir.path()).unwrap().count() > 0;
        if let Some(server) = children_of(bench_pid).first()
            && started
        {
            break *server;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bench started its server within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Should the bench leave it running, it is not left running after the test.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
            if !String::from_utf8_lossy(&cmdline).contains("herald") {
                return;
            }
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _server_guard = KillOnDrop(server);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sent = Command::new("kill")
        .args(["-INT", &bench_pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bench stops within 30 s of Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&format!("/proc/{server}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{server}/stat")).unwrap_or_default();
        if state
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server it started ({server}) is still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Against a running server (`--server`), each scenario's organization is deleted when it
/// ends, so that its webhooks do not retry towards a receiver that is gone; `--keep-orgs`
/// leaves it, history and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_server_each_scenario_cleans_up_unless_told_to_keep() {
    use crate::helpers::{ADMIN_TOKEN, TestApp};
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let orgs_after = |extra: &'static [&'static str]| {
        let (base, json) = (app.base.clone(), dir.path().join("server.json"));
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
                .args(["bench", "--scenario", "burst", "--events", "50"])
                .args(["--server", &base, "--admin-token", ADMIN_TOKEN])
                .args(extra)
                .arg("--json")
                .arg(&json)
                .env_remove("HERALD_LOG")
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
            assert_eq!(doc["scenarios"][0]["complete"], true, "{doc:#}");
        }
    };
    orgs_after(&[]).await;
    let (_, listed) = app.get("/v1/orgs").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "{listed}");
    orgs_after(&["--keep-orgs"]).await;
    let (_, listed) = app.get("/v1/orgs").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
}
