//! A small W3C WebDriver client for the browser stories: starts `chromedriver` on a loopback
//! port, opens a headless Chromium session on a fresh profile, and speaks the few commands the
//! stories need over plain HTTP (reqwest, already a dependency), so no WebDriver crate has to
//! be built. Every wait is bounded; [`Browser::quit`] closes the browser, and dropping the
//! `Browser` kills what is left of chromedriver and Chromium, by process id, even after a
//! panic.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key under which WebDriver answers an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    session: String,
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
}

/// Panics with what to install when Chromium or chromedriver is missing.
pub fn require_chromium() {
    for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")] {
        assert!(
            Path::new(path).exists(),
            "the browser tests need {what} at {path}: install Debian's packages with \
             `apt-get update && apt-get install -y chromium chromium-driver` (.ci/run does this)"
        );
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        require_chromium();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut browser = Browser {
            http,
            session: format!("http://127.0.0.1:{port}"),
            child,
            _profile: profile,
        };
        browser.wait_for_driver().await;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-crash-reporter",
            "--disable-breakpad",
            &format!("--user-data-dir={}", browser._profile.path().display()),
            &format!("--window-size={width},{height}"),
        ];
        let created = browser
            .command(
                reqwest::Method::POST,
                "/session",
                json!({ "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    // Confirmation dialogs (`data-confirm`) are accepted, as a person would.
                    "unhandledPromptBehavior": "accept",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                }}}),
            )
            .await;
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"));
        browser.session = format!("{}/session/{id}", browser.session);
        browser.resize(width, height).await;
        browser
    }

    async fn wait_for_driver(&self) {
        for _ in 0..100 {
            if let Ok(resp) = self
                .http
                .get(format!("{}/status", self.session))
                .send()
                .await
                && resp.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer within 10 s");
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("chromedriver answers");
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "WebDriver {path}: {status} {value}");
        value
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, body).await["value"].take()
    }

    async fn get(&self, path: &str) -> Value {
        self.command(reqwest::Method::GET, path, Value::Null).await["value"].take()
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await;
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    pub async fn url(&self) -> String {
        self.get("/url")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.script("return document.body.innerText;").await
    }

    pub async fn script(&self, script: &str) -> String {
        let v = self
            .post("/execute/sync", json!({ "script": script, "args": [] }))
            .await;
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    }

    /// The first element matching `css`, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let resp = self
            .http
            .post(format!("{}/element", self.session))
            .json(&json!({ "using": "css selector", "value": css }))
            .send()
            .await
            .expect("chromedriver answers");
        if !resp.status().is_success() {
            return None;
        }
        let v: Value = resp.json().await.ok()?;
        v["value"][ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits (up to 10 s) for an element matching `css`.
    pub async fn wait_for(&self, css: &str) -> String {
        for _ in 0..100 {
            if let Some(e) = self.find(css).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no element '{css}' on {} within 10 s; the page says:\n{}",
            self.url().await,
            self.text().await
        );
    }

    pub async fn click(&self, css: &str) {
        let e = self.wait_for(css).await;
        self.post(&format!("/element/{e}/click"), json!({})).await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        self.post(&format!("/element/{e}/clear"), json!({})).await;
        self.post(&format!("/element/{e}/value"), json!({ "text": text }))
            .await;
    }

    pub async fn element_text(&self, css: &str) -> String {
        let e = self.wait_for(css).await;
        self.get(&format!("/element/{e}/text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Reloads the page until its text contains `wanted` (up to `within`).
    pub async fn reload_until(&self, wanted: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let text = self.text().await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "'{wanted}' never showed on {}; the page says:\n{text}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.post("/refresh", json!({})).await;
        }
    }

    /// Reloads the page until an element matches `css` (up to `within`).
    pub async fn reload_until_found(&self, css: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.find(css).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no '{css}' on {} after reloading for {within:?}; the page says:\n{}",
                self.url().await,
                self.text().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.post("/refresh", json!({})).await;
        }
    }

    /// Saves a screenshot of the viewport as `target/screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Saves the whole page, however long, by sizing the window to it first.
    pub async fn full_screenshot(&self, name: &str, width: u32) -> PathBuf {
        // Measured at a small height first, so that a short page is not padded to the last
        // long one's height.
        self.resize(width, 400).await;
        let height: u32 = self
            .script("return String(document.documentElement.scrollHeight);")
            .await
            .parse()
            .unwrap_or(900);
        // The window is a little taller than the viewport it shows.
        self.resize(width, (height + 120).clamp(400, 6000)).await;
        self.script("window.scrollTo(0, 0); return '';").await;
        self.screenshot(name).await
    }

    /// Closes the browser session (Chromium exits) and stops chromedriver.
    pub async fn quit(mut self) {
        let _ = self.http.delete(&self.session).send().await;
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failed story, whatever is left: chromedriver's descendants and any process
        // using this story's profile directory (Chromium's helpers), each by its id.
        let profile = self._profile.path().display().to_string();
        let mut pids = descendants(self.child.id());
        pids.extend(processes_mentioning(&profile));
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Every process's parent, from `/proc`.
fn parents() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name in parentheses may hold spaces; the parent comes after it.
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

fn descendants(root: Option<u32>) -> Vec<u32> {
    let Some(root) = root else {
        return Vec::new();
    };
    let all = parents();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    found
}

fn processes_mentioning(needle: &str) -> Vec<u32> {
    parents()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

pub fn screenshots_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("screenshots")
}
