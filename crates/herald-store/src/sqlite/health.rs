//! Counts for a webhook's delivery-health plots (see `herald_core::health`): one bounded scan
//! of the webhook's most recent deliveries through `deliveries_by_webhook`, grouped in SQL so
//! that only a few hundred rows come back.

use rusqlite::{Connection, params};

use herald_core::health::{AttemptCounts, HealthRows, HealthWindow};
use herald_core::{OrgId, WebhookId};

use super::DbResult;
use crate::{HEALTH_SCAN_LIMIT, duration_class_sql};

/// The webhook's latest deliveries; `?1` org, `?2` webhook, `?6` how many.
const RECENT: &str = "WITH recent AS (SELECT id, state, created_at, updated_at FROM deliveries \
     WHERE org_id = ?1 AND webhook_id = ?2 ORDER BY id DESC LIMIT ?6)";

pub(crate) fn webhook_health(
    conn: &Connection,
    org: &OrgId,
    webhook: &WebhookId,
    window: &HealthWindow,
) -> DbResult<HealthRows> {
    let (since, until) = (window.since.as_millis(), window.until().as_millis());
    let args = params![
        org.as_str(),
        webhook.as_str(),
        since,
        window.bucket_ms,
        until,
        HEALTH_SCAN_LIMIT
    ];
    let attempts_sql = format!(
        "{RECENT} SELECT (a.started_at - ?3) / ?4, {}, \
         SUM(CASE WHEN a.error IS NULL THEN 1 ELSE 0 END), \
         SUM(CASE WHEN a.error IS NULL THEN 0 ELSE 1 END) \
         FROM recent r JOIN attempts a ON a.delivery_id = r.id \
         WHERE a.started_at >= ?3 AND a.started_at < ?5 GROUP BY 1, 2",
        duration_class_sql("a.duration_ms")
    );
    let attempts = conn
        .prepare_cached(&attempts_sql)?
        .query_map(args, |r| {
            Ok(AttemptCounts {
                bucket: r.get(0)?,
                class: r.get(1)?,
                succeeded: r.get(2)?,
                failed: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // 0: created per bucket; 1: finished per bucket (by last change); 2: unfinished at the start.
    let deliveries_sql = format!(
        "{RECENT} SELECT 0, (created_at - ?3) / ?4, COUNT(*) FROM recent \
         WHERE created_at >= ?3 AND created_at < ?5 GROUP BY 2 \
         UNION ALL SELECT 1, (updated_at - ?3) / ?4, COUNT(*) FROM recent \
         WHERE state <> 'pending' AND updated_at >= ?3 AND updated_at < ?5 GROUP BY 2 \
         UNION ALL SELECT 2, 0, COUNT(*) FROM recent \
         WHERE created_at < ?3 AND (state = 'pending' OR updated_at >= ?3)"
    );
    let mut out = HealthRows {
        attempts,
        ..HealthRows::default()
    };
    let mut stmt = conn.prepare_cached(&deliveries_sql)?;
    let mut rows = stmt.query(args)?;
    while let Some(r) = rows.next()? {
        let (kind, bucket, count): (i64, u32, u64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        match kind {
            0 => out.created.push((bucket, count)),
            1 => out.finished.push((bucket, count)),
            _ => out.backlog_at_start = count,
        }
    }
    Ok(out)
}
