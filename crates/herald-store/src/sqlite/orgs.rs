//! Organizations, their API keys and their own event types.

use rusqlite::{Connection, OptionalExtension, params};

use herald_core::event_type::CustomEventType;
use herald_core::org::{ApiKey, Organization};
use herald_core::store::{OrgConfig, StoreError};
use herald_core::{ApiKeyId, OrgId, Page, PageRequest, WebhookId};

use super::rows::{self, to_json};
use super::{DbResult, classify, is_unique_violation, not_found};
use crate::paginate;

pub(crate) fn create(conn: &Connection, org: &Organization) -> DbResult<()> {
    let catalogs: Vec<&str> = org.catalogs.iter().map(|c| c.as_str()).collect();
    conn.prepare_cached(
        "INSERT INTO organizations (id, name, handle, catalogs, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        org.id.as_str(),
        org.name,
        org.handle.as_str(),
        to_json(&catalogs),
        org.created_at.as_millis(),
        org.updated_at.as_millis()
    ])
    .map_err(|e| handle_taken(e, org))?;
    Ok(())
}

fn handle_taken(e: rusqlite::Error, org: &Organization) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(format!(
            "the handle '{}' is already used by another organization; choose another handle",
            org.handle.as_str()
        ))
    } else {
        classify(&e)
    }
}

pub(crate) fn list(conn: &Connection, page: &PageRequest) -> DbResult<Page<Organization>> {
    let sql = format!(
        "SELECT {} FROM organizations WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
        rows::ORG_COLUMNS
    );
    let items = conn
        .prepare_cached(&sql)?
        .query_map(params![page.cursor, page.limit + 1], rows::org)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(paginate(items, page, |o| o.id.to_string()))
}

/// What the directory holds of the organization (its webhooks still sealed), from one read
/// transaction: one snapshot of the database.
pub(crate) fn config(conn: &Connection, id: &OrgId) -> DbResult<OrgConfig> {
    let _snapshot = conn.unchecked_transaction()?;
    Ok(OrgConfig {
        organization: get(conn, id)?,
        webhooks: super::webhooks::all_of_org(conn, id)?,
        types: list_event_types(conn, id)?,
        subscriptions: super::webhooks::org_subscriptions(conn, id)?,
    })
}

pub(crate) fn get(conn: &Connection, id: &OrgId) -> DbResult<Organization> {
    let sql = format!(
        "SELECT {} FROM organizations WHERE id = ?",
        rows::ORG_COLUMNS
    );
    conn.prepare_cached(&sql)?
        .query_row([id.as_str()], rows::org)
        .optional()?
        .ok_or_else(not_found)
}

pub(crate) fn update(conn: &Connection, org: &Organization) -> DbResult<()> {
    let catalogs: Vec<&str> = org.catalogs.iter().map(|c| c.as_str()).collect();
    let n = conn
        .prepare_cached(
            "UPDATE organizations SET name = ?, handle = ?, catalogs = ?, updated_at = ? WHERE id = ?",
        )?
        .execute(params![
            org.name,
            org.handle.as_str(),
            to_json(&catalogs),
            org.updated_at.as_millis(),
            org.id.as_str()
        ])
        .map_err(|e| handle_taken(e, org))?;
    if n == 0 {
        return Err(not_found());
    }
    Ok(())
}

/// Every webhook of the organization, deleted ones too (they keep their deliveries' history).
pub(crate) fn webhook_ids(conn: &Connection, org: &OrgId) -> DbResult<Vec<WebhookId>> {
    Ok(conn
        .prepare_cached("SELECT id FROM webhooks WHERE org_id = ?")?
        .query_map([org.as_str()], |r| Ok(WebhookId::from_trusted(r.get(0)?)))?
        .collect::<Result<_, _>>()?)
}

pub(crate) fn delete(conn: &Connection, id: &OrgId) -> DbResult<()> {
    let id = id.as_str();
    // An organization's deliveries are found through its webhooks (every delivery has one, and
    // deleted webhooks keep their row): deliveries have no index by organization.
    conn.execute(
        "DELETE FROM attempts WHERE delivery_id IN (SELECT d.id FROM deliveries d \
         JOIN webhooks w ON d.webhook_id = w.id WHERE w.org_id = ?1)",
        [id],
    )?;
    conn.execute(
        "DELETE FROM deliveries WHERE webhook_id IN (SELECT id FROM webhooks WHERE org_id = ?1)",
        [id],
    )?;
    for table in [
        "events",
        "subscriptions",
        "webhooks",
        "event_types",
        "api_keys",
    ] {
        conn.execute(&format!("DELETE FROM {table} WHERE org_id = ?"), [id])?;
    }
    if conn.execute("DELETE FROM organizations WHERE id = ?", [id])? == 0 {
        return Err(not_found());
    }
    Ok(())
}

pub(crate) fn create_api_key(conn: &Connection, key: &ApiKey) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO api_keys (id, org_id, name, prefix, key_hash, created_at, role) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        key.id.as_str(),
        key.org_id.as_str(),
        key.name,
        key.prefix,
        key.key_hash,
        key.created_at.as_millis(),
        key.role.as_str()
    ])?;
    Ok(())
}

pub(crate) fn list_api_keys(conn: &Connection, org: &OrgId) -> DbResult<Vec<ApiKey>> {
    let sql = format!(
        "SELECT {} FROM api_keys WHERE org_id = ? ORDER BY id DESC",
        rows::API_KEY_COLUMNS
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_map([org.as_str()], rows::api_key)?
        .collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn delete_api_key(conn: &Connection, org: &OrgId, id: &ApiKeyId) -> DbResult<()> {
    let n = conn.execute(
        "DELETE FROM api_keys WHERE org_id = ? AND id = ?",
        [org.as_str(), id.as_str()],
    )?;
    if n == 0 {
        return Err(not_found());
    }
    Ok(())
}

pub(crate) fn find_api_key(conn: &Connection, hash: &str) -> DbResult<Option<ApiKey>> {
    let sql = format!(
        "SELECT {} FROM api_keys WHERE key_hash = ?",
        rows::API_KEY_COLUMNS
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([hash], rows::api_key)
        .optional()?)
}

pub(crate) fn create_event_type(conn: &Connection, t: &CustomEventType) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO event_types (id, org_id, name, channel, description, schema, example, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        t.id.as_str(),
        t.org_id.as_str(),
        t.name,
        t.channel,
        t.description,
        t.schema.as_ref().map(to_json),
        t.example.as_ref().map(to_json),
        t.created_at.as_millis()
    ])
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!(
                "the organization already has an event type named '{}'",
                t.name
            ))
        } else {
            classify(&e)
        }
    })?;
    Ok(())
}

pub(crate) fn delete_event_type(conn: &Connection, org: &OrgId, name: &str) -> DbResult<()> {
    let deleted = conn
        .prepare_cached("DELETE FROM event_types WHERE org_id = ? AND name = ?")?
        .execute([org.as_str(), name])?;
    if deleted == 0 {
        return Err(not_found());
    }
    Ok(())
}

pub(crate) fn list_event_types(conn: &Connection, org: &OrgId) -> DbResult<Vec<CustomEventType>> {
    let sql = format!(
        "SELECT {} FROM event_types WHERE org_id = ? ORDER BY name",
        rows::EVENT_TYPE_COLUMNS
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_map([org.as_str()], rows::event_type)?
        .collect::<Result<Vec<_>, _>>()?)
}
