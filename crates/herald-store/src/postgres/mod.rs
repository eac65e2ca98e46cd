//! The PostgreSQL backend: one database shared by any number of Herald nodes.
//!
//! - Every `Store` verb is one transaction on a pooled connection (`deadpool-postgres`);
//!   PostgreSQL's own group commit makes concurrent commits share an fsync.
//! - Work is shared through leases: `claim_due` takes due rows with `FOR UPDATE SKIP LOCKED`,
//!   so two nodes never lease the same delivery, and a lease that ends makes its delivery due
//!   for any node (see `deliveries.rs`).
//! - Nodes hear of each other's changes through `LISTEN/NOTIFY` (`signals.rs`): work stored
//!   without a lease, retries, and changes to what every node caches (announced by triggers).
//! - A connection error (refused, reset, timed out, server shutting down) is
//!   [`StoreError::Unavailable`], which the API answers with `503` and `Retry-After`.

pub mod conninfo;
mod deliveries;
mod health;
mod ingest;
mod migrate;
mod orgs;
mod rows;
mod sessions;
mod signals;
mod tls;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tls::DatabaseTls;
use tokio::sync::broadcast;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use herald_core::delivery::{Attempt, Delivery, DeliveryState};
use herald_core::event::{Event, EventSummary};
use herald_core::event_type::CustomEventType;
use herald_core::org::{ApiKey, Organization};
use herald_core::store::{
    AttemptRecord, ChangeTurn, ConfigMark, DashboardSession, DeliveryFilter, DueDelivery,
    EventFilter, IngestItem, IngestResult, OrgConfig, PendingStat, PurgeCount, PurgeFrom,
    SessionLimits, Store, StoreError, StoreResult, StoreSignal,
};
use herald_core::subscription::{AsRead, Subscription};
use herald_core::webhook::Webhook;
use herald_core::{ApiKeyId, DeliveryId, OrgId, Page, PageRequest, Timestamp, WebhookId};

use crate::cipher::SecretCipher;

/// The longest one store operation may take before it counts as the database being away.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for a change to all of one webhook's deliveries (pausing, resuming, deleting it,
/// recovering, a breaker's probe answering) or deleting an organization: one statement over a
/// million deliveries takes longer than [`OPERATION_TIMEOUT`], and it would fail every time.
/// Other tenants' writes touch other rows and do not wait for it.
const BULK_TIMEOUT: Duration = Duration::from_secs(600);
/// How long to wait for a connection to open, or for a free one in the pool.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `$body` (a `DbResult` future using the transaction `$tx`) in its own transaction and
/// commits it, within [`OPERATION_TIMEOUT`] (or `$timeout`).
macro_rules! in_tx {
    ($self:ident, |$tx:ident| $body:expr) => {
        in_tx!($self, $crate::postgres::OPERATION_TIMEOUT, |$tx| $body)
    };
    ($self:ident, $timeout:expr, |$tx:ident| $body:expr) => {
        $crate::postgres::timed_within($timeout, async {
            let mut client = $self.client().await?;
            let $tx = client.transaction().await.map_err($crate::postgres::sql)?;
            let out = $body.await?;
            $tx.commit().await.map_err($crate::postgres::sql)?;
            Ok(out)
        })
        .await
    };
}

/// Runs `$body` (a `DbResult` future using the transaction `$tx`) in a read-only transaction of
/// its own snapshot (repeatable read), within [`OPERATION_TIMEOUT`]: for reads that must agree
/// with each other.
macro_rules! in_snapshot {
    ($self:ident, |$tx:ident| $body:expr) => {
        $crate::postgres::timed(async {
            let mut client = $self.client().await?;
            let $tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err($crate::postgres::sql)?;
            let out = $body.await?;
            $tx.commit().await.map_err($crate::postgres::sql)?;
            Ok(out)
        })
        .await
    };
}

/// Runs `$body` (a `DbResult` future using the connection `$client`) outside a transaction,
/// within [`OPERATION_TIMEOUT`].
macro_rules! on_client {
    ($self:ident, |$client:ident| $body:expr) => {
        $crate::postgres::timed(async {
            let $client = $self.client().await?;
            let out = $body.await?;
            Ok(out)
        })
        .await
    };
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections this node keeps open at most.
    pub pool_size: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self { pool_size: 16 }
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    pool: Pool,
    config: tokio_postgres::Config,
    /// TLS as the URL's `sslmode` and friends ask (`tls.rs`).
    tls: DatabaseTls,
    cipher: Arc<SecretCipher>,
    signals: broadcast::Sender<StoreSignal>,
    /// The task that listens for other nodes' notifications, started on first use.
    listener: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// Ingest requests waiting to share a statement.
    ingest: ingest::IngestQueue,
    /// Connections for organizations' change turns (`orgs::change_turn`) open at once, at most.
    change_turns: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL or the config: they may carry a password.
        f.debug_struct("PostgresStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get() {
            listener.abort();
        }
    }
}

impl PostgresStore {
    /// Saves a webhook (see `webhooks::update` for `read_at`).
    async fn save_webhook(&self, webhook: &Webhook, read_at: Option<Timestamp>) -> StoreResult<()> {
        let w = self.cipher.seal_webhook(webhook);
        // Only pausing or resuming changes the webhook's deliveries, and only that needs longer
        // than any other operation.
        let current = on_client!(self, |c| webhooks::get(&c, &w.org_id, &w.id))?;
        let timeout = if current.active == w.active {
            OPERATION_TIMEOUT
        } else {
            BULK_TIMEOUT
        };
        in_tx!(self, timeout, |tx| webhooks::update(&tx, &w, read_at))
    }

    /// Builds the pool for `url` (`postgres://user[:password]@host[:port]/database`). It does not
    /// connect yet: [`PostgresStore::migrate`] or [`PostgresStore::check_schema`] do, and say
    /// clearly when the database cannot be reached.
    pub fn new(url: &str, options: PostgresOptions, cipher: SecretCipher) -> StoreResult<Self> {
        let (mut config, tls) = tls::connection(url).map_err(|e| StoreError::Other(e.into()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("herald");
        }
        // Notice a peer that vanished without closing the connection.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Other(Box::new(e)))?;
        Ok(Self {
            pool,
            config,
            tls,
            cipher: Arc::new(cipher),
            signals: broadcast::channel(1024).0,
            listener: std::sync::OnceLock::new(),
            ingest: ingest::IngestQueue::default(),
            change_turns: Arc::new(tokio::sync::Semaphore::new(orgs::MOST_CHANGE_TURNS)),
        })
    }

    /// Writes again every secret stored plain or sealed with an old key; answers how many
    /// webhooks it rewrote. Run at start-up; without a key it only checks that every stored
    /// secret opens (none was sealed with a key that is not configured).
    pub async fn reencrypt_stale_secrets(&self) -> StoreResult<u64> {
        let cipher = self.cipher.clone();
        in_tx!(self, |tx| webhooks::reencrypt(&tx, &cipher))
    }

    pub(crate) async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Bounds an operation: past the timeout the database counts as unavailable. (A write cut off
/// while committing may still have been stored: the caller hears "unavailable", never "stored"
/// for what was not.)
pub(crate) async fn timed<T>(f: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    timed_within(OPERATION_TIMEOUT, f).await
}

/// [`timed`], with another bound.
pub(crate) async fn timed_within<T>(
    timeout: Duration,
    f: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable(TIMED_OUT.into())))
}

/// What a store operation past its bound fails with.
pub(crate) const TIMED_OUT: &str = "the database did not answer in time";

/// What the SQL functions run on: a pooled connection or a transaction. Statements are
/// prepared once per connection and cached, except those run by
/// [`Conn::rows_planned_each_time`].
#[async_trait]
pub(crate) trait Conn: Sync {
    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error>;
    async fn opt_row(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error>;
    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error>;
    /// As [`Conn::rows`], for a statement whose best plan depends on its arguments (one
    /// tenant's rows among many): prepared afresh each time, so that PostgreSQL plans it for
    /// these values. A cached statement gets a generic plan after five runs, which may pick an
    /// index over every tenant's rows and filter them.
    async fn rows_planned_each_time(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error>;
}

macro_rules! conn_for {
    ($t:ty) => {
        #[async_trait]
        impl Conn for $t {
            async fn rows(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Vec<Row>, tokio_postgres::Error> {
                let statement = GenericClient::prepare_cached(self, sql).await?;
                GenericClient::query(self, &statement, params).await
            }
            async fn opt_row(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Option<Row>, tokio_postgres::Error> {
                let statement = GenericClient::prepare_cached(self, sql).await?;
                GenericClient::query_opt(self, &statement, params).await
            }
            async fn exec(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<u64, tokio_postgres::Error> {
                let statement = GenericClient::prepare_cached(self, sql).await?;
                GenericClient::execute(self, &statement, params).await
            }
            async fn rows_planned_each_time(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Vec<Row>, tokio_postgres::Error> {
                GenericClient::query(self, sql, params).await
            }
        }
    };
}

conn_for!(deadpool_postgres::Client);
conn_for!(deadpool_postgres::Transaction<'_>);

/// What the SQL functions return: either a database error or a domain answer (not found,
/// conflict) decided while looking at the rows.
pub(crate) enum DbError {
    Sql(tokio_postgres::Error),
    Store(StoreError),
}

pub(crate) type DbResult<T> = Result<T, DbError>;

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sql(e) => sql(e),
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

/// Whether PostgreSQL ended the transaction to break a deadlock.
fn is_deadlock(e: &StoreError) -> bool {
    let StoreError::Unavailable(cause) = e else {
        return false;
    };
    cause
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
}

/// Runs a transaction again (twice at most) when PostgreSQL ended it to break a deadlock with
/// another that locks some of the same rows in another order: nothing of it was kept, and the
/// other one has gone ahead.
async fn again_after_deadlock<T, F, Fut>(what: &str, mut run: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match run().await {
            Err(e) if tries < 3 && is_deadlock(&e) => {
                tracing::info!("{what} met a deadlock; trying again");
            }
            done => return done,
        }
    }
}

/// Sorts a PostgreSQL error into the store's classes: anything that says "the server is not
/// there (now)" is `Unavailable`, so callers answer 503 and try again.
pub(crate) fn sql(e: tokio_postgres::Error) -> StoreError {
    if let Some(hint) = tls::client_certificate_refused(&e).or_else(|| tls::server_without_tls(&e))
    {
        let said = format!("{}; {hint}", herald_core::error_chain(&e));
        StoreError::Unavailable(said.into())
    } else if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
        // Herald's tables are gone from under a running node (the database emptied, or
        // dropped and created again): nothing can be stored until an operator acts.
        let said = format!(
            "{}; Herald's tables are missing from this database (was it emptied, or dropped \
             and created again, while Herald ran?): restore it from a backup, or restart \
             Herald to start afresh with empty tables",
            herald_core::error_chain(&e)
        );
        StoreError::Unavailable(said.into())
    } else if let Some(hint) = refusal_hint(&e) {
        // Nothing can be stored until an operator acts, and then everything can: a 503 to
        // try again, with what to do, not a 500 per request.
        let said = format!("{}; {hint}", herald_core::error_chain(&e));
        StoreError::Unavailable(said.into())
    } else if is_unavailable(&e) {
        StoreError::Unavailable(Box::new(e))
    } else {
        StoreError::Other(Box::new(e))
    }
}

/// What to do when the database refuses Herald's statements as its settings say: it takes no
/// writes (a replica promoted in the wrong order, a failover to a standby, or
/// `default_transaction_read_only`), or a timeout set for Herald's role or database ended a
/// statement that waited for a lock or ran long.
fn refusal_hint(e: &tokio_postgres::Error) -> Option<&'static str> {
    use tokio_postgres::error::SqlState;
    let code = e.code()?;
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        Some(
            "this database takes no writes (a read-only standby, after a failover? or \
             default_transaction_read_only): point HERALD_DATABASE_URL at the primary, or let \
             it take writes",
        )
    } else if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE {
        Some(
            "a statement was cancelled (a statement_timeout or lock_timeout set for Herald's \
             role or database, or pg_cancel_backend): Herald keeps its own deadlines, so \
             reset those for its role (ALTER ROLE … RESET statement_timeout)",
        )
    } else {
        None
    }
}

fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let code = code.code();
        // 08: connection exception; 53: insufficient resources; 57P0x: shutting down, cannot
        // connect now; 40001/40P01: serialization failure, deadlock (try again); 55000 as a
        // new connection hears it: the database does not take connections now (an operator's
        // `ALLOW_CONNECTIONS false` during maintenance). 28: the password or role was changed
        // under a running node; 3D000: its database was dropped or renamed. Each is an
        // operator's to mend, and meanwhile nothing can be stored: a 503 to try again, not a
        // 500 that many producers give up on. 25P02: a statement pipelined after one the
        // database refused or cancelled (a `statement_timeout`) hears only that the
        // transaction is aborted, and may be the error the caller gets: it is that one's.
        return code.starts_with("08")
            || code == "25P02"
            || code.starts_with("28")
            || code == "3D000"
            || code.starts_with("53")
            || code.starts_with("57P")
            || code == "40001"
            || code == "40P01"
            || code == "55000";
    }
    // No SQLSTATE: the connection itself failed (refused, reset, closed, timed out).
    e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.to_string().starts_with("timeout")
}

pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => sql(e),
        PoolError::Timeout(_) | PoolError::Closed | PoolError::PostCreateHook(_) => {
            StoreError::Unavailable(Box::new(e))
        }
        PoolError::NoRuntimeSpecified => StoreError::Other(Box::new(e)),
    }
}

pub(crate) fn is_unique_violation(e: &DbError) -> bool {
    matches!(e, DbError::Sql(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_org(&self, org: &Organization) -> StoreResult<()> {
        in_tx!(self, |tx| orgs::create(&tx, org))
    }

    async fn list_orgs(&self, page: &PageRequest) -> StoreResult<Page<Organization>> {
        on_client!(self, |c| orgs::list(&c, page))
    }

    async fn get_org(&self, id: &OrgId) -> StoreResult<Organization> {
        on_client!(self, |c| orgs::get(&c, id))
    }

    async fn update_org(&self, org: &Organization) -> StoreResult<()> {
        in_tx!(self, |tx| orgs::update(&tx, org))
    }

    async fn org_config(&self, id: &OrgId) -> StoreResult<OrgConfig> {
        let config = in_snapshot!(self, |tx| orgs::config(&tx, id))?;
        Ok(OrgConfig {
            webhooks: (config.webhooks.into_iter())
                .map(|w| self.cipher.open_webhook(w))
                .collect::<StoreResult<_>>()?,
            ..config
        })
    }

    async fn delete_org(&self, id: &OrgId) -> StoreResult<()> {
        // Deleting every row of an organization in use can deadlock with a node recording
        // outcomes for its deliveries (rows locked in other orders); PostgreSQL ends one of
        // the two, and a deletion ended so is tried again rather than answered as an outage.
        again_after_deadlock(&format!("deleting the organization {id}"), || async {
            in_tx!(self, BULK_TIMEOUT, |tx| orgs::delete(&tx, id))
        })
        .await
    }

    async fn org_change_turn(&self, org: &OrgId) -> StoreResult<ChangeTurn> {
        orgs::change_turn(&self.config, &self.tls, &self.change_turns, org).await
    }

    async fn unpark_active(&self, webhook: &WebhookId) -> StoreResult<u64> {
        in_tx!(self, BULK_TIMEOUT, |tx| webhooks::unpark_active(
            &tx, webhook
        ))
    }

    async fn park_inactive(&self, webhook: &WebhookId, now: Timestamp) -> StoreResult<u64> {
        in_tx!(self, BULK_TIMEOUT, |tx| webhooks::park_inactive(
            &tx, webhook, now
        ))
    }

    async fn sweep_deleted_orgs(&self) -> StoreResult<u64> {
        in_tx!(self, BULK_TIMEOUT, |tx| orgs::sweep_deleted(&tx))
    }

    async fn create_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        in_tx!(self, |tx| orgs::create_api_key(&tx, key))
    }

    async fn list_api_keys(&self, org: &OrgId) -> StoreResult<Vec<ApiKey>> {
        on_client!(self, |c| orgs::list_api_keys(&c, org))
    }

    async fn delete_api_key(&self, org: &OrgId, id: &ApiKeyId) -> StoreResult<()> {
        in_tx!(self, |tx| orgs::delete_api_key(&tx, org, id))
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        on_client!(self, |c| orgs::find_api_key(&c, key_hash))
    }

    async fn create_event_type(&self, event_type: &CustomEventType) -> StoreResult<()> {
        in_tx!(self, |tx| orgs::create_event_type(&tx, event_type))
    }

    async fn list_event_types(&self, org: &OrgId) -> StoreResult<Vec<CustomEventType>> {
        on_client!(self, |c| orgs::list_event_types(&c, org))
    }

    async fn delete_event_type(&self, org: &OrgId, name: &str) -> StoreResult<()> {
        in_tx!(self, |tx| orgs::delete_event_type(&tx, org, name))
    }

    async fn create_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        let w = self.cipher.seal_webhook(webhook);
        in_tx!(self, |tx| webhooks::create(&tx, &w))
    }

    async fn list_webhooks(&self, org: &OrgId, page: &PageRequest) -> StoreResult<Page<Webhook>> {
        let page: Page<Webhook> = on_client!(self, |c| webhooks::list(&c, org, page))?;
        Ok(Page {
            data: page
                .data
                .into_iter()
                .map(|w| self.cipher.open_webhook(w))
                .collect::<StoreResult<_>>()?,
            next_cursor: page.next_cursor,
        })
    }

    async fn org_webhooks(&self, org: &OrgId) -> StoreResult<Vec<Webhook>> {
        let all: Vec<Webhook> = on_client!(self, |c| webhooks::all_of_org(&c, org))?;
        all.into_iter()
            .map(|w| self.cipher.open_webhook(w))
            .collect()
    }

    async fn get_webhook(&self, org: &OrgId, id: &WebhookId) -> StoreResult<Webhook> {
        let w = on_client!(self, |c| webhooks::get(&c, org, id))?;
        self.cipher.open_webhook(w)
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
        in_tx!(self, BULK_TIMEOUT, |tx| webhooks::delete_many(
            &tx,
            org,
            ids,
            now,
            unchanged_since
        ))
    }

    async fn cancel_orphaned(&self, since: Timestamp, now: Timestamp) -> StoreResult<u64> {
        in_tx!(self, BULK_TIMEOUT, |tx| webhooks::cancel_orphaned(
            &tx, since, now
        ))
    }

    async fn disable_webhook(
        &self,
        org: &OrgId,
        id: &WebhookId,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        in_tx!(self, BULK_TIMEOUT, |tx| webhooks::disable(
            &tx, org, id, reason, now
        ))
    }

    async fn note_webhook_outcome(
        &self,
        id: &WebhookId,
        failed: bool,
        now: Timestamp,
    ) -> StoreResult<Option<Timestamp>> {
        in_tx!(self, |tx| webhooks::note_outcome(&tx, id, failed, now))
    }

    async fn insert_events(
        &self,
        org: &OrgId,
        items: &[IngestItem],
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<Vec<IngestResult>> {
        self.insert_events_unless_changed(org, None, items, now, lease_until)
            .await
    }

    async fn config_mark(&self) -> StoreResult<Option<ConfigMark>> {
        on_client!(self, |c| orgs::config_mark(&c)).map(Some)
    }

    async fn changed_since(&self, org: &OrgId, seen: &ConfigMark) -> StoreResult<bool> {
        on_client!(self, |c| orgs::changed_since(&c, org, seen))
    }

    async fn insert_events_unless_changed(
        &self,
        org: &OrgId,
        seen: Option<&ConfigMark>,
        items: &[IngestItem],
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<Vec<IngestResult>> {
        self.ingest
            .store(&self.pool, org, seen, items, now, lease_until)
            .await
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>> {
        let (due, taken_over) = in_tx!(self, |tx| deliveries::claim_due(
            &tx,
            now,
            lease_until,
            limit
        ))?;
        if taken_over > 0 {
            deliveries::say_taken_over(taken_over);
        }
        Ok(due)
    }

    async fn claim_spilled(
        &self,
        webhook: &WebhookId,
        from: &DeliveryId,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>> {
        in_tx!(self, |tx| deliveries::claim_spilled(
            &tx,
            webhook,
            from,
            now,
            lease_until,
            limit
        ))
    }

    async fn spill_deliveries(&self, leases: &[(DeliveryId, Timestamp)]) -> StoreResult<()> {
        on_client!(self, |c| deliveries::spill(&c, leases))
    }

    async fn rearm_spilled(
        &self,
        webhook: &WebhookId,
        from: &DeliveryId,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> StoreResult<u64> {
        on_client!(self, |c| deliveries::rearm_spilled(
            &c, webhook, from, now, until, limit
        ))
    }

    async fn spilled_starts(&self) -> StoreResult<Vec<(WebhookId, DeliveryId)>> {
        on_client!(self, |c| deliveries::spilled_starts(&c))
    }

    async fn earliest_due_webhook(&self, now: Timestamp) -> StoreResult<Option<WebhookId>> {
        on_client!(self, |c| deliveries::earliest_due_webhook(&c, now))
    }

    async fn next_due_at(&self) -> StoreResult<Option<Timestamp>> {
        on_client!(self, |c| deliveries::next_due_at(&c))
    }

    async fn record_attempts(&self, records: &[AttemptRecord]) -> StoreResult<Vec<bool>> {
        // The other side of `delete_org`'s deadlock: ended by PostgreSQL, the outcomes are
        // recorded again, not taken for the database being away (which pauses the node's
        // attempts, every organization's, and says the database is down).
        again_after_deadlock("recording attempt outcomes", || async {
            in_tx!(self, |tx| deliveries::record_attempts(&tx, records))
        })
        .await
    }

    async fn record_cut_off(&self, records: &[AttemptRecord]) -> StoreResult<Vec<DeliveryId>> {
        in_tx!(self, |tx| deliveries::record_cut_off(&tx, records))
    }

    async fn defer_deliveries(
        &self,
        org: &OrgId,
        leases: &[(DeliveryId, Timestamp)],
        until: Timestamp,
    ) -> StoreResult<usize> {
        // Not in a transaction of its own: a breaker defers up to a thousand at once, and a
        // transaction holding some of them while it waits for the next would deadlock with a
        // change to all of the webhook's deliveries (a pause, a deletion) that holds that one
        // and waits for these. Each statement skips the rows others hold instead, and tries
        // them again (see `deliveries::write_held`). Deferring twice is harmless.
        timed(async { Ok(deliveries::defer(&self.pool, org, leases, until).await?) }).await
    }

    async fn end_unsent(
        &self,
        org: &OrgId,
        leases: &[(DeliveryId, Timestamp)],
        state: DeliveryState,
        error: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<DeliveryId>> {
        // Not in a transaction of its own, for the reason `defer_deliveries` gives.
        timed(async {
            Ok(deliveries::end_unsent(&self.pool, org, leases, state, error, now).await?)
        })
        .await
    }

    async fn renew_leases(
        &self,
        leases: &[(DeliveryId, Timestamp)],
        until: Timestamp,
    ) -> StoreResult<Vec<DeliveryId>> {
        timed(async { Ok(deliveries::renew_leases(&self.pool, leases, until).await?) }).await
    }

    async fn move_deferred(
        &self,
        webhook: &WebhookId,
        deferred_to: Timestamp,
        to: Timestamp,
    ) -> StoreResult<u64> {
        in_tx!(self, BULK_TIMEOUT, |tx| deliveries::move_deferred(
            &tx,
            webhook,
            deferred_to,
            to
        ))
    }

    async fn answers_reads(&self) -> StoreResult<()> {
        // Names Herald's table and the columns the scheduler reads, so that a database without
        // them (emptied, another one) does not pass, and waits as a read would behind a lock
        // that keeps reads out; reads no row.
        on_client!(self, |c| async move {
            c.query(
                "SELECT id, state, due_at, lease_until FROM deliveries LIMIT 0",
                &[],
            )
            .await
            .map(|_| ())
            .map_err(sql)
        })
    }

    async fn database_time(&self) -> StoreResult<Option<Timestamp>> {
        let row = on_client!(self, |c| async move {
            c.query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT",
                &[],
            )
            .await
            .map_err(sql)
        })?;
        Ok(Some(Timestamp::from_millis(row.get(0))))
    }

    async fn release_lease(&self, id: &DeliveryId, lease_until: Timestamp) -> StoreResult<()> {
        in_tx!(self, |tx| deliveries::release_lease(&tx, id, lease_until))
    }

    async fn release_all_leases(&self) -> StoreResult<u64> {
        in_tx!(self, |tx| deliveries::release_all_leases(&tx))
    }

    async fn list_deliveries(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Delivery>> {
        on_client!(self, |c| deliveries::list(&c, org, webhook, filter, page))
    }

    async fn get_delivery(
        &self,
        org: &OrgId,
        id: &DeliveryId,
    ) -> StoreResult<(Delivery, Vec<Attempt>)> {
        // One snapshot for both reads: between them an attempt's outcome may be committed,
        // and a delivery still `pending` would show the attempt that made it `succeeded`.
        in_snapshot!(self, |tx| deliveries::get(&tx, org, id))
    }

    async fn get_event(&self, org: &OrgId, id: &str) -> StoreResult<Event> {
        on_client!(self, |c| deliveries::get_event(&c, org, id))
    }

    async fn list_events(
        &self,
        org: &OrgId,
        filter: &EventFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<EventSummary>> {
        on_client!(self, |c| deliveries::list_events(&c, org, filter, page))
    }

    async fn get_events(&self, org: &OrgId, ids: &[String]) -> StoreResult<Vec<Event>> {
        on_client!(self, |c| deliveries::get_events(&c, org, ids))
    }

    async fn event_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
        limit: u32,
    ) -> StoreResult<(Event, Vec<Delivery>)> {
        // One snapshot: a delivery stored with the event is seen with it.
        in_snapshot!(self, |tx| deliveries::event_deliveries(
            &tx, org, event_id, limit
        ))
    }

    async fn resend_delivery(
        &self,
        org: &OrgId,
        id: &DeliveryId,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<DueDelivery> {
        in_tx!(self, |tx| deliveries::resend(
            &tx,
            org,
            id,
            now,
            lease_until
        ))
    }

    async fn purge_before(
        &self,
        org: Option<&OrgId>,
        cutoff: Timestamp,
        limit: u32,
        from: Option<PurgeFrom>,
    ) -> StoreResult<(PurgeCount, Option<PurgeFrom>)> {
        // The other side of `delete_org`'s deadlock too (it deletes deliveries, then events; a
        // step holds events, then deliveries): the step is taken again, not answered `503`.
        again_after_deadlock("a purge step", || async {
            in_tx!(self, |tx| deliveries::purge(
                &tx,
                org,
                cutoff,
                limit,
                from.clone()
            ))
        })
        .await
    }

    async fn pending_by_webhook(&self) -> StoreResult<Vec<PendingStat>> {
        on_client!(self, |c| deliveries::pending_by_webhook(&c))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn write_trouble(&self) -> Option<String> {
        self.ingest.trouble()
    }

    fn serving_trouble(&self) -> Option<String> {
        // A node without a key the others seal with cannot serve their webhooks.
        self.cipher.missing_key_trouble()
    }

    fn signals(&self) -> Option<broadcast::Receiver<StoreSignal>> {
        let receiver = self.signals.subscribe();
        self.listener.get_or_init(|| {
            signals::spawn(self.config.clone(), self.tls.clone(), self.signals.clone())
        });
        Some(receiver)
    }

    async fn org_subscriptions(&self, org: &OrgId) -> StoreResult<Vec<Subscription>> {
        on_client!(self, |c| webhooks::org_subscriptions(&c, org))
    }

    async fn orgs_with_websub_webhooks(&self) -> StoreResult<Vec<OrgId>> {
        on_client!(self, |c| webhooks::orgs_with_websub_webhooks(&c))
    }

    async fn save_subscriptions(
        &self,
        org: &OrgId,
        subscriptions: &[Subscription],
    ) -> StoreResult<()> {
        in_tx!(self, |tx| webhooks::save_subscriptions(
            &tx,
            org,
            subscriptions
        ))
    }

    async fn save_subscriptions_as_read(
        &self,
        org: &OrgId,
        subscriptions: &[(Subscription, Option<AsRead>)],
    ) -> StoreResult<usize> {
        in_tx!(self, |tx| webhooks::save_subscriptions_as_read(
            &tx,
            org,
            subscriptions
        ))
    }

    async fn claim_renewal(
        &self,
        org: &OrgId,
        subscription: &Subscription,
        until: Timestamp,
    ) -> StoreResult<bool> {
        on_client!(self, |c| webhooks::claim_renewal(
            &c,
            org,
            subscription,
            until
        ))
    }

    async fn subscriptions_to_renew(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<(OrgId, Subscription)>> {
        on_client!(self, |c| webhooks::subscriptions_to_renew(&c, now, limit))
    }

    async fn webhook_health(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        window: &herald_core::health::HealthWindow,
    ) -> StoreResult<herald_core::health::HealthRows> {
        on_client!(self, |c| health::webhook_health(&c, org, webhook, window))
    }

    async fn create_session(
        &self,
        session: &DashboardSession,
        now: Timestamp,
        limits: SessionLimits,
    ) -> StoreResult<()> {
        in_tx!(self, |tx| sessions::create(&tx, session, now, limits))
    }

    async fn get_session(
        &self,
        id_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<DashboardSession>> {
        on_client!(self, |c| sessions::get(&c, id_hash, now))
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        in_tx!(self, |tx| sessions::delete(&tx, id_hash))
    }

    async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64> {
        in_tx!(self, |tx| sessions::delete_expired(&tx, now))
    }

    async fn add_flash(
        &self,
        id_hash: &str,
        page: &str,
        sealed: &str,
        keep: usize,
    ) -> StoreResult<()> {
        in_tx!(self, |tx| sessions::add_flash(
            &tx, id_hash, page, sealed, keep
        ))
    }

    async fn take_flashes(&self, id_hash: &str, page: &str) -> StoreResult<Vec<String>> {
        on_client!(self, |c| sessions::take_flashes(&c, id_hash, page))
    }

    async fn retry_waiting(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        now: Timestamp,
    ) -> StoreResult<u64> {
        in_tx!(self, BULK_TIMEOUT, |tx| deliveries::retry_waiting(
            &tx, org, webhook, now
        ))
    }

    async fn recover_failed(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        since: Timestamp,
        now: Timestamp,
        skipped: bool,
    ) -> StoreResult<u64> {
        in_tx!(self, BULK_TIMEOUT, |tx| deliveries::recover_failed(
            &tx, org, webhook, since, now, skipped
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_cannot_be_reached_is_unavailable() {
        // Nothing listens on port 1: the connection is refused.
        let store = PostgresStore::new(
            "postgres://herald@127.0.0.1:1/herald",
            PostgresOptions::default(),
            SecretCipher::none(),
        )
        .unwrap();
        let got = store.get_org(&OrgId::generate()).await;
        assert!(
            matches!(got, Err(StoreError::Unavailable(_))),
            "expected Unavailable, got {got:?}"
        );
        assert!(matches!(
            store.migrate().await,
            Err(StoreError::Unavailable(_))
        ));
    }

    /// A database that refuses connections for a while (maintenance) is unavailable, not a
    /// fault: callers answer 503 with `Retry-After`. Needs a PostgreSQL server where it may
    /// create a database (`HERALD_TEST_DATABASE_URL`); skipped without one.
    #[tokio::test]
    async fn a_database_that_takes_no_connections_now_is_unavailable() {
        let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") else {
            return;
        };
        let admin =
            PostgresStore::new(&url, PostgresOptions::default(), SecretCipher::none()).unwrap();
        let client = admin.client().await.unwrap();
        let name = format!("herald_closed_{}", std::process::id());
        // One statement at a time: several in one go run as one transaction, which
        // `CREATE DATABASE` refuses.
        for statement in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
            format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
        ] {
            client.batch_execute(&statement).await.unwrap();
        }
        let base = url.rsplit_once('/').unwrap().0;
        let closed = PostgresStore::new(
            &format!("{base}/{name}"),
            PostgresOptions::default(),
            SecretCipher::none(),
        )
        .unwrap();
        let got = closed.get_org(&OrgId::generate()).await;
        client
            .batch_execute(&format!("DROP DATABASE {name}"))
            .await
            .unwrap();
        assert!(
            matches!(got, Err(StoreError::Unavailable(_))),
            "expected Unavailable, got {got:?}"
        );
    }

    /// A node whose database was dropped, or whose password was changed, under it cannot store
    /// anything until an operator mends it: a 503 to try again, not a 500 that producers give
    /// up on. Skipped without `HERALD_TEST_DATABASE_URL`.
    #[tokio::test]
    async fn a_missing_database_or_a_refused_password_is_unavailable() {
        let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") else {
            return;
        };
        let base = url.rsplit_once('/').unwrap().0;
        let missing = format!("{base}/herald_missing_{}", std::process::id());
        let admin =
            PostgresStore::new(&url, PostgresOptions::default(), SecretCipher::none()).unwrap();
        let client = admin.client().await.unwrap();
        let role = format!("herald_pw_{}", std::process::id());
        client
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'right-password'"
            ))
            .await
            .unwrap();
        let (scheme, rest) = url.split_once("://").unwrap();
        let host_and_db = rest.split_once('@').map_or(rest, |(_, h)| h);
        let wrong = format!("{scheme}://{role}:wrong-password@{host_and_db}");
        for target in [missing, wrong] {
            let store =
                PostgresStore::new(&target, PostgresOptions::default(), SecretCipher::none())
                    .unwrap();
            // Trust authentication (a test server's) takes any password: only a server that
            // checks passwords refuses the wrong one.
            if let Err(e) = &store.client().await {
                assert!(
                    matches!(e, StoreError::Unavailable(_)),
                    "{target}: expected Unavailable, got {e:?}"
                );
            }
        }
        client
            .batch_execute(&format!("DROP ROLE {role}"))
            .await
            .unwrap();
    }

    /// A statement cancelled by a `statement_timeout` set for Herald's role is the database
    /// being away, and so is what a statement after it in the same transaction hears (the
    /// transaction is aborted): a 503 and a pause, not a 500 and an ERROR line. Skipped
    /// without `HERALD_TEST_DATABASE_URL`.
    #[tokio::test]
    async fn a_cancelled_statement_and_its_aborted_transaction_are_unavailable() {
        let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") else {
            return;
        };
        let store =
            PostgresStore::new(&url, PostgresOptions::default(), SecretCipher::none()).unwrap();
        let mut client = store.client().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.batch_execute("SET LOCAL statement_timeout = 1")
            .await
            .unwrap();
        let cancelled = tx.batch_execute("SELECT pg_sleep(1)").await.unwrap_err();
        let aborted = tx.batch_execute("SELECT 1").await.unwrap_err();
        for (what, e) in [("cancelled", cancelled), ("aborted", aborted)] {
            let e = sql(e);
            assert!(matches!(e, StoreError::Unavailable(_)), "{what}: {e:?}");
        }
    }

    #[test]
    fn a_malformed_url_is_refused_without_showing_it() {
        let err = PostgresStore::new(
            "postgres://user:hunter2@host:notaport/db",
            PostgresOptions::default(),
            SecretCipher::none(),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        assert!(
            std::error::Error::source(&err)
                .unwrap()
                .to_string()
                .contains("postgres://user@host")
        );
        // What is wrong is named.
        let err = PostgresStore::new(
            "postgres://user@host/db?sslmod=require",
            PostgresOptions::default(),
            SecretCipher::none(),
        )
        .unwrap_err();
        let said = herald_core::error_chain(&err);
        assert!(said.contains("unknown option `sslmod`"), "{said}");
    }
}
