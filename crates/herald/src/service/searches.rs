//! How many searches of its history one organization runs at once on this node. A list filtered
//! by what no index orders (a webhook's deliveries by `state` or `event_type`, events by `type`)
//! walks the history newest first until it has a page of matches, so a rare match reads every
//! row: 236-340 ms at 400,000 deliveries on SQLite. A scale probe ran 32 such lists at once with
//! one organization's key: they held SQLite's four read connections, and other organizations'
//! reads waited up to 7.8 s; on PostgreSQL they held the pool, and another organization's ingest
//! took 1.2-1.8 s. Past [`AT_ONCE`], an organization's searches wait their turn, for up to
//! [`WAIT`], then get `429`; other organizations' requests do not wait behind them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use herald_core::OrgId;

use super::{ServiceError, ServiceResult};

/// Searches one organization runs at once on a node.
pub const AT_ONCE: usize = 2;
/// How long a search waits for its turn.
const WAIT: Duration = Duration::from_secs(10);

/// The searches running, by organization. An organization's entry stays once made (one small
/// semaphore each, for the organizations that searched).
#[derive(Default)]
pub struct Searches {
    running: Mutex<HashMap<OrgId, Arc<Semaphore>>>,
}

impl Searches {
    /// Waits for the organization's turn to search; the search runs while the permit is held.
    pub async fn turn(&self, org: &OrgId) -> ServiceResult<OwnedSemaphorePermit> {
        let semaphore = self
            .running
            .lock()
            .expect("searches lock")
            .entry(org.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(AT_ONCE)))
            .clone();
        match tokio::time::timeout(WAIT, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a wait past `WAIT` is the other arm.
            Ok(Err(_)) | Err(_) => Err(ServiceError::TooManySearches),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_organization_searches_a_few_at_a_time_and_others_do_not_wait() {
        let searches = Searches::default();
        let (acme, globex) = (OrgId::generate(), OrgId::generate());
        let running: Vec<_> = futures::future::join_all((0..AT_ONCE).map(|_| searches.turn(&acme)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // Another organization goes at once.
        let other = tokio::time::timeout(Duration::from_millis(1), searches.turn(&globex)).await;
        assert!(matches!(other, Ok(Ok(_))));
        // One more of the first waits, and gets its turn when one ends.
        let waiting = searches.turn(&acme);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut waiting)
                .await
                .is_err()
        );
        drop(running.into_iter().next());
        assert!(waiting.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_search_that_waits_too_long_is_refused() {
        let searches = Searches::default();
        let acme = OrgId::generate();
        let _running: Vec<_> =
            futures::future::join_all((0..AT_ONCE).map(|_| searches.turn(&acme))).await;
        let refused = searches.turn(&acme).await;
        assert!(matches!(refused, Err(ServiceError::TooManySearches)));
    }
}
