//! Counts for a webhook's delivery-health plots (see `herald_core::health`): one bounded scan
//! of the webhook's most recent deliveries through `deliveries_by_webhook`, grouped in SQL so
//! that only a few hundred rows come back.

use herald_core::health::{AttemptCounts, HealthRows, HealthWindow};
use herald_core::{OrgId, WebhookId};

use super::rows;
use super::{Conn, DbResult};
use crate::{HEALTH_SCAN_LIMIT, duration_class_sql};

/// The webhook's latest deliveries; `$1` org, `$2` webhook, `$6` how many.
const RECENT: &str = "WITH recent AS (SELECT id, state, created_at, updated_at FROM deliveries \
     WHERE org_id = $1 AND webhook_id = $2 ORDER BY id DESC LIMIT $6)";

/// The attempts of [`RECENT`] counted by time and duration; `$3` the window's start, `$4` a
/// bucket's width, `$5` its end. Each delivery's attempts are found through their index (see
/// "Collations" in `deliveries.rs`).
pub(super) fn attempts_sql() -> String {
    format!(
        "{RECENT} SELECT (a.started_at - $3) / $4, ({})::BIGINT, \
         SUM(CASE WHEN a.error IS NULL THEN 1 ELSE 0 END)::BIGINT, \
         SUM(CASE WHEN a.error IS NULL THEN 0 ELSE 1 END)::BIGINT \
         FROM recent r JOIN attempts a ON a.delivery_id = r.id COLLATE \"default\" \
         WHERE a.started_at >= $3 AND a.started_at < $5 GROUP BY 1, 2",
        duration_class_sql("a.duration_ms")
    )
}

pub(crate) async fn webhook_health(
    c: &impl Conn,
    org: &OrgId,
    webhook: &WebhookId,
    window: &HealthWindow,
) -> DbResult<HealthRows> {
    let (since, until) = (window.since.as_millis(), window.until().as_millis());
    let (org, webhook) = (org.as_str(), webhook.as_str());
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &org,
        &webhook,
        &since,
        &window.bucket_ms,
        &until,
        &HEALTH_SCAN_LIMIT,
    ];
    let found = c.rows(&attempts_sql(), &args).await?;
    let attempts = rows::all(found, |r| {
        Ok(AttemptCounts {
            bucket: rows::int(r, 0)?,
            class: rows::int(r, 1)?,
            succeeded: rows::int(r, 2)?,
            failed: rows::int(r, 3)?,
        })
    })?;
    // 0: created per bucket; 1: finished per bucket (by last change); 2: unfinished at the start.
    let deliveries_sql = format!(
        "{RECENT} SELECT 0::BIGINT, (created_at - $3) / $4, COUNT(*) FROM recent \
         WHERE created_at >= $3 AND created_at < $5 GROUP BY 2 \
         UNION ALL SELECT 1::BIGINT, (updated_at - $3) / $4, COUNT(*) FROM recent \
         WHERE state <> 'pending' AND updated_at >= $3 AND updated_at < $5 GROUP BY 2 \
         UNION ALL SELECT 2::BIGINT, 0::BIGINT, COUNT(*) FROM recent \
         WHERE created_at < $3 AND (state = 'pending' OR updated_at >= $3)"
    );
    let mut out = HealthRows {
        attempts,
        ..HealthRows::default()
    };
    for r in c.rows(&deliveries_sql, &args).await? {
        let (kind, bucket, count): (i64, u32, u64) =
            (r.try_get(0)?, rows::int(&r, 1)?, rows::int(&r, 2)?);
        match kind {
            0 => out.created.push((bucket, count)),
            1 => out.finished.push((bucket, count)),
            _ => out.backlog_at_start = count,
        }
    }
    Ok(out)
}
