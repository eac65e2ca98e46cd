//! The embedded SQLite backend: one file, WAL mode, `synchronous=FULL` (an acknowledged event
//! survives power loss), one writer thread doing group commits and a small pool of readers.

pub mod backup;
mod bulk;
mod deliveries;
mod file_watch;
mod health;
mod orgs;
mod pool;
pub(crate) mod rows;
mod sessions;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::Connection;

use herald_core::delivery::{Attempt, Delivery, DeliveryState};
use herald_core::event::{Event, EventSummary};
use herald_core::event_type::CustomEventType;
use herald_core::org::{ApiKey, Organization};
use herald_core::store::{
    AttemptRecord, ChangeTurn, DashboardSession, DeliveryFilter, DueDelivery, EventFilter,
    IngestItem, IngestResult, OrgConfig, PendingStat, PurgeCount, PurgeFrom, SessionLimits, Store,
    StoreError, StoreResult,
};
use herald_core::subscription::{AsRead, Subscription};
use herald_core::webhook::Webhook;
use herald_core::{ApiKeyId, DeliveryId, OrgId, Page, PageRequest, Timestamp, WebhookId};

use crate::cipher::SecretCipher;
use crate::migrations;
use pool::ReadPool;
use writer::Writer;

/// How many read connections serve the API at once.
const READERS: usize = 4;

/// The SQLite store. Cheap to share behind an `Arc`; a clone shares the same connections.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    /// Whether the database file and its write-ahead log are still the ones opened: a file put
    /// back at `path` later is another file, which this process does not write to.
    watch: Arc<file_watch::FileWatch>,
    writer: Writer,
    readers: Arc<ReadPool>,
    /// Seals webhook secrets before they are written and opens them when read.
    cipher: Arc<SecretCipher>,
    /// Organizations deleted since this process opened the file. A write for one that was
    /// queued behind its deletion (an ingest or a new webhook that read the organization just
    /// before) is refused in the writer, rather than stored for an organization that no longer
    /// exists, out of reach. Only this process writes the file, so nothing queued before it
    /// started can arrive.
    deleted_orgs: Arc<std::sync::Mutex<std::collections::HashSet<OrgId>>>,
}

/// Refuses a write for an organization deleted meanwhile (see `SqliteStore::deleted_orgs`).
/// Called in the writer, which runs one job at a time, so a deletion is either wholly before
/// the write (refused) or wholly after (the deletion removes what it stored).
fn refuse_deleted(
    deleted: &std::sync::Mutex<std::collections::HashSet<OrgId>>,
    org: &OrgId,
) -> DbResult<()> {
    let deleted = deleted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if deleted.contains(org) {
        return Err(not_found());
    }
    Ok(())
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Saves a webhook (see `webhooks::update` for `read_at`), then parks or unparks its
    /// pending deliveries if that paused or resumed it.
    async fn save_webhook(&self, webhook: &Webhook, read_at: Option<Timestamp>) -> StoreResult<()> {
        let (store, w, id) = (self.clone(), self.sealed(webhook), webhook.id.clone());
        // Once the flag is written, its deliveries must follow (`to_the_end`).
        to_the_end(async move {
            let walked = match store
                .write(move |c| webhooks::update(c, &w, read_at))
                .await?
            {
                webhooks::ActiveChange::None => return Ok(()),
                webhooks::ActiveChange::Paused => store.park_pending(&id).await,
                webhooks::ActiveChange::Resumed => {
                    let webhook = id.clone();
                    store
                        .in_steps(bulk::Walk::parked(), move |c, walk| {
                            bulk::unpark(c, &webhook, walk)
                        })
                        .await
                }
            };
            switched_despite(walked, &id);
            Ok(())
        })
        .await
    }

    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        Self::open_with_cipher(path, SecretCipher::none())
    }

    /// Opens the store, keeping webhook secrets encrypted with `cipher`.
    pub fn open_with_cipher(path: impl AsRef<Path>, cipher: SecretCipher) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, false)?;
        migrate(&conn)?;
        bulk::finish_interrupted(&conn).map_err(StoreError::from_db)?;
        deliveries::link_to_their_events(&conn).map_err(StoreError::from_db)?;
        let watch = Arc::new(file_watch::FileWatch::new(&path));
        Ok(Self {
            writer: Writer::start(conn, Some(watch.clone())),
            readers: Arc::new(ReadPool::new(path.clone(), READERS)),
            watch,
            path,
            cipher: Arc::new(cipher),
            deleted_orgs: Arc::default(),
        })
    }

    /// Writes again every secret stored plain or sealed with an old key; answers how many
    /// webhooks it rewrote. Run at start-up; without a key it only checks that every stored
    /// secret opens (none was sealed with a key that is not configured).
    pub async fn reencrypt_stale_secrets(&self) -> StoreResult<u64> {
        let cipher = self.cipher.clone();
        self.write(move |c| webhooks::reencrypt(c, &cipher)).await
    }

    fn sealed(&self, w: &Webhook) -> Webhook {
        self.cipher.seal_webhook(w)
    }

    fn opened(&self, w: Webhook) -> StoreResult<Webhook> {
        self.cipher.open_webhook(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the writer's next group commit. `f` may run twice (writer.rs says why).
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> DbResult<T> + Send + 'static,
    {
        self.writer
            .write(move |c| f(c).map_err(StoreError::from_db))
            .await
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
    {
        self.readers
            .read(move |c| f(c).map_err(StoreError::from_db))
            .await
    }

    /// Makes a change to many deliveries as a series of writer jobs, `step` after `step` from
    /// `start` until one says it is done (`bulk` says why); answers how many it changed. The
    /// series is seen through to the end even if the caller gives up (`to_the_end`).
    async fn in_steps<C, F>(&self, start: C, step: F) -> StoreResult<u64>
    where
        C: Clone + Send + 'static,
        F: Fn(&Connection, &C) -> DbResult<bulk::Step<C>> + Clone + Send + Sync + 'static,
    {
        let store = self.clone();
        to_the_end(async move {
            let mut cursor = start;
            let mut changed = 0;
            loop {
                let (step, from) = (step.clone(), cursor);
                let done = store.write(move |c| step(c, &from)).await?;
                changed += done.changed;
                match done.next {
                    Some(next) => cursor = next,
                    None => return Ok(changed),
                }
            }
        })
        .await
    }

    /// Cancels a deleted webhook's pending deliveries, in steps.
    async fn cancel_pending(&self, webhook: &WebhookId, now: Timestamp) -> StoreResult<u64> {
        let webhook = webhook.clone();
        self.in_steps(String::new(), move |c, after| {
            bulk::cancel(c, &webhook, now, after)
        })
        .await
    }

    /// Parks an inactive webhook's due deliveries, in steps.
    async fn park_pending(&self, webhook: &WebhookId) -> StoreResult<u64> {
        let webhook = webhook.clone();
        self.in_steps(bulk::Walk::due_from(i64::MIN), move |c, walk| {
            bulk::park(c, &webhook, walk)
        })
        .await
    }
}

/// A switch is stored once its flag is: a step of the walk that parks (or puts back) its
/// backlog failing after it is said, not answered as the switch's failure. Answered so, what
/// follows a switch was skipped (`webhook.enabled`, a WebSub subscribe, dropping a cached
/// snapshot that still had it active) and asking again changed nothing, the webhook being
/// switched already; the looks again that follow every switch
/// (`Dispatcher::look_again_after_switch`) finish the walk.
fn switched_despite(walked: StoreResult<u64>, webhook: &WebhookId) {
    if let Err(e) = walked {
        tracing::warn!(webhook = %webhook, error = %herald_core::error_chain(&e), "webhook switched, but a step of moving its pending deliveries failed; they are looked for again shortly");
    }
}

/// Runs a change made of several writer jobs in a task of its own, and waits for it. Its caller
/// may give up halfway: hyper drops a request's future when the client disconnects, and a
/// client's timeout may be shorter than a change to a million deliveries. The change must still
/// be made whole, not leave (say) a resumed webhook with deliveries parked until the next start.
async fn to_the_end<T, F>(change: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = StoreResult<T>> + Send + 'static,
{
    tokio::spawn(change).await.map_err(|e| {
        StoreError::Unavailable(format!("a change to many deliveries stopped halfway: {e}").into())
    })?
}

/// Puts back on its schedule every delivery a node had leased (what a node's start does), for
/// `herald copy`, which holds the database's lock.
pub(crate) fn release_all_leases(conn: &Connection) -> StoreResult<u64> {
    deliveries::release_all_leases(conn).map_err(StoreError::from_db)
}

/// Checks that every stored webhook secret and custom header opens with `cipher`, writing
/// nothing: for `herald copy`, whose target's nodes will have these keys.
pub(crate) fn check_secrets_open(conn: &Connection, cipher: &SecretCipher) -> StoreResult<()> {
    webhooks::check_secrets_open(conn, cipher).map_err(StoreError::from_db)
}

/// Opens one connection with Herald's settings.
pub(crate) fn open_connection(path: &Path, read_only: bool) -> StoreResult<Connection> {
    // A reader opened once the file is gone (removed under a running Herald) fails rather
    // than make an empty database there, which would have SQLite remove the log beside it.
    let conn = if read_only {
        use rusqlite::OpenFlags;
        Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    } else {
        create_private(path)?;
        Connection::open(path)
    }
    .map_err(|e| classify(&e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| classify(&e))?;
    // WAL lets readers run beside the writer; FULL makes every commit durable before we answer.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF; \
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16000; \
         PRAGMA wal_autocheckpoint = 8000;",
    )
    .map_err(|e| classify(&e))?;
    if read_only {
        conn.execute_batch("PRAGMA query_only = 1")
            .map_err(|e| classify(&e))?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates the database file readable by its owner only, if it is not there yet: it holds every
/// event (and the webhooks' secrets, unless sealed), and SQLite gives its write-ahead log and
/// shared-memory files the database file's permissions.
fn create_private(path: &Path) -> StoreResult<()> {
    match create_new_private(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Refused(format!(
            "could not create {}: {e}",
            path.display()
        ))),
    }
}

/// Creates a new, empty file readable by its owner only (it fails if one is there): the
/// database, or a copy of it (`VACUUM INTO` fills an empty file that is there, keeping its
/// permissions).
pub(crate) fn create_new_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

fn migrate(conn: &Connection) -> StoreResult<()> {
    let run = || -> rusqlite::Result<i64> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )?;
        let mut upgrading = false;
        let mut applied_fresh = false;
        for m in migrations::SQLITE {
            let done: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?)",
                [m.version],
                |r| r.get(0),
            )?;
            if done {
                upgrading = true;
                continue;
            }
            if upgrading {
                // Some migrations rebuild tables, which takes a while on a large database.
                tracing::info!(
                    version = m.version,
                    name = m.name,
                    "upgrading the database; applying migration (this may take a while on a large database)"
                );
            }
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(m.sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                rusqlite::params![
                    m.version,
                    m.name,
                    herald_core::Clock::now(&herald_core::SystemClock).as_millis()
                ],
            )?;
            tx.commit()?;
            applied_fresh = !upgrading;
            if upgrading {
                tracing::info!(version = m.version, name = m.name, "applied migration");
            } else {
                tracing::debug!(version = m.version, name = m.name, "applied migration");
            }
        }
        if applied_fresh {
            // A new database: one line, not one per migration.
            let version = migrations::SQLITE.last().map_or(0, |m| m.version);
            tracing::info!(version, "created the database schema");
        }
        conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get::<_, i64>(0)
        })
    };
    let newest = run().map_err(|e| classify(&e))?;
    migrations::refuse_if_newer(newest, migrations::SQLITE.len())
}

/// What the SQL functions return: either a database error or a domain answer (not found,
/// conflict) decided while looking at the rows.
pub(crate) enum DbError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

pub(crate) type DbResult<T> = Result<T, DbError>;

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

trait FromDb {
    fn from_db(e: DbError) -> Self;
}

impl FromDb for StoreError {
    fn from_db(e: DbError) -> Self {
        match e {
            DbError::Sql(e) => classify(&e),
            DbError::Store(e) => e,
        }
    }
}

pub(crate) fn not_found() -> DbError {
    DbError::Store(StoreError::NotFound)
}

pub(crate) fn conflict(message: String) -> DbError {
    DbError::Store(StoreError::Conflict(message))
}

/// Sorts a SQLite error into the store's classes.
pub(crate) fn classify(e: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull,
        ) => StoreError::Unavailable(e.to_string().into()),
        _ => StoreError::Other(e.to_string().into()),
    }
}

pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_org(&self, org: &Organization) -> StoreResult<()> {
        let org = org.clone();
        self.write(move |c| orgs::create(c, &org)).await
    }

    async fn list_orgs(&self, page: &PageRequest) -> StoreResult<Page<Organization>> {
        let page = page.clone();
        self.read(move |c| orgs::list(c, &page)).await
    }

    async fn get_org(&self, id: &OrgId) -> StoreResult<Organization> {
        let id = id.clone();
        self.read(move |c| orgs::get(c, &id)).await
    }

    async fn org_config(&self, id: &OrgId) -> StoreResult<OrgConfig> {
        let id = id.clone();
        let config = self.read(move |c| orgs::config(c, &id)).await?;
        Ok(OrgConfig {
            webhooks: (config.webhooks.into_iter())
                .map(|w| self.opened(w))
                .collect::<StoreResult<_>>()?,
            ..config
        })
    }

    async fn update_org(&self, org: &Organization) -> StoreResult<()> {
        let org = org.clone();
        self.write(move |c| orgs::update(c, &org)).await
    }

    async fn delete_org(&self, id: &OrgId) -> StoreResult<()> {
        // Its deliveries and events in steps first (`bulk`), then the rest, with whatever was
        // stored meanwhile, in one transaction that ends with the organization itself.
        let (store, id) = (self.clone(), id.clone());
        to_the_end(async move {
            let org = id.clone();
            let webhooks = store.read(move |c| orgs::webhook_ids(c, &org)).await?;
            for webhook in webhooks {
                store
                    .in_steps((), move |c, _| bulk::delete_deliveries(c, &webhook))
                    .await?;
            }
            let org = id.clone();
            store
                .in_steps((), move |c, _| bulk::delete_events(c, &org))
                .await?;
            let (deleted, org) = (store.deleted_orgs.clone(), id.clone());
            let done = store
                .write(move |c| {
                    orgs::delete(c, &id)?;
                    deleted
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id.clone());
                    Ok(())
                })
                .await;
            if done.is_err() {
                // The job ran but its commit failed: the organization is still there.
                store
                    .deleted_orgs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&org);
            }
            done
        })
        .await
    }

    async fn org_change_turn(&self, _org: &OrgId) -> StoreResult<ChangeTurn> {
        // This process is the only one writing the file: its own turns are the whole story.
        Ok(ChangeTurn::within_process())
    }

    async fn unpark_active(&self, webhook: &WebhookId) -> StoreResult<u64> {
        let id = webhook.clone();
        self.in_steps(bulk::Walk::parked(), move |c, walk| {
            bulk::unpark(c, &id, walk)
        })
        .await
    }

    async fn park_inactive(&self, webhook: &WebhookId, _now: Timestamp) -> StoreResult<u64> {
        // In steps, each of which parks nothing once the webhook is active again. A lease here
        // is this process's own (those of a process stopped are given back at the next
        // start): its holder gives the delivery back parked, whenever its lease ends.
        self.park_pending(webhook).await
    }

    async fn sweep_deleted_orgs(&self) -> StoreResult<u64> {
        // Nothing to sweep: the writer refuses writes queued behind a deletion (`deleted_orgs`).
        Ok(0)
    }

    async fn create_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let (key, deleted) = (key.clone(), self.deleted_orgs.clone());
        self.write(move |c| {
            refuse_deleted(&deleted, &key.org_id)?;
            orgs::create_api_key(c, &key)
        })
        .await
    }

    async fn list_api_keys(&self, org: &OrgId) -> StoreResult<Vec<ApiKey>> {
        let org = org.clone();
        self.read(move |c| orgs::list_api_keys(c, &org)).await
    }

    async fn delete_api_key(&self, org: &OrgId, id: &ApiKeyId) -> StoreResult<()> {
        let (org, id) = (org.clone(), id.clone());
        self.write(move |c| orgs::delete_api_key(c, &org, &id))
            .await
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        let hash = key_hash.to_owned();
        self.read(move |c| orgs::find_api_key(c, &hash)).await
    }

    async fn create_event_type(&self, event_type: &CustomEventType) -> StoreResult<()> {
        let (t, deleted) = (event_type.clone(), self.deleted_orgs.clone());
        self.write(move |c| {
            refuse_deleted(&deleted, &t.org_id)?;
            orgs::create_event_type(c, &t)
        })
        .await
    }

    async fn list_event_types(&self, org: &OrgId) -> StoreResult<Vec<CustomEventType>> {
        let org = org.clone();
        self.read(move |c| orgs::list_event_types(c, &org)).await
    }

    async fn delete_event_type(&self, org: &OrgId, name: &str) -> StoreResult<()> {
        let (org, name) = (org.clone(), name.to_owned());
        self.write(move |c| orgs::delete_event_type(c, &org, &name))
            .await
    }

    async fn create_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        let (w, deleted) = (self.sealed(webhook), self.deleted_orgs.clone());
        self.write(move |c| {
            refuse_deleted(&deleted, &w.org_id)?;
            webhooks::create(c, &w)
        })
        .await
    }

    async fn list_webhooks(&self, org: &OrgId, page: &PageRequest) -> StoreResult<Page<Webhook>> {
        let (org, page) = (org.clone(), page.clone());
        let page = self.read(move |c| webhooks::list(c, &org, &page)).await?;
        Ok(Page {
            data: page
                .data
                .into_iter()
                .map(|w| self.opened(w))
                .collect::<StoreResult<_>>()?,
            next_cursor: page.next_cursor,
        })
    }

    async fn org_webhooks(&self, org: &OrgId) -> StoreResult<Vec<Webhook>> {
        let org = org.clone();
        let all = self.read(move |c| webhooks::all_of_org(c, &org)).await?;
        all.into_iter().map(|w| self.opened(w)).collect()
    }

    async fn get_webhook(&self, org: &OrgId, id: &WebhookId) -> StoreResult<Webhook> {
        let (org, id) = (org.clone(), id.clone());
        let w = self.read(move |c| webhooks::get(c, &org, &id)).await?;
        self.opened(w)
    }

    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        self.save_webhook(webhook, None).await
    }

    async fn save_webhook_change(&self, webhook: &Webhook, read_at: Timestamp) -> StoreResult<()> {
        self.save_webhook(webhook, Some(read_at)).await
    }

    async fn delete_webhooks(
        &self,
        org: &OrgId,
        ids: &[WebhookId],
        now: Timestamp,
        unchanged_since: Option<Timestamp>,
    ) -> StoreResult<Vec<WebhookId>> {
        let (store, org, ids) = (self.clone(), org.clone(), ids.to_vec());
        to_the_end(async move {
            let deleted = store
                .write(move |c| webhooks::delete_many(c, &org, &ids, now, unchanged_since))
                .await?;
            for id in &deleted {
                store.cancel_pending(id, now).await?;
            }
            Ok(deleted)
        })
        .await
    }

    async fn cancel_orphaned(&self, since: Timestamp, now: Timestamp) -> StoreResult<u64> {
        let deleted = self
            .read(move |c| webhooks::deleted_since(c, since))
            .await?;
        let mut cancelled = 0;
        for id in &deleted {
            cancelled += self.cancel_pending(id, now).await?;
        }
        Ok(cancelled)
    }

    async fn disable_webhook(
        &self,
        org: &OrgId,
        id: &WebhookId,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let (store, org, id) = (self.clone(), org.clone(), id.clone());
        let reason = reason.to_owned();
        to_the_end(async move {
            let webhook = id.clone();
            let disabled = store
                .write(move |c| webhooks::disable(c, &org, &webhook, &reason, now))
                .await?;
            if disabled {
                switched_despite(store.park_pending(&id).await, &id);
            }
            Ok(disabled)
        })
        .await
    }

    async fn note_webhook_outcome(
        &self,
        id: &WebhookId,
        failed: bool,
        now: Timestamp,
    ) -> StoreResult<Option<Timestamp>> {
        let id = id.clone();
        self.write(move |c| webhooks::note_outcome(c, &id, failed, now))
            .await
    }

    async fn insert_events(
        &self,
        org: &OrgId,
        items: &[IngestItem],
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<Vec<IngestResult>> {
        let (org, items, deleted) = (org.clone(), items.to_vec(), self.deleted_orgs.clone());
        self.write(move |c| {
            refuse_deleted(&deleted, &org)?;
            deliveries::insert_events(c, &org, &items, now, lease_until)
        })
        .await
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>> {
        self.write(move |c| deliveries::claim_due(c, now, lease_until, limit))
            .await
    }

    async fn claim_spilled(
        &self,
        webhook: &WebhookId,
        from: &DeliveryId,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>> {
        let (webhook, from) = (webhook.clone(), from.clone());
        self.write(move |c| deliveries::claim_spilled(c, &webhook, &from, now, lease_until, limit))
            .await
    }

    async fn spill_deliveries(&self, leases: &[(DeliveryId, Timestamp)]) -> StoreResult<()> {
        let leases = leases.to_vec();
        self.write(move |c| deliveries::spill(c, &leases)).await
    }

    async fn rearm_spilled(
        &self,
        webhook: &WebhookId,
        from: &DeliveryId,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> StoreResult<u64> {
        let (webhook, from) = (webhook.clone(), from.clone());
        self.write(move |c| deliveries::rearm_spilled(c, &webhook, &from, now, until, limit))
            .await
    }

    async fn spilled_starts(&self) -> StoreResult<Vec<(WebhookId, DeliveryId)>> {
        self.read(deliveries::spilled_starts).await
    }

    async fn earliest_due_webhook(&self, now: Timestamp) -> StoreResult<Option<WebhookId>> {
        self.read(move |c| deliveries::earliest_due_webhook(c, now))
            .await
    }

    async fn next_due_at(&self) -> StoreResult<Option<Timestamp>> {
        self.read(deliveries::next_due_at).await
    }

    async fn record_attempts(&self, records: &[AttemptRecord]) -> StoreResult<Vec<bool>> {
        let records = records.to_vec();
        self.write(move |c| deliveries::record_attempts(c, &records))
            .await
    }

    async fn record_cut_off(&self, records: &[AttemptRecord]) -> StoreResult<Vec<DeliveryId>> {
        let records = records.to_vec();
        self.write(move |c| deliveries::record_cut_off(c, &records))
            .await
    }

    async fn defer_deliveries(
        &self,
        org: &OrgId,
        leases: &[(DeliveryId, Timestamp)],
        until: Timestamp,
    ) -> StoreResult<usize> {
        let (org, leases) = (org.clone(), leases.to_vec());
        self.write(move |c| deliveries::defer(c, &org, &leases, until))
            .await
    }

    async fn end_unsent(
        &self,
        org: &OrgId,
        leases: &[(DeliveryId, Timestamp)],
        state: DeliveryState,
        error: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<DeliveryId>> {
        let (org, leases, error) = (org.clone(), leases.to_vec(), error.to_owned());
        self.write(move |c| deliveries::end_unsent(c, &org, &leases, state, &error, now))
            .await
    }

    async fn renew_leases(
        &self,
        leases: &[(DeliveryId, Timestamp)],
        until: Timestamp,
    ) -> StoreResult<Vec<DeliveryId>> {
        let leases = leases.to_vec();
        self.write(move |c| deliveries::renew_leases(c, &leases, until))
            .await
    }

    async fn move_deferred(
        &self,
        webhook: &WebhookId,
        deferred_to: Timestamp,
        to: Timestamp,
    ) -> StoreResult<u64> {
        let webhook = webhook.clone();
        self.in_steps(String::new(), move |c, after| {
            bulk::move_deferred(c, &webhook, deferred_to, to, after)
        })
        .await
    }

    async fn release_lease(&self, id: &DeliveryId, lease_until: Timestamp) -> StoreResult<()> {
        let id = id.clone();
        self.write(move |c| deliveries::release_lease(c, &id, lease_until))
            .await
    }

    async fn release_all_leases(&self) -> StoreResult<u64> {
        self.write(deliveries::release_all_leases).await
    }

    async fn list_deliveries(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Delivery>> {
        let (org, webhook, filter, page) =
            (org.clone(), webhook.clone(), filter.clone(), page.clone());
        self.read(move |c| deliveries::list(c, &org, &webhook, &filter, &page))
            .await
    }

    async fn get_delivery(
        &self,
        org: &OrgId,
        id: &DeliveryId,
    ) -> StoreResult<(Delivery, Vec<Attempt>)> {
        let (org, id) = (org.clone(), id.clone());
        self.read(move |c| deliveries::get(c, &org, &id)).await
    }

    async fn get_event(&self, org: &OrgId, id: &str) -> StoreResult<Event> {
        let (org, id) = (org.clone(), id.to_owned());
        self.read(move |c| deliveries::get_event(c, &org, &id))
            .await
    }

    async fn event_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
        limit: u32,
    ) -> StoreResult<(Event, Vec<Delivery>)> {
        let (org, id) = (org.clone(), event_id.to_owned());
        self.read(move |c| deliveries::event_deliveries(c, &org, &id, limit))
            .await
    }

    async fn list_events(
        &self,
        org: &OrgId,
        filter: &EventFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<EventSummary>> {
        let (org, filter, page) = (org.clone(), filter.clone(), page.clone());
        self.read(move |c| deliveries::list_events(c, &org, &filter, &page))
            .await
    }

    async fn get_events(&self, org: &OrgId, ids: &[String]) -> StoreResult<Vec<Event>> {
        let (org, ids) = (org.clone(), ids.to_vec());
        self.read(move |c| deliveries::get_events(c, &org, &ids))
            .await
    }

    async fn resend_delivery(
        &self,
        org: &OrgId,
        id: &DeliveryId,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<DueDelivery> {
        let (org, id) = (org.clone(), id.clone());
        self.write(move |c| deliveries::resend(c, &org, &id, now, lease_until))
            .await
    }

    async fn purge_before(
        &self,
        org: Option<&OrgId>,
        cutoff: Timestamp,
        limit: u32,
        from: Option<PurgeFrom>,
    ) -> StoreResult<(PurgeCount, Option<PurgeFrom>)> {
        let org = org.cloned();
        self.write(move |c| deliveries::purge(c, org.as_ref(), cutoff, limit, from.clone()))
            .await
    }

    async fn newest_event_at(&self) -> StoreResult<Option<Timestamp>> {
        // The newest event is the last in sequence: one look at the end of the table.
        self.read(|c| {
            use rusqlite::OptionalExtension;
            Ok(
                c.prepare_cached("SELECT received_at FROM events ORDER BY seq DESC LIMIT 1")?
                    .query_row([], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(Timestamp::from_millis),
            )
        })
        .await
    }

    async fn pending_by_webhook(&self) -> StoreResult<Vec<PendingStat>> {
        self.read(deliveries::pending_by_webhook).await
    }

    fn write_trouble(&self) -> Option<String> {
        if !self.writer.is_running() {
            return Some("the SQLite writer has stopped (see the log); restart Herald".into());
        }
        if let Some(trouble) = self.watch.trouble_now() {
            if matches!(trouble, file_watch::Trouble::Missing(_))
                && self.watch.not_saved_yet()
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                // The writer looks before its next group: one that comes now has it save what
                // the removed file holds, however idle the node.
                let store = self.clone();
                runtime.spawn(async move { store.write(|_| Ok(())).await });
            }
            return Some(trouble.into_message());
        }
        self.writer.recent_failure().map(|e| {
            format!("the last write failed moments ago ({e}); is the disk full? Herald tries again")
        })
    }

    fn serving_trouble(&self) -> Option<String> {
        self.cipher.missing_key_trouble()
    }

    fn commit_latency(&self) -> Option<&herald_core::metrics::Histogram> {
        Some(&self.writer.commit_latency)
    }

    async fn org_subscriptions(&self, org: &OrgId) -> StoreResult<Vec<Subscription>> {
        let org = org.clone();
        self.read(move |c| webhooks::org_subscriptions(c, &org))
            .await
    }

    async fn orgs_with_websub_webhooks(&self) -> StoreResult<Vec<OrgId>> {
        self.read(webhooks::orgs_with_websub_webhooks).await
    }

    async fn save_subscriptions(
        &self,
        org: &OrgId,
        subscriptions: &[Subscription],
    ) -> StoreResult<()> {
        let (org, subs, deleted) = (
            org.clone(),
            subscriptions.to_vec(),
            self.deleted_orgs.clone(),
        );
        self.write(move |c| {
            refuse_deleted(&deleted, &org)?;
            webhooks::save_subscriptions(c, &org, &subs)
        })
        .await
    }

    async fn save_subscriptions_as_read(
        &self,
        org: &OrgId,
        subscriptions: &[(Subscription, Option<AsRead>)],
    ) -> StoreResult<usize> {
        let (org, subs, deleted) = (
            org.clone(),
            subscriptions.to_vec(),
            self.deleted_orgs.clone(),
        );
        self.write(move |c| {
            refuse_deleted(&deleted, &org)?;
            webhooks::save_subscriptions_as_read(c, &org, &subs)
        })
        .await
    }

    async fn claim_renewal(
        &self,
        org: &OrgId,
        subscription: &Subscription,
        until: Timestamp,
    ) -> StoreResult<bool> {
        let (org, sub) = (org.clone(), subscription.clone());
        self.write(move |c| webhooks::claim_renewal(c, &org, &sub, until))
            .await
    }

    async fn release_memory(&self) -> StoreResult<()> {
        // Writes nothing, so the group's commit is empty: no fsync.
        let writer = self.write(|c| Ok(c.release_memory()?)).await;
        let readers = self.readers.release_memory().await;
        writer.and(readers)
    }

    async fn checkpoint_on_stop(&self) -> StoreResult<bool> {
        // A file removed while Herald ran: what it held was saved then, as the message says.
        if let Some(file_watch::Trouble::Missing(said)) = self.watch.trouble_now() {
            return Err(StoreError::Refused(said));
        }
        // Not into a file put in its place (a restore while Herald ran), nor one made anew
        // where it was removed: the write-ahead log beside it belongs to the file opened.
        if !self.watch.database_is_the_one_opened() {
            return Err(StoreError::Refused(
                "the database file was removed or replaced while Herald ran, so the write-ahead \
                 log beside it (which belongs to the file Herald had open) was left as it is: \
                 remove herald.db-wal and herald.db-shm before starting on the file now there"
                    .to_owned(),
            ));
        }
        // On a connection of its own: the writer's jobs run in a transaction, where a
        // checkpoint cannot. Its busy timeout lets a last write finish first.
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path, false)?;
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(|e| classify(&e))?;
            Ok(busy == 0)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.into()))?
    }

    async fn subscriptions_to_renew(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<(OrgId, Subscription)>> {
        self.read(move |c| webhooks::subscriptions_to_renew(c, now, limit))
            .await
    }

    async fn webhook_health(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        window: &herald_core::health::HealthWindow,
    ) -> StoreResult<herald_core::health::HealthRows> {
        let (org, webhook, window) = (org.clone(), webhook.clone(), *window);
        self.read(move |c| health::webhook_health(c, &org, &webhook, &window))
            .await
    }

    async fn create_session(
        &self,
        session: &DashboardSession,
        now: Timestamp,
        limits: SessionLimits,
    ) -> StoreResult<()> {
        let session = session.clone();
        self.write(move |c| sessions::create(c, &session, now, limits))
            .await
    }

    async fn get_session(
        &self,
        id_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<DashboardSession>> {
        let id_hash = id_hash.to_owned();
        self.read(move |c| sessions::get(c, &id_hash, now)).await
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        let id_hash = id_hash.to_owned();
        self.write(move |c| sessions::delete(c, &id_hash)).await
    }

    async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64> {
        self.write(move |c| sessions::delete_expired(c, now)).await
    }

    async fn add_flash(
        &self,
        id_hash: &str,
        page: &str,
        sealed: &str,
        keep: usize,
    ) -> StoreResult<()> {
        let (id_hash, page, sealed) = (id_hash.to_owned(), page.to_owned(), sealed.to_owned());
        self.write(move |c| sessions::add_flash(c, &id_hash, &page, &sealed, keep))
            .await
    }

    async fn take_flashes(&self, id_hash: &str, page: &str) -> StoreResult<Vec<String>> {
        let (id_hash, page) = (id_hash.to_owned(), page.to_owned());
        let (id, at) = (id_hash.clone(), page.clone());
        if !self
            .read(move |c| sessions::has_flashes(c, &id, &at))
            .await?
        {
            return Ok(Vec::new());
        }
        self.write(move |c| sessions::take_flashes(c, &id_hash, &page))
            .await
    }

    async fn retry_waiting(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let (org, webhook) = (org.clone(), webhook.clone());
        let after_now = bulk::Walk::due_from(now.as_millis().saturating_add(1));
        self.in_steps(after_now, move |c, walk| {
            bulk::retry_waiting(c, &org, &webhook, now, walk)
        })
        .await
    }

    async fn recover_failed(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        since: Timestamp,
        now: Timestamp,
        skipped: bool,
    ) -> StoreResult<u64> {
        let (org, webhook) = (org.clone(), webhook.clone());
        self.in_steps(String::new(), move |c, after| {
            bulk::recover_failed(c, &org, &webhook, since, now, skipped, after)
        })
        .await
    }
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;

    /// A database at `path` with every migration before `version` applied, as an older Herald
    /// left it.
    fn database_before(path: &Path, version: i64) -> Connection {
        let conn = open_connection(path, false).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .unwrap();
        for m in migrations::SQLITE.iter().filter(|m| m.version < version) {
            conn.execute_batch(m.sql).unwrap();
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, 0)",
                rusqlite::params![m.version, m.name],
            )
            .unwrap();
        }
        conn
    }

    fn an_org(name: &str) -> Organization {
        Organization {
            id: OrgId::generate(),
            name: name.into(),
            handle: herald_core::org::OrgHandle::from_name(name),
            catalogs: vec![],
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    /// Writes after a file was removed, once the writer has looked again (a look is trusted
    /// for a second): refused, saying why.
    async fn refused_after_a_look(store: &SqliteStore) -> String {
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        match store.create_org(&an_org("Lost")).await {
            Err(StoreError::Unavailable(why)) => why.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    /// The write-ahead log removed under a running store (a clean-up script): nothing more is
    /// committed (it would go to the removed log), and what the removed log held is moved into
    /// `herald.db` through the writer's connection, so that the file alone holds everything.
    #[tokio::test]
    async fn a_write_ahead_log_removed_under_the_store_is_moved_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let store = SqliteStore::open(&path).unwrap();
        let kept = an_org("Acme");
        store.create_org(&kept).await.unwrap();
        assert_eq!(store.write_trouble(), None);

        std::fs::remove_file(file_watch::wal_of(&path)).unwrap();
        let refused = refused_after_a_look(&store).await;
        assert!(refused.contains("its write-ahead log"), "{refused}");
        let trouble = store.write_trouble().unwrap();
        assert!(
            trouble.contains("Herald moved what the removed log held into")
                && trouble.contains("restart Herald to store again"),
            "{trouble}"
        );
        // The file alone holds it: read by another connection, as a restart reads it.
        let other = rusqlite::Connection::open(&path).unwrap();
        let name: String = other
            .query_row(
                "SELECT name FROM organizations WHERE id = ?1",
                [kept.id.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(name, "Acme");
    }

    /// The database file moved away under a running store: nothing more is committed, and what
    /// the writer still sees is copied whole beside it for the operator to put back. Moved
    /// back, the store takes writes again, and a second removal makes a copy of its own.
    #[tokio::test]
    async fn a_database_file_removed_under_the_store_is_copied_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let away = dir.path().join("moved-away.db");
        let store = SqliteStore::open(&path).unwrap();
        let kept = an_org("Acme");
        store.create_org(&kept).await.unwrap();

        std::fs::rename(&path, &away).unwrap();
        let refused = refused_after_a_look(&store).await;
        assert!(refused.contains("the database file"), "{refused}");
        let trouble = store.write_trouble().unwrap();
        assert!(
            trouble.contains("Herald copied everything it had stored to"),
            "{trouble}"
        );
        let copy = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains("herald.db.rescued-"))
            .unwrap_or_else(|| panic!("no copy: {trouble}"));
        assert!(trouble.contains(&copy.display().to_string()), "{trouble}");
        // No reader made an empty database where the file was.
        assert!(!path.exists());
        let rescued = SqliteStore::open(&copy).unwrap();
        assert_eq!(rescued.get_org(&kept.id).await.unwrap().name, "Acme");

        std::fs::rename(&away, &path).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        let back = an_org("Back");
        store.create_org(&back).await.unwrap();
        assert_eq!(store.write_trouble(), None);
        std::fs::rename(&path, &away).unwrap();
        refused_after_a_look(&store).await;
        let again = store.write_trouble().unwrap();
        let second = again
            .split_whitespace()
            .find(|w| w.contains("herald.db.rescued-"))
            .unwrap()
            .trim_end_matches(':');
        assert_ne!(second, copy.display().to_string(), "{again}");
        let rescued = SqliteStore::open(second).unwrap();
        assert_eq!(rescued.get_org(&back.id).await.unwrap().name, "Back");
    }

    /// A database written before deliveries and attempts were clustered (migration 7) keeps
    /// every delivery and attempt, readable through the store, after the upgrade.
    #[tokio::test]
    async fn deliveries_and_attempts_survive_the_rebuild_into_clustered_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        {
            let conn = database_before(&path, 7);
            conn.execute_batch(
                "INSERT INTO deliveries (id, org_id, webhook_id, event_id, event_type, state, \
                 attempt_count, schedule_base, next_attempt_at, due_at, lease_until, last_status, \
                 last_error, created_at, updated_at) VALUES \
                 ('del_1', 'org_1', 'wh_1', 'ev_1', 'user.created', 'failed', 2, 0, NULL, NULL, NULL, 500, 'status_500', 10, 20); \
                 INSERT INTO attempts (id, delivery_id, number, started_at, duration_ms, status, \
                 error, error_message, response_body) VALUES \
                 ('att_1', 'del_1', 1, 11, 3, 500, 'status_500', 'the endpoint answered 500', 'no'), \
                 ('att_2', 'del_1', 2, 15, 4, 500, 'status_500', 'the endpoint answered 500', 'still no');",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let org = OrgId::from_trusted("org_1".into());
        let id = DeliveryId::from_trusted("del_1".into());
        let (delivery, attempts) = store.get_delivery(&org, &id).await.unwrap();
        assert_eq!(delivery.attempt_count, 2);
        assert_eq!(delivery.last_status, Some(500));
        let bodies: Vec<_> = attempts.iter().map(|a| a.response_body.as_str()).collect();
        assert_eq!(bodies, ["no", "still no"]);
        let clustered: i64 = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM sqlite_schema WHERE name IN ('deliveries', 'attempts') \
                     AND sql LIKE '%WITHOUT ROWID%'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(clustered, 2, "both tables are rebuilt clustered");
    }

    /// A database written before deliveries named their event by sequence number (migration 8):
    /// each delivery gets its event's number, and retention still finds and removes an old
    /// event with its deliveries and attempts, keeping one with pending work.
    #[tokio::test]
    async fn retention_finds_deliveries_of_events_stored_before_the_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        {
            let conn = database_before(&path, 8);
            conn.execute_batch(
                "INSERT INTO events (org_id, id, type, occurred_at, received_at, correlation_id, data) VALUES \
                 ('org_1', 'ev_done', 'user.created', 10, 10, NULL, '{}'), \
                 ('org_1', 'ev_waiting', 'user.created', 11, 11, NULL, '{}'); \
                 INSERT INTO deliveries (id, org_id, webhook_id, event_id, event_type, state, \
                 attempt_count, schedule_base, next_attempt_at, due_at, lease_until, last_status, \
                 last_error, created_at, updated_at) VALUES \
                 ('del_1', 'org_1', 'wh_1', 'ev_done', 'user.created', 'succeeded', 1, 0, NULL, NULL, NULL, 200, NULL, 10, 20), \
                 ('del_2', 'org_1', 'wh_1', 'ev_waiting', 'user.created', 'pending', 1, 0, 99, 99, NULL, 500, 'http_status', 11, 20); \
                 INSERT INTO attempts (id, delivery_id, number, started_at, duration_ms, status, \
                 error, error_message, response_body) VALUES \
                 ('att_1', 'del_1', 1, 11, 3, 200, NULL, NULL, 'ok');",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let numbered: Vec<(String, i64)> = store
            .read(|c| {
                let mut s = c.prepare(
                    "SELECT d.id, e.seq FROM deliveries d JOIN events e ON e.seq = d.event_seq \
                     ORDER BY d.id",
                )?;
                let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(
            numbered.len(),
            2,
            "both deliveries name their event: {numbered:?}"
        );
        let purged = store
            .purge_before(None, Timestamp::from_millis(1_000), 100, None)
            .await
            .unwrap()
            .0;
        assert_eq!(
            purged,
            PurgeCount {
                events: 1,
                deliveries: 1,
                attempts: 1
            },
            "the finished event goes with its delivery and attempt; the pending one stays"
        );
        let org = OrgId::from_trusted("org_1".into());
        let waiting = DeliveryId::from_trusted("del_2".into());
        assert!(store.get_delivery(&org, &waiting).await.is_ok());
    }
}
