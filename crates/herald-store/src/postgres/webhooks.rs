//! Webhooks and their WebSub subscriptions. Deleting a webhook keeps its row (without secrets)
//! so its delivery history stays readable.

use tokio_postgres::types::ToSql;

use herald_core::store::{StoredVersion, failing_since_to_save};
use herald_core::subscription::{AsRead, Subscription};
use herald_core::webhook::Webhook;
use herald_core::{OrgId, Page, PageRequest, Timestamp, WebhookId};

use super::rows::{self, big, to_json};
use super::{Conn, DbResult, not_found};
use crate::paginate;

pub(crate) async fn create(c: &impl Conn, w: &Webhook) -> DbResult<()> {
    c.exec(
        "INSERT INTO webhooks (id, org_id, name, description, url, events, channels, profile, secret, \
         previous_secret, previous_secret_expires_at, active, headers, timeout_ms, retry_schedule, \
         created_at, updated_at, signature, options, verification, failing_since, disabled_reason, \
         rate_limit_per_second) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
         $15, $16, $17, $18, $19, $20, $21, $22, $23)",
        &[
            &w.id.as_str(),
            &w.org_id.as_str(),
            &w.name,
            &w.description,
            &w.url.as_str(),
            &to_json(&w.events),
            &to_json(&w.channels),
            &w.profile.as_str(),
            &w.secret,
            &w.previous_secret,
            &w.previous_secret_expires_at.map(Timestamp::as_millis),
            &w.active,
            &to_json(&w.headers),
            &w.timeout_ms.map(big),
            &w.retry_schedule.as_ref().map(to_json),
            &w.created_at.as_millis(),
            &w.updated_at.as_millis(),
            &w.signature.map(|s| s.as_str()),
            &to_json(&w.options),
            &w.verification.as_str(),
            &w.failing_since.map(Timestamp::as_millis),
            &w.disabled_reason,
            &w.rate_limit_per_second.map(big),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn list(
    c: &impl Conn,
    org: &OrgId,
    page: &PageRequest,
) -> DbResult<Page<Webhook>> {
    let sql = format!(
        "SELECT {} FROM webhooks WHERE org_id = $1 AND deleted_at IS NULL \
         AND ($2::TEXT IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        rows::WEBHOOK_COLUMNS
    );
    let found = c
        .rows(&sql, &[&org.as_str(), &page.cursor, &big(page.limit + 1)])
        .await?;
    let items = rows::all(found, rows::webhook)?;
    Ok(paginate(items, page, |w| w.id.to_string()))
}

pub(crate) async fn all_of_org(c: &impl Conn, org: &OrgId) -> DbResult<Vec<Webhook>> {
    let sql = format!(
        "SELECT {} FROM webhooks WHERE org_id = $1 AND deleted_at IS NULL ORDER BY id",
        rows::WEBHOOK_COLUMNS
    );
    rows::all(c.rows(&sql, &[&org.as_str()]).await?, rows::webhook)
}

pub(crate) async fn get(c: &impl Conn, org: &OrgId, id: &WebhookId) -> DbResult<Webhook> {
    let sql = format!(
        "SELECT {} FROM webhooks WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL",
        rows::WEBHOOK_COLUMNS
    );
    match c.opt_row(&sql, &[&org.as_str(), &id.as_str()]).await? {
        Some(row) => rows::webhook(&row),
        None => Err(not_found()),
    }
}

/// Saves every field. When `active` changes, pending deliveries are parked (no due time, so the
/// scheduler skips them cheaply) or put back on their schedule (and other nodes told). With
/// `read_at`, a user's change: refused if the webhook changed since, and the failing streak is
/// the store's (`Store::save_webhook_change`).
pub(crate) async fn update(c: &impl Conn, w: &Webhook, read_at: Option<Timestamp>) -> DbResult<()> {
    let row = c
        .opt_row(
            "SELECT active, updated_at, failing_since FROM webhooks \
             WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL FOR UPDATE",
            &[&w.org_id.as_str(), &w.id.as_str()],
        )
        .await?
        .ok_or_else(not_found)?;
    let stored = StoredVersion {
        active: row.try_get(0)?,
        updated_at: row.try_get(1)?,
        failing_since: row.try_get(2)?,
    };
    let was_active = stored.active;
    let failing_since = failing_since_to_save(w, read_at, stored)?;
    c.exec(
        "UPDATE webhooks SET name = $1, description = $2, url = $3, events = $4, channels = $5, \
         profile = $6, secret = $7, previous_secret = $8, previous_secret_expires_at = $9, \
         active = $10, headers = $11, timeout_ms = $12, retry_schedule = $13, updated_at = $14, \
         signature = $15, options = $16, verification = $17, failing_since = $18, \
         disabled_reason = $19, rate_limit_per_second = $20 WHERE id = $21",
        &[
            &w.name,
            &w.description,
            &w.url.as_str(),
            &to_json(&w.events),
            &to_json(&w.channels),
            &w.profile.as_str(),
            &w.secret,
            &w.previous_secret,
            &w.previous_secret_expires_at.map(Timestamp::as_millis),
            &w.active,
            &to_json(&w.headers),
            &w.timeout_ms.map(big),
            &w.retry_schedule.as_ref().map(to_json),
            &w.updated_at.as_millis(),
            &w.signature.map(|s| s.as_str()),
            &to_json(&w.options),
            &w.verification.as_str(),
            &failing_since,
            &w.disabled_reason,
            &w.rate_limit_per_second.map(big),
            &w.id.as_str(),
        ],
    )
    .await?;
    if was_active && !w.active {
        park_pending(c, &w.id).await?;
    } else if !was_active && w.active {
        unpark(c, w.id.as_str()).await?;
        super::deliveries::announce_work(c).await?;
    }
    Ok(())
}

/// Puts an active webhook's parked deliveries back on their schedule (`Store::unpark_active`);
/// answers how many.
pub(crate) async fn unpark_active(c: &impl Conn, id: &WebhookId) -> DbResult<u64> {
    if !still_switched(c, id, true).await? {
        return Ok(0);
    }
    let unparked = unpark(c, id.as_str()).await?;
    if unparked > 0 {
        super::deliveries::announce_work(c).await?;
    }
    Ok(unparked)
}

/// Parks the due deliveries of the webhook if it is inactive (`Store::park_inactive`): those
/// nobody holds, and those whose lease ran out before `now` (their holder stopped: its lease is
/// cleared, and were it still at work its outcome finds the lease gone, as after a takeover).
/// Answers how many.
pub(crate) async fn park_inactive(c: &impl Conn, id: &WebhookId, now: Timestamp) -> DbResult<u64> {
    if !still_switched(c, id, false).await? {
        return Ok(0);
    }
    Ok(c.exec(
        "UPDATE deliveries SET due_at = NULL, lease_until = NULL \
         WHERE webhook_id = $1 AND state = 'pending' AND due_at IS NOT NULL \
         AND (lease_until IS NULL OR lease_until < $2)",
        &[&id.as_str(), &now.as_millis()],
    )
    .await?)
}

/// Whether the webhook exists and is `active` (or not), its row held until commit: a switch
/// the other way waits, then parks (or puts back) what the caller changes.
async fn still_switched(c: &impl Conn, id: &WebhookId, active: bool) -> DbResult<bool> {
    Ok(c.opt_row(
        "SELECT 1 FROM webhooks WHERE id = $1 AND active = $2 AND deleted_at IS NULL FOR SHARE",
        &[&id.as_str(), &active],
    )
    .await?
    .is_some())
}

/// Puts the webhook's parked deliveries back on their schedule; answers how many.
async fn unpark(c: &impl Conn, id: &str) -> DbResult<u64> {
    Ok(c.exec(
        "UPDATE deliveries SET due_at = next_attempt_at, lease_until = NULL \
         WHERE webhook_id = $1 AND state = 'pending' AND due_at IS NULL",
        &[&id],
    )
    .await?)
}

pub(crate) async fn delete_many(
    c: &impl Conn,
    org: &OrgId,
    ids: &[WebhookId],
    now: Timestamp,
    unchanged_since: Option<Timestamp>,
) -> DbResult<Vec<WebhookId>> {
    let mut deleted = Vec::new();
    let version = unchanged_since.map(|t| t.as_millis());
    for id in ids {
        let n = c
            .exec(
                "UPDATE webhooks SET deleted_at = $1, active = FALSE, secret = '', previous_secret = NULL \
                 WHERE org_id = $2 AND id = $3 AND deleted_at IS NULL \
                 AND ($4::BIGINT IS NULL OR updated_at = $4)",
                &[&now.as_millis(), &org.as_str(), &id.as_str(), &version],
            )
            .await?;
        if n == 1 {
            cancel_pending(c, id.as_str(), now).await?;
            deleted.push(id.clone());
        }
    }
    Ok(deleted)
}

/// Cancels what is still pending for webhooks deleted since `since` (see
/// `Store::cancel_orphaned`): the small webhooks table first, then each such webhook's
/// deliveries through its index, so that a run with no recent deletion reads no delivery.
pub(crate) async fn cancel_orphaned(
    c: &impl Conn,
    since: Timestamp,
    now: Timestamp,
) -> DbResult<u64> {
    let deleted = c
        .rows(
            "SELECT id FROM webhooks WHERE deleted_at >= $1",
            &[&since.as_millis()],
        )
        .await?;
    let mut cancelled = 0;
    for row in deleted {
        let id: String = row.try_get(0)?;
        cancelled += cancel_pending(c, &id, now).await?;
    }
    Ok(cancelled)
}

/// Cancels a deleted webhook's pending deliveries; answers how many.
async fn cancel_pending(c: &impl Conn, webhook: &str, now: Timestamp) -> DbResult<u64> {
    Ok(c.exec(
        "UPDATE deliveries SET state = 'cancelled', next_attempt_at = NULL, due_at = NULL, \
         lease_until = NULL, updated_at = $1 WHERE webhook_id = $2 AND state = 'pending'",
        &[&now.as_millis(), &webhook],
    )
    .await?)
}

pub(crate) async fn org_subscriptions(c: &impl Conn, org: &OrgId) -> DbResult<Vec<Subscription>> {
    let sql = format!(
        "SELECT {} FROM subscriptions WHERE org_id = $1 ORDER BY webhook_id, channel",
        rows::SUBSCRIPTION_COLUMNS
    );
    rows::all(c.rows(&sql, &[&org.as_str()]).await?, rows::subscription)
}

pub(crate) async fn orgs_with_websub_webhooks(c: &impl Conn) -> DbResult<Vec<OrgId>> {
    let rows = c
        .rows(
            "SELECT DISTINCT org_id FROM webhooks \
             WHERE active AND verification = 'websub' AND deleted_at IS NULL ORDER BY org_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| Ok(OrgId::from_trusted(row.try_get(0)?)))
        .collect()
}

pub(crate) async fn save_subscriptions(
    c: &impl Conn,
    org: &OrgId,
    subs: &[Subscription],
) -> DbResult<()> {
    for s in subs {
        let row = subscription_row(s, org);
        c.exec(
            "INSERT INTO subscriptions (webhook_id, channel, org_id, topic, mode, state, reason, \
             lease_seconds, last_attempt_at, verified_at, expires_at, renew_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (webhook_id, channel) DO UPDATE SET topic = excluded.topic, mode = excluded.mode, \
             state = excluded.state, reason = excluded.reason, lease_seconds = excluded.lease_seconds, \
             last_attempt_at = excluded.last_attempt_at, verified_at = excluded.verified_at, \
             expires_at = excluded.expires_at, renew_at = excluded.renew_at",
            &as_params(&row),
        )
        .await?;
    }
    Ok(())
}

/// A statement's parameters, owned.
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn as_params(owned: &Params) -> Vec<&(dyn ToSql + Sync)> {
    owned
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// A subscription's columns, `$1` to `$12` in the statements here: webhook_id, channel, org_id,
/// topic, mode, state, reason, lease_seconds, last_attempt_at, verified_at, expires_at,
/// renew_at.
fn subscription_row(s: &Subscription, org: &OrgId) -> Params {
    let time = |t: Option<Timestamp>| Box::new(t.map(Timestamp::as_millis));
    vec![
        Box::new(s.webhook_id.as_str().to_owned()),
        Box::new(s.channel.clone()),
        Box::new(org.as_str().to_owned()),
        Box::new(s.topic.clone()),
        Box::new(s.mode.as_str()),
        Box::new(s.state.as_str()),
        Box::new(s.reason.clone()),
        Box::new(big(s.lease_seconds)),
        time(s.last_attempt_at),
        time(s.verified_at),
        time(s.expires_at),
        time(s.renew_at),
    ]
}

/// [`save_subscriptions`] for those still stored as read: a new one only where none is, a
/// known one only where its mode, state, reason and last request are as read.
pub(crate) async fn save_subscriptions_as_read(
    c: &impl Conn,
    org: &OrgId,
    subs: &[(Subscription, Option<AsRead>)],
) -> DbResult<usize> {
    let mut saved = 0;
    for (s, read) in subs {
        let mut row = subscription_row(s, org);
        saved += match read {
            None => {
                c.exec(
                    "INSERT INTO subscriptions (webhook_id, channel, org_id, topic, mode, state, reason, \
                     lease_seconds, last_attempt_at, verified_at, expires_at, renew_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (webhook_id, channel) DO NOTHING",
                    &as_params(&row),
                )
                .await?
            }
            Some(read) => {
                row.extend([
                    Box::new(read.mode.as_str()) as Box<dyn ToSql + Sync + Send>,
                    Box::new(read.state.as_str()),
                    Box::new(read.reason.clone()),
                    Box::new(read.last_attempt_at.map(Timestamp::as_millis)),
                ]);
                c.exec(
                    "UPDATE subscriptions SET topic = $4, mode = $5, state = $6, reason = $7, \
                     lease_seconds = $8, last_attempt_at = $9, verified_at = $10, expires_at = $11, \
                     renew_at = $12 WHERE webhook_id = $1 AND channel = $2 AND org_id = $3 \
                     AND mode = $13 AND state = $14 AND reason IS NOT DISTINCT FROM $15 \
                     AND last_attempt_at IS NOT DISTINCT FROM $16",
                    &as_params(&row),
                )
                .await?
            }
        };
    }
    Ok(usize::try_from(saved).unwrap_or(usize::MAX))
}

/// Moves a due renewal's `renew_at` to `until` if it is still `renew_at` as read.
pub(crate) async fn claim_renewal(
    c: &impl Conn,
    org: &OrgId,
    sub: &Subscription,
    until: Timestamp,
) -> DbResult<bool> {
    let claimed = c
        .exec(
            "UPDATE subscriptions SET renew_at = $1 \
             WHERE webhook_id = $2 AND channel = $3 AND org_id = $4 AND renew_at = $5",
            &[
                &until.as_millis(),
                &sub.webhook_id.as_str(),
                &sub.channel,
                &org.as_str(),
                &sub.renew_at.map(Timestamp::as_millis),
            ],
        )
        .await?;
    Ok(claimed == 1)
}

pub(crate) async fn subscriptions_to_renew(
    c: &impl Conn,
    now: Timestamp,
    limit: u32,
) -> DbResult<Vec<(OrgId, Subscription)>> {
    let columns = rows::SUBSCRIPTION_COLUMNS
        .split(", ")
        .map(|c| format!("s.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {columns}, s.org_id FROM subscriptions s JOIN webhooks w ON w.id = s.webhook_id \
         WHERE s.renew_at <= $1 AND s.mode = 'subscribe' AND w.active AND w.deleted_at IS NULL \
         ORDER BY s.renew_at LIMIT $2"
    );
    let found = c.rows(&sql, &[&now.as_millis(), &big(limit)]).await?;
    rows::all(found, |r| {
        Ok((OrgId::from_trusted(r.try_get(11)?), rows::subscription(r)?))
    })
}

/// Disables an active webhook, touching nothing else of it (a user may be changing it at the
/// same time); `false` if it was not active (or is gone).
pub(crate) async fn disable(
    c: &impl Conn,
    org: &OrgId,
    id: &WebhookId,
    reason: &str,
    now: Timestamp,
) -> DbResult<bool> {
    let changed = c
        .exec(
            // `updated_at` moves even within the millisecond of the last save, so that a
            // user's change read before this one is refused (`update` with `read_at`).
            "UPDATE webhooks SET active = FALSE, disabled_reason = $1, \
             updated_at = GREATEST($2, updated_at + 1) \
             WHERE org_id = $3 AND id = $4 AND active AND deleted_at IS NULL",
            &[&reason, &now.as_millis(), &org.as_str(), &id.as_str()],
        )
        .await?;
    if changed == 1 {
        park_pending(c, id).await?;
    }
    Ok(changed == 1)
}

/// Parks an inactive webhook's pending deliveries: no due time until it is active again.
/// Leased ones keep their lease; whoever holds them gives them back parked.
async fn park_pending(c: &impl Conn, id: &WebhookId) -> DbResult<u64> {
    Ok(c.exec(
        "UPDATE deliveries SET due_at = NULL \
         WHERE webhook_id = $1 AND state = 'pending' AND lease_until IS NULL \
         AND due_at IS NOT NULL",
        &[&id.as_str()],
    )
    .await?)
}

/// Records whether the webhook's latest attempt failed; answers since when it has only failed.
pub(crate) async fn note_outcome(
    c: &impl Conn,
    id: &WebhookId,
    failed: bool,
    now: Timestamp,
) -> DbResult<Option<Timestamp>> {
    if !failed {
        c.exec(
            "UPDATE webhooks SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
            &[&id.as_str()],
        )
        .await?;
        return Ok(None);
    }
    let since: Option<i64> = c
        .opt_row(
            "UPDATE webhooks SET failing_since = COALESCE(failing_since, $1) WHERE id = $2 RETURNING failing_since",
            &[&now.as_millis(), &id.as_str()],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .flatten();
    Ok(since.map(Timestamp::from_millis))
}

/// Seals again every secret that is plain or sealed with an old key.
pub(crate) async fn reencrypt(
    c: &impl Conn,
    cipher: &crate::cipher::SecretCipher,
) -> DbResult<u64> {
    let found = c
        .rows(
            "SELECT id, secret, previous_secret, headers FROM webhooks WHERE deleted_at IS NULL FOR UPDATE",
            &[],
        )
        .await?;
    let other = |e: crate::cipher::CipherError| herald_core::store::StoreError::Other(Box::new(e));
    let mut rewritten = 0;
    for row in found {
        let (id, secret, previous, headers): (String, String, Option<String>, String) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        let resealed =
            crate::cipher::Resealed::of(cipher, &id, &secret, previous.as_deref(), &headers)
                .map_err(other)?;
        let Some((secret, previous, headers)) = resealed.into_row(secret, previous, headers) else {
            continue;
        };
        c.exec(
            "UPDATE webhooks SET secret = $1, previous_secret = $2, headers = $3 WHERE id = $4",
            &[&secret, &previous, &headers, &id],
        )
        .await?;
        rewritten += 1;
    }
    Ok(rewritten)
}
