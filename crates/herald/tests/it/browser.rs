//! The dashboard in a real browser (headless Chromium through chromedriver): a person signs
//! in, creates an organization and a webhook, sees its secret once, sends a test event, finds
//! it in the history and resends it; creates an API key; a wrong token is refused; an
//! organization key cannot open another organization. Screenshots at desktop and phone widths go to `target/screenshots/`.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, Reply, TestApp, TestReceiver};
use crate::webdriver::Browser;

const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_creates_a_webhook_tests_it_and_resends_a_delivery() {
    let _turn = crate::helpers::heavy_turn().await;
    crate::webdriver::require_chromium();
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    // The story runs to its end or its first failed check; the browser is closed either way.
    let story = AssertUnwindSafe(tokio::time::timeout(
        Duration::from_secs(180),
        story(&app, &rx, &browser),
    ))
    .catch_unwind()
    .await;
    browser.quit().await;
    match story {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the browser story took more than 3 minutes"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn story(app: &TestApp, rx: &TestReceiver, b: &Browser) {
    let base = &app.base;

    // Anyone arriving is asked to sign in; a wrong token is refused with a message.
    b.goto(&format!("{base}/")).await;
    b.wait_for("input#token").await;
    assert!(b.url().await.contains("/login"), "{}", b.url().await);
    b.type_into("#token", "not-the-token").await;
    b.click("form[action='/login'] button").await;
    let error = b.element_text("p.error").await;
    assert!(error.contains("not valid"), "{error}");
    b.screenshot("01-sign-in-refused").await;

    b.type_into("#token", ADMIN_TOKEN).await;
    b.click("form[action='/login'] button").await;
    b.wait_for("#org-name").await;

    // An organization.
    b.type_into("#org-name", "Acme Identity").await;
    b.click("form[action='/orgs'] button[type=submit]").await;
    b.wait_for("a.button.primary[href$='/webhooks/new']").await;
    let org = b.url().await.rsplit('/').next().unwrap().to_owned();
    assert!(org.starts_with("org_"), "{org}");

    // A webhook to the receiver, for two event types; its secret is shown once.
    b.click("a.button.primary[href$='/webhooks/new']").await;
    b.type_into("#wh-name", "CRM sync").await;
    b.type_into("#wh-url", &rx.url("/hooks")).await;
    // A description with a long URL in it: it must wrap, not widen the page (checked on a phone).
    b.type_into(
        "#wh-description",
        "Keeps the CRM's users in step. Runbook: https://wiki.example.com/display/IDENTITY/\
         Webhook+Receivers+for+the+CRM+synchronisation+service?pageId=123456789",
    )
    .await;
    b.click("input[name=events][value='user.created']").await;
    b.click("input[name=events][value='user.deleted']").await;
    b.type_into("#wh-headers", "X-Team: identity").await;
    b.full_screenshot("02-new-webhook-form", DESKTOP.0).await;
    b.click("form.grid-form button.primary").await;
    let secret = b.element_text("#new-secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    b.screenshot("03-webhook-created-secret-once").await;
    let hook_url = b.url().await;
    let hook = hook_url.rsplit('/').next().unwrap().to_owned();
    b.goto(&hook_url).await;
    b.wait_for("h1").await;
    assert!(
        b.find("#new-secret").await.is_none(),
        "the secret shows only once"
    );
    assert!(b.text().await.contains("whsec_••••••••"));

    // A test event reaches the receiver, signed with that secret.
    b.click("form[action$='/test'] button").await;
    b.element_text(".flash.ok").await;
    let got = rx.wait_for("/hooks", 1, Duration::from_secs(15)).await;
    got[0]
        .verify_standard(&secret)
        .expect("the test event verifies with the secret shown");
    assert_eq!(got[0].header("x-team"), "identity");

    // It shows in the history; its page shows the attempt and the request.
    b.click("a.button[href$='/deliveries']").await;
    b.reload_until_found("table.list .badge.succeeded", Duration::from_secs(15))
        .await;
    let text = b.text().await;
    assert!(text.contains("herald.test"), "{text}");
    b.screenshot("04-history").await;
    b.click("table.list a[href*='/deliveries/dlv_']").await;
    let text = b.reload_until("#1", Duration::from_secs(10)).await;
    assert!(text.contains("webhook-signature"), "{text}");
    assert!(text.contains("receiver says hi"), "{text}");

    // Resent: a second request arrives and a second attempt shows.
    b.click("form[action$='/resend'] button").await;
    rx.wait_for("/hooks", 2, Duration::from_secs(15)).await;
    b.element_text(".flash.ok").await;
    b.reload_until("#2", Duration::from_secs(15)).await;
    b.full_screenshot("05-delivery-resent", DESKTOP.0).await;

    // Some traffic for the plots: two events fail (their retries wait, so they are backlog)
    // and one is slow.
    rx.script([
        Reply::status(500),
        Reply::status(503),
        Reply::status(200).after(Duration::from_millis(40)),
    ]);
    for i in 0..4 {
        app.send_event(
            &org,
            json!({ "type": "user.created", "data": { "user": { "id": format!("u{i}") } } }),
        )
        .await;
    }
    rx.wait_for("/hooks", 6, Duration::from_secs(15)).await;

    // The webhook page with its plots, at desktop and phone widths.
    b.goto(&hook_url).await;
    b.wait_for("figure.chart svg").await;
    let bars = b
        .script("return String(document.querySelectorAll('figure.chart rect.bar').length);")
        .await;
    assert_ne!(bars, "0", "the success-rate plot has a bar for this hour");
    b.full_screenshot("06-webhook-desktop", DESKTOP.0).await;
    b.resize(PHONE.0, PHONE.1).await;
    b.goto(&hook_url).await;
    b.wait_for("figure.chart svg").await;
    let overflow = b
        .script("return String(document.documentElement.scrollWidth > window.innerWidth + 1);")
        .await;
    assert_eq!(
        overflow, "false",
        "the webhook page scrolls sideways on a phone"
    );
    b.full_screenshot("07-webhook-phone", PHONE.0).await;
    b.resize(PHONE.0, PHONE.1).await;
    b.script("document.querySelector('.charts').scrollIntoView(); return '';")
        .await;
    b.screenshot("07b-webhook-phone-plots").await;
    b.goto(&format!("{base}/orgs/{org}/webhooks/{hook}/deliveries"))
        .await;
    b.wait_for("table.list").await;
    b.full_screenshot("08-history-phone", PHONE.0).await;
    b.goto(&format!("{base}/orgs/{org}")).await;
    b.wait_for("table.list").await;
    b.full_screenshot("09a-org-phone", PHONE.0).await;
    b.resize(PHONE.0, PHONE.1).await;
    b.goto(&format!("{base}/orgs/{org}/catalog")).await;
    b.wait_for("article.event-type").await;
    b.screenshot("09b-catalog-phone").await;
    // An organization whose name is one long word, and a webhook named so too: the names
    // wrap, so the page does not scroll sideways and "Sign out" stays in sight.
    let long = app.create_org(&"Averylongorganizationname".repeat(5)).await;
    app.post(
        &format!("/v1/orgs/{long}/webhooks"),
        json!({ "name": "Averylongwebhookname".repeat(5), "url": rx.url("/hooks") }),
    )
    .await;
    for (width, height) in [PHONE, DESKTOP] {
        b.resize(width, height).await;
        b.goto(&format!("{base}/orgs/{long}")).await;
        b.wait_for("table.list").await;
        let overflow = b
            .script("return String(document.documentElement.scrollWidth > window.innerWidth + 1);")
            .await;
        assert_eq!(
            overflow, "false",
            "a long name widens the page at {width}px"
        );
    }
    b.screenshot("09d-long-names").await;

    // A refused event type puts the focus on the field to mend.
    b.goto(&format!("{base}/orgs/{org}/catalog")).await;
    b.type_into("#type-name", "bad name").await;
    b.click("#new-type form button.primary").await;
    b.wait_for("p.error").await;
    let focused = b.script("return document.activeElement.id;").await;
    assert_eq!(focused, "type-name", "the refused field has the focus");

    // An API key, created on the organization page and shown once.
    b.goto(&format!("{base}/orgs/{org}")).await;
    b.type_into("#key-name", "billing service").await;
    b.click("form[action$='/api-keys'] button").await;
    let new_key = b.element_text("#new-secret").await;
    assert!(new_key.starts_with("hk_"), "{new_key}");
    assert!(b.text().await.contains("Revoke key billing service"));
    b.script("document.getElementById('api-keys').scrollIntoView(); return '';")
        .await;
    b.screenshot("09c-api-keys").await;

    // Rotating asks in the browser's dialog (accepted here, as a person would), which marks
    // the form answered: one click rotates, without the page that asks where there is no
    // JavaScript.
    b.goto(&hook_url).await;
    b.click("form[action$='/rotate'] button").await;
    let rotated = b.element_text("#new-secret").await;
    assert!(rotated.starts_with("whsec_"), "{rotated}");
    assert!(b.text().await.contains("Secret rotated"));

    // An organization key of another organization cannot open this one.
    let other = app.create_org("Globex").await;
    let (_, key) = app
        .post(
            &format!("/v1/orgs/{other}/api-keys"),
            json!({ "name": "ops" }),
        )
        .await;
    let key = key["key"].as_str().unwrap();
    b.click("form[action='/logout'] button").await;
    b.type_into("#token", key).await;
    b.click("form[action='/login'] button").await;
    b.wait_for("a.button.primary[href$='/webhooks/new']").await;
    assert!(b.url().await.ends_with(&other), "{}", b.url().await);
    b.goto(&format!("{base}/orgs/{org}/webhooks/{hook}")).await;
    let text = b.text().await;
    assert!(text.contains("404"), "{text}");
    assert!(!text.contains("CRM sync"), "{text}");
    b.screenshot("10-other-org-404").await;
}
