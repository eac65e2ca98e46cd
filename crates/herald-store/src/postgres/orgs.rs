//! Organizations, their API keys and their own event types.

use herald_core::event_type::CustomEventType;
use herald_core::org::{ApiKey, Organization};
use herald_core::store::{ChangeTurn, ConfigMark, OrgConfig, StoreError, StoreResult};
use herald_core::{ApiKeyId, OrgId, Page, PageRequest};

use super::rows::{self, to_json};
use super::{Conn, DbError, DbResult, is_unique_violation, not_found};
use crate::paginate;

/// The advisory locks of organizations' change turns (`htrn`): the two-key form, apart from the
/// single-key locks of migrations and sign-ins.
const CHANGE_TURN_LOCKS: i32 = 0x6874_726e;

/// Change turns one node holds (or waits for) at once, each on a connection of its own.
pub(crate) const MOST_CHANGE_TURNS: usize = 4;

/// Takes the organization's turn for changes (`Store::org_change_turn`) on a connection of its
/// own, outside the pool: the change itself needs the pool's connections (a pool of one would
/// otherwise wait for itself), and closing the connection is what gives the turn back, however
/// the change ends. Changes are rare; a connection each is cheap for them, and `permits` keeps
/// them to [`MOST_CHANGE_TURNS`] at once.
pub(crate) async fn change_turn(
    config: &tokio_postgres::Config,
    tls: &super::tls::DatabaseTls,
    permits: &std::sync::Arc<tokio::sync::Semaphore>,
    org: &OrgId,
) -> StoreResult<ChangeTurn> {
    super::timed(async {
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let (client, connection) = config.connect(tls.clone()).await.map_err(super::sql)?;
        // Held from here: given up while waiting for the lock (the bound, a request dropped),
        // the connection closes, and with it the lock request.
        let turn = HeldTurn {
            client,
            connection: tokio::spawn(connection),
            _permit: permit,
        };
        // Waits while another node's change to the organization runs (within the bound).
        turn.client
            .execute(
                "SELECT pg_advisory_lock($1, hashtext($2))",
                &[&CHANGE_TURN_LOCKS, &org.as_str()],
            )
            .await
            .map_err(super::sql)?;
        Ok(ChangeTurn::held_by(turn))
    })
    .await
}

/// A turn held on its own connection. Dropped (with the change, or the request given up), the
/// connection closes and the database ends the lock with the session.
struct HeldTurn {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for HeldTurn {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

pub(crate) async fn create(c: &impl Conn, org: &Organization) -> DbResult<()> {
    let catalogs: Vec<&str> = org.catalogs.iter().map(|c| c.as_str()).collect();
    c.exec(
        "INSERT INTO organizations (id, name, handle, catalogs, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &org.id.as_str(),
            &org.name,
            &org.handle.as_str(),
            &to_json(&catalogs),
            &org.created_at.as_millis(),
            &org.updated_at.as_millis(),
        ],
    )
    .await
    .map_err(|e| handle_taken(e.into(), org))?;
    Ok(())
}

fn handle_taken(e: DbError, org: &Organization) -> DbError {
    if is_unique_violation(&e) {
        DbError::Store(StoreError::Conflict(format!(
            "the handle '{}' is already used by another organization; choose another handle",
            org.handle.as_str()
        )))
    } else {
        e
    }
}

pub(crate) async fn list(c: &impl Conn, page: &PageRequest) -> DbResult<Page<Organization>> {
    let sql = format!(
        "SELECT {} FROM organizations WHERE ($1::TEXT IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        rows::ORG_COLUMNS
    );
    let found = c
        .rows(&sql, &[&page.cursor, &rows::big(page.limit + 1)])
        .await?;
    let items = rows::all(found, rows::org)?;
    Ok(paginate(items, page, |o| o.id.to_string()))
}

pub(crate) async fn get(c: &impl Conn, id: &OrgId) -> DbResult<Organization> {
    let sql = format!(
        "SELECT {} FROM organizations WHERE id = $1",
        rows::ORG_COLUMNS
    );
    match c.opt_row(&sql, &[&id.as_str()]).await? {
        Some(row) => rows::org(&row),
        None => Err(not_found()),
    }
}

/// Which configuration changes a read starting now sees: the database's snapshot, as text
/// (see `INSERT_EVENTS` in `deliveries.rs`, which checks it against `directory_changes`).
pub(crate) async fn config_mark(c: &impl Conn) -> DbResult<ConfigMark> {
    let rows = c.rows("SELECT pg_current_snapshot()::TEXT", &[]).await?;
    match rows.first() {
        Some(row) => Ok(ConfigMark(row.try_get(0)?)),
        None => Err(not_found()),
    }
}

/// SQL that is true when a change to organization `$org` (an expression) was committed after
/// the read that `$seen` (a `pg_snapshot` as text) marks: a `directory_changes` row (migration
/// 0013) of a transaction that mark does not see. Only transactions from the mark's `xmin` on
/// are looked at, so the index finds none in the usual case. Ingest's statement and
/// [`changed_since`] share it.
macro_rules! changed_after_mark {
    ($org:literal, $seen:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM directory_changes c WHERE c.org_id = ",
            $org,
            " AND c.xid >= pg_snapshot_xmin(",
            $seen,
            "::pg_snapshot) AND NOT pg_visible_in_snapshot(c.xid, ",
            $seen,
            "::pg_snapshot))"
        )
    };
}
pub(crate) use changed_after_mark;

/// What the directory holds of the organization (its webhooks still sealed), read in the
/// caller's snapshot.
pub(crate) async fn config(c: &impl Conn, id: &OrgId) -> DbResult<OrgConfig> {
    Ok(OrgConfig {
        organization: get(c, id).await?,
        webhooks: super::webhooks::all_of_org(c, id).await?,
        types: list_event_types(c, id).await?,
        subscriptions: super::webhooks::org_subscriptions(c, id).await?,
    })
}

/// Whether a change to the organization's configuration was committed after `seen`.
pub(crate) async fn changed_since(c: &impl Conn, org: &OrgId, seen: &ConfigMark) -> DbResult<bool> {
    let rows = c
        .rows(
            concat!("SELECT ", changed_after_mark!("$1", "$2::TEXT")),
            &[&org.as_str(), &seen.0],
        )
        .await?;
    match rows.first() {
        Some(row) => Ok(row.try_get(0)?),
        None => Err(not_found()),
    }
}

pub(crate) async fn update(c: &impl Conn, org: &Organization) -> DbResult<()> {
    let catalogs: Vec<&str> = org.catalogs.iter().map(|c| c.as_str()).collect();
    let n = c
        .exec(
            "UPDATE organizations SET name = $1, handle = $2, catalogs = $3, updated_at = $4 WHERE id = $5",
            &[
                &org.name,
                &org.handle.as_str(),
                &to_json(&catalogs),
                &org.updated_at.as_millis(),
                &org.id.as_str(),
            ],
        )
        .await
        .map_err(|e| handle_taken(e.into(), org))?;
    if n == 0 {
        return Err(not_found());
    }
    Ok(())
}

/// An organization's attempts, deleted with it (`$1` its id), found through their index (see
/// "Collations" in `deliveries.rs`).
pub(super) const DELETE_ATTEMPTS: &str = "DELETE FROM attempts WHERE delivery_id IN \
     (SELECT id COLLATE \"default\" FROM deliveries WHERE org_id = $1)";

/// The database's clock in milliseconds: deletions are dated, and forgotten, by one clock
/// whichever node did them.
const DATABASE_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// How long a deleted organization is remembered, so that what writes racing its deletion
/// stored is swept (they last seconds; the sweep runs every few minutes).
const REMEMBER_DELETED_MS: i64 = 86_400_000;

/// How long a change to an organization's configuration is remembered for ingest's check.
/// A node's copy of an organization is dropped milliseconds after a change, when the change's
/// notice arrives, or all at once when its connection for notices drops; an hour covers
/// everything but a node that heard nothing and noticed nothing for that long.
const REMEMBER_CHANGES_MS: i64 = 3_600_000;

/// Deletes the organization and everything it owns, and remembers it for the sweep
/// ([`sweep_deleted`]).
pub(crate) async fn delete(c: &impl Conn, id: &OrgId) -> DbResult<()> {
    let id = id.as_str();
    c.exec(
        &format!(
            "INSERT INTO deleted_organizations (id, deleted_at) VALUES ($1, {DATABASE_NOW_MS}) \
             ON CONFLICT (id) DO NOTHING"
        ),
        &[&id],
    )
    .await?;
    delete_owned(c, id).await?;
    if c.exec("DELETE FROM organizations WHERE id = $1", &[&id])
        .await?
        == 0
    {
        return Err(not_found());
    }
    Ok(())
}

/// Deletes every row organization `id` owns; answers how many.
async fn delete_owned(c: &impl Conn, id: &str) -> DbResult<u64> {
    let mut deleted = c.exec(DELETE_ATTEMPTS, &[&id]).await?;
    for table in [
        "deliveries",
        "events",
        "subscriptions",
        "webhooks",
        "event_types",
        "api_keys",
    ] {
        deleted += c
            .exec(&format!("DELETE FROM {table} WHERE org_id = $1"), &[&id])
            .await?;
    }
    Ok(deleted)
}

/// Deletes what writes that raced the deletion of an organization stored for it afterwards,
/// for every organization deleted in the last day; forgets those deleted before. Answers how
/// many rows it deleted. Each organization costs a few index probes when nothing is left.
pub(crate) async fn sweep_deleted(c: &impl Conn) -> DbResult<u64> {
    c.exec(
        &format!("DELETE FROM deleted_organizations WHERE deleted_at < {DATABASE_NOW_MS} - $1"),
        &[&REMEMBER_DELETED_MS],
    )
    .await?;
    // Forgotten here too, as it runs every few minutes on every node: what ingest checks
    // against (`config_mark`).
    c.exec(
        &format!("DELETE FROM directory_changes WHERE changed_at < {DATABASE_NOW_MS} - $1"),
        &[&REMEMBER_CHANGES_MS],
    )
    .await?;
    let mut swept = 0;
    for row in c.rows("SELECT id FROM deleted_organizations", &[]).await? {
        let id: String = row.try_get(0)?;
        swept += delete_owned(c, &id).await?;
    }
    Ok(swept)
}

pub(crate) async fn create_api_key(c: &impl Conn, key: &ApiKey) -> DbResult<()> {
    c.exec(
        "INSERT INTO api_keys (id, org_id, name, prefix, key_hash, created_at, role) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &key.id.as_str(),
            &key.org_id.as_str(),
            &key.name,
            &key.prefix,
            &key.key_hash,
            &key.created_at.as_millis(),
            &key.role.as_str(),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn list_api_keys(c: &impl Conn, org: &OrgId) -> DbResult<Vec<ApiKey>> {
    let sql = format!(
        "SELECT {} FROM api_keys WHERE org_id = $1 ORDER BY id DESC",
        rows::API_KEY_COLUMNS
    );
    rows::all(c.rows(&sql, &[&org.as_str()]).await?, rows::api_key)
}

pub(crate) async fn delete_api_key(c: &impl Conn, org: &OrgId, id: &ApiKeyId) -> DbResult<()> {
    let n = c
        .exec(
            "DELETE FROM api_keys WHERE org_id = $1 AND id = $2",
            &[&org.as_str(), &id.as_str()],
        )
        .await?;
    if n == 0 {
        return Err(not_found());
    }
    // Every node caches the keys it has seen: announced as a change to the organization, the
    // revocation makes the others forget its keys when this commits.
    c.exec(
        "SELECT pg_notify($1, $2)",
        &[&super::signals::DIRECTORY_CHANNEL, &org.as_str()],
    )
    .await?;
    Ok(())
}

pub(crate) async fn find_api_key(c: &impl Conn, hash: &str) -> DbResult<Option<ApiKey>> {
    let sql = format!(
        "SELECT {} FROM api_keys WHERE key_hash = $1",
        rows::API_KEY_COLUMNS
    );
    c.opt_row(&sql, &[&hash])
        .await?
        .map(|r| rows::api_key(&r))
        .transpose()
}

pub(crate) async fn create_event_type(c: &impl Conn, t: &CustomEventType) -> DbResult<()> {
    c.exec(
        "INSERT INTO event_types (id, org_id, name, channel, description, schema, example, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &t.id.as_str(),
            &t.org_id.as_str(),
            &t.name,
            &t.channel,
            &t.description,
            &t.schema.as_ref().map(to_json),
            &t.example.as_ref().map(to_json),
            &t.created_at.as_millis(),
        ],
    )
    .await
    .map_err(|e| {
        let e = DbError::from(e);
        if is_unique_violation(&e) {
            DbError::Store(StoreError::Conflict(format!(
                "the organization already has an event type named '{}'",
                t.name
            )))
        } else {
            e
        }
    })?;
    Ok(())
}

pub(crate) async fn delete_event_type(c: &impl Conn, org: &OrgId, name: &str) -> DbResult<()> {
    let deleted = c
        .exec(
            "DELETE FROM event_types WHERE org_id = $1 AND name = $2",
            &[&org.as_str(), &name],
        )
        .await?;
    if deleted == 0 {
        return Err(not_found());
    }
    Ok(())
}

pub(crate) async fn list_event_types(c: &impl Conn, org: &OrgId) -> DbResult<Vec<CustomEventType>> {
    let sql = format!(
        "SELECT {} FROM event_types WHERE org_id = $1 ORDER BY name",
        rows::EVENT_TYPE_COLUMNS
    );
    rows::all(c.rows(&sql, &[&org.as_str()]).await?, rows::event_type)
}
