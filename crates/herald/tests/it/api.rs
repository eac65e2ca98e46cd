//! API stories: bad input gets a clear 4xx, tokens and tenants are enforced, resources behave.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN_TOKEN, TestApp};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_client_error() {
    let app = TestApp::spawn_with(|s| s.server.max_body_bytes = 4096).await;
    let org = app.create_org("Acme").await;
    let events = format!("{}/v1/orgs/{org}/events", app.base);

    let raw = |body: &'static str| {
        app.http
            .post(&events)
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
    };
    let resp = raw("{\"type\": ").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "invalid_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1")
    );

    let resp = raw("").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Half a surrogate pair in the data (a string cut inside an emoji), or in a field, is
    // named as such, at its place in the part read on its own (counted from the request's
    // start, the column pointed elsewhere).
    for (body, place) in [
        (
            r#"{"type":"user.created","data":{"user":{"id":"1","name":"x\udc00"}}}"#,
            "at line 1 column 33 of the data",
        ),
        (
            r#"{"type":"user.created","id":"e\ud800","data":{"user":{"id":"1"}}}"#,
            "at line 1 column 9 of its value",
        ),
    ] {
        let resp = raw(body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let answer: Value = resp.json().await.unwrap();
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{place} names half of a UTF-16 surrogate pair")),
            "{body}: {message}"
        );
    }

    // A handle or a name where an id belongs: the 404 says what an id looks like.
    for (path, expected) in [
        (
            "/v1/orgs/acme/webhooks".to_owned(),
            "not the handle: GET /v1/orgs lists both",
        ),
        (format!("/v1/orgs/{org}/webhooks/crm"), "wh_"),
    ] {
        let (status, answer) = app.get(&path).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::NOT_FOUND, "not_found")
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("is not an id") && message.contains(expected),
            "{path}: {message}"
        );
    }

    // An administrative body is an object: serde alone would take an array of its fields, in
    // order, and a string where an object belongs is named as such, not as a Rust type.
    for (body, says) in [
        (
            json!(["Array Org", "array-org", ["optare"]]),
            "must be a JSON object",
        ),
        (json!({ "name": ["Acme"] }), "not of this operation's shape"),
    ] {
        let (status, answer) = app.post("/v1/orgs", body).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(says) && !message.contains("Body"),
            "{message}"
        );
    }
    // An event body that is JSON, but not an event nor an array of them, is refused as any
    // route refuses a body of the wrong shape.
    for body in [json!(null), json!(42), json!("x")] {
        let (status, answer) = app.post(&format!("/v1/orgs/{org}/events"), body).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, "invalid_json"),
            "{answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("send an event")
        );
    }
    // An operation that takes no body refuses one that says something (a client that sends
    // `{}` to every POST is served).
    let hook = app
        .create_webhook(&org, "https://a.example/h", json!({}))
        .await;
    let deactivate = format!(
        "/v1/orgs/{org}/webhooks/{}/deactivate",
        hook["id"].as_str().unwrap()
    );
    for (body, expected) in [
        ("not json at all", StatusCode::BAD_REQUEST),
        (r#"{"force": true}"#, StatusCode::BAD_REQUEST),
        ("{}", StatusCode::OK),
        ("", StatusCode::OK),
    ] {
        let resp = app.send_raw(Method::POST, &deactivate, body).await;
        assert_eq!(resp.status(), expected, "{body}");
    }
    // So does a deletion: a body saying something (`{"confirm": false}`) deletes nothing.
    let doomed = app.create_org("Doomed").await;
    for (body, expected) in [
        ("not json at all", StatusCode::BAD_REQUEST),
        (r#"{"confirm": false}"#, StatusCode::BAD_REQUEST),
        ("{}", StatusCode::NO_CONTENT),
    ] {
        let path = format!("/v1/orgs/{doomed}");
        let resp = app.send_raw(Method::DELETE, &path, body).await;
        assert_eq!(resp.status(), expected, "{body}");
        let (status, _) = app.get(&format!("/v1/orgs/{doomed}")).await;
        let kept = expected != StatusCode::NO_CONTENT;
        assert_eq!(status == StatusCode::OK, kept, "{body}");
    }
    // UTF-16 with its byte-order mark is named as such where an object is expected.
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(r#"{"name":"X"}"#.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let resp = app.send_raw(Method::POST, "/v1/orgs", utf16).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let answer: Value = resp.json().await.unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-16"),
        "{answer}"
    );
    // A value of the wrong type is named in `field` too (400); a name that is not one of a
    // field's values is refused as a value out of range is (422), naming the field.
    for (path, body, field, status_wanted) in [
        (
            "/v1/orgs".to_owned(),
            json!({ "name": ["Acme"] }),
            "name",
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v1/orgs/{org}/api-keys"),
            json!({ "name": "k", "role": "admin" }),
            "role",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, answer) = app.post(&path, body).await;
        assert_eq!(status, status_wanted, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    // A required field left out, or null, is named as every route names a field it refuses.
    for (path, body) in [
        (format!("/v1/orgs/{org}/api-keys"), json!({})),
        (format!("/v1/orgs/{org}/api-keys"), json!({ "name": null })),
        (format!("/v1/orgs/{org}/event-types"), json!({})),
        (
            format!("/v1/orgs/{org}/webhooks"),
            json!({ "url": "https://example.com" }),
        ),
        ("/v1/orgs".to_owned(), json!({})),
    ] {
        let (status, answer) = app.post(&path, body.clone()).await;
        assert_eq!(
            (status, code(&answer), answer["error"]["field"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                Some("name")
            ),
            "{path} {body}: {answer}"
        );
        // Left out: said to be missing, not empty.
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            body.get("name").is_some() || message.contains("is required"),
            "{path} {body}: {answer}"
        );
    }

    let big = format!(
        "{{\"type\":\"user.created\",\"data\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(5000)
    );
    let resp = app
        .http
        .post(&events)
        .bearer_auth(ADMIN_TOKEN)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&resp.json().await.unwrap()), "payload_too_large");
    // A body declared larger than the limit is refused on its declaration, not after waiting
    // (up to the body's deadline, then 408) for bytes that would be refused anyway.
    let mut declared = start_slow_upload(
        &app,
        &format!("/v1/orgs/{org}/events"),
        ADMIN_TOKEN,
        1 << 20,
    )
    .await;
    let answer = read_until_closed(&mut declared).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");
    // A client waiting for `100 Continue` gets the refusal instead of an invitation to send.
    let mut waiting = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/orgs/{org}/events HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer \
         {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    waiting.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut waiting).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A compressed body is named as such, not "not JSON".
    let resp = app
        .http
        .post(&events)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(code(&resp.json().await.unwrap()), "unsupported_encoding");
    // An empty Content-Encoding names none: the body is read as it is.
    let resp = app
        .http
        .post(&events)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-encoding", "")
        .body("{\"type\":\"user.created\",\"data\":{\"user\":{\"id\":\"plain\"}}}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // A byte-order mark before the JSON is passed over.
    let resp = app
        .http
        .post(&events)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("\u{feff}{\"type\":\"user.created\",\"data\":{\"user\":{\"id\":\"bom\"}}}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    let cases = [
        (json!({ "data": {} }), "type"),
        (json!({ "type": "user.created" }), "data"),
        (json!({ "type": "user.created", "data": "x" }), "data"),
        (json!({ "type": "user created", "data": {} }), "type"),
        (
            json!({ "type": "user.created", "data": {}, "occurred_at": "tuesday" }),
            "occurred_at",
        ),
        (json!([]), ""),
        (
            json!([{ "type": "user.created", "data": { "user": { "id": "1" } } }, { "data": {} }]),
            "[1].type",
        ),
    ];
    for (body, field) in cases {
        let (status, err) = app
            .post(&format!("/v1/orgs/{org}/events"), body.clone())
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {err}");
        assert_eq!(
            err["error"]["field"].as_str().unwrap_or_default(),
            field,
            "{err}"
        );
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }

    let hooks = format!("/v1/orgs/{org}/webhooks");
    for (body, field) in [
        (json!({ "url": "https://example.com" }), "name"),
        (json!({ "name": "x" }), "url"),
        (json!({ "name": "x", "url": "not a url" }), "url"),
        (json!({ "name": "x", "url": "ftp://example.com" }), "url"),
        (
            json!({ "name": "x", "url": "https://example.com", "events": ["user.exploded"] }),
            "events[0]",
        ),
        (
            json!({ "name": "x", "url": "https://example.com", "channels": ["nope"] }),
            "channels[0]",
        ),
        (
            json!({ "name": "x", "url": "https://example.com", "timeout_ms": 5 }),
            "timeout_ms",
        ),
        (
            json!({ "name": "x", "url": "https://example.com", "retry_schedule": [] }),
            "retry_schedule",
        ),
        (
            json!({ "name": "x", "url": "https://example.com", "secret": "hunter2" }),
            "secret",
        ),
        (
            json!({ "name": "x", "url": "https://example.com", "profile": "soap" }),
            "profile",
        ),
        (
            json!({ "name": "x", "url": "https://example.com", "headers": { "Host": "evil" } }),
            "headers.Host",
        ),
    ] {
        let (status, err) = app.post(&hooks, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    let (status, err) = app
        .post(
            &hooks,
            json!({ "name": "x", "url": "https://example.com", "evnts": ["*"] }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an unknown field is named: {err}"
    );
    assert!(err["error"]["message"].as_str().unwrap().contains("evnts"));

    // A misspelt name is answered with the one most likely meant.
    for (path, body, meant) in [
        (
            format!("/v1/orgs/{org}/events"),
            json!({ "type": "user.creatd", "data": {} }),
            "did you mean 'user.created'?",
        ),
        (
            hooks.clone(),
            json!({ "name": "x", "url": "https://example.com", "events": ["User_Deleted"] }),
            "did you mean 'user.deleted'?",
        ),
        (
            hooks.clone(),
            json!({ "name": "x", "url": "https://example.com", "events": ["webhook.disabld"] }),
            "did you mean 'webhook.disabled'?",
        ),
        (
            hooks.clone(),
            json!({ "name": "x", "url": "https://example.com", "channels": ["sesion"] }),
            "did you mean 'session'?",
        ),
    ] {
        let (status, err) = app.post(&path, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(meant), "{body} → {message}");
    }
    let (_, err) = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!({ "type": "invoice.paid", "data": {} }),
        )
        .await;
    assert!(
        !err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean"),
        "nothing close, nothing suggested: {err}"
    );

    // Out of range, whatever the number: the range is what the answer says.
    for limit in ["100000", "0", "-1", "4294967297", "99999999999999999999"] {
        let (status, err) = app.get(&format!("{hooks}?limit={limit}")).await;
        assert_eq!(
            (status, code(&err)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            "{limit}: {err}"
        );
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("between 1 and 200"), "{limit}: {message}");
    }
    let (status, err) = app.get(&format!("{hooks}?colour=blue")).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    assert!(
        err["error"]["message"].as_str().unwrap().contains("colour"),
        "{err}"
    );
    let (status, err) = app.get(&format!("{hooks}?limit=abc")).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("`limit`"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_other_organizations_are_invisible() {
    let app = TestApp::spawn().await;
    let acme = app.create_org("Acme").await;
    let globex = app.create_org("Globex").await;
    let acme_hook = app
        .create_webhook(&acme, "https://acme.example/h", json!({}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, err) = app.call(Method::GET, "/v1/orgs", "", None).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    // Answers, errors and the OpenAPI document alike, end with a newline (for curl's prompt).
    let http = crate::helpers::http_client();
    for (path, token) in [
        ("/v1/orgs", crate::helpers::ADMIN_TOKEN),
        ("/v1/orgs", "wrong-token"),
        ("/openapi.json", ""),
        ("/healthz", ""),
    ] {
        let text = http
            .get(format!("{}{path}", app.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.ends_with("}\n"), "{path}: {text}");
    }
    let (status, _) = app.call(Method::GET, "/v1/orgs", "wrong-token", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.call(Method::GET, "/v1/orgs", "hk_0000", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, key) = app
        .post(
            &format!("/v1/orgs/{globex}/api-keys"),
            json!({ "name": "ci" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let globex_key = key["key"].as_str().unwrap().to_owned();
    assert!(globex_key.starts_with("hk_"));
    assert_eq!(key["role"], "manager", "{key}");
    // `null`, as a generated client sends a field it was not given, is the default too.
    let (status, generated) = app
        .post(
            &format!("/v1/orgs/{globex}/api-keys"),
            json!({ "name": "generated", "role": null }),
        )
        .await;
    assert_eq!(
        (status, &generated["role"]),
        (StatusCode::CREATED, &json!("manager")),
        "{generated}"
    );
    // A role that is not one is refused as a profile that is not one is: 422, with the two.
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{globex}/api-keys"),
            json!({ "name": "boss", "role": "admin" }),
        )
        .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
        "{err}"
    );
    assert_eq!(err["error"]["field"], "role", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("choose manager"),
        "{err}"
    );

    // A producer's key posts events and reads event types; everything else is refused.
    let (status, producer) = app
        .post(
            &format!("/v1/orgs/{acme}/api-keys"),
            json!({ "name": "idp", "role": "producer" }),
        )
        .await;
    assert_eq!(
        (status, &producer["role"]),
        (StatusCode::CREATED, &json!("producer"))
    );
    let producer = producer["key"].as_str().unwrap().to_owned();
    let event = json!({ "type": "user.created", "data": { "user": { "id": "u1" } } });
    // An event of Acme's that exists, for the reads below.
    app.send_event(
        &acme,
        json!({ "type": "user.created", "id": "acme-evt", "data": { "user": { "id": "u0" } } }),
    )
    .await;
    let acme_event = format!("/v1/orgs/{acme}/events/acme-evt");
    let (status, traced) = app.get(&acme_event).await;
    assert_eq!(status, StatusCode::OK, "{traced}");
    assert_eq!(traced["truncated"], false, "{traced}");
    let may = [
        (
            Method::POST,
            format!("/v1/orgs/{acme}/events"),
            Some(event),
            StatusCode::ACCEPTED,
        ),
        (
            Method::GET,
            format!("/v1/orgs/{acme}/event-types"),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/v1/event-types".to_owned(),
            None,
            StatusCode::OK,
        ),
        (Method::GET, "/v1/orgs".to_owned(), None, StatusCode::OK),
        (
            Method::GET,
            format!("/v1/orgs/{acme}"),
            None,
            StatusCode::OK,
        ),
        (
            Method::HEAD,
            format!("/v1/orgs/{acme}/event-types"),
            None,
            StatusCode::OK,
        ),
    ];
    for (method, path, body, expected) in may {
        let (status, answer) = app.call(method.clone(), &path, &producer, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
    }
    for (method, path, body) in [
        (Method::GET, format!("/v1/orgs/{acme}/webhooks"), None),
        (
            Method::PATCH,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}"),
            Some(json!({ "url": "https://evil.example/h" })),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/api-keys"),
            Some(json!({ "name": "more" })),
        ),
        (
            Method::GET,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}/deliveries"),
            None,
        ),
        (Method::GET, acme_event.clone(), None),
        (Method::GET, format!("/v1/orgs/{acme}/events"), None),
        (
            Method::PATCH,
            format!("/v1/orgs/{acme}"),
            Some(json!({ "name": "Mine" })),
        ),
    ] {
        let (status, err) = app.call(method.clone(), &path, &producer, body).await;
        assert_eq!(
            (status, code(&err)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {path}: {err}"
        );
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("producer"),
            "{err}"
        );
    }
    // Another organization's, or one that does not exist, is not found rather than forbidden,
    // as for every other key: the answer tells nothing of what exists.
    for path in [
        format!("/v1/orgs/{globex}/webhooks"),
        format!("/v1/orgs/{globex}/api-keys"),
        "/v1/orgs/org_01zzzzzzzzzzzzzzzzzzzzzzzz/webhooks".to_owned(),
    ] {
        let (status, err) = app.call(Method::GET, &path, &producer, None).await;
        assert_eq!(
            (status, code(&err)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{path}: {err}"
        );
    }
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{acme}/api-keys"),
            json!({ "name": "x", "role": "owner" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");

    // Globex's key works on Globex…
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/v1/orgs/{globex}/webhooks"),
            &globex_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, orgs) = app.call(Method::GET, "/v1/orgs", &globex_key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        orgs["data"].as_array().unwrap().len(),
        1,
        "a key lists only its own organization"
    );
    // …and sees nothing of Acme: 404 everywhere, never 403.
    let delivery = "dlv_01aaaaaaaaaaaaaaaaaaaaaaaa";
    for (method, path, body) in [
        (Method::GET, format!("/v1/orgs/{acme}"), None),
        (Method::GET, format!("/v1/orgs/{acme}/events"), None),
        (
            Method::PATCH,
            format!("/v1/orgs/{acme}"),
            Some(json!({ "name": "pwned" })),
        ),
        (Method::GET, format!("/v1/orgs/{acme}/webhooks"), None),
        (
            Method::GET,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}"),
            Some(json!({ "name": "pwned" })),
        ),
        (
            Method::DELETE,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}/deactivate"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}/rotate-secret"),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}/deliveries"),
            None,
        ),
        (Method::GET, acme_event.clone(), None),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/events"),
            Some(json!({ "type": "user.created", "data": {} })),
        ),
        (Method::GET, format!("/v1/orgs/{acme}/api-keys"), None),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/api-keys"),
            Some(json!({ "name": "x" })),
        ),
        (Method::GET, format!("/v1/orgs/{acme}/event-types"), None),
        (
            Method::GET,
            format!("/v1/orgs/{acme}/deliveries/{delivery}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/deliveries/{delivery}/retry"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}/activate"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}/test"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}/recover"),
            Some(json!({ "since": "2020-01-01T00:00:00Z" })),
        ),
        (
            Method::GET,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}/subscriptions"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/webhooks/{acme_hook}/verify"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/webhooks/bulk-delete"),
            Some(json!({ "ids": [acme_hook.clone()] })),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/event-types"),
            Some(json!({ "name": "x.y" })),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{acme}/purge"),
            Some(json!({ "before": "2030-01-01T00:00:00Z" })),
        ),
        (
            Method::DELETE,
            format!("/v1/orgs/{acme}/api-keys/key_01aaaaaaaaaaaaaaaaaaaaaaaa"),
            None,
        ),
        // Acme's webhook id under Globex's own path is not found either.
        (
            Method::GET,
            format!("/v1/orgs/{globex}/webhooks/{acme_hook}"),
            None,
        ),
    ] {
        let (status, err) = app.call(method.clone(), &path, &globex_key, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path} → {err}");
    }
    let (status, hook) = app
        .get(&format!("/v1/orgs/{acme}/webhooks/{acme_hook}"))
        .await;
    assert_eq!(
        (status, hook["name"].as_str().unwrap()),
        (StatusCode::OK, "test hook")
    );

    // Admin-only operations are forbidden to keys.
    let (status, err) = app
        .call(
            Method::POST,
            "/v1/orgs",
            &globex_key,
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!((status, code(&err)), (StatusCode::FORBIDDEN, "forbidden"));
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/orgs/{globex}"),
            &globex_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A key changes its organization's name, not its handle: handles name organizations
    // across the server, and one a tenant took could be the one the operator means for another.
    let globex_path = format!("/v1/orgs/{globex}");
    let (status, err) = app
        .call(
            Method::PATCH,
            &globex_path,
            &globex_key,
            Some(json!({ "name": "Globex Two", "handle": "acme-next" })),
        )
        .await;
    assert_eq!((status, code(&err)), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(
        err["error"]["message"].as_str().unwrap().contains("handle"),
        "{err}"
    );
    let (_, unchanged) = app.get(&globex_path).await;
    assert_eq!(unchanged["name"], "Globex", "nothing of it is stored");
    let handle = unchanged["handle"].clone();
    let (status, changed) = app
        .call(
            Method::PATCH,
            &globex_path,
            &globex_key,
            Some(json!({ "name": "Globex Two", "handle": handle })),
        )
        .await;
    assert_eq!(
        (status, &changed["name"]),
        (StatusCode::OK, &json!("Globex Two")),
        "the handle as it is: {changed}"
    );
    // Another organization's is not found, as its every other route is.
    let (status, err) = app
        .call(
            Method::DELETE,
            &format!("/v1/orgs/{acme}"),
            &globex_key,
            None,
        )
        .await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));

    // A deleted key stops working at once.
    let key_id = key["id"].as_str().unwrap();
    let (status, _) = app
        .delete(&format!("/v1/orgs/{globex}/api-keys/{key_id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/v1/orgs/{globex}/webhooks"),
            &globex_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// An organization's events are listed newest first, a page at a time, of one type if asked,
/// without their data; the CLI lists them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organizations_events_are_listed_newest_first() {
    let app = TestApp::spawn().await;
    let acme = app.create_org("Acme").await;
    let globex = app.create_org("Globex").await;
    for (id, kind) in [
        ("e1", "user.created"),
        ("e2", "user.deleted"),
        ("e3", "user.created"),
    ] {
        app.send_event(
            &acme,
            json!({ "type": kind, "id": id, "data": { "user": { "id": id } } }),
        )
        .await;
    }
    app.send_event(
        &globex,
        json!({ "type": "user.created", "id": "g1", "data": { "user": { "id": "g1" } } }),
    )
    .await;
    let ids = |page: &Value| -> Vec<String> {
        let items = page["data"].as_array().unwrap();
        items
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = format!("/v1/orgs/{acme}/events");
    let (status, first) = app.get(&format!("{list}?limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(ids(&first), ["e3", "e2"], "{first}");
    let one = &first["data"][1];
    assert_eq!(one["type"], "user.deleted", "{first}");
    assert!(
        one.get("data").is_none() && one["received_at"].is_string(),
        "{one}"
    );
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, rest) = app.get(&format!("{list}?limit=2&cursor={cursor}")).await;
    assert_eq!(
        (ids(&rest), &rest["next_cursor"]),
        (vec!["e1".into()], &Value::Null)
    );
    let (_, created) = app.get(&format!("{list}?type=user.created")).await;
    assert_eq!(ids(&created), ["e3", "e1"]);
    let (_, theirs) = app.get(&format!("/v1/orgs/{globex}/events")).await;
    assert_eq!(ids(&theirs), ["g1"]);

    // A misspelt type is named, with what it may have meant; a known type none has is empty.
    let (status, err) = app.get(&format!("{list}?type=user.creatd")).await;
    let said = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        status == StatusCode::UNPROCESSABLE_ENTITY && said.contains("did you mean 'user.created'?"),
        "{err}"
    );
    let (status, none) = app.get(&format!("{list}?type=session.revoked")).await;
    assert_eq!((status, ids(&none)), (StatusCode::OK, vec![]), "{none}");
    // Received since a time: all of them since an hour ago, none since tomorrow.
    let (_, recent) = app.get(&format!("{list}?since=2000-01-01T00:00:00Z")).await;
    assert_eq!(ids(&recent), ["e3", "e2", "e1"], "{recent}");
    let (status, none) = app.get(&format!("{list}?since=2999-01-01T00:00:00Z")).await;
    assert_eq!((status, ids(&none)), (StatusCode::OK, vec![]), "{none}");
    for bad in [
        "cursor=e3",
        "limit=0",
        "limit=201",
        "typo=1",
        "since=yesterday",
    ] {
        let (status, err) = app.get(&format!("{list}?{bad}")).await;
        assert!(status.is_client_error(), "{bad}: {status} {err}");
    }
    // An offset's `+` left unencoded arrives as a space, and the answer says so.
    let (status, err) = app
        .get(&format!("{list}?since=2026-01-01T00:00:00+01:00"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("%2B"),
        "{err}"
    );
    let (status, _) = app
        .get("/v1/orgs/org_01zzzzzzzzzzzzzzzzzzzzzzzz/events")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The CLI: a table, newest first, then how to ask for more.
    let (ok, out) = herald_cli(
        &app,
        &["events", "list", "--org", "acme", "--limit", "2"],
        None,
    )
    .await;
    let listed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with('e'))
        .collect();
    assert!(
        ok && listed == ["e3", "e2"] && out.contains("More: add --cursor"),
        "{out}"
    );
    let (ok, out) = herald_cli(
        &app,
        &[
            "events",
            "list",
            "--org",
            "acme",
            "--type",
            "user.deleted",
            "--json",
        ],
        None,
    )
    .await;
    let page: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert!(ok && ids(&page) == ["e2"], "{out}");
    let (ok, out) = herald_cli(
        &app,
        &["events", "list", "--org", "acme", "--since", "1h", "--json"],
        None,
    )
    .await;
    let page: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert!(ok && ids(&page) == ["e3", "e2", "e1"], "{out}");
    // The next page keeps the time `1h` stood for, not an hour before it is asked for.
    let (ok, out) = herald_cli(
        &app,
        &[
            "events", "list", "--org", "acme", "--since", "1h", "--limit", "1",
        ],
        None,
    )
    .await;
    let more = out
        .lines()
        .find(|l| l.starts_with("More: add --cursor"))
        .unwrap_or_default();
    assert!(
        ok && more.contains(" --since 20") && more.ends_with('Z'),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizations_can_be_created_changed_and_deleted() {
    let app = TestApp::spawn().await;
    let (status, org) = app.post("/v1/orgs", json!({ "name": "Acme Inc." })).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(org["handle"], "acme-inc");
    assert_eq!(org["catalogs"], json!(["optare"]));
    let id = org["id"].as_str().unwrap();
    assert!(id.starts_with("org_"));

    let (status, err) = app
        .post(
            "/v1/orgs",
            json!({ "name": "Acme Again", "handle": "acme-inc" }),
        )
        .await;
    assert_eq!((status, code(&err)), (StatusCode::CONFLICT, "conflict"));
    // A handle derived from the name is numbered when taken; names in other scripts all
    // derive `org`.
    for (name, handle) in [
        ("Acme Inc", "acme-inc-2"),
        ("日本", "org"),
        ("日本", "org-2"),
    ] {
        let (status, org) = app.post("/v1/orgs", json!({ "name": name })).await;
        assert_eq!(status, StatusCode::CREATED, "{org}");
        assert_eq!(org["handle"], handle);
    }
    let (status, err) = app
        .post("/v1/orgs", json!({ "name": "X", "catalogs": ["nope"] }))
        .await;
    assert_eq!(
        (status, err["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("catalogs"))
    );

    let (status, changed) = app
        .patch(&format!("/v1/orgs/{id}"), json!({ "name": "Acme Corp" }))
        .await;
    assert_eq!(
        (status, changed["name"].clone()),
        (StatusCode::OK, json!("Acme Corp"))
    );
    let (_, fetched) = app.get(&format!("/v1/orgs/{id}")).await;
    assert_eq!(fetched["name"], "Acme Corp");
    // A catalog whose types or channels webhooks name stays until they no longer do.
    let hook = app
        .create_webhook(
            id,
            "https://example.com/h",
            json!({ "events": ["user.created"], "channels": ["session"] }),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();
    let (status, err) = app
        .patch(&format!("/v1/orgs/{id}"), json!({ "catalogs": ["permit"] }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "'{}' ({hook_id}: 'user.created', channel 'session')",
            hook["name"].as_str().unwrap()
        )),
        "{message}"
    );
    let (_, kept) = app.get(&format!("/v1/orgs/{id}")).await;
    assert_eq!(kept["catalogs"], json!(["optare"]));
    let (status, _) = app
        .patch(
            &format!("/v1/orgs/{id}/webhooks/{hook_id}"),
            json!({ "events": ["*"], "channels": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, changed) = app
        .patch(
            &format!("/v1/orgs/{id}"),
            json!({ "catalogs": ["permit", "optare"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    // A subscription an earlier version left naming nothing does not stop other changes.
    app.create_webhook(
        id,
        "https://example.com/old",
        json!({ "events": ["user.deleted"] }),
    )
    .await;
    let org_id = herald_core::OrgId::parse(id).unwrap();
    let mut stored = app.state.store.get_org(&org_id).await.unwrap();
    stored.catalogs = vec![herald_core::catalog::CatalogName::parse("permit").unwrap()];
    app.state.store.update_org(&stored).await.unwrap();
    app.state.directory.invalidate(&org_id);
    let (status, changed) = app
        .patch(
            &format!("/v1/orgs/{id}"),
            json!({ "name": "Acme Inc.", "catalogs": ["permit"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let (status, changed) = app
        .patch(
            &format!("/v1/orgs/{id}"),
            json!({ "catalogs": ["permit", "optare"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    // Nothing of an organization can be cleared: `null` is refused, not ignored.
    for field in ["name", "handle", "catalogs"] {
        let (status, err) = app
            .patch(&format!("/v1/orgs/{id}"), json!({ field: null }))
            .await;
        assert_eq!(
            (status, err["error"]["field"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!(field)),
            "{err}"
        );
    }

    let (status, catalogs) = app.get("/v1/event-types").await;
    assert_eq!(status, StatusCode::OK);
    let optare = &catalogs["catalogs"][0];
    assert_eq!(optare["catalog"], "optare");
    assert_eq!(optare["types"].as_array().unwrap().len(), 25);
    let (_, types) = app.get(&format!("/v1/orgs/{id}/event-types")).await;
    assert!(
        types["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "member.role.changed" && t["channel"] == "member")
    );
    // A catalog's event URIs (Asgardeo's) are listed for the organization as for the catalog.
    let (status, changed) = app
        .patch(
            &format!("/v1/orgs/{id}"),
            json!({ "catalogs": ["optare", "asgardeo"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let asgardeo = catalogs["catalogs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["catalog"] == "asgardeo")
        .unwrap();
    let (_, types) = app.get(&format!("/v1/orgs/{id}/event-types")).await;
    for listed in asgardeo["types"].as_array().unwrap() {
        let uri = listed["uri"].as_str().unwrap();
        let ours = types["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == listed["name"]);
        assert_eq!(ours.unwrap()["uri"], uri, "{types}");
    }

    let (status, _) = app.delete(&format!("/v1/orgs/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, err) = app.get(&format!("/v1/orgs/{id}")).await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_can_be_changed_listed_and_bulk_deleted() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let a = app
        .create_webhook(
            &org,
            "https://a.example/h",
            json!({ "description": "first", "headers": { "X-Team": "iam" } }),
        )
        .await;
    let b = app
        .create_webhook(
            &org,
            "https://b.example/h",
            json!({ "events": ["user.created", "session.revoked"] }),
        )
        .await;
    let c = app
        .create_webhook(&org, "https://c.example/h", json!({}))
        .await;
    assert!(a["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(a["events"], json!(["*"]));
    assert_eq!(a["headers"], json!({ "x-team": "iam" }));
    let a_id = a["id"].as_str().unwrap();

    let (status, changed) = app
        .patch(&format!("/v1/orgs/{org}/webhooks/{a_id}"), json!({ "description": null, "timeout_ms": 2500, "channels": ["session"], "events": [] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["description"], Value::Null);
    assert_eq!(changed["timeout_ms"], 2500);
    assert_eq!(changed["channels"], json!(["session"]));
    assert!(changed.get("secret").is_none());
    // Emptying what is left would widen it to every event: refused, and nothing changes.
    let (status, err) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{a_id}"),
            json!({ "channels": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "channels", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("would get every event"),
        "{err}"
    );
    let (_, kept) = app.get(&format!("/v1/orgs/{org}/webhooks/{a_id}")).await;
    assert_eq!(
        (&kept["events"], &kept["channels"]),
        (&json!([]), &json!(["session"]))
    );
    // So is creating one with an empty list ("none yet"): only both left out means every
    // event. Nothing is created.
    let hooks = format!("/v1/orgs/{org}/webhooks");
    let (_, before) = app.get(&hooks).await;
    for (sent, field) in [
        (json!({ "events": [] }), "events"),
        (json!({ "channels": [] }), "channels"),
        (json!({ "events": [], "channels": [] }), "events"),
        (json!({ "events": null, "channels": [] }), "channels"),
    ] {
        let mut body = json!({ "name": "none-yet", "url": "https://example.com/none" });
        body.as_object_mut()
            .unwrap()
            .extend(sent.as_object().unwrap().clone());
        let (status, err) = app.post(&hooks, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{sent}: {err}");
        assert_eq!(err["error"]["field"], field, "{sent}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("would get every event"),
            "{err}"
        );
    }
    let (_, after) = app.get(&hooks).await;
    assert_eq!(before["data"], after["data"]);
    // An empty list beside names is no widening.
    let (status, made) = app
        .post(
            &hooks,
            json!({ "name": "channels-only", "url": "https://example.com/c", "events": [], "channels": ["session"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["channels"], json!(["session"]));
    // Gone again, for the lists below.
    let made = format!("{hooks}/{}", made["id"].as_str().unwrap());
    assert_eq!(app.delete(&made).await.0, StatusCode::NO_CONTENT);

    // `null` clears headers; it is refused for a field with nothing to clear to.
    let (status, cleared) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{a_id}"),
            json!({ "headers": null }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["headers"], json!({}));
    for field in ["name", "url", "events", "active", "secret"] {
        let (status, err) = app
            .patch(
                &format!("/v1/orgs/{org}/webhooks/{a_id}"),
                json!({ field: null }),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    let (status, err) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{a_id}"),
            json!({ "description": "a\u{0}b" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "description");
    let (status, err) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{a_id}"),
            json!({ "headers": { "X-Team": "a", "x-team": "b" } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    // The same name twice is refused too, not kept with its last value.
    let resp = app
        .http
        .patch(format!("{}/v1/orgs/{org}/webhooks/{a_id}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"headers": {"X-Team": "a", "X-Team": "b"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("'X-Team' is given twice"), "{message}");
    let (status, err) = app
        .get(&format!(
            "/v1/orgs/{org}/webhooks/{a_id}/deliveries?event_type=%00"
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "event_type");
    // A misspelt type finds nothing: said, with the likely one, instead of an empty list.
    let (status, err) = app
        .get(&format!(
            "/v1/orgs/{org}/webhooks/{a_id}/deliveries?event_type=user.creatd"
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean 'user.created'?"),
        "{err}"
    );
    let (status, none) = app
        .get(&format!(
            "/v1/orgs/{org}/webhooks/{a_id}/deliveries?event_type=user.deleted"
        ))
        .await;
    assert_eq!((status, &none["data"]), (StatusCode::OK, &json!([])));
    // With a state as well, an empty list may only mean none is in that state.
    let (status, none) = app
        .get(&format!(
            "/v1/orgs/{org}/webhooks/{a_id}/deliveries?event_type=user.creatd&state=failed"
        ))
        .await;
    assert_eq!((status, &none["data"]), (StatusCode::OK, &json!([])));
    // On creation `null` is the same as leaving the field out.
    let (status, created) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks"),
            json!({ "name": "nulls", "url": "https://n.example/h", "events": null, "secret": null, "active": null, "headers": null, "options": null }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["events"], json!(["*"]));
    let (status, _) = app
        .delete(&format!(
            "/v1/orgs/{org}/webhooks/{}",
            created["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (_, page) = app.get(&format!("/v1/orgs/{org}/webhooks?limit=2")).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"][0]["id"], c["id"], "newest first");
    assert!(page["next_cursor"].is_string());
    let next = page["next_cursor"].as_str().unwrap();
    let (status, rest) = app
        .get(&format!("/v1/orgs/{org}/webhooks?limit=2&cursor={next}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert!(!rest["data"].as_array().unwrap().is_empty(), "{rest}");
    // Ids are case-insensitive, cursors too: the same page, not an empty one.
    let shouted = format!("wh_{}", next["wh_".len()..].to_uppercase());
    let (_, same) = app
        .get(&format!("/v1/orgs/{org}/webhooks?limit=2&cursor={shouted}"))
        .await;
    assert_eq!(same["data"], rest["data"], "{same}");
    // Anything but a cursor of the list's kind is refused, not answered with an
    // empty or a first page.
    for path in [
        format!("/v1/orgs/{org}/webhooks?cursor=zzz"),
        format!("/v1/orgs?cursor={next}"),
        format!("/v1/orgs/{org}/webhooks/{next}/deliveries?cursor={org}"),
    ] {
        let (status, err) = app.get(&path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {err}");
        assert_eq!(err["error"]["field"], "cursor", "{path}: {err}");
    }

    // Each id counts once; what was not found is listed in the order sent.
    let missing = "wh_01bbbbbbbbbbbbbbbbbbbbbbbb";
    let ids = json!({ "ids": [a["id"], "junk", b["id"], missing, "junk", a["id"]] });
    let (status, answer) = app
        .post(&format!("/v1/orgs/{org}/webhooks/bulk-delete"), ids)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["deleted"].as_array().unwrap().len(), 2);
    assert_eq!(answer["not_found"], json!(["junk", missing]), "{answer}");
    let (_, left) = app.get(&format!("/v1/orgs/{org}/webhooks")).await;
    assert_eq!(left["data"].as_array().unwrap().len(), 1);

    // The cap counts every id, so that malformed ones cannot make an answer of any size.
    let junk: Vec<String> = (0..1001).map(|i| format!("x{i}")).collect();
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks/bulk-delete"),
            json!({ "ids": junk }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "ids", "{err}");
}

/// A PATCH with the `ETag` it read and a status; the answer's `ETag` and body.
async fn patch_if_match(
    app: &TestApp,
    path: &str,
    if_match: Option<&str>,
    body: Value,
) -> (StatusCode, Option<String>, Value) {
    let mut req = app
        .http
        .patch(format!("{}{path}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body);
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, etag, resp.json().await.unwrap())
}

/// An answer that shows a secret once is kept by no cache on the way; nor is any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_are_kept_by_no_cache() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    for (path, body) in [
        (
            format!("/v1/orgs/{org}/webhooks"),
            json!({ "name": "h", "url": "https://a.example/h" }),
        ),
        (format!("/v1/orgs/{org}/api-keys"), json!({ "name": "k" })),
    ] {
        let resp = app
            .http
            .post(format!("{}{path}", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
    }
    let resp = app
        .http
        .get(format!("{}/v1/orgs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_on_an_old_version_is_refused_with_if_match() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let w = app
        .create_webhook(&org, "https://a.example/h", json!({}))
        .await;
    let path = format!("/v1/orgs/{org}/webhooks/{}", w["id"].as_str().unwrap());
    let first = etag_now(&app, &path).await;
    assert!(first.starts_with('"') && first.ends_with('"'), "{first}");

    // Made on the version read: saved, with the new version's tag.
    let (status, second, changed) =
        patch_if_match(&app, &path, Some(&first), json!({ "name": "one" })).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let second = second.expect("a change answers with its ETag");
    assert_ne!(second, first);

    // Made on the first version, after another change: refused, and nothing of it saved.
    let (status, _, err) = patch_if_match(
        &app,
        &path,
        Some(&first),
        json!({ "name": "two", "timeout_ms": 1000 }),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{err}");
    assert_eq!(code(&err), "changed");
    assert!(
        err["error"]["message"].as_str().unwrap().contains(&second),
        "names the current tag: {err}"
    );
    let (_, now) = app.get(&path).await;
    assert_eq!(
        (now["name"].as_str(), now["timeout_ms"].as_u64()),
        (Some("one"), None)
    );

    // Weakened by a proxy, `*`, or no condition at all: saved.
    let (status, third, _) = patch_if_match(
        &app,
        &path,
        Some(&format!("W/{second}")),
        json!({ "name": "two" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = patch_if_match(&app, &path, Some("*"), json!({ "name": "three" })).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = patch_if_match(&app, &path, None, json!({ "name": "four" })).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(third, Some(second));

    // A change that changes nothing (`{}`, or fields sent as they are, as a reconciling client
    // sends them) stores nothing: the version stays, and a change made on it still holds.
    let current = etag_now(&app, &path).await;
    let (_, before) = app.get(&path).await;
    for same in [json!({}), json!({ "name": "four", "active": true })] {
        let (status, tag, answered) =
            patch_if_match(&app, &path, Some(&current), same.clone()).await;
        assert_eq!(status, StatusCode::OK, "{same}: {answered}");
        assert_eq!(tag.as_deref(), Some(current.as_str()), "{same}");
        assert_eq!(answered["updated_at"], before["updated_at"], "{same}");
    }
    let (status, _, _) =
        patch_if_match(&app, &path, Some(&current), json!({ "name": "five" })).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = patch_if_match(&app, &path, None, json!({ "name": "four" })).await;
    assert_eq!(status, StatusCode::OK);

    // A tag that is not one, or not as Herald writes them: a 400 that says what to send.
    let number = third.as_deref().unwrap().trim_matches('"');
    for tag in [
        "yesterday".to_owned(),
        format!("W/W/\"{number}\""),
        format!("\"+{number}\""),
        "\"-1\"".to_owned(),
        "\"99999999999999999999\"".to_owned(),
        "\"\"".to_owned(),
    ] {
        let (status, _, err) =
            patch_if_match(&app, &path, Some(&tag), json!({ "name": "five" })).await;
        assert_eq!(
            (status, code(&err)),
            (StatusCode::BAD_REQUEST, "invalid_header"),
            "{tag}: {err}"
        );
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("or * for any version"), "{message}");
    }
    let (_, now) = app.get(&path).await;
    assert_eq!(now["name"], "four");

    // The other changes of a webhook (enable, disable, rotate) answer their ETag and take
    // If-Match as PATCH does.
    let post = |action: &'static str, tag: Option<String>| {
        let mut req = app
            .http
            .post(format!("{}{path}/{action}", app.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(tag) = tag {
            req = req.header("if-match", tag);
        }
        async move {
            let resp = req.send().await.unwrap();
            let etag = resp
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_owned());
            (resp.status(), etag)
        }
    };
    for action in ["deactivate", "activate", "rotate-secret"] {
        let (status, _) = post(action, Some(first.clone())).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{action}");
    }
    let mut tag = None;
    for action in ["deactivate", "activate", "rotate-secret"] {
        let current = etag_now(&app, &path).await;
        let (status, answered) = post(action, Some(current.clone())).await;
        assert_eq!(status, StatusCode::OK, "{action}");
        assert!(answered.is_some() && answered != Some(current), "{action}");
        tag = answered;
    }
    // The last answer's tag is the version a read finds.
    assert_eq!(tag, Some(etag_now(&app, &path).await));

    // So does deleting it: on an old version, refused and nothing deleted; on the current one,
    // deleted.
    let delete = |tag: String| {
        app.http
            .delete(format!("{}{path}", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("if-match", tag)
            .send()
    };
    let resp = delete(first.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(code(&err), "changed", "{err}");
    assert_eq!(app.get(&path).await.0, StatusCode::OK, "still there");
    let resp = delete(etag_now(&app, &path).await).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get(&path).await.0, StatusCode::NOT_FOUND);
}

/// The `ETag` a read of the webhook at `path` answers now.
async fn etag_now(app: &TestApp, path: &str) -> String {
    let read = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    read.headers()["etag"].to_str().unwrap().to_owned()
}

/// Only the paged lists take query parameters. One sent to any other operation is refused and
/// nothing is done: a client that believes it asked for a dry run must not send a test event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_parameter_an_operation_does_not_take_is_refused() {
    let app = TestApp::spawn().await;
    let rx = crate::helpers::TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/h"), json!({})).await;
    let hook = format!("/v1/orgs/{org}/webhooks/{}", hook["id"].as_str().unwrap());
    let (status, err) = app
        .call(
            Method::POST,
            &format!("{hook}/test?dry_run=true"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::BAD_REQUEST, "invalid_query"),
        "{err}"
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(`dry_run`); nothing was done"),
        "{err}"
    );
    let (_, sent) = app.get(&format!("{hook}/deliveries")).await;
    assert_eq!(sent["data"], json!([]), "no test event was sent");
    for refused in [
        format!("/v1/orgs/{org}?verbose=1"),
        format!("{hook}?x"),
        format!("/v1/orgs/{org}/api-keys?limit=1"),
    ] {
        let (status, err) = app.get(&refused).await;
        assert_eq!(
            (status, code(&err)),
            (StatusCode::BAD_REQUEST, "invalid_query"),
            "{refused}"
        );
    }
    // The lists take theirs, and an empty query string is none.
    for taken in [
        "/v1/orgs?limit=1".to_owned(),
        format!("/v1/orgs/{org}/webhooks?limit=1"),
        format!("/v1/orgs/{org}/events?limit=1"),
        format!("{hook}/deliveries?limit=1"),
        format!("/v1/orgs/{org}?"),
        // Probes are left to what monitoring tools add.
        "/healthz?probe=1".to_owned(),
    ] {
        let (status, body) = app.get(&taken).await;
        assert_eq!(status, StatusCode::OK, "{taken}: {body}");
    }
    let head = app
        .http
        .head(format!("{}/v1/orgs?limit=1", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_ids_answer_json_404s() {
    let app = TestApp::spawn().await;
    let (status, err) = app.get("/v2/nothing").await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));
    assert!(err.to_string().contains("under /v1"), "{err}");
    // A path under /v1 already is not told to go under /v1.
    let (status, err) = app.get("/v1/orgs/org_x/nothing/here").await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));
    let said = err.to_string();
    assert!(
        said.contains("no such route") && !said.contains("under /v1"),
        "{err}"
    );
    let (status, err) = app.get("/v1/orgs/not-an-id").await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, err) = app
        .call(Method::PUT, "/v1/orgs", ADMIN_TOKEN, Some(json!({})))
        .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    // The methods it takes are in the Allow header, as the message says.
    let resp = (app.http.put(format!("{}/v1/orgs", app.base)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(allow.as_deref(), Some("GET,HEAD,POST"));
    let err: serde_json::Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Allow header lists"),
        "{err}"
    );
    let (status, health) = app.call(Method::GET, "/healthz", "", None).await;
    assert_eq!(
        (status, health["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    let (status, _) = app.call(Method::GET, "/readyz", "", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// The SQLite file deleted under a running node: what it stores from then on would be lost at
/// restart, so it is no longer ready (a load balancer looks elsewhere), says why, stores
/// nothing more, and copies what it had for the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_database_file_was_removed_is_not_ready() {
    let app = TestApp::spawn().await;
    let (status, _) = app.call(Method::GET, "/readyz", "", None).await;
    assert_eq!(status, StatusCode::OK);
    std::fs::remove_file(app.data_dir().join("herald.db")).unwrap();
    let (status, ready) = app.call(Method::GET, "/readyz", "", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert!(
        ready["reason"].as_str().unwrap().contains("was removed"),
        "{ready}"
    );
    // Nothing more is stored (it would be lost with the removed file): writes answer 503.
    let (status, err) = app
        .call(
            Method::POST,
            "/v1/orgs",
            ADMIN_TOKEN,
            Some(json!({ "name": "Lost" })),
        )
        .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{err}"
    );
    // What the node still sees is copied beside it, for the operator to put back.
    let mut reason = String::new();
    for _ in 0..100 {
        let (_, ready) = app.call(Method::GET, "/readyz", "", None).await;
        reason = ready["reason"].as_str().unwrap_or_default().to_owned();
        if reason.contains("Herald copied everything it had stored to") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reason.contains("herald.db.rescued-"), "{reason}");
    // A file put back at the path is another file: the node still writes to the removed one.
    std::fs::write(app.data_dir().join("herald.db"), b"").unwrap();
    let (status, ready) = app.call(Method::GET, "/readyz", "", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
}

/// A script tells "send it again later" (exit 75: no server there, or one that cannot take it
/// now) from "fix it" (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_75_when_the_same_command_may_go_through_later() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let send = |server: String, event_type: &'static str| {
        let org = org.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
                .args(["send", "--org", &org, "--type", event_type, "--data", "{}"])
                .env("HERALD_SERVER", server)
                .env("HERALD_TOKEN", ADMIN_TOKEN)
                .output()
                .await
                .unwrap()
        }
    };
    let unreachable = send(format!("http://127.0.0.1:{closed}"), "user.created").await;
    assert_eq!(
        unreachable.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&unreachable.stderr)
    );
    // A proxy in front that has no node to send it to answers 503 of its own.
    let proxy = crate::helpers::TestReceiver::start().await;
    proxy.answer_by_default(crate::helpers::Reply::status(503));
    let busy = send(proxy.url(""), "user.created").await;
    assert_eq!(
        busy.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    let refused = send(app.base.clone(), "user.exploded").await;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains("422"), "{said}");
    // `herald --help` says so.
    let help = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit status: 0 when done; 75"));
}

/// Runs the `herald` binary with `args`; answers its exit status and standard output.
pub(crate) async fn herald_cli(
    app: &TestApp,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_SERVER", &app.base)
        .env("HERALD_TOKEN", ADMIN_TOKEN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .await
        .unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The package version stays the same over many commits: a bug report quoting `herald
/// --version` must name the build.
#[test]
fn the_version_names_the_commit_built_from() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8(out.stdout).unwrap().trim().to_owned());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--version")
        .output()
        .unwrap();
    let said = String::from_utf8(out.stdout).unwrap();
    match head {
        Some(head) => assert_eq!(
            said.trim(),
            format!("herald {} ({head})", env!("CARGO_PKG_VERSION")),
            "the binary names another commit than HEAD (a commit made while the tests ran? run \
             them again)"
        ),
        // Outside a git checkout (a source archive) there is no commit to name.
        None => assert_eq!(said.trim(), format!("herald {}", env!("CARGO_PKG_VERSION"))),
    }
}

/// A batch with several bad events is refused with every one of them listed (`errors`), so that
/// a producer mends them all in one go; one bad event is answered as before; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_lists_every_event_at_fault() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    app.register_group_synced(&org).await;
    let batch = json!([
        { "type": "user.created", "id": "fine", "data": { "user": { "id": "u1" } } },
        { "type": "user.createdd", "data": {} },
        { "type": "user.created" },
        { "type": "group.synced", "data": { "group": 7 } },
    ]);
    let (status, err) = app.post(&format!("/v1/orgs/{org}/events"), batch).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let listed: Vec<(&str, &str)> = err["error"]["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{err}"))
        .iter()
        .map(|e| {
            (
                e["code"].as_str().unwrap(),
                e["field"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("unknown_event_type", "[1].type"),
            ("invalid_field", "[2].data"),
            ("schema_violation", "[3].data/group"),
        ],
        "{err}"
    );
    assert_eq!(err["error"]["code"], "unknown_event_type");
    assert_eq!(err["error"]["field"], "[1].type");
    assert!(
        err["error"]["message"].as_str().unwrap().contains(
            "(and 2 more events of this batch are refused: `errors` lists each; nothing was stored)"
        ),
        "{err}"
    );
    let (status, _) = app.get(&format!("/v1/orgs/{org}/events/fine")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing stored");
    // One event at fault: answered as before, without a list.
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!([{ "type": "user.createdd", "data": {} }]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err["error"].get("errors").is_none(), "{err}");
}

/// `herald send` takes JSON Lines and arrays past one request's limits: it sends them in
/// order in as many requests as the server takes (halving a request whose body is too large),
/// shows how far it got, and when a request fails names the event at fault, what was stored,
/// and where to go on from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_send_splits_many_events_into_requests_and_says_where_one_failed() {
    // Bodies of 64 KiB at most: a thousand events of about 90 bytes are refused whole (413).
    let app = TestApp::spawn_with(|s| s.server.max_body_bytes = 64 * 1024).await;
    let org = app.create_org("Bulk").await;
    let event = |id: &str, event_type: &str| {
        format!(r#"{{"type":"{event_type}","id":"{id}","data":{{"user":{{"id":"u-{id}"}}}}}}"#)
    };
    let lines: Vec<String> = (0..2_500)
        .map(|i| event(&format!("bulk-{i}"), "user.created"))
        .collect();
    let send = ["send", "--org", org.as_str()];
    let refused = r#"herald_http_responses_total{class="4xx"}"#;
    let refused_before = app.metric(refused).await;
    let (ok, out) = herald_cli(&app, &send, Some(&lines.join("\n"))).await;
    // 1,000 (refused whole: 500 and 500), then no more bytes at once than went: the later
    // events' ids are longer, so about 490 a request, in four.
    assert!(
        ok && out.contains("2500 events sent in 6 requests: 2500 stored, 0 already stored")
            && out.contains("sent 2500 of 2500 events"),
        "{out}"
    );
    assert_eq!(app.metric(refused).await - refused_before, 1, "{out}");
    for id in ["bulk-0", "bulk-1234", "bulk-2499"] {
        let (status, _) = app.get(&format!("/v1/orgs/{org}/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id}");
    }
    // Sent again, as an array: every one is a duplicate, nothing stored twice.
    let array = format!("[{}]", lines.join(","));
    let (ok, out) = herald_cli(&app, &send, Some(&array)).await;
    assert!(ok && out.contains("0 stored, 2500 already stored"), "{out}");

    // The 1,201st of 1,500 events has a type nobody knows: the third request (events
    // 1,001–1,487: no more bytes than the first two, whose ids are shorter) is refused whole,
    // the two before it stored. Lines count from the blank first.
    let mut lines: Vec<String> = (0..1_500)
        .map(|i| event(&format!("late-{i}"), "user.created"))
        .collect();
    lines[1_200] = event("late-1200", "user.createdd");
    let (ok, out) = herald_cli(&app, &send, Some(&format!("\n{}", lines.join("\n")))).await;
    assert!(
        !ok && out.contains(
            "events 1001–1487 of 1500 were sent in one request, which failed; the 1000 before \
             them were stored; the 13 after them were not sent; at fault: event 1201 (line \
             1202), its type"
        ) && out.contains("send the whole input again")
            && out.contains("or from event 1001 (line 1002) on")
            && out.contains("'user.createdd' is not in this organization's catalogs"),
        "{out}"
    );
    let (stored, _) = app.get(&format!("/v1/orgs/{org}/events/late-999")).await;
    let (not_stored, _) = app.get(&format!("/v1/orgs/{org}/events/late-1000")).await;
    assert_eq!(
        (stored, not_stored),
        (StatusCode::OK, StatusCode::NOT_FOUND)
    );
    // With --json, standard output holds one document: the server's error with the field
    // counted in the whole input, the event's line, and what became of the rest.
    let json_send = ["send", "--org", org.as_str(), "--json"];
    let input = format!("\n{}", lines.join("\n"));
    let (ok, out) = herald_cli(&app, &json_send, Some(&input)).await;
    let printed: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .map_while(Result::ok)
        .collect();
    let failure = printed.first().cloned().unwrap_or_default();
    assert!(!ok && printed.len() == 1, "{out}");
    assert_eq!(failure["error"]["code"], "unknown_event_type", "{out}");
    assert_eq!(failure["error"]["field"], "[1200].type", "{out}");
    assert_eq!(
        [
            &failure["line"],
            &failure["stored"],
            &failure["failed"],
            &failure["not_sent"]
        ],
        [&json!(1202), &json!(1000), &json!(487), &json!(13)],
        "{out}"
    );
    // So it is for events without ids, whose failure is told without "try again later".
    let no_ids: Vec<String> = (0..1_500)
        .map(|i| match i {
            1_200 => r#"{"type":"user.createdd","data":{}}"#.to_owned(),
            _ => format!(r#"{{"type":"user.created","data":{{"user":{{"id":"n{i}"}}}}}}"#),
        })
        .collect();
    let (ok, out) = herald_cli(&app, &json_send, Some(&format!("\n{}", no_ids.join("\n")))).await;
    let failure: serde_json::Value = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    let counted = ["stored", "failed", "not_sent"].map(|k| failure[k].as_u64().unwrap_or(0));
    assert!(
        !ok && failure["error"]["code"] == "unknown_event_type"
            && failure["error"]["field"] == "[1200].type"
            && failure["line"] == 1202
            && counted[0] > 0
            && counted.iter().sum::<u64>() == 1_500,
        "{out}"
    );
    // All in one request, the server's error is printed as it is.
    let (ok, out) = herald_cli(&app, &json_send, Some(&lines[1_199..1_202].join("\n"))).await;
    let printed: serde_json::Value = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    assert!(!ok && printed["error"]["field"] == "[1].type", "{out}");
    assert!(printed.get("stored").is_none(), "{out}");
    // One request as planned (a thousand events), split in two by the server's 413: the
    // failing half is told with the half stored before it.
    let mut split: Vec<String> = (0..1_000)
        .map(|i| event(&format!("split-{i}"), "user.created"))
        .collect();
    split[699] = event("split-699", "user.createdd");
    let (ok, out) = herald_cli(&app, &send, Some(&split.join("\n"))).await;
    assert!(
        !ok && out.contains(
            "events 501–1000 of 1000 were sent in one request, which failed; the 500 before \
             them were stored; at fault: event 700 (line 700), its type"
        ),
        "{out}"
    );
    // Events of 40 KiB first: only one goes at a time, and the small ones after them go as
    // many to a request as fit in the bytes that went (about 450), not one by one.
    let big = "x".repeat(40 * 1024);
    let mixed: Vec<String> = (0..1_030)
        .map(|i| match i {
            0..30 => format!(
                r#"{{"type":"user.created","id":"big-{i}","data":{{"user":{{"id":"{big}"}}}}}}"#
            ),
            _ => event(&format!("small-{i}"), "user.created"),
        })
        .collect();
    let (ok, out) = herald_cli(&app, &send, Some(&mixed.join("\n"))).await;
    let requests: usize = out
        .split(" events sent in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(ok && requests <= 40, "{requests} requests: {out}");
    // A mistyped organization is said first, before the input is read.
    let (ok, out) = herald_cli(&app, &["send", "--org", "bulc"], Some("not json")).await;
    assert!(
        !ok && out.contains("no organization has the handle 'bulc'") && !out.contains("not JSON"),
        "{out}"
    );
    // A line that is not JSON is named before anything is sent, however far into the input.
    let (ok, out) = herald_cli(&app, &send, Some("{\"type\": \"user.created\"}\n{oops}\n")).await;
    assert!(
        !ok && out.contains("standard input, line 2: not JSON"),
        "{out}"
    );
    let mut lines: Vec<String> = (0..1_500)
        .map(|i| event(&format!("checked-{i}"), "user.created"))
        .collect();
    lines[1_400] = "{oops}".to_owned();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), lines.join("\n")).unwrap();
    let from_file = ["send", "--org", org.as_str(), "--file"];
    let from_file = [&from_file[..], &[file.path().to_str().unwrap()]].concat();
    let (ok, out) = herald_cli(&app, &from_file, None).await;
    assert!(!ok && out.contains(", line 1401: not JSON"), "{out}");
    let (status, _) = app.get(&format!("/v1/orgs/{org}/events/checked-0")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nothing is sent before every line is read"
    );
    // A file that can be read only once (a pipe: `--file <(zcat …)`, /dev/stdin) is kept as
    // it is read, not read twice.
    let piped = [&send[..], &["--file", "/dev/stdin"]].concat();
    let two = format!(
        "{}\n{}",
        event("piped-1", "user.created"),
        event("piped-2", "user.created")
    );
    let (ok, out) = herald_cli(&app, &piped, Some(&two)).await;
    assert!(ok, "{out}");
    for id in ["piped-1", "piped-2"] {
        let (status, _) = app.get(&format!("/v1/orgs/{org}/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_organizations_webhooks_events_and_history() {
    let app = TestApp::spawn().await;
    let rx = crate::helpers::TestReceiver::start().await;
    let (ok, out) = herald_cli(&app, &["orgs", "create", "--name", "Acme", "--json"], None).await;
    assert!(ok, "{out}");
    let org: Value = serde_json::from_str(&out).unwrap();
    let org = org["id"].as_str().unwrap().to_owned();
    // More than one page of 200: the list follows the cursor to the end.
    for i in 0..200 {
        app.create_org(&format!("Filler {i}")).await;
    }
    let (ok, out) = herald_cli(&app, &["orgs", "list"], None).await;
    assert!(
        ok && out.starts_with("ID") && out.contains(&org),
        "a table for people: {out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("org_")).count(),
        201,
        "{out}"
    );
    // A second organization of that name gets a numbered handle, and is told so.
    let (ok, out) = herald_cli(&app, &["orgs", "create", "--name", "Acme"], None).await;
    assert!(
        ok && out.contains("Note: the handle acme was taken; this organization's is acme-2."),
        "{out}"
    );
    let catalogs = ["--catalog", "optare", "--catalog", "permit"];
    let (ok, out) = herald_cli(
        &app,
        &[&["orgs", "update", &org][..], &catalogs].concat(),
        None,
    )
    .await;
    assert!(ok && out.contains("optare,permit"), "{out}");
    let (ok, out) = herald_cli(&app, &["orgs", "update", &org], None).await;
    assert!(!ok && out.contains("nothing to change"), "{out}");
    // An organization with no built-in catalog, only its own types.
    let (ok, out) = herald_cli(
        &app,
        &[
            "orgs",
            "create",
            "--name",
            "Bare",
            "--no-catalogs",
            "--json",
        ],
        None,
    )
    .await;
    assert!(ok && out.contains("\"catalogs\": []"), "{out}");

    let url = rx.url("/cli");
    let (ok, out) = herald_cli(
        &app,
        &[
            "webhooks",
            "create",
            "--org",
            &org,
            "--name",
            "crm",
            "--url",
            &url,
            "--event",
            "user.created",
        ],
        None,
    )
    .await;
    assert!(ok && out.contains("Secret (shown once): whsec_"), "{out}");
    let (ok, out) = herald_cli(
        &app,
        &[
            "send",
            "--org",
            &org,
            "--type",
            "user.created",
            "--data",
            r#"{"user":{"id":"u1"}}"#,
        ],
        None,
    )
    .await;
    assert!(ok && out.contains("false"), "{out}");
    let batch = r#"[{"type":"user.created","id":"from-stdin","data":{"user":{"id":"u2"}}}]"#;
    // An organization may be named by its handle; Acme's is on the last of two pages.
    let (ok, out) = herald_cli(&app, &["send", "--org", "acme"], Some(batch)).await;
    assert!(ok && out.contains("from-stdin"), "{out}");
    // The same id with other data is dropped: its row says so, and the command fails.
    let reused = r#"[{"type":"user.created","id":"from-stdin","data":{"user":{"id":"u3"}}}]"#;
    let (ok, out) = herald_cli(&app, &["send", "--org", "acme"], Some(reused)).await;
    assert!(
        !ok && out.contains("id reused: NOT STORED")
            && out.contains("not stored, an id already used by another event"),
        "{out}"
    );
    let (ok, out) = herald_cli(&app, &["webhooks", "list", "--org", "acne"], None).await;
    assert!(
        !ok && out.contains("no organization has the handle 'acne'"),
        "{out}"
    );
    rx.wait_for("/cli", 2, std::time::Duration::from_secs(10))
        .await;

    let (ok, out) = herald_cli(&app, &["webhooks", "list", "--org", &org, "--json"], None).await;
    assert!(ok, "{out}");
    let hooks: Value = serde_json::from_str(&out).unwrap();
    let hook = hooks["data"][0]["id"].as_str().unwrap().to_owned();
    let rotate = ["webhooks", "rotate", "--org", "acme", &hook, "--secret"];
    let (ok, out) = herald_cli(
        &app,
        &[&rotate[..], &["a-secret-of-my-choosing"]].concat(),
        None,
    )
    .await;
    assert!(
        ok && out.contains("24 hours): a-secret-of-my-choosing"),
        "{out}"
    );
    let (ok, out) = herald_cli(
        &app,
        &["deliveries", "list", "--org", &org, "--webhook", &hook],
        None,
    )
    .await;
    assert!(
        ok && out.lines().count() == 3,
        "a header and two deliveries: {out}"
    );
    // A page at a time: the next page's cursor is given, and --event-type filters.
    let list = ["deliveries", "list", "--org", "acme", "--webhook", &hook];
    let (ok, out) = herald_cli(&app, &[&list[..], &["--limit", "1"]].concat(), None).await;
    let cursor = out
        .lines()
        .find_map(|l| l.strip_prefix("More: add --cursor "))
        .unwrap_or_else(|| panic!("a cursor for the next page: {out}"))
        .to_owned();
    assert!(
        ok && out.lines().filter(|l| l.starts_with("dlv_")).count() == 1,
        "{out}"
    );
    let (ok, out) = herald_cli(&app, &[&list[..], &["--cursor", &cursor]].concat(), None).await;
    assert!(
        ok && out.lines().filter(|l| l.starts_with("dlv_")).count() == 1 && !out.contains("More:"),
        "{out}"
    );
    let (ok, out) = herald_cli(
        &app,
        &[&list[..], &["--event-type", "user.deleted"]].concat(),
        None,
    )
    .await;
    assert!(ok && !out.contains("dlv_"), "{out}");
    // Where one event went, by its id alone, its webhook named as the CLI takes it.
    let (ok, out) = herald_cli(
        &app,
        &["events", "get", "--org", "acme", "from-stdin"],
        None,
    )
    .await;
    assert!(
        ok && out.contains("from-stdin")
            && out.contains("user.created")
            && out
                .lines()
                .any(|l| l.starts_with("dlv_") && l.contains(" crm ")),
        "{out}"
    );
    // And what it carried.
    assert!(
        out.contains("data:\n{\n  \"user\": {\n    \"id\": \"u2\""),
        "{out}"
    );
    let (ok, out) = herald_cli(
        &app,
        &["events", "get", "--org", "acme", "never-sent"],
        None,
    )
    .await;
    assert!(!ok && out.contains("404"), "{out}");
    // An id with what a path would otherwise read as its own (`/`, `?`, `#`, `%`).
    let odd = "tenant/42?x#1%";
    let (ok, out) = herald_cli(
        &app,
        &[
            "send",
            "--org",
            "acme",
            "--type",
            "user.created",
            "--id",
            odd,
            "--data",
            r#"{"user":{"id":"u9"}}"#,
        ],
        None,
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = herald_cli(&app, &["events", "get", "--org", "acme", odd], None).await;
    assert!(ok && out.contains(odd) && out.contains("dlv_"), "{out}");

    // The idempotency key, time and correlation id from flags: sent twice, stored once.
    let keyed = [
        "send",
        "--org",
        &org,
        "--type",
        "user.created",
        "--data",
        r#"{"user":{"id":"u3"}}"#,
        "--id",
        "cli-keyed",
        "--occurred-at",
        "2026-01-02T03:04:05Z",
        "--correlation-id",
        "corr-9",
    ];
    let (ok, out) = herald_cli(&app, &keyed, None).await;
    assert!(
        ok && out.contains("cli-keyed") && out.contains("false"),
        "{out}"
    );
    let (ok, out) = herald_cli(&app, &keyed, None).await;
    assert!(ok && out.contains("true"), "a duplicate: {out}");
    // The id reused for another event: not stored, and the command fails saying so.
    let reused = [&keyed[..6], &[r#"{"user":{"id":"u4"}}"#], &keyed[7..]].concat();
    let (ok, out) = herald_cli(&app, &reused, None).await;
    assert!(
        !ok && out
            .contains("cli-keyed: the event already stored under this id differs in its data"),
        "{out}"
    );
    let got = rx
        .wait_for("/cli", 3, std::time::Duration::from_secs(10))
        .await;
    let keyed = got
        .iter()
        .map(|r| r.json())
        .find(|b| b["data"]["user"]["id"] == "u3")
        .expect("the keyed event arrived");
    assert!(
        keyed["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-02T03:04:05"),
        "{keyed}"
    );

    // Changing a webhook: only what is given changes; `get` shows every setting.
    let (ok, out) = herald_cli(
        &app,
        &[
            "webhooks",
            "update",
            "--org",
            "acme",
            &hook,
            "--timeout-ms",
            "5000",
            "--retry-schedule",
            "0, 30,120",
            "--header",
            "X-Env: prod",
        ],
        None,
    )
    .await;
    assert!(ok, "{out}");
    let (_, stored) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(
        (
            &stored["timeout_ms"],
            &stored["retry_schedule"],
            &stored["headers"],
            &stored["name"]
        ),
        (
            &json!(5000),
            &json!([0, 30, 120]),
            &json!({ "x-env": "prod" }),
            &json!("crm")
        )
    );
    let (ok, out) = herald_cli(&app, &["webhooks", "get", "--org", "acme", &hook], None).await;
    assert!(
        ok && out.contains("0,30,120") && out.contains("x-env: …") && !out.contains("prod"),
        "{out}"
    );
    let (ok, out) = herald_cli(&app, &["webhooks", "update", "--org", "acme", &hook], None).await;
    assert!(!ok && out.contains("nothing to change"), "{out}");
    // Back to the profile's defaults, and no more custom headers.
    let update = ["webhooks", "update", "--org", "acme", &hook];
    let reset = [
        "--reset",
        "timeout-ms",
        "--reset",
        "retry-schedule",
        "--reset",
        "headers",
    ];
    let (ok, out) = herald_cli(&app, &[&update[..], &reset[..]].concat(), None).await;
    assert!(ok, "{out}");
    let (_, stored) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(
        (
            &stored["timeout_ms"],
            &stored["retry_schedule"],
            &stored["headers"]
        ),
        (&json!(null), &json!(null), &json!({}))
    );
    // Shown as what applies, not as a blank.
    let (ok, out) = herald_cli(&app, &["webhooks", "get", "--org", "acme", &hook], None).await;
    let line = |field: &str| {
        out.lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        ok && line("timeout_ms").ends_with(" 15000 (the profile's default)")
            && line("retry_schedule").ends_with(" 0,60,300,900,3600 (the profile's default)"),
        "{out}"
    );
    // From named types to a channel alone: the named ones cleared, with the channel given.
    let to_channel = ["--reset", "events", "--channel", "session"];
    let (ok, out) = herald_cli(&app, &[&update[..], &to_channel[..]].concat(), None).await;
    assert!(ok, "{out}");
    let (_, stored) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(
        (&stored["events"], &stored["channels"]),
        (&json!([]), &json!(["session"]))
    );
    assert!(line("rate_limit_per_second").ends_with("none"), "{out}");
    // The rest of a webhook's settings from flags, and back.
    let more = [
        "--signature",
        "hub",
        "--rate-limit-per-second",
        "50",
        "--option",
        "content_mode=binary",
        "--profile",
        "cloudevents",
    ];
    let (ok, out) = herald_cli(&app, &[&update[..], &more[..]].concat(), None).await;
    assert!(ok, "{out}");
    let (_, stored) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(
        (
            &stored["signature"],
            &stored["rate_limit_per_second"],
            &stored["options"]["content_mode"]
        ),
        (&json!("hub"), &json!(50), &json!("binary")),
        "{stored}"
    );
    // `verify` on a webhook without WebSub says which command turns it on.
    let (ok, out) = herald_cli(&app, &["webhooks", "verify", "--org", "acme", &hook], None).await;
    assert!(
        !ok && out.contains(&format!(
            "`herald webhooks update --org {org} {hook} --verification websub`"
        )),
        "{out}"
    );
    let back = [
        "--reset",
        "signature",
        "--reset",
        "rate-limit-per-second",
        "--reset",
        "options",
        "--profile",
        "standard",
    ];
    let (ok, out) = herald_cli(&app, &[&update[..], &back[..]].concat(), None).await;
    assert!(ok, "{out}");
    let (_, stored) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(
        (&stored["signature"], &stored["rate_limit_per_second"]),
        (&json!(null), &json!(null)),
        "{stored}"
    );
    let both = ["--reset", "timeout-ms", "--timeout-ms", "900"];
    let (ok, out) = herald_cli(&app, &[&update[..], &both[..]].concat(), None).await;
    assert!(!ok && out.contains("give one"), "{out}");

    // API keys for producers: shown once, listed by prefix, revoked.
    let (ok, out) = herald_cli(
        &app,
        &["keys", "create", "--org", "acme", "--name", "producer"],
        None,
    )
    .await;
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("Key (shown once): "))
        .unwrap_or_else(|| panic!("the key: {out}"))
        .to_owned();
    assert!(ok, "{out}");
    let (status, _) = app
        .call(Method::GET, &format!("/v1/orgs/{org}/webhooks"), &key, None)
        .await;
    assert_eq!(status, StatusCode::OK, "the new key works");
    let (ok, out) = herald_cli(
        &app,
        &[
            "keys", "create", "--org", "acme", "--name", "idp", "--role", "producer", "--json",
        ],
        None,
    )
    .await;
    let made: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert!(ok && made["role"] == "producer", "{out}");
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/v1/orgs/{org}/webhooks"),
            made["key"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a producer's key");
    // Its own organization's id in capitals is still its own: a 403, not a 404.
    let (status, _) = app
        .call(
            Method::GET,
            &format!(
                "/v1/orgs/org_{}/webhooks",
                org["org_".len()..].to_uppercase()
            ),
            made["key"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "its own organization, in capitals"
    );
    // What to use instead: a manager key, or the admin token where no key may.
    let producer = made["key"].as_str().unwrap();
    let (status, refused) = app
        .call(
            Method::GET,
            &format!("/v1/orgs/{org}/webhooks"),
            producer,
            None,
        )
        .await;
    let said = refused["error"]["message"].as_str().unwrap();
    assert!(
        status == StatusCode::FORBIDDEN && said.contains("use a manager key"),
        "{said}"
    );
    let (status, refused) = app
        .call(
            Method::POST,
            "/v1/orgs",
            producer,
            Some(json!({ "name": "x" })),
        )
        .await;
    let said = refused["error"]["message"].as_str().unwrap();
    assert!(
        status == StatusCode::FORBIDDEN && said.ends_with("needs the admin token"),
        "{said}"
    );
    let (ok, out) = herald_cli(
        &app,
        &[
            "keys",
            "delete",
            "--org",
            "acme",
            made["id"].as_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = herald_cli(&app, &["keys", "list", "--org", "acme", "--json"], None).await;
    assert!(ok && !out.contains(&key), "never shown again: {out}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let key_id = listed["data"][0]["id"].as_str().unwrap().to_owned();
    // A key may be revoked by its name, unless another key of the organization shares it.
    let create = ["keys", "create", "--org", "acme", "--name"];
    for name in ["twin", "twin"] {
        let (ok, out) = herald_cli(&app, &[&create[..], &[name]].concat(), None).await;
        assert!(ok, "{out}");
    }
    let (ok, out) = herald_cli(&app, &["keys", "delete", "--org", "acme", "twin"], None).await;
    assert!(
        !ok && out.contains("2 API keys are named 'twin'; give one's id: key_"),
        "{out}"
    );
    // A name in the form of an id would be taken for one: refused, for keys and webhooks.
    let (ok, out) = herald_cli(
        &app,
        &[&create[..], &["key_01jd8x4m2c9v7t5r3q1p0n8k6h"]].concat(),
        None,
    )
    .await;
    assert!(
        !ok && out.contains("has the form of an API key id"),
        "{out}"
    );
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks"),
            json!({ "name": "wh_01jd8x4m2c9v7t5r3q1p0n8k6h", "url": "https://example.com/h" }),
        )
        .await;
    assert_eq!(
        (status, &err["error"]["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("name")),
        "{err}"
    );
    // One named so before such names were refused keeps its name through other changes (a
    // form sends every field back), but cannot be renamed to another such name.
    let legacy = app
        .create_webhook(
            &org,
            "https://example.com/legacy",
            json!({ "name": "legacy" }),
        )
        .await;
    let legacy_id = herald_core::WebhookId::parse(legacy["id"].as_str().unwrap()).unwrap();
    let org_id = herald_core::OrgId::parse(&org).unwrap();
    let mut stored = app
        .state
        .store
        .get_webhook(&org_id, &legacy_id)
        .await
        .unwrap();
    stored.name = "wh_01jd8x4m2c9v7t5r3q1p0n8k6h".into();
    app.state.store.update_webhook(&stored).await.unwrap();
    let patch = |name: &str| json!({ "name": name, "timeout_ms": 4000 });
    let path = format!("/v1/orgs/{org}/webhooks/{legacy_id}");
    let (status, kept) = app
        .call(Method::PATCH, &path, ADMIN_TOKEN, Some(patch(&stored.name)))
        .await;
    assert_eq!(
        (status, &kept["timeout_ms"]),
        (StatusCode::OK, &json!(4000)),
        "{kept}"
    );
    let (status, err) = app
        .call(
            Method::PATCH,
            &path,
            ADMIN_TOKEN,
            Some(patch("wh_01jd8x4m2c9v7t5r3q1p0n8k6j")),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let (ok, out) = herald_cli(&app, &["keys", "delete", "--org", "acme", "nokey"], None).await;
    assert!(!ok && out.contains("no API key is named 'nokey'"), "{out}");
    let (ok, out) = herald_cli(
        &app,
        &["keys", "delete", "--org", "acme", " producer "],
        None,
    )
    .await;
    assert!(ok && out.contains(&key_id), "{out}");
    let (status, _) = app
        .call(Method::GET, &format!("/v1/orgs/{org}/webhooks"), &key, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked");

    let (ok, out) = herald_cli(
        &app,
        &[
            "deliveries",
            "recover",
            "--org",
            &org,
            "--webhook",
            &hook,
            "--since",
            "2020-01-01T00:00:00Z",
        ],
        None,
    )
    .await;
    assert!(
        ok && out.starts_with(
            "Recovered 0 failed deliveries since 2020-01-01T00:00:00Z: there were none"
        ),
        "{out}"
    );
    let (ok, out) = herald_cli(
        &app,
        &[
            "deliveries",
            "retry-waiting",
            "--org",
            &org,
            "--webhook",
            &hook,
        ],
        None,
    )
    .await;
    assert!(
        ok && out.starts_with(&format!(
            "No delivery of {hook} is waiting for a retry: any pending ones are queued or under way."
        )),
        "{out}"
    );
    // An empty list says so under its header.
    let (ok, out) = herald_cli(
        &app,
        &[
            "deliveries",
            "list",
            "--org",
            &org,
            "--webhook",
            &hook,
            "--state",
            "failed",
        ],
        None,
    )
    .await;
    assert!(ok && out.lines().nth(1) == Some("(none)"), "{out}");
    let (ok, out) = herald_cli(&app, &["events", "types", "--org", &org], None).await;
    assert!(
        ok && out.starts_with("NAME") && out.contains("user.created") && out.contains("optare"),
        "{out}"
    );
    // An organization's own type, with its schema from standard input.
    let schema = r#"{"type": "object", "required": ["invoice"]}"#;
    let (ok, out) = herald_cli(
        &app,
        &[
            "events",
            "register",
            "--org",
            &org,
            "--name",
            "invoice.paid",
            "--channel",
            "billing",
            "--schema",
            "-",
            "--example",
            r#"{"invoice": {"id": "in_1"}}"#,
        ],
        Some(schema),
    )
    .await;
    assert!(
        ok && out.contains("invoice.paid") && out.contains("billing"),
        "{out}"
    );
    let (ok, out) = herald_cli(
        &app,
        &[
            "send",
            "--org",
            &org,
            "--type",
            "invoice.paid",
            "--data",
            "{}",
        ],
        None,
    )
    .await;
    assert!(!ok && out.contains("invoice"), "the schema holds: {out}");
    // A misspelt type: the server's suggestion, and its advice as commands.
    let (ok, out) = herald_cli(
        &app,
        &[
            "send",
            "--org",
            &org,
            "--type",
            "invoice.piad",
            "--data",
            "{}",
        ],
        None,
    )
    .await;
    assert!(
        !ok && out.contains("did you mean 'invoice.paid'?")
            && out.contains("`herald events types --org ")
            && !out.contains("/v1/"),
        "{out}"
    );
    let (ok, out) = herald_cli(&app, &["events", "catalog", "--name", "opal"], None).await;
    assert!(
        ok && out.contains("USER_ADDED_TO_GROUP") && !out.contains("optare"),
        "{out}"
    );
    // As JSON too, only the catalog asked for.
    let (ok, out) = herald_cli(
        &app,
        &["events", "catalog", "--name", "opal", "--json"],
        None,
    )
    .await;
    let shown: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    let names: Vec<&Value> = shown["catalogs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["catalog"])
        .collect();
    assert!(ok && names == [&json!("opal")], "{out}");
    let (ok, out) = herald_cli(&app, &["events", "catalog", "--name", "okta"], None).await;
    assert!(!ok && out.contains("the catalogs are optare"), "{out}");
    // `--catalog`, as `orgs create` names a catalog, does the same.
    let (ok, out) = herald_cli(&app, &["events", "catalog", "--catalog", "opal"], None).await;
    assert!(ok && out.contains("USER_ADDED_TO_GROUP"), "{out}");
    // Slips a newcomer makes get the value most likely meant, and the server's advice is in
    // the commands' words.
    let slips: [(&[&str], &str); 6] = [
        (
            &[
                "deliveries",
                "list",
                "--org",
                &org,
                "--webhook",
                &hook,
                "--state",
                "faild",
            ],
            "is not a delivery state (did you mean 'failed'?)",
        ),
        (
            &["orgs", "update", &org, "--catalog", "optar"],
            "(did you mean 'optare'?)",
        ),
        (
            &[
                "events",
                "unregister",
                "--org",
                &org,
                "--name",
                "invoice.piad",
            ],
            "no such event type of the organization's own 'invoice.piad' (did you mean 'invoice.paid'?)",
        ),
        // An organization's name where its handle goes, then a misspelt handle.
        (
            &["webhooks", "list", "--org", "Filler 7"],
            "no organization has the handle 'Filler 7' ('Filler 7' is the name of the one whose handle is 'filler-7')",
        ),
        (
            &["webhooks", "list", "--org", "filer-7"],
            "no organization has the handle 'filer-7' (did you mean 'filler-7'?)",
        ),
        (
            &["events", "get", "--org", &org, "never-sent"],
            &format!("list what is kept with `herald events list --org {org}`"),
        ),
    ];
    for (args, said) in slips {
        let (ok, out) = herald_cli(&app, args, None).await;
        assert!(
            !ok && out.contains(said) && !out.contains("/v1/"),
            "{args:?}: {out}"
        );
    }
    let (ok, out) = herald_cli(
        &app,
        &[
            "events",
            "send",
            "--org",
            &org,
            "--type",
            "user.created",
            "--data",
            r#"{"user":{"id":"u3"}}"#,
        ],
        None,
    )
    .await;
    assert!(ok && out.contains("false"), "{out}");

    let (ok, out) = herald_cli(
        &app,
        &[
            "send",
            "--org",
            &org,
            "--type",
            "user.exploded",
            "--data",
            "{}",
        ],
        None,
    )
    .await;
    assert!(
        !ok && out.contains("422") && out.contains("user.exploded"),
        "the server's message is shown: {out}"
    );
    // The API needs an event's data, so the command does: none is made up for it.
    let (ok, out) = herald_cli(
        &app,
        &["send", "--org", &org, "--type", "user.created"],
        None,
    )
    .await;
    assert!(!ok && out.contains("--data"), "{out}");
    // --data that is an object with something no JSON reader takes is said as the server says
    // it; one that is no object is asked for as one; a byte-order mark is passed over.
    for (data, said) in [
        (
            r#"{"s":"\ud800"}"#,
            Some("--data is not valid JSON: a \\u escape at line 1 column 13 names half"),
        ),
        (
            r#"{"n":1E400}"#,
            Some("--data holds a number at line 1 column 10 past the largest"),
        ),
        ("user=u1", Some("--data must be a JSON object, e.g.")),
        ("\u{feff}{\"user\":{\"id\":\"u4\"}}", None),
    ] {
        let args = [
            "send",
            "--org",
            &org,
            "--type",
            "user.created",
            "--data",
            data,
        ];
        let (ok, out) = herald_cli(&app, &args, None).await;
        match said {
            Some(said) => assert!(!ok && out.contains(said), "{data}: {out}"),
            None => assert!(ok, "{data}: {out}"),
        }
    }
    // --data without --type would otherwise fall through to reading standard input.
    let (ok, out) = herald_cli(&app, &["send", "--org", &org, "--data", "{}"], None).await;
    assert!(!ok && out.contains("--type"), "{out}");
    // An organization pasted with spaces around it is found, as names are.
    let padded = format!(" {org} ");
    let (ok, out) = herald_cli(&app, &["webhooks", "list", "--org", &padded], None).await;
    assert!(ok, "{out}");
    // With --json, a failure found before any answer (no organization has this handle) is an
    // error object on standard output too, as the server's refusals are.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["webhooks", "list", "--org", "no-such-handle", "--json"])
        .env("HERALD_SERVER", &app.base)
        .env("HERALD_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let error: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(error["error"]["code"], "cli", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no organization has the handle"),
        "{error}"
    );
    // So is a value the command line itself refuses, before any request; `--help` is not.
    for (args, expected) in [
        (
            &[
                "webhooks",
                "update",
                "--org",
                &org,
                "crm",
                "--timeout-ms",
                "5",
                "--json",
            ][..],
            "invalid value '5' for '--timeout-ms <TIMEOUT_MS>'",
        ),
        (
            &["orgs", "get", "--json"][..],
            "the following required arguments",
        ),
    ] {
        let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .output()
            .await
            .unwrap();
        assert_eq!(refused.status.code(), Some(2), "{args:?}");
        let error: Value = serde_json::from_slice(&refused.stdout).unwrap();
        assert_eq!(error["error"]["code"], "cli", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(expected), "{error}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains(expected));
    }
    // What the command itself refuses of its command line exits 2 as well (`herald --help`),
    // and a header mistyped is not echoed (it may hold a credential); a mistyped organization
    // is said before `--yes` is asked for.
    for (args, expected) in [
        (
            &[
                "send",
                "--org",
                &org,
                "--type",
                "user.created",
                "--data",
                "nope",
            ][..],
            "--data must be a JSON object",
        ),
        (&["orgs", "delete", &org][..], "run `herald orgs delete"),
        (
            &["orgs", "purge", &org, "--before", "2026-01-01T00:00:00Z"][..],
            "run `herald orgs purge",
        ),
        (&["orgs", "update", &org][..], "nothing to change"),
        (
            &["webhooks", "delete", "--org", &org, "crm"][..],
            "run `herald webhooks delete",
        ),
        (
            &["webhooks", "update", "--org", &org, "crm"][..],
            "nothing to change",
        ),
        (
            &[
                "webhooks",
                "update",
                "--org",
                &org,
                "crm",
                "--header",
                "Authorization Bearer sk-secret-1",
            ][..],
            "--header number 1 is not a header",
        ),
        (&["orgs", "get", &org, "--token", " "][..], "is empty"),
    ] {
        let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("HERALD_SERVER", &app.base)
            .env("HERALD_TOKEN", ADMIN_TOKEN)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected) && !stderr.contains("sk-secret"),
            "{args:?}: {stderr}"
        );
    }
    let (ok, out) = herald_cli(&app, &["orgs", "delete", "no-such-org"], None).await;
    assert!(
        !ok && out.contains("no organization has the handle 'no-such-org'"),
        "{out}"
    );
    let help = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["orgs", "get", "--help", "--json"])
        .output()
        .await
        .unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("Usage"));
    let (ok, out) = herald_cli(
        &app,
        &["orgs", "list", "--server", "http://127.0.0.1:9"],
        None,
    )
    .await;
    assert!(!ok && out.contains("is `herald serve` running?"), "{out}");
    // `https://` for a server of plain HTTP: the scheme is what is wrong, not the server.
    let tls = app.base.replacen("http://", "https://", 1);
    let (ok, out) = herald_cli(&app, &["orgs", "list", "--server", &tls], None).await;
    assert!(
        !ok && out.contains("does not speak TLS") && !out.contains("is `herald serve` running"),
        "{out}"
    );
    // A server that takes the connection and never answers: the command says it waits,
    // rather than stay silent until its time-out.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_url = format!("http://{}", stalled.local_addr().unwrap());
    let mut waiting = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["orgs", "list", "--server", &stalled_url])
        .env("HERALD_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut said = tokio::io::BufReader::new(waiting.stderr.take().unwrap()).lines();
    let notice = tokio::time::timeout(Duration::from_secs(30), said.next_line())
        .await
        .expect("a notice well before the command's time-out")
        .unwrap()
        .unwrap_or_default();
    assert!(
        notice.starts_with(&format!(
            "waiting for Herald at {stalled_url} to answer (5 s so far"
        )),
        "{notice}"
    );
    waiting.kill().await.unwrap();
    drop(stalled);

    // Pointed at a server that is not Herald (here a receiver answering 200 with no body),
    // the CLI says so rather than panicking or printing an empty table.
    let elsewhere = rx.url("");
    let send = [
        "send",
        "--org",
        &org,
        "--type",
        "user.created",
        "--data",
        "{}",
    ];
    for args in [&["orgs", "list"][..], &send[..]] {
        let args = [args, &["--server", elsewhere.as_str()][..]].concat();
        let (ok, out) = herald_cli(&app, &args, None).await;
        assert!(
            !ok && out.contains("not Herald's JSON") && !out.contains("panicked"),
            "{args:?}: {out}"
        );
    }
    // A name is one path segment: one that holds slashes names nothing, not another route.
    // Unencoded, `event-types/../webhooks/wh_…` would resolve to the webhook and delete it.
    let pasted = format!("../webhooks/{hook}");
    let unregister = ["events", "unregister", "--org", &org, "--name"];
    let (ok, out) = herald_cli(&app, &[&unregister[..], &[&pasted]].concat(), None).await;
    assert!(!ok && out.contains("404"), "{out}");
    let (status, _) = app.get(&format!("/v1/orgs/{org}/webhooks/{hook}")).await;
    assert_eq!(status, StatusCode::OK, "the webhook was deleted");
    // Nor may a dot segment climb out of it (`DELETE /v1/orgs/{org}/event-types/..`).
    let (ok, out) = herald_cli(&app, &[&unregister[..], &[".."]].concat(), None).await;
    assert!(
        !ok && out.contains("is not an id or name the API can take"),
        "{out}"
    );
    // A webhook may be named by its name; what names none is said so, and nothing is sent.
    let (ok, out) = herald_cli(&app, &["webhooks", "get", "--org", &org, "crm"], None).await;
    assert!(ok && out.contains(&hook), "{out}");
    let (ok, out) = herald_cli(
        &app,
        &["deliveries", "list", "--org", "acme", "--webhook", "crm"],
        None,
    )
    .await;
    assert!(ok && out.contains("dlv_"), "{out}");
    let (ok, out) = herald_cli(
        &app,
        &["webhooks", "delete", "--org", &org, &pasted, "--yes"],
        None,
    )
    .await;
    assert!(!ok && out.contains("no webhook is named"), "{out}");

    // A test waits for the endpoint's answer, and fails when it is not a success.
    let test = ["webhooks", "test", "--org", "acme", &hook];
    let (ok, out) = herald_cli(&app, &test, None).await;
    assert!(
        ok && out.contains("Delivered dlv_") && out.contains("answered 200"),
        "{out}"
    );
    rx.answer_by_default(crate::helpers::Reply::status(500));
    let (ok, out) = herald_cli(&app, &test, None).await;
    assert!(
        !ok && out.contains("the endpoint answered 500") && out.contains("tries again at"),
        "{out}"
    );
    // With --json too: the delivery with its attempts, and the exit code says how it went.
    let (ok, out) = herald_cli(&app, &[&test[..], &["--json"]].concat(), None).await;
    assert!(
        !ok && out.contains("\"status\": 500") && out.contains("not delivered"),
        "{out}"
    );
    let (ok, out) = herald_cli(&app, &[&test[..], &["--no-wait"]].concat(), None).await;
    assert!(ok && out.starts_with("EVENT_ID"), "{out}");
    // A delivery shows its attempts and what the endpoint answered last.
    let delivery = out
        .split_whitespace()
        .find(|w| w.starts_with("dlv_"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let mut shown = String::new();
    for _ in 0..100 {
        let (ok, out) = herald_cli(
            &app,
            &["deliveries", "get", "--org", "acme", &delivery],
            None,
        )
        .await;
        assert!(ok, "{out}");
        shown = out;
        if shown.contains("receiver says hi") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        shown.contains("The last answer's body (first KiB):\nreceiver says hi"),
        "{shown}"
    );
    // Where it belongs, which its id alone does not say.
    assert!(shown.lines().any(|l| l.starts_with("event_id ")), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("webhook_id") && l.contains("wh_")),
        "{shown}"
    );
    // Its retry, made now rather than on its schedule, waits for the answer as a test does.
    let retry = ["deliveries", "retry", "--org", "acme", &delivery];
    let (ok, out) = herald_cli(&app, &retry, None).await;
    assert!(
        !ok && out.contains("the endpoint answered 500") && out.contains("tries again at"),
        "{out}"
    );
    rx.answer_by_default(crate::helpers::Reply::status(200));
    let (ok, out) = herald_cli(&app, &retry, None).await;
    assert!(
        ok && out.contains(&format!("Delivered {delivery}")) && out.contains("answered 200"),
        "{out}"
    );
    let (ok, out) = herald_cli(&app, &[&retry[..], &["--no-wait"]].concat(), None).await;
    assert!(
        ok && out.starts_with("ID") && out.contains("pending"),
        "{out}"
    );

    // An empty token (a variable that was not set) stops the command: it must not fall back
    // to the admin token.
    let (ok, out) = herald_cli(&app, &["orgs", "list", "--token", ""], None).await;
    assert!(
        !ok && out.contains("--token (or HERALD_TOKEN) is empty"),
        "{out}"
    );
    // A file an editor saved with a byte-order mark is read as the server reads it.
    let bom = std::env::temp_dir().join(format!("herald-bom-{}.json", std::process::id()));
    std::fs::write(
        &bom,
        "\u{feff}{\"type\": \"user.created\", \"data\": {\"user\": {\"id\": \"bom\"}}}",
    )
    .unwrap();
    let (ok, out) = herald_cli(
        &app,
        &["send", "--org", "acme", "--file", bom.to_str().unwrap()],
        None,
    )
    .await;
    let _ = std::fs::remove_file(&bom);
    assert!(ok && out.contains("false"), "{out}");
    // A refused token: where it came from, and how to give another.
    let (ok, out) = herald_cli(&app, &["orgs", "list", "--token", "not-the-token"], None).await;
    assert!(
        !ok && out.contains("401")
            && out.contains("the token was read from --token or HERALD_TOKEN"),
        "{out}"
    );
    // A misspelt variable is named, with the one it most likely meant.
    let misspelt = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["orgs", "list"])
        .env("HERALD_SERVER", &app.base)
        .env("HERALD_TOKEN", ADMIN_TOKEN)
        .env("HERALD_SERVR", "http://elsewhere.example")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&misspelt.stderr);
    assert!(
        misspelt.status.success() && said.contains("did you mean 'HERALD_SERVER'?"),
        "{said}"
    );
    // With --json, a refusal is the server's error object on standard output too.
    let bad_url = [
        "webhooks",
        "create",
        "--org",
        "acme",
        "--name",
        "x",
        "--url",
        "ftp://example.com/",
        "--json",
    ];
    let (ok, out) = herald_cli(&app, &bad_url, None).await;
    let printed: Value = serde_json::from_str(out.split("\nerror:").next().unwrap())
        .unwrap_or_else(|_| panic!("{out}"));
    assert!(!ok && printed["error"]["field"] == "url", "{out}");
    // A server address without its scheme is named before any request is made.
    let (ok, out) = herald_cli(&app, &["orgs", "list", "--server", "127.0.0.1:7600"], None).await;
    assert!(!ok && out.contains("give its scheme and host"), "{out}");
    // Several webhooks at once; one that does not exist is named, and the command fails.
    let mut made = Vec::new();
    for name in ["one", "two"] {
        let hook = app
            .create_webhook(
                &org,
                &format!("https://example.com/{name}"),
                json!({ "name": "twin" }),
            )
            .await;
        made.push(hook["id"].as_str().unwrap().to_owned());
    }
    // A name two webhooks share names neither: their ids are given instead.
    let (ok, out) = herald_cli(&app, &["webhooks", "get", "--org", "acme", "twin"], None).await;
    assert!(
        !ok && out.contains("2 webhooks are named 'twin'")
            && out.contains(&made[0])
            && out.contains(&made[1]),
        "{out}"
    );
    let missing = "wh_01bbbbbbbbbbbbbbbbbbbbbbbb";
    // Deleting asks first: it cancels what the webhooks still had to deliver.
    let delete = [
        "webhooks", "delete", "--org", "acme", &made[0], &made[1], missing,
    ];
    let (ok, out) = herald_cli(&app, &delete, None).await;
    assert!(
        !ok && out.contains("--yes")
            && out.contains("webhooks disable --org")
            && out.contains("<id>` for each"),
        "{out}"
    );
    let (ok, out) = herald_cli(&app, &delete[..5], None).await;
    assert!(
        !ok && out.contains(&format!("webhooks disable --org {org} {}`", made[0])),
        "one webhook, named in the advice: {out}"
    );
    let (status, _) = app
        .get(&format!("/v1/orgs/{org}/webhooks/{}", made[0]))
        .await;
    assert_eq!(status, StatusCode::OK, "deleted without --yes");
    let (ok, out) = herald_cli(&app, &[&delete[..], &["--yes"]].concat(), None).await;
    assert!(
        !ok && out.contains("Deleted 2 webhooks")
            && out.contains(&format!("no such webhook: {missing}")),
        "{out}"
    );
    let (status, _) = app
        .get(&format!("/v1/orgs/{org}/webhooks/{}", made[1]))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Purging history asks first, then says what went.
    let purge = ["orgs", "purge", "acme", "--before", "2020-01-01T00:00:00Z"];
    let (ok, out) = herald_cli(&app, &purge, None).await;
    assert!(!ok && out.contains("--yes"), "{out}");
    let (ok, out) = herald_cli(&app, &[&purge[..], &["--yes"]].concat(), None).await;
    assert!(
        ok && out.contains(
            "Purged 0 events, 0 deliveries and 0 attempts received before 2020-01-01T00:00:00Z."
        ),
        "{out}"
    );
    // Deleting an organization, which takes everything it owns, needs --yes.
    let (ok, out) = herald_cli(&app, &["orgs", "delete", "acme"], None).await;
    assert!(!ok && out.contains("--yes"), "{out}");
    let (status, _) = app.get(&format!("/v1/orgs/{org}")).await;
    assert_eq!(status, StatusCode::OK, "asked, not deleted");
    let (ok, out) = herald_cli(&app, &["orgs", "delete", "acme", "--yes", "--json"], None).await;
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert!(
        ok && answer == json!({ "id": org, "deleted": true }),
        "{out}"
    );
    let (status, _) = app.get(&format!("/v1/orgs/{org}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A reader that goes away (`herald orgs list | head -1`) ends the command quietly, and its
    // status is still the command's: a failure printed as JSON first is not a success. A
    // closed standard error is no panic (101) either.
    let closed = |args: &[&str], token: &str, close_stderr: bool| {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("HERALD_SERVER", &app.base)
            .env("HERALD_TOKEN", token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        if close_stderr {
            drop(child.stderr.take());
        }
        child.wait_with_output()
    };
    let out = closed(&["orgs", "list"], ADMIN_TOKEN, false).await.unwrap();
    let (status, errors) = (out.status, String::from_utf8_lossy(&out.stderr));
    assert!(
        status.success() && !errors.contains("panicked"),
        "{status}: {errors}"
    );
    let out = closed(&["orgs", "list", "--json"], "wrong-token", false)
        .await
        .unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{errors}");
    assert!(errors.contains("401"), "{errors}");
    let out = closed(&["orgs", "get", "nope"], ADMIN_TOKEN, true)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Polls `change` (a use case's future) until `stored` says its write is in the store, then
/// drops it without polling it again: what hyper does when the client disconnects. A change
/// that runs in a task of its own may finish between a look at the store and the next poll;
/// then nothing is dropped, and what follows checks the outcome all the same. Without such a
/// task the change cannot finish without being polled, so it is dropped every time.
pub(crate) async fn drop_once_stored<F, S>(change: F, mut stored: impl FnMut() -> S)
where
    F: std::future::Future,
    S: std::future::Future<Output = bool>,
{
    let mut change = std::pin::pin!(change);
    for _ in 0..5_000 {
        if futures::poll!(change.as_mut()).is_ready() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        if stored().await {
            return;
        }
    }
    panic!("the change never reached the store");
}

/// A revoked key and a paused webhook take effect in this node's memory even when the client
/// that asked goes away once the store has the change: the cached key and the organization's
/// cached webhooks are forgotten all the same, and what follows a switch is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_whose_client_went_away_still_reach_the_caches() {
    use herald::service::{Scope, auth, webhooks};
    use herald_core::{ApiKeyId, OrgId, WebhookId};
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let hook = app
        .create_webhook(&org, "http://127.0.0.1:9/h", json!({}))
        .await;
    let (status, key) = app
        .post(&format!("/v1/orgs/{org}/api-keys"), json!({ "name": "ci" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let token = key["key"].as_str().unwrap().to_owned();
    let event = json!({ "type": "user.created", "data": { "user": { "id": "u1" } } });
    // Both cached: the key by using it, the webhooks by an event.
    let (status, sent) = app
        .call(
            Method::POST,
            &format!("/v1/orgs/{org}/events"),
            &token,
            Some(event.clone()),
        )
        .await;
    assert_eq!(
        (status, sent["deliveries"].as_u64()),
        (StatusCode::ACCEPTED, Some(1))
    );

    let (org_id, state) = (OrgId::parse(&org).unwrap(), &app.state);
    let hook_id = WebhookId::parse(hook["id"].as_str().unwrap()).unwrap();
    let pause = webhooks::set_active(state, &Scope::Admin, &org_id, &hook_id, false, None);
    let paused = || async {
        !state
            .store
            .get_webhook(&org_id, &hook_id)
            .await
            .unwrap()
            .active
    };
    drop_once_stored(pause, paused).await;
    let mut deliveries = None;
    for _ in 0..100 {
        let (_, sent) = app
            .post(&format!("/v1/orgs/{org}/events"), event.clone())
            .await;
        deliveries = sent["deliveries"].as_u64();
        if deliveries == Some(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        deliveries,
        Some(0),
        "new events still fan out to the paused webhook"
    );
    // Enabled again the same way: what follows a switch (here `webhook.enabled`; after a pause,
    // the looks for deliveries left due) happens all the same.
    let resume = webhooks::set_active(state, &Scope::Admin, &org_id, &hook_id, true, None);
    let resumed = || async { !paused().await };
    drop_once_stored(resume, resumed).await;
    let mut told = 0;
    for _ in 0..100 {
        let (_, events) = app
            .get(&format!("/v1/orgs/{org}/events?type=webhook.enabled"))
            .await;
        told = events["data"].as_array().map_or(0, Vec::len);
        if told > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(told, 1, "no webhook.enabled for the organization");

    let key_id = ApiKeyId::parse(key["id"].as_str().unwrap()).unwrap();
    let revoke = auth::delete_api_key(state, &Scope::Admin, &org_id, &key_id);
    let revoked = || async { state.store.list_api_keys(&org_id).await.unwrap().is_empty() };
    drop_once_stored(revoke, revoked).await;
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        status = app
            .call(
                Method::GET,
                &format!("/v1/orgs/{org}/webhooks"),
                &token,
                None,
            )
            .await
            .0;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the revoked key is still admitted"
    );
}

/// Opens a connection and starts a request whose body declares `length` bytes but sends only
/// its first one, so the server holds it while it waits for the rest.
async fn start_slow_upload(app: &TestApp, path: &str, token: &str, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n["
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Waits until `/metrics` shows `bytes` of request bodies admitted.
async fn wait_for_bodies_in_flight(app: &TestApp, bytes: u64) {
    let gauge = "herald_request_body_bytes_in_flight";
    for _ in 0..200 {
        if app.metric(gauge).await == bytes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{gauge} never reached {bytes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_has_at_most_its_share_of_webhooks_and_event_types() {
    let app = TestApp::spawn_with(|s| {
        s.limits.max_webhooks_per_org = 2;
        s.limits.max_event_types_per_org = 1;
    })
    .await;
    let org = app.create_org("Acme").await;
    let hooks = format!("/v1/orgs/{org}/webhooks");
    let first = app
        .create_webhook(&org, "https://example.com/a", json!({}))
        .await;
    app.create_webhook(&org, "https://example.com/b", json!({}))
        .await;
    let third = json!({ "name": "c", "url": "https://example.com/c" });
    let (status, body) = app.post(&hooks, third.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("HERALD_MAX_WEBHOOKS_PER_ORG"), "{message}");
    // Another organization is not held to this one's count.
    let other = app.create_org("Globex").await;
    app.create_webhook(&other, "https://example.com/g", json!({}))
        .await;
    // Room again once one is deleted.
    let id = first["id"].as_str().unwrap();
    let (status, _) = app.delete(&format!("{hooks}/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.post(&hooks, third).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // And so with the event types it registers itself, whose schemas are kept small (every
    // change to the organization compiles them all again).
    let types = format!("/v1/orgs/{org}/event-types");
    let huge = json!({ "enum": (0..3000).map(|i| format!("value-{i}")).collect::<Vec<_>>() });
    let (status, body) = app
        .post(&types, json!({ "name": "invoice.huge", "schema": huge }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "schema", "{body}");
    let (status, body) = app.post(&types, json!({ "name": "invoice.paid" })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.post(&types, json!({ "name": "invoice.sent" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("HERALD_MAX_EVENT_TYPES_PER_ORG"),
        "{message}"
    );

    // And a hundred API keys at most (they are listed whole).
    let keys = format!("/v1/orgs/{org}/api-keys");
    for i in 0..100 {
        let (status, body) = app.post(&keys, json!({ "name": format!("k{i}") })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = app.post(&keys, json!({ "name": "one too many" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("100 API keys"), "{message}");
}

/// A handle taken before today's rules stays usable: the dashboard's settings form sends it back
/// with every change, which must not be refused for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_from_older_rules_is_kept_through_other_changes() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    let id = herald_core::OrgId::parse(&org).unwrap();
    let mut stored = app.state.store.get_org(&id).await.unwrap();
    stored.handle = herald_core::org::OrgHandle::from_trusted("acme..old-".to_owned());
    app.state.store.update_org(&stored).await.unwrap();
    app.state.directory.invalidate(&id);
    let path = format!("/v1/orgs/{org}");
    let (status, body) = app
        .patch(
            &path,
            json!({ "name": "Acme Corp", "handle": "acme..old-" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Acme Corp");
    let (status, body) = app.patch(&path, json!({ "handle": "acme..new-" })).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a new one follows them: {body}"
    );
}

/// A deleted webhook's delivery history stays readable by its id, to its organization only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_webhooks_history_stays_readable() {
    let app = TestApp::spawn().await;
    let rx = crate::helpers::TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/gone"), json!({})).await;
    let id = hook["id"].as_str().unwrap();
    app.send_event(
        &org,
        json!({ "type": "user.created", "id": "before-deletion", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    rx.wait_for("/gone", 1, std::time::Duration::from_secs(10))
        .await;
    let (status, _) = app.delete(&format!("/v1/orgs/{org}/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let history = format!("/v1/orgs/{org}/webhooks/{id}/deliveries");
    let (status, page) = app.get(&history).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
    // A filter that finds none of it is an empty page, not an unknown webhook.
    let (status, page) = app.get(&format!("{history}?state=pending")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page["data"].as_array().unwrap().is_empty(), "{page}");
    // Another organization's, or an id nothing went to: not found.
    let other = app.create_org("Globex").await;
    let (status, _) = app
        .get(&format!("/v1/orgs/{other}/webhooks/{id}/deliveries"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .get(&format!(
            "/v1/orgs/{org}/webhooks/wh_01j00000000000000000000000/deliveries"
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An organization's own type can be deleted, once no webhook depends on it; what was stored
/// of it stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_type_of_its_own_is_deleted_once_no_webhook_depends_on_it() {
    let app = TestApp::spawn().await;
    let rx = crate::helpers::TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let types = format!("/v1/orgs/{org}/event-types");
    let (status, _) = app
        .post(
            &types,
            json!({ "name": "invoice.paid", "channel": "billing" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Lists that come whole refuse a page size rather than ignore it.
    for path in [
        format!("{types}?limit=5"),
        format!("/v1/orgs/{org}/api-keys?cursor=x"),
        "/v1/event-types?limit=1".to_owned(),
    ] {
        let (status, err) = app.get(&path).await;
        assert_eq!(
            (status, err["error"]["code"].clone()),
            (StatusCode::BAD_REQUEST, json!("invalid_query")),
            "{path}: {err}"
        );
    }
    let (status, _) = app.get(&types).await;
    assert_eq!(status, StatusCode::OK);
    // Herald's own channel is not the organization's to fill: its webhooks trust what comes on it.
    let (status, err) = app
        .post(
            &types,
            json!({ "name": "fake.disabled", "channel": "operations" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "channel", "{err}");
    let by_name = app
        .create_webhook(&org, &rx.url("/n"), json!({ "events": ["invoice.paid"] }))
        .await;
    let paid = app
        .send_event(
            &org,
            json!({ "type": "invoice.paid", "id": "inv-1", "data": { "n": 1 } }),
        )
        .await;
    assert_eq!(paid["deliveries"], 1, "{paid}");

    let one = format!("{types}/invoice.paid");
    let (status, err) = app.delete(&one).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    // Named as people know it, with the id the API takes.
    let named = format!(
        "'{}' ({})",
        by_name["name"].as_str().unwrap(),
        by_name["id"].as_str().unwrap()
    );
    assert!(message.contains(&named), "{message}");
    let hook = format!(
        "/v1/orgs/{org}/webhooks/{}",
        by_name["id"].as_str().unwrap()
    );
    let (status, _) = app
        .patch(&hook, json!({ "channels": ["billing"], "events": [] }))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Subscribed to its channel, of which it is the only type: refused too.
    let (status, err) = app.delete(&one).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last type of the channel")
    );
    let (status, _) = app
        .post(
            &types,
            json!({ "name": "invoice.voided", "channel": "billing" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app.delete(&one).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let (_, listed) = app.get(&types).await;
    assert!(!listed.to_string().contains("invoice.paid"), "{listed}");
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!({ "type": "invoice.paid", "data": {} }),
        )
        .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_event_type")
    );
    let delivered = app
        .delivery_ids(&org, by_name["id"].as_str().unwrap())
        .await;
    let (status, detail) = app
        .get(&format!("/v1/orgs/{org}/deliveries/{}", delivered[0]))
        .await;
    assert_eq!(status, StatusCode::OK, "what was stored stays: {detail}");

    let (status, _) = app.delete(&one).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "already gone");
    let (status, err) = app.delete(&format!("{types}/user.created")).await;
    assert_eq!(status, StatusCode::CONFLICT, "a catalog's type: {err}");
    // Another organization's key sees none of it.
    let other = app.create_org("Globex").await;
    let (_, key) = app
        .post(
            &format!("/v1/orgs/{other}/api-keys"),
            json!({ "name": "theirs" }),
        )
        .await;
    let resp = app
        .http
        .delete(format!("{}{types}/invoice.voided", app.base))
        .bearer_auth(key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (status, _) = app.delete(&format!("{types}/invoice.voided")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "still the channel's last type"
    );
}

/// `herald send` to an organization whose events each go to many webhooks: a request whose
/// events would create more deliveries than one may (`too_many_deliveries`) is split as a body
/// too large is, and the requests after it carry no more than its halves did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_send_splits_what_would_create_too_many_deliveries() {
    let app = TestApp::spawn_with(|s| s.limits.max_deliveries_per_request = 1_000).await;
    let org = app.create_org("Fan").await;
    for name in ["a", "b"] {
        app.create_webhook(&org, &format!("https://example.com/{name}"), json!({}))
            .await;
    }
    let lines: Vec<String> = (0..2_000)
        .map(|i| {
            format!(r#"{{"type":"user.created","id":"fan-{i}","data":{{"user":{{"id":"u{i}"}}}}}}"#)
        })
        .collect();
    let refused = r#"herald_http_responses_total{class="4xx"}"#;
    let refused_before = app.metric(refused).await;
    let (ok, out) = herald_cli(&app, &["send", "--org", &org], Some(&lines.join("\n"))).await;
    // A thousand events (2,000 deliveries) refused, then sent as two of 500; then 500 at a time.
    assert!(
        ok && out.contains("2000 events sent in 4 requests: 2000 stored"),
        "{out}"
    );
    assert_eq!(app.metric(refused).await - refused_before, 1, "{out}");
    let (status, body) = app.get(&format!("/v1/orgs/{org}/events/fan-1999")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // With --json, what is printed is the answer, not the refusals that were split.
    let lines: Vec<String> = lines.iter().map(|l| l.replace("fan-", "json-")).collect();
    let send = ["send", "--org", &org, "--json"];
    let (ok, out) = herald_cli(&app, &send, Some(&lines.join("\n"))).await;
    // (Standard output first, then standard error's progress.)
    let printed = serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    assert!(
        ok && printed["deliveries"] == 4_000 && !out.contains("too_many_deliveries"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_may_create_at_most_so_many_deliveries() {
    let app = TestApp::spawn_with(|s| s.limits.max_deliveries_per_request = 4).await;
    let org = app.create_org("Acme").await;
    let mut hooks = Vec::new();
    for name in ["a", "b", "c"] {
        let hook = app
            .create_webhook(&org, &format!("https://example.com/{name}"), json!({}))
            .await;
        hooks.push(hook["id"].as_str().unwrap().to_owned());
    }
    let event =
        |id: &str| json!({ "type": "user.created", "id": id, "data": { "user": { "id": "u1" } } });
    let events = format!("/v1/orgs/{org}/events");

    // Two events to three webhooks each: six deliveries, over four. Nothing is stored.
    let (status, body) = app.post(&events, json!([event("e1"), event("e2")])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "too_many_deliveries", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("HERALD_MAX_DELIVERIES_PER_REQUEST")
            && message.contains("send fewer events"),
        "{message}"
    );
    assert!(app.delivery_ids(&org, &hooks[0]).await.is_empty());

    // One at a time they go; and a lone event goes whatever its fan-out, or nothing could.
    for id in ["e1", "e2"] {
        let (status, body) = app.post(&events, event(id)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    assert_eq!(app.delivery_ids(&org, &hooks[0]).await.len(), 2);
    // Sent again together (their answers lost, say), they create nothing and are answered as
    // duplicates, not refused for a fan-out they no longer have; a new one among them counts.
    let (status, body) = app.post(&events, json!([event("e1"), event("e2")])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 0, "{body}");
    assert_eq!(body["events"][1]["duplicate"], true, "{body}");
    let (status, body) = app
        .post(&events, json!([event("e1"), event("e3"), event("e4")]))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the first 3 events alone make 6 (not counting those stored already)"),
        "{message}"
    );
    let app = TestApp::spawn_with(|s| s.limits.max_deliveries_per_request = 1).await;
    let org = app.create_org("Acme").await;
    for name in ["a", "b"] {
        app.create_webhook(&org, &format!("https://example.com/{name}"), json!({}))
            .await;
    }
    let (status, body) = app
        .post(&format!("/v1/orgs/{org}/events"), json!([event("e1")]))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deliveries"], 2, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_kept_to_those_with_the_metrics_token() {
    let app = TestApp::spawn_with(|s| {
        // Read from the environment, a token may keep a stray newline.
        s.security.metrics_token = Some("scrape-me-0123456789\n".into());
    })
    .await;
    let scrape = |token: Option<&'static str>| {
        let mut request = app.http.get(format!("{}/metrics", app.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let resp = request.send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    let (status, body) = scrape(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("HERALD_METRICS_TOKEN"), "{body}");
    let (status, _) = scrape(Some("scrape-me-0123456788")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for token in ["scrape-me-0123456789", ADMIN_TOKEN] {
        let (status, body) = scrape(Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("herald_events_ingested_total"), "{body}");
    }
    // The scheme's case does not matter, as on the API.
    let resp = app
        .http
        .get(format!("{}/metrics", app.base))
        .header("authorization", "bearer scrape-me-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Reads what the server sends on `stream` until it closes the connection (at most 5 s).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_give_their_room_back() {
    let app = TestApp::spawn_with(|s| {
        s.server.max_body_bytes_in_flight = 8 * 1024;
        s.server.max_body_bytes = 8 * 1024;
        s.server.body_timeout_ms = 1_000;
        s.server.header_timeout_ms = 300;
    })
    .await;
    let org = app.create_org("Acme").await;
    let events = format!("/v1/orgs/{org}/events");

    // A producer trickling its body holds the whole budget only until its deadline (1 s, and
    // 125 ms for its 8 KiB); then it is told why, and the room is free again.
    let mut slow = start_slow_upload(&app, &events, ADMIN_TOKEN, 8 * 1024).await;
    wait_for_bodies_in_flight(&app, 8 * 1024).await;
    let answer = read_until_closed(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(
        answer.contains("send it faster or in smaller requests"),
        "{answer}"
    );
    assert!(answer.contains("connection: close"), "{answer}");
    wait_for_bodies_in_flight(&app, 0).await;
    let event =
        json!({ "type": "user.created", "id": "after", "data": { "user": { "id": "u1" } } });
    let (status, _) = app.post(&events, event).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Headers sent a piece at a time, and a connection left idle, are closed after the
    // header deadline instead of being kept open for as long as the client likes.
    let address = app.base.trim_start_matches("http://");
    let mut partial = TcpStream::connect(address).await.unwrap();
    partial
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: herald\r\n")
        .await
        .unwrap();
    read_until_closed(&mut partial).await;
    let mut idle = TcpStream::connect(address).await.unwrap();
    read_until_closed(&mut idle).await;
    // A client that sends requests and takes none of their answers is cut off once it has
    // taken nothing for as long, rather than holding the connection, and the answers queued
    // for it, for good: of 200 pipelined answers of the OpenAPI document (about 40 MB, far
    // past what the sockets' buffers hold), only what was buffered arrives.
    let mut greedy = TcpStream::connect(address).await.unwrap();
    let request = b"GET /openapi.json HTTP/1.1\r\nHost: herald\r\n\r\n";
    greedy.write_all(&request.repeat(200)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = read_until_closed(&mut greedy).await;
    let answered = answers.matches("HTTP/1.1 200 OK").count();
    assert!((1..200).contains(&answered), "{answered} answers arrived");

    // The dashboard's forms, which the budget does not count, have the same deadline.
    let mut stranger = start_slow_upload(&app, "/login", "not-a-token", 1024).await;
    let answer = read_until_closed(&mut stranger).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("took too long to arrive"), "{answer}");

    // The sign-in form is read before anyone is known, so a stranger may send only a little.
    let resp = app
        .http
        .post(format!("{}/login", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", "x".repeat(20 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_past_the_budget_wait_for_room_then_get_503() {
    let app = TestApp::spawn_with(|s| {
        s.server.max_body_bytes_in_flight = 8 * 1024;
        s.server.max_body_bytes = 8 * 1024;
        s.server.admission_wait_ms = 700;
    })
    .await;
    let org = app.create_org("Acme").await;
    let events = format!("/v1/orgs/{org}/events");
    let event = json!({ "type": "user.created", "id": "admitted-once", "data": { "user": { "id": "u1" } } });

    // Someone without a valid token cannot spend the budget by declaring a body, not even on
    // a route that reads its body before knowing who sends it (the dashboard's sign-in form).
    // An unauthenticated API request is refused before its body is read, so it would release
    // any share at once; this one would hold it while it waits for the rest.
    let _stranger = start_slow_upload(&app, "/login", "not-a-token", 8 * 1024).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = app.post(&events, event).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "an unauthenticated upload took room"
    );

    // An authenticated upload of 8 KiB, stalled after one byte, holds the whole budget.
    let slow = start_slow_upload(&app, &events, ADMIN_TOKEN, 8 * 1024).await;
    wait_for_bodies_in_flight(&app, 8 * 1024).await;

    // A write that finds no room waits, then is turned away with a 503 that says what to do.
    let started = std::time::Instant::now();
    let next =
        json!({ "type": "user.created", "id": "waited", "data": { "user": { "id": "u2" } } });
    let resp = app
        .http
        .post(format!("{}{events}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&next)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "it did not wait for room"
    );
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HERALD_MAX_BODY_BYTES_IN_FLIGHT"),
        "{body}"
    );
    assert_eq!(app.metric("herald_requests_shed_total").await, 1);

    // Reads are not held up.
    let (status, _) = app.get(&format!("/v1/orgs/{org}/event-types")).await;
    assert_eq!(status, StatusCode::OK);

    // A write that comes while the budget is spent gets in as soon as room frees up: here,
    // when the stalled upload's client goes away.
    let waiting = {
        let (http, url) = (app.http.clone(), format!("{}{events}", app.base));
        let next = next.clone();
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&next)
                .send()
                .await
                .unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!waiting.is_finished(), "the write did not wait for room");
    drop(slow);
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The write turned away earlier stored nothing: this one is new.
    assert_eq!(body["events"][0]["duplicate"], json!(false), "{body}");
    wait_for_bodies_in_flight(&app, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_organizations_flood_leaves_room_for_the_others_events() {
    // 8 KiB of room and bodies of at most 2 KiB: one organization holds 2 KiB at most.
    let app = TestApp::spawn_with(|s| {
        s.server.max_body_bytes_in_flight = 8 * 1024;
        s.server.max_body_bytes = 2 * 1024;
        s.server.admission_wait_ms = 500;
    })
    .await;
    // Organizations are counted in 64 rooms by a hash of their id: Globex must not share Acme's.
    let rooms = herald::api::BodyBudget::new(8 * 1024, 2 * 1024, Duration::from_secs(1));
    let acme = app.create_org("Acme").await;
    let mut globex = app.create_org("Globex").await;
    while rooms.tenant_room(&globex) == rooms.tenant_room(&acme) {
        globex = app.create_org("Globex").await;
    }
    let event =
        |id: &str| json!({ "type": "user.created", "id": id, "data": { "user": { "id": "u" } } });

    // Acme's producer stalls an upload that takes its whole share.
    let acme_events = format!("/v1/orgs/{acme}/events");
    let _stalled = start_slow_upload(&app, &acme_events, ADMIN_TOKEN, 2 * 1024).await;
    wait_for_bodies_in_flight(&app, 2 * 1024).await;

    // Globex's events get in at once, though the same (admin) token posts both.
    let (status, body) = app
        .post(&format!("/v1/orgs/{globex}/events"), event("globex-1"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Acme's next one waits for Acme's own, and is turned away saying why.
    let (status, body) = app.post(&acme_events, event("acme-2")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("this organization"), "{message}");

    // An API key counts against its own organization, whichever path it names: Globex's key on
    // Acme's path is admitted at once and refused by the API (counted against Acme's spent
    // share, it would have waited, then got 503).
    let (_, key) = app
        .post(
            &format!("/v1/orgs/{globex}/api-keys"),
            json!({ "name": "producer" }),
        )
        .await;
    let (status, body) = app
        .call(
            Method::POST,
            &acme_events,
            key["key"].as_str().unwrap(),
            Some(event("not-globex-s")),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// Changes checked against the organization as it is are made one at a time, so that requests
/// sent together cannot each pass the check the other's write breaks: of many opal webhooks
/// created at once (the profile allows one per organization) exactly one is; a type deleted
/// while a webhook subscribing to it is created is either still there or never subscribed to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_sent_together_are_checked_one_after_another() {
    let app = TestApp::spawn().await;
    let (status, org) = app
        .post(
            "/v1/orgs",
            json!({ "name": "Acme Inc", "catalogs": ["opal", "optare"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{org}");
    let org = org["id"].as_str().unwrap().to_owned();
    let hooks = format!("/v1/orgs/{org}/webhooks");

    let creates = (0..16).map(|i| {
        app.post(
            &hooks,
            json!({ "name": format!("opal {i}"), "url": "https://example.com/o", "profile": "opal" }),
        )
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );

    for round in 0..8 {
        let name = format!("race.t{round}");
        let (status, body) = app
            .post(
                &format!("/v1/orgs/{org}/event-types"),
                json!({ "name": name }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let path = format!("/v1/orgs/{org}/event-types/{name}");
        let ((subscribed, _), (deleted, _)) = tokio::join!(
            app.post(
                &hooks,
                json!({ "name": format!("sub {round}"), "url": "https://example.com/s", "events": [name] }),
            ),
            app.delete(&path),
        );
        assert!(
            !(subscribed == StatusCode::CREATED && deleted == StatusCode::NO_CONTENT),
            "round {round}: a webhook subscribes to a type deleted under it"
        );
    }
}

/// Every change to an organization reloads it; the schemas its types' events compiled go on
/// to the new snapshot instead of being compiled again (a thousand 16 KiB schemas took 1.5 s
/// of CPU to compile after each change, and both sets were held meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_schemas_outlive_their_organizations_reloads() {
    let app = TestApp::spawn().await;
    let org = app.create_org("Acme").await;
    app.register_group_synced(&org).await;
    let event = json!({ "type": "group.synced", "data": { "group": "admins" } });
    let (status, body) = app.post(&format!("/v1/orgs/{org}/events"), event).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let id = herald_core::OrgId::parse(&org).unwrap();
    let compiled = |s: &herald_core::directory::OrgSnapshot| {
        let resolved = s.resolve_type("group.synced").unwrap();
        resolved.validator.map(|v| v as *const _ as usize)
    };
    // Held, so that a validator compiled again could not take the same address.
    let before = app.state.directory.snapshot(&id).await.unwrap();
    app.create_webhook(&org, "https://example.com/h", json!({}))
        .await;
    let after = app.state.directory.snapshot(&id).await.unwrap();
    assert!(
        !std::sync::Arc::ptr_eq(&before, &after),
        "the change reloaded it"
    );
    assert!(compiled(&before).is_some());
    assert_eq!(compiled(&after), compiled(&before), "the same validator");
    // Dropped only once no snapshot of the organization is cached (it was deleted, here or on
    // another node, or not used since a change).
    app.state.directory.forget_unused_schemas();
    let cached = app.state.directory.snapshot(&id).await.unwrap();
    assert_eq!(compiled(&cached), compiled(&before), "kept while cached");
    app.state.directory.invalidate(&id);
    app.state.directory.forget_unused_schemas();
    let reloaded = app.state.directory.snapshot(&id).await.unwrap();
    assert_ne!(compiled(&reloaded), compiled(&before), "compiled again");
    // It still refuses what its schema refuses.
    let wrong = json!({ "type": "group.synced", "data": { "group": 7 } });
    let (status, body) = app.post(&format!("/v1/orgs/{org}/events"), wrong).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}
