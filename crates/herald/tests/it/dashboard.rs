//! Dashboard stories over plain HTTP (no browser): every page needs a session, values are
//! escaped, forms need their CSRF token, an organization key sees only its organization, and
//! refused forms keep what was typed. The browser story is in `browser.rs`.

use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, ORIGIN,
    REFERER, SET_COOKIE,
};
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, Reply, Subscriber, TestApp, TestReceiver};

const FORM: &str = "application/x-www-form-urlencoded";

/// A person using the dashboard: a client that does not follow redirects and keeps the
/// session cookie it was given.
pub struct Visitor {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub location: String,
    pub body: String,
}

impl Visitor {
    pub fn new(app: &TestApp) -> Self {
        crate::helpers::http_client();
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.base.clone(),
            cookie: None,
        }
    }

    /// A visitor of the server at `base` (a real `herald serve`).
    pub fn at(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookie: None,
        }
    }

    /// The session cookie (`herald_session=…`), once signed in.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// The same browser (its cookie) visiting the server at `base`: another node, or the same
    /// one after a restart.
    pub fn on(&self, base: &str) -> Self {
        Self {
            cookie: self.cookie.clone(),
            ..Self::at(base)
        }
    }

    pub async fn signed_in(app: &TestApp, token: &str) -> Self {
        let mut visitor = Self::new(app);
        let answer = visitor.sign_in(token).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert!(visitor.cookie.is_some());
        visitor
    }

    pub async fn sign_in(&mut self, token: &str) -> Answer {
        let resp = self
            .http
            .post(format!("{}/login", self.base))
            .header(CONTENT_TYPE, FORM)
            .body(serde_urlencoded::to_string([("token", token)]).unwrap())
            .send()
            .await
            .unwrap();
        if let Some(cookie) = resp.headers().get(SET_COOKIE) {
            let cookie = cookie.to_str().unwrap();
            assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
            self.cookie = Some(cookie.split(';').next().unwrap().to_owned());
        }
        answer(resp).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        // As a browser asks for a page.
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .header(ACCEPT, "text/html,application/xhtml+xml");
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        answer(req.send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.post_encoded(path, serde_urlencoded::to_string(form).unwrap())
            .await
    }

    /// Posts a form already encoded, as sent (bytes a browser would not send, say).
    pub async fn post_encoded(&self, path: &str, body: String) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, FORM)
            .body(body);
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        answer(req.send().await.unwrap()).await
    }

    /// The CSRF token of the session, read from a page's forms.
    pub async fn csrf(&self, page: &str) -> String {
        let body = self.get(page).await.body;
        let marker = r#"name="csrf" value=""#;
        let start = body.find(marker).expect("a form with a CSRF token") + marker.len();
        body[start..start + 64].to_owned()
    }
}

/// The page with the escaped slashes (`&#x2f;`, as the templates write every `/` in a value)
/// written plainly.
pub fn slashes(html: &str) -> String {
    html.replace("&#x2f;", "/")
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status();
    let location = resp
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Answer {
        status,
        location,
        body: resp.text().await.unwrap(),
    }
}

/// An organization with a webhook (to `url`) and one delivery; answers their ids.
async fn org_with_delivery(app: &TestApp, url: &str) -> (String, String, String) {
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, url, json!({})).await;
    let hook = hook["id"].as_str().unwrap().to_owned();
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    let delivery = app.delivery_ids(&org, &hook).await.remove(0);
    (org, hook, delivery)
}

/// Another site's page that posts the sign-in form would sign its visitor in to the attacker's
/// organization. Over plain http to a name other than localhost, browsers send `Origin` but
/// not `Sec-Fetch-Site`: the origin must be the dashboard's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_posted_from_another_origin_is_refused() {
    let app = TestApp::spawn().await;
    let visitor = Visitor::new(&app);
    let sign_in_from = |origin: String| {
        visitor
            .http
            .post(format!("{}/login", app.base))
            .header(CONTENT_TYPE, FORM)
            .header(ORIGIN, origin)
            .body(serde_urlencoded::to_string([("token", ADMIN_TOKEN)]).unwrap())
            .send()
    };
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    for elsewhere in [format!("http://attacker.example:{port}"), "null".to_owned()] {
        let resp = sign_in_from(elsewhere.clone()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{elsewhere}");
        assert!(resp.headers().get(SET_COOKIE).is_none(), "{elsewhere}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("posted from another site"), "{body}");
    }
    let resp = sign_in_from(app.base.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(resp.headers().get(SET_COOKIE).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_answers_when_signed_in_and_sends_others_to_sign_in() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (org, hook, delivery) = org_with_delivery(&app, &rx.url("/h")).await;
    let pages = [
        "/orgs".to_owned(),
        format!("/orgs/{org}"),
        format!("/orgs/{org}/catalog"),
        format!("/orgs/{org}/settings"),
        format!("/orgs/{org}/webhooks/new"),
        format!("/orgs/{org}/webhooks/{hook}"),
        format!("/orgs/{org}/webhooks/{hook}/edit"),
        format!("/orgs/{org}/webhooks/{hook}/deliveries"),
        format!("/orgs/{org}/webhooks/{hook}/deliveries?state=succeeded&event_type=user.created"),
        format!("/orgs/{org}/deliveries/{delivery}"),
        format!("/orgs/{org}/events"),
    ];
    let stranger = Visitor::new(&app);
    for page in &pages {
        let a = stranger.get(page).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{page}");
        assert!(
            a.location.starts_with("/login?next="),
            "{page}: {}",
            a.location
        );
    }
    let a = stranger.get("/").await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, "/login?next=%2F")
    );
    assert_eq!(stranger.get("/login").await.status, StatusCode::OK);

    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    for page in &pages {
        let a = admin.get(page).await;
        assert_eq!(a.status, StatusCode::OK, "{page}: {}", a.body);
        assert!(a.body.contains("<!doctype html>"), "{page}");
    }
    let a = admin.get("/").await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, "/orgs")
    );
    // A browser holding session cookies for several paths or domains sends them all, a dead
    // one first maybe: the live one still signs it in.
    let live = admin.cookie().unwrap();
    let mut both = Visitor::new(&app);
    both.cookie = Some(format!("herald_session={}; {live}", "ab".repeat(32)));
    let a = both.get("/orgs").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.location);
    // Signed in, the sign-in page goes on to where it would lead.
    let a = admin.get("/login").await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, "/orgs")
    );
    let a = admin.get(&format!("/login?next=%2Forgs%2F{org}")).await;
    assert_eq!(
        (a.status, a.location),
        (StatusCode::SEE_OTHER, format!("/orgs/{org}"))
    );
    // A filter that is no event type's name is refused as the API refuses it.
    let a = admin
        .get(&format!(
            "/orgs/{org}/webhooks/{hook}/deliveries?event_type=%00"
        ))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(a.body.contains("not a valid event type name"), "{}", a.body);
    // So is a cursor that is no delivery's id (it was ignored: the first page, unexplained).
    for cursor in ["nonsense", "wh_0123456789abcdefghjkmnpqrs"] {
        let history = format!("/orgs/{org}/webhooks/{hook}/deliveries?cursor={cursor}");
        let a = admin.get(&history).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
        assert!(a.body.contains("not a cursor of this kind"), "{}", a.body);
    }
    let a = admin.get(&format!("/orgs/{org}?cursor=nonsense")).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    // A page past the first of a list leads back to the first; the first has no such link.
    for (first, later) in [
        (format!("/orgs/{org}"), format!("/orgs/{org}?cursor={hook}")),
        ("/orgs".to_owned(), format!("/orgs?cursor={org}")),
    ] {
        let link = format!(r#"<a href="{first}">← First page</a>"#);
        assert!(!admin.get(&first).await.body.contains(&link), "{first}");
        // An empty cursor is the first page too.
        let empty = format!("{first}?cursor=");
        assert!(!admin.get(&empty).await.body.contains(&link), "{empty}");
        let a = admin.get(&later).await;
        assert!(a.body.contains(&link), "{later}: {}", a.body);
    }

    // Pages are never cached and may run only the dashboard's own script.
    let resp = app
        .http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
    let csp = resp.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let page = slashes(&resp.text().await.unwrap());
    let linked = |before: &str| {
        let path = page.split(before).nth(1).and_then(|s| s.split('"').next());
        path.unwrap_or_else(|| panic!("no {before} in {page}"))
            .to_owned()
    };
    for (path, kind) in [
        (linked(r#"rel="stylesheet" href=""#), "text/css"),
        (linked(r#"<script src=""#), "text/javascript"),
        (linked(r#"rel="icon" href=""#), "image/svg+xml"),
    ] {
        // Named by a digest of the content, not by the package's version, which stays the
        // same over many builds: a browser would keep last week's styles for a week.
        let digest = path.trim_start_matches("/assets/herald-").split('.').next();
        assert!(
            digest.is_some_and(|d| d.len() == 12 && d.chars().all(|c| c.is_ascii_hexdigit())),
            "{path}"
        );
        let resp = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let header = |name| resp.headers()[name].to_str().unwrap().to_owned();
        assert!(header(CONTENT_TYPE).starts_with(kind), "{path}");
        assert!(header(CACHE_CONTROL).contains("immutable"), "{path}");
    }
    // Browsers ask for /favicon.ico on pages that name no icon: they get it, not a 404.
    let resp = app
        .http
        .get(format!("{}/favicon.ico", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "image/svg+xml");

    // A form sent after the session ended (it expired) was not saved: the sign-in page
    // says so and leads back to the form's page.
    let form_page = format!("{}/orgs/{org}/webhooks/new", app.base);
    let resp = stranger
        .http
        .post(format!("{}/orgs/{org}/webhooks", app.base))
        .header(COOKIE, format!("herald_session={}", "ab".repeat(32)))
        .header(REFERER, &form_page)
        .header(CONTENT_TYPE, FORM)
        .body("csrf=x&name=crm&url=https%3A%2F%2Fexample.com%2Fh")
        .send()
        .await
        .unwrap();
    let a = answer(resp).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let next = format!("/orgs/{org}/webhooks/new");
    let expected = serde_urlencoded::to_string([("ended", "unsaved"), ("next", next.as_str())]);
    assert_eq!(a.location, format!("/login?{}", expected.unwrap()));
    let sign_in = stranger.get(&a.location).await;
    assert!(sign_in.body.contains("was not saved"), "{}", sign_in.body);
    assert!(slashes(&sign_in.body).contains(&next), "{}", sign_in.body);
    // A form another site's page posts comes without the session (SameSite): refused as
    // that, not said to come after the session ended.
    let resp = stranger
        .http
        .post(format!("{}/orgs/{org}/webhooks", app.base))
        .header("sec-fetch-site", "cross-site")
        .header(CONTENT_TYPE, FORM)
        .body("csrf=x&name=crm&url=https%3A%2F%2Fexample.com%2Fh")
        .send()
        .await
        .unwrap();
    let a = answer(resp).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(
        a.body.contains("sent from another site") && !a.body.contains("session"),
        "{}",
        a.body
    );
    // Signing out of a session that had ended loses nothing and says nothing of the kind.
    let resp = stranger
        .http
        .post(format!("{}/logout", app.base))
        .header(COOKIE, format!("herald_session={}", "ab".repeat(32)))
        .header(REFERER, &form_page)
        .header(CONTENT_TYPE, FORM)
        .body("csrf=x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(resp).await.location, "/login");
}

/// An event found by the id its producer gave it (one that a path would read apart), with its
/// delivery to each webhook; a delivery's page leads there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_an_event_went_is_found_by_its_id() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let crm = app
        .create_webhook(&org, &rx.url("/crm"), json!({ "name": "crm" }))
        .await;
    let crm = crm["id"].as_str().unwrap().to_owned();
    let audit = app
        .create_webhook(&org, &rx.url("/audit"), json!({ "name": "audit" }))
        .await;
    let audit = audit["id"].as_str().unwrap().to_owned();
    let id = "tenant/42?x";
    app.send_event(
        &org,
        json!({ "type": "user.created", "id": id, "data": { "user": { "id": "u1" } } }),
    )
    .await;
    let to_crm = app.delivery_ids(&org, &crm).await.remove(0);
    let to_audit = app.delivery_ids(&org, &audit).await.remove(0);

    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let found = admin
        .get(&format!("/orgs/{org}/events?id=tenant%2F42%3Fx"))
        .await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    let body = slashes(&found.body);
    for shown in [
        &to_crm,
        &to_audit,
        "crm",
        "audit",
        "user.created",
        "tenant/42?x",
    ] {
        assert!(body.contains(shown), "{shown}: {body}");
    }
    let delivery = admin.get(&format!("/orgs/{org}/deliveries/{to_crm}")).await;
    // (A `/` may stand in a query string as it is.)
    let link = format!("/orgs/{org}/events?id=tenant/42%3Fx");
    assert!(slashes(&delivery.body).contains(&link), "{}", delivery.body);
    assert_eq!(admin.get(&link).await.status, StatusCode::OK);
    // A webhook's history says which event each delivery carries, with the same link: rows of
    // one type would otherwise all look alike.
    let history = admin
        .get(&format!("/orgs/{org}/webhooks/{crm}/deliveries"))
        .await;
    let history = slashes(&history.body);
    assert!(
        history.contains(&format!(r#"<a href="{link}"><code>tenant/42?x</code></a>"#)),
        "{history}"
    );
    let missing = admin
        .get(&format!("/orgs/{org}/events?id=never-sent"))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // An error page has the navigation of every other page, for whoever is signed in, also
    // at an address that is no page at all.
    let unknown = admin.get(&format!("/orgs/{org}/no-such-page")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    for page in [&missing, &unknown] {
        assert!(
            page.body.contains(r#"<a href="/orgs">Organizations</a>"#)
                && page.body.contains(r#"action="/logout""#),
            "{}",
            page.body
        );
    }
    assert!(
        missing.body.contains("is kept for this organization")
            && missing.body.contains("this server keeps events 30 days"),
        "{}",
        missing.body
    );
    let spaced = admin
        .get(&format!("/orgs/{org}/events?id=no+such+id"))
        .await;
    assert_eq!(spaced.status, StatusCode::NOT_FOUND);
    // The organization's page asks for one.
    let page = admin.get(&format!("/orgs/{org}")).await;
    assert!(
        page.body.contains("Where did an event go?"),
        "{}",
        page.body
    );

    // Without an id, the organization's events, newest first, each leading to its page; a
    // type to filter by; 50 a page, then older ones.
    for n in 0..50 {
        app.send_event(
            &org,
            json!({ "type": "user.deleted", "id": format!("gone-{n}"), "data": { "user": { "id": "u1" } } }),
        )
        .await;
    }
    let recent = admin.get(&format!("/orgs/{org}/events")).await;
    let body = slashes(&recent.body);
    assert_eq!(recent.status, StatusCode::OK, "{body}");
    let (newest, oldest_shown) = (body.find("gone-49"), body.find("gone-0<"));
    assert!(
        newest.is_some() && oldest_shown.is_some() && newest < oldest_shown,
        "{body}"
    );
    assert!(
        !body.contains(&link) && body.contains("Older events"),
        "{body}"
    );
    let next = body
        .split("href=\"")
        .filter_map(|h| h.split('"').next())
        .find(|h| h.contains("cursor="))
        .unwrap_or_else(|| panic!("{body}"))
        .replace("&amp;", "&");
    let older = slashes(&admin.get(&next).await.body);
    assert!(
        older.contains(&link) && older.contains("Newest events"),
        "{older}"
    );
    let created = admin
        .get(&format!("/orgs/{org}/events?type=user.created"))
        .await;
    let body = slashes(&created.body);
    assert!(body.contains(&link) && !body.contains("gone-"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_with_a_message() {
    let app = TestApp::spawn().await;
    let mut visitor = Visitor::new(&app);
    let a = visitor.sign_in("not-the-token").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body.contains("That token is not valid"), "{}", a.body);
    assert!(visitor.cookie.is_none());
    assert_eq!(visitor.get("/orgs").await.status, StatusCode::SEE_OTHER);

    // A producer's key posts events; it does not manage the organization here either.
    let org = app.create_org("Acme").await;
    let (_, key) = app
        .post(
            &format!("/v1/orgs/{org}/api-keys"),
            json!({ "name": "idp", "role": "producer" }),
        )
        .await;
    let a = visitor.sign_in(key["key"].as_str().unwrap()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("is a producer"), "{}", a.body);
    assert!(visitor.cookie.is_none());
    // The page's form makes either kind, and the list says which is which.
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let page = format!("/orgs/{org}");
    let csrf = admin.csrf(&page).await;
    let made = admin
        .post(
            &format!("/orgs/{org}/api-keys"),
            &[("csrf", &csrf), ("name", "billing"), ("role", "manager")],
        )
        .await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    let body = admin.get(&page).await.body;
    assert!(
        body.contains("<td data-label=\"Role\">producer</td>")
            && body.contains("<td data-label=\"Role\">manager</td>"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_escaped() {
    let app = TestApp::spawn().await;
    let org = app.create_org("<b>Acme</b>").await;
    let evil = "<script>alert(1)</script>";
    let hook = app
        .create_webhook(
            &org,
            "https://example.com/h",
            json!({ "name": evil, "description": "\"><img src=x onerror=alert(2)>" }),
        )
        .await;
    let hook = hook["id"].as_str().unwrap();
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    for page in [
        "/orgs".to_owned(),
        format!("/orgs/{org}"),
        format!("/orgs/{org}/webhooks/{hook}"),
        format!("/orgs/{org}/webhooks/{hook}/edit"),
    ] {
        let body = admin.get(&page).await.body;
        assert!(!body.contains(evil), "{page} shows the script unescaped");
        assert!(!body.contains("<b>Acme"), "{page}");
        assert!(!body.contains("<img src=x"), "{page}");
    }
    let body = admin
        .get(&format!("/orgs/{org}/webhooks/{hook}"))
        .await
        .body;
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_its_csrf_token_is_refused() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, "https://example.com/h", json!({}))
        .await;
    let hook = hook["id"].as_str().unwrap();
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let disable = format!("/orgs/{org}/webhooks/{hook}/disable");
    let a = admin.post(&disable, &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("reload the page"), "{}", a.body);
    let a = admin.post(&disable, &[("csrf", &"0".repeat(64))]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let (_, w) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(w["active"], true);

    // Another session's token is no better.
    let other = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let theirs = other.csrf("/orgs").await;
    assert_eq!(
        admin.post(&disable, &[("csrf", &theirs)]).await.status,
        StatusCode::FORBIDDEN
    );

    let csrf = admin.csrf("/orgs").await;
    let a = admin.post(&disable, &[("csrf", &csrf)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let (_, w) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(w["active"], false);

    // Signing out ends the session.
    assert_eq!(
        admin.post("/logout", &[("csrf", &csrf)]).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(admin.get("/orgs").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_key_sees_only_its_organization() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let (theirs, their_hook, their_delivery) = org_with_delivery(&app, &rx.url("/h")).await;
    let ours = app.create_org("Globex").await;
    let (status, key) = app
        .post(
            &format!("/v1/orgs/{ours}/api-keys"),
            json!({ "name": "ops" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().unwrap();
    let key_id = key_id_of(&app, &ours).await;

    let visitor = Visitor::signed_in(&app, key).await;
    let a = visitor.get("/").await;
    assert_eq!(a.location, format!("/orgs/{ours}"));
    assert_eq!(
        visitor.get(&format!("/orgs/{ours}")).await.status,
        StatusCode::OK
    );
    let list = visitor.get("/orgs").await.body;
    assert!(list.contains("Globex") && !list.contains("Acme"), "{list}");
    assert!(!list.contains("New organization"));
    for page in [
        format!("/orgs/{theirs}"),
        format!("/orgs/{theirs}/catalog"),
        format!("/orgs/{theirs}/webhooks/new"),
        format!("/orgs/{theirs}/webhooks/{their_hook}"),
        format!("/orgs/{theirs}/webhooks/{their_hook}/deliveries"),
        format!("/orgs/{theirs}/deliveries/{their_delivery}"),
        format!("/orgs/{ours}/webhooks/{their_hook}"),
        format!("/orgs/{ours}/deliveries/{their_delivery}"),
    ] {
        let a = visitor.get(&page).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{page}");
        // Signed in with an organization's key: a way out, and no admin's link.
        assert!(a.body.contains(r#"action="/logout""#), "{}", a.body);
        assert!(!a.body.contains(r#"href="/orgs">"#), "{}", a.body);
    }
    let csrf = visitor.csrf(&format!("/orgs/{ours}")).await;
    // Asked first or asked already: another organization's webhook is not found either way.
    for form in [
        &[("csrf", csrf.as_str())][..],
        &[("csrf", &csrf), ("confirmed", "yes")],
    ] {
        let a = visitor
            .post(
                &format!("/orgs/{theirs}/webhooks/{their_hook}/delete"),
                form,
            )
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }
    let a = visitor
        .post(
            &format!("/orgs/{theirs}/deliveries/{their_delivery}/resend"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let (_, w) = app
        .get(&format!("/v1/orgs/{theirs}/webhooks/{their_hook}"))
        .await;
    assert_eq!(w["id"], their_hook.as_str());
    // Creating an organization needs the admin: said on the form, not a 500.
    let a = visitor
        .post("/orgs", &[("csrf", &csrf), ("name", "Mine")])
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("admin token"), "{}", a.body);

    // Deleting the key ends its sessions at once.
    let (status, _) = app
        .delete(&format!("/v1/orgs/{ours}/api-keys/{key_id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        visitor.get(&format!("/orgs/{ours}")).await.status,
        StatusCode::SEE_OTHER
    );
}

async fn key_id_of(app: &TestApp, org: &str) -> String {
    let (_, keys) = app.get(&format!("/v1/orgs/{org}/api-keys")).await;
    keys["data"][0]["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_webhook_form_keeps_what_was_typed_and_a_secret_shows_once() {
    let app = TestApp::spawn_with(|s| s.security.allow_private_networks.clear()).await;
    let org = app.create_org("Acme").await;
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let new = format!("/orgs/{org}/webhooks/new");
    let csrf = admin.csrf(&new).await;
    let create = format!("/orgs/{org}/webhooks");
    let typed = [
        ("csrf", csrf.as_str()),
        ("name", "crm sync"),
        ("url", "http://127.0.0.1:9/h"),
        ("events", "user.created"),
        ("headers", "X-Team: identity"),
        ("timeout_ms", "5000"),
        ("active", "on"),
    ];
    let a = admin.post(&create, &typed).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(a.body.contains("loopback"), "{}", a.body);
    assert!(a.body.contains(r#"value="crm sync""#));
    assert!(slashes(&a.body).contains(r#"value="http://127.0.0.1:9/h""#));
    assert!(a.body.contains(r#"value="user.created" checked"#));
    assert!(a.body.contains("X-Team: identity"));
    // A secret typed in is kept too: sent again without it, another would be generated.
    let with_secret = [&typed[..], &[("secret", "a-typed-secret-of-mine")]].concat();
    let a = admin.post(&create, &with_secret).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        a.body.contains(r#"value="a-typed-secret-of-mine""#),
        "{}",
        a.body
    );
    // A secret with a space at its end is refused, not trimmed into another HMAC key than the
    // receiver's; nothing is created.
    let padded = [
        ("csrf", csrf.as_str()),
        ("name", "padded"),
        ("url", "https://example.com/h"),
        ("secret", "a-typed-secret-of-mine "),
    ];
    let a = admin.post(&create, &padded).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(
        a.body
            .contains("Secret: has spaces or line breaks at its start or end"),
        "{}",
        a.body
    );
    let (_, hooks) = app.get(&format!("/v1/orgs/{org}/webhooks")).await;
    assert_eq!(hooks["data"].as_array().unwrap().len(), 0, "{hooks}");

    for (field, typed, says) in [
        ("timeout_ms", "soon", "number of milliseconds"),
        ("headers", "X-Team: a\nX-Team: b", "given twice"),
    ] {
        let form = [
            ("csrf", csrf.as_str()),
            ("name", "x"),
            ("url", "https://example.com/h"),
            (field, typed),
        ];
        let a = admin.post(&create, &form).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert!(a.body.contains(says), "{}", a.body);
        // The refused field is marked for screen readers and tied to its message.
        let marked = format!(r#"aria-invalid="true" autofocus aria-describedby="error-{field}""#);
        assert!(a.body.contains(&marked), "{}", a.body);
        assert!(
            a.body.contains(&format!(r#"id="error-{field}">"#)),
            "{}",
            a.body
        );
        assert_eq!(a.body.matches("aria-invalid").count(), 1, "{}", a.body);
        // The title says so too: screen readers read it first.
        assert!(
            a.body
                .contains("<title>Error: New webhook for Acme · Herald</title>"),
            "{}",
            a.body
        );
    }

    let mut fixed = typed;
    fixed[2] = ("url", "https://example.com/h");
    let a = admin.post(&create, &fixed).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let page = slashes(&admin.get(&a.location).await.body);
    let secret = page
        .split("id=\"new-secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("the new secret is shown");
    assert!(
        secret.starts_with("whsec_") && secret.len() > 20,
        "{secret}"
    );
    let again = slashes(&admin.get(&a.location).await.body);
    assert!(!again.contains(secret), "the secret is shown only once");
    assert!(again.contains("whsec_••••••••"));
    let hook_id = a.location.rsplit('/').next().unwrap();
    let (_, w) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook_id}")).await;
    assert_eq!(w["headers"]["x-team"], "identity");
    assert_eq!(w["timeout_ms"], 5000);
    assert_eq!(w["events"], json!(["user.created"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_gets_an_html_404_and_the_api_its_json() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let ask = |method: reqwest::Method, path: String, accept: &'static str| {
        http.request(method, format!("{}{path}", app.base))
            .header(ACCEPT, accept)
            .send()
    };
    let (browser, html) = ("text/html,application/xhtml+xml", "text/html");
    let resp = ask(reqwest::Method::GET, "/nowhere".into(), browser)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // With every page's headers, though no dashboard route answered.
    assert!(
        resp.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(resp.text().await.unwrap().contains("<!doctype html>"));
    let resp = ask(reqwest::Method::GET, "/v1/nowhere".into(), html)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    // A dashboard address that only takes a form, opened again from the address bar (it stays
    // there after a form was refused): the form's page, not the API's JSON nor a 404. The API
    // keeps its 405.
    let org = app.create_org("Acme").await;
    for (posted, page) in [
        (
            format!("/orgs/{org}/webhooks"),
            format!("/orgs/{org}/webhooks/new"),
        ),
        (
            format!("/orgs/{org}/webhooks/wh_01J0000000000000000000000/test"),
            format!("/orgs/{org}/webhooks/wh_01J0000000000000000000000"),
        ),
        ("/logout".to_owned(), "/".to_owned()),
    ] {
        let resp = ask(reqwest::Method::GET, posted.clone(), browser)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{posted}");
        assert_eq!(resp.headers()[LOCATION], page.as_str(), "{posted}");
    }
    let resp = ask(reqwest::Method::PUT, "/v1/orgs".into(), html)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    // A form sent to a page that only shows: a 405 page that says so, not the 404 page.
    let catalog = format!("/orgs/{org}/catalog");
    let resp = ask(reqwest::Method::POST, catalog.clone(), browser)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[ALLOW], "GET,HEAD");
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("This address does not take a POST request."),
        "{body}"
    );
    // Signed in, an error page within an organization keeps the organization's links, as its
    // other pages have them; outside one, or in one that is not there, it has none.
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let org_links = format!(r#"href="/orgs/{org}/catalog""#);
    let missing = admin
        .get(&format!(
            "/orgs/{org}/webhooks/wh_01J00000000000000000000000"
        ))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        slashes(&missing.body).contains(&org_links),
        "{}",
        missing.body
    );
    let resp = http
        .post(format!("{}{catalog}", app.base))
        .header(ACCEPT, browser)
        .header(COOKIE, admin.cookie.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[ALLOW], "GET,HEAD");
    let body = slashes(&resp.text().await.unwrap());
    assert!(
        body.contains("This address does not take a POST request."),
        "{body}"
    );
    assert!(
        body.contains(&org_links) && body.contains("Sign out"),
        "{body}"
    );
    for elsewhere in ["/nowhere", "/orgs/org_01J00000000000000000000000/catalog"] {
        let page = slashes(&admin.get(elsewhere).await.body);
        assert!(
            page.contains("Sign out") && !page.contains("/events\""),
            "{page}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websub_state_shows_per_channel_and_verification_can_be_resent() {
    let app = TestApp::spawn_with(|s| s.security.allow_insecure_urls = true).await;
    let rx = TestReceiver::start().await;
    let (status, org) = app
        .post(
            "/v1/orgs",
            json!({ "name": "My Org", "handle": "myorg", "catalogs": ["asgardeo"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{org}");
    let org = org["id"].as_str().unwrap();
    let hook = app
        .create_webhook(
            org,
            &rx.url("/hub"),
            json!({ "profile": "asgardeo", "channels": ["login", "session"], "secret": "asgardeo-secret-value" }),
        )
        .await;
    let hook = hook["id"].as_str().unwrap();
    let page = format!("/orgs/{org}/webhooks/{hook}");
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let body = admin.get(&page).await.body;
    assert!(body.contains("WebSub subscriptions"), "{body}");
    assert!(body.contains("not sent yet"), "{body}");

    // Enabling sends the verification for each channel; both answer.
    let csrf = admin.csrf(&page).await;
    let a = admin
        .post(&format!("{page}/enable"), &[("csrf", &csrf)])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let body = admin.get(&page).await.body;
    assert!(
        body.contains("WebSub verification sent for 2 channels"),
        "{body}"
    );
    assert_eq!(
        body.matches(r#"class="badge verified""#).count(),
        2,
        "{body}"
    );
    assert_eq!(rx.verifications_on("/hub").len(), 2);
    assert!(!body.contains(r#"data-label="Lease ends"></td>"#), "{body}");

    // One channel again.
    let a = admin
        .post(
            &format!("{page}/verify"),
            &[("csrf", &csrf), ("channel", "login")],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(rx.verifications_on("/hub").len(), 3);
    // The message speaks of that channel only.
    let body = admin.get(&page).await.body;
    assert!(
        body.contains("WebSub verification sent for 1 channel"),
        "{body}"
    );
    // Refused now: the lease it gave holds, and the page says both.
    rx.subscriber(Subscriber::Refuse(404));
    admin
        .post(
            &format!("{page}/verify"),
            &[("csrf", &csrf), ("channel", "login")],
        )
        .await;
    let body = admin.get(&page).await.body;
    assert!(
        body.contains("The endpoint refused the verification for: login. The lease it gave"),
        "{body}"
    );
    rx.subscriber(Subscriber::Echo);
    // The organization's list says how many channels it delivers to.
    let listed = admin.get(&format!("/orgs/{org}")).await.body;
    assert!(listed.contains("2 of 2 channels verified"), "{listed}");
    assert!(!listed.contains("it gets no events"), "{listed}");
    // Another, whose endpoint refuses both channels: enabled, and the list says it gets
    // nothing. (A channel verified before keeps its lease through a failed renewal.)
    let refusing = TestReceiver::start().await;
    refusing.subscriber(Subscriber::Refuse(404));
    let other = app
        .create_webhook(
            org,
            &refusing.url("/hub"),
            json!({ "profile": "asgardeo", "channels": ["login", "session"], "secret": "asgardeo-secret-value" }),
        )
        .await;
    let other = other["id"].as_str().unwrap();
    let (_, active) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/{other}/activate"),
            json!({}),
        )
        .await;
    assert_eq!(active["subscriptions"][1]["state"], "failed", "{active}");
    let listed = admin.get(&format!("/orgs/{org}")).await.body;
    assert!(
        listed.contains(
            r#"<span class="badge failed">0 of 2 channels verified</span> <small>it gets no events</small>"#
        ),
        "{listed}"
    );
    // Its event is skipped; once its endpoint verifies, the history's Recover sends it when
    // asked for skipped ones too (a plain recover takes failed ones only).
    let sent = app
        .send_event(org, crate::websub::login_success("held-back"))
        .await;
    assert_eq!(sent["events"][0]["skipped"], 1, "{sent}");
    refusing.subscriber(Subscriber::Echo);
    app.post(
        &format!("/v1/orgs/{org}/webhooks/{other}/verify"),
        json!({}),
    )
    .await;
    let history = format!("/orgs/{org}/webhooks/{other}/deliveries");
    let body = admin.get(&history).await.body;
    assert!(body.contains(r#"name="skipped""#), "{body}");
    let recover = format!("/orgs/{org}/webhooks/{other}/recover");
    let since = "2000-01-01T00:00";
    admin
        .post(
            &recover,
            &[("csrf", &csrf), ("since", since), ("confirmed", "yes")],
        )
        .await;
    let body = admin.get(&history).await.body;
    assert!(body.contains("No failed deliveries since then"), "{body}");
    admin
        .post(
            &recover,
            &[
                ("csrf", &csrf),
                ("since", since),
                ("skipped", "on"),
                ("confirmed", "yes"),
            ],
        )
        .await;
    let body = admin.get(&history).await.body;
    assert!(
        body.contains("1 failed or skipped delivery is being sent again"),
        "{body}"
    );
    let posts = refusing
        .wait_for("/hub", 1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(posts[0].json()["jti"], "held-back");
    // An active WebSub webhook is not deleted: the page says why instead.
    admin
        .post(
            &format!("{page}/delete"),
            &[("csrf", &csrf), ("confirmed", "yes")],
        )
        .await;
    let body = admin.get(&page).await.body;
    // In the dashboard's terms: its Disable button, not the API's route.
    assert!(body.contains("disable it first:"), "{body}");
    assert!(!body.contains("/v1/"), "{body}");

    // Disabled: each channel reads as unsubscribed, without the lease it gave up.
    let a = admin
        .post(&format!("{page}/disable"), &[("csrf", &csrf)])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let body = admin.get(&page).await.body;
    assert_eq!(
        body.matches(r#"class="badge verified">unsubscribed</span>"#)
            .count(),
        2,
        "{body}"
    );
    assert_eq!(
        body.matches(r#"data-label="Lease ends"></td>"#).count(),
        2,
        "{body}"
    );
    assert!(!body.contains("did not confirm the unsubscribe"), "{body}");
    // Enabled again, then disabled while the endpoint refuses: the message says it did not
    // confirm, as the CLI does.
    admin
        .post(&format!("{page}/enable"), &[("csrf", &csrf)])
        .await;
    rx.subscriber(Subscriber::Refuse(500));
    admin
        .post(&format!("{page}/disable"), &[("csrf", &csrf)])
        .await;
    let body = admin.get(&page).await.body;
    assert!(
        body.contains(
            "The endpoint did not confirm the unsubscribe for: login, session; it is disabled all \
             the same"
        ),
        "{body}"
    );
}

/// An edit that sends a WebSub verification (a new URL) says what became of it, as enabling
/// does, instead of only "saved".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_that_verifies_again_says_how_the_verification_went() {
    let app = TestApp::spawn_with(|s| s.security.allow_insecure_urls = true).await;
    let (echoing, refusing) = (TestReceiver::start().await, TestReceiver::start().await);
    refusing.subscriber(Subscriber::Refuse(404));
    let (_, org) = app
        .post(
            "/v1/orgs",
            json!({ "name": "My Org", "catalogs": ["asgardeo"] }),
        )
        .await;
    let org = org["id"].as_str().unwrap();
    let hook = app
        .create_webhook(
            org,
            &echoing.url("/hub"),
            json!({ "profile": "asgardeo", "channels": ["login"], "secret": "asgardeo-secret-value" }),
        )
        .await;
    let hook = hook["id"].as_str().unwrap();
    app.post(
        &format!("/v1/orgs/{org}/webhooks/{hook}/activate"),
        json!({}),
    )
    .await;
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let edit = format!("/orgs/{org}/webhooks/{hook}/edit");
    let save = format!("/orgs/{org}/webhooks/{hook}");
    let saved_with = async |name: &str, url: &str| {
        let body = admin.get(&edit).await.body;
        let marker = r#"name="read_at" value=""#;
        let start = body.find(marker).unwrap() + marker.len();
        let read_at = body[start..].split('"').next().unwrap().to_owned();
        let csrf = admin.csrf(&edit).await;
        let form = [
            ("csrf", csrf.as_str()),
            ("read_at", read_at.as_str()),
            ("name", name),
            ("url", url),
            ("profile", "asgardeo"),
            ("channels", "login"),
        ];
        let a = admin.post(&save, &form).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        admin.get(&save).await.body
    };
    // A new name only: nothing is verified again.
    let page = saved_with("renamed", &echoing.url("/hub")).await;
    assert!(page.contains("Webhook saved.</p>"), "{page}");
    // A new URL whose endpoint refuses: saved, and the verification's failure said.
    let page = saved_with("renamed", &refusing.url("/hub")).await;
    assert!(
        page.contains("Webhook saved. WebSub verification failed for: login."),
        "{page}"
    );
    // Back to one that answers.
    let page = saved_with("renamed", &echoing.url("/hub")).await;
    assert!(
        page.contains("Webhook saved. WebSub verification sent for 1 channel."),
        "{page}"
    );
}

/// A delivery whose attempt's time has come (under way, here: the endpoint is slow) is "due
/// since" that time, not "next" at a time already past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_under_way_is_due_not_next() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(200).after(std::time::Duration::from_secs(3)));
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    let hook = hook["id"].as_str().unwrap();
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    rx.wait_for("/h", 1, std::time::Duration::from_secs(10))
        .await;
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let body = admin
        .get(&format!("/orgs/{org}/webhooks/{hook}/deliveries"))
        .await
        .body;
    assert!(body.contains("<small>due since 20"), "{body}");
    assert!(!body.contains("<small>next 20"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_recover_and_edit_go_through_the_services() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": [0] }))
        .await;
    let hook = hook["id"].as_str().unwrap();
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    let failed = app.delivery_ids(&org, hook).await.remove(0);
    app.wait_for_delivery(&org, &failed, |d| d["state"] == "failed")
        .await;

    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let history = format!("/orgs/{org}/webhooks/{hook}/deliveries");
    let body = admin.get(&format!("{history}?state=failed")).await.body;
    assert!(body.contains(&failed), "{body}");
    // Only a WebSub webhook's deliveries are ever skipped: no box for them here.
    assert!(!body.contains(r#"name="skipped""#), "{body}");
    let body = admin.get(&format!("{history}?state=succeeded")).await.body;
    assert!(
        !body.contains(&failed) && body.contains("No deliveries match"),
        "{body}"
    );
    let a = admin.get(&format!("{history}?state=lost")).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("not a delivery state"), "{}", a.body);

    // Recover every failed delivery since an hour ago: the receiver now answers.
    rx.answer_by_default(Reply::status(200));
    let csrf = admin.csrf(&history).await;
    let since = (chrono::Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let recover = format!("/orgs/{org}/webhooks/{hook}/recover");
    // Without JavaScript, a page asks first, naming the time given.
    let asked = admin
        .post(&recover, &[("csrf", &csrf), ("since", &since)])
        .await;
    assert!(
        asked.body.contains(&format!(
            "Every failed delivery created since {} (UTC) goes to the endpoint again.",
            since.replace('T', " ")
        )),
        "{}",
        asked.body
    );
    let a = admin
        .post(
            &recover,
            &[("csrf", &csrf), ("since", &since), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(
        admin
            .get(&history)
            .await
            .body
            .contains("1 failed delivery is being sent again")
    );
    app.wait_for_delivery(&org, &failed, |d| d["state"] == "succeeded")
        .await;
    let a = admin
        .post(&recover, &[("csrf", &csrf), ("since", "last week")])
        .await;
    // Refused before anything is asked (without JavaScript, a page would ask first), and
    // what was typed is back in its field.
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let body = admin.get(&a.location).await.body;
    assert!(
        body.contains("must be a date and time") && body.contains(r#"value="last week""#),
        "{body}"
    );

    // Edit: a new name, the timeout override cleared, channels instead of types.
    let a = admin
        .post(
            &format!("/orgs/{org}/webhooks/{hook}"),
            &[
                ("csrf", &csrf),
                ("name", "renamed"),
                ("url", &rx.url("/h")),
                ("profile", "standard"),
                ("channels", "user"),
                ("timeout_ms", ""),
                ("retry_schedule", "0, 30"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let (_, w) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(w["name"], "renamed");
    assert_eq!(w["channels"], json!(["user"]));
    assert_eq!(w["retry_schedule"], json!([0, 30]));
    assert_eq!(w["timeout_ms"], json!(null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_deleted_in_bulk_from_the_organization_page() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let w = app
            .create_webhook(&org, "https://example.com/h", json!({}))
            .await;
        ids.push(w["id"].as_str().unwrap().to_owned());
    }
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let page = format!("/orgs/{org}");
    let csrf = admin.csrf(&page).await;
    let bulk = format!("/orgs/{org}/webhooks/bulk-delete");
    // Without JavaScript (no `confirmed` from the browser's dialog) a page asks first, and
    // nothing is deleted until its own form, which carries the selection, is sent.
    let selected = [("csrf", csrf.as_str()), ("ids", &ids[0]), ("ids", &ids[2])];
    let asked = admin.post(&bulk, &selected).await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.body);
    let asked_page = slashes(&asked.body);
    assert!(
        asked_page.contains("Delete the selected webhooks?")
            && asked_page.contains(
                &format!(
                    "2 webhooks are selected: 'test hook' ({}), 'test hook' ({}). Their pending",
                    ids[0], ids[2]
                )
                .replace('\'', "&#x27;")
            )
            && asked_page.contains(&format!(r#"action="{bulk}""#))
            && asked_page.contains(&format!(r#"href="{page}">Cancel"#)),
        "{}",
        asked.body
    );
    let (_, listed) = app.get(&format!("/v1/orgs/{org}/webhooks")).await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        3,
        "nothing deleted yet"
    );
    let fields = hidden_fields(&asked.body);
    assert!(
        fields.contains(&("confirmed".into(), "yes".into())),
        "{fields:?}"
    );
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a = admin.post(&bulk, &fields).await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, page.as_str())
    );
    let body = admin.get(&page).await.body;
    assert!(body.contains("Deleted 2 webhooks"), "{body}");
    assert!(!body.contains(&ids[0]) && body.contains(&ids[1]) && !body.contains(&ids[2]));
    // The same form again (a second click, another tab): nothing is said to be deleted.
    admin.post(&bulk, &fields).await;
    let body = admin.get(&page).await.body;
    assert!(
        body.contains("Nothing deleted: the selected webhooks no longer exist"),
        "{body}"
    );
    let a = admin.post(&bulk, &[("csrf", &csrf)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(
        admin
            .get(&page)
            .await
            .body
            .contains("Select the webhooks to delete first")
    );
}

/// The hidden fields of the forms on a page (the confirmation page's, which post again what
/// was asked about), with the HTML escapes of their values undone.
fn hidden_fields(body: &str) -> Vec<(String, String)> {
    let attribute = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(r#"{name}=""#))? + name.len() + 2;
        let value = tag[start..].split('"').next()?;
        Some(
            value
                .replace("&quot;", "\"")
                .replace("&#x27;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    };
    body.split("<input ")
        .skip(1)
        .map(|rest| rest.split('>').next().unwrap_or_default())
        .filter(|tag| tag.contains(r#"type="hidden""#))
        .filter_map(|tag| Some((attribute(tag, "name")?, attribute(tag, "value")?)))
        .collect()
}

/// The one-time secret on a page (the banner after creating a key or a webhook), if any.
pub fn shown_secret(body: &str) -> Option<String> {
    let marker = r#"<code id="new-secret">"#;
    let start = body.find(marker)? + marker.len();
    Some(body[start..].split('<').next()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_created_shown_once_and_revoked_from_the_organization_page() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let other = app.create_org("Globex").await;
    let (_, other_key) = app
        .post(
            &format!("/v1/orgs/{other}/api-keys"),
            json!({ "name": "theirs" }),
        )
        .await;
    let other_key_id = other_key["id"].as_str().unwrap().to_owned();

    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let page = format!("/orgs/{org}");
    let create = format!("/orgs/{org}/api-keys");
    let a = admin.post(&create, &[("name", "ops")]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "no CSRF token: {}", a.body);
    let csrf = admin.csrf(&page).await;
    let a = admin
        .post(&create, &[("csrf", &csrf), ("name", "ops")])
        .await;
    // To the top of the page, where the key is shown (anchored at the keys, it was out of view).
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, page.as_str())
    );
    // The key is on the next page, once; afterwards only its first characters are.
    let body = admin.get(&page).await.body;
    let key = shown_secret(&body).expect("the new key is shown");
    assert!(key.starts_with("hk_") && key.len() > 40, "{key}");
    assert!(body.contains("API key ops (manager) created"), "{body}");
    let body = admin.get(&page).await.body;
    assert!(!body.contains(&key) && shown_secret(&body).is_none());
    // The admin is not signed in with any key.
    assert!(!body.contains("you are signed in with it"), "{body}");
    assert!(
        body.contains(&format!("<code>{}…</code>", &key[..9])),
        "{body}"
    );
    // A name is needed: said on the page, nothing created.
    let a = admin.post(&create, &[("csrf", &csrf), ("name", "")]).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(a.body.contains("No key created"), "{}", a.body);
    // A refused one is kept as typed, with its role, marked and said why at the form.
    let typed = "billing\u{202E}service";
    let a = admin
        .post(
            &create,
            &[("csrf", &csrf), ("name", typed), ("role", "manager")],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(
        a.body.contains(&format!(
            r#"value="{typed}" class="invalid" aria-invalid="true""#
        )) && a.body.contains(r#"<option value="manager" selected>"#)
            && a.body
                .contains(r#"<p class="field-error" id="error-key-name">No key created: Name: "#),
        "{}",
        a.body
    );
    let (_, keys) = app.get(&format!("/v1/orgs/{org}/api-keys")).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_owned();

    // The key signs in; it sees its own organization's keys, not another's.
    let visitor = Visitor::signed_in(&app, &key).await;
    let body = visitor.get(&page).await.body;
    assert!(body.contains("Revoke key ops"), "{body}");
    // Its own key is marked, and the browser's question says that revoking it signs out.
    assert!(
        body.contains("ops <small class=\"badge plain\">you are signed in with it</small>")
            && body.contains("You are signed in with it: revoking it signs you out."),
        "{body}"
    );
    assert!(!body.contains("theirs"));
    assert_eq!(
        visitor.get(&format!("/orgs/{other}")).await.status,
        StatusCode::NOT_FOUND
    );
    let csrf = visitor.csrf(&page).await;
    for path in [
        format!("/orgs/{other}/api-keys/{other_key_id}/revoke"),
        format!("/orgs/{org}/api-keys/{other_key_id}/revoke"),
    ] {
        // Asked first or asked already: not found either way.
        for form in [
            &[("csrf", csrf.as_str())][..],
            &[("csrf", &csrf), ("confirmed", "yes")],
        ] {
            let a = visitor.post(&path, form).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}: {}", a.body);
        }
    }
    let a = visitor
        .post(
            &format!("/orgs/{other}/api-keys"),
            &[("csrf", &csrf), ("name", "sneaky")],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let (_, theirs) = app.get(&format!("/v1/orgs/{other}/api-keys")).await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 1);

    // Revoking the key one is signed in with ends the session: the next page is the sign-in
    // page, which says why.
    let revoke = format!("/orgs/{org}/api-keys/{key_id}/revoke");
    let a = visitor.post(&revoke, &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "no CSRF token");
    let a = visitor.post(&revoke, &[("csrf", &csrf)]).await;
    assert_eq!(a.status, StatusCode::OK, "asked first: {}", a.body);
    assert!(
        a.body.contains("Revoke this API key?")
            && a.body
                .contains("You are signed in with this key: revoking it signs you out."),
        "{}",
        a.body
    );
    // The admin is asked the same without being told that.
    let admin_csrf = admin.csrf(&page).await;
    let a = admin.post(&revoke, &[("csrf", &admin_csrf)]).await;
    assert!(
        a.body.contains("Revoke this API key?") && !a.body.contains("You are signed in"),
        "{}",
        a.body
    );
    let a = visitor
        .post(&revoke, &[("csrf", &csrf), ("confirmed", "yes")])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let a = visitor.get(&a.location).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(a.location.starts_with("/login?ended="), "{}", a.location);
    let body = visitor.get(&a.location).await.body;
    assert!(body.contains("Your session has ended"), "{body}");
    let mut again = Visitor::new(&app);
    assert_eq!(again.sign_in(&key).await.status, StatusCode::UNAUTHORIZED);
    let (_, keys) = app.get(&format!("/v1/orgs/{org}/api-keys")).await;
    assert_eq!(keys["data"], json!([]));
    // The admin's session is untouched.
    assert_eq!(admin.get(&page).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_key_cannot_delete_its_organization() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let (_, key) = app
        .post(
            &format!("/v1/orgs/{org}/api-keys"),
            json!({ "name": "ops" }),
        )
        .await;
    let visitor = Visitor::signed_in(&app, key["key"].as_str().unwrap()).await;
    let settings = format!("/orgs/{org}/settings");
    let body = visitor.get(&settings).await.body;
    assert!(body.contains("Save settings") && !body.contains("Delete organization"));
    // Nor change its handle: the field is read-only, and a changed one is refused, saying why.
    assert!(
        body.contains(r#"value="acme" required maxlength="63" readonly"#),
        "{body}"
    );
    assert!(
        body.contains("Only the server's operator changes it"),
        "{body}"
    );
    let csrf = visitor.csrf(&settings).await;
    let a = visitor
        .post(
            &settings,
            &[
                ("csrf", &csrf),
                ("name", "Acme Renamed"),
                ("handle", "acme-new"),
                ("catalogs", "optare"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(
        a.body
            .contains("handle is changed only with the admin token"),
        "{}",
        a.body
    );
    let a = visitor
        .post(
            &settings,
            &[
                ("csrf", &csrf),
                ("name", "Acme Renamed"),
                ("handle", "acme"),
                ("catalogs", "optare"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let (_, stored) = app.get(&format!("/v1/orgs/{org}")).await;
    assert_eq!(
        (stored["name"].as_str(), stored["handle"].as_str()),
        (Some("Acme Renamed"), Some("acme"))
    );
    let a = visitor
        .post(
            &format!("/orgs/{org}/delete"),
            &[("csrf", &csrf), ("confirm", "acme")],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.body.contains("admin token"), "{}", a.body);
    let (status, _) = app.get(&format!("/v1/orgs/{org}")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organization_settings_keep_what_was_typed_and_deleting_asks_for_the_handle() {
    let app = TestApp::spawn().await;
    app.create_org("Acme").await;
    let org = app.create_org("Globex").await;
    let (_, stored) = app.get(&format!("/v1/orgs/{org}")).await;
    let handle = stored["handle"].as_str().unwrap().to_owned();
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let settings = format!("/orgs/{org}/settings");
    let body = admin.get(&settings).await.body;
    assert!(body.contains(&format!(r#"value="{handle}""#)), "{body}");
    let csrf = admin.csrf(&settings).await;

    // A handle another organization uses.
    let a = admin
        .post(
            &settings,
            &[
                ("csrf", &csrf),
                ("name", "Globex Renamed"),
                ("handle", "acme"),
                ("catalogs", "optare"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(
        a.body.contains("already used by another organization"),
        "{}",
        a.body
    );
    assert!(a.body.contains(r#"value="Globex Renamed""#), "{}", a.body);
    assert!(a.body.contains(r#"value="acme""#), "{}", a.body);
    // Bytes that are not UTF-8 (no browser sends them for this page) are refused, not stored
    // replaced.
    let a = admin
        .post_encoded(
            &settings,
            format!("csrf={csrf}&name=Globex%FF%FE&handle={handle}&catalogs=optare"),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.body.contains("not sent as UTF-8"), "{}", a.body);
    // Two catalogs that define the same type.
    let a = admin
        .post(
            &settings,
            &[
                ("csrf", &csrf),
                ("name", "Globex"),
                ("handle", &handle),
                ("catalogs", "opal"),
                ("catalogs", "parallelworks"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(a.body.contains("both define"), "{}", a.body);
    assert!(a.body.contains(r#"value="opal" checked"#), "{}", a.body);
    let (_, unchanged) = app.get(&format!("/v1/orgs/{org}")).await;
    assert_eq!(unchanged["name"], "Globex");
    // Saved.
    let a = admin
        .post(
            &settings,
            &[
                ("csrf", &csrf),
                ("name", "Globex Corp"),
                ("handle", "globex-corp"),
                ("catalogs", "optare"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let (_, saved) = app.get(&format!("/v1/orgs/{org}")).await;
    assert_eq!(
        (saved["name"].as_str(), saved["handle"].as_str()),
        (Some("Globex Corp"), Some("globex-corp"))
    );

    // Deleting needs the handle typed exactly.
    let delete = format!("/orgs/{org}/delete");
    let a = admin.post(&delete, &[("csrf", &csrf)]).await.status;
    assert_eq!(a, StatusCode::UNPROCESSABLE_ENTITY);
    let a = admin
        .post(&delete, &[("csrf", &csrf), ("confirm", "globex")])
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.body.contains("type the organization"), "{}", a.body);
    assert!(a.body.contains(r#"value="globex""#), "{}", a.body);
    let (status, _) = app.get(&format!("/v1/orgs/{org}")).await;
    assert_eq!(status, StatusCode::OK);
    let a = admin
        .post(&delete, &[("confirm", "globex-corp")])
        .await
        .status;
    assert_eq!(a, StatusCode::FORBIDDEN, "no CSRF token");
    let a = admin
        .post(&delete, &[("csrf", &csrf), ("confirm", "globex-corp")])
        .await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, "/orgs")
    );
    assert!(
        admin
            .get("/orgs")
            .await
            .body
            .contains("Globex Corp deleted")
    );
    let (status, _) = app.get(&format!("/v1/orgs/{org}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_event_types_are_registered_from_the_catalog_page() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let catalog = format!("/orgs/{org}/catalog");
    let register = format!("/orgs/{org}/event-types");
    let schema = r#"{"type": "object", "required": ["invoice"]}"#;
    let a = admin
        .post(&register, &[("name", "invoice.paid"), ("schema", schema)])
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "no CSRF token");
    let csrf = admin.csrf(&catalog).await;

    // Bad JSON: a readable message, everything kept.
    let a = admin
        .post(
            &register,
            &[
                ("csrf", &csrf),
                ("name", "invoice.paid"),
                ("channel", "billing"),
                ("schema", r#"{"type": "object",}"#),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(
        a.body
            .contains("JSON Schema: is not valid JSON (line 1, column"),
        "{}",
        a.body
    );
    assert!(a.body.contains(r#"value="invoice.paid""#), "{}", a.body);
    assert!(a.body.contains(r#"value="billing""#), "{}", a.body);
    assert!(
        a.body.contains("&quot;type&quot;: &quot;object&quot;,}"),
        "{}",
        a.body
    );
    // Valid JSON that is not a valid schema.
    let a = admin
        .post(
            &register,
            &[
                ("csrf", &csrf),
                ("name", "invoice.paid"),
                ("schema", r#"{"type": 5}"#),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(a.body.contains("Not registered: JSON Schema"), "{}", a.body);
    // An example that does not match the schema.
    let a = admin
        .post(
            &register,
            &[
                ("csrf", &csrf),
                ("name", "invoice.paid"),
                ("schema", schema),
                ("example", r#"{"other": 1}"#),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(a.body.contains("Not registered: Example"), "{}", a.body);

    let a = admin
        .post(
            &register,
            &[
                ("csrf", &csrf),
                ("name", "invoice.paid"),
                ("channel", "billing"),
                ("description", "An invoice was paid."),
                ("schema", schema),
                ("example", r#"{"invoice": {"id": "in_1"}}"#),
            ],
        )
        .await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, catalog.as_str()),
        "{}",
        a.body
    );
    let body = admin.get(&catalog).await.body;
    assert!(
        body.contains("Event type invoice.paid registered"),
        "{body}"
    );
    assert!(body.contains("<h2>billing</h2>"), "{body}");
    assert!(body.contains("<code>invoice.paid</code> <small class=\"badge plain\">custom</small> <small class=\"badge plain\">JSON Schema</small>"), "{body}");
    assert!(body.contains("An invoice was paid."));
    // The schema applies to events sent through the API.
    let (status, _) = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!({ "type": "invoice.paid", "data": { "other": 1 } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // The same name again: a conflict, shown on the form.
    let a = admin
        .post(&register, &[("csrf", &csrf), ("name", "invoice.paid")])
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(a.body.contains("already has an event type"), "{}", a.body);

    // Its own types have a delete button; the catalogs' do not.
    let body = admin.get(&catalog).await.body;
    assert_eq!(body.matches("/event-types/delete").count(), 1, "{body}");
    let delete = format!("/orgs/{org}/event-types/delete");
    let a = admin
        .post(
            &delete,
            &[
                ("csrf", &csrf),
                ("name", "invoice.paid"),
                ("confirmed", "yes"),
            ],
        )
        .await;
    assert_eq!(a.location, catalog);
    let body = admin.get(&catalog).await.body;
    assert!(body.contains("Event type invoice.paid deleted"), "{body}");
    assert!(!body.contains("<code>invoice.paid</code>"), "{body}");
    let a = admin
        .post(
            &delete,
            &[
                ("csrf", &csrf),
                ("name", "user.created"),
                ("confirmed", "yes"),
            ],
        )
        .await;
    let body = admin.get(&a.location).await.body;
    assert!(
        body.contains("comes from the"),
        "a catalog's type stays: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_from_the_webhook_page_shows_the_new_secret_once_and_both_sign_for_a_while() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/rotated"), json!({}))
        .await;
    let (id, old) = (
        hook["id"].as_str().unwrap().to_owned(),
        hook["secret"].as_str().unwrap().to_owned(),
    );
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let page = format!("/orgs/{org}/webhooks/{id}");
    let csrf = admin.csrf(&page).await;
    let rotate = format!("{page}/rotate");

    let refused = admin.post(&rotate, &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "no CSRF token");
    // Without JavaScript, a page asks first; nothing is rotated until it is answered.
    let a = admin.post(&rotate, &[("csrf", csrf.as_str())]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(
        a.body.contains("Rotate the secret?")
            && a.body
                .contains("the previous one keeps signing beside it for 24 hours")
            && slashes(&a.body).contains(&format!(r#"action="{rotate}""#)),
        "{}",
        a.body
    );
    let (_, unchanged) = app.get(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(unchanged["updated_at"], hook["updated_at"], "{unchanged}");
    let a = admin
        .post(&rotate, &[("csrf", csrf.as_str()), ("confirmed", "yes")])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    // Another page opened meanwhile (a second tab) neither shows the secret nor uses it up.
    let elsewhere = admin.get(&format!("/orgs/{org}")).await.body;
    assert!(shown_secret(&elsewhere).is_none() && !elsewhere.contains("Secret rotated"));
    let shown = slashes(&admin.get(&a.location).await.body);
    let new = shown_secret(&shown).expect("the new secret is shown once");
    assert!(new.starts_with("whsec_") && new != old, "{new}");
    assert!(shown.contains("previous one keeps signing"), "{shown}");
    assert!(
        shown_secret(&admin.get(&page).await.body).is_none(),
        "and only once"
    );

    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    let got = rx
        .wait_for("/rotated", 1, std::time::Duration::from_secs(10))
        .await;
    got[0].verify_standard(&new).expect("the new secret signs");
    got[0]
        .verify_standard(&old)
        .expect("the previous secret signs too during the overlap");

    // A profile whose secret the user chooses asks for the new one (it could not be rotated
    // from here at all).
    let permit = app
        .create_webhook(
            &org,
            &rx.url("/permit"),
            json!({ "profile": "permit", "secret": "the-first-permit-secret" }),
        )
        .await;
    let page = format!("/orgs/{org}/webhooks/{}", permit["id"].as_str().unwrap());
    assert!(admin.get(&page).await.body.contains("name=\"secret\""));
    let rotate = format!("{page}/rotate");
    let chosen = "the-second-permit-secret";
    let a = admin
        .post(&rotate, &[("csrf", csrf.as_str()), ("secret", chosen)])
        .await;
    let shown = slashes(&admin.get(&a.location).await.body);
    assert_eq!(shown_secret(&shown).as_deref(), Some(chosen), "{shown}");
    // Typed with a line break after it: refused, and the secret stays.
    let permit_api = format!("/v1/orgs/{org}/webhooks/{}", permit["id"].as_str().unwrap());
    let (_, before) = app.get(&permit_api).await;
    assert!(!before["updated_at"].is_null(), "{before}");
    let a = admin
        .post(
            &rotate,
            &[
                ("csrf", csrf.as_str()),
                ("secret", "the-third-permit-secret\n"),
            ],
        )
        .await;
    let refused = admin.get(&a.location).await.body;
    assert!(refused.contains("spaces or line breaks"), "{refused}");
    let (_, after) = app.get(&permit_api).await;
    assert_eq!(after["updated_at"], before["updated_at"], "{after}");
    let a = admin
        .post(&rotate, &[("csrf", csrf.as_str()), ("confirmed", "yes")])
        .await;
    let shown = admin.get(&a.location).await.body;
    assert!(shown.contains("signs with a secret you choose"), "{shown}");

    // A scheme whose header carries one signature (hub): no overlap is promised, before or after.
    let hub = json!({ "signature": "hub" });
    let hub = app.create_webhook(&org, &rx.url("/hub"), hub).await;
    let page = format!("/orgs/{org}/webhooks/{}", hub["id"].as_str().unwrap());
    let before = slashes(&admin.get(&page).await.body);
    assert!(before.contains("needs the new one at once"), "{before}");
    let a = admin
        .post(
            &format!("{page}/rotate"),
            &[("csrf", csrf.as_str()), ("confirmed", "yes")],
        )
        .await;
    let shown = slashes(&admin.get(&a.location).await.body);
    assert!(shown.contains("carries one secret"), "{shown}");
    assert!(!shown.contains("keeps signing beside it"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_tells_what_the_endpoint_answered() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/t"), json!({})).await;
    let id = hook["id"].as_str().unwrap();
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let page = format!("/orgs/{org}/webhooks/{id}");
    let csrf = admin.csrf(&page).await;
    let test = format!("{page}/test");

    let a = admin.post(&test, &[("csrf", csrf.as_str())]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let shown = admin.get(&a.location).await.body;
    assert!(
        shown.contains("Test delivered: the endpoint answered 200"),
        "{shown}"
    );

    rx.answer_by_default(Reply::status(503));
    let a = admin.post(&test, &[("csrf", csrf.as_str())]).await;
    let shown = admin.get(&a.location).await.body;
    assert!(
        shown.contains("Test not delivered: the endpoint answered 503"),
        "{shown}"
    );
    assert!(
        shown.contains("it is retried on the webhook&#x27;s schedule"),
        "{shown}"
    );

    // The attempt's own words, where they say more than its status.
    rx.answer_by_default(Reply::status(302).header("location", "https://example.com/moved"));
    let a = admin.post(&test, &[("csrf", csrf.as_str())]).await;
    let shown = slashes(&admin.get(&a.location).await.body);
    assert!(
        shown.contains(
            "the endpoint answered 302; redirects are not followed, register the final URL"
        ),
        "{shown}"
    );

    // A 410 disables the webhook as its attempt is recorded: nothing is retried until then.
    rx.answer_by_default(Reply::status(410));
    let a = admin.post(&test, &[("csrf", csrf.as_str())]).await;
    let shown = slashes(&admin.get(&a.location).await.body);
    assert!(
        shown.contains(
            "Herald disabled the webhook (the endpoint answered 410 Gone): it waits until the \
             webhook is enabled again"
        ),
        "{shown}"
    );
    assert!(!shown.contains("retried on the webhook"), "{shown}");
}

/// The edit form offers Herald's own news as it offers the organization's types: a webhook
/// subscribed to them through the API keeps them when saved from the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_subscriptions_to_herald_s_own_events() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            "https://example.com/ops",
            json!({ "events": ["delivery.exhausted", "herald.test"], "channels": ["operations"] }),
        )
        .await;
    let hook = hook["id"].as_str().unwrap();
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let body = admin
        .get(&format!("/orgs/{org}/webhooks/{hook}/edit"))
        .await
        .body;
    // herald.test, which only the API offers, stays too: saved from here, it is kept.
    for checked in [
        r#"name="events" value="delivery.exhausted" checked"#,
        r#"name="events" value="herald.test" checked"#,
        r#"name="channels" value="operations" checked"#,
    ] {
        assert!(body.contains(checked), "{checked} in {body}");
    }
    assert!(
        body.contains(r#"name="events" value="webhook.disabled">"#),
        "{body}"
    );
    // Its history can be filtered to them too.
    let history = admin
        .get(&format!("/orgs/{org}/webhooks/{hook}/deliveries"))
        .await
        .body;
    assert!(
        history.contains(r#"<option value="delivery.exhausted">"#),
        "{history}"
    );
    // The catalog page lists and explains them.
    let catalog = admin.get(&format!("/orgs/{org}/catalog")).await.body;
    assert!(
        catalog.contains("<code>webhook.disabled</code>"),
        "{catalog}"
    );
    assert!(catalog.contains("410 Gone"), "{catalog}");
}

/// Two tabs editing one webhook: the later save, over a change it never saw, is refused with
/// what it typed, instead of silently putting the other change back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_over_a_change_made_since_the_form_opened_is_refused() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, "https://example.com/old", json!({ "name": "crm" }))
        .await;
    let profile = hook["profile"].as_str().unwrap().to_owned();
    let hook = hook["id"].as_str().unwrap();
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let edit = format!("/orgs/{org}/webhooks/{hook}/edit");
    let body = admin.get(&edit).await.body;
    let marker = r#"name="read_at" value=""#;
    let start = body.find(marker).expect("the form says when it was read") + marker.len();
    let read_at = body[start..].split('"').next().unwrap().to_owned();
    let csrf = admin.csrf(&edit).await;
    // Meanwhile, another tab (here the API) moves the webhook.
    app.advance(std::time::Duration::from_secs(1));
    let (status, _) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{hook}"),
            json!({ "url": "https://example.com/new" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let save = format!("/orgs/{org}/webhooks/{hook}");
    let form = [
        ("csrf", csrf.as_str()),
        ("read_at", read_at.as_str()),
        ("name", "crm renamed"),
        ("url", "https://example.com/old"),
        ("profile", profile.as_str()),
        ("events", "*"),
    ];
    let a = admin.post(&save, &form).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(
        a.body.contains("was changed since this form was opened"),
        "{}",
        a.body
    );
    assert!(a.body.contains(r#"value="crm renamed""#), "{}", a.body);
    // Saving again would put the old URL back: the page says which fields differ now (and
    // not whether it is enabled, which the edit form does not ask).
    assert!(
        a.body
            .contains("differs from the webhook as it is now in: Name, URL; saving"),
        "{}",
        a.body
    );
    let (_, stored) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(
        (&stored["url"], &stored["name"]),
        (&json!("https://example.com/new"), &json!("crm"))
    );
    // Sent again from the page it got back (which read the change), it saves.
    let body = a.body;
    let start = body.find(marker).unwrap() + marker.len();
    let read_again = body[start..].split('"').next().unwrap().to_owned();
    let form = [
        ("csrf", csrf.as_str()),
        ("read_at", read_again.as_str()),
        ("name", "crm renamed"),
        ("url", "https://example.com/new"),
        ("profile", profile.as_str()),
        ("events", "*"),
    ];
    // Nothing ticked: refused in the form's words (the API's would speak of ["*"]), the typed
    // name kept.
    let unticked = &form[..form.len() - 1];
    let a = admin.post(&save, unticked).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(
        a.body.contains("nothing is ticked: tick All event types")
            && a.body.contains(r#"value="crm renamed""#),
        "{}",
        a.body
    );
    let a = admin.post(&save, &form).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let (_, stored) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(stored["name"], "crm renamed");
}

/// Custom headers often carry the receiver's credentials: the webhook's page and a delivery's
/// request show their names, not their values (as secrets are shown masked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_header_values_are_not_shown_outside_the_edit_form() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            &rx.url("/h"),
            json!({ "headers": { "Authorization": "Bearer receiver-s3cret" } }),
        )
        .await;
    let hook = hook["id"].as_str().unwrap();
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    rx.wait_for("/h", 1, std::time::Duration::from_secs(10))
        .await;
    let delivery = app.delivery_ids(&org, hook).await.remove(0);
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    for page in [
        format!("/orgs/{org}/webhooks/{hook}"),
        format!("/orgs/{org}/deliveries/{delivery}"),
    ] {
        let body = admin.get(&page).await.body;
        assert!(body.contains("authorization"), "{page}: {body}");
        assert!(!body.contains("receiver-s3cret"), "{page} shows the value");
    }
    // The edit form has it, to be changed.
    let body = admin
        .get(&format!("/orgs/{org}/webhooks/{hook}/edit"))
        .await
        .body;
    assert!(body.contains("receiver-s3cret"));
}

/// A delivery waiting an hour for its retry offers its attempt now; a finished one, a resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_waiting_for_its_retry_is_attempted_now_from_its_page() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    rx.answer_by_default(Reply::status(500));
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, &rx.url("/h"), json!({ "retry_schedule": [0, 3600] }))
        .await;
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    let delivery = app
        .delivery_ids(&org, hook["id"].as_str().unwrap())
        .await
        .remove(0);
    app.wait_for_delivery(&org, &delivery, |d| d["attempt_count"] == 1)
        .await;
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let page = format!("/orgs/{org}/deliveries/{delivery}");
    let csrf = admin.csrf(&page).await;
    let shown = admin.get(&page).await.body;
    assert!(shown.contains(">Attempt now</button>"));
    // Beside the body laid out for reading, the bytes the endpoint got, which the signature
    // covers (a receiver checking its verifier copies these).
    let sent = String::from_utf8(rx.received_on("/h")[0].body.to_vec()).unwrap();
    let unescaped = shown.replace("&quot;", "\"").replace("&#x2f;", "/");
    assert!(
        unescaped.contains(&format!(
            r#"aria-label="Request body as sent">{sent}</pre>"#
        )),
        "{sent}: {shown}"
    );

    rx.answer_by_default(Reply::status(204));
    let a = admin
        .post(&format!("{page}/resend"), &[("csrf", csrf.as_str())])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    // The page comes back with the endpoint's answer, and the attempt on it.
    let body = admin.get(&a.location).await.body;
    assert!(
        body.contains("Delivered: the endpoint answered 204 in"),
        "{body}"
    );
    assert!(body.contains("#2 "), "{body}");
    assert_eq!(rx.received_on("/h").len(), 2);
    assert!(admin.get(&page).await.body.contains(">Resend</button>"));

    // Another waits an hour for its retry: the webhook's history attempts every waiting one.
    rx.answer_by_default(Reply::status(500));
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u2" } } }),
    )
    .await;
    rx.wait_for("/h", 3, std::time::Duration::from_secs(10))
        .await;
    let second = app.delivery_ids(&org, hook["id"].as_str().unwrap()).await;
    let second = second.iter().find(|d| **d != delivery).unwrap();
    app.wait_for_delivery(&org, second, |d| d["attempt_count"] == 1)
        .await;
    rx.answer_by_default(Reply::status(204));
    let history = format!(
        "/orgs/{org}/webhooks/{}/deliveries",
        hook["id"].as_str().unwrap()
    );
    assert!(
        admin
            .get(&history)
            .await
            .body
            .contains(">Attempt waiting deliveries now</button>")
    );
    let a = admin
        .post(
            &format!(
                "/orgs/{org}/webhooks/{}/retry",
                hook["id"].as_str().unwrap()
            ),
            &[("csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, history.as_str())
    );
    let body = admin.get(&history).await.body;
    assert!(
        body.contains("1 delivery waiting for a retry is being attempted now."),
        "{body}"
    );
    app.wait_for_delivery(&org, second, |d| d["state"] == "succeeded")
        .await;

    // Its webhook disabled, the page offers no resend the service would refuse, and says how
    // to have one; deleted, no link to a page that is gone either.
    let api = format!("/v1/orgs/{org}/webhooks/{}", hook["id"].as_str().unwrap());
    let (status, _) = app.post(&format!("{api}/deactivate"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let body = admin.get(&page).await.body;
    assert!(
        !body.contains(">Resend</button>") && body.contains("Its webhook is disabled"),
        "{body}"
    );
    let (status, _) = app.delete(&api).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let body = admin.get(&page).await.body;
    assert!(
        !body.contains(">Resend</button>")
            && body.contains("Its webhook was deleted")
            && body.contains("<small>(deleted)</small>")
            && !body.contains(&format!("/webhooks/{}\"", hook["id"].as_str().unwrap())),
        "{body}"
    );
}

/// A second organization of one name gets a numbered handle, and the dashboard says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_handle_is_announced() {
    let app = TestApp::spawn().await;
    app.create_org("Acme").await;
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let csrf = admin.csrf("/orgs").await;
    let a = admin
        .post("/orgs", &[("csrf", &csrf), ("name", "Acme")])
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let body = admin.get(&a.location).await.body;
    assert!(
        body.contains("Its handle is acme-2 (acme was taken)"),
        "{body}"
    );
    // A handle asked for and taken: the form marks that field, focused for typing again.
    let a = admin
        .post(
            "/orgs",
            &[("csrf", &csrf), ("name", "Acme"), ("handle", "acme")],
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(
        a.body
            .contains(r#"aria-invalid="true" autofocus aria-describedby="error-handle""#),
        "{}",
        a.body
    );
    assert!(a.body.contains(r#"id="error-handle""#), "{}", a.body);
    assert!(a.body.contains("<title>Error: Organizations"), "{}", a.body);
}

/// The webhook's page shows every setting the API has: its rate limit, its verification and
/// its profile's settings too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhooks_page_shows_its_rate_limit_verification_and_profile_settings() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(
            &org,
            "https://example.com/ce",
            json!({
                "profile": "cloudevents",
                "options": { "content_mode": "binary" },
                "rate_limit_per_second": 5
            }),
        )
        .await;
    let hook = hook["id"].as_str().unwrap();
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let page = admin
        .get(&format!("/orgs/{org}/webhooks/{hook}"))
        .await
        .body;
    assert!(page.contains("<dd>5 requests a second</dd>"), "{page}");
    assert!(
        page.contains("<dt>Verification</dt><dd>none</dd>"),
        "{page}"
    );
    assert!(page.contains("<dd>content_mode binary</dd>"), "{page}");
}

/// Past the first page of a webhook's history there is a way back to the newest deliveries,
/// with the filters kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_lead_to_older_deliveries_and_back_to_the_newest() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, "https://example.com/h", json!({}))
        .await;
    let hook = hook["id"].as_str().unwrap();
    let events: Vec<_> = (0..55)
        .map(|i| json!({ "type": "user.created", "data": { "user": { "id": format!("u{i}") } } }))
        .collect();
    let (status, _) = app
        .post(&format!("/v1/orgs/{org}/events"), json!(events))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let admin = Visitor::signed_in(&app, ADMIN_TOKEN).await;
    let first = admin
        .get(&format!(
            "/orgs/{org}/webhooks/{hook}/deliveries?state=pending"
        ))
        .await
        .body;
    assert!(first.contains("Older deliveries"), "{first}");
    assert!(!first.contains("Newest deliveries"), "{first}");
    let marker = "<a href=\"";
    let older = first
        .split(marker)
        .filter_map(|rest| rest.split('"').next())
        .find(|href| href.contains("cursor="))
        .expect("a link to older deliveries")
        .replace("&amp;", "&")
        .replace("&#x2f;", "/");
    let second = admin.get(&older).await.body;
    let back = format!(
        "<a href=\"&#x2f;orgs&#x2f;{org}&#x2f;webhooks&#x2f;{hook}&#x2f;deliveries?state=pending&amp;event_type=\">← Newest deliveries</a>"
    );
    assert!(second.contains(&back), "{second}");
    assert!(!second.contains("Older deliveries"), "{second}");
}
