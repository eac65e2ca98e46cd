//! Security stories: the SSRF guard (only loopback and names that resolve locally are used).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, TestReceiver};

/// An app with Herald's default address policy: nothing but public addresses.
async fn strict_app() -> TestApp {
    TestApp::spawn_with(|s| s.security.allow_private_networks.clear()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_literal_non_public_address_is_refused_when_the_webhook_is_created() {
    let app = strict_app().await;
    let org = app.create_org("Acme").await;
    for (url, kind) in [
        ("http://127.0.0.1:9000/h", "loopback"),
        ("http://localhost:9000/h", "loopback"),
        ("http://[::1]:9000/h", "loopback"),
        ("http://[::ffff:127.0.0.1]/h", "loopback"),
        ("http://10.0.0.8/h", "private"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://100.64.1.1/h", "carrier-grade NAT"),
        ("http://0.0.0.0/h", "unspecified"),
    ] {
        let (status, err) = app
            .post(
                &format!("/v1/orgs/{org}/webhooks"),
                json!({ "name": "x", "url": url }),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {err}");
        assert_eq!(err["error"]["field"], "url");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(kind) && message.contains("HERALD_ALLOW_PRIVATE_NETWORKS"),
            "{url}: {message}"
        );
    }
}

/// This machine's own name, which resolves locally (to loopback here, or a private address),
/// and what it resolves to.
async fn local_name() -> (String, Vec<std::net::SocketAddr>) {
    let host = std::fs::read_to_string("/etc/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let resolved: Vec<_> = tokio::net::lookup_host((host.as_str(), 80))
        .await
        .expect("the host name resolves")
        .collect();
    assert!(
        resolved
            .iter()
            .all(|a| herald_core::address_policy::AddressPolicy::default()
                .check(a.ip())
                .is_err()),
        "this test needs the machine's name to resolve to a non-public address: {resolved:?}"
    );
    (host, resolved)
}

/// Gives the webhook `url` in the store, past the API's checks: what a webhook created while
/// its host name resolved to a public address becomes once the name resolves elsewhere.
async fn moved_behind_the_api(app: &TestApp, org: &str, id: &str, url: &str) {
    let (org, id) = (
        herald_core::OrgId::parse(org).unwrap(),
        herald_core::WebhookId::parse(id).unwrap(),
    );
    let mut stored = app.state.store.get_webhook(&org, &id).await.unwrap();
    stored.url = herald_core::webhook::WebhookUrl::parse(url).unwrap();
    app.state.store.update_webhook(&stored).await.unwrap();
    app.state.directory.invalidate(&org);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_a_non_public_address_is_refused_when_the_webhook_is_created() {
    let app = strict_app().await;
    let org = app.create_org("Acme").await;
    let (host, _) = local_name().await;
    let url = format!("http://{host}:9000/h");
    let (status, err) = app
        .post(
            &format!("/v1/orgs/{org}/webhooks"),
            json!({ "name": "x", "url": url }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "url", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{host} resolves to a ")),
        "{message}"
    );
    assert!(
        message.contains("HERALD_ALLOW_PRIVATE_NETWORKS"),
        "{message}"
    );
    // Changing a webhook's URL to it is refused the same way; a name that does not resolve
    // (yet) is taken, as DNS may change: deliveries check again.
    let hook = app
        .create_webhook(&org, "http://no-such-host.invalid/h", json!({}))
        .await;
    let (status, err) = app
        .patch(
            &format!("/v1/orgs/{org}/webhooks/{}", hook["id"].as_str().unwrap()),
            json!({ "url": url }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_a_non_public_address_is_blocked_at_delivery() {
    let app = strict_app().await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let (host, resolved) = local_name().await;
    // Created while its name resolved to a public address; it resolves locally now (a
    // rebinding): what the store holds is what a change of DNS would make of it.
    let hook = app
        .create_webhook(
            &org,
            "http://no-such-host.invalid/h",
            json!({ "retry_schedule": [0] }),
        )
        .await;
    let url = format!("http://{host}:{}/h", rx.addr.port());
    moved_behind_the_api(&app, &org, hook["id"].as_str().unwrap(), &url).await;
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    let delivery = app
        .delivery_ids(&org, hook["id"].as_str().unwrap())
        .await
        .remove(0);
    let d = app
        .wait_for_delivery(&org, &delivery, |d| d["state"] == "failed")
        .await;
    assert_eq!(d["attempts"][0]["error"], "blocked", "{d}");
    let message = d["attempts"][0]["error_message"].as_str().unwrap();
    assert!(
        message.contains("HERALD_ALLOW_PRIVATE_NETWORKS"),
        "{message}"
    );
    // The tenant sees the kind of address, not the address its name resolved to.
    for addr in &resolved {
        assert!(!message.contains(&addr.ip().to_string()), "{message}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.received().is_empty(), "nothing reached the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websub_verification_goes_through_the_same_guard() {
    let app = TestApp::spawn_with(|s| {
        s.security.allow_private_networks.clear();
        s.security.allow_insecure_urls = true;
    })
    .await;
    let rx = TestReceiver::start().await;
    let org = app.create_org("Acme").await;
    let (host, _) = local_name().await;
    // Its name resolves locally only since it was created (as at delivery, above).
    let hook = app
        .create_webhook(
            &org,
            "http://no-such-host.invalid/h",
            json!({ "verification": "websub", "channels": ["user"] }),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    let url = format!("http://{host}:{}/h", rx.addr.port());
    moved_behind_the_api(&app, &org, id, &url).await;
    let (_, active) = app
        .post(&format!("/v1/orgs/{org}/webhooks/{id}/activate"), json!({}))
        .await;
    let sub = &active["subscriptions"][0];
    assert_eq!(sub["state"], "failed", "{active}");
    assert!(
        sub["reason"].as_str().unwrap().contains("not allowed"),
        "{sub}"
    );
    assert!(rx.received().is_empty());
}

const KEY_1: &str = "8f3c2d1e0a9b8c7d6e5f4a3b2c1d0e0f1a2b3c4d5e6f708192a3b4c5d6e7f809";
const KEY_2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The custom headers column as stored in the database file, one JSON text per webhook.
fn stored_headers(dir: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(dir.join("herald.db")).unwrap();
    let mut stmt = conn.prepare("SELECT headers FROM webhooks").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// The secret columns as stored in the database file.
fn stored_secrets(dir: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(dir.join("herald.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT secret, COALESCE(previous_secret, '') FROM webhooks")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(vec![r.get::<_, String>(0)?, r.get::<_, String>(1)?])
    })
    .unwrap()
    .flat_map(|r| r.unwrap())
    .filter(|s| !s.is_empty())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_and_survive_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let rx = TestReceiver::start().await;

    // Written before any key: plain.
    let app = TestApp::spawn_with(|s| s.storage.data_dir = data.clone()).await;
    let org = app.create_org("Acme").await;
    let plain_hook = app
        .create_webhook(
            &org,
            &rx.url("/a"),
            json!({ "headers": { "Authorization": "Bearer plain-receiver-token" } }),
        )
        .await;
    let plain_secret = plain_hook["secret"].as_str().unwrap().to_owned();
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stored_secrets(&data).contains(&plain_secret));
    assert!(stored_headers(&data)[0].contains("plain-receiver-token"));

    // With a key: what was plain is encrypted on start, new secrets are sealed.
    let app = TestApp::spawn_with(|s| {
        s.storage.data_dir = data.clone();
        s.encryption.encryption_key = Some(KEY_1.into());
    })
    .await;
    let sealed_hook = app
        .create_webhook(
            &org,
            &rx.url("/b"),
            json!({ "events": ["session.revoked"], "headers": { "X-Api-Key": "sealed-receiver-key" } }),
        )
        .await;
    let sealed_secret = sealed_hook["secret"].as_str().unwrap().to_owned();
    // Custom headers (credentials, often) are kept like the secrets, and shown as given.
    let headers = stored_headers(&data);
    assert!(
        headers.iter().all(|h| h.contains("enc:v2:")
            && !h.contains("plain-receiver-token")
            && !h.contains("sealed-receiver-key")),
        "{headers:?}"
    );
    assert_eq!(sealed_hook["headers"]["x-api-key"], "sealed-receiver-key");
    let stored = stored_secrets(&data);
    assert_eq!(stored.len(), 2);
    assert!(
        stored.iter().all(|s| s.starts_with("enc:v2:")),
        "{stored:?}"
    );
    assert!(
        !stored
            .iter()
            .any(|s| s.contains(&plain_secret[6..]) || s.contains(&sealed_secret[6..]))
    );
    app.send_event(
        &org,
        json!({ "type": "user.created", "data": { "user": { "id": "u1" } } }),
    )
    .await;
    let got = rx.wait_for("/a", 1, Duration::from_secs(10)).await;
    got[0].verify_standard(&plain_secret).unwrap();
    assert_eq!(
        got[0].header("authorization"),
        "Bearer plain-receiver-token"
    );
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Rotation: the new key with the old one listed re-encrypts everything on start…
    let app = TestApp::spawn_with(|s| {
        s.storage.data_dir = data.clone();
        s.encryption.encryption_key = Some(KEY_2.into());
        s.encryption.encryption_old_keys = vec![KEY_1.into()];
    })
    .await;
    let under_key_2: Vec<String> = stored_secrets(&data);
    let headers_under_key_2 = stored_headers(&data);
    assert_ne!(headers_under_key_2, headers, "headers are sealed again too");
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // …after which the old key is no longer needed.
    let app = TestApp::spawn_with(|s| {
        s.storage.data_dir = data.clone();
        s.encryption.encryption_key = Some(KEY_2.into());
    })
    .await;
    assert_eq!(stored_secrets(&data), under_key_2);
    assert_eq!(stored_headers(&data), headers_under_key_2);
    app.send_event(&org, json!({ "type": "session.revoked", "data": { "session": { "id": "s" }, "user": { "id": "u" } } })).await;
    let got = rx.wait_for("/b", 1, Duration::from_secs(10)).await;
    got[0].verify_standard(&sealed_secret).unwrap();
    assert_eq!(got[0].header("x-api-key"), "sealed-receiver-key");

    // Someone who can write the database but lacks the key copies one webhook's sealed headers
    // (a receiver's credential) to another, whose URL could be theirs: they do not open there,
    // and nothing is sent with them.
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let conn = rusqlite::Connection::open(data.join("herald.db")).unwrap();
        let moved = conn
            .execute(
                "UPDATE webhooks SET headers = (SELECT headers FROM webhooks WHERE id = ?1) \
                 WHERE id = ?2",
                [
                    sealed_hook["id"].as_str().unwrap(),
                    plain_hook["id"].as_str().unwrap(),
                ],
            )
            .unwrap();
        assert_eq!(moved, 1);
    }
    let app = TestApp::spawn_with(|s| {
        s.storage.data_dir = data.clone();
        s.encryption.encryption_key = Some(KEY_2.into());
    })
    .await;
    let before = rx.received_on("/a").len();
    let _ = app
        .post(
            &format!("/v1/orgs/{org}/events"),
            json!({ "type": "user.created", "data": { "user": { "id": "u2" } } }),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        rx.received_on("/a")
            .iter()
            .skip(before)
            .all(|r| r.header("x-api-key") != "sealed-receiver-key"),
        "a credential moved to another webhook was sent"
    );

    // Without the key, Herald refuses to start rather than send unsigned requests.
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut settings = herald::config::Settings::for_data_dir(data.clone());
    settings.encryption.encryption_key = Some(KEY_1.into());
    let err = herald::app::build(settings, std::sync::Arc::new(herald_core::SystemClock))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("not configured"), "{err:#}");
}

/// `herald serve` on `data_dir` with `setting`, which is to stop it at start; bounded: one that
/// took it would run until killed.
fn serve_refused(data_dir: &str, setting: (&str, &str)) -> std::process::Output {
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0"])
        .env(setting.0, setting.1)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while serve.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = serve.kill();
    serve.wait_with_output().unwrap()
}

/// Runs `herald migrate` with these arguments and environment, Herald's own variables cleared.
fn herald_migrate(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command.arg("migrate").args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("the herald binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_migrate_encrypts_stored_secrets_and_takes_only_what_opening_the_database_needs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let data_arg = data.to_str().unwrap();
    let rx = TestReceiver::start().await;
    let app = TestApp::spawn_with(|s| s.storage.data_dir = data.clone()).await;
    let org = app.create_org("Acme").await;
    let hook = app.create_webhook(&org, &rx.url("/a"), json!({})).await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    drop(app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stored_secrets(&data).contains(&secret));

    // A serve-only flag is refused, naming it, and nothing is touched.
    let out = herald_migrate(&["--data-dir", data_arg, "--listen", "127.0.0.1:1"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");
    assert!(stored_secrets(&data).contains(&secret));

    // With a key, migrating seals what was stored plain.
    let out = herald_migrate(
        &["--data-dir", data_arg],
        &[("HERALD_ENCRYPTION_KEY", KEY_1)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = herald_store::migrations::SQLITE.len();
    assert!(
        stdout.contains(&format!("is at the current schema (version {version})")),
        "{stdout}"
    );
    let stored = stored_secrets(&data);
    assert!(
        stored.len() == 1 && stored[0].starts_with("enc:v2:"),
        "{stored:?}"
    );

    // Under another key alone, it refuses and says why.
    let out = herald_migrate(
        &["--data-dir", data_arg],
        &[("HERALD_ENCRYPTION_KEY", KEY_2)],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is every key they were sealed with configured"),
        "{stderr}"
    );
    assert_eq!(stored_secrets(&data), stored);

    // Without any key too: started so, it would look healthy and fail every attempt and every
    // event of the webhook.
    let out = herald_migrate(&["--data-dir", data_arg], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is every key they were sealed with configured")
            && stderr.contains("which is not configured"),
        "{stderr}"
    );
    assert_eq!(stored_secrets(&data), stored);
}

/// A misspelt setting is named at start, not ignored without a word; a misspelt log level is
/// refused rather than turning every line off; a data directory that is a file is called so.
#[test]
fn settings_that_cannot_be_what_was_meant_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data_arg = dir.path().to_str().unwrap();
    let out = herald_migrate(
        &["--data-dir", data_arg],
        &[("HERALD_LEASE_SECOND", "10"), ("HERALD_TEST_ANYTHING", "x")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "HERALD_LEASE_SECOND is set, but Herald has no such setting (did you mean 'HERALD_LEASE_SECONDS'?)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("HERALD_TEST_ANYTHING"), "{stderr}");

    let out = herald_migrate(&["--data-dir", data_arg], &[("HERALD_LOG", "verbose")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("'verbose' is not a level")
            && stderr.contains("the value came from the environment variable HERALD_LOG"),
        "{stderr}"
    );
    // Given as a flag, the flag alone is named.
    let out = herald_migrate(&["--data-dir", data_arg, "--log", "verbose"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("for '--log <LOG>': 'verbose' is not a level")
            && !stderr.contains("HERALD_LOG"),
        "{stderr}"
    );

    // A value clap refuses is traced to the variable it came from, not only to the flag.
    let out = herald_migrate(
        &["--data-dir", data_arg],
        &[("HERALD_DATABASE_POOL_SIZE", "many")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("came from the environment variable HERALD_DATABASE_POOL_SIZE"),
        "{stderr}"
    );
    // Nor is an empty encryption key taken for none (secrets stored unencrypted without a
    // word); a key refused at start leaves no data directory behind.
    let fresh = dir.path().join("fresh");
    let fresh_arg = fresh.to_str().unwrap();
    let out = herald_migrate(&["--data-dir", data_arg], &[("HERALD_ENCRYPTION_KEY", "")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the encryption key is empty")
            && stderr.contains("came from the environment variable HERALD_ENCRYPTION_KEY"),
        "{stderr}"
    );
    let out = serve_refused(fresh_arg, ("HERALD_ENCRYPTION_KEY", "short"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("the encryption key (HERALD_ENCRYPTION_KEY, "),
        "{stderr}"
    );
    assert!(!fresh.exists(), "{stderr}");
    // Nor does a PostgreSQL that cannot be reached (where a node keeps only a token it
    // generates in the data directory).
    let unreachable = (
        "HERALD_DATABASE_URL",
        "postgres://postgres@127.0.0.1:1/herald",
    );
    let out = serve_refused(fresh_arg, unreachable);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is PostgreSQL running there"),
        "{stderr}"
    );
    assert!(!fresh.exists(), "{stderr}");
    // `migrate` upgrades a data directory that exists; a mistyped one is not made.
    let out = herald_migrate(&["--data-dir", fresh_arg], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("there is no data directory"),
        "{stderr}"
    );
    assert!(!fresh.exists(), "{stderr}");
    // An empty database URL (a template that rendered nothing) is not taken for PostgreSQL.
    let out = herald_migrate(&["--data-dir", data_arg], &[("HERALD_DATABASE_URL", "")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("empty: unset HERALD_DATABASE_URL to use the embedded database"),
        "{stderr}"
    );
    // Another database's URL, and a PostgreSQL database not created yet, say what to do.
    for (url, says) in [
        (
            "mysql://root@127.0.0.1/test",
            "'mysql://' is not a database Herald can use: give a PostgreSQL URL",
        ),
        (
            "postgres://postgres@127.0.0.1:5432/herald_never_created",
            "does not exist; create it first",
        ),
        (
            "postgres://herald_no_such_role@127.0.0.1:5432/postgres",
            "does not exist; name a user that exists in the URL",
        ),
    ] {
        let out = herald_migrate(&["--data-dir", data_arg], &[("HERALD_DATABASE_URL", url)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(says), "{stderr}");
    }
    // What answers on the port is not PostgreSQL: it says nothing, or it hangs up.
    for (silent, says) in [
        (
            true,
            "nothing there finished a PostgreSQL start-up within 3 s",
        ),
        (
            false,
            "the connection broke during the start-up: is that port PostgreSQL's?",
        ),
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < until {
                match listener.accept() {
                    Ok((connection, _)) if silent => kept.push(connection),
                    Ok(_) => {} // Dropped: closed at once.
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        for url in [
            format!("postgres://herald@127.0.0.1:{port}/herald"),
            format!("postgres://herald@127.0.0.1:{port}/herald?sslmode=disable"),
        ] {
            let out = herald_migrate(&["--data-dir", data_arg], &[("HERALD_DATABASE_URL", &url)]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(stderr.contains(says), "{url}: {stderr}");
        }
    }
    // Given on the command line too, the value is the flag's: no word of the variable.
    let out = herald_migrate(
        &["--data-dir", data_arg, "--database-pool-size=many"],
        &[("HERALD_DATABASE_POOL_SIZE", "many")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("'many'"), "{stderr}");
    assert!(!stderr.contains("environment variable"), "{stderr}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = herald_migrate(&["--data-dir", file.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is a file, not a directory"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_to_heralds_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    // One Herald creates is readable by its user alone.
    let fresh = dir.path().join("new/data");
    let mut server = crate::crash::Server::start_with(&fresh, &[]).await;
    server.child.kill().await.unwrap();
    let again = herald_migrate(&["--data-dir", fresh.to_str().unwrap()], &[]);
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.starts_with("The database in") && !said.contains("new one"),
        "{said}"
    );
    assert_eq!(mode(&fresh), 0o700);
    // And so are the database's files, which a directory others may reach into would not
    // protect.
    for file in ["herald.db", "herald.db-wal", "herald.db-shm"] {
        let path = fresh.join(file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
    }
    assert_eq!(mode(&fresh.join("herald.db")), 0o600);

    // One that others can read is left as it is, with a warning that says what to do.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = herald_migrate(&["--data-dir", shared.to_str().unwrap()], &[]);
    assert!(out.status.success());
    // A database made there is said to be new, not passed off as an existing one brought up
    // to date.
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("There was no database in") && said.contains("created a new one"),
        "{said}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("other users of this machine can reach into the data directory")
            && stderr.contains("chmod 700"),
        "{stderr}"
    );
    assert_eq!(mode(&shared), 0o755);
}

/// The server's log once a line containing `what` is in it (up to 10 s), and a moment more for
/// any line that should not follow.
async fn logged(server: &crate::crash::Server, what: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.log.lock().unwrap().iter().any(|l| l.contains(what))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.log.lock().unwrap().clone()
}

/// A token that is neither the admin token nor a current key is logged with the client's
/// address, once per 10 s whatever the number of tries, and nothing of the token but an API
/// key's public prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_logged_with_who_sent_them_and_not_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::crash::Server::start_with(dir.path(), &[]).await;
    let http = crate::helpers::http_client();
    let deleted_key = format!("hk_0a1b2c{}", "d".repeat(58));
    for _ in 0..5 {
        let resp = http
            .get(format!("{}/v1/orgs", server.base))
            .bearer_auth(&deleted_key)
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = http
        .get(format!("{}/v1/orgs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let log = logged(&server, "refused a bearer token").await;
    let refused: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("refused a bearer token"))
        .collect();
    assert_eq!(refused.len(), 1, "{log:#?}");
    let line = refused[0];
    for expected in [
        "client=\"127.0.0.1\"",
        "forwarded_for=\"203.0.113.9\"",
        "key_prefix=\"hk_0a1b2c\"",
        "path=\"/v1/orgs\"",
    ] {
        assert!(line.contains(expected), "{expected} in {line}");
    }
    assert!(!log.iter().any(|l| l.contains("dddddd")), "{log:#?}");

    // The dashboard's sign-in form says who tried too, once per 10 s.
    for _ in 0..3 {
        let resp = http
            .post(format!("{}/login", server.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={deleted_key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let log = logged(&server, "dashboard sign-in refused").await;
    let refused: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("dashboard sign-in refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{log:#?}");
    assert!(
        refused[0].contains("client=\"127.0.0.1\""),
        "{}",
        refused[0]
    );
    assert!(!log.iter().any(|l| l.contains("dddddd")), "{log:#?}");
    // Those held back are said once the 10 s are over, though no refusal came after them.
    let mut log = logged(&server, "sign-ins refused in the last 10 s").await;
    if !log.iter().any(|l| l.contains("sign-ins refused")) {
        // Its 10 s began before the wait did: on a loaded machine it may come just after.
        log = logged(&server, "sign-ins refused in the last 10 s").await;
    }
    let said = |what: &str| log.iter().find(|l| l.contains(what)).cloned();
    let api = said("refused more bearer tokens").unwrap_or_default();
    let dashboard = said("sign-ins refused in the last 10 s").unwrap_or_default();
    assert!(api.contains("refused=4"), "{log:#?}");
    assert!(dashboard.contains("refused=2"), "{log:#?}");
}

/// A network that sends more tokens that are not valid than `HERALD_TOKEN_FAILURES_PER_MINUTE`
/// allows gets 429 for its new tokens, unchecked, on the API, the sign-in form and `/metrics`;
/// a token it used before still passes; the warning names the network, not the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_tokens_is_held_back_per_network_and_tokens_in_use_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    // Three a minute: one more every 20 s, longer than this test takes.
    let server = crate::crash::Server::start_with(
        dir.path(),
        &[
            ("HERALD_TOKEN_FAILURES_PER_MINUTE", "3".into()),
            ("HERALD_METRICS_TOKEN", "metrics-token-0123456789".into()),
            ("HERALD_TRUSTED_PROXIES", "127.0.0.3".into()),
        ],
    )
    .await;
    let http = crate::helpers::http_client();
    let org = server
        .post_json("/v1/orgs", json!({ "name": "Acme" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A manager key made now, but not used from here yet.
    let key = server
        .post_json(
            &format!("/v1/orgs/{org}/api-keys"),
            json!({ "name": "ops", "role": "manager" }),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |token: &str| {
        http.get(format!("{}/v1/orgs", server.base))
            .bearer_auth(token)
            .send()
    };
    for guess in ["guess-1", "guess-2", "guess-3"] {
        assert_eq!(get(guess).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let held = get("guess-4").await.unwrap();
    assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = held.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = held.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_invalid_tokens");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("127.0.0.1") && message.contains("3 a minute"),
        "{message}"
    );
    // Held back unchecked: the right token, never used from here, is not let through either…
    assert_eq!(
        get(&key).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // …while the admin token, used from here before, still is.
    assert_eq!(
        get(crate::helpers::ADMIN_TOKEN).await.unwrap().status(),
        StatusCode::OK
    );
    // The sign-in form and /metrics answer the same.
    let sign_in = http
        .post(format!("{}/login", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=guess-5")
        .send()
        .await
        .unwrap();
    assert_eq!(sign_in.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(sign_in.headers().contains_key("retry-after"));
    let page = sign_in.text().await.unwrap();
    assert!(
        page.contains("more tokens that are not valid came from"),
        "{page}"
    );
    let scrape = http
        .get(format!("{}/metrics", server.base))
        .bearer_auth("guess-6")
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), StatusCode::TOO_MANY_REQUESTS);

    // Another network is not held back (127.0.0.2, another address of this machine).
    let from = |address: &str| {
        reqwest::Client::builder()
            .local_address(Some(address.parse().unwrap()))
            .build()
            .unwrap()
    };
    let other = from("127.0.0.2")
        .get(format!("{}/v1/orgs", server.base))
        .bearer_auth("guess-7")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    // Behind a trusted proxy (127.0.0.3), each client it forwards has an allowance of its own,
    // and the addresses a client writes in X-Forwarded-For before the proxy's are not believed.
    let proxy = from("127.0.0.3");
    let via_proxy = |token: &str, forwarded: &str| {
        proxy
            .get(format!("{}/v1/orgs", server.base))
            .bearer_auth(token)
            .header("x-forwarded-for", forwarded)
            .send()
    };
    for guess in ["guess-8", "guess-9", "guess-10"] {
        let answer = via_proxy(guess, "198.51.100.1").await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let held = via_proxy("guess-11", "198.51.100.1").await.unwrap();
    assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
    let message = held.json::<serde_json::Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("198.51.100.1"), "{message}");
    let answer = via_proxy("guess-12", "198.51.100.1, 198.51.100.2")
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);

    let metrics = http
        .get(format!("{}/metrics", server.base))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "herald_invalid_tokens_total 8",
        "herald_tokens_held_back_total 5",
    ] {
        assert!(
            metrics.lines().any(|line| line == expected),
            "{expected} in {metrics}"
        );
    }

    let log = logged(&server, "more tokens that are not valid").await;
    let spent: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("more tokens that are not valid"))
        .collect();
    assert_eq!(spent.len(), 1, "{log:#?}");
    assert!(spent[0].contains("network=127.0.0.1"), "{}", spent[0]);
    assert!(
        !log.iter()
            .any(|l| l.contains("guess-") || l.contains(&key[10..])),
        "{log:#?}"
    );

    // A key rotation: the new key is made and the old one revoked while some clients
    // (127.0.0.4) still send the old one. It is no guess: answered 401 each time, counting
    // nothing, so the new key from there is checked and let through.
    let rotating = from("127.0.0.4");
    let get_from = |token: &str| {
        rotating
            .get(format!("{}/v1/orgs", server.base))
            .bearer_auth(token)
            .send()
    };
    let old = server
        .post_json(
            &format!("/v1/orgs/{org}/api-keys"),
            json!({ "name": "old" }),
        )
        .await;
    let new = server
        .post_json(
            &format!("/v1/orgs/{org}/api-keys"),
            json!({ "name": "new" }),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_key = old["key"].as_str().unwrap();
    assert_eq!(get_from(old_key).await.unwrap().status(), StatusCode::OK);
    let revoked = http
        .delete(format!(
            "{}/v1/orgs/{org}/api-keys/{}",
            server.base,
            old["id"].as_str().unwrap()
        ))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    for _ in 0..10 {
        assert_eq!(
            get_from(old_key).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(get_from(&new).await.unwrap().status(), StatusCode::OK);
}
