//! Delivery stories: fan-out, signatures, retries, history, isolation.

use std::time::Duration;

use herald_core::Timestamp;
use herald_core::time::Clock;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Reply, TestApp, TestReceiver};

const WAIT: Duration = Duration::from_secs(10);

fn user_created(id: &str) -> serde_json::Value {
    json!({ "type": "user.created", "data": { "user": { "id": id, "email": "ada@example.com" } } })
}

fn session_revoked(id: &str) -> serde_json::Value {
    json!({ "type": "session.revoked", "data": { "session": { "id": id }, "user": { "id": "u" } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_reaches_every_matching_active_webhook_signed() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let by_type = app
        .create_webhook(
            &org,
            &rx.url("/by-type"),
            json!({ "events": ["user.created"] }),
        )
        .await;
    let by_channel = app
        .create_webhook(
            &org,
            &rx.url("/by-channel"),
            json!({ "channels": ["user"] }),
        )
        .await;
    app.create_webhook(
        &org,
        &rx.url("/other"),
        json!({ "events": ["session.revoked"] }),
    )
    .await;
    app.create_webhook(&org, &rx.url("/inactive"), json!({ "active": false }))
        .await;

    let answer = app
        .send_event(&org, json!({ "type": "user.created", "id": "evt-1", "data": { "user": { "id": "u1", "score": 1.0 } } }))
        .await;
    assert_eq!(answer["deliveries"], 2);
    assert_eq!(answer["events"][0]["id"], "evt-1");

    for (path, webhook) in [("/by-type", &by_type), ("/by-channel", &by_channel)] {
        let got = rx.wait_for(path, 1, WAIT).await;
        let req = &got[0];
        req.verify_standard(webhook["secret"].as_str().unwrap())
            .expect("the signature verifies");
        assert_eq!(req.header("content-type"), "application/json");
        assert!(req.header("user-agent").starts_with("Herald/"));
        assert!(req.header("webhook-id").starts_with("dlv_"));
        let body = req.json();
        assert_eq!(body["type"], "user.created");
        assert_eq!(body["data"], json!({ "user": { "id": "u1", "score": 1 } }));
        // Compact JSON: re-serialising gives the same bytes.
        assert_eq!(serde_json::to_vec(&body).unwrap(), req.body.to_vec());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.received_on("/other").is_empty());
    assert!(rx.received_on("/inactive").is_empty());
}

/// A client that disconnects while its event is being stored (or its delivery resent) makes
/// hyper drop the request's future before the delivery is handed to the dispatcher. It is
/// stored leased to this node, and the test's clock never reaches the end of the lease: only
/// giving the lease back makes it arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_producer_went_away_is_delivered_without_waiting_for_the_lease() {
    use futures::FutureExt;
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    // One event through the API first, so that the organization's settings are at hand and the
    // request below first waits where it stores.
    app.send_event(&org, user_created("u0")).await;
    rx.wait_for("/h", 1, WAIT).await;
    let org_id = herald_core::OrgId::parse(&org).unwrap();
    let event = serde_json::value::to_raw_value(&user_created("u1")).unwrap();
    let ingest = herald::service::ingest::ingest(
        &app.state,
        &herald::service::Scope::Admin,
        &org_id,
        vec![&event],
        false,
    );
    // Polled once (up to the wait for the store's commit), then dropped. (Were the thread held
    // up long enough for the commit to come first, it would finish and prove less, not fail.)
    let _ = ingest.now_or_never();
    let got = rx.wait_for("/h", 2, WAIT).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].json()["data"]["user"]["id"], "u1");

    // A resend whose caller went away.
    let first = app
        .delivery_ids(&org, hook["id"].as_str().unwrap())
        .await
        .pop()
        .unwrap();
    app.wait_for_delivery(&org, &first, |d| d["state"] == "succeeded")
        .await;
    let first_id = herald_core::DeliveryId::parse(&first).unwrap();
    let resend = herald::service::deliveries::resend(
        &app.state,
        &herald::service::Scope::Admin,
        &org_id,
        &first_id,
    );
    let _ = resend.now_or_never();
    assert_eq!(rx.wait_for("/h", 3, WAIT).await.len(), 3);

    // One whose caller went away after the store took it, while the delivery was read back to
    // answer with (polled again once the write is done, then dropped). A read pool faster
    // than the poll (an idle core runs the read at once) lets the resend complete rather
    // than be dropped there, one time in ten on some runs: tried until it was dropped there
    // three times, within a hundred tries.
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let (mut dropped_while_read, mut received) = (0, 3);
    for _ in 0..100 {
        app.wait_for_delivery(&org, &first, |d| d["state"] == "succeeded")
            .await;
        let mut resend = Box::pin(herald::service::deliveries::resend(
            &app.state,
            &herald::service::Scope::Admin,
            &org_id,
            &first_id,
        ));
        if resend.as_mut().poll(&mut cx).is_pending() {
            // Stored: the next poll goes on to read it back, and is dropped there.
            app.wait_for_delivery(&org, &first, |d| d["state"] == "pending")
                .await;
            if resend.as_mut().poll(&mut cx).is_pending() {
                dropped_while_read += 1;
            }
        }
        drop(resend);
        received += 1;
        assert_eq!(rx.wait_for("/h", received, WAIT).await.len(), received);
        if dropped_while_read == 3 {
            break;
        }
    }
    assert_eq!(dropped_while_read, 3, "dropped while read back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_retried_on_schedule_with_the_same_webhook_id() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(500), Reply::status(502)]);
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    let hook_id = hook["id"].as_str().unwrap();
    app.send_event(&org, user_created("u1")).await;

    rx.wait_for("/h", 1, WAIT).await;
    let delivery = app.delivery_ids(&org, hook_id).await.remove(0);
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 1)
        .await;
    assert_eq!(d["state"], "pending");
    assert_eq!(d["attempts"][0]["status"], 500);
    assert_eq!(d["attempts"][0]["error"], "http_status");
    assert_eq!(d["attempts"][0]["response_body"], "receiver says hi");

    // The second attempt comes a minute (plus at most 10% jitter) later.
    app.advance(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received_on("/h").len(), 1, "not before its time");
    app.advance(Duration::from_secs(37));
    rx.wait_for("/h", 2, WAIT).await;
    app.wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 2)
        .await;
    // The third after five more minutes; it succeeds.
    app.advance(Duration::from_secs(331));
    let got = rx.wait_for("/h", 3, WAIT).await;
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
        .await;
    assert_eq!(d["attempt_count"], 3);
    let statuses: Vec<_> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!(500), json!(502), json!(200)]);
    let ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == delivery), "{ids:?}");
    got[0]
        .verify_standard(hook["secret"].as_str().unwrap())
        .unwrap();
    for req in &got[1..] {
        req.verify_standard_at_own_time(hook["secret"].as_str().unwrap())
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_fails_after_its_last_attempt_and_can_be_resent() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": [0, 5] }))
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    app.send_event(&org, user_created("u1")).await;
    rx.wait_for("/h", 1, WAIT).await;
    let delivery = app.delivery_ids(&org, hook_id).await.remove(0);
    app.wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 1)
        .await;
    app.advance(Duration::from_secs(6));
    rx.wait_for("/h", 2, WAIT).await;
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["state"] == "failed")
        .await;
    assert_eq!(d["attempt_count"], 2);
    assert_eq!(d["next_attempt_at"], serde_json::Value::Null);

    rx.answer_by_default(Reply::status(204));
    let (status, d) = app
        .post(
            &format!("/v1/orgs/{org}/deliveries/{delivery}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    rx.wait_for("/h", 3, WAIT).await;
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
        .await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3);

    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/deliveries/{delivery}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a succeeded delivery can be replayed: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_waiting_for_its_retry_is_attempted_now_when_asked() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            &rx.url("/h"),
            json!({ "retry_schedule": [0, 3600, 60] }),
        )
        .await;
    app.send_event(&org, user_created("u1")).await;
    rx.wait_for("/h", 1, WAIT).await;
    let delivery = app
        .delivery_ids(&org, hook["id"].as_str().unwrap())
        .await
        .remove(0);
    app.wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 1)
        .await;
    let retry = format!("/v1/orgs/{org}/deliveries/{delivery}/retry");

    // An attempt is made now, besides the schedule; it fails too, and the retry it waited
    // for (an hour) comes again, counted from then, not the schedule's next step (60 s).
    let (status, d) = app.post(&retry, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["state"], "pending");
    rx.wait_for("/h", 2, WAIT).await;
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 2)
        .await;
    assert_eq!(d["state"], "pending");
    let started =
        chrono::DateTime::parse_from_rfc3339(d["attempts"][1]["started_at"].as_str().unwrap())
            .unwrap();
    let next =
        chrono::DateTime::parse_from_rfc3339(d["next_attempt_at"].as_str().unwrap()).unwrap();
    let gap = (next - started).num_seconds();
    assert!((3599..=3967).contains(&gap), "the same step again: {gap} s");
    // Pressed again while the endpoint still fails: more than its schedule's three attempts,
    // and it is still pending, its retries all left.
    app.post(&retry, json!({})).await;
    rx.wait_for("/h", 3, WAIT).await;
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 3)
        .await;
    assert_eq!(d["state"], "pending", "{d}");

    // The endpoint is fixed: an attempt now succeeds.
    rx.answer_by_default(Reply::status(204));
    let (status, d) = app.post(&retry, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    rx.wait_for("/h", 4, WAIT).await;
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
        .await;
    assert_eq!(d["attempt_count"], 4);
}

/// An endpoint fixed while its circuit is open and ten deliveries wait an hour for their
/// retry: asked, Herald attempts every waiting one now, the first as the circuit's probe, and
/// the rest follow once it succeeds (the test's clock never reaches the cool-down's end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_waiting_for_its_retry_is_attempted_now_when_asked() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, id) = circuit_opened_with(&app, &rx, 20, json!([0, 3600, 3600])).await;
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert!(hook["circuit_open_until"].is_string(), "{hook}");
    let ids = app.delivery_ids(&org, &id).await;
    assert_eq!(ids.len(), 20);
    let retry = format!("/v1/orgs/{org}/webhooks/{id}/retry");

    rx.answer_by_default(Reply::status(200));
    let (status, answer) = app.post(&retry, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let retried = answer["retried"].as_u64().unwrap();
    assert!((10..=20).contains(&retried), "{answer}");
    // (The circuit may be closed by the probe's success before the answer, or not yet.)
    assert_eq!(answer["probed"], true, "{answer}");
    for delivery in &ids {
        app.wait_for_delivery(&org, delivery, |d| d["state"] == "succeeded")
            .await;
    }
    // Nothing waits any more; another organization's caller finds no such webhook, and an
    // inactive webhook's deliveries wait for it to be activated.
    let (status, answer) = app.post(&retry, json!({})).await;
    assert_eq!(
        (status, answer["retried"].as_u64()),
        (StatusCode::OK, Some(0))
    );
    assert_eq!(answer["probed"], false, "{answer}");
    assert!(
        answer.get("circuit_open_until").is_none(),
        "closed again: {answer}"
    );
    let other = app.create_org("Globex").await;
    let (status, _) = app
        .post(&format!("/v1/orgs/{other}/webhooks/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "active": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = app.post(&retry, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inactive"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_pushes_the_next_attempt_back() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(429).header("retry-after", "120")]);
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": [0, 1, 1] }))
        .await;
    app.send_event(&org, user_created("u1")).await;
    rx.wait_for("/h", 1, WAIT).await;
    let delivery = app
        .delivery_ids(&org, hook["id"].as_str().unwrap())
        .await
        .remove(0);
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 1)
        .await;
    let started =
        chrono::DateTime::parse_from_rfc3339(d["attempts"][0]["started_at"].as_str().unwrap())
            .unwrap();
    let next =
        chrono::DateTime::parse_from_rfc3339(d["next_attempt_at"].as_str().unwrap()).unwrap();
    let gap = (next - started).num_seconds();
    assert!(
        (119..=125).contains(&gap),
        "the retry waits for Retry-After: {gap} s"
    );
    app.advance(Duration::from_secs(125));
    rx.wait_for("/h", 2, WAIT).await;
}

/// A `429` without `Retry-After` asks to slow down all the same: the endpoint is held for a
/// second, and the refusals count as answers, not failures. A rate limiter refusing a burst
/// opened the circuit (ten failures in a row), and its endpoint got nothing for 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_without_retry_after_holds_the_endpoint_a_second_and_opens_no_circuit() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.script((0..12).map(|_| Reply::status(429)));
    let org = app.create_org("Acme").await;
    // A retry a second after each refusal, and more attempts than refusals: which delivery
    // goes after each second held is the machine's timing, and one refused thrice on
    // `[0, 1, 1]` failed for good (23 requests of the 24 awaited, now and then).
    let schedule: Vec<u64> = std::iter::once(0).chain([1; 12]).collect();
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": schedule }))
        .await;
    let id = hook["id"].as_str().unwrap();
    for i in 0..12 {
        app.send_event(&org, user_created(&format!("u{i}"))).await;
    }
    // The endpoint refuses its first twelve requests whatever their pace. What goes after each
    // second held is what leaves before the first refusal of that second comes back: on a busy
    // machine one request, and twelve seconds for the twelve (7 s is usual), where `WAIT` is 10.
    let refusals = Duration::from_secs(12) + WAIT;
    rx.wait_for("/h", 12, refusals).await;
    let deliveries = app.delivery_ids(&org, id).await;
    let (_, view) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert!(view.get("circuit_open_until").is_none(), "{view}");
    // Their retries (a second later on this schedule) go, and succeed.
    rx.wait_for("/h", 24, refusals).await;
    let mut first_tries = Vec::new();
    for delivery in &deliveries {
        let d = app
            .wait_for_delivery(&org, delivery, |d| d["state"] == "succeeded")
            .await;
        let first = d["attempts"][0]["started_at"].as_str().unwrap();
        first_tries.push(chrono::DateTime::parse_from_rfc3339(first).unwrap());
    }
    // Not all at once: after each refusal, what followed waited for the second to pass.
    let spread = *first_tries.iter().max().unwrap() - *first_tries.iter().min().unwrap();
    assert!(spread.num_milliseconds() >= 900, "{first_tries:?}");
}

/// One webhook of one organization, whose endpoint is asked to make it wait.
struct Waits<'a> {
    app: &'a TestApp,
    rx: &'a TestReceiver,
    org: &'a str,
    webhook: &'a str,
}

impl Waits<'_> {
    /// Has the endpoint answer the first of two events `status` with `Retry-After: 600` (the
    /// request seen at `path` as its `seen`th), then sends the second: answers that one's
    /// delivery, once it is put off by the wait.
    async fn ten_minutes(&self, status: u16, path: &str, seen: usize, users: [&str; 2]) -> String {
        let Self { app, rx, org, .. } = *self;
        rx.script([Reply::status(status).header("retry-after", "600")]);
        app.send_event(org, user_created(users[0])).await;
        rx.wait_for(path, seen, WAIT).await;
        app.send_event(org, user_created(users[1])).await;
        let last = app.delivery_ids(org, self.webhook).await.remove(0);
        let wait_from = chrono::Utc::now() + chrono::Duration::minutes(5);
        app.wait_for_delivery(org, &last, |d| {
            d["next_attempt_at"]
                .as_str()
                .is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).unwrap() > wait_from)
        })
        .await;
        last
    }
}

/// A `429` with `Retry-After` holds the endpoint, not only the delivery it refused: what comes
/// next waits until then (tests and resends excepted), and goes at the end of the wait, or at
/// once when someone retries what waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_the_endpoints_other_deliveries_too() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(429).header("retry-after", "120")]);
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": [0, 1, 1] }))
        .await;
    let id = hook["id"].as_str().unwrap();
    let path = format!("/v1/orgs/{org}/webhooks/{id}");
    app.send_event(&org, user_created("u1")).await;
    rx.wait_for("/h", 1, WAIT).await;
    let refused = app.delivery_ids(&org, id).await.remove(0);
    app.wait_for_delivery(&org, &refused, |d| d["attempt_count"] == 1)
        .await;
    let (_, view) = app.get(&path).await;
    let held =
        chrono::DateTime::parse_from_rfc3339(view["retry_after_until"].as_str().unwrap()).unwrap();

    // The next event's delivery is put off to the end of the wait, unsent and unfailed.
    app.send_event(&org, user_created("u2")).await;
    let next = app.delivery_ids(&org, id).await.remove(0);
    let waiting = app
        .wait_for_delivery(&org, &next, |d| {
            d["next_attempt_at"]
                .as_str()
                .is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).unwrap() >= held)
        })
        .await;
    assert_eq!(waiting["state"], "pending", "{waiting}");
    assert_eq!(waiting["attempt_count"], 0, "{waiting}");
    // And it stays put off: not made due again and again while the circuit is closed.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let (_, d) = app.get(&format!("/v1/orgs/{org}/deliveries/{next}")).await;
        assert_eq!(d["next_attempt_at"], waiting["next_attempt_at"], "{d}");
    }
    // A test event goes all the same.
    let (status, answer) = app.post(&format!("{path}/test"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let got = rx.wait_for("/h", 2, WAIT).await;
    assert!(
        got[1].json()["type"] == "herald.test",
        "{:?}",
        got[1].json()
    );

    // At the end of the wait, both go.
    app.advance(Duration::from_secs(125));
    rx.wait_for("/h", 4, WAIT).await;
    for delivery in [&refused, &next] {
        app.wait_for_delivery(&org, delivery, |d| d["state"] == "succeeded")
            .await;
    }
    let (_, view) = app.get(&path).await;
    assert!(view.get("retry_after_until").is_none(), "{view}");

    // Held again, for ten minutes; retrying what waits ends the wait at once.
    let waits = Waits {
        app: &app,
        rx: &rx,
        org: &org,
        webhook: id,
    };
    waits.ten_minutes(503, "/h", 5, ["u3", "u4"]).await;
    let (_, view) = app.get(&path).await;
    assert!(view["retry_after_until"].is_string(), "{view}");
    assert_eq!(rx.received_on("/h").len(), 5, "held, not sent");
    let (status, answer) = app.post(&format!("{path}/retry"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["retried"], 2, "{answer}");
    rx.wait_for("/h", 7, WAIT).await;
    for delivery in app.delivery_ids(&org, id).await {
        app.wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
            .await;
    }
    let (_, view) = app.get(&path).await;
    assert!(view.get("retry_after_until").is_none(), "{view}");

    // Held again; pointed at another URL, what waited goes there at once, and no wait is shown.
    let last = waits.ten_minutes(429, "/h", 8, ["u5", "u6"]).await;
    // A test goes, and succeeds; a new description then changes nothing of the wait.
    let (status, _) = app.post(&format!("{path}/test"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    rx.wait_for("/h", 9, WAIT).await;
    let (status, view) = app.patch(&path, json!({ "description": "CRM" })).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let (_, view) = app.get(&path).await;
    assert!(view["retry_after_until"].is_string(), "{view}");
    let (status, view) = app.patch(&path, json!({ "url": rx.url("/moved") })).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let (_, view) = app.get(&path).await;
    assert!(view.get("retry_after_until").is_none(), "{view}");
    rx.wait_for("/moved", 1, WAIT).await;
    app.wait_for_delivery(&org, &last, |d| d["state"] == "succeeded")
        .await;
    assert_eq!(
        rx.received_on("/h").len(),
        9,
        "nothing went during the wait"
    );

    // Held at the new URL; disabled and enabled again, what waited goes at once.
    let last = waits.ten_minutes(503, "/moved", 2, ["u7", "u8"]).await;
    for switch in ["deactivate", "activate"] {
        let (status, answer) = app.post(&format!("{path}/{switch}"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (_, view) = app.get(&path).await;
    assert!(view.get("retry_after_until").is_none(), "{view}");
    rx.wait_for("/moved", 3, WAIT).await;
    app.wait_for_delivery(&org, &last, |d| d["state"] == "succeeded")
        .await;
}

/// Answers that say when to come back do not open the circuit, however many come in a row:
/// the endpoint is at work, and its wait, not a cool-down, decides when the rest go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_retry_after_do_not_open_the_circuit() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(429).header("retry-after", "5"));
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    let path = format!("/v1/orgs/{org}/webhooks/{}", hook["id"].as_str().unwrap());
    // Tests go through the wait: twelve refusals in a row.
    for n in 1..=12 {
        let (status, answer) = app.post(&format!("{path}/test"), json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        rx.wait_for("/h", n, WAIT).await;
    }
    let (_, view) = app.get(&path).await;
    assert!(view.get("circuit_open_until").is_none(), "{view}");
    assert!(view["retry_after_until"].is_string(), "{view}");
    rx.answer_by_default(Reply::status(200));
    app.send_event(&org, user_created("u1")).await;
    let id = app
        .delivery_ids(&org, hook["id"].as_str().unwrap())
        .await
        .remove(0);
    app.wait_for_delivery(&org, &id, |d| {
        d["next_attempt_at"].as_str() > d["created_at"].as_str()
    })
    .await;
    app.advance(Duration::from_secs(6));
    app.wait_for_delivery(&org, &id, |d| d["state"] == "succeeded")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(302).header("location", &rx.url("/elsewhere"))]);
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": [0] }))
        .await;
    app.send_event(&org, user_created("u1")).await;
    rx.wait_for("/h", 1, WAIT).await;
    let delivery = app
        .delivery_ids(&org, hook["id"].as_str().unwrap())
        .await
        .remove(0);
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["state"] == "failed")
        .await;
    assert_eq!(d["attempts"][0]["error"], "redirect");
    assert_eq!(d["attempts"][0]["status"], 302);
    assert!(rx.received_on("/elsewhere").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_delay_other_webhooks() {
    let app = TestApp::spawn().await;
    let slow = TestReceiver::start().await;
    slow.answer_by_default(Reply::status(200).after(Duration::from_secs(30)));
    let fast = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    app.create_webhook(&org, &slow.url("/slow"), json!({ "timeout_ms": 20000 }))
        .await;
    app.create_webhook(&org, &fast.url("/fast"), json!({}))
        .await;
    let batch: Vec<_> = (0..60).map(|i| user_created(&format!("u{i}"))).collect();
    app.send_event(&org, json!(batch)).await;
    // The slow endpoint holds its own 16 slots for 20 s; the fast one gets all 60 meanwhile.
    fast.wait_for("/fast", 60, Duration::from_secs(8)).await;
    assert!(
        slow.received_on("/slow").len() <= 16,
        "the slow webhook is limited to its own slots"
    );
}

/// Endpoints that hang until their timeout, together more than the node's requests in flight
/// (`HERALD_MAX_REQUESTS_IN_FLIGHT`) and as many slow ones, hold every other webhook up for
/// about a second, not for their timeout: a request unanswered after a second moves among the
/// slow ones, and once those are full it is given up (a timeout, retried on schedule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_hang_together_hold_the_others_up_a_second_not_their_timeout() {
    let app = TestApp::spawn_with(|s| {
        s.delivery.max_requests_in_flight = 16;
        s.delivery.endpoint_concurrency = 12;
    })
    .await;
    let hanging = TestReceiver::start().await;
    hanging.answer_by_default(Reply::status(200).after(Duration::from_secs(30)));
    let fast = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    // Four webhooks at twelve requests each: more than the node's 16 and 16 slow ones.
    let paths = ["/hang-1", "/hang-2", "/hang-3", "/hang-4"];
    for path in paths {
        let only_created = json!({ "events": ["user.created"], "timeout_ms": 20000 });
        app.create_webhook(&org, &hanging.url(path), only_created)
            .await;
    }
    app.create_webhook(
        &org,
        &fast.url("/fast"),
        json!({ "events": ["session.revoked"] }),
    )
    .await;
    let batch: Vec<_> = (0..40).map(|i| user_created(&format!("u{i}"))).collect();
    app.send_event(&org, json!(batch)).await;
    // The node's sixteen are taken: fifteen requests or more hang (a webhook's task may hold
    // the last while it waits for a slot of its own).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let hung = || -> usize { paths.iter().map(|p| hanging.received_on(p).len()).sum() };
    while hung() < 15 {
        assert!(tokio::time::Instant::now() < deadline, "{} hanging", hung());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wave = |from: usize| -> Vec<serde_json::Value> {
        (from..from + 10)
            .map(|i| session_revoked(&format!("s{i}")))
            .collect()
    };
    app.send_event(&org, json!(wave(0))).await;
    fast.wait_for("/fast", 10, Duration::from_secs(6)).await;
    // Later, with the hanging webhooks sending what their slots allow again and again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posted = tokio::time::Instant::now();
    app.send_event(&org, json!(wave(10))).await;
    fast.wait_for("/fast", 20, Duration::from_secs(6)).await;
    let waited = posted.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "the fast webhook waited {waited:?} behind endpoints that hang"
    );
    // Given up before their 20 s timeout: only requests cut short have failed yet (each is
    // counted cut short before it is counted failed, so the failures are read first).
    let failed = app.metric("herald_attempts_failed_total").await;
    let cut = app.metric("herald_requests_cut_short_total").await;
    assert!(cut > 0, "none cut short");
    assert!(failed <= cut, "{failed} attempts failed, {cut} cut short");
    let slow = app.metric("herald_slow_requests_in_flight").await;
    assert!((15..=16).contains(&slow), "{slow} slow requests");
    assert!(app.metric("herald_requests_in_flight").await <= 16);
    // Cut short for want of room here, not failed by their endpoints within their timeout: no
    // failing streak that could disable them.
    let (_, webhooks) = app.get(&format!("/v1/orgs/{org}/webhooks")).await;
    for listed in webhooks["data"].as_array().unwrap() {
        let path = format!("/v1/orgs/{org}/webhooks/{}", listed["id"].as_str().unwrap());
        let (_, webhook) = app.get(&path).await;
        assert_eq!(webhook["failing_since"], json!(null), "{webhook}");
    }
}

/// A webhook whose endpoint keeps up goes on being sent its queue while the outcomes of its
/// attempts wait for the database (behind a large group of events, or a slow disk), up to the
/// node's bound on attempts under way: a bound of eight per slot (512) held `herald bench`'s
/// `batch` to about 20,000 deliveries/s while events were still arriving. Once the database
/// writes again every outcome is stored, and none was sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_go_on_while_their_outcomes_wait_for_the_database() {
    const EVENTS: usize = 2_000;
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    // The first wave is held until the database is locked below.
    receiver.script((0..16).map(|_| Reply::status(200).after(Duration::from_secs(2))));
    receiver.answer_by_default(Reply::status(200));
    let org = app.create_org("Acme").await;
    app.create_webhook(&org, &receiver.url("/sink"), json!({}))
        .await;
    for round in 0..EVENTS / 100 {
        let batch: Vec<_> = (0..100)
            .map(|i| user_created(&format!("u{round}-{i}")))
            .collect();
        app.send_event(&org, json!(batch)).await;
    }
    // Another connection holds the write lock: no outcome is stored until it lets go. Herald's
    // writer waits up to 5 s for it from the first outcome it must write (when the first wave
    // is answered), so the lock is held 6 s at most.
    let lock = rusqlite::Connection::open(app.data_dir().join("herald.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut sent = 0;
    for _ in 0..120 {
        sent = receiver.received_on("/sink").len();
        if sent == EVENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.metric("herald_deliveries_succeeded_total").await, 0);
    lock.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        sent, EVENTS,
        "only {sent} of {EVENTS} deliveries were sent while their outcomes waited"
    );
    for _ in 0..200 {
        if app.metric("herald_deliveries_succeeded_total").await == EVENTS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.metric("herald_deliveries_succeeded_total").await,
        EVENTS as u64
    );
    assert_eq!(
        receiver.received_on("/sink").len(),
        EVENTS,
        "none sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_to_an_endpoint_that_keeps_up_gets_more_requests_at_once_up_to_the_ceiling() {
    const CEILING: usize = 24;
    let app = TestApp::spawn_with(|s| s.delivery.endpoint_concurrency = CEILING as u32).await;
    let receiver = TestReceiver::start().await;
    // The first wave is held long enough to see how many requests it holds at once.
    receiver.script((0..16).map(|_| Reply::status(200).after(Duration::from_secs(1))));
    receiver.answer_by_default(Reply::status(200).after(Duration::from_millis(20)));
    let org = app.create_org("Acme").await;
    let webhook = app
        .create_webhook(&org, &receiver.url("/busy"), json!({}))
        .await;
    for round in 0..12 {
        let batch: Vec<_> = (0..100)
            .map(|i| user_created(&format!("u{round}-{i}")))
            .collect();
        app.send_event(&org, json!(batch)).await;
    }
    // A webhook starts at 16 requests at once, whatever its ceiling: none of the first wave has
    // been answered yet, so no seventeenth request has gone out.
    receiver.wait_for("/busy", 16, WAIT).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(receiver.received_on("/busy").len(), 16);
    assert_eq!(receiver.most_in_flight(), 16);
    receiver
        .wait_for("/busy", 1200, Duration::from_secs(30))
        .await;
    // Every slot stayed busy and every answer came in time, so it grew, and stopped at the
    // configured ceiling.
    assert_eq!(receiver.most_in_flight(), CEILING);
    // Operators see the limit each webhook has reached.
    let metrics = app.metrics().await;
    let line = format!(
        "herald_webhook_concurrency_limit{{webhook=\"{}\",org=\"{}\"}} {CEILING}",
        webhook["id"].as_str().unwrap(),
        org
    );
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_is_accepted_once() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    let event =
        json!({ "type": "user.created", "id": "idem-1", "data": { "user": { "id": "u1" } } });
    let first = app.send_event(&org, event.clone()).await;
    assert_eq!(first["events"][0]["duplicate"], false);
    let second = app.send_event(&org, event).await;
    assert_eq!(second["events"][0]["duplicate"], true);
    assert_eq!(second["deliveries"], 0);
    // A retry with its keys in another order (and no time, so the stored one stands) is the
    // same event: no mismatch.
    let reordered = app
        .send_event(
            &org,
            json!({ "data": { "user": { "id": "u1" } }, "id": "idem-1", "type": "user.created" }),
        )
        .await;
    assert_eq!(reordered["events"][0]["duplicate"], true);
    assert!(
        reordered["events"][0].get("mismatch").is_none(),
        "{reordered}"
    );
    // The id reused for another event: still nothing stored, but the answer says what differs.
    let other = app
        .send_event(
            &org,
            json!([
                { "type": "user.deleted", "id": "idem-1", "data": { "user": { "id": "u2" } },
                  "occurred_at": "2020-01-01T00:00:00Z" },
                { "type": "user.created", "id": "idem-2", "data": { "user": { "id": "u3" } } },
                { "type": "user.created", "id": "idem-2", "data": { "user": { "id": "u4" } } },
            ]),
        )
        .await;
    assert_eq!(other["events"][0]["duplicate"], true);
    assert_eq!(
        other["events"][0]["mismatch"],
        "the event already stored under this id differs in its type, data and occurred_at; \
         nothing was stored for this one (if it is another event, give it an id of its own)"
    );
    assert!(other["events"][1].get("mismatch").is_none(), "{other}");
    // Within one batch too: the second `idem-2` is not the first.
    assert_eq!(other["events"][2]["duplicate"], true);
    assert!(
        other["events"][2]["mismatch"]
            .as_str()
            .is_some_and(|m| m.contains("differs in its data;")),
        "{other}"
    );
    assert_eq!(other["deliveries"], 1);
    rx.wait_for("/h", 2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received_on("/h").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_event_stores_nothing() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    let batch = json!([
        { "type": "user.created", "id": "b-1", "data": { "user": { "id": "u1" } } },
        { "type": "user.exploded", "id": "b-2", "data": {} }
    ]);
    let (status, err) = app.post(&format!("/v1/orgs/{org}/events"), batch).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["code"], "unknown_event_type");
    assert_eq!(err["error"]["field"], "[1].type");
    let advice = format!("GET /v1/orgs/{org}/event-types");
    assert!(
        err["error"]["message"].as_str().unwrap().contains(&advice),
        "{err}"
    );
    assert!(
        app.delivery_ids(&org, hook["id"].as_str().unwrap())
            .await
            .is_empty()
    );
    // Another product's type names its catalog, rather than a near name of this one's (whose
    // data differs), in an event and in a subscription alike.
    for (typed, catalog) in [
        ("USER_CREATED", "parallelworks"),
        ("loginSuccess", "asgardeo"),
    ] {
        let (status, err) = app
            .post(
                &format!("/v1/orgs/{org}/events"),
                json!({ "type": typed, "data": {} }),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("a type of the {catalog} catalog"))
                && !message.contains("did you mean"),
            "{message}"
        );
        let (status, err) = app
            .post(
                &format!("/v1/orgs/{org}/webhooks"),
                json!({ "name": "x", "url": "https://x.example/h", "events": [typed] }),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("a type of the {catalog} catalog")),
            "{message}"
        );
    }
    let again = app
        .send_event(
            &org,
            json!({ "type": "user.created", "id": "b-1", "data": { "user": { "id": "u1" } } }),
        )
        .await;
    assert_eq!(
        again["events"][0]["duplicate"], false,
        "the first event of the refused batch was not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_newest_first_filtered_and_paginated() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(500)]);
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": [0] }))
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    for (i, t) in ["user.created", "session.revoked", "user.created"]
        .iter()
        .enumerate()
    {
        let data = if t.starts_with("user") {
            json!({ "user": { "id": i.to_string() } })
        } else {
            json!({ "session": { "id": "s" }, "user": { "id": "u" } })
        };
        app.send_event(
            &org,
            json!({ "type": t, "id": format!("h-{i}"), "data": data }),
        )
        .await;
        rx.wait_for("/h", i + 1, WAIT).await;
    }
    let base = format!("/v1/orgs/{org}/webhooks/{hook_id}/deliveries");
    let (_, page1) = app.get(&format!("{base}?limit=2")).await;
    let (_, page2) = app
        .get(&format!(
            "{base}?limit=2&cursor={}",
            page1["next_cursor"].as_str().unwrap()
        ))
        .await;
    let ids: Vec<_> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["data"].as_array().unwrap())
        .map(|d| d["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["h-2", "h-1", "h-0"]);
    assert_eq!(page2["next_cursor"], serde_json::Value::Null);
    let (_, sessions) = app.get(&format!("{base}?event_type=session.revoked")).await;
    assert_eq!(sessions["data"].as_array().unwrap().len(), 1);
    // Wait for every outcome to be recorded before filtering by state.
    for id in app.delivery_ids(&org, hook_id).await {
        app.wait_for_delivery(&org, &id, |d| d["state"] != "pending")
            .await;
    }
    let (_, failed) = app.get(&format!("{base}?state=failed")).await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    assert_eq!(failed["data"][0]["event_id"], "h-0");
    let (status, err) = app.get(&format!("{base}?state=lost")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
}

/// Failed deliveries recovered while the endpoint's circuit is open wait for a probe: the
/// answer says until when, and the CLI how to send one now, rather than "sent again now".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovering_behind_an_open_circuit_says_they_wait_for_a_probe() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let since = chrono::Utc::now().to_rfc3339();
    let (org, id) = circuit_opened_with(&app, &rx, 12, json!([0])).await;
    for delivery in app.delivery_ids(&org, &id).await {
        app.wait_for_delivery(&org, &delivery, |d| d["state"] == "failed")
            .await;
    }
    let (ok, out) = crate::api::herald_cli(
        &app,
        &[
            "deliveries",
            "recover",
            "--org",
            &org,
            "--webhook",
            &id,
            "--since",
            &since,
        ],
        None,
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("Recovered 12 failed deliveries")
            && out.contains("wait until")
            && out.contains("herald deliveries retry-waiting"),
        "{out}"
    );
    // The webhooks' list says which is failing, and since when.
    let (ok, out) = crate::api::herald_cli(&app, &["webhooks", "list", "--org", &org], None).await;
    assert!(ok, "{out}");
    let header = out.lines().next().unwrap();
    let row = out.lines().find(|l| l.starts_with(&id)).unwrap();
    let at = header
        .find("FAILING_SINCE")
        .expect("a FAILING_SINCE column");
    assert!(row[at..].starts_with("20"), "{out}");
    // The API's answer says so, whatever it recovered.
    let recover = format!("/v1/orgs/{org}/webhooks/{id}/recover");
    let (status, answer) = app.post(&recover, json!({ "since": since })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["recovered"], 0, "{answer}");
    assert!(answer["circuit_open_until"].is_string(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_resends_every_failed_delivery_since_a_time() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(503));
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": [0] }))
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let since = chrono::Utc::now().to_rfc3339();
    for i in 0..3 {
        app.send_event(&org, user_created(&format!("u{i}"))).await;
    }
    rx.wait_for("/h", 3, WAIT).await;
    for id in app.delivery_ids(&org, hook_id).await {
        app.wait_for_delivery(&org, &id, |d| d["state"] == "failed")
            .await;
    }
    rx.answer_by_default(Reply::status(200));
    let (status, answer) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{hook_id}/recover"),
            json!({ "since": since }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["recovered"], 3);
    assert!(answer.get("circuit_open_until").is_none(), "{answer}");
    rx.wait_for("/h", 6, WAIT).await;
    for id in app.delivery_ids(&org, hook_id).await {
        app.wait_for_delivery(&org, &id, |d| d["state"] == "succeeded")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_both_secrets_sign_for_a_day() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    let id = hook["id"].as_str().unwrap();
    let old = hook["secret"].as_str().unwrap().to_owned();
    let (status, rotated) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{id}/rotate-secret"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    let (_, fetched) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert!(
        fetched.get("secret").is_none(),
        "the secret is shown only on creation and rotation"
    );

    app.send_event(&org, user_created("u1")).await;
    let got = rx.wait_for("/h", 1, WAIT).await;
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
    got[0]
        .verify_standard(&old)
        .expect("the old secret still verifies");
    got[0]
        .verify_standard(&new)
        .expect("the new secret verifies");

    app.advance(Duration::from_secs(24 * 3600 + 60));
    app.send_event(&org, user_created("u2")).await;
    let got = rx.wait_for("/h", 2, WAIT).await;
    assert_eq!(got[1].header("webhook-signature").split(' ').count(), 1);
    // The clock moved a day ahead, past the tolerance of verifiers that read the real clock, so
    // check at the request's own time.
    let verify = |secret: &str| got[1].verify_standard_at_own_time(secret);
    assert!(verify(&new).is_ok(), "the new secret verifies");
    assert!(verify(&old).is_err(), "the old secret no longer signs");
    assert!(rotated["previous_secret_expires_at"].is_string());

    // A scheme with room for one signature switches at once: no overlap is promised.
    let hub = json!({ "signature": "hub", "events": ["session.revoked"] });
    let hub = app.create_webhook(&org, &rx.url("/hub"), hub).await;
    let (status, rotated) = app
        .post(
            &format!(
                "/v1/orgs/{org}/webhooks/{}/rotate-secret",
                hub["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["previous_secret_expires_at"], json!(null));

    // Moved to a one-signature scheme within the overlap, the previous secret is dropped, and
    // does not sign again if the webhook goes back to Standard Webhooks.
    let path = format!("/v1/orgs/{org}/webhooks/{id}");
    let (_, moved) = app.patch(&path, json!({ "signature": "hub" })).await;
    assert_eq!(moved["previous_secret_expires_at"], json!(null), "{moved}");
    let (_, back) = app.patch(&path, json!({ "signature": null })).await;
    assert_eq!(back["previous_secret_expires_at"], json!(null), "{back}");

    // A secret set outright after a rotation signs alone: the one rotated away stops at once
    // (sending the current secret again changes nothing, the overlap included).
    let other = app.create_webhook(&org, &rx.url("/set"), json!({})).await;
    let path = format!("/v1/orgs/{org}/webhooks/{}", other["id"].as_str().unwrap());
    let (_, rotated) = app.post(&format!("{path}/rotate-secret"), json!({})).await;
    let rotated_to = rotated["secret"].as_str().unwrap();
    let (_, same) = app.patch(&path, json!({ "secret": rotated_to })).await;
    assert!(same["previous_secret_expires_at"].is_string(), "{same}");
    let set = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (status, changed) = app.patch(&path, json!({ "secret": set })).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        changed["previous_secret_expires_at"],
        json!(null),
        "{changed}"
    );
    app.send_event(&org, user_created("u3")).await;
    let got = rx.wait_for("/set", 1, WAIT).await;
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 1);
    let verify = |secret: &str| got[0].verify_standard_at_own_time(secret);
    assert!(verify(set).is_ok(), "the secret set signs");
    let first = other["secret"].as_str().unwrap();
    assert!(
        verify(first).is_err(),
        "the secret rotated away no longer signs"
    );
}

/// A delivery that waits an hour for its retry (its endpoint answered 500), and the embedded
/// database beside it, whose parking of deliveries a test makes fail with a trigger.
struct WaitingRetry {
    org: String,
    webhook: String,
    delivery: String,
    db: rusqlite::Connection,
}

impl WaitingRetry {
    async fn start(app: &TestApp, rx: &TestReceiver) -> Self {
        rx.answer_by_default(Reply::status(500));
        let org = app.create_org("Acme").await;
        let hook = app
            .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": [0, 3600] }))
            .await;
        let webhook = hook["id"].as_str().unwrap().to_owned();
        app.send_event(&org, user_created("u1")).await;
        let delivery = app.delivery_ids(&org, &webhook).await.remove(0);
        app.wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 1)
            .await;
        let db = rusqlite::Connection::open(app.data_dir().join("herald.db")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        Self {
            org,
            webhook,
            delivery,
            db,
        }
    }

    /// Parking (a due time taken away, no attempt recorded) fails, until `allow_parking`; an
    /// attempt's outcome is still recorded.
    fn refuse_parking(&self) {
        self.db
            .execute_batch(
                "CREATE TRIGGER refuse_parking BEFORE UPDATE OF due_at ON deliveries \
                 WHEN NEW.due_at IS NULL AND NEW.attempt_count = OLD.attempt_count \
                 BEGIN SELECT RAISE(ABORT, 'parking refused by the test'); END",
            )
            .unwrap();
    }

    fn allow_parking(&self) {
        self.db
            .execute_batch("DROP TRIGGER refuse_parking")
            .unwrap();
    }

    fn due_at(&self) -> Option<i64> {
        self.db
            .query_row(
                "SELECT due_at FROM deliveries WHERE id = ?1",
                [&self.delivery],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Whether the delivery is parked within 40 s: by the first look again, 2 s after a switch,
    /// or on a slow machine (the trigger dropped after it) by the second, at 30 s.
    async fn parked_soon(&self) -> bool {
        for _ in 0..400 {
            if self.due_at().is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// A pause whose walk through the backlog failed after the switch was stored is answered as
/// made (asking again would change nothing, the webhook being paused already), and the looks
/// again after a switch finish the walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_whose_parking_failed_midway_is_finished_by_the_look_again() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let waiting = WaitingRetry::start(&app, &rx).await;
    let (org, id) = (&waiting.org, &waiting.webhook);
    waiting.refuse_parking();
    let (status, body) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{id}/deactivate"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, &body["active"]),
        (StatusCode::OK, &json!(false)),
        "{body}"
    );
    let (_, view) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(view["active"], false, "the switch itself is stored");
    assert!(waiting.due_at().is_some(), "left due by the failed step");
    waiting.allow_parking();
    assert!(waiting.parked_soon().await, "parked by the look again");
}

/// The same when Herald disables the webhook (a `410`): the organization's cached snapshot is
/// forgotten all the same (new events do not fan out to it), and the looks again park what
/// waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabling_whose_parking_failed_midway_is_finished_by_the_look_again() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let waiting = WaitingRetry::start(&app, &rx).await;
    let (org, id) = (&waiting.org, &waiting.webhook);
    waiting.refuse_parking();
    rx.answer_by_default(Reply::status(410));
    app.send_event(org, user_created("u2")).await;
    rx.wait_for("/h", 2, WAIT).await;
    let path = format!("/v1/orgs/{org}/webhooks/{id}");
    for _ in 0..100 {
        if app.get(&path).await.1["active"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.get(&path).await.1["active"], false, "disabled");
    assert!(waiting.due_at().is_some(), "left due by the failed step");
    waiting.allow_parking();
    let (_, sent) = app
        .post(&format!("/v1/orgs/{org}/events"), user_created("u3"))
        .await;
    assert_eq!(
        sent["deliveries"], 0,
        "no fan-out to a disabled webhook: {sent}"
    );
    assert!(waiting.parked_soon().await, "parked by the look again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_pauses_deliveries_and_enabling_resumes_them() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.script([Reply::status(500)]);
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    let id = hook["id"].as_str().unwrap();
    app.send_event(&org, user_created("u1")).await;
    rx.wait_for("/h", 1, WAIT).await;
    let delivery = app.delivery_ids(&org, id).await.remove(0);
    app.wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 1)
        .await;

    let (status, off) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{id}/deactivate"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, off["active"].clone()),
        (StatusCode::OK, json!(false))
    );
    app.advance(Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received_on("/h").len(), 1, "no attempt while disabled");
    let answer = app.send_event(&org, user_created("u2")).await;
    assert_eq!(
        answer["deliveries"], 0,
        "a disabled webhook gets no new deliveries"
    );

    app.post(&format!("/v1/orgs/{org}/webhooks/{id}/activate"), json!({}))
        .await;
    rx.wait_for("/h", 2, WAIT).await;
    app.wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_webhook_cancels_its_pending_deliveries() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    let id = hook["id"].as_str().unwrap();
    app.send_event(&org, user_created("u1")).await;
    rx.wait_for("/h", 1, WAIT).await;
    let delivery = app.delivery_ids(&org, id).await.remove(0);
    app.wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 1)
        .await;
    let (status, _) = app.delete(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, d) = app
        .get(&format!("/v1/orgs/{org}/deliveries/{delivery}"))
        .await;
    assert_eq!(d["state"], "cancelled");
    app.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received_on("/h").len(), 1);
    let (status, _) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_goes_through_the_normal_path() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            &rx.url("/h"),
            json!({ "events": ["session.revoked"] }),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    let (status, answer) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let got = rx.wait_for("/h", 1, WAIT).await;
    assert_eq!(got[0].json()["type"], "herald.test");
    got[0]
        .verify_standard(hook["secret"].as_str().unwrap())
        .unwrap();
    let delivery = answer["delivery_id"].as_str().unwrap();
    app.wait_for_delivery(&org, delivery, |d| d["state"] == "succeeded")
        .await;
    assert_eq!(
        app.delivery_ids(&org, id).await,
        vec![delivery.to_owned()],
        "shown in the history"
    );
}

/// A delivery queued behind a slow attempt for most of its lease is sent with the webhook's full
/// timeout under a renewed lease. Before, its attempt was cut to fit what was left of the lease
/// (and recorded as the endpoint's timeout) or, with too little left, not started at all until
/// the lease ended and the scheduler took it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_waited_most_of_its_lease_is_sent_under_a_renewed_one() {
    let app = TestApp::spawn_with(|s| {
        s.delivery.endpoint_concurrency = 1;
        s.delivery.lease_seconds = 10;
    })
    .await;
    let rx = TestReceiver::start().await;
    rx.script([
        Reply::status(200).after(Duration::from_millis(500)),
        Reply::status(200).after(Duration::from_millis(1500)),
    ]);
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "timeout_ms": 3000 }))
        .await;
    app.send_event(&org, user_created("slow")).await;
    app.send_event(&org, user_created("queued")).await;
    rx.wait_for("/h", 1, WAIT).await;
    // While the first is answered, the second's lease (10 s) runs down to about 3 s, under the
    // webhook's timeout (3 s) and its margin (2 s): the clock moves on 6.5 s. Cut to fit that
    // lease, the attempt would have had about a second for an answer that takes 1.5 s.
    app.clock.advance(Duration::from_millis(6_500));
    let got = rx.wait_for("/h", 2, WAIT).await;
    assert_eq!(got[1].json()["data"]["user"]["id"], "queued");
    for id in app.delivery_ids(&org, hook["id"].as_str().unwrap()).await {
        let d = app
            .wait_for_delivery(&org, &id, |d| d["state"] != "pending")
            .await;
        assert_eq!(d["state"], "succeeded", "{d}");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
    }
}

/// Deliveries queued behind a slow endpoint have their leases renewed before they end, not
/// only just before their attempts: a backlog longer than a lease would otherwise be taken over
/// by another node (which would say that this one had stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_deliveries_keep_their_leases_while_they_wait() {
    let app = TestApp::spawn_with(|s| {
        s.delivery.endpoint_concurrency = 1;
        // The scheduler looks every 2 s (an eighth) for leases ending within 8 s (a half).
        s.delivery.lease_seconds = 16;
    })
    .await;
    let rx = TestReceiver::start().await;
    // Answered only once the renewal is looked for: the queued ones do not start before.
    rx.script([Reply::status(200).after(Duration::from_millis(8_000))]);
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    for id in ["slow", "queued-1", "queued-2"] {
        let mut event = user_created(id);
        event["id"] = json!(id);
        app.send_event(&org, event).await;
    }
    rx.wait_for("/h", 1, WAIT).await;
    // 7 s of the queued ones' leases left: within the half a lease renewed ahead.
    app.clock.advance(Duration::from_secs(9));
    let db = rusqlite::Connection::open(app.data_dir().join("herald.db")).unwrap();
    let renewed_from = app.clock.now().plus_secs(15).as_millis();
    let mut leases = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut statement = db
            .prepare(
                "SELECT lease_until FROM deliveries WHERE event_id IN ('queued-1', 'queued-2')",
            )
            .unwrap();
        leases = statement
            .query_map([], |r| r.get::<_, Option<i64>>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        if leases.len() == 2 && leases.iter().all(|l| l.is_some_and(|l| l >= renewed_from)) {
            break;
        }
    }
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert!(
        leases.iter().all(|l| l.is_some_and(|l| l >= renewed_from)),
        "renewed for a whole lease: {leases:?} (from {renewed_from})"
    );
    rx.wait_for("/h", 3, WAIT).await;
    for id in app.delivery_ids(&org, hook["id"].as_str().unwrap()).await {
        let d = app
            .wait_for_delivery(&org, &id, |d| d["state"] != "pending")
            .await;
        assert_eq!(d["state"], "succeeded", "{d}");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_goes_ahead_of_the_backlog_and_through_an_open_circuit() {
    let app = TestApp::spawn_with(|s| s.delivery.endpoint_concurrency = 1).await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(200).after(Duration::from_millis(200)));
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            &rx.url("/h"),
            // The retry far off: what fails is not sent again here, and what the open circuit
            // holds does not outlive its schedule.
            json!({ "events": ["user.created"], "retry_schedule": [0, 3600] }),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    let test = format!("/v1/orgs/{org}/webhooks/{id}/test");

    // Eight events queued one at a time behind a slow endpoint; the test overtakes them.
    for i in 0..8 {
        app.send_event(&org, user_created(&format!("u{i}"))).await;
    }
    rx.wait_for("/h", 1, WAIT).await;
    let (status, answer) = app.post(&test, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let got = rx.wait_for("/h", 9, WAIT).await;
    let at = got
        .iter()
        .position(|r| r.json()["type"] == "herald.test")
        .unwrap();
    assert!(at <= 2, "the test arrived as request {at} of 9");

    // Ten failures, 5 s after the last success, open the circuit for 30 s (the clock does not
    // move after that here); a test then goes at once as its probe, and its success closes the
    // circuit.
    for delivery in app.delivery_ids(&org, id).await {
        app.wait_for_delivery(&org, &delivery, |d| d["state"] != "pending")
            .await;
    }
    rx.answer_by_default(Reply::status(500));
    app.advance(Duration::from_secs(5));
    for i in 0..10 {
        app.send_event(&org, user_created(&format!("f{i}"))).await;
    }
    rx.wait_for("/h", 19, WAIT).await;
    app.send_event(&org, user_created("held")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received_on("/h").len(), 19, "the circuit is open");
    rx.answer_by_default(Reply::status(200));
    let (status, answer) = app.post(&test, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let got = rx.wait_for("/h", 21, WAIT).await;
    assert_eq!(got[19].json()["type"], "herald.test", "the probe");
    assert_eq!(
        got[20].json()["data"]["user"]["id"],
        "held",
        "then what waited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organizations_own_type_is_checked_against_its_schema() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    app.register_group_synced(&org).await;
    app.create_webhook(&org, &rx.url("/h"), json!({ "events": ["group.synced"] }))
        .await;
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!({ "type": "group.synced", "data": { "group": 7 } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["code"], "schema_violation");
    assert_eq!(err["error"]["field"], "data/group");
    app.send_event(
        &org,
        json!({ "type": "group.synced", "data": { "group": "admins" } }),
    )
    .await;
    let got = rx.wait_for("/h", 1, WAIT).await;
    assert_eq!(got[0].json()["data"]["group"], "admins");
    let (status, _) = app
        .post(
            &format!("/v1/orgs/{org}/event-types"),
            json!({ "name": "user.created" }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a catalog type cannot be registered again"
    );
    // A pattern only a backtracking engine matches could hold a core per event: refused.
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/event-types"),
            json!({ "name": "group.slow", "schema": { "properties": { "s": { "pattern": "(?=a*)(a+)+b" } } } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "schema");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("(?=a*)(a+)+b"), "{message}");
    assert!(message.contains("look-around"), "{message}");

    // A schema and its example are kept as JavaScript writes them, as events' data is: a
    // 64-bit constant matches the events that send it (kept exact, it matched none, while
    // the example passed), and the example shows what receivers get.
    let big = 12_345_678_901_234_567_890_u64;
    let (status, created) = app
        .post(
            &format!("/v1/orgs/{org}/event-types"),
            json!({ "name": "account.linked",
                    "schema": { "properties": { "v": { "const": big }, "r": { "maximum": 1.0 } } },
                    "example": { "v": big, "r": 1.0 } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (
            created["example"].to_string(),
            created["schema"].to_string()
        ),
        (
            r#"{"v":12345678901234567000,"r":1}"#.to_owned(),
            r#"{"properties":{"v":{"const":12345678901234567000},"r":{"maximum":1}}}"#.to_owned()
        )
    );
    let (status, answer) = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!({ "type": "account.linked", "data": { "v": big, "r": 1 } }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
}

/// Webhooks pointed at Herald's own events API (a permit body is a valid event) would post each
/// delivery back as an event, two of them doubling the events at every hop: the deliveries are
/// refused with `410 Gone`, nothing comes of them, and the webhooks are disabled at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_pointed_at_the_events_api_does_not_feed_its_deliveries_back() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let (status, t) = app
        .post(
            &format!("/v1/orgs/{org}/event-types"),
            json!({ "name": "loop.t", "channel": "loop" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let events_api = format!("{}/v1/orgs/{org}/events", app.base);
    let mut hooks = Vec::new();
    for _ in 0..2 {
        let hook = app
            .create_webhook(
                &org,
                &events_api,
                json!({
                    "profile": "permit",
                    "secret": "a-secret-of-my-own-choosing",
                    "events": ["loop.t"],
                    "retry_schedule": [0, 3600],
                    "headers": { "authorization": format!("Bearer {}", crate::helpers::ADMIN_TOKEN) },
                }),
            )
            .await;
        hooks.push(hook["id"].as_str().unwrap().to_owned());
    }
    app.send_event(
        &org,
        json!({ "type": "loop.t", "data": { "data": { "n": 1 } } }),
    )
    .await;
    for hook in &hooks {
        let ids = app.delivery_ids(&org, hook).await;
        assert_eq!(ids.len(), 1);
        let d = app
            .wait_for_delivery(&org, &ids[0], |d| d["attempt_count"] == 1)
            .await;
        assert_eq!(d["last_status"], 410, "{d}");
        let body = d["attempts"][0]["response_body"].as_str().unwrap();
        assert!(body.contains("delivery_loop"), "{body}");
        // Disabled once the attempt's outcome has been weighed (just after it is recorded).
        let mut w = serde_json::Value::Null;
        for _ in 0..200 {
            w = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await.1;
            if w["active"] == false {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(w["active"], false, "{w}");
        assert!(
            w["disabled_reason"].as_str().unwrap().contains("410"),
            "{w}"
        );
    }
    // Each attempt was answered only after any event it posted was stored: none was.
    for hook in &hooks {
        assert_eq!(app.delivery_ids(&org, hook).await.len(), 1);
    }
}

/// An organization with a webhook on `target` and an operations webhook on `ops` that receives
/// Herald's operational events.
async fn with_operations_webhook(
    app: &TestApp,
    target: &TestReceiver,
    ops: &TestReceiver,
    extra: serde_json::Value,
) -> (String, String) {
    let org = app.create_org("Acme").await;
    app.create_webhook(
        &org,
        &ops.url("/ops"),
        json!({ "channels": ["operations"] }),
    )
    .await;
    let hook = app
        .create_webhook(&org, &target.url("/target"), extra)
        .await;
    (org, hook["id"].as_str().unwrap().to_owned())
}

fn ops_events(ops: &TestReceiver, event_type: &str) -> Vec<serde_json::Value> {
    ops.received_on("/ops")
        .iter()
        .map(|r| r.json())
        .filter(|b| b["type"] == event_type)
        .collect()
}

async fn wait_ops_event(ops: &TestReceiver, event_type: &str) -> serde_json::Value {
    match wait_ops_events(ops, event_type, 1).await.pop() {
        Some(e) => e,
        None => panic!("no {event_type} event reached the operations webhook"),
    }
}

/// The operational events of `event_type` received, once there are `count` of them or after
/// ten seconds (bounded), whichever comes first.
async fn wait_ops_events(
    ops: &TestReceiver,
    event_type: &str,
    count: usize,
) -> Vec<serde_json::Value> {
    for _ in 0..200 {
        let got = ops_events(ops, event_type);
        if got.len() >= count {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ops_events(ops, event_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_disables_the_webhook_and_the_organization_hears_of_it() {
    let app = TestApp::spawn().await;
    let (target, ops) = (TestReceiver::start().await, TestReceiver::start().await);
    target.answer_by_default(Reply::status(410));
    let (org, id) =
        with_operations_webhook(&app, &target, &ops, json!({ "events": ["user.created"] })).await;
    app.send_event(&org, user_created("u1")).await;

    let disabled = wait_ops_event(&ops, "webhook.disabled").await;
    assert_eq!(disabled["data"]["webhook"]["id"], id.as_str());
    assert!(disabled["data"]["reason"].as_str().unwrap().contains("410"));
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(hook["active"], false);
    assert!(
        hook["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410 Gone")
    );
    let delivery = app.delivery_ids(&org, &id).await.remove(0);
    let (_, d) = app
        .get(&format!("/v1/orgs/{org}/deliveries/{delivery}"))
        .await;
    assert_eq!(
        d["state"], "pending",
        "its deliveries wait, they are not dropped"
    );

    target.answer_by_default(Reply::status(200));
    let (_, hook) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/activate"), json!({}))
        .await;
    assert_eq!(
        (hook["active"].clone(), hook["disabled_reason"].clone()),
        (json!(true), serde_json::Value::Null)
    );
    let enabled = wait_ops_event(&ops, "webhook.enabled").await;
    assert_eq!(enabled["data"]["webhook"]["id"], id.as_str());
    // Turned off and on again by PATCH, it is enabled the same way.
    for active in [false, true] {
        let (status, _) = app
            .patch(
                &format!("/v1/orgs/{org}/webhooks/{id}"),
                json!({ "active": active }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(wait_ops_events(&ops, "webhook.enabled", 2).await.len(), 2);
    // The parked delivery resumes on its schedule.
    app.advance(Duration::from_secs(70));
    app.wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_recovered_is_not_disabled_by_its_next_failure() {
    let app = TestApp::spawn().await;
    let target = TestReceiver::start().await;
    target.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            &target.url("/hook"),
            json!({ "events": ["user.created"], "retry_schedule": [0, 60, 60] }),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    app.send_event(&org, user_created("u1")).await;
    let first = app.delivery_ids(&org, id).await.remove(0);
    app.wait_for_delivery(&org, &first, |d| d["attempt_count"] == 1)
        .await;
    // A change reloads the organization while the webhook is failing: the reloaded copy says
    // since when.
    let (status, _) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "name": "renamed" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // It recovers, and stays healthy for longer than the five days that disable a failing one.
    target.answer_by_default(Reply::status(200));
    app.advance(Duration::from_secs(70));
    app.wait_for_delivery(&org, &first, |d| d["state"] == "succeeded")
        .await;
    app.advance(Duration::from_secs(6 * 24 * 3600));

    // One failure now starts a new streak; it does not count from the old one.
    target.answer_by_default(Reply::status(500));
    app.send_event(&org, user_created("u2")).await;
    let second = app.delivery_ids(&org, id).await.remove(0);
    app.wait_for_delivery(&org, &second, |d| d["attempt_count"] == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(
        (hook["active"].clone(), hook["disabled_reason"].clone()),
        (json!(true), serde_json::Value::Null),
        "{hook}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streak_another_node_ended_does_not_disable_the_webhook() {
    let app = TestApp::spawn().await;
    let target = TestReceiver::start().await;
    target.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            &target.url("/hook"),
            json!({ "events": ["user.created"], "retry_schedule": [0] }),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    app.send_event(&org, user_created("u1")).await;
    let first = app.delivery_ids(&org, id).await.remove(0);
    app.wait_for_delivery(&org, &first, |d| d["state"] == "failed")
        .await;
    // This node remembers the webhook failing since now. Another node (sharing the database)
    // then delivers to it, which ends the streak in the store, not in this node's memory.
    let webhook_id = herald_core::WebhookId::parse(id).unwrap();
    let ended = app
        .state
        .store
        .note_webhook_outcome(&webhook_id, false, app.clock.now())
        .await
        .unwrap();
    assert_eq!(ended, None);

    // Six days on, one failure here starts a new streak; it does not count from the old one.
    app.advance(Duration::from_secs(6 * 24 * 3600));
    app.send_event(&org, user_created("u2")).await;
    let second = app.delivery_ids(&org, id).await.remove(0);
    app.wait_for_delivery(&org, &second, |d| d["state"] == "failed")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(
        (hook["active"].clone(), hook["disabled_reason"].clone()),
        (json!(true), serde_json::Value::Null),
        "{hook}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_fails_its_last_attempt_is_reported() {
    let app = TestApp::spawn().await;
    let (target, ops) = (TestReceiver::start().await, TestReceiver::start().await);
    target.answer_by_default(Reply::status(500));
    let (org, id) = with_operations_webhook(
        &app,
        &target,
        &ops,
        json!({ "events": ["user.created"], "retry_schedule": [0] }),
    )
    .await;
    app.send_event(&org, user_created("u1")).await;
    let exhausted = wait_ops_event(&ops, "delivery.exhausted").await;
    let delivery = app.delivery_ids(&org, &id).await.remove(0);
    assert_eq!(exhausted["data"]["delivery"]["id"], delivery.as_str());
    // Herald's own event is counted apart from what producers sent.
    assert_eq!(app.metric("herald_events_ingested_total").await, 1);
    assert_eq!(app.metric("herald_own_events_total").await, 1);
    assert_eq!(exhausted["data"]["delivery"]["event_type"], "user.created");
    assert!(
        exhausted["data"]["last_error"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!({ "type": "delivery.exhausted", "data": {} }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "producers cannot post Herald's own events: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_fails_for_five_days_is_disabled() {
    let app = TestApp::spawn().await;
    let (target, ops) = (TestReceiver::start().await, TestReceiver::start().await);
    target.answer_by_default(Reply::status(503));
    let (org, id) = with_operations_webhook(
        &app,
        &target,
        &ops,
        json!({ "events": ["user.created"], "retry_schedule": [0, 60, 300] }),
    )
    .await;
    app.send_event(&org, user_created("u1")).await;
    target.wait_for("/target", 1, WAIT).await;
    let delivery = app.delivery_ids(&org, &id).await.remove(0);
    app.wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 1)
        .await;
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(hook["active"], true, "one failure is not enough");
    assert!(hook["failing_since"].is_string() || hook["failing_since"].is_null());

    app.advance(Duration::from_secs(5 * 86_400 + 120));
    target.wait_for("/target", 2, WAIT).await;
    // Two failed attempts five days apart (nothing was sent in between) are not five days of
    // failing: still enabled.
    app.wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 2)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(hook["active"], true, "two failures are not enough: {hook}");
    // Three more attempts fail in that streak: the fifth disables it.
    for i in 2..5 {
        app.send_event(&org, user_created(&format!("u{i}"))).await;
    }
    target.wait_for("/target", 5, WAIT).await;
    let disabled = wait_ops_event(&ops, "webhook.disabled").await;
    assert!(
        disabled["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("every attempt failed"),
        "{disabled}"
    );
    assert!(
        disabled["data"]["reason"]
            .as_str()
            .unwrap()
            .ends_with("(5 days or more; 5 attempts)"),
        "{disabled}"
    );
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(hook["active"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_past_retention_is_purged_but_pending_work_is_kept() {
    let app = TestApp::spawn().await;
    let (ok, failing) = (TestReceiver::start().await, TestReceiver::start().await);
    failing.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    let a = app
        .create_webhook(
            &org,
            &ok.url("/a"),
            json!({ "events": ["user.created", "session.revoked"] }),
        )
        .await;
    let week = 7 * 86_400;
    let b = app
        .create_webhook(&org, &failing.url("/b"), json!({ "events": ["session.revoked"], "retry_schedule": [0, week, week, week, week, week] }))
        .await;
    let (a, b) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    app.send_event(
        &org,
        json!({ "type": "user.created", "id": "old-1", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    app.send_event(&org, json!({ "type": "session.revoked", "id": "old-2", "data": { "session": { "id": "s" }, "user": { "id": "u" } } })).await;
    let a_ids = app.delivery_ids(&org, &a).await;
    let b_id = app.delivery_ids(&org, &b).await.remove(0);
    for id in &a_ids {
        app.wait_for_delivery(&org, id, |d| d["state"] == "succeeded")
            .await;
    }
    app.wait_for_delivery(&org, &b_id, |d| d["attempt_count"] == 1)
        .await;
    let other = app.create_org("Globex").await;
    let other_hook = app
        .create_webhook(&other, &ok.url("/other"), json!({}))
        .await;
    app.send_event(
        &other,
        json!({ "type": "user.created", "id": "other-1", "data": { "user": { "id": "u9" } } }),
    )
    .await;
    let other_delivery = app
        .delivery_ids(&other, other_hook["id"].as_str().unwrap())
        .await
        .remove(0);
    app.wait_for_delivery(&other, &other_delivery, |d| d["state"] == "succeeded")
        .await;

    // An organization purges its own history: only its finished, old enough events go.
    let (status, purged) = app
        .post(
            &format!("/v1/orgs/{other}/purge"),
            json!({ "before": "2000-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(
        (status, purged["purged"]["events"].clone()),
        (StatusCode::OK, json!(0))
    );

    // Thirty-one days later the retention task removes what is finished and old.
    app.advance(Duration::from_secs(31 * 86_400));
    let mut gone = false;
    for _ in 0..200 {
        let (status, _) = app
            .get(&format!("/v1/orgs/{other}/deliveries/{other_delivery}"))
            .await;
        if status == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "a finished delivery past retention is purged");
    let remaining = app.delivery_ids(&org, &a).await;
    assert_eq!(
        remaining.len(),
        1,
        "only the delivery whose event still has pending work is kept"
    );
    let (_, kept) = app
        .get(&format!("/v1/orgs/{org}/deliveries/{}", remaining[0]))
        .await;
    assert_eq!(kept["event_id"], "old-2");
    let (status, pending) = app.get(&format!("/v1/orgs/{org}/deliveries/{b_id}")).await;
    assert_eq!(
        (status, pending["state"].clone()),
        (StatusCode::OK, json!("pending"))
    );
    let again = app
        .send_event(
            &org,
            json!({ "type": "user.created", "id": "old-1", "data": { "user": { "id": "u1" } } }),
        )
        .await;
    assert_eq!(
        again["events"][0]["duplicate"], false,
        "a purged event id can be used again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_the_requests_to_a_webhook() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    app.create_webhook(
        &org,
        &rx.url("/limited"),
        json!({ "rate_limit_per_second": 5 }),
    )
    .await;
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks"),
            json!({ "name": "x", "url": rx.url("/x"), "rate_limit_per_second": 0 }),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].clone()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!("rate_limit_per_second")
        )
    );
    let batch: Vec<_> = (0..10).map(|i| user_created(&format!("u{i}"))).collect();
    let started = std::time::Instant::now();
    app.send_event(&org, json!(batch)).await;
    rx.wait_for("/limited", 10, WAIT).await;
    // Ten requests at five a second cannot take less than nine intervals of 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(1750),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_s_first_delay_puts_off_the_first_attempt() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            &rx.url("/later"),
            json!({ "retry_schedule": [300, 60] }),
        )
        .await;
    let answer = app.send_event(&org, user_created("u1")).await;
    assert_eq!(answer["deliveries"], 1, "{answer}");
    let id = app
        .delivery_ids(&org, hook["id"].as_str().unwrap())
        .await
        .remove(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.received_on("/later").is_empty(), "sent before its delay");
    let (_, d) = app.get(&format!("/v1/orgs/{org}/deliveries/{id}")).await;
    assert_eq!(
        (d["state"].clone(), d["attempt_count"].clone()),
        (json!("pending"), json!(0))
    );

    app.advance(Duration::from_secs(301));
    app.wait_for_delivery(&org, &id, |d| d["state"] == "succeeded")
        .await;
    assert_eq!(rx.received_on("/later").len(), 1);
}

/// SPEC 5: a slow endpoint never delays the others. One that answers in time but slowly would
/// fill the in-memory room every webhook shares; once another webhook has work, each is owed
/// an equal share, and the slow one's queued deliveries go back to the store to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_take_the_memory_other_webhooks_need() {
    // 200 deliveries in memory at most; the slow endpoint is sent 400 at once.
    let app = TestApp::spawn_with(|s| s.delivery.max_deliveries_in_memory = 200).await;
    let (slow, healthy) = (TestReceiver::start().await, TestReceiver::start().await);
    // In time, but slowly: none of its requests ends while the test looks.
    slow.answer_by_default(Reply::status(200).after(Duration::from_secs(9)));
    // The healthy one takes a moment too, so that its deliveries stay in memory a while.
    healthy.answer_by_default(Reply::status(200).after(Duration::from_secs(4)));
    let org = app.create_org("Acme").await;
    app.create_webhook(
        &org,
        &slow.url("/slow"),
        json!({ "events": ["user.created"], "timeout_ms": 10000 }),
    )
    .await;
    app.create_webhook(
        &org,
        &healthy.url("/ok"),
        json!({ "events": ["session.revoked"] }),
    )
    .await;
    let backlog: Vec<_> = (0..400).map(|i| user_created(&format!("u{i}"))).collect();
    app.send_event(&org, json!(backlog)).await;
    slow.wait_for("/slow", 1, WAIT).await;

    // The slow one's deliveries fill memory (16 requests in flight, 9 s each); these should
    // not wait behind them.
    let revoked: Vec<_> = (0..10).map(|i| session_revoked(&format!("s{i}"))).collect();
    app.send_event(&org, json!(revoked)).await;
    healthy.wait_for("/ok", 10, Duration::from_secs(5)).await;

    // They were let past the budget (their requests are still in flight), and the slow one's
    // queue gave room back to the store (none of its own requests has ended yet).
    let held = held_in_memory_once_within(&app, 200).await;
    assert!(
        held <= 200,
        "{held} deliveries in memory, over the budget of 200"
    );
}

/// The deliveries held in memory by `/metrics`, once they are `budget` or fewer (or after 2 s).
async fn held_in_memory_once_within(app: &TestApp, budget: u64) -> u64 {
    let mut held = u64::MAX;
    for _ in 0..20 {
        held = app.metric("herald_deliveries_in_memory").await;
        if held <= budget {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held
}

/// What a webhook gave back to the store to make room for another is pulled again once it has
/// room, as is what never fitted: each delivery arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_given_back_for_room_are_pulled_again_and_arrive_once() {
    let app = TestApp::spawn_with(|s| s.delivery.max_deliveries_in_memory = 40).await;
    let (busy, other) = (TestReceiver::start().await, TestReceiver::start().await);
    busy.answer_by_default(Reply::status(200).after(Duration::from_millis(300)));
    other.answer_by_default(Reply::status(200).after(Duration::from_secs(1)));
    let org = app.create_org("Acme").await;
    app.create_webhook(
        &org,
        &busy.url("/busy"),
        json!({ "events": ["user.created"] }),
    )
    .await;
    app.create_webhook(
        &org,
        &other.url("/other"),
        json!({ "events": ["session.revoked"] }),
    )
    .await;
    // 40 fit in memory, 80 are spilled to the store at once.
    let backlog: Vec<_> = (0..120).map(|i| user_created(&format!("u{i}"))).collect();
    app.send_event(&org, json!(backlog)).await;
    busy.wait_for("/busy", 1, WAIT).await;
    // The other webhook is owed half the room: the busy one gives back queued deliveries.
    let revoked: Vec<_> = (0..20).map(|i| session_revoked(&format!("s{i}"))).collect();
    app.send_event(&org, json!(revoked)).await;
    other.wait_for("/other", 20, Duration::from_secs(5)).await;
    // The busy one gave room back rather than keep its 40.
    let given_back = app.metric("herald_deliveries_given_back_total").await;
    assert!(given_back > 0, "nothing was given back");

    busy.wait_for("/busy", 120, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = busy.received_on("/busy");
    let distinct: std::collections::HashSet<_> = received
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        (received.len(), distinct.len()),
        (120, 120),
        "every delivery, each once"
    );
}

/// An organization and the id of its webhook to `/flaky` on `rx`, which answered 500 to the
/// first of `events` deliveries until the webhook's circuit opened. `timeout_ms` is the
/// webhook's. Its retry schedule (a retry 5 s on, a last one 600 s after that) outlasts the
/// cool-downs, so that the circuit holds its deliveries rather than failing them.
async fn circuit_opened(
    app: &TestApp,
    rx: &TestReceiver,
    events: usize,
    timeout_ms: u32,
) -> (String, String) {
    let settings = json!({ "retry_schedule": [0, 5, 600], "timeout_ms": timeout_ms });
    opened(app, rx, events, settings).await
}

/// [`circuit_opened`] with this retry schedule.
async fn circuit_opened_with(
    app: &TestApp,
    rx: &TestReceiver,
    events: usize,
    schedule: serde_json::Value,
) -> (String, String) {
    opened(app, rx, events, json!({ "retry_schedule": schedule })).await
}

async fn opened(
    app: &TestApp,
    rx: &TestReceiver,
    events: usize,
    mut settings: serde_json::Value,
) -> (String, String) {
    rx.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    // One request at a time, so the breaker sees each failure before the next request.
    settings["rate_limit_per_second"] = json!(200);
    let hook = app.create_webhook(&org, &rx.url("/flaky"), settings).await;
    let batch: Vec<_> = (0..events)
        .map(|i| user_created(&format!("u{i}")))
        .collect();
    app.send_event(&org, json!(batch)).await;
    rx.wait_for("/flaky", 10, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    (org, hook["id"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_breaker_stops_hammering_a_failing_endpoint_and_probes_before_resuming() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, id) = circuit_opened(&app, &rx, 40, 10_000).await;
    let id = id.as_str();
    let hammered = rx.received_on("/flaky").len();
    assert!(
        hammered < 40,
        "the circuit opened before every delivery was tried: {hammered}"
    );
    let ids = app.delivery_ids(&org, id).await;
    assert_eq!(ids.len(), 40);
    // The API says so too (this node's circuit).
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert!(hook["circuit_open_until"].is_string(), "{hook}");

    // The endpoint recovers; after the cool-down a probe goes through and the rest follow.
    rx.answer_by_default(Reply::status(200));
    app.advance(Duration::from_secs(31));
    for delivery in &ids {
        app.wait_for_delivery(&org, delivery, |d| {
            d["state"] == "succeeded" || d["state"] == "failed"
        })
        .await;
    }
    let (_, ok) = app
        .get(&format!(
            "/v1/orgs/{org}/webhooks/{id}/deliveries?state=succeeded&limit=200"
        ))
        .await;
    assert_eq!(
        ok["data"].as_array().unwrap().len(),
        40,
        "every delivery got through in the end (retried or deferred)"
    );
    // Closed again: no longer said.
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert!(hook.get("circuit_open_until").is_none(), "{hook}");
    assert_eq!(hook["id"], id, "the webhook itself, as before");
}

/// A webhook changed while its circuit is open (here its URL, to an endpoint that works) gets a
/// fresh start: what the open circuit deferred, and what comes next, goes now rather than at
/// the cool-down's end (the clock does not move here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_changed_while_its_circuit_is_open_gets_a_fresh_start() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, id) = circuit_opened(&app, &rx, 40, 10_000).await;
    let hammered = rx.received_on("/flaky").len();
    assert!(hammered < 40, "{hammered}");
    rx.answer_by_default(Reply::status(200));
    let (status, _) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "url": rx.url("/fixed") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Shown closed at once, as the change left it.
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert!(hook.get("circuit_open_until").is_none(), "{hook}");
    app.send_event(&org, user_created("after-the-change")).await;
    // The deliveries never tried, and the new one; those that failed wait for their retry.
    let expected = 40 - hammered + 1;
    let fixed = rx.wait_for("/fixed", expected, WAIT).await;
    assert_eq!(fixed.len(), expected);
    let (_, hook) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert!(hook.get("circuit_open_until").is_none(), "{hook}");
}

/// A stop whose grace runs out gives the deliveries it cut off back to the store, due now, so
/// that the next start (or another node) sends them at once, not when their leases end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_gives_back_the_deliveries_it_cut_off() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(200).after(Duration::from_secs(30)));
    let org = app.create_org("Acme").await;
    app.create_webhook(&org, &rx.url("/slow"), json!({ "timeout_ms": 60_000 }))
        .await;
    app.send_event(&org, user_created("u1")).await;
    rx.wait_for("/slow", 1, WAIT).await;
    let leased = || {
        let conn = rusqlite::Connection::open(app.data_dir().join("herald.db")).unwrap();
        conn.query_row("SELECT lease_until IS NOT NULL FROM deliveries", [], |r| {
            r.get::<_, bool>(0)
        })
        .unwrap()
    };
    assert!(leased(), "held while its attempt is out");
    app.state.dispatcher.drain(Duration::from_millis(200)).await;
    assert!(!leased(), "given back when the stop cut it off");
}

/// A webhook disabled while its circuit is open is not said to hold deliveries back until a
/// probe: they are parked, and nothing is sent until it is enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_webhook_shows_no_open_circuit() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, id) = circuit_opened(&app, &rx, 40, 10_000).await;
    let path = format!("/v1/orgs/{org}/webhooks/{id}");
    let (_, hook) = app.get(&path).await;
    assert!(hook["circuit_open_until"].is_string(), "{hook}");
    let (status, _) = app.post(&format!("{path}/deactivate"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, hook) = app.get(&path).await;
    assert!(hook.get("circuit_open_until").is_none(), "{hook}");
}

/// An endpoint that stays down: its open circuit holds deliveries without sending them, and
/// one whose schedule has run out by the time the endpoint fails a request fails then, unsent,
/// as its last attempt would have, each told to the organization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_an_open_circuit_holds_past_their_schedule_fail_unsent() {
    let app = TestApp::spawn().await;
    let (target, ops) = (TestReceiver::start().await, TestReceiver::start().await);
    target.answer_by_default(Reply::status(500));
    // One request at a time, so the breaker sees each failure before the next request; one
    // attempt each.
    let (org, id) = with_operations_webhook(
        &app,
        &target,
        &ops,
        json!({ "events": ["user.created"], "rate_limit_per_second": 200, "retry_schedule": [0] }),
    )
    .await;
    let batch: Vec<_> = (0..20).map(|i| user_created(&format!("u{i}"))).collect();
    app.send_event(&org, json!(batch)).await;
    target.wait_for("/target", 10, WAIT).await;
    // Ten failures opened the circuit; the deliveries not tried yet were due at once, when
    // the endpoint failed: they fail unsent, the ones tried after their one attempt.
    let ids = app.delivery_ids(&org, &id).await;
    assert_eq!(ids.len(), 20);
    let (mut tried, mut untried) = (0, Vec::new());
    for delivery in &ids {
        let d = app
            .wait_for_delivery(&org, delivery, |d| d["state"] == "failed")
            .await;
        if d["attempt_count"] == 0 {
            assert_eq!(d["last_error"], "circuit_open", "{d}");
            untried.push(delivery.clone());
        } else {
            assert_eq!(
                (d["attempt_count"].as_u64(), d["last_error"].as_str()),
                (Some(1), Some("http_status")),
                "{d}"
            );
            tried += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = target.received_on("/target").len() as u64;
    assert_eq!(tried, sent, "one attempt each for those sent, none after");
    assert!(
        !untried.is_empty(),
        "the circuit opened before every delivery was tried"
    );

    let exhausted = wait_ops_events(&ops, "delivery.exhausted", 20).await;
    assert_eq!(exhausted.len(), 20);
    let attempts: u64 = exhausted
        .iter()
        .map(|e| e["data"]["attempts"].as_u64().unwrap())
        .sum();
    assert_eq!(attempts, sent);
    let unsent: Vec<_> = exhausted
        .iter()
        .filter(|e| e["data"]["attempts"] == 0)
        .collect();
    assert_eq!(unsent.len(), untried.len());
    assert!(
        unsent.iter().all(|e| e["data"]["last_error"]
            .as_str()
            .unwrap()
            .contains("circuit")),
        "{unsent:?}"
    );

    // The dashboard says why one that was never tried failed, and what to do.
    let visitor = crate::dashboard::Visitor::signed_in(&app, crate::helpers::ADMIN_TOKEN).await;
    let page = visitor
        .get(&format!("/orgs/{org}/deliveries/{}", untried[0]))
        .await;
    assert!(
        page.body.contains("No attempt was made.")
            && page.body.contains("its circuit is open")
            && page.body.contains("send a test event"),
        "{}",
        page.body
    );
    let page = visitor.get(&format!("/orgs/{org}/webhooks/{id}")).await;
    assert!(
        page.body.contains("Herald holds deliveries back until"),
        "the webhook's page says its circuit is open: {}",
        page.body
    );

    // Recovered while the circuit is still open (the endpoint fixed, say), they wait for the
    // probe rather than fail again at once: the endpoint has not failed since.
    app.advance(Duration::from_secs(1));
    let (status, answer) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{id}/recover"),
            json!({ "since": "2020-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(answer["recovered"], 20, "{status} {answer}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, failed) = app
        .get(&format!(
            "/v1/orgs/{org}/webhooks/{id}/deliveries?state=failed"
        ))
        .await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 0, "{failed}");
    // The endpoint is back; after the cool-down the probe goes, and the rest follow.
    target.answer_by_default(Reply::status(200));
    app.advance(Duration::from_secs(30));
    for delivery in &ids {
        app.wait_for_delivery(&org, delivery, |d| d["state"] == "succeeded")
            .await;
    }
}

/// A delivery whose schedule runs out during a cool-down is not failed for the circuit's not
/// knowing better: if the endpoint is back by the probe, it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_schedule_ends_during_a_cool_down_goes_if_the_endpoint_is_back() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, id) = circuit_opened_with(&app, &rx, 20, json!([0, 5])).await;
    // The retries (5.5 s at most) and the rest come due during the 30 s cool-down.
    app.advance(Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, failed) = app
        .get(&format!(
            "/v1/orgs/{org}/webhooks/{id}/deliveries?state=failed"
        ))
        .await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 0, "{failed}");
    rx.answer_by_default(Reply::status(200));
    app.advance(Duration::from_secs(25));
    for delivery in app.delivery_ids(&org, &id).await {
        app.wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
            .await;
    }
}

/// How many seconds after `from` each pending delivery of webhook `id` is next due, once at
/// least `count` of them are `secs` or more ahead (or as they stand after five seconds).
async fn waits_after(
    app: &TestApp,
    org: &str,
    id: &str,
    from: Timestamp,
    (count, secs): (usize, i64),
) -> Vec<i64> {
    let mut waits = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, pending) = app
            .get(&format!(
                "/v1/orgs/{org}/webhooks/{id}/deliveries?state=pending&limit=200"
            ))
            .await;
        waits = pending["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["next_attempt_at"].as_str())
            .map(|at| {
                let at = Timestamp::parse_rfc3339(at, "next_attempt_at").unwrap();
                (at.as_millis() - from.as_millis()) / 1000
            })
            .collect();
        if waits.iter().filter(|w| **w >= secs).count() >= count {
            break;
        }
    }
    waits
}

/// A deleted webhook's open circuit is forgotten (nothing else would ever clear it), and so is
/// its organization's when that is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_webhooks_circuit_is_forgotten() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, id) = circuit_opened(&app, &rx, 20, 30_000).await;
    let store = app.state.store.clone();
    let stored = |org: String, id: String| {
        let store = store.clone();
        async move {
            let (org, id) = (
                herald_core::OrgId::parse(&org).unwrap(),
                herald_core::WebhookId::parse(&id).unwrap(),
            );
            store.get_webhook(&org, &id).await.unwrap()
        }
    };
    let webhook = stored(org.clone(), id.clone()).await;
    let dispatcher = &app.state.dispatcher;
    assert!(dispatcher.circuit_open_until(&webhook).is_some());
    let (status, _) = app.delete(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(dispatcher.circuit_open_until(&webhook).is_none());

    let rx = TestReceiver::start().await;
    let (org, id) = circuit_opened(&app, &rx, 20, 30_000).await;
    let webhook = stored(org.clone(), id.clone()).await;
    assert!(dispatcher.circuit_open_until(&webhook).is_some());
    let (status, _) = app.delete(&format!("/v1/orgs/{org}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(dispatcher.circuit_open_until(&webhook).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_wait_for_the_breakers_probe_and_follow_it_as_soon_as_it_succeeds() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, id) = circuit_opened(&app, &rx, 20, 30_000).await;

    // The endpoint is back but slow: after the cool-down, the probe is out for four seconds.
    rx.answer_by_default(Reply::status(200).after(Duration::from_secs(4)));
    app.advance(Duration::from_secs(31));
    let cooled = app.clock.now();
    // Meanwhile the others wait for its answer (its timeout at most), instead of coming back
    // every second, which for a large backlog meant writing all of it again every second.
    let waits = waits_after(&app, &org, &id, cooled, (19, 30)).await;
    assert_eq!(
        waits.iter().filter(|w| **w >= 30).count(),
        19,
        "all but the probe wait for it: {waits:?}"
    );

    // It succeeds: the rest follow at once (answered at once now), not when its time would
    // have run out (30 s on, longer than the waits below).
    rx.answer_by_default(Reply::status(200));
    for delivery in app.delivery_ids(&org, &id).await {
        app.wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_deferred_during_a_failed_probe_go_to_the_next_cool_downs_end_at_once() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, id) = circuit_opened(&app, &rx, 20, 30_000).await;
    // After the cool-down the probe is out for two seconds, and fails.
    rx.answer_by_default(Reply::status(500).after(Duration::from_secs(2)));
    app.advance(Duration::from_secs(31));
    let cooled = app.clock.now();
    // The others waited for it (31 s on); now they wait for the next cool-down (60 s from the
    // failure), moved there by one write instead of coming due at the probe's deadline to be
    // deferred again one by one.
    let waits = waits_after(&app, &org, &id, cooled, (19, 60)).await;
    assert!(
        waits.iter().filter(|w| **w >= 60).count() >= 19,
        "all but the probe wait for the next cool-down: {waits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let app = TestApp::spawn().await;
    let (ok, failing) = (TestReceiver::start().await, TestReceiver::start().await);
    failing.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    let good = app
        .create_webhook(&org, &ok.url("/ok"), json!({ "events": ["user.created"] }))
        .await;
    let bad = app
        .create_webhook(
            &org,
            &failing.url("/bad"),
            json!({ "events": ["session.revoked"] }),
        )
        .await;
    for i in 0..3 {
        app.send_event(&org, user_created(&format!("u{i}"))).await;
    }
    app.send_event(&org, session_revoked("s")).await;
    for id in app.delivery_ids(&org, good["id"].as_str().unwrap()).await {
        app.wait_for_delivery(&org, &id, |d| d["state"] == "succeeded")
            .await;
    }
    let bad_delivery = app
        .delivery_ids(&org, bad["id"].as_str().unwrap())
        .await
        .remove(0);
    app.wait_for_delivery(&org, &bad_delivery, |d| d["attempt_count"] == 1)
        .await;
    let (status, _) = app
        .get(&format!("/v1/orgs/{org}/webhooks/wh_missing"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let text = app.metrics().await;
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    };
    assert_eq!(value("herald_events_ingested_total "), 4.0);
    assert!(value("herald_http_responses_total{class=\"2xx\"}") >= 4.0);
    assert!(value("herald_http_responses_total{class=\"4xx\"}") >= 1.0);
    assert_eq!(value("herald_http_responses_total{class=\"5xx\"}"), 0.0);
    assert_eq!(value("herald_attempts_paused "), 0.0);
    assert_eq!(value("herald_database_writes_failing "), 0.0);
    assert!(
        text.contains(&format!(
            "herald_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            herald::COMMIT
        )),
        "{text}"
    );
    assert_eq!(value("herald_deliveries_created_total "), 4.0);
    assert_eq!(value("herald_deliveries_succeeded_total "), 3.0);
    assert_eq!(value("herald_retries_scheduled_total "), 1.0);
    assert_eq!(value("herald_attempt_duration_seconds_count "), 4.0);
    assert!(value("herald_store_commit_duration_seconds_count ") > 0.0);
    let bad_id = bad["id"].as_str().unwrap();
    assert_eq!(
        value(&format!(
            "herald_webhook_pending_deliveries{{webhook=\"{bad_id}\",org=\"{org}\",active=\"true\"}}"
        )),
        1.0
    );
    assert!(
        value(&format!(
            "herald_webhook_oldest_pending_seconds{{webhook=\"{bad_id}\",org=\"{org}\",active=\"true\"}}"
        )) >= 0.0
    );
    // A load balancer's probes are not the API's responses: between two scrapes, only the
    // first scrape's own answer is counted.
    let ok_before = value("herald_http_responses_total{class=\"2xx\"}");
    for path in ["/readyz", "/healthz", "/readyz"] {
        assert_eq!(app.get(path).await.0, StatusCode::OK);
    }
    let text = app.metrics().await;
    let ok_after = text
        .lines()
        .find_map(|l| l.strip_prefix("herald_http_responses_total{class=\"2xx\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert_eq!(ok_after, ok_before + 1.0, "{text}");
    // Disabled, its delivery waits parked: said apart, so that an alert on active="true"
    // does not fire for ever.
    let (status, _) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{bad_id}/deactivate"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // (A count is reused for a moment after it is made.)
    let parked_line = format!(
        "herald_webhook_oldest_pending_seconds{{webhook=\"{bad_id}\",org=\"{org}\",active=\"false\"}}"
    );
    let mut parked = String::new();
    for _ in 0..50 {
        parked = app.metrics().await;
        if parked.contains(&parked_line) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(parked.contains(&parked_line), "{parked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_gives_back_what_it_had_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let app = TestApp::spawn_with(|s| {
        s.storage.data_dir = data.clone();
        s.delivery.endpoint_concurrency = 1;
    })
    .await;
    let target = TestReceiver::start().await;
    target.answer_by_default(Reply::status(200).after(Duration::from_millis(3000)));
    let org = app.create_org("Acme").await;
    app.create_webhook(
        &org,
        &target.url("/slow"),
        json!({ "events": ["user.created"] }),
    )
    .await;
    for i in 0..5 {
        app.send_event(&org, user_created(&format!("u{i}"))).await;
    }
    target.wait_for("/slow", 1, WAIT).await;

    // Stopping: the four queued behind the attempt in flight are given back to the store at
    // once, due now and without a lease, for another node (or the next start) to take rather
    // than after the lease (five minutes by default); the attempt in flight finishes.
    drop(app);
    let still_leased = || {
        let conn = rusqlite::Connection::open(data.join("herald.db")).unwrap();
        conn.query_row(
            "SELECT COUNT(*) FILTER (WHERE lease_until IS NOT NULL), COUNT(*) \
             FROM deliveries WHERE state = 'pending'",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .unwrap()
    };
    let wait_for = |wanted: (i64, i64), within: Duration| {
        let deadline = std::time::Instant::now() + within;
        async move {
            let mut seen = still_leased();
            while seen != wanted && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen = still_leased();
            }
            seen
        }
    };
    // Given back while the first is still in flight (it answers after 3 s).
    let seen = wait_for((1, 5), Duration::from_secs(2)).await;
    assert_eq!(seen, (1, 5), "(pending with a lease, pending)");
    let seen = wait_for((0, 4), Duration::from_secs(15)).await;
    assert_eq!(seen, (0, 4), "(pending with a lease, pending)");
    assert_eq!(target.received_on("/slow").len(), 1);
}

/// The node's requests in flight are bounded across webhooks (HERALD_MAX_REQUESTS_IN_FLIGHT):
/// a fan-out to many webhooks at their own limits would otherwise hold a connection each, tens
/// of thousands at once, past the open-file limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded_across_webhooks() {
    let rx = crate::pg::TimingReceiver::start(Duration::from_millis(40)).await;
    let app = TestApp::spawn_with(|s| s.delivery.max_requests_in_flight = 16).await;
    let org = app.create_org("Acme").await;
    for _ in 0..6 {
        app.create_webhook(&org, &rx.url(), json!({ "events": ["user.created"] }))
            .await;
    }
    let events: Vec<serde_json::Value> = (0..100).map(|i| user_created(&format!("u{i}"))).collect();
    let (status, _) = app
        .post(&format!("/v1/orgs/{org}/events"), json!(events))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rx.visits().len() < 600 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 600 delivered",
            rx.visits().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The most requests the receiver was handling at one moment.
    let mut edges: Vec<(tokio::time::Instant, i32)> = rx
        .visits()
        .iter()
        .flat_map(|v| [(v.started, 1), (v.ended, -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    assert!(
        (2..=16).contains(&most),
        "{most} requests in flight at once (six webhooks, 16 each at first)"
    );
}
