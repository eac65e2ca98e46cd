//! Wiring: opens the store, builds the directory, dispatcher and authenticator into an
//! [`AppState`], and runs the HTTP server with the scheduler beside it until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use herald_core::address_policy::AddressPolicy;
use herald_core::directory::Directory;
use herald_core::store::Store;
use herald_core::{Clock, Timestamp};
use herald_dispatch::{DispatchSettings, Dispatcher, HttpClient, scheduler, websub};
use herald_store::cipher::SecretCipher;
use herald_store::{PostgresOptions, PostgresStore, SqliteStore};

use crate::api::BodyBudget;
use crate::config::{EncryptionSettings, Settings, StorageSettings};
use crate::data_dir::{self, MIN_ADMIN_TOKEN_LEN};
use crate::database_lock::DatabaseLock;
use crate::metrics::Metrics;
use crate::service::auth::Authenticator;

/// Everything a request handler or use case needs. Cloned for every request (axum's `State`,
/// the response counter), so it is one shared allocation: a clone is one reference count, not
/// one per field, each a cache line the two cores pass back and forth.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub directory: Arc<Directory>,
    pub dispatcher: Dispatcher,
    pub clock: Arc<dyn Clock>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// Which non-public addresses webhooks may point at.
    pub address_policy: Arc<AddressPolicy>,
    pub settings: Arc<Settings>,
    /// Wakes the retention task (tests move the clock and wake it).
    pub maintenance: Arc<tokio::sync::Notify>,
    /// The dashboard's sign-in sessions (in this node's memory).
    pub sessions: Arc<crate::dashboard::Sessions>,
    /// Room for the request bodies this node holds at once (`api::admission`).
    pub admission: Arc<BodyBudget>,
    /// Each webhook's backlog as last counted for `/metrics`.
    pub backlog: Arc<crate::metrics::BacklogCount>,
    /// Whether a check of every WebSub webhook's topics is running
    /// (`service::subscriptions::subscribe_all_new_topics`).
    pub checking_topics: std::sync::atomic::AtomicBool,
    /// The organizations whose WebSub topics are being checked, each with whether to check
    /// once more when done (`service::subscriptions`).
    pub topic_checks: std::sync::Mutex<std::collections::HashMap<herald_core::OrgId, bool>>,
    /// The searches of their history organizations run now (`service::searches`).
    pub searches: crate::service::searches::Searches,
    /// When this node started: on the embedded database, which only this node writes, a
    /// WebSub verification left pending before then was cut short, not under way.
    pub started_at: Timestamp,
}

impl AppState {
    /// Until when a delivery handed to this node's dispatcher now stays leased to it.
    pub fn lease_until(&self, now: Timestamp) -> Timestamp {
        now.plus_millis(self.dispatcher.settings().lease.as_millis() as i64)
    }
}

/// Where the admin token came from, so the CLI can tell the user once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// From `--admin-token` / `HERALD_ADMIN_TOKEN`.
    Configured,
    /// Generated now and saved in this file.
    Generated(PathBuf),
    /// Read from this file, generated on an earlier start.
    Stored(PathBuf),
}

/// A built application, ready to run.
pub struct App {
    pub state: AppState,
    pub admin_token: String,
    pub admin_token_source: AdminTokenSource,
    /// Given back once [`run`] has stopped everything.
    pub database_lock: Option<DatabaseLock>,
}

/// Opens everything the server needs. Fails with a message that says what to do.
pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
    let data_dir = settings.storage.data_dir.clone();
    // Settings first: a mistake in them must not leave a database and an admin token nobody
    // was shown behind.
    let policy = address_policy(&settings)?;
    cipher_of(&settings.encryption)?;
    let server = &settings.server;
    if server.max_body_bytes_in_flight < server.max_body_bytes {
        anyhow::bail!(
            "HERALD_MAX_BODY_BYTES_IN_FLIGHT ({}) is less than HERALD_MAX_BODY_BYTES ({}): a body \
             of the largest size accepted could never be taken in; raise the first (its default \
             is 64 MiB) or lower the second",
            server.max_body_bytes_in_flight,
            server.max_body_bytes
        );
    }
    // Then the lock, so that a refused second process writes nothing (not even an admin token). It
    // makes the data directory for the embedded database; PostgreSQL's nodes still keep their
    // generated admin token there.
    let database_lock = lock_database(&settings.storage).await?;
    // A kept admin token that cannot be read is said before a database is made beside it.
    if settings.security.admin_token.is_none() {
        data_dir::kept_admin_token(&data_dir.join("admin-token"))?;
    }
    if settings.storage.database_url.is_none() {
        data_dir::refuse_if_copied(&data_dir)?;
    }
    let store = open_store(
        &settings.storage,
        &settings.encryption,
        settings.server.migrate_on_start(),
    )
    .await?;
    // Nodes sharing a database keep their times on its server's clock (see `clock_watch`),
    // before anything here reads the time.
    if let Some(offset) = crate::service::clock_watch::align(&*store, &*clock).await {
        crate::service::clock_watch::tell_offset(offset);
    }
    crate::service::clock_watch::tell_if_behind_the_stored(&*store, &*clock).await;
    // Once the database is there: a start that fails writes no token nobody was shown, nor
    // (on PostgreSQL, whose nodes keep only a token they generate there) a directory.
    if settings.storage.database_url.is_some() && settings.security.admin_token.is_none() {
        data_dir::make_data_dir(&data_dir, &data_dir::TOKEN_DIR)?;
    }
    let (admin_token, admin_token_source) = data_dir::admin_token(&settings, &data_dir)?;
    if let Some(token) = &settings.security.metrics_token
        && token.trim().len() < MIN_ADMIN_TOKEN_LEN
    {
        tracing::warn!(
            length = token.trim().len(),
            "HERALD_METRICS_TOKEN is short and could be guessed (/metrics names every organization's webhooks); use at least {MIN_ADMIN_TOKEN_LEN} random characters (`openssl rand -hex 32`)"
        );
    }

    let directory = Arc::new(Directory::new(store.clone()));
    let idle = settings
        .delivery
        .max_idle_connections
        .unwrap_or(settings.delivery.max_requests_in_flight);
    let client = HttpClient::keeping_idle(policy.clone(), idle as usize)
        .context("could not build the HTTP client")?;
    warn_of_a_short_lease(&settings);
    let dispatcher = Dispatcher::new(
        store.clone(),
        directory.clone(),
        clock.clone(),
        client,
        DispatchSettings {
            public_url: settings.public_url(),
            lease: Duration::from_secs(settings.delivery.lease_seconds),
            per_webhook_concurrency: settings.delivery.endpoint_concurrency as usize,
            max_requests_in_flight: settings.delivery.max_requests_in_flight as usize,
            max_in_memory: settings.delivery.max_deliveries_in_memory as usize,
            disable_after: std::time::Duration::from_secs(
                settings.delivery.disable_after_hours * 3600,
            ),
            ..DispatchSettings::default()
        },
    );
    if !store.is_shared() {
        resume_previous_run(&*store, &dispatcher).await?;
    }
    let sessions = Arc::new(crate::dashboard::Sessions::new(store.clone()));
    let started_at = clock.now();
    let state = AppState(Arc::new(Shared {
        auth: Arc::new(Authenticator::new(
            &admin_token,
            store.clone(),
            settings.security.token_failures_per_minute,
        )),
        store,
        directory,
        dispatcher,
        clock,
        metrics: Arc::new(Metrics::default()),
        address_policy: Arc::new(policy),
        maintenance: Arc::new(tokio::sync::Notify::new()),
        sessions,
        admission: Arc::new(BodyBudget::new(
            settings.server.max_body_bytes_in_flight,
            settings.server.max_body_bytes,
            Duration::from_millis(settings.server.admission_wait_ms),
        )),
        backlog: Arc::default(),
        checking_topics: std::sync::atomic::AtomicBool::new(false),
        topic_checks: std::sync::Mutex::default(),
        searches: Default::default(),
        started_at,
        settings: Arc::new(settings),
    }));
    state.dispatcher.set_operations(Arc::new(
        crate::service::operations::OperationalEvents::new(state.clone()),
    ));
    Ok(App {
        state,
        admin_token,
        admin_token_source,
        database_lock,
    })
}

/// Takes up what the previous run of this node left, when it is the only user of the embedded
/// database: whatever it held in memory was lost with it and is due again now, and its
/// webhooks pull again what it left in the store for lack of memory. (Nodes sharing PostgreSQL
/// leave each other's leases alone; those of a node that died end by themselves.)
async fn resume_previous_run(store: &dyn Store, dispatcher: &Dispatcher) -> anyhow::Result<()> {
    let released = store.release_all_leases().await?;
    if released > 0 {
        tracing::info!(
            count = released,
            "resuming deliveries the previous run held (in flight or queued; from a backup, those pending when it was taken)"
        );
    }
    let spilled = store.spilled_starts().await?;
    if !spilled.is_empty() {
        tracing::info!(
            webhooks = spilled.len(),
            "resuming deliveries the previous run left in the store for lack of memory"
        );
        dispatcher.note_spilled(spilled.iter().map(|(w, id)| (w, id)));
    }
    Ok(())
}

/// Where deliveries may go: public addresses and the private ranges allowed, warning of a
/// range that takes the guard down.
fn address_policy(settings: &Settings) -> anyhow::Result<AddressPolicy> {
    let policy = AddressPolicy::parse(&settings.security.allow_private_networks).map_err(|e| {
        anyhow::anyhow!(
            "HERALD_ALLOW_PRIVATE_NETWORKS / --allow-private-networks: {}",
            e.message
        )
    })?;
    let too_broad = policy.too_broad();
    if !too_broad.is_empty() {
        tracing::warn!(
            ranges = %too_broad.join(","),
            "HERALD_ALLOW_PRIVATE_NETWORKS lets deliveries reach every address or the cloud metadata service (169.254.169.254, fd00:ec2::254), where this machine's credentials may be: any webhook URL can then read them; allow only the ranges your receivers are in"
        );
    }
    Ok(policy)
}

/// An attempt never runs past its lease (2 s to spare): a shorter lease cuts every attempt to
/// a webhook with a long timeout, and those cut attempts count as the endpoint's timeouts.
fn warn_of_a_short_lease(settings: &Settings) {
    let longest = u64::from(herald_core::webhook::MAX_TIMEOUT_MS) / 1000 + 2;
    if settings.delivery.lease_seconds < longest {
        tracing::warn!(
            lease_seconds = settings.delivery.lease_seconds,
            "HERALD_LEASE_SECONDS is under {longest}: attempts to webhooks whose timeout is longer \
             than the lease less 2 s are cut to fit it and count as timeouts; raise it above the \
             longest webhook timeout plus a few seconds"
        );
    }
}

/// Locks the embedded database for this process (see [`DatabaseLock`]); nothing to lock for
/// PostgreSQL, which nodes share. Take it before anything else touches the data directory.
pub async fn lock_database(storage: &StorageSettings) -> anyhow::Result<Option<DatabaseLock>> {
    if storage.database_url.is_some() {
        return Ok(None);
    }
    let data_dir = storage.data_dir.clone();
    data_dir::make_data_dir(&data_dir, &data_dir::DATA_DIR)?;
    let db_path = data_dir.join("herald.db");
    let lock = tokio::task::spawn_blocking(move || DatabaseLock::acquire(&db_path))
        .await?
        .with_context(|| format!("could not open the database in {}", data_dir.display()))?;
    Ok(Some(lock))
}

/// Advice for PostgreSQL's most common refusals at start, which name the problem but not the
/// remedy; empty for the others.
pub(crate) fn what_to_do_about(said: &str) -> &'static str {
    if said.contains("database \"") && said.ends_with("does not exist") {
        "; create it first (`createdb NAME`, or CREATE DATABASE), then run this again"
    } else if said.contains("Connection refused") {
        "; is PostgreSQL running there, and listening on that address and port?"
    } else if said.contains("password authentication failed") {
        "; check the user and password in the URL (or PGPASSWORD)"
    } else if said.contains("role \"") && said.ends_with("does not exist") {
        "; name a user that exists in the URL, or create it (`createuser NAME`)"
    } else if said.contains("Timeout occurred while creating a new object") {
        // The pool's words: the connection did not finish PostgreSQL's start-up in time.
        "; nothing there finished a PostgreSQL start-up within 3 s: is that address and port \
         PostgreSQL's, and reachable from here (no firewall dropping it)?"
    } else if [
        "TLS handshake",
        "Connection reset by peer",
        "Broken pipe",
        "early eof",
        "connection closed",
    ]
    .iter()
    .any(|broke| said.contains(broke))
    {
        "; the connection broke during the start-up: is that port PostgreSQL's? (With TLS, \
         check sslmode in the URL and the server's certificate settings.)"
    } else {
        ""
    }
}

/// Opens the configured store: PostgreSQL when a database URL is set, else SQLite in the data
/// directory (lock it first: [`lock_database`]). Applies pending migrations when `migrate`
/// (else checks the schema is current), and re-encrypts stored secrets when an encryption key
/// is configured.
pub async fn open_store(
    storage: &StorageSettings,
    encryption: &EncryptionSettings,
    migrate: bool,
) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_store_saying_if_new(storage, encryption, migrate)
        .await?
        .0)
}

/// [`open_store`], and whether it found no database there and made a new one (`herald
/// migrate` says so: a mistyped data directory or database name must not pass for an
/// upgraded database).
pub async fn open_store_saying_if_new(
    storage: &StorageSettings,
    encryption: &EncryptionSettings,
    migrate: bool,
) -> anyhow::Result<(Arc<dyn Store>, bool)> {
    let cipher = cipher_of(encryption)?;
    let mut created = false;
    let reencrypted = match &storage.database_url {
        Some(url) => {
            let shown = storage.database_url_for_display().unwrap_or_default();
            let store = PostgresStore::new(
                url,
                PostgresOptions {
                    pool_size: storage.database_pool_size as usize,
                },
                cipher,
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "HERALD_DATABASE_URL / --database-url: {}",
                    herald_core::error_chain(&e)
                )
            })?;
            if migrate {
                store.migrate().await.inspect(|&applied| {
                    created = applied == herald_store::migrations::POSTGRES.len();
                })
            } else {
                store.check_schema().await.map(|_| 0)
            }
            .map_err(|e| {
                let said = herald_core::error_chain(&e);
                anyhow::anyhow!("database {shown}: {said}{}", what_to_do_about(&said))
            })?;
            let rewritten = store
                .reencrypt_stale_secrets()
                .await
                .context(REENCRYPT_FAILED)?;
            (Arc::new(store) as Arc<dyn Store>, rewritten)
        }
        None => {
            // `lock_database`, called first, made the directory.
            let data_dir = storage.data_dir.clone();
            let db_path = data_dir.join("herald.db");
            data_dir::warn_if_database_went_missing(&data_dir);
            created = !db_path.exists();
            let store = tokio::task::spawn_blocking(move || {
                SqliteStore::open_with_cipher(&db_path, cipher)
            })
            .await?
            .with_context(|| format!("could not open the database in {}", data_dir.display()))?;
            let rewritten = store
                .reencrypt_stale_secrets()
                .await
                .context(REENCRYPT_FAILED)?;
            (Arc::new(store) as Arc<dyn Store>, rewritten)
        }
    };
    let (store, rewritten) = reencrypted;
    if rewritten > 0 {
        tracing::info!(
            webhooks = rewritten,
            "encrypted stored webhook secrets and custom header values with the current key"
        );
    }
    Ok((store, created))
}

/// The cipher for stored secrets from the configured keys, or what is wrong with them.
pub fn cipher_of(encryption: &EncryptionSettings) -> anyhow::Result<SecretCipher> {
    SecretCipher::new(
        encryption.encryption_key.as_deref(),
        &encryption.encryption_old_keys,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

const REENCRYPT_FAILED: &str = "could not open the stored webhook secrets; is every key they \
     were sealed with configured (HERALD_ENCRYPTION_KEY, HERALD_ENCRYPTION_OLD_KEYS)?";

/// Serves the API on `listener` and runs the background tasks (the scheduler, WebSub renewals,
/// retention, the clock's watch, giving memory back, and the cluster's signals on PostgreSQL)
/// until `shutdown` completes; then stops taking requests and lets in-flight deliveries finish
/// for a few seconds.
pub async fn run(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = app.state;
    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = tokio::spawn(scheduler::run(state.dispatcher.clone(), stop_rx.clone()));
    let renewals = tokio::spawn(websub::run_renewals(
        state.dispatcher.clone(),
        stop_rx.clone(),
    ));
    let cluster = state.store.signals().map(|signals| {
        tokio::spawn(crate::service::cluster::run(
            state.clone(),
            signals,
            stop_rx.clone(),
        ))
    });
    let clock_watch = tokio::spawn(crate::service::clock_watch::run(
        state.clone(),
        stop_rx.clone(),
    ));
    let memory = tokio::spawn(crate::service::memory::run(state.clone(), stop_rx.clone()));
    let retention = tokio::spawn(crate::service::retention::run(
        state.clone(),
        state.maintenance.clone(),
        stop_rx,
    ));
    let router = crate::api::router(state.clone());
    let header_timeout = Duration::from_millis(state.settings.server.header_timeout_ms);
    // One grace for the whole stop, so that whatever stops Herald can be told how long it
    // takes: the requests in progress have up to 10 s of it, the deliveries in flight what is
    // left (the two waits one after the other took up to 10 s more than the setting).
    let grace = Duration::from_secs(state.settings.delivery.stop_grace_seconds);
    let stopping = Arc::new(std::sync::OnceLock::new());
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            let _ = stopping.set(Instant::now());
        }
    };
    let http_grace = crate::http_server::SHUTDOWN_GRACE.min(grace.max(Duration::from_secs(1)));
    crate::http_server::serve(listener, router, header_timeout, shutdown, http_grace).await;
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    let _ = renewals.await;
    let _ = retention.await;
    let _ = clock_watch.await;
    let _ = memory.await;
    if let Some(cluster) = cluster {
        let _ = cluster.await;
    }
    let spent = stopping.get().map_or(Duration::ZERO, Instant::elapsed);
    state.dispatcher.drain(grace.saturating_sub(spent)).await;
    match state.store.checkpoint_on_stop().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "part of the write-ahead log (herald.db-wal) is still to be moved into herald.db: \
             copy both files together, or use `herald backup`"
        ),
        Err(e) => {
            tracing::warn!(error = %herald_core::error_chain(&e), "the write-ahead log (herald.db-wal) was not moved into herald.db as Herald stopped")
        }
    }
    // The lock goes last. Tasks that outlived the drain may still hold the store: a server
    // process exits next; a program that runs another app on this directory in the same
    // process (the tests do) gets the lock while they wind down.
    drop(state);
    drop(app.database_lock);
    tracing::info!("stopped");
    Ok(())
}
