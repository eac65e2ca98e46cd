//! Webhooks. Deleting one keeps its row (without secrets) so its delivery history stays readable.

use rusqlite::{Connection, OptionalExtension, params};

use herald_core::webhook::Webhook;
use herald_core::{OrgId, Page, PageRequest, Timestamp, WebhookId};

use super::rows::{self, to_json};
use super::{DbResult, not_found, paginate};

pub(crate) fn create(conn: &Connection, w: &Webhook) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO webhooks (id, org_id, name, description, url, events, channels, profile, secret, \
         previous_secret, previous_secret_expires_at, active, headers, timeout_ms, retry_schedule, \
         created_at, updated_at, signature, options) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        w.id.as_str(),
        w.org_id.as_str(),
        w.name,
        w.description,
        w.url.as_str(),
        to_json(&w.events),
        to_json(&w.channels),
        w.profile.as_str(),
        w.secret,
        w.previous_secret,
        w.previous_secret_expires_at.map(Timestamp::as_millis),
        w.active,
        to_json(&w.headers),
        w.timeout_ms,
        w.retry_schedule.as_ref().map(to_json),
        w.created_at.as_millis(),
        w.updated_at.as_millis(),
        w.signature.map(|s| s.as_str()),
        to_json(&w.options)
    ])?;
    Ok(())
}

pub(crate) fn list(conn: &Connection, org: &OrgId, page: &PageRequest) -> DbResult<Page<Webhook>> {
    let sql = format!(
        "SELECT {} FROM webhooks WHERE org_id = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR id < ?2) \
         ORDER BY id DESC LIMIT ?3",
        rows::WEBHOOK_COLUMNS
    );
    let items = conn
        .prepare_cached(&sql)?
        .query_map(
            params![org.as_str(), page.cursor, page.limit + 1],
            rows::webhook,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(paginate(items, page, |w| w.id.to_string()))
}

pub(crate) fn all_of_org(conn: &Connection, org: &OrgId) -> DbResult<Vec<Webhook>> {
    let sql = format!(
        "SELECT {} FROM webhooks WHERE org_id = ? AND deleted_at IS NULL ORDER BY id",
        rows::WEBHOOK_COLUMNS
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_map([org.as_str()], rows::webhook)?
        .collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn get(conn: &Connection, org: &OrgId, id: &WebhookId) -> DbResult<Webhook> {
    let sql = format!(
        "SELECT {} FROM webhooks WHERE org_id = ? AND id = ? AND deleted_at IS NULL",
        rows::WEBHOOK_COLUMNS
    );
    conn.prepare_cached(&sql)?
        .query_row([org.as_str(), id.as_str()], rows::webhook)
        .optional()?
        .ok_or_else(not_found)
}

/// Saves every field. When `active` changes, pending deliveries are parked (no due time, so the
/// scheduler skips them cheaply) or put back on their schedule.
pub(crate) fn update(conn: &Connection, w: &Webhook) -> DbResult<()> {
    let was_active: bool = conn
        .prepare_cached(
            "SELECT active FROM webhooks WHERE org_id = ? AND id = ? AND deleted_at IS NULL",
        )?
        .query_row([w.org_id.as_str(), w.id.as_str()], |r| r.get(0))
        .optional()?
        .ok_or_else(not_found)?;
    conn.prepare_cached(
        "UPDATE webhooks SET name = ?, description = ?, url = ?, events = ?, channels = ?, profile = ?, \
         secret = ?, previous_secret = ?, previous_secret_expires_at = ?, active = ?, headers = ?, \
         timeout_ms = ?, retry_schedule = ?, updated_at = ?, signature = ?, options = ? WHERE id = ?",
    )?
    .execute(params![
        w.name,
        w.description,
        w.url.as_str(),
        to_json(&w.events),
        to_json(&w.channels),
        w.profile.as_str(),
        w.secret,
        w.previous_secret,
        w.previous_secret_expires_at.map(Timestamp::as_millis),
        w.active,
        to_json(&w.headers),
        w.timeout_ms,
        w.retry_schedule.as_ref().map(to_json),
        w.updated_at.as_millis(),
        w.signature.map(|s| s.as_str()),
        to_json(&w.options),
        w.id.as_str()
    ])?;
    if was_active && !w.active {
        conn.prepare_cached(
            "UPDATE deliveries SET due_at = NULL WHERE webhook_id = ? AND state = 'pending' AND lease_until IS NULL",
        )?
        .execute([w.id.as_str()])?;
    } else if !was_active && w.active {
        conn.prepare_cached(
            "UPDATE deliveries SET due_at = next_attempt_at, lease_until = NULL \
             WHERE webhook_id = ? AND state = 'pending' AND due_at IS NULL",
        )?
        .execute([w.id.as_str()])?;
    }
    Ok(())
}

pub(crate) fn delete_many(
    conn: &Connection,
    org: &OrgId,
    ids: &[WebhookId],
    now: Timestamp,
) -> DbResult<Vec<WebhookId>> {
    let mut deleted = Vec::new();
    for id in ids {
        let n = conn
            .prepare_cached(
                "UPDATE webhooks SET deleted_at = ?, active = 0, secret = '', previous_secret = NULL \
                 WHERE org_id = ? AND id = ? AND deleted_at IS NULL",
            )?
            .execute(params![now.as_millis(), org.as_str(), id.as_str()])?;
        if n == 1 {
            conn.prepare_cached(
                "UPDATE deliveries SET state = 'cancelled', next_attempt_at = NULL, due_at = NULL, \
                 lease_until = NULL, updated_at = ? WHERE webhook_id = ? AND state = 'pending'",
            )?
            .execute(params![now.as_millis(), id.as_str()])?;
            deleted.push(id.clone());
        }
    }
    Ok(deleted)
}
