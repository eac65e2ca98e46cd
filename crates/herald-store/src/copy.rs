//! `herald copy`: the embedded (SQLite) database copied into an empty PostgreSQL database, for a
//! deployment that grows from one node to several. Everything is copied, in one PostgreSQL
//! transaction: organizations, API keys, event types, webhooks (their secrets as stored:
//! sealed ones open with the same key, since a seal names the webhook's id and field, not the
//! database), WebSub subscriptions, events, deliveries (pending ones included, so nothing
//! waiting to be sent is lost) and attempts. Either all of it lands or none.
//!
//! The columns copied are PostgreSQL's, read from its catalog, so that a column added to both
//! backends by a later migration is copied without a change here; a table this module does not
//! name stops the copy rather than being left behind. SQLite's own columns (the events'
//! sequence numbers) have no counterpart and are not copied.
//!
//! A thread reads SQLite in one read transaction (a consistent snapshot) and hands chunks of
//! rows to the PostgreSQL side, which inserts each chunk with one statement (`unnest` over one
//! array per column); at most a few chunks wait between the two.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_core::store::{StoreError, StoreResult};
use rusqlite::types::ValueRef;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use crate::cipher::SecretCipher;
use crate::postgres::{PostgresStore, sql};

/// The tables copied, in this order.
pub const TABLES: &[&str] = &[
    "organizations",
    "api_keys",
    "event_types",
    "webhooks",
    "subscriptions",
    "events",
    "deliveries",
    "attempts",
];
/// Tables each backend keeps for itself. (Dashboard sessions are not carried over: people
/// sign in again on the new database.)
const NOT_COPIED: &[&str] = &[
    "schema_migrations",
    "dashboard_sessions",
    "dashboard_flashes",
    // PostgreSQL's own: organizations deleted lately (`Store::sweep_deleted_orgs`).
    "deleted_organizations",
    // PostgreSQL's own: changes to organizations, for ingest's check (migration 0013).
    "directory_changes",
];
/// The most rows one insert carries...
const CHUNK_ROWS: usize = 1_000;
/// ...and about the most text (event data is up to a megabyte an event).
const CHUNK_BYTES: usize = 8 << 20;
/// How long to wait for Herald nodes already using the target to let go of its tables.
const LOCK_TIMEOUT: &str = "10s";

/// How far the copy has got: `copied` of `total` rows of `table`.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub table: &'a str,
    pub copied: u64,
    pub total: u64,
}

/// What was copied: rows per table, in [`TABLES`] order.
#[derive(Debug, Default)]
pub struct Copied {
    pub rows: Vec<(&'static str, u64)>,
    /// Deliveries a stopped node had leased, put back on their schedule first.
    pub released: u64,
    /// Of the webhooks, those deleted (kept for their deliveries' history).
    pub deleted_webhooks: u64,
}

/// A PostgreSQL column: its name and how its values travel.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    BigInt,
    Bool,
}

impl Kind {
    fn of(data_type: &str) -> Option<Self> {
        match data_type {
            "text" => Some(Self::Text),
            "bigint" => Some(Self::BigInt),
            "boolean" => Some(Self::Bool),
            _ => None,
        }
    }

    fn array_type(self) -> &'static str {
        match self {
            Self::Text => "text[]",
            Self::BigInt => "bigint[]",
            Self::Bool => "boolean[]",
        }
    }
}

/// One column's values for a chunk of rows.
#[derive(Debug)]
enum Values {
    Text(Vec<Option<String>>),
    BigInt(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
}

impl Values {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Text => Self::Text(Vec::with_capacity(CHUNK_ROWS)),
            Kind::BigInt => Self::BigInt(Vec::with_capacity(CHUNK_ROWS)),
            Kind::Bool => Self::Bool(Vec::with_capacity(CHUNK_ROWS)),
        }
    }

    /// Appends one SQLite value; answers how many bytes of text it took, or why it does not
    /// fit the PostgreSQL column.
    fn push(&mut self, value: ValueRef<'_>) -> Result<usize, String> {
        match (self, value) {
            (Self::Text(v), ValueRef::Null) => v.push(None),
            (Self::BigInt(v), ValueRef::Null) => v.push(None),
            (Self::Bool(v), ValueRef::Null) => v.push(None),
            (Self::Text(v), ValueRef::Text(t)) => {
                let text = std::str::from_utf8(t).map_err(|_| "text that is not UTF-8")?;
                if text.contains('\0') {
                    return Err("text with a NUL character, which PostgreSQL cannot store".into());
                }
                v.push(Some(text.to_owned()));
                return Ok(t.len());
            }
            (Self::BigInt(v), ValueRef::Integer(i)) => v.push(Some(i)),
            (Self::Bool(v), ValueRef::Integer(i @ (0 | 1))) => v.push(Some(i == 1)),
            (_, other) => return Err(format!("a value of type {}", other.data_type())),
        }
        Ok(8)
    }

    fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Self::Text(v) => v,
            Self::BigInt(v) => v,
            Self::Bool(v) => v,
        }
    }
}

/// What the reading thread hands over.
enum Message {
    /// The next table begins, with this many rows.
    Table { total: u64 },
    /// A chunk of the current table's rows, one entry per column.
    Rows { rows: usize, values: Vec<Values> },
}

/// Copies the SQLite database at `sqlite` into `target`, whose schema must be current and whose
/// tables must be empty. Nothing else may use the SQLite database meanwhile (the caller holds
/// its lock): deliveries leased by a node that stopped are first put back on their schedule,
/// as that node's next start would; nothing else in it is written. Every stored webhook secret
/// must open with `cipher` (the keys the nodes will have), or nothing is copied; they are
/// copied as stored (the nodes seal plain ones with their key when they start).
///
/// `prepare_source` runs once the target is locked and found usable, before SQLite is read:
/// the caller brings the embedded database to this version's schema there, so that a target
/// refused leaves it as it was (for the version that wrote it to start on again).
pub async fn sqlite_to_postgres(
    sqlite: &Path,
    target: &PostgresStore,
    cipher: Arc<SecretCipher>,
    prepare_source: impl Future<Output = Result<(), String>>,
    mut progress: impl FnMut(Progress<'_>),
) -> StoreResult<Copied> {
    let mut client = target.client().await?;
    let tx = client.transaction().await.map_err(sql)?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; LOCK TABLE {} IN EXCLUSIVE MODE",
        TABLES.join(", ")
    ))
    .await
    .map_err(|e| match e.code() {
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => other(
            "Herald nodes are using this PostgreSQL database (its tables stayed locked for \
             10 s); copy into a new, empty database with no node started on it",
        ),
        _ => sql(e),
    })?;
    let version = check_target(&tx).await?;
    prepare_source.await.map_err(|e| other(&e))?;
    let mut columns = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        columns.push(columns_of(&tx, table).await?);
    }

    let (sender, mut receiver) = mpsc::channel(4);
    let reader = {
        let (path, columns) = (sqlite.to_path_buf(), columns.clone());
        tokio::task::spawn_blocking(move || read_sqlite(path, version, &cipher, columns, sender))
    };
    let mut copied = Copied::default();
    let (mut table, mut total) = (0, 0);
    let mut statement = None;
    while let Some(message) = receiver.recv().await {
        match message {
            Message::Table { total: rows } => {
                let name = TABLES[copied.rows.len()];
                (table, total) = (copied.rows.len(), rows);
                copied.rows.push((name, 0));
                progress(Progress {
                    table: name,
                    copied: 0,
                    total,
                });
                statement = Some(
                    tx.prepare(&insert_sql(name, &columns[table]))
                        .await
                        .map_err(sql)?,
                );
            }
            Message::Rows { rows, values } => {
                let statement = statement.as_ref().expect("a table begins before its rows");
                let params: Vec<&(dyn ToSql + Sync)> =
                    values.iter().map(Values::as_param).collect();
                tx.execute(statement, &params).await.map_err(sql)?;
                let entry = &mut copied.rows[table];
                entry.1 += rows as u64;
                progress(Progress {
                    table: entry.0,
                    copied: entry.1,
                    total,
                });
            }
        }
    }
    // The channel closes when the reader ends: with every table read, or with its error.
    copied.released = reader
        .await
        .map_err(|e| other(&format!("reading the SQLite database stopped: {e}")))??;
    if copied.rows.len() != TABLES.len() {
        return Err(other("the copy stopped before every table was read"));
    }
    let deleted: i64 = tx
        .query_one(
            "SELECT count(*) FROM webhooks WHERE deleted_at IS NOT NULL",
            &[],
        )
        .await
        .map_err(sql)?
        .get(0);
    copied.deleted_webhooks = deleted as u64;
    tx.commit().await.map_err(sql)?;
    // Statistics now rather than when autovacuum gets to them (if it is on): until then the
    // planner takes the tables for empty, and a node's first statements over millions of rows
    // could pick plans made for none. The copy is committed: a failure here is only said.
    let tables = TABLES.join(", ");
    if let Err(e) = client.batch_execute(&format!("ANALYZE {tables}")).await {
        tracing::warn!(error = %e, "the copy is complete, but analyzing its tables failed; run ANALYZE {tables} before starting the nodes");
    }
    Ok(copied)
}

fn other(message: &str) -> StoreError {
    StoreError::Refused(message.to_owned())
}

/// Whether the target can take a copy: Herald's tables at this version's schema, all empty.
/// Answers the schema's version.
async fn check_target(tx: &tokio_postgres::Transaction<'_>) -> StoreResult<i64> {
    check_tables(tx).await?;
    let version: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(sql)?
        .get(0);
    let current = crate::migrations::POSTGRES.len() as i64;
    if version != current {
        return Err(other(&format!(
            "the PostgreSQL database's schema is at version {version}, made by a newer Herald \
             (this one's is {current}); copy with that version, or into a new, empty database"
        )));
    }
    for table in TABLES {
        check_empty(tx, table).await?;
    }
    Ok(version)
}

/// Refuses a database with a table this module does not know of (a later version's, whose rows
/// would be left behind), or without one it copies.
async fn check_tables(tx: &tokio_postgres::Transaction<'_>) -> StoreResult<()> {
    let found: Vec<String> = tx
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .map_err(sql)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(unknown) = found
        .iter()
        .find(|t| !TABLES.contains(&t.as_str()) && !NOT_COPIED.contains(&t.as_str()))
    {
        return Err(other(&format!(
            "the PostgreSQL database has a table `{unknown}` that this version of Herald does not \
             copy; copy into a new, empty database (or with the Herald version that made it)"
        )));
    }
    if let Some(missing) = TABLES.iter().find(|t| !found.iter().any(|f| f == *t)) {
        return Err(other(&format!(
            "the PostgreSQL database has no table `{missing}`: its schema is not Herald's"
        )));
    }
    Ok(())
}

async fn check_empty(tx: &tokio_postgres::Transaction<'_>, table: &str) -> StoreResult<()> {
    let rows: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1000) t"),
            &[],
        )
        .await
        .map_err(sql)?
        .get(0);
    if rows > 0 {
        let shown = match rows {
            1 => "1 row".to_owned(),
            1000.. => "1,000 or more rows".to_owned(),
            n => format!("{n} rows"),
        };
        return Err(other(&format!(
            "the PostgreSQL database already holds Herald data ({shown} in `{table}`); \
             copy into a new, empty database"
        )));
    }
    Ok(())
}

async fn columns_of(tx: &tokio_postgres::Transaction<'_>, table: &str) -> StoreResult<Vec<Column>> {
    let rows = tx
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .map_err(sql)?;
    rows.iter()
        .map(|r| {
            let (name, data_type): (String, String) = (r.get(0), r.get(1));
            match Kind::of(&data_type) {
                Some(kind) => Ok(Column { name, kind }),
                None => Err(other(&format!(
                    "`{table}.{name}` is of type {data_type}, which `herald copy` does not know"
                ))),
            }
        })
        .collect()
}

/// `INSERT … SELECT * FROM unnest(…)`: one statement for a chunk of rows, an array per column.
fn insert_sql(table: &str, columns: &[Column]) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.kind.array_type()))
        .collect();
    format!(
        "INSERT INTO {table} ({}) SELECT * FROM unnest({})",
        names.join(", "),
        arrays.join(", ")
    )
}

/// The reading thread: the SQLite database, table by table, in chunks. Answers how many leases
/// it gave back.
fn read_sqlite(
    path: PathBuf,
    version: i64,
    cipher: &SecretCipher,
    columns: Vec<Vec<Column>>,
    sender: mpsc::Sender<Message>,
) -> StoreResult<u64> {
    let conn = crate::sqlite::open_connection(&path, false)?;
    let fail = |e: rusqlite::Error| crate::sqlite::classify(&e);
    let own: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(fail)?;
    if own != version {
        return Err(other(&format!(
            "the embedded database's schema is at version {own}, made by a newer Herald (this \
             one's is {version}); copy with that version"
        )));
    }
    crate::sqlite::check_secrets_open(&conn, cipher)?;
    // Checked first: a copy refused leaves the source as it was.
    let released = crate::sqlite::release_all_leases(&conn)?;
    // One read transaction: every table as of the same moment.
    conn.execute_batch("BEGIN").map_err(fail)?;
    for (table, columns) in TABLES.iter().zip(&columns) {
        let total: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(fail)?;
        if sender
            .blocking_send(Message::Table {
                total: total as u64,
            })
            .is_err()
        {
            return Ok(released);
        }
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let mut statement = conn
            .prepare(&format!("SELECT {} FROM {table}", names.join(", ")))
            .map_err(|e| {
                other(&format!(
                    "the SQLite database's `{table}` lacks a column PostgreSQL has ({e}); are both \
                     at the same version?"
                ))
            })?;
        let mut rows = statement.query([]).map_err(fail)?;
        let fresh = || {
            columns
                .iter()
                .map(|c| Values::new(c.kind))
                .collect::<Vec<_>>()
        };
        let (mut values, mut count, mut bytes, mut read) = (fresh(), 0, 0, 0u64);
        loop {
            let row = rows.next().map_err(fail)?;
            if let Some(row) = row {
                read += 1;
                for (i, column) in values.iter_mut().enumerate() {
                    let value = row.get_ref(i).map_err(fail)?;
                    bytes += column.push(value).map_err(|what| {
                        other(&format!(
                            "`{table}.{}` holds {what} (row {read} of the table)",
                            columns[i].name
                        ))
                    })?;
                }
                count += 1;
            }
            let last = row.is_none();
            if count > 0 && (last || count == CHUNK_ROWS || bytes >= CHUNK_BYTES) {
                let chunk = std::mem::replace(&mut values, fresh());
                let message = Message::Rows {
                    rows: std::mem::take(&mut count),
                    values: chunk,
                };
                bytes = 0;
                if sender.blocking_send(message).is_err() {
                    // The writing side failed; its error is the one to tell.
                    return Ok(released);
                }
            }
            if last {
                break;
            }
        }
    }
    Ok(released)
}
