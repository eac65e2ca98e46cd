//! Bringing a PostgreSQL database's schema up to this version, with nodes that start together
//! taking turns, and without holding up the nodes that run on during a rolling upgrade.

use std::time::Duration;

use herald_core::store::StoreResult;

use super::{PostgresStore, sql};
use crate::migrations::{self, Migration};

/// Serialises migrations when several nodes start at once (any constant; "herald" in ASCII).
/// Older Heralds take it for a transaction (`pg_advisory_xact_lock`); it is the same lock.
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64;

/// How often a node waiting for another's migrations tries the lock again. It polls rather
/// than waits in one statement: a waiting statement holds a snapshot, which the other node's
/// `CREATE INDEX CONCURRENTLY` would wait for in turn, and PostgreSQL would end one of the two
/// as a deadlock.
const LOCK_POLL: Duration = Duration::from_millis(250);

/// How often the build of a large index says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The migrations that build an index with `CREATE INDEX CONCURRENTLY`, and the index each
/// builds. Such a migration is one statement, run outside a transaction, so that the nodes
/// still running during a rolling upgrade go on storing events while it is built: a plain
/// `CREATE INDEX` holds every insert into the table back for as long as it takes (about a
/// second per million events; concurrently, a quarter longer: BENCHMARKS.md). A build cut off
/// leaves an invalid index behind, which the next try drops and builds again.
const CONCURRENT_INDEXES: &[(i64, &str)] = &[(11, "events_by_org")];

/// The index a migration builds concurrently, if it is one of those.
fn concurrent_index(migration: &Migration) -> Option<&'static str> {
    CONCURRENT_INDEXES
        .iter()
        .find(|(version, _)| *version == migration.version)
        .map(|(_, index)| *index)
}

impl PostgresStore {
    /// Applies the migrations the database lacks, under an advisory lock so that nodes starting
    /// together take turns. Consecutive migrations apply in one transaction; one that builds an
    /// index concurrently runs on its own between them. Answers how many it applied.
    pub async fn migrate(&self) -> StoreResult<usize> {
        self.migrate_up_to(i64::MAX).await
    }

    /// [`PostgresStore::migrate`], stopping after version `last`.
    pub(crate) async fn migrate_up_to(&self, last: i64) -> StoreResult<usize> {
        refuse_old_server(&self.client().await?).await?;
        let mut locked = MigrationLock::take(self.client().await?).await?;
        let applied = apply(self, locked.client(), last).await?;
        locked.release().await;
        let Applied {
            count,
            upgrading,
            newest,
        } = applied;
        migrations::warn_if_newer(newest, migrations::POSTGRES.len());
        let client = self.client().await?;
        warn_if_autovacuum_is_off(&client).await;
        if !upgrading && count > 0 {
            // A new database: one line, not one per migration.
            let version = migrations::POSTGRES.last().map_or(0, |m| m.version);
            tracing::info!(version, "created the database schema");
        }
        Ok(count)
    }

    /// Checks that the schema is the one this version needs (for a node started with
    /// migrations turned off). Answers the schema's version.
    pub async fn check_schema(&self) -> StoreResult<i64> {
        let client = self.client().await?;
        refuse_old_server(&client).await?;
        let row = client
            .query_opt(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await;
        let version: i64 = match row {
            Ok(row) => row.map(|r| r.get(0)).unwrap_or(0),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
            Err(e) => return Err(sql(e)),
        };
        let wanted = migrations::POSTGRES.len() as i64;
        if version < wanted {
            return Err(herald_core::store::StoreError::Refused(format!(
                "the database schema is at version {version}, this Herald needs {wanted}: run `herald migrate` (or start one node with migrations on)"
            )));
        }
        migrations::warn_if_newer(version, migrations::POSTGRES.len());
        warn_if_autovacuum_is_off(&client).await;
        Ok(version)
    }
}

/// The oldest PostgreSQL Herald runs on: ingest checks its fan-out against changes committed
/// since a read with `pg_current_snapshot` and `xid8` (migration 0013), both new in 13.
const OLDEST_SERVER: i32 = 130_000;

/// Refuses a server older than [`OLDEST_SERVER`], saying so, before a migration fails on it
/// with PostgreSQL's own words.
async fn refuse_old_server(client: &deadpool_postgres::Client) -> StoreResult<()> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::INT", &[])
        .await
        .map_err(sql)?;
    match too_old(row.get(0)) {
        Some(refusal) => Err(herald_core::store::StoreError::Refused(refusal)),
        None => Ok(()),
    }
}

/// Why a server of `version` (as `server_version_num` gives it) is too old, if it is.
fn too_old(version: i32) -> Option<String> {
    (version < OLDEST_SERVER).then(|| {
        // 12.15 is 120015; before 10, 9.6.24 was 90624.
        let shown = if version >= 100_000 {
            format!("{}.{}", version / 10_000, version % 10_000)
        } else {
            format!(
                "{}.{}.{}",
                version / 10_000,
                version / 100 % 100,
                version % 100
            )
        };
        format!(
            "this PostgreSQL server is version {shown}, and Herald needs 13 or newer: upgrade the \
             server (or keep the embedded SQLite database, with HERALD_DATABASE_URL unset)"
        )
    })
}

/// What a run of the migrations did.
struct Applied {
    count: usize,
    /// Whether the database had a schema before.
    upgrading: bool,
    /// The newest version in the database after it.
    newest: i64,
}

/// Applies the pending migrations up to `last` on `client`, which holds the migration lock.
async fn apply(
    store: &PostgresStore,
    client: &mut tokio_postgres::Client,
    last: i64,
) -> StoreResult<Applied> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(sql)?;
    let done: Vec<i64> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(sql)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let upgrading = !done.is_empty();
    let pending: Vec<&Migration> = migrations::POSTGRES
        .iter()
        .filter(|m| m.version <= last && !done.contains(&m.version))
        .collect();
    // Runs of ordinary migrations, each in one transaction; each concurrent build on its own.
    for run in
        pending.chunk_by(|a, b| concurrent_index(a).is_none() && concurrent_index(b).is_none())
    {
        if let Some(index) = concurrent_index(run[0]) {
            build_concurrently(store, client, run[0], index, upgrading).await?;
            record(&*client, run[0]).await?;
            continue;
        }
        let tx = client.transaction().await.map_err(sql)?;
        for m in run {
            tx.batch_execute(m.sql).await.map_err(sql)?;
            record(&tx, m).await?;
            if upgrading {
                tracing::info!(version = m.version, name = m.name, "applied migration");
            } else {
                tracing::debug!(version = m.version, name = m.name, "applied migration");
            }
        }
        tx.commit().await.map_err(sql)?;
    }
    let newest: i64 = client
        .query_one("SELECT MAX(version) FROM schema_migrations", &[])
        .await
        .map_err(sql)?
        .get(0);
    Ok(Applied {
        count: pending.len(),
        upgrading,
        newest,
    })
}

async fn record(c: &impl tokio_postgres::GenericClient, m: &Migration) -> StoreResult<()> {
    c.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        &[
            &m.version,
            &m.name,
            &herald_core::Clock::now(&herald_core::SystemClock).as_millis(),
        ],
    )
    .await
    .map_err(sql)?;
    Ok(())
}

/// Builds `index` as `migration` says, without a transaction, after dropping what a build cut
/// off before left behind. On an upgrade it says when it starts and, every
/// [`PROGRESS_EVERY`], how far it got.
async fn build_concurrently(
    store: &PostgresStore,
    client: &tokio_postgres::Client,
    migration: &Migration,
    index: &str,
    upgrading: bool,
) -> StoreResult<()> {
    let valid: Option<bool> = client
        .query_opt(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
            &[&index],
        )
        .await
        .map_err(sql)?
        .map(|row| row.get(0));
    if valid == Some(false) {
        tracing::info!(
            index,
            "dropping the index an earlier migration left unfinished, to build it again"
        );
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .await
            .map_err(sql)?;
    }
    if !upgrading {
        return client.batch_execute(migration.sql).await.map_err(sql);
    }
    tracing::info!(
        version = migration.version,
        name = migration.name,
        index,
        "building an index; nodes still running go on storing events meanwhile (about 1.3 s per million events)"
    );
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(sql)?
        .get(0);
    let progress = tokio::spawn(say_progress(store.pool.clone(), pid, index.to_owned()));
    let built = client.batch_execute(migration.sql).await.map_err(sql);
    progress.abort();
    built?;
    tracing::info!(
        version = migration.version,
        name = migration.name,
        index,
        "applied migration"
    );
    Ok(())
}

/// Logs, every [`PROGRESS_EVERY`], the phase of the index build on backend `pid` and how much
/// of the table it has read (`pg_stat_progress_create_index`). Runs until aborted.
async fn say_progress(pool: deadpool_postgres::Pool, pid: i32, index: String) {
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let Ok(client) = pool.get().await else {
            continue;
        };
        let Ok(Some(row)) = client
            .query_opt(
                "SELECT phase, blocks_done, blocks_total FROM pg_stat_progress_create_index \
                 WHERE pid = $1",
                &[&pid],
            )
            .await
        else {
            continue;
        };
        let (phase, done, total): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if total > 0 {
            let percent = done.saturating_mul(100) / total;
            tracing::info!(%index, %phase, "building the index: {percent}% of this phase done");
        } else {
            tracing::info!(%index, %phase, "building the index");
        }
    }
}

/// A connection holding the session-level migration lock. Dropped without
/// [`MigrationLock::release`] (an error, or the migration given up on), it closes the
/// connection rather than return it to the pool still holding the lock.
struct MigrationLock {
    client: Option<deadpool_postgres::Object>,
}

impl MigrationLock {
    /// Takes the lock on `client`, trying again every [`LOCK_POLL`] while another node holds
    /// it.
    async fn take(client: deadpool_postgres::Object) -> StoreResult<Self> {
        let mut said = false;
        loop {
            let taken: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(sql)?
                .get(0);
            if taken {
                return Ok(Self {
                    client: Some(client),
                });
            }
            if !said {
                tracing::info!("waiting for another node's migrations to finish");
                said = true;
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    fn client(&mut self) -> &mut tokio_postgres::Client {
        self.client.as_mut().expect("held until released")
    }

    /// Gives the lock back, and the connection to the pool.
    async fn release(mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let released = client
            .query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .is_ok_and(|row| row.get::<_, bool>(0));
        if !released {
            // Closing the connection is what surely ends the lock.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Says so at start when the server's autovacuum is off: every delivery is written several
/// times (created, leased, attempted, finished), each write leaving a dead row behind, and
/// without vacuuming the tables grow without bound (a 35-minute soak on such a server left
/// three dead rows of `deliveries` for each live one). Once a process: `herald copy` opens the
/// database twice.
async fn warn_if_autovacuum_is_off(client: &tokio_postgres::Client) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let Ok(row) = client.query_one("SHOW autovacuum", &[]).await else {
        return;
    };
    if row.get::<_, String>(0) == "off" && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            "PostgreSQL's autovacuum is off: Herald's tables will keep every dead row and grow, and without the statistics it also gathers (ANALYZE) the scheduler's reads slow down within minutes of steady load; turn it on (autovacuum = on in postgresql.conf) or run VACUUM ANALYZE every few minutes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::SecretCipher;
    use crate::postgres::PostgresOptions;

    #[test]
    fn each_concurrent_index_is_built_by_one_statement_of_its_own() {
        for m in migrations::POSTGRES {
            let code: String = m
                .sql
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            let statements: Vec<&str> = code.split(';').filter(|s| !s.trim().is_empty()).collect();
            match concurrent_index(m) {
                Some(index) => {
                    assert_eq!(statements.len(), 1, "migration {}", m.version);
                    assert!(
                        statements[0].trim().starts_with(&format!(
                            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} "
                        )),
                        "migration {}: {}",
                        m.version,
                        statements[0]
                    );
                }
                None => assert!(
                    !code.contains("CONCURRENTLY"),
                    "migration {} builds concurrently: list it in CONCURRENT_INDEXES",
                    m.version
                ),
            }
        }
        for (version, _) in CONCURRENT_INDEXES {
            assert!(migrations::POSTGRES.iter().any(|m| m.version == *version));
        }
    }

    /// Whether `index` exists, and is valid.
    async fn index_state(c: &tokio_postgres::Client, index: &str) -> Option<bool> {
        c.query_opt(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
            &[&index],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
    }

    /// Waits (up to 10 s) until another backend's index build waits for a lock, and answers
    /// its process id.
    async fn build_waiting(c: &tokio_postgres::Client) -> i32 {
        for _ in 0..200 {
            let waiting = c
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid() AND query LIKE '%CREATE INDEX%' \
                     AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            if let Some(row) = waiting {
                return row.get(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the index build never waited for the open transaction");
    }

    const INSERT_EVENT: &str = "INSERT INTO events (org_id, id, type, occurred_at, received_at, \
                                data) VALUES ('org_a', $1, 'user.created', 0, 0, '{}')";

    /// A rolling upgrade: while the new node builds migration 11's index, a node still running
    /// stores events as before (a plain `CREATE INDEX` would hold them back until it is built).
    /// A build cut off leaves an invalid index, which the next migration drops and builds
    /// again. Skipped without `HERALD_TEST_DATABASE_URL`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn building_an_index_holds_up_no_new_event_and_a_build_cut_off_is_done_again() {
        let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") else {
            return;
        };
        let options = PostgresOptions { pool_size: 4 };
        let admin = PostgresStore::new(&url, options.clone(), SecretCipher::none()).unwrap();
        let admin = admin.client().await.unwrap();
        let name = format!("herald_migrate_{:016x}", rand::random::<u64>());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = url.rsplit_once('/').unwrap().0;
        let database = format!("{base}/{name}");
        let store = std::sync::Arc::new(
            PostgresStore::new(&database, options.clone(), SecretCipher::none()).unwrap(),
        );
        assert_eq!(store.migrate_up_to(10).await.unwrap(), 10);
        let side = PostgresStore::new(&database, options, SecretCipher::none()).unwrap();
        let (running, other, watcher) = (
            side.client().await.unwrap(),
            side.client().await.unwrap(),
            side.client().await.unwrap(),
        );

        // A running node in the middle of storing an event: the build waits for it to end.
        running.batch_execute("BEGIN").await.unwrap();
        running.execute(INSERT_EVENT, &[&"e1"]).await.unwrap();
        let migrating = tokio::spawn({
            let store = store.clone();
            async move { store.migrate().await }
        });
        build_waiting(&watcher).await;
        // Meanwhile another event is stored at once.
        other
            .batch_execute("SET lock_timeout = '5s'")
            .await
            .unwrap();
        let stored = other.execute(INSERT_EVENT, &[&"e2"]).await;
        assert!(
            stored.is_ok(),
            "an event was held up by the index build: {stored:?}"
        );
        running.batch_execute("COMMIT").await.unwrap();
        // 11, and those after it.
        assert_eq!(
            migrating.await.unwrap().unwrap(),
            migrations::POSTGRES.len() - 10
        );
        assert_eq!(index_state(&watcher, "events_by_org").await, Some(true));

        // A build cut off (the node killed, the statement cancelled) leaves the index invalid.
        watcher
            .batch_execute(
                "DELETE FROM schema_migrations WHERE version = 11; DROP INDEX events_by_org",
            )
            .await
            .unwrap();
        running.batch_execute("BEGIN").await.unwrap();
        running.execute(INSERT_EVENT, &[&"e3"]).await.unwrap();
        let eleven = migrations::POSTGRES
            .iter()
            .find(|m| m.version == 11)
            .unwrap();
        let cut_off =
            tokio::spawn(async move { other.batch_execute(eleven.sql).await.unwrap_err() });
        let pid = build_waiting(&watcher).await;
        watcher
            .execute("SELECT pg_cancel_backend($1)", &[&pid])
            .await
            .unwrap();
        let said = cut_off.await.unwrap();
        assert!(herald_core::error_chain(&said).contains("cancel"), "{said}");
        running.batch_execute("COMMIT").await.unwrap();
        assert_eq!(index_state(&watcher, "events_by_org").await, Some(false));
        assert_eq!(store.migrate().await.unwrap(), 1);
        assert_eq!(index_state(&watcher, "events_by_org").await, Some(true));
        assert_eq!(store.migrate().await.unwrap(), 0);

        drop((running, watcher, side, store));
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .unwrap();
    }

    #[test]
    fn a_server_older_than_13_is_refused_naming_its_version() {
        assert_eq!(too_old(130_000), None);
        assert_eq!(too_old(170_002), None);
        let refusal = too_old(120_015).unwrap();
        assert!(
            refusal.contains("version 12.15, and Herald needs 13 or newer"),
            "{refusal}"
        );
        let refusal = too_old(90_624).unwrap();
        assert!(refusal.contains("version 9.6.24,"), "{refusal}");
    }
}
