//! The OpenAPI document against the running server: a walk through the API calls every
//! documented operation, and every answer must have a documented status and a body that
//! validates against the documented schema (with an independent JSON Schema validator). The walk
//! fails if the document lists an operation it did not call, so a route added to the document
//! must be added here too.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Subscriber, TestApp, TestReceiver};

/// Calls operations by their documented path template and checks each answer against the
/// document.
struct Walk<'a> {
    app: &'a TestApp,
    doc: Value,
    called: BTreeSet<(String, String)>,
    problems: Vec<String>,
}

impl<'a> Walk<'a> {
    async fn new(app: &'a TestApp) -> Self {
        let resp = app
            .http
            .get(format!("{}/openapi.json", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let doc: Value = resp.json().await.unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            doc["openapi"]
        );
        Self {
            app,
            doc,
            called: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// Every `(method, path template)` the document lists.
    fn documented(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in ["get", "post", "patch", "put", "delete"] {
                if item.get(method).is_some() {
                    out.insert((method.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    /// Calls `template` with its `{name}`s replaced by `params`, as the admin.
    async fn admin(
        &mut self,
        method: Method,
        template: &str,
        params: &[&str],
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, template, params, ADMIN_TOKEN, body).await
    }

    async fn call(
        &mut self,
        method: Method,
        template: &str,
        params: &[&str],
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let path = fill(template, params);
        let mut req = self
            .app
            .http
            .request(method.clone(), format!("{}{path}", self.app.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let method = method.as_str().to_ascii_lowercase();
        self.check(&method, template, status, &content_type, &text);
        self.called.insert((method, template.to_owned()));
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value)
    }

    /// The answer against the documented response for its status.
    fn check(
        &mut self,
        method: &str,
        template: &str,
        status: StatusCode,
        content_type: &str,
        text: &str,
    ) {
        let what = format!("{} {template} → {}", method.to_uppercase(), status.as_u16());
        let Some(op) = self.doc["paths"][template].get(method) else {
            self.problems.push(format!("{what}: not in the document"));
            return;
        };
        let Some(response) = op["responses"].get(status.as_str()) else {
            self.problems
                .push(format!("{what}: status not documented; body: {text}"));
            return;
        };
        let Some(content) = response.get("content") else {
            if !text.is_empty() {
                self.problems
                    .push(format!("{what}: documented without a body, got {text}"));
            }
            return;
        };
        let (media, spec) = content.as_object().unwrap().iter().next().unwrap();
        if !content_type.starts_with(media.as_str()) {
            self.problems.push(format!(
                "{what}: documented as {media}, answered {content_type}"
            ));
            return;
        }
        if media != "application/json" {
            return;
        }
        let body: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.problems
                    .push(format!("{what}: not JSON ({e}): {text}"));
                return;
            }
        };
        let mut schema = spec["schema"].clone();
        schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        schema["components"] = self.doc["components"].clone();
        let validator = match jsonschema::validator_for(&schema) {
            Ok(v) => v,
            Err(e) => {
                self.problems.push(format!(
                    "{what}: the documented schema does not compile: {e}"
                ));
                return;
            }
        };
        for error in validator.iter_errors(&body) {
            self.problems.push(format!(
                "{what}: {error} at {}; body: {text}",
                error.instance_path()
            ));
        }
    }

    fn finish(self) {
        let missed: Vec<_> = self
            .documented()
            .difference(&self.called)
            .cloned()
            .collect();
        assert!(
            missed.is_empty(),
            "documented operations the walk did not call: {missed:?}"
        );
        assert!(
            self.problems.is_empty(),
            "answers that do not match the document:\n{}",
            self.problems.join("\n")
        );
    }
}

fn fill(template: &str, params: &[&str]) -> String {
    let mut out = String::new();
    let mut rest = template;
    let mut values = params.iter();
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push_str(values.next().expect("a value for every path parameter"));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn s(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() {
    let app = TestApp::spawn_with(|s| s.security.allow_insecure_urls = true).await;
    let rx = TestReceiver::start().await;
    rx.subscriber(Subscriber::Echo);
    let mut w = Walk::new(&app).await;
    use Method as M;

    // Operations.
    w.admin(M::GET, "/healthz", &[], None).await;
    w.admin(M::GET, "/readyz", &[], None).await;
    w.admin(M::GET, "/metrics", &[], None).await;

    // Organizations and keys.
    let (st, org) = w
        .admin(M::POST, "/v1/orgs", &[], Some(json!({ "name": "Acme" })))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{org}");
    let org = s(&org, "id");
    let (st, _) = w
        .admin(M::POST, "/v1/orgs", &[], Some(json!({ "name": "" })))
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    w.call(M::GET, "/v1/orgs", &[], "not-a-token", None).await;
    w.admin(M::GET, "/v1/orgs", &[], None).await;
    w.admin(M::GET, "/v1/orgs/{org}", &[&org], None).await;
    let (st, _) = w
        .admin(
            M::GET,
            "/v1/orgs/{org}",
            &["org_01jd8x4m2c9v7t5r3q1p0n8k6h"],
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // A path that does not decode gets the JSON error every bad input gets.
    let (st, bad) = w.admin(M::GET, "/v1/orgs/{org}", &["%FF"], None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"]["code"], "invalid_path", "{bad}");
    w.admin(
        M::PATCH,
        "/v1/orgs/{org}",
        &[&org],
        Some(json!({ "name": "Acme Inc" })),
    )
    .await;
    let (st, key) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/api-keys",
            &[&org],
            Some(json!({ "name": "producer" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{key}");
    let (st, _) = w
        .call(
            M::POST,
            "/v1/orgs",
            &[],
            &s(&key, "key"),
            Some(json!({ "name": "Other" })),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    w.admin(M::GET, "/v1/orgs/{org}/api-keys", &[&org], None)
        .await;
    let (st, _) = w
        .admin(
            M::DELETE,
            "/v1/orgs/{org}/api-keys/{id}",
            &[&org, &s(&key, "id")],
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    // Event types.
    w.admin(M::GET, "/v1/event-types", &[], None).await;
    w.admin(M::GET, "/v1/orgs/{org}/event-types", &[&org], None)
        .await;
    let custom = json!({ "name": "invoice.paid", "channel": "billing",
        "schema": { "type": "object", "required": ["amount"] }, "example": { "amount": 3 } });
    let (st, _) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/event-types",
            &[&org],
            Some(custom.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = w
        .admin(M::POST, "/v1/orgs/{org}/event-types", &[&org], Some(custom))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let draft = json!({ "name": "invoice.draft" });
    let (st, _) = w
        .admin(M::POST, "/v1/orgs/{org}/event-types", &[&org], Some(draft))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let one = "/v1/orgs/{org}/event-types/{name}";
    for (name, expected) in [
        ("invoice.draft", StatusCode::NO_CONTENT),
        ("invoice.draft", StatusCode::NOT_FOUND),
        ("user.created", StatusCode::CONFLICT),
    ] {
        let (st, _) = w.admin(M::DELETE, one, &[&org, name], None).await;
        assert_eq!(st, expected, "{name}");
    }

    // Webhooks.
    let (st, hook) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/webhooks",
            &[&org],
            Some(json!({ "name": "sync", "url": rx.url("/hook"), "events": ["*"] })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{hook}");
    let hook = s(&hook, "id");
    let (st, _) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/webhooks",
            &[&org],
            Some(json!({ "name": "bad", "url": "ftp://example.com" })),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    w.admin(M::GET, "/v1/orgs/{org}/webhooks", &[&org], None)
        .await;
    w.admin(M::GET, "/v1/orgs/{org}/webhooks/{id}", &[&org, &hook], None)
        .await;
    w.admin(
        M::PATCH,
        "/v1/orgs/{org}/webhooks/{id}",
        &[&org, &hook],
        Some(json!({ "description": "the directory", "timeout_ms": 5000 })),
    )
    .await;

    // Events and deliveries.
    let (st, _) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/events",
            &[&org],
            Some(json!({ "type": "invoice.paid", "id": "inv-1", "data": { "amount": 3 } })),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (st, _) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/events",
            &[&org],
            Some(json!([{ "type": "invoice.paid", "data": {} }])),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    rx.wait_for("/hook", 1, Duration::from_secs(10)).await;
    let (_, list) = w
        .admin(
            M::GET,
            "/v1/orgs/{org}/webhooks/{id}/deliveries",
            &[&org, &hook],
            None,
        )
        .await;
    let delivery = s(&list["data"][0], "id");
    app.wait_for_delivery(&org, &delivery, |d| d["state"] == "succeeded")
        .await;
    w.admin(
        M::GET,
        "/v1/orgs/{org}/deliveries/{id}",
        &[&org, &delivery],
        None,
    )
    .await;
    let (st, traced) = w
        .admin(M::GET, "/v1/orgs/{org}/events/{id}", &[&org, "inv-1"], None)
        .await;
    assert_eq!(st, StatusCode::OK, "{traced}");
    assert_eq!(traced["deliveries"][0]["id"], delivery.as_str(), "{traced}");
    let (st, missing) = w
        .admin(
            M::GET,
            "/v1/orgs/{org}/events/{id}",
            &[&org, "inv-404"],
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Where it may have gone, and how to see what is kept.
    let message = missing["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("HERALD_RETENTION_DAYS") && message.contains("GET /v1/orgs/{org}/events"),
        "{missing}"
    );
    w.admin(
        M::POST,
        "/v1/orgs/{org}/deliveries/{id}/retry",
        &[&org, &delivery],
        None,
    )
    .await;
    w.admin(
        M::POST,
        "/v1/orgs/{org}/webhooks/{id}/recover",
        &[&org, &hook],
        Some(json!({ "since": "2020-01-01T00:00:00Z" })),
    )
    .await;
    w.admin(
        M::POST,
        "/v1/orgs/{org}/webhooks/{id}/test",
        &[&org, &hook],
        None,
    )
    .await;
    w.admin(
        M::POST,
        "/v1/orgs/{org}/webhooks/{id}/rotate-secret",
        &[&org, &hook],
        // The document allows `null` for its optional body.
        Some(json!(null)),
    )
    .await;
    w.admin(
        M::POST,
        "/v1/orgs/{org}/webhooks/{id}/deactivate",
        &[&org, &hook],
        None,
    )
    .await;
    w.admin(
        M::POST,
        "/v1/orgs/{org}/webhooks/{id}/activate",
        &[&org, &hook],
        None,
    )
    .await;

    // WebSub.
    let (st, hub_org) = w
        .admin(
            M::POST,
            "/v1/orgs",
            &[],
            Some(json!({ "name": "Hub", "catalogs": ["asgardeo"] })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let hub_org = s(&hub_org, "id");
    let (st, sub_hook) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/webhooks",
            &[&hub_org],
            Some(
                json!({ "name": "hub", "url": rx.url("/hub"), "profile": "asgardeo",
                "channels": ["login"], "secret": "asgardeo-secret-value" }),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{sub_hook}");
    let sub_hook = s(&sub_hook, "id");
    let (st, active) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/webhooks/{id}/activate",
            &[&hub_org, &sub_hook],
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{active}");
    assert_eq!(active["subscriptions"][0]["state"], "verified", "{active}");
    w.admin(
        M::GET,
        "/v1/orgs/{org}/webhooks/{id}/subscriptions",
        &[&hub_org, &sub_hook],
        None,
    )
    .await;
    let (st, _) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/webhooks/{id}/verify",
            &[&hub_org, &sub_hook],
            Some(json!({ "channel": "login" })),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    // A producer's key on every operation under its organization: each answer is documented,
    // 403 where it may not go (it may post events and read its organization and the types).
    let (st, producer) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/api-keys",
            &[&org],
            Some(json!({ "name": "feed", "role": "producer" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{producer}");
    let producer = s(&producer, "key");
    let mut refused = 0;
    for (method, template) in w.documented() {
        if !template.starts_with("/v1/orgs/{org}") {
            continue;
        }
        let item = if template.contains("{name}") {
            "invoice.paid"
        } else {
            hook.as_str()
        };
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = matches!(method, M::POST | M::PATCH).then(|| json!({}));
        let (st, _) = w
            .call(method, &template, &[&org, item], &producer, body)
            .await;
        refused += usize::from(st == StatusCode::FORBIDDEN);
    }
    assert!(refused >= 20, "{refused} operations refused the producer");

    // Clean-up operations.
    w.admin(
        M::POST,
        "/v1/orgs/{org}/purge",
        &[&org],
        Some(json!({ "before": "2020-01-01T00:00:00Z" })),
    )
    .await;
    let (_, spare) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/webhooks",
            &[&org],
            Some(json!({ "name": "spare", "url": rx.url("/spare") })),
        )
        .await;
    let (st, bulk) = w
        .admin(
            M::POST,
            "/v1/orgs/{org}/webhooks/bulk-delete",
            &[&org],
            Some(json!({ "ids": [s(&spare, "id"), "wh_nonsense"] })),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(bulk["not_found"], json!(["wh_nonsense"]));
    let (st, _) = w
        .admin(
            M::DELETE,
            "/v1/orgs/{org}/webhooks/{id}",
            &[&org, &hook],
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = w.admin(M::DELETE, "/v1/orgs/{org}", &[&org], None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    w.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_authentication_and_errors() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Descriptions are for the API's users: no Rust paths or doc links from the source.
    fn descriptions<'v>(v: &'v Value, found: &mut Vec<&'v str>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("description", Value::String(text)) => found.push(text),
                        _ => descriptions(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| descriptions(i, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    descriptions(&doc, &mut found);
    assert!(found.len() > 100, "{}", found.len());
    for text in found {
        assert!(
            !text.contains("[`") && !text.contains("::"),
            "a description reads like Rust: {text}"
        );
    }
    // A change's optional fields that `null` cannot clear are not said to take it, and
    // If-Match is a string when sent.
    let webhook_body = &doc["components"]["schemas"]["WebhookBody"]["properties"];
    for field in ["name", "url", "events", "channels", "secret", "active"] {
        assert!(
            webhook_body[field]["type"].is_string(),
            "{field}: {webhook_body}"
        );
    }
    assert_eq!(
        webhook_body["description"]["type"],
        json!(["string", "null"])
    );
    let patch = &doc["paths"]["/v1/orgs/{org}/webhooks/{id}"]["patch"];
    let if_match = patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "If-Match")
        .unwrap();
    assert_eq!(if_match["schema"]["type"], "string", "{if_match}");
    // Answers that ask to wait say how long, and the events' limits are the server's.
    for (path, method) in [("/v1/orgs", "get"), ("/v1/orgs/{org}/events", "post")] {
        for status in ["429", "503"] {
            let header = &doc["paths"][path][method]["responses"][status]["headers"];
            assert!(
                header["Retry-After"].is_object(),
                "{path} {status}: {header}"
            );
        }
    }
    let events = &doc["paths"]["/v1/orgs/{org}/events"]["post"]["responses"]["503"];
    assert!(
        s(events, "description").contains("may or may not have been stored"),
        "{events}"
    );
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["EventBatch"]["maxItems"], 1000);
    assert_eq!(schemas["EventInput"]["properties"]["id"]["maxLength"], 255);
    let create = &doc["paths"]["/v1/orgs/{org}/webhooks"]["post"];
    assert_eq!(create["security"][0]["bearer"], json!([]));
    assert_eq!(
        create["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    // A compressed body's refusal, and a producer key's, are documented where they can happen.
    assert!(create["responses"]["415"].is_object(), "{create}");
    assert!(create["responses"]["403"].is_object(), "{create}");
    let post_events = &doc["paths"]["/v1/orgs/{org}/events"]["post"];
    assert!(post_events["responses"]["403"].is_null(), "{post_events}");
    // A write without a body of its own still reads one, and may refuse it; and any operation
    // may fail on Herald's side.
    let test = &doc["paths"]["/v1/orgs/{org}/webhooks/{id}/test"]["post"];
    assert!(test["requestBody"].is_null(), "{test}");
    for status in ["408", "413", "415", "500"] {
        assert!(test["responses"][status].is_object(), "{status}: {test}");
    }
    assert!(doc["paths"]["/v1/orgs"]["get"]["responses"]["500"].is_object());
    assert_eq!(
        doc["components"]["schemas"]["RetriedWaiting"]["required"],
        json!(["retried", "probed"])
    );
    // A webhook's body says what the server accepts: the names it knows and the ranges it keeps,
    // so that a generated client catches a mistake before sending it.
    let webhook = &doc["components"]["schemas"]["WebhookBody"]["properties"];
    assert_eq!(
        webhook["profile"]["$ref"], "#/components/schemas/ProfileName",
        "{webhook}"
    );
    assert_eq!(webhook["timeout_ms"]["maximum"], 60000, "{webhook}");
    let schedule = &doc["components"]["schemas"]["RetrySchedule"];
    assert_eq!(schedule["maxItems"], 20, "{schedule}");
    assert_eq!(schedule["items"]["maximum"], 7 * 24 * 3600, "{schedule}");
    // Creation shares its body's schema with the change (PATCH), and adds what it requires.
    let body = &create["requestBody"]["content"]["application/json"]["schema"]["allOf"];
    assert!(
        body[0]["$ref"].as_str().unwrap().ends_with("/WebhookBody"),
        "{create}"
    );
    assert_eq!(body[1]["required"], json!(["name", "url"]), "{create}");
    let change = &doc["paths"]["/v1/orgs/{org}/webhooks/{id}"]["patch"];
    assert!(
        change["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap()
            .ends_with("/WebhookBody"),
        "{change}"
    );
    // The health routes need no token.
    assert!(doc["paths"]["/healthz"]["get"].get("security").is_none());
    // Every paged list's `limit` has the range the server enforces.
    let mut limits = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let params = item["get"]["parameters"].as_array().into_iter().flatten();
        for limit in params.filter(|p| p["name"] == "limit") {
            assert_eq!(limit["schema"]["minimum"], 1, "{path}: {limit}");
            assert_eq!(limit["schema"]["maximum"], 200, "{path}: {limit}");
            limits += 1;
        }
    }
    assert!(limits >= 3, "{limits} lists with a limit");
}

/// The checks above can fail: a body missing required fields does not validate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_the_document_is_caught() {
    let app = TestApp::spawn().await;
    let mut w = Walk::new(&app).await;
    w.check(
        "get",
        "/v1/orgs/{org}/webhooks/{id}",
        StatusCode::OK,
        "application/json",
        r#"{"id": "wh_01jd8x4m2c9v7t5r3q1p0n8k6h", "name": 3}"#,
    );
    w.check(
        "get",
        "/v1/orgs/{org}/webhooks/{id}",
        StatusCode::IM_A_TEAPOT,
        "application/json",
        "{}",
    );
    assert!(
        w.problems
            .iter()
            .any(|p| p.contains("\"name\"") || p.contains("/name")),
        "{:?}",
        w.problems
    );
    assert!(
        w.problems.iter().any(|p| p.contains("required")),
        "{:?}",
        w.problems
    );
    assert!(
        w.problems
            .iter()
            .any(|p| p.contains("status not documented")),
        "{:?}",
        w.problems
    );
}

/// An independent validator (openapi-spec-validator, installed by scripts/test) accepts the
/// served document as OpenAPI 3.1, and refuses it once broken (so the check can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_for_an_independent_validator() {
    let python = std::env::var("HERALD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("HERALD_TEST_PYTHON is not set: run the suite with ./scripts/test, which prepares openapi-spec-validator")
    });
    let app = TestApp::spawn().await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let validate = |doc: &Value, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, doc.to_string()).unwrap();
        let out = std::process::Command::new(&python)
            .args(["-m", "openapi_spec_validator"])
            .arg(&path)
            .output()
            .expect("python runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = validate(&doc, "served.json");
    assert!(ok, "{text}");
    let mut broken = doc.clone();
    broken["paths"]["/v1/orgs"]["get"]["responses"]["200"] = json!({ "content": 3 });
    let (ok, text) = validate(&broken, "broken.json");
    assert!(!ok, "a broken document must be refused: {text}");
}
