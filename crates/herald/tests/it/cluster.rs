//! Several real `herald serve` processes on one PostgreSQL database: every node ingests and
//! delivers, a node killed with SIGKILL leaves its deliveries to the others once their leases
//! end, no delivery is attempted by two nodes at once, and a change made through one node takes
//! effect on the others. Skipped (with a notice) without `HERALD_TEST_DATABASE_URL`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::crash::Server;
use crate::dashboard::{Visitor, shown_secret};
use crate::helpers::{ADMIN_TOKEN, Reply, TestReceiver, http_client};
use crate::pg::{TestDatabase, TimingReceiver, assert_never_at_once};

/// Short, so that the killed node's deliveries come back within the test.
const LEASE_SECONDS: &str = "15";
/// How long after the killed node is seen dead its last requests may still be read.
const KILL_GRACE: Duration = Duration::from_millis(500);

async fn start_nodes(db: &TestDatabase, dirs: &[tempfile::TempDir]) -> Vec<Server> {
    // All at once: they migrate the fresh database together (one at a time, by the lock).
    let env = [
        ("HERALD_DATABASE_URL", db.url.clone()),
        ("HERALD_LEASE_SECONDS", LEASE_SECONDS.to_owned()),
        ("HERALD_DATABASE_POOL_SIZE", "8".to_owned()),
    ];
    let starts = dirs.iter().map(|d| Server::start_with(d.path(), &env));
    futures::future::join_all(starts).await
}

async fn call(http: &reqwest::Client, base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = http
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_work_and_survive_a_sigkill() {
    let _turn = crate::helpers::heavy_turn().await;
    let Some(db) = TestDatabase::create("the multi-node test").await else {
        return;
    };
    let rx = TimingReceiver::start(Duration::from_millis(3)).await;
    let http = http_client();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_nodes(&db, &dirs).await;
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();

    let (status, org) = call(&http, &bases[0], "/v1/orgs", json!({ "name": "Acme" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let org = org["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &http,
        &bases[1],
        &format!("/v1/orgs/{org}/webhooks"),
        json!({ "name": "sink", "url": rx.url(), "profile": "standard", "timeout_ms": 2000 }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Producers post round-robin to the nodes; a post that fails (the node is dead) goes to the
    // next node, as a load balancer would. Only 202s count as accepted.
    const EVENTS: usize = 3000;
    const PRODUCERS: usize = 6;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let dead = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (http, bases, org, acked, dead) = (
            http.clone(),
            bases.clone(),
            org.clone(),
            acked.clone(),
            dead.clone(),
        );
        producers.push(tokio::spawn(async move {
            for i in (p..EVENTS).step_by(PRODUCERS) {
                let id = format!("e-{i}");
                let event =
                    json!({ "type": "user.created", "id": id, "data": { "user": { "id": id } } });
                for attempt in 0..bases.len() {
                    let node = (i + attempt) % bases.len();
                    if node == dead.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    let sent = http
                        .post(format!("{}/v1/orgs/{org}/events", bases[node]))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&event)
                        .send()
                        .await;
                    if let Ok(r) = sent {
                        if r.status() == StatusCode::ACCEPTED {
                            acked.lock().unwrap().insert(id.clone());
                        }
                        break;
                    }
                }
            }
        }));
    }

    // Kill node 2 in the middle of the run, while it holds deliveries.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < EVENTS / 2 {
        assert!(Instant::now() < deadline, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    const TAKEN_OVER: &str = "took over deliveries whose lease had run out";
    let said_taken_over = |node: &Server| {
        let log = node.log.lock().unwrap();
        log.iter().filter(|l| l.contains(TAKEN_OVER)).count()
    };
    // While every node runs, none takes over another's deliveries.
    assert!(nodes.iter().all(|n| said_taken_over(n) == 0));
    dead.store(2, std::sync::atomic::Ordering::SeqCst);
    nodes[2].child.start_kill().expect("SIGKILL");
    nodes[2].child.wait().await.unwrap();
    // Requests the killed node sent just before it died can reach the receiver's handler a
    // moment after its death is seen (their bytes were already on the way): those count as in
    // flight on the killed node. Seen once in CI: a first visit 0.000 s after the kill, and its
    // repeat exactly one lease later, taken over by a survivor.
    let killed_at = Instant::now() + KILL_GRACE;
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= EVENTS * 9 / 10,
        "most events were accepted ({} of {EVENTS})",
        acked.len()
    );

    // Every accepted event arrives, the killed node's share after its leases end.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrived: HashSet<String> = rx.visits().into_iter().map(|v| v.key).collect();
        let missing: Vec<_> = acked.difference(&arrived).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted events never arrived, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The survivors took over the killed node's leases without a single error.
    let survivors_log: Vec<String> = nodes[..2]
        .iter()
        .flat_map(|n| n.log.lock().unwrap().clone())
        .collect();
    assert!(
        !survivors_log.iter().any(|l| l.contains("ERROR")),
        "no errors on the surviving nodes: {:?}",
        survivors_log
            .iter()
            .filter(|l| l.contains("ERROR"))
            .take(5)
            .collect::<Vec<_>>()
    );

    // Repeats: never two at once, and only for deliveries that were in flight on the killed
    // node (their first request had started and not been answered before the kill). One
    // webhook gets at most 16 requests at once from a node.
    let repeats = rx.repeats();
    assert_never_at_once(&repeats);
    // A repeat is a delivery a survivor took over: the log says so, which explains it.
    assert!(
        repeats.is_empty() || nodes[..2].iter().map(said_taken_over).sum::<usize>() > 0,
        "{} deliveries repeated, and no survivor said it took any over",
        repeats.len()
    );
    for (delivery, visits) in &repeats {
        let first = visits.iter().map(|v| v.started).min().unwrap();
        if first > killed_at {
            let when: Vec<String> = visits
                .iter()
                .map(|v| {
                    format!(
                        "{:.3}s..{:.3}s after the kill",
                        (v.started - killed_at).as_secs_f64(),
                        (v.ended - killed_at).as_secs_f64()
                    )
                })
                .collect();
            let logs: Vec<&String> = survivors_log
                .iter()
                .filter(|l| l.contains(delivery.as_str()) || l.contains("WARN"))
                .take(20)
                .collect();
            let attempts: Vec<String> = db
                .connect()
                .await
                .query(
                    "SELECT number, status, error, error_message, duration_ms FROM attempts \
                     WHERE delivery_id = $1 ORDER BY number",
                    &[&delivery.as_str()],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "#{} status {:?} error {:?} {:?} in {} ms",
                        r.get::<_, i64>(0),
                        r.get::<_, Option<i64>>(1),
                        r.get::<_, Option<String>>(2),
                        r.get::<_, Option<String>>(3),
                        r.get::<_, i64>(4)
                    )
                })
                .collect();
            panic!(
                "delivery {delivery} was repeated although it was first attempted after the kill: {when:?}; its attempts: {attempts:?}; survivors' log lines about it or warnings: {logs:#?}"
            );
        }
    }
    assert!(
        repeats.len() <= 16,
        "{} deliveries were repeated; only those in flight on the killed node may be",
        repeats.len()
    );
    let visits = rx.visits().len();
    eprintln!(
        "cluster: {} events accepted, {visits} requests received, {} deliveries repeated",
        acked.len(),
        repeats.len()
    );

    // Every outcome gets recorded: nothing stays pending in the database (the last outcomes
    // may still be on their way when the last request arrives).
    crate::pg::wait_until_none_pending(&db, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_changed_through_one_node_takes_effect_on_the_others() {
    let Some(db) = TestDatabase::create("the cross-node change test").await else {
        return;
    };
    let old = TestReceiver::start().await;
    let new = TestReceiver::start().await;
    let http = http_client();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // Node A connects as the test URL says (TLS when the server offers it), node B checks the
    // server's certificate and name: both must find the same database.
    let node = |dir: &tempfile::TempDir, url: String| {
        let env = [
            ("HERALD_DATABASE_URL", url),
            ("HERALD_DATABASE_POOL_SIZE", "8".to_owned()),
        ];
        let path = dir.path().to_owned();
        async move { Server::start_with(&path, &env).await }
    };
    let verified = db.verified_url().await;
    let nodes =
        futures::future::join_all([node(&dirs[0], db.url.clone()), node(&dirs[1], verified)]).await;
    let (a, b) = (&nodes[0].base, &nodes[1].base);

    let (_, org) = call(&http, a, "/v1/orgs", json!({ "name": "Acme" })).await;
    let org = org["id"].as_str().unwrap().to_owned();
    let (_, hook) = call(
        &http,
        a,
        &format!("/v1/orgs/{org}/webhooks"),
        json!({ "name": "sink", "url": old.url("/old") }),
    )
    .await;
    let hook = hook["id"].as_str().unwrap().to_owned();
    let send = |n: usize| {
        let (http, b, org) = (http.clone(), b.clone(), org.clone());
        async move {
            let event = json!({ "type": "user.created", "id": format!("c-{n}"), "data": { "user": { "id": n.to_string() } } });
            call(&http, &b, &format!("/v1/orgs/{org}/events"), event)
                .await
                .0
        }
    };
    // Node B caches the organization with the old URL.
    assert_eq!(send(0).await, StatusCode::ACCEPTED);
    old.wait_for("/old", 1, Duration::from_secs(10)).await;

    // Changed through node A; node B follows without a restart.
    let resp = http
        .patch(format!("{a}/v1/orgs/{org}/webhooks/{hook}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "url": new.url("/new") }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let changed = Instant::now();
    let mut n = 1;
    loop {
        assert_eq!(send(n).await, StatusCode::ACCEPTED);
        if !new.received_on("/new").is_empty() {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "node B still sends to the old URL"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "cross-node change: node B used the new URL {:?} after the change",
        changed.elapsed()
    );
    // Each node has its pool's connections and one that listens for the other's changes.
    db.assert_herald_connections_encrypted(4).await;

    // Deactivated through node B: node A stores deliveries no more.
    let resp = http
        .patch(format!("{b}/v1/orgs/{org}/webhooks/{hook}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "active": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let event = json!({ "type": "user.created", "id": format!("d-{n}"), "data": { "user": { "id": "x" } } });
        let (status, body) = call(&http, a, &format!("/v1/orgs/{org}/events"), event).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        if body["deliveries"] == json!(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node A still fans out to the deactivated webhook: {body}"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An API key revoked through node A stops working on node B, which had it cached.
    let (status, key) = call(
        &http,
        a,
        &format!("/v1/orgs/{org}/api-keys"),
        json!({ "name": "ci" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let (token, key_id) = (key["key"].as_str().unwrap(), key["id"].as_str().unwrap());
    let with_key = || {
        http.get(format!("{b}/v1/orgs/{org}/webhooks"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(with_key().await.unwrap().status(), StatusCode::OK);
    let resp = http
        .delete(format!("{a}/v1/orgs/{org}/api-keys/{key_id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while with_key().await.unwrap().status() != StatusCode::UNAUTHORIZED {
        assert!(
            Instant::now() < deadline,
            "node B still accepts the revoked key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A webhook created through node A gets every event posted through node B once its
    // creation is answered, though node B hears of it a moment later: its ingest finds the
    // organization changed since its copy was read, and fans out again from the store.
    let (_, busy) = call(&http, a, "/v1/orgs", json!({ "name": "Busy" })).await;
    let busy = busy["id"].as_str().unwrap().to_owned();
    let post_on_b = |id: String| {
        let (http, b, path) = (http.clone(), b.clone(), format!("/v1/orgs/{busy}/events"));
        async move {
            let event =
                json!({ "type": "user.created", "id": id, "data": { "user": { "id": "x" } } });
            call(&http, &b, &path, event).await
        }
    };
    let (status, body) = post_on_b("cached".into()).await;
    assert_eq!(
        (status, &body["deliveries"]),
        (StatusCode::ACCEPTED, &json!(0))
    );
    const ROUNDS: usize = 30;
    for round in 0..ROUNDS {
        let (status, hook) = call(
            &http,
            a,
            &format!("/v1/orgs/{busy}/webhooks"),
            json!({ "name": format!("new {round}"), "url": old.url("/busy") }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{hook}");
        let (status, body) = post_on_b(format!("busy-{round}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(
            body["deliveries"],
            json!(round + 1),
            "round {round}: node B fanned out from a copy without the webhook created before"
        );
    }
    // Nor is an event of a type registered through node A a moment before refused by node B
    // as unknown: node B looks again before it says so.
    for round in 0..2 * ROUNDS {
        let name = format!("probe.n{round}");
        let (status, created) = call(
            &http,
            a,
            &format!("/v1/orgs/{busy}/event-types"),
            json!({ "name": name }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let event = json!({ "type": name, "id": format!("typed-{round}"), "data": {} });
        let (status, body) = call(&http, b, &format!("/v1/orgs/{busy}/events"), event).await;
        assert_eq!(status, StatusCode::ACCEPTED, "round {round}: {body}");
    }

    // Changes checked against the organization take turns across nodes too: of opal webhooks
    // (one per organization) created through both nodes at once, exactly one is.
    let (_, opal_org) = call(
        &http,
        a,
        "/v1/orgs",
        json!({ "name": "Opal users", "catalogs": ["opal"] }),
    )
    .await;
    let opal_org = opal_org["id"].as_str().unwrap().to_owned();
    let creates = (0..8).map(|i| {
        let (http, base) = (http.clone(), if i % 2 == 0 { a.clone() } else { b.clone() });
        let path = format!("/v1/orgs/{opal_org}/webhooks");
        let url = old.url("/opal");
        async move {
            let body = json!({ "name": format!("opal {i}"), "url": url, "profile": "opal" });
            call(&http, &base, &path, body).await.0
        }
    });
    let statuses = futures::future::join_all(creates).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );

    // A delivery node A attempted, waiting an hour for its retry, is attempted now when asked
    // through node B, and its outcome recorded.
    let flaky = TestReceiver::start().await;
    flaky.answer_by_default(Reply::status(500));
    let (_, retried) = call(
        &http,
        a,
        &format!("/v1/orgs/{org}/webhooks"),
        json!({ "name": "flaky", "url": flaky.url("/f"), "retry_schedule": [0, 3600] }),
    )
    .await;
    let retried = retried["id"].as_str().unwrap().to_owned();
    let event = json!({ "type": "user.created", "id": "r-1", "data": { "user": { "id": "r" } } });
    let (status, _) = call(&http, a, &format!("/v1/orgs/{org}/events"), event).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    flaky.wait_for("/f", 1, Duration::from_secs(10)).await;
    let read = |path: String| {
        let http = http.clone();
        async move {
            let resp = http
                .get(path)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    let listed = read(format!("{b}/v1/orgs/{org}/webhooks/{retried}/deliveries")).await;
    let delivery = listed["data"][0]["id"].as_str().unwrap().to_owned();
    let detail = format!("{b}/v1/orgs/{org}/deliveries/{delivery}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while read(detail.clone()).await["attempt_count"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the first attempt is not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flaky.answer_by_default(Reply::status(200));
    let (status, sent) = call(
        &http,
        b,
        &format!("/v1/orgs/{org}/deliveries/{delivery}/retry"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    flaky.wait_for("/f", 2, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = read(detail.clone()).await;
        if d["state"] == "succeeded" {
            assert_eq!(d["attempt_count"], 2, "{d}");
            break;
        }
        assert!(Instant::now() < deadline, "not recorded as delivered: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An endpoint asked node B to wait ten minutes; pointed elsewhere through node A, what
    // node B held goes at once, there.
    let waiting = TestReceiver::start().await;
    waiting.script([Reply::status(429).header("retry-after", "600")]);
    let (_, held) = call(
        &http,
        a,
        &format!("/v1/orgs/{org}/webhooks"),
        json!({ "name": "busy", "url": waiting.url("/busy"), "retry_schedule": [0, 3600] }),
    )
    .await;
    let held = held["id"].as_str().unwrap().to_owned();
    for n in 0..2 {
        let event = json!({ "type": "user.created", "id": format!("w-{n}"), "data": { "user": { "id": "w" } } });
        let (status, _) = call(&http, b, &format!("/v1/orgs/{org}/events"), event).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        waiting.wait_for("/busy", 1, Duration::from_secs(10)).await;
    }
    let listed = read(format!("{b}/v1/orgs/{org}/webhooks/{held}/deliveries")).await;
    let second = listed["data"][0]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = read(format!("{b}/v1/orgs/{org}/deliveries/{second}")).await;
        let put_off = d["next_attempt_at"].as_str().is_some_and(|at| {
            chrono::DateTime::parse_from_rfc3339(at).unwrap()
                > chrono::Utc::now() + chrono::Duration::minutes(5)
        });
        if put_off {
            break;
        }
        assert!(Instant::now() < deadline, "not held by node B: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = http
        .patch(format!("{a}/v1/orgs/{org}/webhooks/{held}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "url": waiting.url("/elsewhere") }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    waiting
        .wait_for("/elsewhere", 1, Duration::from_secs(10))
        .await;

    // Signed in to the dashboard through node A, a person is signed in on node B too (no
    // sticky sessions needed); a new API key made through A is shown, once, on B's page.
    let mut on_a = Visitor::at(a);
    assert_eq!(
        on_a.sign_in(ADMIN_TOKEN).await.status,
        StatusCode::SEE_OTHER
    );
    let on_b = on_a.on(b);
    let page = format!("/orgs/{org}");
    assert_eq!(on_b.get(&page).await.status, StatusCode::OK);
    let csrf = on_b.csrf(&page).await;
    let made = on_a
        .post(
            &format!("{page}/api-keys"),
            &[("csrf", &csrf), ("name", "ops")],
        )
        .await;
    assert_eq!(made.location, page, "{}", made.body);
    let body = on_b.get(&page).await.body;
    let key = shown_secret(&body).expect("node B shows the key made through node A");
    assert!(key.starts_with("hk_"), "{key}");
    assert!(
        shown_secret(&on_a.get(&page).await.body).is_none(),
        "shown once"
    );
    // A node started with another admin token (a rolling change of it) refuses the session,
    // keeping its cookie, and the nodes still on the old token keep taking it.
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("HERALD_DATABASE_URL", db.url.clone()),
        (
            "HERALD_ADMIN_TOKEN",
            "the-next-admin-token-0123456789".to_owned(),
        ),
    ];
    let changed = Server::start_with(dir.path(), &env).await;
    let refused = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{page}", changed.base))
        .header(reqwest::header::COOKIE, on_a.cookie().unwrap())
        .send()
        .await
        .unwrap();
    let location = refused.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap();
    assert!(location.starts_with("/login?ended=revoked"), "{location}");
    assert!(
        refused.headers().get(reqwest::header::SET_COOKIE).is_none(),
        "the cookie is kept"
    );
    assert_eq!(on_b.get(&page).await.status, StatusCode::OK);
    drop(changed);
    // Signed out through B, the session ends on A as well.
    on_b.post("/logout", &[("csrf", &csrf)]).await;
    let after = on_a.get(&page).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert!(after.location.starts_with("/login"), "{}", after.location);
}

/// Encryption turned on across nodes. A node started with a key seals every stored secret; a
/// node without it then cannot serve those webhooks: it answers `503` (not `500`), so that
/// producers send again elsewhere, and `/readyz` names the key, so that a load balancer stops
/// sending it work. A node given the key among its old keys only opens what was sealed with it
/// and seals nothing: the first step of the rolling change the operations guide gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_key_the_others_seal_with_says_so_and_one_learning_it_serves() {
    let Some(db) = TestDatabase::create("the encryption-key test").await else {
        return;
    };
    const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let rx = TestReceiver::start().await;
    let http = http_client();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let node = |dir: &tempfile::TempDir, keys: &[(&'static str, &str)]| {
        let mut env = vec![
            ("HERALD_DATABASE_URL", db.url.clone()),
            ("HERALD_DATABASE_POOL_SIZE", "4".to_owned()),
        ];
        env.extend(keys.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let path = dir.path().to_owned();
        async move { Server::start_with(&path, &env).await }
    };
    let plain = node(&dirs[0], &[]).await;
    let (_, org) = call(&http, &plain.base, "/v1/orgs", json!({ "name": "Acme" })).await;
    let org = org["id"].as_str().unwrap().to_owned();
    let (status, hook) = call(
        &http,
        &plain.base,
        &format!("/v1/orgs/{org}/webhooks"),
        json!({ "name": "sink", "url": rx.url("/sink") }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let events = format!("/v1/orgs/{org}/events");
    let event =
        |id: &str| json!({ "type": "user.created", "id": id, "data": { "user": { "id": id } } });

    // A node learning the key among its old keys only: it opens sealed secrets, seals none.
    let learning = node(&dirs[1], &[("HERALD_ENCRYPTION_OLD_KEYS", KEY)]).await;
    let (status, _) = call(&http, &learning.base, &events, event("e-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = call(&http, &plain.base, &events, event("e-2")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "nothing was sealed");

    // A node sealing with it: the node without it cannot open the secrets any more.
    let sealing = node(&dirs[2], &[("HERALD_ENCRYPTION_KEY", KEY)]).await;
    let (status, err) = call(&http, &plain.base, &events, event("e-3")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert_eq!(err["error"]["code"], "unavailable", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("encryption key"),
        "{err}"
    );
    let ready = http
        .get(format!("{}/readyz", plain.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["reason"]
            .as_str()
            .unwrap()
            .contains("which this node is not given"),
        "{ready}"
    );
    // The nodes that have the key serve the event sent again.
    for base in [&learning.base, &sealing.base] {
        let (status, body) = call(&http, base, &events, event("e-3")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
    }
    let got = rx.wait_for("/sink", 3, Duration::from_secs(20)).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["data"]["user"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["e-1", "e-2", "e-3"]);
}

/// A node on PostgreSQL given no admin token generates one of its own, and says that the other
/// nodes will not take it (behind a load balancer, the dashboard would sign in on one node in
/// N).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_generates_its_admin_token_on_postgresql_says_it_is_its_own() {
    use tokio::io::AsyncBufReadExt;
    let Some(db) = TestDatabase::create("the generated-admin-token test").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .env_remove("HERALD_ADMIN_TOKEN")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATA_DIR", dir.path())
        .env("HERALD_DATABASE_URL", &db.url)
        .env("HERALD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("this node's own") {
                return line;
            }
        }
        panic!("the node stopped without saying so");
    })
    .await
    .expect("said within 20 s");
    let kept = dir.path().join("admin-token");
    assert!(
        said.contains(&format!("HERALD_ADMIN_TOKEN=$(cat {})", kept.display())),
        "{said}"
    );
    child.kill().await.unwrap();
}
