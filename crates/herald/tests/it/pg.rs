//! What the PostgreSQL tests share: a scratch database of their own (so parallel tests and
//! reruns never collide), a receiver that records when each request started and ended, and a
//! TCP proxy between Herald and PostgreSQL that a test can cut and restore.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// A database created for one test and dropped when it ends, in the server that
/// `HERALD_TEST_DATABASE_URL` names.
pub struct TestDatabase {
    /// The URL of the scratch database.
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// `None` (with a notice) when `HERALD_TEST_DATABASE_URL` is not set.
    pub async fn create(test: &str) -> Option<Self> {
        let Ok(admin_url) = std::env::var("HERALD_TEST_DATABASE_URL") else {
            eprintln!(
                "HERALD_TEST_DATABASE_URL is not set: skipping {test} (./scripts/test sets it when PostgreSQL runs)"
            );
            return None;
        };
        let name = format!("herald_it_{:016x}", rand::random::<u64>());
        admin(&admin_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("creating the test database");
        let url = with_database(&admin_url, &name);
        Some(Self {
            url,
            admin_url,
            name,
        })
    }

    /// A connection to the scratch database, for the test's own checks.
    pub async fn connect(&self) -> tokio_postgres::Client {
        admin(&self.url).await
    }

    /// The scratch database's URL with `sslmode=verify-full`, trusting the test server's own
    /// (self-signed) certificate file and connecting by the name it is made out to, at the
    /// server's address, when the server is on this machine; else the URL as it is.
    pub async fn verified_url(&self) -> String {
        let address = server_address(&self.url);
        let Some(port) = ["127.0.0.1:", "localhost:"]
            .iter()
            .find_map(|host| address.strip_prefix(host))
        else {
            eprintln!("the test server is not on this machine: not checking its certificate");
            return self.url.clone();
        };
        let cert: String = self
            .connect()
            .await
            .query_one("SHOW ssl_cert_file", &[])
            .await
            .unwrap()
            .get(0);
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in", &cert])
            .output()
            .expect("reading the test server's certificate with openssl");
        let names = String::from_utf8_lossy(&out.stdout).into_owned();
        let name = names
            .split([',', '\n', ' '])
            .find_map(|part| part.strip_prefix("DNS:"))
            .unwrap_or_else(|| panic!("{cert} names no host: {names}"));
        let url = self.url.replacen(&address, &format!("{name}:{port}"), 1);
        let join = if url.contains('?') { '&' } else { '?' };
        format!("{url}{join}hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={cert}")
    }

    /// Asserts that Herald has at least `least` connections open to the scratch database,
    /// and that every one of them is encrypted.
    pub async fn assert_herald_connections_encrypted(&self, least: i64) {
        let row = self
            .connect()
            .await
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.datname = current_database() AND a.application_name = 'herald'",
                &[],
            )
            .await
            .unwrap();
        let (all, encrypted): (i64, i64) = (row.get(0), row.get(1));
        assert!(
            all >= least,
            "{all} Herald connections, expected at least {least}"
        );
        assert_eq!(encrypted, all, "Herald connections in the clear");
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which must not block on itself: use a thread.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    admin(&url)
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connecting to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// The same URL with another database name.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let server = base.rsplit_once('/').map(|(s, _)| s).unwrap_or(base);
    format!("{server}/{name}{query}")
}

/// The URL's host and port, for the proxy to connect to.
pub fn server_address(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split_once('@').map(|(_, h)| h).unwrap_or(rest);
    let host = host.split(['/', '?']).next().unwrap();
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// The URL with the host and port replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, hostpath) = match rest.split_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath
        .find(['/', '?'])
        .map(|i| &hostpath[i..])
        .unwrap_or("");
    format!("{scheme}://{user}{addr}{path}")
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Visit {
    /// The delivery (the `webhook-id` header).
    pub delivery: String,
    /// The event's `data.user.id`.
    pub key: String,
    pub started: Instant,
    pub ended: Instant,
}

/// A real HTTP endpoint on loopback that takes a few milliseconds per request and records when
/// each started and ended, so that two attempts of one delivery at once can be seen.
#[derive(Clone)]
pub struct TimingReceiver {
    pub addr: SocketAddr,
    visits: Arc<Mutex<Vec<Visit>>>,
}

impl TimingReceiver {
    pub async fn start(work: Duration) -> Self {
        let visits = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = visits.clone();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let record = record.clone();
                async move {
                    let started = Instant::now();
                    tokio::time::sleep(work).await;
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let delivery = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    record.lock().unwrap().push(Visit {
                        delivery,
                        key: json["data"]["user"]["id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        started,
                        ended: Instant::now(),
                    });
                    axum::http::StatusCode::OK
                }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, visits }
    }

    pub fn url(&self) -> String {
        format!("http://{}/sink", self.addr)
    }

    pub fn visits(&self) -> Vec<Visit> {
        self.visits.lock().unwrap().clone()
    }

    /// The requests of each delivery that was attempted more than once.
    pub fn repeats(&self) -> HashMap<String, Vec<Visit>> {
        let mut by_delivery: HashMap<String, Vec<Visit>> = HashMap::new();
        for v in self.visits() {
            by_delivery.entry(v.delivery.clone()).or_default().push(v);
        }
        by_delivery.retain(|_, v| v.len() > 1);
        by_delivery
    }
}

/// Asserts that no delivery had two requests in progress at the same moment.
pub fn assert_never_at_once(repeats: &HashMap<String, Vec<Visit>>) {
    for (delivery, visits) in repeats {
        let mut visits = visits.clone();
        visits.sort_by_key(|v| v.started);
        for pair in visits.windows(2) {
            assert!(
                pair[1].started >= pair[0].ended,
                "delivery {delivery} was attempted twice at once: {:?}",
                pair
            );
        }
    }
}

/// A TCP forwarder on loopback between Herald and PostgreSQL. `cut` closes every connection
/// through it and refuses new ones (the database is "away"); `hang` keeps every connection open
/// and forwards nothing (a network partition: nothing answers, nothing is refused); `restore`
/// closes what hung and lets connections through again. Other tests using the same PostgreSQL
/// server are not disturbed.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Through>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Through {
    Up,
    Cut,
    Hung,
}

impl Proxy {
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, watch_mode) = watch::channel(Through::Up);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut now = watch_mode.clone();
                let mode = *now.borrow();
                match mode {
                    Through::Cut => {
                        drop(client); // refused: the database is away
                        continue;
                    }
                    Through::Hung => {
                        // Held, unanswered, until the partition ends.
                        tokio::spawn(async move {
                            let _held = client;
                            let _ = now.wait_for(|m| *m != Through::Hung).await;
                        });
                        continue;
                    }
                    Through::Up => {}
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    let hung = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        left = now.wait_for(|m| *m != Through::Up) => {
                            left.is_ok_and(|m| *m == Through::Hung)
                        }
                    };
                    // Cut: both sockets close now. Hung: nothing more is forwarded, and both
                    // close when it ends.
                    if hung {
                        let _ = now.wait_for(|m| *m != Through::Hung).await;
                    }
                });
            }
        });
        Self { addr, mode }
    }

    pub fn cut(&self) {
        self.mode.send_replace(Through::Cut);
    }

    pub fn hang(&self) {
        self.mode.send_replace(Through::Hung);
    }

    pub fn restore(&self) {
        self.mode.send_replace(Through::Up);
    }
}

/// Waits (up to `within`) until no delivery of the database is pending: every outcome was
/// stored, the last of them perhaps after the receiver saw the last request.
pub async fn wait_until_none_pending(db: &TestDatabase, within: Duration) {
    let client = db.connect().await;
    let deadline = Instant::now() + within;
    loop {
        let pending: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} deliveries stay pending: their outcomes were not stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
