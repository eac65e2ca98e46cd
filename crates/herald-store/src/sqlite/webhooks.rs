//! Webhooks and their WebSub subscriptions. Deleting a webhook keeps its row (without secrets)
//! so its delivery history stays readable.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

use herald_core::store::{StoredVersion, failing_since_to_save};
use herald_core::subscription::{AsRead, Subscription};
use herald_core::webhook::Webhook;
use herald_core::{OrgId, Page, PageRequest, Timestamp, WebhookId};

use super::rows::{self, to_json};
use super::{DbResult, not_found};
use crate::paginate;

pub(crate) fn create(conn: &Connection, w: &Webhook) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO webhooks (id, org_id, name, description, url, events, channels, profile, secret, \
         previous_secret, previous_secret_expires_at, active, headers, timeout_ms, retry_schedule, \
         created_at, updated_at, signature, options, verification, failing_since, disabled_reason, \
         rate_limit_per_second) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        to_json(&w.options),
        w.verification.as_str(),
        w.failing_since.map(Timestamp::as_millis),
        w.disabled_reason,
        w.rate_limit_per_second
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

/// Saves every field; answers whether that paused or resumed the webhook. With `read_at`, a
/// user's change: refused if the webhook changed since, and the failing streak is the store's
/// (`Store::save_webhook_change`).
pub(crate) fn update(
    conn: &Connection,
    w: &Webhook,
    read_at: Option<Timestamp>,
) -> DbResult<ActiveChange> {
    let (was_active, updated_at, failing_since): (bool, i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT active, updated_at, failing_since FROM webhooks \
             WHERE org_id = ? AND id = ? AND deleted_at IS NULL",
        )?
        .query_row([w.org_id.as_str(), w.id.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?
        .ok_or_else(not_found)?;
    let stored = StoredVersion {
        active: was_active,
        updated_at,
        failing_since,
    };
    let failing_since = failing_since_to_save(w, read_at, stored)?;
    conn.prepare_cached(
        "UPDATE webhooks SET name = ?, description = ?, url = ?, events = ?, channels = ?, profile = ?, \
         secret = ?, previous_secret = ?, previous_secret_expires_at = ?, active = ?, headers = ?, \
         timeout_ms = ?, retry_schedule = ?, updated_at = ?, signature = ?, options = ?, verification = ?, \
         failing_since = ?, disabled_reason = ?, rate_limit_per_second = ? WHERE id = ?",
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
        w.verification.as_str(),
        failing_since,
        w.disabled_reason,
        w.rate_limit_per_second,
        w.id.as_str()
    ])?;
    Ok(match (was_active, w.active) {
        (true, false) => ActiveChange::Paused,
        (false, true) => ActiveChange::Resumed,
        _ => ActiveChange::None,
    })
}

/// Whether saving a webhook paused or resumed it: its pending deliveries are then parked or put
/// back on their schedule, in steps (`bulk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActiveChange {
    None,
    Paused,
    Resumed,
}

/// Disables an active webhook, touching nothing else of it (a user may be changing it at the
/// same time); `false` if it was not active (or is gone). Its deliveries are parked after.
pub(crate) fn disable(
    conn: &Connection,
    org: &OrgId,
    id: &WebhookId,
    reason: &str,
    now: Timestamp,
) -> DbResult<bool> {
    let changed = conn
        .prepare_cached(
            // `updated_at` moves even within the millisecond of the last save, so that a
            // user's change read before this one is refused (`update` with `read_at`).
            "UPDATE webhooks SET active = 0, disabled_reason = ?1, updated_at = MAX(?2, updated_at + 1) \
             WHERE org_id = ?3 AND id = ?4 AND active = 1 AND deleted_at IS NULL",
        )?
        .execute(params![reason, now.as_millis(), org.as_str(), id.as_str()])?;
    Ok(changed == 1)
}

/// Marks webhooks deleted (wiping their secrets); answers those that were not already. Their
/// pending deliveries are cancelled after, in steps.
pub(crate) fn delete_many(
    conn: &Connection,
    org: &OrgId,
    ids: &[WebhookId],
    now: Timestamp,
    unchanged_since: Option<Timestamp>,
) -> DbResult<Vec<WebhookId>> {
    let mut deleted = Vec::new();
    let version = unchanged_since.map(|t| t.as_millis());
    for id in ids {
        let n = conn
            .prepare_cached(
                "UPDATE webhooks SET deleted_at = ?1, active = 0, secret = '', previous_secret = NULL \
                 WHERE org_id = ?2 AND id = ?3 AND deleted_at IS NULL \
                 AND (?4 IS NULL OR updated_at = ?4)",
            )?
            .execute(params![now.as_millis(), org.as_str(), id.as_str(), version])?;
        if n == 1 {
            deleted.push(id.clone());
        }
    }
    Ok(deleted)
}

/// Webhooks deleted since `since`, whose deliveries may still be pending (see
/// `Store::cancel_orphaned`); the webhooks table is small.
pub(crate) fn deleted_since(conn: &Connection, since: Timestamp) -> DbResult<Vec<WebhookId>> {
    Ok(conn
        .prepare_cached("SELECT id FROM webhooks WHERE deleted_at >= ?")?
        .query_map([since.as_millis()], |r| {
            Ok(WebhookId::from_trusted(r.get(0)?))
        })?
        .collect::<Result<_, _>>()?)
}

pub(crate) fn org_subscriptions(conn: &Connection, org: &OrgId) -> DbResult<Vec<Subscription>> {
    let sql = format!(
        "SELECT {} FROM subscriptions WHERE org_id = ? ORDER BY webhook_id, channel",
        rows::SUBSCRIPTION_COLUMNS
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_map([org.as_str()], rows::subscription)?
        .collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn orgs_with_websub_webhooks(conn: &Connection) -> DbResult<Vec<OrgId>> {
    Ok(conn
        .prepare_cached(
            "SELECT DISTINCT org_id FROM webhooks \
             WHERE active = 1 AND verification = 'websub' AND deleted_at IS NULL ORDER BY org_id",
        )?
        .query_map([], |row| Ok(OrgId::from_trusted(row.get(0)?)))?
        .collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn save_subscriptions(
    conn: &Connection,
    org: &OrgId,
    subs: &[Subscription],
) -> DbResult<()> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO subscriptions (webhook_id, channel, org_id, topic, mode, state, reason, lease_seconds, \
         last_attempt_at, verified_at, expires_at, renew_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (webhook_id, channel) DO UPDATE SET topic = excluded.topic, mode = excluded.mode, \
         state = excluded.state, reason = excluded.reason, lease_seconds = excluded.lease_seconds, \
         last_attempt_at = excluded.last_attempt_at, verified_at = excluded.verified_at, \
         expires_at = excluded.expires_at, renew_at = excluded.renew_at",
    )?;
    for s in subs {
        upsert.execute(rusqlite::params_from_iter(subscription_row(s, org)))?;
    }
    Ok(())
}

/// A subscription's columns in the order the statements here name them: webhook_id, channel,
/// org_id, topic, mode, state, reason, lease_seconds, last_attempt_at, verified_at,
/// expires_at, renew_at.
fn subscription_row(s: &Subscription, org: &OrgId) -> Vec<Value> {
    let time = |t: Option<Timestamp>| t.map_or(Value::Null, |t| Value::Integer(t.as_millis()));
    vec![
        Value::Text(s.webhook_id.as_str().to_owned()),
        Value::Text(s.channel.clone()),
        Value::Text(org.as_str().to_owned()),
        Value::Text(s.topic.clone()),
        Value::Text(s.mode.as_str().to_owned()),
        Value::Text(s.state.as_str().to_owned()),
        s.reason.clone().map_or(Value::Null, Value::Text),
        Value::Integer(i64::from(s.lease_seconds)),
        time(s.last_attempt_at),
        time(s.verified_at),
        time(s.expires_at),
        time(s.renew_at),
    ]
}

/// [`save_subscriptions`] for those still stored as read: a new one only where none is, a
/// known one only where its mode, state, reason and last request are as read.
pub(crate) fn save_subscriptions_as_read(
    conn: &Connection,
    org: &OrgId,
    subs: &[(Subscription, Option<AsRead>)],
) -> DbResult<usize> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO subscriptions (webhook_id, channel, org_id, topic, mode, state, reason, lease_seconds, \
         last_attempt_at, verified_at, expires_at, renew_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (webhook_id, channel) DO NOTHING",
    )?;
    let mut update = conn.prepare_cached(
        "UPDATE subscriptions SET topic = ?4, mode = ?5, state = ?6, reason = ?7, lease_seconds = ?8, \
         last_attempt_at = ?9, verified_at = ?10, expires_at = ?11, renew_at = ?12 \
         WHERE webhook_id = ?1 AND channel = ?2 AND org_id = ?3 \
         AND mode = ?13 AND state = ?14 AND reason IS ?15 AND last_attempt_at IS ?16",
    )?;
    let mut saved = 0;
    for (s, read) in subs {
        let mut row = subscription_row(s, org);
        saved += match read {
            None => insert.execute(rusqlite::params_from_iter(row))?,
            Some(read) => {
                row.extend([
                    Value::Text(read.mode.as_str().to_owned()),
                    Value::Text(read.state.as_str().to_owned()),
                    read.reason.clone().map_or(Value::Null, Value::Text),
                    read.last_attempt_at
                        .map_or(Value::Null, |t| Value::Integer(t.as_millis())),
                ]);
                update.execute(rusqlite::params_from_iter(row))?
            }
        };
    }
    Ok(saved)
}

/// Moves a due renewal's `renew_at` to `until` if it is still `renew_at` as read.
pub(crate) fn claim_renewal(
    conn: &Connection,
    org: &OrgId,
    sub: &Subscription,
    until: Timestamp,
) -> DbResult<bool> {
    let claimed = conn
        .prepare_cached(
            "UPDATE subscriptions SET renew_at = ?1 \
             WHERE webhook_id = ?2 AND channel = ?3 AND org_id = ?4 AND renew_at = ?5",
        )?
        .execute(params![
            until.as_millis(),
            sub.webhook_id.as_str(),
            sub.channel,
            org.as_str(),
            sub.renew_at.map(Timestamp::as_millis)
        ])?;
    Ok(claimed == 1)
}

pub(crate) fn subscriptions_to_renew(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
) -> DbResult<Vec<(OrgId, Subscription)>> {
    let sql = format!(
        "SELECT {}, s.org_id FROM subscriptions s JOIN webhooks w ON w.id = s.webhook_id \
         WHERE s.renew_at <= ?1 AND s.mode = 'subscribe' AND w.active = 1 AND w.deleted_at IS NULL \
         ORDER BY s.renew_at LIMIT ?2",
        rows::SUBSCRIPTION_COLUMNS
            .split(", ")
            .map(|c| format!("s.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_map(params![now.as_millis(), limit], |r| {
            Ok((OrgId::from_trusted(r.get(11)?), rows::subscription(r)?))
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

/// Records whether the webhook's latest attempt failed; answers since when it has only failed.
pub(crate) fn note_outcome(
    conn: &Connection,
    id: &WebhookId,
    failed: bool,
    now: Timestamp,
) -> DbResult<Option<Timestamp>> {
    let since: Option<Option<i64>> = if failed {
        conn.prepare_cached(
            "UPDATE webhooks SET failing_since = COALESCE(failing_since, ?1) WHERE id = ?2 RETURNING failing_since",
        )?
        .query_row(params![now.as_millis(), id.as_str()], |r| r.get(0))
        .optional()?
    } else {
        conn.prepare_cached(
            "UPDATE webhooks SET failing_since = NULL WHERE id = ? AND failing_since IS NOT NULL",
        )?
        .execute([id.as_str()])?;
        None
    };
    Ok(since.flatten().map(Timestamp::from_millis))
}

/// Seals again every secret and custom header value that is plain or sealed with an old key.
pub(crate) fn reencrypt(conn: &Connection, cipher: &crate::cipher::SecretCipher) -> DbResult<u64> {
    let rows = stored_secrets(conn)?;
    let mut update = conn.prepare_cached(
        "UPDATE webhooks SET secret = ?1, previous_secret = ?2, headers = ?3 WHERE id = ?4",
    )?;
    let other = |e: crate::cipher::CipherError| herald_core::store::StoreError::Other(Box::new(e));
    let mut rewritten = 0;
    for (id, secret, previous, headers) in rows {
        let resealed =
            crate::cipher::Resealed::of(cipher, &id, &secret, previous.as_deref(), &headers)
                .map_err(other)?;
        let Some((secret, previous, headers)) = resealed.into_row(secret, previous, headers) else {
            continue;
        };
        update.execute(params![secret, previous, headers, id])?;
        rewritten += 1;
    }
    Ok(rewritten)
}

/// A webhook's id and its stored secret, previous secret and custom headers.
type StoredSecrets = (String, String, Option<String>, String);

/// Each webhook's stored secrets (deleted ones have none).
fn stored_secrets(conn: &Connection) -> DbResult<Vec<StoredSecrets>> {
    Ok(conn
        .prepare(
            "SELECT id, secret, previous_secret, headers FROM webhooks WHERE deleted_at IS NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?)
}

/// Checks that what [`reencrypt`] would reseal opens with `cipher`, writing nothing.
pub(crate) fn check_secrets_open(
    conn: &Connection,
    cipher: &crate::cipher::SecretCipher,
) -> DbResult<()> {
    for (id, secret, previous, headers) in stored_secrets(conn)? {
        crate::cipher::Resealed::of(cipher, &id, &secret, previous.as_deref(), &headers)
            .map_err(|e| herald_core::store::StoreError::Other(Box::new(e)))?;
    }
    Ok(())
}
