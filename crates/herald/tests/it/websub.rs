//! WebSub verification of intent, against a subscriber written from the WebSub rules
//! (`helpers::websub_answer`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Reply, Subscriber, TestApp, TestReceiver};

const WAIT: Duration = Duration::from_secs(10);

pub(crate) fn login_success(id: &str) -> Value {
    json!({ "type": "loginSuccess", "id": id, "data": { "user": { "id": "u1" }, "tenant": { "id": "1", "name": "acme" }, "organization": { "id": "o1", "name": "acme" } } })
}

async fn asgardeo_org(app: &TestApp) -> (String, Value) {
    let (status, org) = app
        .post(
            "/v1/orgs",
            json!({ "name": "My Org", "handle": "myorg", "catalogs": ["asgardeo"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{org}");
    (org["id"].as_str().unwrap().to_owned(), org)
}

async fn insecure_app() -> TestApp {
    TestApp::spawn_with(|s| s.security.allow_insecure_urls = true).await
}

/// An asgardeo webhook at `rx`'s `/hub` for `channels`, asked to be active on creation (and so
/// verified at once).
async fn active_hub(app: &TestApp, org: &str, rx: &TestReceiver, channels: &[&str]) -> Value {
    app.create_webhook(org, &rx.url("/hub"), json!({ "profile": "asgardeo", "channels": channels, "secret": "asgardeo-secret-value", "active": true }))
        .await
}

fn state_of<'a>(subs: &'a Value, channel: &str) -> &'a Value {
    subs.as_array()
        .unwrap()
        .iter()
        .find(|s| s["channel"] == channel)
        .unwrap_or_else(|| panic!("no {channel} in {subs}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_verifies_each_channel_with_the_websub_parameters() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    // The callback's own query string is kept.
    let hook = app
        .create_webhook(&org, &format!("{}?team=iam", rx.url("/hub")), json!({ "profile": "asgardeo", "channels": ["login", "session"], "secret": "asgardeo-secret-value", "headers": { "X-Gateway-Key": "k-123" } }))
        .await;
    assert_eq!(hook["active"], false);
    assert_eq!(hook["verification"], "websub");
    assert!(
        rx.received().is_empty(),
        "nothing is sent before activation"
    );
    let id = hook["id"].as_str().unwrap();
    // A resend before it was ever enabled would be an unsubscribe from nothing: refused.
    let (status, refused) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/verify"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never subscribed, so there is nothing to unsubscribe; activate it"),
        "{refused}"
    );
    assert!(rx.received().is_empty());

    let (status, active) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/activate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{active}");
    assert_eq!(
        state_of(&active["subscriptions"], "login")["state"],
        "verified"
    );
    assert_eq!(
        state_of(&active["subscriptions"], "session")["state"],
        "verified"
    );

    let gets = rx.verifications_on("/hub");
    assert_eq!(gets.len(), 2, "one verification per channel");
    let mut topics: Vec<&str> = gets.iter().map(|g| g.param("hub.topic").unwrap()).collect();
    topics.sort();
    assert_eq!(
        topics,
        vec![
            format!("myorg.{org}.schema.wso2.v1.event.login"),
            format!("myorg.{org}.schema.wso2.v1.event.session")
        ]
    );
    for g in &gets {
        assert_eq!(g.param("hub.mode"), Some("subscribe"));
        assert_eq!(g.param("hub.lease_seconds"), Some("864000"));
        assert_eq!(g.param("team"), Some("iam"));
        // The custom headers, which a gateway in front may require of every request.
        assert_eq!(g.header("x-gateway-key"), "k-123");
        assert!(
            g.param("hub.challenge").unwrap().len() >= 32,
            "an unguessable challenge"
        );
    }
    assert_ne!(
        gets[0].param("hub.challenge"),
        gets[1].param("hub.challenge"),
        "a fresh challenge each time"
    );

    let (_, listed) = app
        .get(&format!("/v1/orgs/{org}/webhooks/{id}/subscriptions"))
        .await;
    let login = state_of(&listed["data"], "login");
    assert_eq!(login["mode"], "subscribe");
    assert!(login["expires_at"].is_string() && login["last_attempt_at"].is_string());

    app.send_event(&org, login_success("e1")).await;
    let posts = rx.wait_for("/hub", 1, WAIT).await;
    assert_eq!(posts[0].json()["jti"], "e1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_echo_or_a_refusal_fails_the_channel_and_its_events_are_not_sent() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = app.create_webhook(&org, &rx.url("/hub"), json!({ "profile": "asgardeo", "channels": ["login"], "secret": "asgardeo-secret-value" })).await;
    let id = hook["id"].as_str().unwrap();

    rx.subscriber(Subscriber::WrongEcho);
    let (_, active) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/activate"), json!({}))
        .await;
    let login = state_of(&active["subscriptions"], "login");
    assert_eq!(login["state"], "failed");
    // The reason quotes what the endpoint answered.
    assert!(
        login["reason"]
            .as_str()
            .unwrap()
            .contains(r#"answered 200 ("sure, whatever"): a body that is not the challenge"#),
        "{login}"
    );

    rx.subscriber(Subscriber::Refuse(404));
    let (status, resent) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{id}/verify"),
            json!({ "channel": "login" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resent}");
    let login = state_of(&resent["data"], "login");
    assert_eq!(login["state"], "failed");
    assert!(
        login["reason"]
            .as_str()
            .unwrap()
            .starts_with(r#"the endpoint answered 404 ("no") (in WebSub, the subscriber's no to this subscription); it must answer 2xx"#),
        "{login}"
    );

    // Too slow for the webhook's timeout: the reason says how long it waited, and the cap.
    app.patch(
        &format!("/v1/orgs/{org}/webhooks/{id}"),
        json!({ "timeout_ms": 200 }),
    )
    .await;
    rx.subscriber(Subscriber::SlowEcho(Duration::from_millis(800)));
    let (_, resent) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/verify"), json!({}))
        .await;
    let reason = state_of(&resent["data"], "login")["reason"].clone();
    assert!(
        reason
            .as_str()
            .unwrap()
            .starts_with("the endpoint did not answer within 200 ms (")
            && reason.as_str().unwrap().contains("10 s at most"),
        "{reason}"
    );

    // An event for the unverified channel is recorded, but not sent, and says why.
    let answer = app.send_event(&org, login_success("e1")).await;
    assert_eq!(answer["events"][0]["skipped"], 1);
    assert_eq!(answer["deliveries"], 0);
    let (_, list) = app
        .get(&format!("/v1/orgs/{org}/webhooks/{id}/deliveries"))
        .await;
    assert_eq!(list["data"][0]["state"], "skipped");
    assert!(
        list["data"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("'login' is not verified"),
        "{list}"
    );

    // Resending once the subscriber behaves verifies it; later events are delivered.
    rx.subscriber(Subscriber::Echo);
    let (_, resent) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/verify"), json!({}))
        .await;
    assert_eq!(state_of(&resent["data"], "login")["state"], "verified");
    app.send_event(&org, login_success("e2")).await;
    let posts = rx.wait_for("/hub", 1, WAIT).await;
    assert_eq!(posts[0].json()["jti"], "e2");

    // The event skipped while the channel was not verified is sent by a recover that asks
    // for skipped ones too; a plain recover (failed ones only) leaves it.
    let recover = format!("/v1/orgs/{org}/webhooks/{id}/recover");
    let since = "2000-01-01T00:00:00Z";
    let (_, plain) = app.post(&recover, json!({ "since": since })).await;
    assert_eq!(plain["recovered"], 0, "{plain}");
    // (From the CLI, which sends `include_skipped`.)
    let (ok, out) = crate::api::herald_cli(
        &app,
        &[
            "deliveries",
            "recover",
            "--org",
            "myorg",
            "--webhook",
            id,
            "--since",
            since,
            "--include-skipped",
        ],
        None,
    )
    .await;
    assert!(
        ok && out.contains("Recovered 1 failed or skipped delivery"),
        "{out}"
    );
    let posts = rx.wait_for("/hub", 2, WAIT).await;
    assert_eq!(posts[1].json()["jti"], "e1");
}

/// Enabled by a client that gives up once the switch is stored, a WebSub webhook asks its
/// channels all the same: the subscribe goes with the switch, to the end. (It was left active
/// with nobody asked, its events waiting for a verification never sent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_whose_client_gives_up_still_asks_the_channels() {
    use herald::service::{Scope, webhooks};
    use herald_core::{OrgId, WebhookId};
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = app
        .create_webhook(&org, &rx.url("/hub"), json!({ "profile": "asgardeo", "channels": ["login"], "secret": "asgardeo-secret-value" }))
        .await;
    let (org_id, state) = (OrgId::parse(&org).unwrap(), &app.state);
    let hook_id = WebhookId::parse(hook["id"].as_str().unwrap()).unwrap();
    let enable = webhooks::set_active(state, &Scope::Admin, &org_id, &hook_id, true, None);
    let enabled = || async {
        let stored = state.store.get_webhook(&org_id, &hook_id).await.unwrap();
        stored.active
    };
    crate::api::drop_once_stored(enable, enabled).await;
    let asked = rx.wait_for_verifications("/hub", 1, WAIT).await;
    assert_eq!(asked.len(), 1, "the channel is asked once");
    assert_eq!(asked[0].param("hub.mode"), Some("subscribe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_unsubscribes_and_only_then_may_the_webhook_be_deleted() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login"]).await;
    assert_eq!(
        hook["active"], true,
        "asked to be active on creation: verified at once"
    );
    let id = hook["id"].as_str().unwrap();

    let (status, err) = app.delete(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deactivate it first"),
        "{err}"
    );

    rx.subscriber(Subscriber::Refuse(500));
    let (_, inactive) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{id}/deactivate"),
            json!({}),
        )
        .await;
    let login = state_of(&inactive["subscriptions"], "login");
    assert_eq!(
        (login["mode"].clone(), login["state"].clone()),
        (json!("unsubscribe"), json!("failed"))
    );
    let last = rx.verifications_on("/hub").pop().unwrap();
    assert_eq!(last.param("hub.mode"), Some("unsubscribe"));

    rx.subscriber(Subscriber::Echo);
    let (_, resent) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/verify"), json!({}))
        .await;
    let login = state_of(&resent["data"], "login");
    assert_eq!(
        (login["mode"].clone(), login["state"].clone()),
        (json!("unsubscribe"), json!("verified"))
    );

    let (status, _) = app.delete(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_a_webhook_off_and_on_by_patch_unsubscribes_and_subscribes() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login"]).await;
    let id = hook["id"].as_str().unwrap();
    assert_eq!(rx.verifications_on("/hub").len(), 1);

    for (active, mode) in [(false, "unsubscribe"), (true, "subscribe")] {
        let (status, changed) = app
            .patch(
                &format!("/v1/orgs/{org}/webhooks/{id}"),
                json!({ "active": active }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{changed}");
        assert_eq!(changed["active"], active);
        let last = rx.verifications_on("/hub").pop().unwrap();
        assert_eq!(last.param("hub.mode"), Some(mode));
        // The answer says what the endpoint was asked, and what it said.
        let asked = state_of(&changed["subscriptions"], "login");
        assert_eq!(
            (&asked["mode"], &asked["state"]),
            (&json!(mode), &json!("verified")),
            "{changed}"
        );
    }
    // A change that asks the endpoint nothing answers no subscriptions.
    let (_, renamed) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "name": "renamed" }),
        )
        .await;
    assert_eq!(renamed["name"], "renamed");
    assert!(renamed.get("subscriptions").is_none(), "{renamed}");
    assert_eq!(rx.verifications_on("/hub").len(), 3);
    // Verified again, it gets events.
    app.send_event(&org, login_success("e1")).await;
    let posts = rx.wait_for("/hub", 1, WAIT).await;
    assert_eq!(posts[0].json()["jti"], "e1");
}

/// A webhook moved to the Asgardeo profile takes its verification of intent (before, it kept
/// sending, now as Asgardeo, to an endpoint that never confirmed); moved back, it unsubscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_moved_to_the_asgardeo_profile_verifies_first_and_moved_back_unsubscribes() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = app
        .create_webhook(&org, &rx.url("/hub"), json!({ "channels": ["login"] }))
        .await;
    assert_eq!(
        (hook["verification"].clone(), hook["active"].clone()),
        (json!("none"), json!(true))
    );
    let id = hook["id"].as_str().unwrap();

    rx.subscriber(Subscriber::Refuse(404));
    let (status, moved) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "profile": "asgardeo" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["verification"], "websub", "{moved}");
    let asked = rx.verifications_on("/hub");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].param("hub.mode"), Some("subscribe"));
    let answer = app.send_event(&org, login_success("e1")).await;
    assert_eq!(answer["events"][0]["skipped"], 1, "{answer}");

    // Moved back, it takes the standard profile's way (none) and tells the endpoint.
    rx.subscriber(Subscriber::Echo);
    let (_, back) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "profile": "standard" }),
        )
        .await;
    assert_eq!(back["verification"], "none", "{back}");
    let last = rx.verifications_on("/hub").pop().unwrap();
    assert_eq!(last.param("hub.mode"), Some("unsubscribe"));
    app.send_event(&org, login_success("e2")).await;
    let posts = rx.wait_for("/hub", 1, WAIT).await;
    assert_eq!(
        posts[0].json()["type"],
        "loginSuccess",
        "sent the standard way"
    );

    // A verification chosen rather than the profile's default stays through a change of profile.
    let chosen = app
        .create_webhook(
            &org,
            &rx.url("/chosen"),
            json!({ "channels": ["login"], "verification": "websub" }),
        )
        .await;
    let (_, changed) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{}", chosen["id"].as_str().unwrap()),
            json!({ "profile": "optare" }),
        )
        .await;
    assert_eq!(changed["verification"], "websub", "{changed}");

    // Moved to asgardeo and switched off in one change: it never subscribed, so nothing is
    // asked of the endpoint, not even to unsubscribe.
    let quiet = app
        .create_webhook(&org, &rx.url("/quiet"), json!({ "channels": ["login"] }))
        .await;
    let (status, off) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{}", quiet["id"].as_str().unwrap()),
            json!({ "profile": "asgardeo", "active": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{off}");
    assert!(rx.verifications_on("/quiet").is_empty());
}

/// The topic names the profile: a verified webhook moved to another profile, keeping its
/// WebSub verification, is verified again on the new topic before it gets another event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_profile_is_a_new_topic_verified_again() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, hook) = websub_org(&app, &rx, "/std", &["user.created"]).await;
    let id = hook["id"].as_str().unwrap();
    let first = rx.verifications_on("/std");
    assert_eq!(first.len(), 1, "verified on creation");
    assert!(
        first[0]
            .param("hub.topic")
            .unwrap()
            .contains(".schema.standard.")
    );

    let (status, moved) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "profile": "optare" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    // Verified again under the new topic, and the old topic unsubscribed (in the background).
    let asked = verifications(&rx, "/std", 3).await;
    assert_eq!(asked.len(), 3, "verified again, the old topic left");
    let mut asked: Vec<(&str, &str)> = asked[1..]
        .iter()
        .map(|r| (r.param("hub.mode").unwrap(), r.param("hub.topic").unwrap()))
        .collect();
    asked.sort();
    assert_eq!(asked[0].0, "subscribe");
    assert!(asked[0].1.contains(".schema.optare."), "{asked:?}");
    assert_eq!(asked[1].0, "unsubscribe");
    assert_eq!(asked[1].1, first[0].param("hub.topic").unwrap());

    // And a type of its own whose channel it receives cannot be deleted from under it (its
    // deliveries need the type's channel to be let through).
    let types = format!("/v1/orgs/{org}/event-types");
    let (status, _) = app
        .post(
            &types,
            json!({ "name": "invoice.paid", "channel": "billing" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "events": ["user.created", "invoice.paid"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "events": ["*"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = app.delete(&format!("{types}/invoice.paid")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("WebSub"),
        "{err}"
    );
}

/// An organization with an enabled webhook at `rx`'s `path` that verifies its intent (WebSub)
/// for `events`, its channels verified; answers the organization's id and the webhook.
async fn websub_org(
    app: &TestApp,
    rx: &TestReceiver,
    path: &str,
    events: &[&str],
) -> (String, Value) {
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            &rx.url(path),
            json!({ "verification": "websub", "events": events, "active": true }),
        )
        .await;
    (org, hook)
}

/// The verification requests `rx` has had on `path` once there are `n` (within [`WAIT`]),
/// and a moment more for any that should not follow.
async fn verifications(rx: &TestReceiver, path: &str, n: usize) -> Vec<crate::helpers::Received> {
    rx.wait_for_verifications(path, n, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.verifications_on(path)
}

/// SPEC 4: every subscribed channel is verified, under a topic that names the organization's
/// handle. A channel that appears later (a type of the organization's own on a new channel,
/// for a webhook that takes them all) is subscribed when it appears, and a new handle is a
/// new topic for every channel; channels already verified under their topic are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_channel_or_a_new_handle_is_subscribed_when_it_appears() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, hook) = websub_org(&app, &rx, "/all", &["*"]).await;
    let id = hook["id"].as_str().unwrap();
    let subscriptions = format!("/v1/orgs/{org}/webhooks/{id}/subscriptions");
    let (_, subs) = app.get(&subscriptions).await;
    let channels = subs["data"].as_array().unwrap().len();
    assert!(channels > 1, "{subs}");
    assert_eq!(rx.verifications_on("/all").len(), channels);
    // Created active, it answered as activating it does: with each channel's state.
    let answered = hook["subscriptions"].as_array().unwrap();
    assert_eq!(answered.len(), channels, "{hook}");
    assert!(answered.iter().all(|s| s["state"] == "verified"), "{hook}");

    let (status, _) = app
        .post(
            &format!("/v1/orgs/{org}/event-types"),
            json!({ "name": "invoice.paid", "channel": "billing" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let asked = verifications(&rx, "/all", channels + 1).await;
    assert_eq!(asked.len(), channels + 1, "billing alone is asked for");
    let billing = asked.last().unwrap();
    assert_eq!(billing.param("hub.mode"), Some("subscribe"));
    assert!(
        billing
            .param("hub.topic")
            .unwrap()
            .ends_with(".event.billing"),
        "{:?}",
        billing.param("hub.topic")
    );
    let billing = subscription_on(&app, &subscriptions, "billing", |s| {
        s["state"] == "verified"
    })
    .await;
    assert!(
        billing["topic"].as_str().unwrap().starts_with("acme."),
        "{billing}"
    );
    // Its events now go out instead of being skipped.
    let (status, sent) = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!({ "type": "invoice.paid", "data": { "invoice": "in_1" } }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    assert_eq!(sent["events"][0]["deliveries"], 1, "{sent}");
    rx.wait_for("/all", 1, WAIT).await;

    // A new handle: every channel under its new topic.
    let (status, changed) = app
        .patch(
            &format!("/v1/orgs/{org}"),
            json!({ "handle": "acme-renamed" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let asked = verifications(&rx, "/all", 2 * (channels + 1)).await;
    assert_eq!(asked.len(), 2 * (channels + 1));
    for renewed in &asked[channels + 1..] {
        assert_eq!(renewed.param("hub.mode"), Some("subscribe"));
        assert!(
            renewed
                .param("hub.topic")
                .unwrap()
                .starts_with("acme-renamed."),
            "{:?}",
            renewed.param("hub.topic")
        );
    }
    let billing = subscription_on(&app, &subscriptions, "billing", |s| {
        s["state"] == "verified" && s["topic"].as_str().unwrap().starts_with("acme-renamed.")
    })
    .await;
    assert_eq!(billing["mode"], "subscribe", "{billing}");

    // Renamed again while the endpoint refuses: the lease it has still holds (its events go
    // on), and the new topic is asked for again within the hour, as a renewal would be.
    rx.subscriber(Subscriber::Refuse(503));
    let (status, _) = app
        .patch(
            &format!("/v1/orgs/{org}"),
            json!({ "handle": "acme-third" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let billing = subscription_on(&app, &subscriptions, "billing", |s| {
        s["topic"].as_str().unwrap().starts_with("acme-third.")
    })
    .await;
    assert_eq!(billing["state"], "verified", "{billing}");
    assert!(
        billing["reason"].as_str().unwrap().contains("503"),
        "{billing}"
    );
    assert!(billing["renew_at"].is_string(), "{billing}");
    let (_, sent) = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!({ "type": "invoice.paid", "data": { "invoice": "in_2" } }),
        )
        .await;
    assert_eq!(sent["events"][0]["deliveries"], 1, "{sent}");
}

/// A channel the change's own task never asked for (its node stopped first) is asked for by
/// the retention run, at the next start and every ten minutes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_run_subscribes_a_channel_a_change_left_unasked() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, hook) = websub_org(&app, &rx, "/all", &["*"]).await;
    let id = hook["id"].as_str().unwrap();
    let before = rx.verifications_on("/all").len();
    // Stored as a node that stopped before its task ran leaves it: no request sent.
    let owner = herald_core::OrgId::from_trusted(org.clone());
    app.state
        .store
        .create_event_type(&herald_core::event_type::CustomEventType {
            id: herald_core::EventTypeId::generate(),
            org_id: owner.clone(),
            name: "invoice.paid".into(),
            channel: Some("billing".into()),
            description: None,
            schema: None,
            example: None,
            created_at: herald_core::Timestamp::from_millis(0),
        })
        .await
        .unwrap();
    app.state.directory.invalidate(&owner);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.verifications_on("/all").len(), before);
    app.state.maintenance.notify_one();
    let asked = verifications(&rx, "/all", before + 1).await;
    assert_eq!(asked.len(), before + 1, "billing alone");
    assert!(
        asked[before]
            .param("hub.topic")
            .unwrap()
            .ends_with(".event.billing"),
        "{:?}",
        asked[before].param("hub.topic")
    );
    let subscriptions = format!("/v1/orgs/{org}/webhooks/{id}/subscriptions");
    subscription_on(&app, &subscriptions, "billing", |s| {
        s["state"] == "verified"
    })
    .await;

    // A channel left pending (a change stored it so, and its node stopped before asking) is
    // asked for again once it has been pending longer than any answer takes.
    let stored = app.state.store.org_subscriptions(&owner).await.unwrap();
    let mut stuck = stored.into_iter().find(|s| s.channel == "billing").unwrap();
    stuck.state = herald_core::subscription::State::Pending;
    stuck.expires_at = None;
    stuck.renew_at = None;
    app.state
        .store
        .save_subscriptions(&owner, std::slice::from_ref(&stuck))
        .await
        .unwrap();
    app.state.directory.invalidate(&owner);
    app.state.maintenance.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.verifications_on("/all").len(),
        before + 1,
        "not yet: it may be under way"
    );
    app.advance(Duration::from_secs(700));
    let asked = verifications(&rx, "/all", before + 2).await;
    assert_eq!(asked.len(), before + 2, "billing again");
    subscription_on(&app, &subscriptions, "billing", |s| {
        s["state"] == "verified"
    })
    .await;
}

/// On the embedded database, a channel left pending by a verification cut short before this
/// node started (it was stopped mid-way) is asked again at start, not ten minutes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_cut_short_before_this_node_started_is_asked_again_at_once() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, hook) = websub_org(&app, &rx, "/std", &["user.created"]).await;
    let before = rx.verifications_on("/std").len();
    let (owner, id) = (
        herald_core::OrgId::from_trusted(org.clone()),
        herald_core::WebhookId::parse(hook["id"].as_str().unwrap()).unwrap(),
    );
    // As a change a minute before the start left it: stored, its channel pending, unasked.
    let a_minute_before = app.state.started_at.plus_secs(-60);
    let mut webhook = app.state.store.get_webhook(&owner, &id).await.unwrap();
    webhook.updated_at = a_minute_before;
    app.state.store.update_webhook(&webhook).await.unwrap();
    let mut stuck = app
        .state
        .store
        .org_subscriptions(&owner)
        .await
        .unwrap()
        .remove(0);
    stuck.state = herald_core::subscription::State::Pending;
    stuck.expires_at = None;
    stuck.renew_at = None;
    stuck.last_attempt_at = Some(a_minute_before);
    app.state
        .store
        .save_subscriptions(&owner, std::slice::from_ref(&stuck))
        .await
        .unwrap();
    app.state.directory.invalidate(&owner);
    // An event meanwhile waits for the verification (looked at again in a minute).
    let event = json!({ "type": "user.created", "id": "held", "data": { "user": { "id": "u1" } } });
    let sent = app.send_event(&org, event).await;
    assert_eq!(sent["events"][0]["skipped"], 0, "{sent}");
    // The run at start (here: woken), with no time passed.
    app.state.maintenance.notify_one();
    let asked = verifications(&rx, "/std", before + 1).await;
    assert_eq!(asked.len(), before + 1, "asked again at once");
    let subscriptions = format!(
        "/v1/orgs/{org}/webhooks/{}/subscriptions",
        hook["id"].as_str().unwrap()
    );
    subscription_on(&app, &subscriptions, "user", |s| s["state"] == "verified").await;
    // Confirmed: the event that waited goes now, not at its next look.
    rx.wait_for("/std", 1, Duration::from_secs(10)).await;
}

/// Deleting an organization tells its WebSub subscribers, as disabling each webhook would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_organization_unsubscribes_its_websub_webhooks() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, _) = websub_org(&app, &rx, "/std", &["user.created", "session.revoked"]).await;
    // A disabled one was told when it was disabled, and is not told again.
    let off = app
        .create_webhook(
            &org,
            &rx.url("/off"),
            json!({ "verification": "websub", "events": ["user.created"] }),
        )
        .await;
    assert_eq!(off["active"], false);
    let subscribed = rx.verifications_on("/std");
    assert_eq!(subscribed.len(), 2, "two channels");
    let (status, _) = app.delete(&format!("/v1/orgs/{org}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let asked = verifications(&rx, "/std", 4).await;
    assert_eq!(asked.len(), 4);
    let mut topics: Vec<(&str, &str)> = asked
        .iter()
        .map(|r| (r.param("hub.mode").unwrap(), r.param("hub.topic").unwrap()))
        .collect();
    let unsubscribed: Vec<&str> = topics
        .split_off(2)
        .into_iter()
        .map(|(mode, topic)| {
            assert_eq!(mode, "unsubscribe");
            topic
        })
        .collect();
    for (_, topic) in topics {
        assert!(unsubscribed.contains(&topic), "{topic}: {unsubscribed:?}");
    }
    assert!(rx.verifications_on("/off").is_empty());
}

/// A WebSub webhook gets only the events of channels it verified, so one naming a type without
/// a channel is refused: every event of it would be skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websub_verification_refuses_a_type_without_a_channel() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let (status, _) = app
        .post(
            &format!("/v1/orgs/{org}/event-types"),
            json!({ "name": "audit.logged" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let hooks = format!("/v1/orgs/{org}/webhooks");
    let body = |verification: &str| json!({ "name": "x", "url": "https://example.com/h", "verification": verification, "events": ["user.created", "audit.logged"] });
    let (status, err) = app.post(&hooks, body("websub")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "events[1]", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no channel"),
        "{err}"
    );
    // Without WebSub it is taken; turning WebSub on then is refused the same way.
    let (status, hook) = app.post(&hooks, body("none")).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let (status, err) = app
        .patch(
            &format!("{hooks}/{}", hook["id"].as_str().unwrap()),
            json!({ "verification": "websub" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "events[1]", "{err}");
    // Herald's own test event goes whatever the verification.
    let (status, made) = app
        .post(
            &hooks,
            json!({ "name": "t", "url": "https://example.com/t", "verification": "websub", "events": ["user.created", "herald.test"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    // One stored so before the rule still takes changes that leave its subscription as it is,
    // even sent along as the dashboard's form sends it.
    let id = hook["id"].as_str().unwrap();
    let owner = herald_core::OrgId::from_trusted(org.clone());
    let mut old = app
        .state
        .store
        .get_webhook(&owner, &herald_core::WebhookId::from_trusted(id.into()))
        .await
        .unwrap();
    old.verification = herald_core::subscription::Verification::Websub;
    app.state.store.update_webhook(&old).await.unwrap();
    app.state.directory.invalidate(&owner);
    let (status, renamed) = app
        .patch(
            &format!("{hooks}/{id}"),
            json!({ "name": "renamed", "events": ["user.created", "audit.logged"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");

    // A URL with hub.* parameters of its own would send the endpoint two of each.
    let hub_url = |verification: &str| json!({ "name": "q", "url": "https://example.com/h?k=1&hub.challenge=fixed", "verification": verification, "events": ["user.created"] });
    let (status, err) = app.post(&hooks, hub_url("websub")).await;
    assert!(
        status == StatusCode::UNPROCESSABLE_ENTITY
            && err["error"]["field"] == "url"
            && err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("carries 'hub.challenge' in its query"),
        "{err}"
    );
    let (status, plain) = app.post(&hooks, hub_url("none")).await;
    assert_eq!(status, StatusCode::CREATED, "{plain}");
    let (status, err) = app
        .patch(
            &format!("{hooks}/{}", plain["id"].as_str().unwrap()),
            json!({ "verification": "websub" }),
        )
        .await;
    assert_eq!(
        (status, &err["error"]["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("url")),
        "{err}"
    );
}

/// Types registered one after another on new channels are each asked for once, not once per
/// registration: one check runs per organization at a time, and once more for the changes
/// that came meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_channels_asks_each_channel_once() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, _) = websub_org(&app, &rx, "/all", &["*"]).await;
    let before = rx.verifications_on("/all").len();
    // Answers take a moment, so that the registrations come while a check runs.
    rx.subscriber(Subscriber::SlowEcho(Duration::from_millis(200)));
    for i in 0..8 {
        let (status, _) = app
            .post(
                &format!("/v1/orgs/{org}/event-types"),
                json!({ "name": format!("bulk.t{i}"), "channel": format!("bulk{i}") }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    rx.wait_for_verifications("/all", before + 8, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = rx.verifications_on("/all");
    let mut topics: Vec<&str> = asked[before..]
        .iter()
        .map(|r| r.param("hub.topic").unwrap())
        .collect();
    topics.sort_unstable();
    let all = topics.len();
    topics.dedup();
    assert_eq!((all, topics.len()), (8, 8), "{topics:?}");
}

/// A webhook disabled while its new topics are being asked for stays unsubscribed: the late
/// answers to the subscribe are not stored over the unsubscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_disabled_while_new_topics_are_asked_for_stays_unsubscribed() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, hook) = websub_org(&app, &rx, "/std", &["user.created"]).await;
    let id = hook["id"].as_str().unwrap();
    let before = rx.verifications_on("/std").len();
    rx.subscriber(Subscriber::SlowEcho(Duration::from_millis(1500)));
    let (status, _) = app
        .patch(
            &format!("/v1/orgs/{org}"),
            json!({ "handle": "acme-renamed" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    rx.wait_for_verifications("/std", before + 1, WAIT).await;
    // The subscribe is on its way, to be answered late; the unsubscribe is answered at once.
    rx.subscriber(Subscriber::Echo);
    let (status, off) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{id}/deactivate"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{off}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (_, subs) = app
        .get(&format!("/v1/orgs/{org}/webhooks/{id}/subscriptions"))
        .await;
    for sub in subs["data"].as_array().unwrap() {
        assert_eq!(
            (&sub["mode"], &sub["state"]),
            (&json!("unsubscribe"), &json!("verified")),
            "{subs}"
        );
    }
}

/// The webhook's subscription for `channel` once `ready` holds (within [`WAIT`]).
async fn subscription_on(
    app: &TestApp,
    subscriptions: &str,
    channel: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, listed) = app.get(subscriptions).await;
        let sub = state_of(&listed["data"], channel).clone();
        if ready(&sub) || tokio::time::Instant::now() > deadline {
            assert!(ready(&sub), "{sub}");
            return sub;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_url_that_refuses_verification_gets_no_events() {
    let app = insecure_app().await;
    let (rx, moved) = (TestReceiver::start().await, TestReceiver::start().await);
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login"]).await;
    let id = hook["id"].as_str().unwrap();
    assert_eq!(hook["active"], true);

    moved.subscriber(Subscriber::Refuse(404));
    let (status, changed) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "url": moved.url("/hub") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(moved.verifications_on("/hub").len(), 1);
    assert_eq!(changed["subscriptions"][0]["state"], "failed", "{changed}");
    let (_, subs) = app
        .get(&format!("/v1/orgs/{org}/webhooks/{id}/subscriptions"))
        .await;
    assert_eq!(
        state_of(&subs["data"], "login")["state"],
        "failed",
        "{subs}"
    );

    // The old URL's lease does not carry over to the new one.
    let answer = app.send_event(&org, login_success("e1")).await;
    assert_eq!(answer["events"][0]["skipped"], 1, "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(moved.received_on("/hub").iter().all(|r| r.method != "POST"));

    // The old URL is told to unsubscribe from the topic it had, as deactivating would.
    let old = verifications(&rx, "/hub", 2).await;
    assert_eq!(old.len(), 2, "subscribed on creation, then unsubscribed");
    assert_eq!(old[1].param("hub.mode"), Some("unsubscribe"));
    assert_eq!(old[1].param("hub.topic"), old[0].param("hub.topic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_url_gets_no_events_on_the_old_ones_verification_even_if_its_client_gives_up() {
    let app = insecure_app().await;
    let (rx, moved) = (TestReceiver::start().await, TestReceiver::start().await);
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login"]).await;
    let id = hook["id"].as_str().unwrap().to_owned();

    // The new URL takes 1.5 s to confirm; the client that moved the webhook gives up sooner.
    moved.subscriber(Subscriber::SlowEcho(Duration::from_millis(1_500)));
    let patch = app
        .http
        .patch(format!("{}/v1/orgs/{org}/webhooks/{id}", app.base))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(&json!({ "url": moved.url("/hub") }))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(
        patch.is_err(),
        "answered before its verification: {patch:?}"
    );
    for _ in 0..100 {
        if !moved.verifications_on("/hub").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(moved.verifications_on("/hub").len(), 1);

    // The change is stored and its verification under way: the old URL's does not count. An
    // event arriving now waits for the new one's, neither sent before it nor skipped.
    let answer = app.send_event(&org, login_success("during")).await;
    assert_eq!(answer["events"][0]["skipped"], 0, "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        moved.received_on("/hub").iter().all(|r| r.method != "POST"),
        "sent before its verification"
    );
    // The verification goes on without the client; the event that waited goes as soon as it
    // is confirmed (not at its next look, a minute on), and events flow to the new URL.
    subscription(&app, &org, &id, |s| s["state"] == "verified").await;
    let answer = app.send_event(&org, login_success("after")).await;
    assert_eq!(answer["events"][0]["skipped"], 0, "{answer}");
    let posts = moved.wait_for("/hub", 2, WAIT).await;
    let bodies: Vec<String> = posts
        .iter()
        .map(|p| String::from_utf8_lossy(&p.body).into_owned())
        .collect();
    assert!(
        posts.len() == 2
            && bodies.iter().any(|b| b.contains("during"))
            && bodies.iter().any(|b| b.contains("after")),
        "{bodies:?}"
    );
}

/// A webhook with no retries (`retry_schedule: [0]`) moved to a URL that takes a while to
/// confirm: the event that arrives meanwhile waits for the answer all the same, and goes once
/// the channel is confirmed (its schedule, spent at once, does not skip it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_during_a_verification_waits_for_it_whatever_its_schedule() {
    let app = insecure_app().await;
    let (rx, moved) = (TestReceiver::start().await, TestReceiver::start().await);
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login"]).await;
    let path = format!("/v1/orgs/{org}/webhooks/{}", hook["id"].as_str().unwrap());
    let (status, _) = app.patch(&path, json!({ "retry_schedule": [0] })).await;
    assert_eq!(status, StatusCode::OK);
    moved.subscriber(Subscriber::SlowEcho(Duration::from_millis(1_500)));
    let patch = {
        let (http, url, body) = (
            app.http.clone(),
            format!("{}{path}", app.base),
            json!({ "url": moved.url("/hub") }),
        );
        tokio::spawn(async move {
            http.patch(url)
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    for _ in 0..100 {
        if !moved.verifications_on("/hub").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = app.send_event(&org, login_success("no-retries")).await;
    assert_eq!(answer["events"][0]["skipped"], 0, "{answer}");
    assert_eq!(patch.await.unwrap(), StatusCode::OK);
    let posts = moved.wait_for("/hub", 1, WAIT).await;
    assert!(
        String::from_utf8_lossy(&posts[0].body).contains("no-retries"),
        "{:?}",
        posts[0]
    );
}

/// A verification resent to a slow endpoint while the webhook moves on to another URL that
/// refuses: the slow one's late "yes" is not kept for the channels, which stay as the URL now
/// in place answered, and no event goes to an endpoint that never confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_from_a_url_left_meanwhile_verifies_nothing() {
    let app = insecure_app().await;
    let (slow, refusing) = (TestReceiver::start().await, TestReceiver::start().await);
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &slow, &["login"]).await;
    let path = format!("/v1/orgs/{org}/webhooks/{}", hook["id"].as_str().unwrap());
    slow.subscriber(Subscriber::SlowEcho(Duration::from_millis(1_500)));
    refusing.subscriber(Subscriber::Refuse(404));
    let resend = {
        let (http, url) = (app.http.clone(), format!("{}{path}/verify", app.base));
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    for _ in 0..100 {
        if slow.verifications_on("/hub").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, moved) = app
        .patch(&path, json!({ "url": refusing.url("/hub") }))
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["subscriptions"][0]["state"], "failed", "{moved}");
    assert_eq!(resend.await.unwrap(), StatusCode::OK);

    let (_, subs) = app.get(&format!("{path}/subscriptions")).await;
    assert_eq!(
        state_of(&subs["data"], "login")["state"],
        "failed",
        "{subs}"
    );
    let answer = app.send_event(&org, login_success("after-both")).await;
    assert_eq!(answer["events"][0]["skipped"], 1, "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        refusing
            .received_on("/hub")
            .iter()
            .all(|r| r.method != "POST")
    );
}

/// Sends an event whose first attempt fails (it then waits for its retry), switches the webhook
/// off and on again and has the subscriber refuse the new subscription; answers the delivery.
async fn failed_then_refused_on_reactivation(
    app: &TestApp,
    org: &str,
    id: &str,
    rx: &TestReceiver,
) -> String {
    rx.answer_by_default(Reply::status(500));
    app.send_event(org, login_success("e1")).await;
    rx.wait_for("/hub", 1, WAIT).await;
    let delivery = app.delivery_ids(org, id).await.remove(0);
    app.wait_for_delivery(org, &delivery, |d| d["attempt_count"] == 1)
        .await;
    let (status, _) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{id}/deactivate"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    rx.subscriber(Subscriber::Refuse(404));
    let (status, on) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/activate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{on}");
    assert_eq!(state_of(&on["subscriptions"], "login")["state"], "failed");
    delivery
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_waiting_while_inactive_are_not_sent_if_reactivation_is_refused() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login"]).await;
    let id = hook["id"].as_str().unwrap();

    let delivery = failed_then_refused_on_reactivation(&app, &org, id, &rx).await;

    // Its retry comes due: it waits for verification instead of being sent.
    rx.answer_by_default(Reply::status(200));
    app.advance(Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = |rx: &TestReceiver| {
        rx.received_on("/hub")
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    };
    assert_eq!(posts(&rx), 1, "sent to an unverified endpoint");
    let (_, d) = app
        .get(&format!("/v1/orgs/{org}/deliveries/{delivery}"))
        .await;
    assert_eq!(
        (d["state"].clone(), d["attempt_count"].clone()),
        (json!("pending"), json!(1))
    );

    // Verified after all, it goes out.
    rx.subscriber(Subscriber::Echo);
    let (status, _) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/verify"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.advance(Duration::from_secs(61));
    app.wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
        .await;

    // A test event is sent on purpose, verified channel or not.
    let (status, answer) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let test = answer["delivery_id"].as_str().unwrap();
    app.wait_for_delivery(&org, test, |d| d["state"] == "succeeded")
        .await;
}

/// A delivery waiting for its channel to be verified again waits no longer than its retry
/// schedule: then it is skipped, as an event arriving on an unverified channel is, instead of
/// being looked at every minute for as long as nobody verifies the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_waiting_for_verification_past_its_schedule_is_skipped() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login"]).await;
    let id = hook["id"].as_str().unwrap();
    let (status, hook) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{id}"),
            json!({ "retry_schedule": [0, 60] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{hook}");

    let delivery = failed_then_refused_on_reactivation(&app, &org, id, &rx).await;

    // Its retry comes due (60 s on, 66 s at most) while the channel is refused; waiting another
    // minute would take it past its schedule's end.
    rx.answer_by_default(Reply::status(200));
    app.advance(Duration::from_secs(70));
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["state"] == "skipped")
        .await;
    assert_eq!(d["attempt_count"], 1, "{d}");
    let why = d["last_error"].as_str().unwrap();
    assert!(
        why.contains("not verified") && why.contains("retry schedule"),
        "{why}"
    );
    let posts = rx
        .received_on("/hub")
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "never sent to the unverified endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_before_they_run_out_and_a_failed_renewal_is_retried() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login"]).await;
    let id = hook["id"].as_str().unwrap();
    assert_eq!(rx.verifications_on("/hub").len(), 1);

    // Nine tenths of the ten-day lease later, Herald renews it.
    let first = subscription(&app, &org, id, |_| true).await;
    app.advance(Duration::from_secs(9 * 86_400 + 60));
    let renewed = rx.wait_for_verifications("/hub", 2, WAIT).await;
    assert_eq!(renewed[1].param("hub.mode"), Some("subscribe"));
    let second = subscription(&app, &org, id, |s| s["expires_at"] != first["expires_at"]).await;
    assert_eq!(second["state"], "verified");

    // A renewal the endpoint refuses is shown and retried, while the lease still holds.
    rx.subscriber(Subscriber::Refuse(503));
    app.advance(Duration::from_secs(9 * 86_400 + 60));
    rx.wait_for_verifications("/hub", 3, WAIT).await;
    let refused = subscription(&app, &org, id, |s| s["reason"].is_string()).await;
    assert_eq!(
        refused["state"], "verified",
        "the lease still holds: {refused}"
    );
    assert!(
        refused["reason"].as_str().unwrap().contains("503"),
        "{refused}"
    );
    assert_eq!(refused["expires_at"], second["expires_at"]);

    rx.subscriber(Subscriber::Echo);
    app.advance(Duration::from_secs(3600 + 60));
    rx.wait_for_verifications("/hub", 4, WAIT).await;
    let recovered = subscription(&app, &org, id, |s| s["reason"].is_null()).await;
    assert_eq!(recovered["state"], "verified");

    // Refused until the lease has run out: the channel fails, and Herald keeps asking.
    rx.subscriber(Subscriber::Refuse(503));
    app.advance(Duration::from_secs(10 * 86_400 + 60));
    rx.wait_for_verifications("/hub", 5, WAIT).await;
    // (Shown `failed` from the lease's end; the renewal refused after it is stored so too.)
    let lapsed = subscription(&app, &org, id, |s| {
        s["state"] == "failed" && s["last_attempt_at"] != recovered["last_attempt_at"]
    })
    .await;
    assert!(
        lapsed["renew_at"].is_string(),
        "asked again later: {lapsed}"
    );
    assert_eq!(
        seconds_between(&lapsed["last_attempt_at"], &lapsed["renew_at"]),
        3_600
    );
    // Still refused a day after the lease ran out: asked once a day from then on.
    app.advance(Duration::from_secs(86_400));
    rx.wait_for_verifications("/hub", 6, WAIT).await;
    let daily = subscription(&app, &org, id, |s| {
        s["last_attempt_at"] != lapsed["last_attempt_at"]
    })
    .await;
    assert_eq!(daily["state"], "failed", "{daily}");
    assert_eq!(
        seconds_between(&daily["last_attempt_at"], &daily["renew_at"]),
        86_400
    );
    rx.subscriber(Subscriber::Echo);
    app.advance(Duration::from_secs(86_400 + 60));
    rx.wait_for_verifications("/hub", 7, WAIT).await;
    let back = subscription(&app, &org, id, |s| s["state"] == "verified").await;
    assert!(back["reason"].is_null(), "{back}");
}

/// Whole seconds from one RFC 3339 time to another.
fn seconds_between(from: &Value, to: &Value) -> i64 {
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    (at(to) - at(from)).num_seconds()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_change_asks_only_the_new_ones_and_unsubscribes_the_dropped_ones() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login", "session"]).await;
    let id = hook["id"].as_str().unwrap();
    let path = format!("/v1/orgs/{org}/webhooks/{id}");
    assert_eq!(rx.verifications_on("/hub").len(), 2);

    // The endpoint refuses just as a channel is added: only the new one is asked (and
    // fails); the others keep their leases, and their events go on.
    rx.subscriber(Subscriber::Refuse(500));
    let (status, changed) = app
        .patch(&path, json!({ "channels": ["login", "session", "user"] }))
        .await;
    assert_eq!(status, StatusCode::OK);
    // The answer carries what was asked: the new channel alone.
    let asked = changed["subscriptions"].as_array().unwrap();
    assert_eq!(asked.len(), 1, "{changed}");
    assert_eq!(
        (&asked[0]["channel"], &asked[0]["state"]),
        (&json!("user"), &json!("failed"))
    );
    let gets = rx.verifications_on("/hub");
    assert_eq!(gets.len(), 3, "only the new channel is asked");
    assert!(gets[2].param("hub.topic").unwrap().ends_with(".user"));
    let (_, subs) = app.get(&format!("{path}/subscriptions")).await;
    assert_eq!(
        state_of(&subs["data"], "login")["state"],
        "verified",
        "{subs}"
    );
    assert_eq!(
        state_of(&subs["data"], "session")["state"],
        "verified",
        "{subs}"
    );
    assert_eq!(state_of(&subs["data"], "user")["state"], "failed", "{subs}");
    rx.subscriber(Subscriber::Echo);
    let sent = app.send_event(&org, login_success("during-change")).await;
    assert_eq!(sent["deliveries"], 1, "{sent}");
    rx.wait_for("/hub", 1, WAIT).await;

    // Dropped: the channel with a lease is unsubscribed (the refused one had none), and
    // neither is listed any more.
    let (status, _) = app.patch(&path, json!({ "channels": ["login"] })).await;
    assert_eq!(status, StatusCode::OK);
    let gets = rx.wait_for_verifications("/hub", 4, WAIT).await;
    assert_eq!(gets[3].param("hub.mode"), Some("unsubscribe"));
    assert!(gets[3].param("hub.topic").unwrap().ends_with(".session"));
    let (_, subs) = app.get(&format!("{path}/subscriptions")).await;
    let channels: Vec<&Value> = subs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["channel"])
        .collect();
    assert_eq!(channels, [&json!("login")], "{subs}");
    assert_eq!(state_of(&subs["data"], "login")["state"], "verified");
    // The dropped channel's lease no longer counts: added back, it is asked for afresh before
    // events flow on it.
    let stored = app
        .state
        .store
        .org_subscriptions(&herald_core::OrgId::from_trusted(org.clone()))
        .await
        .unwrap();
    let session = stored.iter().find(|s| s.channel == "session").unwrap();
    assert!(
        session.mode == herald_core::subscription::Mode::Unsubscribe
            && !session.delivers(app.state.clock.now()),
        "{session:?}"
    );

    // Only login is renewed.
    app.advance(Duration::from_secs(9 * 86_400 + 60));
    let renewed = rx.wait_for_verifications("/hub", 5, WAIT).await;
    assert!(renewed[4].param("hub.topic").unwrap().ends_with(".login"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rx.verifications_on("/hub").len(),
        5,
        "the dropped channels are not renewed"
    );

    // Moved to a new URL: the old one is told to unsubscribe from what it had then (login),
    // not from the channel dropped and unsubscribed before.
    let (status, _) = app.patch(&path, json!({ "url": rx.url("/moved") })).await;
    assert_eq!(status, StatusCode::OK);
    let gets = rx.wait_for_verifications("/hub", 6, WAIT).await;
    assert_eq!(gets[5].param("hub.mode"), Some("unsubscribe"));
    assert!(gets[5].param("hub.topic").unwrap().ends_with(".login"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.verifications_on("/hub").len(), 6, "session again");
}

/// The webhook's one subscription, once `ready` holds (bounded: 5 s).
async fn subscription(app: &TestApp, org: &str, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (_, l) = app
            .get(&format!("/v1/orgs/{org}/webhooks/{id}/subscriptions"))
            .await;
        last = l["data"][0].clone();
        if ready(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the subscription never became ready: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_webhook_may_ask_for_websub_verification() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            &rx.url("/std"),
            json!({ "verification": "websub", "events": ["user.created"] }),
        )
        .await;
    assert_eq!(hook["active"], false);
    let id = hook["id"].as_str().unwrap();
    let (_, active) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/activate"), json!({}))
        .await;
    let user = state_of(&active["subscriptions"], "user");
    assert_eq!(user["state"], "verified");
    assert_eq!(
        user["topic"],
        format!("acme.{org}.schema.standard.v1.event.user")
    );
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    rx.wait_for("/std", 1, WAIT).await;
    let (status, _) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{id}/verify"),
            json!({ "channel": "billing" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// `herald listen` as a user would run it, its stdout read line by line.
struct Listen {
    child: tokio::process::Child,
    url: String,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Listen {
    async fn start(secret: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["listen", "--listen", "127.0.0.1:0", "--secret", secret])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, out.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_owned();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(vec![first]));
        let keep = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        Self { child, url, lines }
    }

    async fn wait_for_line(&self, needle: &str) -> String {
        for _ in 0..200 {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "herald listen never printed {needle:?}: {:?}",
            self.lines.lock().unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_listen_prints_requests_checks_signatures_and_answers_challenges() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut listen = Listen::start(secret).await;
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    app.create_webhook(
        &org,
        &format!("{}standard", listen.url),
        json!({ "secret": secret, "events": ["user.created"] }),
    )
    .await;
    app.create_webhook(
        &org,
        &format!("{}optare", listen.url),
        json!({ "profile": "optare", "secret": secret, "events": ["user.created"] }),
    )
    .await;
    let hook = app
        .create_webhook(&org, &format!("{}hub", listen.url), json!({ "verification": "websub", "events": ["session.revoked"], "secret": secret, "active": true }))
        .await;
    assert_eq!(hook["active"], true);
    listen.wait_for_line("WebSub subscribe for acme.").await;
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    listen
        .wait_for_line("signature: standard webhooks: verified")
        .await;
    listen.wait_for_line("signature: optare: verified").await;
    listen.wait_for_line("\"user.created\"").await;
    // Signed with another secret: refused as a receiver would, so the sender sees it.
    let wrong = app
        .create_webhook(
            &org,
            &format!("{}wrong", listen.url),
            json!({ "secret": "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk=", "events": ["user.deleted"] }),
        )
        .await;
    app.send_event(
        &org,
        json!({ "type": "user.deleted", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    listen
        .wait_for_line("signature: standard webhooks: NOT VERIFIED")
        .await;
    listen.wait_for_line("answered 401").await;
    // A look at the address (a browser, a health check) is not a delivery: not refused.
    let looked = crate::helpers::http_client()
        .get(format!("{}health", listen.url))
        .send()
        .await
        .unwrap();
    assert_eq!(looked.status(), StatusCode::OK);
    // A body larger than the web framework's default (2 MiB), as a batch of large events can
    // be: read whole and checked (here unsigned, so refused as any receiver would), not
    // answered 413 unseen.
    let big = format!("{{\"data\": \"{}\"}}", "x".repeat(3 << 20));
    let posted = crate::helpers::http_client()
        .post(format!("{}big", listen.url))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::UNAUTHORIZED);
    listen.wait_for_line("POST /big").await;
    let wrong = wrong["id"].as_str().unwrap();
    let mut last = json!(null);
    for _ in 0..100 {
        let (_, list) = app
            .get(&format!("/v1/orgs/{org}/webhooks/{wrong}/deliveries"))
            .await;
        last = list["data"][0]["last_status"].clone();
        if last == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, 401);
    listen.child.start_kill().unwrap();
}

/// `herald webhooks verify` fails too when the endpoint refused a channel whose earlier lease
/// still holds: its events go on, but the endpoint did not confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_fails_when_a_resend_is_refused_though_the_lease_holds() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    let (org, _) = asgardeo_org(&app).await;
    let hook = active_hub(&app, &org, &rx, &["login"]).await;
    let id = hook["id"].as_str().unwrap();
    let args = ["webhooks", "verify", "--org", "myorg", id];
    let (ok, out) = crate::api::herald_cli(&app, &args, None).await;
    assert!(ok, "{out}");
    rx.subscriber(Subscriber::Refuse(404));
    let (ok, out) = crate::api::herald_cli(&app, &args, None).await;
    assert!(
        !ok && out.contains("verified")
            && out.contains("the endpoint refused verification for 1 channel; the lease"),
        "{out}"
    );
    // A new channel asked by `update` and refused: it fails as `enable` does.
    let update = [
        "webhooks",
        "update",
        "--org",
        "myorg",
        id,
        "--channel",
        "login",
        "--channel",
        "session",
    ];
    let (ok, out) = crate::api::herald_cli(&app, &update, None).await;
    assert!(
        !ok && out.contains("CHANNEL") && out.contains("1 channel failed verification"),
        "{out}"
    );
    // Disabled all the same when the endpoint refuses the unsubscribe, and told so.
    let (ok, out) =
        crate::api::herald_cli(&app, &["webhooks", "disable", "--org", "myorg", id], None).await;
    assert!(
        ok && out.contains("did not confirm the unsubscribe for 2 channels"),
        "{out}"
    );
}

/// `herald webhooks enable` and `verify` fail (after showing where each channel stands) when an
/// endpoint did not confirm, with `--json` too: a script must not take it for working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_fails_when_a_channel_is_not_verified() {
    let app = insecure_app().await;
    let (org, _) = asgardeo_org(&app).await;
    // A port just freed: nothing listens there, so the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hook = app
        .create_webhook(
            &org,
            &format!("http://{closed}/hub"),
            json!({ "profile": "asgardeo", "channels": ["login"], "secret": "asgardeo-secret-value" }),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    let cli = |args: &'static [&'static str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--org", "myorg", id]);
        all
    };
    // Created from the CLI, it says how to enable it.
    let url = format!("http://{closed}/other");
    let (ok, out) = crate::api::herald_cli(
        &app,
        &[
            "webhooks",
            "create",
            "--org",
            "myorg",
            "--name",
            "other",
            "--url",
            &url,
            "--profile",
            "asgardeo",
            "--channel",
            "login",
            "--secret",
            "asgardeo-secret-value",
        ],
        None,
    )
    .await;
    assert!(
        ok && out.contains("It is inactive until its endpoint confirms each channel: run `herald webhooks enable --org "),
        "{out}"
    );
    // Before it is enabled: what enabling will send, per channel.
    let (ok, out) = crate::api::herald_cli(&app, &cli(&["webhooks", "subscriptions"]), None).await;
    assert!(
        ok && out.starts_with("CHANNEL")
            && out.contains("subscribe")
            && !out.contains("unsubscribe")
            && out.contains("it is sent when the webhook is enabled"),
        "{out}"
    );
    let (ok, out) = crate::api::herald_cli(
        &app,
        &cli(&["webhooks", "verify", "--channel", "nope"]),
        None,
    )
    .await;
    assert!(
        !ok && out.contains("'nope' is not one of this webhook's channels (login)")
            && !out.contains("did you mean"),
        "{out}"
    );
    let (ok, out) = crate::api::herald_cli(
        &app,
        &cli(&["webhooks", "verify", "--channel", "Logn"]),
        None,
    )
    .await;
    assert!(
        !ok && out.contains("channels (login) (did you mean 'login'?)"),
        "{out}"
    );
    let (ok, out) =
        crate::api::herald_cli(&app, &cli(&["webhooks", "enable", "--json"]), None).await;
    assert!(
        !ok && out.contains("\"failed\"") && out.contains("failed verification"),
        "{out}"
    );
    let (ok, out) = crate::api::herald_cli(&app, &cli(&["webhooks", "subscriptions"]), None).await;
    assert!(
        ok && out.contains("failed") && out.contains("event.login"),
        "{out}"
    );
    let (ok, out) = crate::api::herald_cli(&app, &cli(&["webhooks", "verify"]), None).await;
    assert!(
        !ok && out.contains("STATE") && out.contains("failed verification"),
        "{out}"
    );
    // The way out names the webhook, ready to run.
    assert!(
        out.contains("run `herald webhooks verify --org org_") && out.contains(&format!(" {id}`")),
        "{out}"
    );
    // Its record says so too: enabled, yet nothing goes out on the channel.
    let (ok, out) = crate::api::herald_cli(&app, &cli(&["webhooks", "get"]), None).await;
    assert!(
        ok && out.contains("WebSub: 0 of 1 channel verified; 'login' is failed (")
            && out.contains("it gets no events until verified"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_channels_are_verified_a_few_at_a_time() {
    let app = insecure_app().await;
    let rx = TestReceiver::start().await;
    rx.subscriber(Subscriber::SlowEcho(Duration::from_millis(150)));
    let (org, _) = asgardeo_org(&app).await;
    let channels: Vec<String> = (0..40).map(|i| format!("team{i}")).collect();
    for channel in &channels {
        let (status, body) = app
            .post(
                &format!("/v1/orgs/{org}/event-types"),
                json!({ "name": format!("{channel}.changed"), "channel": channel }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let channel_names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let hook = active_hub(&app, &org, &rx, &channel_names).await;
    let id = hook["id"].as_str().unwrap();
    let (_, listed) = app
        .get(&format!("/v1/orgs/{org}/webhooks/{id}/subscriptions"))
        .await;
    for channel in &channels {
        assert_eq!(
            state_of(&listed["data"], channel)["state"],
            "verified",
            "{listed}"
        );
    }
    assert_eq!(rx.verifications_on("/hub").len(), 40);
    let most = rx.most_in_flight();
    assert!((2..=32).contains(&most), "verifications at once: {most}");
}
