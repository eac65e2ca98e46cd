//! The database goes away under load and comes back. Herald must never answer `202` for an event
//! it did not store: while PostgreSQL is unreachable, ingest answers `503` with `Retry-After`;
//! afterwards ingest and delivery resume by themselves, and every accepted event arrives.
//!
//! Stopping the shared PostgreSQL server would disturb every other test running beside this one,
//! so the test puts a TCP proxy it controls between Herald and PostgreSQL and cuts that: every
//! connection through it closes and new ones are refused, which is what Herald sees when the
//! server or the network goes away. Skipped (with a notice) without `HERALD_TEST_DATABASE_URL`.
//!
//! The embedded database's disk filling up is tested on a small tmpfs mounted for the test
//! (which needs root, as CI runs; skipped with a notice otherwise).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use crate::crash::Server;
use crate::helpers::{ADMIN_TOKEN, http_client};
use crate::pg::{Proxy, TestDatabase, TimingReceiver, server_address, via};

/// What the producers saw.
#[derive(Default)]
struct Answers {
    accepted: HashSet<String>,
    /// 503s, and how many of them said when to try again.
    unavailable: usize,
    with_retry_after: usize,
    /// 503s that said to send the events again with the same ids.
    saying_same_id: usize,
    /// Anything else: status and body.
    other: Vec<String>,
}

/// A node whose database is reached through a proxy the test can cut, with an organization and
/// a webhook (`extra` fields) delivering to `rx`.
struct Behind {
    db: TestDatabase,
    proxy: Proxy,
    node: Server,
    org: String,
    _dir: tempfile::TempDir,
}

/// The value of one series in the node's `/metrics` (the name with its labels, as printed).
async fn metric(node: &Server, series: &str) -> Option<String> {
    let text = http_client()
        .get(format!("{}/metrics", node.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

/// `None` (with a notice) without `HERALD_TEST_DATABASE_URL`.
async fn node_behind_a_proxy(
    test: &str,
    lease_seconds: u32,
    rx: &TimingReceiver,
    extra: serde_json::Value,
) -> Option<Behind> {
    let db = TestDatabase::create(test).await?;
    let proxy = Proxy::start(server_address(&db.url)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = Server::start_with(
        dir.path(),
        &[
            ("HERALD_DATABASE_URL", via(&db.url, proxy.addr)),
            ("HERALD_LEASE_SECONDS", lease_seconds.to_string()),
        ],
    )
    .await;
    let org = node.org_with_webhook(&rx.url(), extra).await;
    Some(Behind {
        db,
        proxy,
        node,
        org,
        _dir: dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_while_the_database_is_away_and_everything_resumes() {
    let _turn = crate::helpers::heavy_turn().await;
    let rx = TimingReceiver::start(Duration::from_millis(2)).await;
    // Bound whole: a part left out of a pattern would be dropped at once (the database, the
    // data directory).
    let Some(behind) = node_behind_a_proxy("the database outage test", 10, &rx, json!({})).await
    else {
        return;
    };
    let Behind {
        db,
        proxy,
        node,
        org,
        ..
    } = &behind;
    let http = http_client();

    // Producers post until told to stop.
    let answers = Arc::new(Mutex::new(Answers::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (http, base, org, answers, stop) = (
            http.clone(),
            node.base.clone(),
            org.clone(),
            answers.clone(),
            stop.clone(),
        );
        producers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("o-{p}-{i}");
                i += 1;
                let event =
                    json!({ "type": "user.created", "id": id, "data": { "user": { "id": id } } });
                let r = http
                    .post(format!("{base}/v1/orgs/{org}/events"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&event)
                    .send()
                    .await
                    .expect("Herald itself stays up");
                let status = r.status();
                let retry_after = r.headers().contains_key("retry-after");
                let body = if status == StatusCode::ACCEPTED {
                    String::new()
                } else {
                    r.text().await.unwrap_or_default()
                };
                let backoff = {
                    let mut a = answers.lock().unwrap();
                    match status {
                        StatusCode::ACCEPTED => {
                            a.accepted.insert(id);
                            false
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            a.unavailable += 1;
                            a.with_retry_after += usize::from(retry_after);
                            a.saying_same_id += usize::from(body.contains("same id"));
                            true
                        }
                        other => {
                            a.other.push(format!("{other}: {body}"));
                            false
                        }
                    }
                };
                if backoff {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let accepted = || answers.lock().unwrap().accepted.len();
    let unavailable = || answers.lock().unwrap().unavailable;

    // Under load: the database goes away for a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted() < 200 {
        assert!(Instant::now() < deadline, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(30);
    while unavailable() < 20 {
        assert!(
            Instant::now() < deadline,
            "ingest never answered 503 while the database was away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage lasts a few seconds
    assert_eq!(
        metric(node, "herald_database_up").await.as_deref(),
        Some("0")
    );
    let five_hundreds = metric(node, "herald_http_responses_total{class=\"5xx\"}")
        .await
        .and_then(|v| v.parse::<usize>().ok());
    assert!(
        five_hundreds >= Some(20),
        "the 503s are counted: {five_hundreds:?}"
    );
    let accepted_before_restore = accepted();
    proxy.restore();

    // It comes back: ingest accepts again without a restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted() < accepted_before_restore + 200 {
        assert!(
            Instant::now() < deadline,
            "ingest did not resume after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(node, "herald_database_up").await.as_deref(),
        Some("1")
    );
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        p.await.unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert!(
        answers.other.is_empty(),
        "only 202 or 503: {:?}",
        &answers.other[..answers.other.len().min(5)]
    );
    assert_eq!(
        answers.with_retry_after, answers.unavailable,
        "every 503 says when to try again"
    );
    assert_eq!(
        answers.saying_same_id, answers.unavailable,
        "every 503 says to send the events again with their ids (they may have been stored)"
    );

    // Every 202 was stored ...
    let client = db.connect().await;
    let stored: HashSet<String> = client
        .query("SELECT id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<_> = answers.accepted.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} events were answered 202 but not stored, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // ... and arrives (delivery resumed by itself; what was in flight comes back after its lease).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let arrived: HashSet<String> = rx.visits().into_iter().map(|v| v.key).collect();
        let missing = answers.accepted.difference(&arrived).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} accepted events never arrived",
            answers.accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    crate::pg::assert_never_at_once(&rx.repeats());
    // The outage is a line or two in the log, not one per refused request.
    let said = node
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("the database is unavailable: answering 503"))
        .count();
    assert!(
        (1..=3).contains(&said),
        "{said} lines for {} refused requests",
        answers.unavailable
    );
    eprintln!(
        "outage: {} events accepted, {} answered 503 while the database was away, {} deliveries repeated",
        answers.accepted.len(),
        answers.unavailable,
        rx.repeats().len()
    );
}

/// While the database is away no attempt starts: its outcome could not be stored, and the
/// delivery would be sent again once its lease ended (a duplicate for the receiver). The
/// attempts already in flight keep their outcomes until the database is back, for as long as
/// their leases last (here past the 30 s a first version kept them), and every delivery is
/// then made exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_pause_while_the_database_is_away_and_none_is_sent_again() {
    let _turn = crate::helpers::heavy_turn().await;
    let rx = TimingReceiver::start(Duration::from_millis(100)).await;
    let Some(behind) = node_behind_a_proxy(
        "the outcomes-kept test",
        90,
        &rx,
        json!({ "timeout_ms": 2000 }),
    )
    .await
    else {
        return;
    };
    let Behind {
        db,
        proxy,
        node,
        org,
        ..
    } = &behind;
    let http = http_client();
    let post = |path: String, body: serde_json::Value| {
        http.post(format!("{}{path}", node.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    // A backlog that takes several seconds to deliver (16 at a time, 100 ms each).
    let events: Vec<serde_json::Value> = (0..1000)
        .map(|i| json!({ "type": "user.created", "id": format!("b-{i}"), "data": { "user": { "id": format!("b-{i}") } } }))
        .collect();
    let stored = post(format!("/v1/orgs/{org}/events"), json!(events))
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.visits().len() < 30 {
        assert!(Instant::now() < deadline, "delivery did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    let cut_at = Instant::now();
    // Longer than the 30 s outcomes were once kept for.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let visits = rx.visits();
    assert_eq!(
        metric(node, "herald_attempts_paused").await.as_deref(),
        Some("1"),
        "/metrics says attempts wait"
    );
    proxy.restore();
    // The attempts in flight when it went finish; the first outcome refused pauses the rest.
    let late: Vec<_> = visits
        .iter()
        .filter(|v| v.started > cut_at + Duration::from_secs(2))
        .collect();
    assert!(
        late.is_empty(),
        "{} requests started while the database was away ({} in all before it came back)",
        late.len(),
        visits.len()
    );
    assert!(visits.len() < 900, "the backlog was not waiting");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let arrived: HashSet<String> = rx.visits().into_iter().map(|v| v.key).collect();
        if arrived.len() == 1000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 1000 arrived",
            arrived.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every outcome was stored, those of the attempts in flight during the outage too: none is
    // left pending, to be sent again when its lease ends.
    crate::pg::wait_until_none_pending(db, Duration::from_secs(20)).await;
    let repeats = rx.repeats();
    assert!(
        repeats.is_empty(),
        "{} deliveries sent twice",
        repeats.len()
    );
    let log = node.log.lock().unwrap().join("\n");
    assert!(
        log.contains("the database is not storing attempt outcomes")
            && log.contains("the database stores attempt outcomes again"),
        "the pause and the resumption are each said once"
    );
}

/// A file system of `MiB` megabytes of memory (tmpfs) mounted for one test, unmounted when
/// dropped. Mounting needs root (as CI and the development machines run); elsewhere `mount`
/// returns `None`.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        mounted.success().then(|| Self {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }

    /// Writes a file until the disk has no room left; the file is returned, to remove.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A disk that fills up: posts are answered `503` saying to send again with the same ids,
/// `/readyz` says the disk may be full, the log says so once (not once per request), and once
/// room is made new events are taken and every acknowledged one is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_503_said_once_and_loses_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount(48) else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let rx = crate::helpers::TestReceiver::start().await;
    let server = Server::start_with(&disk.path.join("data"), &[]).await;
    let org = server.org_with_sink(&rx).await;
    let http = http_client();
    let post = |path: String, body: serde_json::Value| {
        http.post(format!("{}{path}", server.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };

    // Events stored before the disk fills, some of them still being delivered when it does.
    rx.answer_by_default(crate::helpers::Reply::status(200).after(Duration::from_millis(5)));
    let mut answers = Answers::default();
    for i in 0..10 {
        let events: Vec<_> = (0..20)
            .map(|j| format!("before{i}-{j}"))
            .map(|id| json!({ "type": "user.created", "id": id, "data": { "user": { "id": id } } }))
            .collect();
        let resp = post(format!("/v1/orgs/{org}/events"), json!(events))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        answers
            .accepted
            .extend((0..20).map(|j| format!("before{i}-{j}")));
    }

    let filler = disk.fill();
    for i in 0..3000 {
        let ids: Vec<String> = (0..20).map(|j| format!("e{i}-{j}")).collect();
        let events: Vec<_> = ids
            .iter()
            .map(|id| json!({ "type": "user.created", "id": id, "data": { "user": { "id": id }, "pad": "x".repeat(500) } }))
            .collect();
        let resp = post(format!("/v1/orgs/{org}/events"), json!(events))
            .await
            .unwrap();
        match resp.status() {
            StatusCode::ACCEPTED => answers.accepted.extend(ids),
            StatusCode::SERVICE_UNAVAILABLE => {
                answers.unavailable += 1;
                let text = resp.text().await.unwrap();
                if text.contains("send them again") && text.contains("same id") {
                    answers.saying_same_id += 1;
                }
                if answers.unavailable == 20 {
                    break;
                }
            }
            other => answers
                .other
                .push(format!("{other}: {}", resp.text().await.unwrap())),
        }
    }
    assert!(answers.other.is_empty(), "{:?}", answers.other);
    assert_eq!(answers.unavailable, 20, "the disk never filled up");
    assert_eq!(answers.saying_same_id, 20);
    let ready = http
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().await.unwrap().contains("disk is full"));
    // An alert can see it too, though the database still answers reads.
    assert_eq!(
        metric(&server, "herald_database_writes_failing")
            .await
            .as_deref(),
        Some("1")
    );
    let said = |what: &str| {
        let log = server.log.lock().unwrap();
        log.iter().filter(|line| line.contains(what)).count()
    };
    // The log is read from the process's stderr as it comes: give the lines a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (said("a group commit failed") == 0 || said("answering 503") == 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(said("a group commit failed"), 1, "one line for 20 failures");
    assert_eq!(said("answering 503"), 1, "one line for 20 answers");
    assert!(said("not storing attempt outcomes") <= 1);

    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let event =
            json!({ "type": "user.created", "id": "after", "data": { "user": { "id": "after" } } });
        let resp = post(format!("/v1/orgs/{org}/events"), event).await.unwrap();
        if resp.status() == StatusCode::ACCEPTED {
            answers.accepted.insert("after".into());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused once room was made"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    crate::crash::wait_until_delivered(&rx, &answers.accepted, Duration::from_secs(60)).await;
    // And the log says it is over, once, when commits have gone through for a few seconds (a
    // full disk lets a small one through now and then).
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        if said("the database takes writes again") > 0 || Instant::now() > deadline {
            break;
        }
        let id = format!("settled-{n}");
        let event = json!({ "type": "user.created", "id": id, "data": { "user": { "id": id } } });
        post(format!("/v1/orgs/{org}/events"), event).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(said("the database takes writes again"), 1);
}

/// A node on a scratch database of its own, with an organization (its id); `None` without
/// `HERALD_TEST_DATABASE_URL`. The directory goes with the node.
async fn node_on_its_own_database(
    test: &str,
) -> Option<(TestDatabase, Server, tempfile::TempDir, String)> {
    let db = TestDatabase::create(test).await?;
    let dir = tempfile::tempdir().unwrap();
    let node = Server::start_with(dir.path(), &[("HERALD_DATABASE_URL", db.url.clone())]).await;
    let made = http_client()
        .post(format!("{}/v1/orgs", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "Acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::CREATED);
    let org = made.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    Some((db, node, dir, org))
}

/// A database emptied under a running node (dropped and created again, say): requests get the
/// `503` of a database that is away, and the log says what to do, not a bare `500`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_emptied_under_a_running_node_is_unavailable_and_said_so() {
    let Some((db, node, _dir, _)) = node_on_its_own_database("the emptied database test").await
    else {
        return;
    };
    let http = http_client();
    let orgs = format!("{}/v1/orgs", node.base);

    db.connect()
        .await
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .await
        .unwrap();
    let listed = http
        .get(&orgs)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = http
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = || {
        let log = node.log.lock().unwrap();
        log.iter()
            .any(|line| line.contains("Herald's tables are missing from this database"))
    };
    while !said() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said(), "{:?}", node.log.lock().unwrap());
}

/// A database that takes no writes (a failover to a standby looks like this) or cancels
/// Herald's statements (a `statement_timeout` set for its role) is away for Herald: `503` with
/// `Retry-After`, `/readyz` not ready, and the log says what to do. Both were `500`s, one log
/// line each, with `/readyz` ready: a load balancer kept sending, producers gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refusing_writes_is_unavailable_and_said_so() {
    let Some((db, node, _dir, org)) = node_on_its_own_database("the read-only database test").await
    else {
        return;
    };
    let http = http_client();
    let events = format!("{}/v1/orgs/{org}/events", node.base);
    let admin = db.connect().await;
    // New sessions get the setting: Herald's are ended, and its pool opens new ones.
    let set_and_reconnect = |setting: &'static str| {
        let admin = &admin;
        async move {
            admin
                .batch_execute(&format!(
                    "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {setting}', \
                     current_database()); END $$; \
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = 'herald'"
                ))
                .await
                .unwrap();
        }
    };
    let said = |words: &str| {
        node.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(words))
    };
    for (setting, words) in [
        (
            "SET default_transaction_read_only = on",
            "this database takes no writes",
        ),
        ("SET statement_timeout = 1", "a statement was cancelled"),
    ] {
        set_and_reconnect(setting).await;
        // The first request may meet a connection just ended (away as well); each is a `503`.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !said(words) && Instant::now() < deadline {
            let answer = http
                .post(&events)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }))
                .send()
                .await
                .unwrap();
            assert_eq!(
                answer.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{setting}"
            );
            assert!(answer.headers().contains_key("retry-after"), "{setting}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(said(words), "{setting}: {:?}", node.log.lock().unwrap());
        let ready = http
            .get(format!("{}/readyz", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "{setting}");
        set_and_reconnect("RESET ALL").await;
    }
    // Taking writes again, it stores events again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = http
            .post(&events)
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "type": "user.created", "data": { "user": { "id": "u2" } } }))
            .send()
            .await
            .unwrap();
        if answer.status() == StatusCode::ACCEPTED {
            break;
        }
        assert!(Instant::now() < deadline, "{}", answer.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cut off by the network (nothing answers, nothing is refused), the database holds a read for
/// the pool's 10 s: `/readyz` answers within its own 2 s all the same, so that a probe with a
/// short timeout hears why rather than nothing, and is ready again once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_answered_in_time_while_the_database_does_not_answer() {
    let rx = TimingReceiver::start(Duration::from_millis(1)).await;
    let Some(behind) = node_behind_a_proxy("the partition test", 10, &rx, json!({})).await else {
        return;
    };
    let ready = || async {
        let answer = http_client()
            .get(format!("{}/readyz", behind.node.base))
            .timeout(Duration::from_secs(6))
            .send()
            .await
            .expect("answered within 6 s");
        (answer.status(), answer.text().await.unwrap())
    };
    assert_eq!(ready().await.0, StatusCode::OK);
    behind.proxy.hang();
    let (status, body) = ready().await;
    assert!(
        status == StatusCode::SERVICE_UNAVAILABLE
            && body.contains("the database did not answer a read within 2 s"),
        "{status} {body}"
    );
    behind.proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready().await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An attempt that was waiting for room behind a slow one when the database went away waits
/// for its return too: the scheduler's failed read pauses attempts, and the pause is looked at
/// again once room comes (before, it started the moment the slow attempt was answered, with
/// no way to store its outcome, and was sent again after its lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_waiting_for_room_when_the_database_goes_away_waits_too() {
    // Slower than the scheduler's idle look (5 s): it notices the outage meanwhile.
    let slow = TimingReceiver::start(Duration::from_millis(6500)).await;
    let Some(db) = TestDatabase::create("the room-then-pause test").await else {
        return;
    };
    let proxy = Proxy::start(server_address(&db.url)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = Server::start_with(
        dir.path(),
        &[
            ("HERALD_DATABASE_URL", via(&db.url, proxy.addr)),
            ("HERALD_LEASE_SECONDS", "90".to_owned()),
            // One request at a time to the endpoint: the second waits for room.
            ("HERALD_ENDPOINT_CONCURRENCY", "1".to_owned()),
        ],
    )
    .await;
    let org = node
        .org_with_webhook(&slow.url(), json!({ "timeout_ms": 10000 }))
        .await;
    let events: Vec<serde_json::Value> = ["a", "b"]
        .iter()
        .map(|k| json!({ "type": "user.created", "id": k, "data": { "user": { "id": k } } }))
        .collect();
    let stored = http_client()
        .post(format!("{}/v1/orgs/{org}/events", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!(events))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::ACCEPTED);
    // The first attempt is out, the second waits for room.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    // Past the end of the first attempt, and of a second one started then.
    tokio::time::sleep(Duration::from_millis(13_500)).await;
    let during = slow.visits();
    proxy.restore();
    assert_eq!(
        during.len(),
        1,
        "the second attempt started while the database was away"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while slow.visits().len() < 2 {
        assert!(Instant::now() < deadline, "not everything arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::pg::wait_until_none_pending(&db, Duration::from_secs(30)).await;
    assert!(slow.repeats().is_empty(), "{:?}", slow.repeats());
}
