//! Durability: the real `herald` binary is killed with SIGKILL under load and restarted; every
//! event that got a 202 must still be delivered.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{ADMIN_TOKEN, Reply, TestReceiver, http_client};
use crate::pg::TestDatabase;

/// A `herald serve` process on a port of its own.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    /// Every line the server logged.
    pub(crate) log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[]).await
    }

    /// Starts the binary with these environment variables besides the usual ones (the admin
    /// token among them replaces the tests' own).
    pub(crate) async fn start_with(data_dir: &Path, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_DATA_DIR", data_dir)
            .env("HERALD_LOG", "info")
            .env("HERALD_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the herald binary starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let read_address = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("address=").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_owned();
                }
            }
            panic!("the server exited before it listened");
        };
        let addr = tokio::time::timeout(Duration::from_secs(20), read_address)
            .await
            .expect("the server listens within 20 s");
        // Keep reading its log so it never blocks on a full pipe.
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }
}

impl Server {
    /// `GET path` as the admin: the JSON answered.
    pub(crate) async fn get_json(&self, path: &str) -> serde_json::Value {
        http_client()
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Posts `body` as the admin; answers the JSON answer.
    pub(crate) async fn post_json(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        http_client()
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates an organization with one webhook, `sink`, delivering to `rx`'s `/sink`; answers
    /// the organization's id.
    pub(crate) async fn org_with_sink(&self, rx: &TestReceiver) -> String {
        self.org_with_webhook(&rx.url("/sink"), json!({})).await
    }

    /// Creates an organization with one webhook, `sink`, delivering to `url`, with the fields
    /// of `extra` added to its definition; answers the organization's id.
    pub(crate) async fn org_with_webhook(&self, url: &str, extra: serde_json::Value) -> String {
        let http = http_client();
        let org = self.post_json("/v1/orgs", json!({ "name": "Acme" })).await;
        let org = org["id"].as_str().unwrap().to_owned();
        let mut webhook = json!({ "name": "sink", "url": url });
        webhook
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let resp = http
            .post(format!("{}/v1/orgs/{org}/webhooks", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&webhook)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        org
    }
}

/// Waits until every event of `acked` (by its `data.user.id`) reached `rx`'s `/sink`, failing
/// after `within`.
pub(crate) async fn wait_until_delivered(
    rx: &TestReceiver,
    acked: &HashSet<String>,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let delivered: HashSet<String> = rx
            .received_on("/sink")
            .iter()
            .map(|r| r.json()["data"]["user"]["id"].as_str().unwrap().to_owned())
            .collect();
        let missing = acked.difference(&delivered).count();
        if missing == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} acknowledged events were never delivered",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_is_delivered_after_a_sigkill() {
    let rx = TestReceiver::start().await;
    every_acknowledged_event_arrives_after_a_sigkill(&rx, &[]).await;
}

/// With room for 100 deliveries in memory (the least allowed) and an endpoint that takes
/// 20 ms, most deliveries are spilled to the store when the server dies; after the restart it
/// must find them again rather than wait for their fallback time (five minutes away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_spilled_for_lack_of_memory_are_delivered_after_a_sigkill() {
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(200).after(Duration::from_millis(20)));
    let env = [("HERALD_MAX_DELIVERIES_IN_MEMORY", "100".to_owned())];
    every_acknowledged_event_arrives_after_a_sigkill(&rx, &env).await;
}

/// Eight producers post until the server is killed; after a restart with the same data, every
/// acknowledged event reaches `rx` within a minute.
async fn every_acknowledged_event_arrives_after_a_sigkill(
    rx: &TestReceiver,
    env: &[(&str, String)],
) {
    let _turn = crate::helpers::heavy_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let mut server = Server::start_with(dir.path(), env).await;
    let org = server.org_with_sink(rx).await;

    // Eight producers post as fast as they can until the server dies under them.
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut producers = Vec::new();
    for p in 0..8 {
        let (http, base, org, acked) = (
            http.clone(),
            server.base.clone(),
            org.clone(),
            acked.clone(),
        );
        producers.push(tokio::spawn(async move {
            for i in 0..5000 {
                let id = format!("k-{p}-{i}");
                let event =
                    json!({ "type": "user.created", "id": id, "data": { "user": { "id": id } } });
                match http
                    .post(format!("{base}/v1/orgs/{org}/events"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&event)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        acked.lock().unwrap().insert(id);
                    }
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.start_kill().expect("SIGKILL");
    server.child.wait().await.unwrap();
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the load ran before the kill ({} acknowledged)",
        acked.len()
    );

    let _restarted = Server::start_with(dir.path(), env).await;
    wait_until_delivered(rx, &acked, Duration::from_secs(60)).await;
}

/// What `herald serve` on `data_dir`, without an admin token of its own, said and answered:
/// for a server expected to refuse to start (it fails the test if it runs for 20 s).
async fn refused_serve(data_dir: &Path) -> std::process::Output {
    let serve = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATA_DIR", data_dir)
        .env_remove("HERALD_ADMIN_TOKEN")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), serve)
        .await
        .expect("the server stops by itself")
        .unwrap()
}

/// Sends the process `pid` the signal `name` (`HUP`, `TERM`).
fn signal(pid: &str, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

/// Ctrl-C waits for the requests in flight (up to 10 s), saying how many; a second one stops at
/// once, and what it cut off is sent again after the next start (where a dashboard session
/// started before goes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_stops_at_once_and_loses_nothing() {
    let _turn = crate::helpers::heavy_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(200).after(Duration::from_secs(30))]);
    rx.answer_by_default(Reply::status(200));
    let mut server = Server::start(dir.path()).await;
    let org = server
        .org_with_webhook(&rx.url("/sink"), json!({ "timeout_ms": 20000 }))
        .await;
    let posted = http_client()
        .post(format!("{}/v1/orgs/{org}/events", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "type": "user.created", "id": "e1", "data": { "user": { "id": "u1" } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::ACCEPTED);
    rx.wait_for("/sink", 1, Duration::from_secs(10)).await;
    // Someone signed in to the dashboard.
    let mut visitor = crate::dashboard::Visitor::at(&server.base);
    assert_eq!(
        visitor.sign_in(ADMIN_TOKEN).await.status,
        StatusCode::SEE_OTHER
    );
    let pid = server.child.id().unwrap().to_string();
    signal(&pid, "INT");
    let said = |text: &str| server.log.lock().unwrap().iter().any(|l| l.contains(text));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !said("waiting up to 10 s for the requests in flight") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no word of the wait"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(said("requests=1"), "{:?}", server.log.lock().unwrap());
    signal(&pid, "INT");
    let status = tokio::time::timeout(Duration::from_secs(5), server.child.wait())
        .await
        .expect("a second Ctrl-C stops the server at once, not after the 10 s wait")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    let again = Server::start(dir.path()).await;
    rx.wait_for("/sink", 2, Duration::from_secs(10)).await;
    // Their session outlived the restart.
    let page = visitor.on(&again.base).get(&format!("/orgs/{org}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.location);
}

/// A stop whose grace (`HERALD_STOP_GRACE_SECONDS`) runs out cuts off the requests still out:
/// each is kept in the history as an attempt (`interrupted`: the endpoint may have it), and its
/// delivery goes again at the next start without spending a retry. The grace is the whole
/// stop's: a request still arriving at the API takes from it (the two waits one after the
/// other took 10 s more than the setting, past what whatever stops Herald was told).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_stop_cuts_off_is_kept_in_the_history_and_spends_no_retry() {
    let _turn = crate::helpers::heavy_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script([
        Reply::status(200).after(Duration::from_secs(30)),
        Reply::status(500),
    ]);
    let grace = [("HERALD_STOP_GRACE_SECONDS", "2".to_owned())];
    let mut server = Server::start_with(dir.path(), &grace).await;
    let org = server
        .org_with_webhook(
            &rx.url("/sink"),
            json!({ "timeout_ms": 20000, "retry_schedule": [0, 3600] }),
        )
        .await;
    let event = json!({ "type": "user.created", "id": "e1", "data": { "user": { "id": "u1" } } });
    server
        .post_json(&format!("/v1/orgs/{org}/events"), event)
        .await;
    rx.wait_for("/sink", 1, Duration::from_secs(10)).await;
    // A producer still sending its request's body, slowly.
    let mut slow = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut slow,
        format!(
            "POST /v1/orgs/{org}/events HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer \
             {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped_at = tokio::time::Instant::now();
    signal(&server.child.id().unwrap().to_string(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("the server exits once the stop's grace (2 s, not 10) has run out")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // 2 s and the recording; the waits one after the other took 12 s and more.
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(8), "{took:?}");
    let said = |text: &str| server.log.lock().unwrap().iter().any(|l| l.contains(text));
    assert!(
        said("waiting up to 2 s for the requests in progress")
            && said("requests still in progress after 2 s of shutdown")
            && said("for the requests in flight to be answered")
            && said("recorded the requests the stop cut off")
            && said("deliveries=1")
            // Recorded, so given back already: not given back (and counted) twice.
            && !said("gave the deliveries whose attempts the stop cut off back"),
        "{:?}",
        server.log.lock().unwrap()
    );

    // Sent again at the next start; the endpoint fails it, and one retry is still left.
    let again = Server::start(dir.path()).await;
    rx.wait_for("/sink", 2, Duration::from_secs(10)).await;
    let hooks = again.get_json(&format!("/v1/orgs/{org}/webhooks")).await;
    let hook = hooks["data"][0]["id"].as_str().unwrap();
    let list = again
        .get_json(&format!("/v1/orgs/{org}/webhooks/{hook}/deliveries"))
        .await;
    let delivery = list["data"][0]["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let d = loop {
        let d = again
            .get_json(&format!("/v1/orgs/{org}/deliveries/{delivery}"))
            .await;
        if d["attempt_count"] == 2 {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["error"], "interrupted", "{d}");
    assert!(attempts[0]["status"].is_null(), "{d}");
    assert_eq!(attempts[1]["status"], 500, "{d}");
    assert_eq!(d["state"], "pending", "its retry is left: {d}");
    assert!(d["next_attempt_at"].is_string(), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_what_is_in_flight_and_nothing_is_lost_doubled_or_logged() {
    let _turn = crate::helpers::heavy_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(200).after(Duration::from_millis(300)));
    let http = http_client();
    let mut server = Server::start(dir.path()).await;
    let call = |base: &str, path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let json_of =
        |r: reqwest::Response| async move { r.json::<serde_json::Value>().await.unwrap() };

    let org = json_of(
        call(&server.base, "/v1/orgs", json!({ "name": "Acme" }))
            .await
            .unwrap(),
    )
    .await;
    let org = org["id"].as_str().unwrap().to_owned();
    let key = json_of(
        call(
            &server.base,
            &format!("/v1/orgs/{org}/api-keys"),
            json!({ "name": "ci" }),
        )
        .await
        .unwrap(),
    )
    .await;
    let hook = json_of(
        call(
            &server.base,
            &format!("/v1/orgs/{org}/webhooks"),
            json!({ "name": "sink", "url": rx.url("/sink") }),
        )
        .await
        .unwrap(),
    )
    .await;
    let hook_id = hook["id"].as_str().unwrap();
    let rotated = json_of(
        call(
            &server.base,
            &format!("/v1/orgs/{org}/webhooks/{hook_id}/rotate-secret"),
            json!({}),
        )
        .await
        .unwrap(),
    )
    .await;
    // A change, and a sign-in with a wrong token: logged, without what they carried.
    let changed = http
        .patch(format!("{}/v1/orgs/{org}/webhooks/{hook_id}", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "sink 2", "headers": { "X-Api-Token": "a-header-credential" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let refused = http
        .post(format!("{}/login", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=a-mistyped-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // Switched off and on: one line each, with the organization, and no "changed" beside them.
    for active in [false, true] {
        let switched = http
            .patch(format!("{}/v1/orgs/{org}/webhooks/{hook_id}", server.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "active": active }))
            .send()
            .await
            .unwrap();
        assert_eq!(switched.status(), StatusCode::OK);
    }
    let registered = call(
        &server.base,
        &format!("/v1/orgs/{org}/event-types"),
        json!({ "name": "invoice.paid", "channel": "billing" }),
    )
    .await
    .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let secrets = [
        ADMIN_TOKEN.to_owned(),
        key["key"].as_str().unwrap().to_owned(),
        hook["secret"].as_str().unwrap().to_owned(),
        rotated["secret"].as_str().unwrap().to_owned(),
        "a-header-credential".to_owned(),
        "a-mistyped-admin-token".to_owned(),
    ];

    let events: Vec<_> = (0..40)
        .map(|i| json!({ "type": "user.created", "id": format!("t-{i}"), "data": { "user": { "id": format!("t-{i}") } } }))
        .collect();
    let resp = call(
        &server.base,
        &format!("/v1/orgs/{org}/events"),
        json!(events),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    rx.wait_for("/sink", 5, Duration::from_secs(10)).await;

    // A hang-up is answered with a line saying settings are read only at start; the server
    // goes on.
    let pid = server.child.id().unwrap().to_string();
    signal(&pid, "HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("SIGHUP received: Herald reads its settings only when it starts"))
    {
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP unanswered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.child.try_wait().unwrap().is_none(), "still running");

    signal(&pid, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("the server exits within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "a clean exit: {status:?}");
    // The write-ahead log was moved into herald.db as the server stopped: a copy of that file
    // alone, made now, holds every event.
    let wal = std::fs::metadata(dir.path().join("herald.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "herald.db-wal is emptied");
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("herald.db"), copy.path().join("herald.db")).unwrap();
    let copied: i64 = rusqlite::Connection::open(copy.path().join("herald.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM events WHERE id LIKE 't-%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(copied, 40);
    let first_log = server.log.lock().unwrap().clone();
    for event in [
        "shutting down",
        "API key created",
        "webhook secret rotated",
        "webhook changed",
        r#"fields=["name", "headers"]"#,
        "dashboard sign-in refused",
        format!("webhook disabled org={org} webhook={hook_id} active=false").as_str(),
        format!("webhook enabled org={org} webhook={hook_id} active=true").as_str(),
        "event type registered",
        // How the node is set up, once at start.
        "secrets_at_rest=\"plain (set HERALD_ENCRYPTION_KEY to encrypt)\" retention_days=\"30\" disable_after_hours=120",
        // At most 16 of the 40 were in flight (the webhook's first limit): the rest is given
        // back, and said once.
        "gave the deliveries queued here back to the store",
    ] {
        assert!(
            first_log.iter().any(|l| l.contains(event)),
            "'{event}' is logged: {first_log:#?}"
        );
    }
    assert!(
        !first_log.iter().any(|l| l.contains(r#"fields=["active"]"#)),
        "{first_log:#?}"
    );

    let restarted = Server::start(dir.path()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let delivered: Vec<String> = rx
            .received_on("/sink")
            .iter()
            .map(|r| r.json()["data"]["user"]["id"].as_str().unwrap().to_owned())
            .collect();
        let unique: HashSet<&String> = delivered.iter().collect();
        if unique.len() == 40 {
            assert_eq!(
                delivered.len(),
                40,
                "every event exactly once, none doubled by the shutdown"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 40 arrived",
            unique.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the restarted server record its last outcomes, then check every log line of both runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let all_logs: Vec<String> = first_log
        .into_iter()
        .chain(restarted.log.lock().unwrap().iter().cloned())
        .collect();
    assert!(all_logs.len() > 3, "the server logged");
    for secret in &secrets {
        assert!(
            !all_logs.iter().any(|l| l.contains(secret.as_str())),
            "a secret appeared in the log"
        );
    }
}

/// A lease shorter than the longest webhook timeout allows is said at start-up, with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_too_short_for_long_timeouts_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &[("HERALD_LEASE_SECONDS", "10".into())]).await;
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l.contains("HERALD_LEASE_SECONDS is under 62") && l.contains("raise it")),
        "{log:#?}"
    );
}

/// A data directory whose database was deleted (its write-ahead log left behind) starts an
/// empty database, but says so first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_gone_from_its_data_directory_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start(dir.path()).await;
    assert!(dir.path().join("herald.db-wal").exists());
    first.child.kill().await.unwrap();
    let said = |server: &Server| {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("herald.db is gone"))
    };
    assert!(!said(&first));
    std::fs::remove_file(dir.path().join("herald.db")).unwrap();
    let second = Server::start(dir.path()).await;
    assert!(said(&second), "{:#?}", second.log.lock().unwrap());
}

/// A Herald older than its database: on SQLite (a downgrade: one node owns the file) it is
/// refused, saying what to do; on PostgreSQL (an old node left behind during a rolling
/// upgrade) it runs, but says so rather than pass for up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_a_newer_herald_is_refused_or_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let migrate = |database: Option<String>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("migrate")
            .env("HERALD_DATA_DIR", dir.path())
            .env("HERALD_LOG", "info")
            .kill_on_drop(true);
        if let Some(url) = database {
            command.env("HERALD_DATABASE_URL", url);
        }
        command.output()
    };
    let newer = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'from_the_future', 0)";
    let warned = |out: &std::process::Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr.contains("migrated by a newer Herald") && stderr.contains("schema=999")
    };

    let first = migrate(None).await.unwrap();
    assert!(!warned(&first));
    let db = rusqlite::Connection::open(dir.path().join("herald.db")).unwrap();
    db.execute(newer, []).unwrap();
    drop(db);
    let refused = migrate(None).await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("migrated by a newer Herald (schema version 999")
            && stderr.contains("restore the backup taken before the upgrade")
            // The refusal is the message, not the cause of a "storage failed".
            && !stderr.contains("storage failed"),
        "{stderr}"
    );

    let Some(pg) = TestDatabase::create("the newer schema test").await else {
        return;
    };
    let first = migrate(Some(pg.url.clone())).await.unwrap();
    assert!(!warned(&first));
    // An empty database is said to have been given its tables, not to have been up to date.
    let said = String::from_utf8_lossy(&first.stdout);
    // What to check is the URL: the data directory plays no part on PostgreSQL.
    assert!(
        said.contains("held no Herald tables: created them")
            && said.contains("check --database-url")
            && !said.contains("--data-dir"),
        "{said}"
    );
    let again = migrate(Some(pg.url.clone())).await.unwrap();
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains("is at the current schema") && !said.contains("created"),
        "{said}"
    );
    // A server whose autovacuum is off is said to be one (its tables would grow for ever); the
    // test servers' setting decides which way this is checked.
    let autovacuum: String = pg
        .connect()
        .await
        .query_one("SHOW autovacuum", &[])
        .await
        .unwrap()
        .get(0);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(
        stderr.contains("autovacuum is off"),
        autovacuum == "off",
        "{stderr}"
    );
    pg.connect().await.batch_execute(newer).await.unwrap();
    assert!(warned(&migrate(Some(pg.url.clone())).await.unwrap()));
}

/// As `psql` does, Herald takes what `HERALD_DATABASE_URL` leaves out from libpq's variables:
/// `postgres://` alone and `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE` name the database
/// migrated; a variable's bad value is traced to it; one Herald does not read gets a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_named_by_libpqs_variables_is_the_one_migrated() {
    let Some(pg) = TestDatabase::create("the libpq variables test").await else {
        return;
    };
    let config: tokio_postgres::Config = pg.url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(name) => name.clone(),
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    let mut variables = vec![
        ("PGHOST", host),
        (
            "PGPORT",
            config.get_ports().first().unwrap_or(&5432).to_string(),
        ),
        ("PGUSER", config.get_user().unwrap().to_owned()),
        ("PGDATABASE", config.get_dbname().unwrap().to_owned()),
    ];
    if let Some(password) = config.get_password() {
        variables.push(("PGPASSWORD", String::from_utf8(password.to_vec()).unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let migrate = |extra: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("migrate")
            .env("HERALD_DATA_DIR", dir.path())
            .env("HERALD_DATABASE_URL", "postgres://")
            .env_remove("PGSERVICE")
            .envs(variables.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().copied())
            .kill_on_drop(true);
        command.output()
    };
    let out = migrate(&[("PGSERVICE", "prod")]).await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("The database postgres:// (with PGHOST, PGPORT, PGDATABASE, PGUSER"),
        "{stdout}"
    );
    assert!(stderr.contains("PGSERVICE is set and not read"), "{stderr}");
    let versions: i64 = pg
        .connect()
        .await
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert!(versions > 10, "{versions}");

    let out = migrate(&[("PGPORT", "five")]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`port`")
            && stderr.contains("completed from the environment's")
            && stderr.contains("PGPORT"),
        "{stderr}"
    );
}

/// A start that fails writes nothing a later start would pass off as already shown: not the
/// admin token (only the busy address or the database's own reason is said). Before, a failed
/// start wrote a token, the next one said only "using the admin token kept in …", and the CLI
/// picked it up against a server with a configured token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_writes_no_admin_token() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let serve = |envs: Vec<(&'static str, String)>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("serve")
            .env("HERALD_DATA_DIR", dir.path())
            .env_remove("HERALD_ADMIN_TOKEN")
            .env_remove("HERALD_DATABASE_URL")
            .kill_on_drop(true);
        for (k, v) in envs {
            command.env(k, v);
        }
        async move {
            let out = tokio::time::timeout(Duration::from_secs(30), command.output())
                .await
                .expect("the server stops by itself")
                .unwrap();
            assert!(!out.status.success());
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    let stderr = serve(vec![("HERALD_LISTEN", busy.clone())]).await;
    assert!(
        stderr.contains(&format!("could not listen on {busy}")),
        "{stderr}"
    );
    assert!(!dir.path().join("admin-token").exists());
    // PostgreSQL's own reason for refusing, not only "storage failed": a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let stderr = serve(vec![
        ("HERALD_LISTEN", "127.0.0.1:0".into()),
        (
            "HERALD_DATABASE_URL",
            format!("postgres://herald@127.0.0.1:{port}/herald"),
        ),
    ])
    .await;
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert!(!dir.path().join("admin-token").exists());
    // A mistake in the settings the README has newcomers set: named, and nothing written.
    let stderr = serve(vec![
        ("HERALD_LISTEN", "127.0.0.1:0".into()),
        (
            "HERALD_ALLOW_PRIVATE_NETWORKS",
            "127.0.0.0/8 10.0.0.0/8".into(),
        ),
    ])
    .await;
    assert!(stderr.contains("separate several with commas"), "{stderr}");
    assert!(!dir.path().join("herald.db").exists());
    assert!(!dir.path().join("admin-token").exists());
    // Room for bodies in flight that no body of the largest size fits in (0 was taken, and
    // left one request in at a time).
    for (room, said) in [
        ("0", "0 is not in 1024"),
        ("4096", "is less than HERALD_MAX_BODY_BYTES"),
    ] {
        let stderr = serve(vec![
            ("HERALD_LISTEN", "127.0.0.1:0".into()),
            ("HERALD_MAX_BODY_BYTES_IN_FLIGHT", room.into()),
        ])
        .await;
        assert!(stderr.contains(said), "{stderr}");
    }
    assert!(!dir.path().join("herald.db").exists());
    // A kept token Herald cannot read (not UTF-8 here; unreadable to its user alike) is named
    // and left as it is, not replaced by a new one that would lock its clients out.
    let kept = dir.path().join("admin-token");
    std::fs::write(&kept, b"caf\xe9-token-0123456789abcdef\n").unwrap();
    let stderr = serve(vec![("HERALD_LISTEN", "127.0.0.1:0".into())]).await;
    assert!(
        stderr.contains("could not read the admin token kept in") && stderr.contains("admin-token"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        b"caf\xe9-token-0123456789abcdef\n"
    );
    assert!(
        !dir.path().join("herald.db").exists(),
        "said before a database is made"
    );
}

/// A generated admin token is printed only to a terminal: under systemd or in a container,
/// standard output goes to a log kept elsewhere, so only where the token is kept is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_admin_token_is_not_printed_where_output_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATA_DIR", dir.path())
        .env("HERALD_LOG", "info")
        .env_remove("HERALD_ADMIN_TOKEN")
        .env_remove("HERALD_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the herald binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("generated an admin token") {
                return line;
            }
        }
        panic!("the server exited without saying where its admin token is");
    })
    .await
    .expect("the server says where its admin token is within 20 s");
    let kept = dir.path().join("admin-token");
    let token = std::fs::read_to_string(&kept).unwrap();
    let token = token.trim();
    assert!(token.starts_with("hadm_"), "{token}");
    assert!(said.contains(&kept.display().to_string()), "{said}");
    assert!(!said.contains(token), "{said}");
    child.start_kill().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the server stops")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(token), "the token was printed: {stdout}");
}

/// A second node on one SQLite file would take the first one's deliveries back on start and
/// send each of them twice: it is refused, saying who holds the file and what to do instead. Once
/// the first is killed (however it ends, the system drops its lock), a new one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_herald_on_one_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start(dir.path()).await;
    let pid = first.child.id().unwrap();
    // Without an admin token of its own, it would generate one into the data directory.
    let second = refused_serve(dir.path()).await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another Herald (process {pid}) is using this database"
        )) && stderr.contains("--data-dir"),
        "{stderr}"
    );
    // The refused one changed nothing: no token was written, and the first still answers.
    assert!(!dir.path().join("admin-token").exists());
    let orgs = |base: String| {
        http_client()
            .get(format!("{base}/v1/orgs"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    assert_eq!(
        orgs(first.base.clone()).await.unwrap().status(),
        StatusCode::OK
    );

    first.child.kill().await.unwrap();
    let again = Server::start(dir.path()).await;
    assert_eq!(
        orgs(again.base.clone()).await.unwrap().status(),
        StatusCode::OK
    );
}

/// `herald copy` moves a stopped server's data into an empty PostgreSQL database: refused while
/// the server runs, then copied with progress and a summary, the source left as it was (its
/// secrets stay plain though the nodes' key seals the copies) and its server kept from
/// starting again; a node started on PostgreSQL serves the copied history and delivers new
/// events; a second copy into it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_copy_moves_a_stopped_server_to_postgresql() {
    let Some(db) = TestDatabase::create("herald_copy_moves_a_stopped_server_to_postgresql").await
    else {
        return;
    };
    let rx = TestReceiver::start().await;
    let (dir, pg_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let http = http_client();
    let mut server = Server::start(dir.path()).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let org = server
        .org_with_webhook(&rx.url("/sink"), json!({ "secret": secret }))
        .await;
    let post = |base: &str, id: &str| {
        http.post(format!("{base}/v1/orgs/{org}/events"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "type": "user.created", "id": id, "data": { "user": { "id": id } } }))
            .send()
    };
    let mut acked = HashSet::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        assert_eq!(
            post(&server.base, &id).await.unwrap().status(),
            StatusCode::ACCEPTED
        );
        acked.insert(id);
    }
    wait_until_delivered(&rx, &acked, Duration::from_secs(20)).await;
    // A deleted webhook is copied for its history, and the summary says so.
    let gone = server
        .post_json(
            &format!("/v1/orgs/{org}/webhooks"),
            json!({ "name": "gone", "url": rx.url("/gone") }),
        )
        .await;
    let deleted = http
        .delete(format!(
            "{}/v1/orgs/{org}/webhooks/{}",
            server.base,
            gone["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    const KEY: &str = "79c65e8234fb51ad742802db8182c78878dae072ce3264b58c562ff894db04e5";
    let copy_from = |data: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["copy", "--to", &db.url])
            .env("HERALD_DATA_DIR", data)
            .env("HERALD_ENCRYPTION_KEY", KEY)
            .env("HERALD_LOG", "warn")
            .kill_on_drop(true)
            .output()
    };
    let copy = || copy_from(dir.path());
    let running = copy().await.unwrap();
    let stderr = String::from_utf8_lossy(&running.stderr);
    assert!(!running.status.success());
    assert!(
        stderr.contains("stop that server before copying"),
        "{stderr}"
    );

    server.child.kill().await.unwrap();
    // A database not created yet is said so, with what to do, and nothing is marked copied.
    let nowhere = format!(
        "{}/herald_never_created",
        db.url.rsplit_once('/').unwrap().0
    );
    let refused = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["copy", "--to", &nowhere])
        .env("HERALD_DATA_DIR", dir.path())
        .env("HERALD_ENCRYPTION_KEY", KEY)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("does not exist; create it first"),
        "{stderr}"
    );
    let copied = copy().await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&copied.stdout),
        String::from_utf8_lossy(&copied.stderr),
    );
    assert!(copied.status.success(), "{stderr}");
    assert!(
        stderr.contains("deliveries") && stderr.contains("20 of 20"),
        "{stderr}"
    );
    assert!(
        stdout.contains(
            "1 organization, 2 webhooks (1 deleted, kept for its history), 20 events, 20 \
             deliveries, 20 attempts"
        ) && stdout.contains("will not start again"),
        "{stdout}"
    );
    let stored: String = rusqlite::Connection::open(dir.path().join("herald.db"))
        .unwrap()
        .query_row(
            "SELECT secret FROM webhooks WHERE deleted_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, secret, "the source is left as it was");
    let old = refused_serve(dir.path()).await;
    let said = String::from_utf8_lossy(&old.stderr);
    assert!(
        !old.status.success() && said.contains("was copied to PostgreSQL"),
        "{said}"
    );

    let node = Server::start_with(
        pg_dir.path(),
        &[
            ("HERALD_DATABASE_URL", db.url.clone()),
            ("HERALD_ENCRYPTION_KEY", KEY.into()),
        ],
    )
    .await;
    let sealed: String = db
        .connect()
        .await
        .query_one("SELECT secret FROM webhooks WHERE deleted_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(sealed.starts_with("enc:"), "sealed in PostgreSQL: {sealed}");
    let hooks = node.get_json(&format!("/v1/orgs/{org}/webhooks")).await;
    let hook = hooks["data"][0]["id"].as_str().unwrap();
    let history = node
        .get_json(&format!(
            "/v1/orgs/{org}/webhooks/{hook}/deliveries?state=succeeded&limit=100"
        ))
        .await;
    assert_eq!(history["data"].as_array().unwrap().len(), 20, "{history}");
    assert_eq!(
        post(&node.base, "after").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    acked.insert("after".into());
    wait_until_delivered(&rx, &acked, Duration::from_secs(20)).await;
    // Numbered after the copied events: the newest in the organization's list.
    let newest = node
        .get_json(&format!("/v1/orgs/{org}/events?limit=2"))
        .await;
    assert_eq!(
        (&newest["data"][0]["id"], &newest["data"][1]["id"]),
        (&json!("after"), &json!("before-19")),
        "{newest}"
    );
    // Signed with the copied secret.
    let sent = rx.received_on("/sink");
    assert_eq!(sent.len(), 21);
    let last = sent
        .iter()
        .find(|r| r.json()["data"]["user"]["id"] == "after")
        .unwrap();
    last.verify_standard(secret).unwrap();

    // A backup of the copied directory keeps the note: a server on it is refused too.
    let backup = tempfile::tempdir().unwrap();
    let backed_up = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["backup", "--to"])
        .arg(backup.path().join("b"))
        .env("HERALD_DATA_DIR", dir.path())
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&backed_up.stdout);
    assert!(
        backed_up.status.success()
            && said.contains("copied-to-postgresql")
            // Not told how a restore of it goes, as it will not be served.
            && !said.contains("Restored, it goes back"),
        "{said}"
    );
    // The note is private, as the rest of the directory is, in the original and the backup.
    #[cfg(unix)]
    for note in [dir.path(), &backup.path().join("b")].map(|d| d.join("copied-to-postgresql")) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&note).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", note.display());
    }
    let restored = refused_serve(&backup.path().join("b")).await;
    let said = String::from_utf8_lossy(&restored.stderr);
    assert!(
        !restored.status.success() && said.contains("was copied to PostgreSQL"),
        "{said}"
    );

    // A second copy of the directory is refused, naming where the first went; without the
    // note, the target already holds its data.
    let again = copy().await.unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        stderr.contains("was copied to PostgreSQL before") && stderr.contains(&db.url),
        "{stderr}"
    );
    std::fs::remove_file(dir.path().join("copied-to-postgresql")).unwrap();
    let again = copy().await.unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        stderr.contains("already holds Herald data") && stderr.contains("nothing was copied"),
        "{stderr}"
    );
    // Refused, a copy leaves an older Herald's database at its schema, for that version to
    // start on again.
    let older = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../herald-store/tests/fixtures/schema-6.db"
    );
    std::fs::copy(fixture, older.path().join("herald.db")).unwrap();
    let refused = copy_from(older.path()).await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("already holds Herald data"),
        "{stderr}"
    );
    let schema: i64 = rusqlite::Connection::open(older.path().join("herald.db"))
        .unwrap()
        .query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(schema, 6, "the embedded database was migrated");
}

/// `herald backup` copies the database while the server stores events under load: the copy is
/// whole (SQLite's integrity check), holds every event acknowledged before it began (and no
/// dashboard session), keeps the admin token private beside it, and a server started on it
/// serves what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_is_whole_and_a_server_starts_on_it() {
    let _turn = crate::helpers::heavy_turn().await;
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let copy_dir = copy.path().join("herald-backup");
    let rx = TestReceiver::start().await;
    let server = Server::start(dir.path()).await;
    std::fs::write(dir.path().join("admin-token"), "hadm_generated-earlier\n").unwrap();
    let http = http_client();
    let org = server.org_with_sink(&rx).await;

    // Producers post batches until told to stop; the backup runs in the middle.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..2 {
        let (http, base, org, accepted, stop) = (
            http.clone(),
            server.base.clone(),
            org.clone(),
            accepted.clone(),
            stop.clone(),
        );
        producers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 2_000 {
                let ids: Vec<String> = (0..20).map(|i| format!("b-{p}-{n}-{i}")).collect();
                n += 1;
                let events: Vec<_> = ids
                    .iter()
                    .map(|id| json!({ "type": "user.created", "id": id, "data": { "user": { "id": id } } }))
                    .collect();
                let resp = http
                    .post(format!("{base}/v1/orgs/{org}/events"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&events)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
                accepted.lock().unwrap().extend(ids);
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < 2_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the load did not get going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backup = || {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["backup", "--to"])
            .arg(&copy_dir)
            .env("HERALD_DATA_DIR", dir.path())
            .output()
    };
    // Someone signed in to the dashboard: the copy does not carry their session.
    let mut visitor = crate::dashboard::Visitor::at(&server.base);
    assert_eq!(
        visitor.sign_in(ADMIN_TOKEN).await.status,
        StatusCode::SEE_OTHER
    );
    let before: Vec<String> = accepted.lock().unwrap().clone();
    let out = backup().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("herald.db") && stdout.contains("admin-token"),
        "{stdout}"
    );
    assert!(stdout.contains("herald serve --data-dir"), "{stdout}");
    // What a restore goes back to, and how much it copied (under load, most of it still in
    // the write-ahead log).
    assert!(
        stdout.contains("every delivery pending now is sent again")
            && stdout.contains("events accepted after now are not in it"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("of write-ahead log"), "{stderr}");
    let during = accepted.lock().unwrap().len();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in producers {
        p.await.unwrap();
    }
    eprintln!(
        "backup: {} events acknowledged before it began, {during} by its end",
        before.len()
    );

    // Whole, and holding everything acknowledged before it began.
    let db = rusqlite::Connection::open(copy_dir.join("herald.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let stored: HashSet<String> = db
        .prepare("SELECT id FROM events")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let missing = before.iter().filter(|id| !stored.contains(*id)).count();
    assert_eq!(
        missing,
        0,
        "of {} acknowledged before the backup",
        before.len()
    );
    let sessions: i64 = db
        .query_row("SELECT COUNT(*) FROM dashboard_sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 0, "no sign-in is carried over");
    drop(db);
    assert_eq!(
        std::fs::read_to_string(copy_dir.join("admin-token")).unwrap(),
        "hadm_generated-earlier\n"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["herald.db", "admin-token"] {
            let mode = std::fs::metadata(copy_dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file} is private: {mode:o}");
        }
    }

    // A second backup into the same place is refused rather than mixed with the first.
    let again = backup().await.unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a database"));
    // So is a file where the directory should be, naming the flag to change.
    let file = copy_dir.join("admin-token");
    let onto_file = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["backup", "--to"])
        .arg(&file)
        .env("HERALD_DATA_DIR", dir.path())
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&onto_file.stderr);
    assert!(
        !onto_file.status.success() && said.contains("give --to a new or empty directory"),
        "{said}"
    );
    // A database that cannot be read is named, and no directory is left looking like a backup.
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(
        broken.path().join("herald.db"),
        "not a database, ".repeat(512),
    )
    .unwrap();
    let nowhere = broken.path().join("its-backup");
    let unread = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["backup", "--to"])
        .arg(&nowhere)
        .env("HERALD_DATA_DIR", broken.path())
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&unread.stderr);
    assert!(
        !unread.status.success() && said.contains("could not read the database"),
        "{said}"
    );
    assert!(!nowhere.exists());
    drop(server);

    // Restored: a server started on the copy serves what it holds.
    let restored = Server::start(&copy_dir).await;
    let page = restored.get_json(&format!("/v1/orgs/{org}/webhooks")).await;
    assert_eq!(page["data"][0]["name"], "sink", "{page}");
    let signed_out = visitor.on(&restored.base).get("/orgs").await;
    assert!(
        signed_out.location.starts_with("/login"),
        "{}",
        signed_out.location
    );
}

/// Under a low open-file limit (here 600, which the server cannot raise) the requests in
/// flight are lowered to fit it, and the log says so and how to raise it: run out of file
/// descriptors, every attempt would fail as the endpoint's fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_open_file_limit_lowers_the_requests_in_flight_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 600 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATA_DIR", dir.path())
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HERALD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let listening = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("address=");
            log.push(line);
            if done {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), listening)
        .await
        .expect("the server listens");
    assert!(
        log.iter().any(|l| l.contains(
            "the open-file limit leaves room for 29 requests in flight at once, not the 1024"
        ) && l.contains("LimitNOFILE")),
        "{log:#?}"
    );
    child.kill().await.unwrap();
}

/// Deliveries failing for good are said once per 10 s; those held back in between are said
/// once the 10 s are over even when nothing fails after them (before, they waited for the next
/// failure to be counted, and were never said when none came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_failed_for_good_are_all_said_in_the_log() {
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(500));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &[]).await;
    let org = server
        .org_with_webhook(&rx.url("/sink"), json!({ "retry_schedule": [0] }))
        .await;
    // One at a time: three lines' worth, the first said at once.
    for (n, id) in ["f1", "f2", "f3"].into_iter().enumerate() {
        server
            .post_json(
                &format!("/v1/orgs/{org}/events"),
                json!({ "type": "user.created", "id": id, "data": { "user": { "id": id } } }),
            )
            .await;
        rx.wait_for("/sink", n + 1, Duration::from_secs(10)).await;
    }
    let said = |needle: &str| -> Vec<String> {
        let log = server.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while said("more deliveries failed after their last attempt").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = said("delivery failed after its last attempt");
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("deliveries=1"), "{first:?}");
    let rest = said("more deliveries failed after their last attempt");
    assert!(rest[0].contains("deliveries=2"), "{rest:?}");
    // Which webhooks, so that the operator knows where to look.
    assert!(
        rest[0].contains("webhooks=\"wh_") && rest[0].contains(" (2)\""),
        "{rest:?}"
    );
}
