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

use crate::helpers::{ADMIN_TOKEN, TestReceiver};

/// A `herald serve` process on a port of its own.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_DATA_DIR", data_dir)
            .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("HERALD_LOG", "info")
            .env("HERALD_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the herald binary starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let read_address = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("address=").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_owned();
                }
            }
            panic!("the server exited before it listened");
        };
        let addr = tokio::time::timeout(Duration::from_secs(20), read_address)
            .await
            .expect("the server listens within 20 s");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            base: format!("http://{addr}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_is_delivered_after_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let http = reqwest::Client::new();
    let mut server = Server::start(dir.path()).await;

    let post = |base: &str, path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let org: serde_json::Value = post(&server.base, "/v1/orgs", json!({ "name": "Acme" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org = org["id"].as_str().unwrap().to_owned();
    let resp = post(
        &server.base,
        &format!("/v1/orgs/{org}/webhooks"),
        json!({ "name": "sink", "url": rx.url("/sink") }),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

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

    let _restarted = Server::start(dir.path()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: HashSet<String> = rx
            .received_on("/sink")
            .iter()
            .map(|r| r.json()["data"]["user"]["id"].as_str().unwrap().to_owned())
            .collect();
        let missing = acked.difference(&delivered).count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} acknowledged events were never delivered",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
