//! How many searches of the history run at once on this node. A list filtered by what no index
//! orders (a webhook's deliveries by `state` or `event_type`, events by `type`) walks the history
//! newest first until it has a page of matches, so a rare match reads every row: 236-340 ms at
//! 400,000 deliveries on SQLite. A scale probe ran 32 such lists at once with one
//! organization's key: they held SQLite's four read connections, and other organizations'
//! reads waited up to 7.8 s; on PostgreSQL they held the pool, and another organization's ingest
//! took 1.2-1.8 s. So an organization runs at most [`PER_ORG`] at once, and the node at most
//! [`PER_NODE`] (fewer than SQLite's four readers, so that other reads always find one). A
//! search waits its turn for up to [`WAIT`], then gets `429`. A search runs to its end in a task
//! of its own, holding its turn, even when its caller gives up: the database goes on reading
//! anyway, and a client that retries at once must not start a second one beside it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use herald_core::OrgId;
use herald_core::store::StoreError;

use super::{ServiceError, ServiceResult};

/// Searches one organization runs at once on a node.
pub const PER_ORG: usize = 2;
/// Searches a node runs at once, all organizations together.
pub const PER_NODE: usize = 3;
/// How long a search waits for its turn.
pub const WAIT: Duration = Duration::from_secs(10);

/// The searches running. An organization has an entry while one of its searches runs or waits.
pub struct Searches {
    node: Arc<Semaphore>,
    orgs: Mutex<HashMap<OrgId, Arc<Semaphore>>>,
}

impl Default for Searches {
    fn default() -> Self {
        Self {
            node: Arc::new(Semaphore::new(PER_NODE)),
            orgs: Mutex::default(),
        }
    }
}

/// A search's turn: the organization's place and the node's.
pub struct Turn {
    _org: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

impl Searches {
    /// Runs `search` once the organization and the node have room for it.
    pub async fn run<T, F>(&self, org: &OrgId, search: F) -> ServiceResult<T>
    where
        T: Send + 'static,
        F: Future<Output = ServiceResult<T>> + Send + 'static,
    {
        let turn = self.turn(org).await?;
        tokio::spawn(async move {
            let _turn = turn;
            search.await
        })
        .await
        .unwrap_or_else(|e| match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only as the runtime shuts down.
            Err(_) => Err(ServiceError::Unavailable(StoreError::Unavailable(
                "this node is stopping".into(),
            ))),
        })
    }

    /// Runs `list` as a search when `search` (a filter no index orders), else at once.
    pub async fn run_if<T, F>(&self, search: bool, org: &OrgId, list: F) -> ServiceResult<T>
    where
        T: Send + 'static,
        F: Future<Output = ServiceResult<T>> + Send + 'static,
    {
        if search {
            self.run(org, list).await
        } else {
            list.await
        }
    }

    /// Waits for a turn, the organization's first, for [`WAIT`] in all.
    pub async fn turn(&self, org: &OrgId) -> ServiceResult<Turn> {
        let org_room = {
            let mut orgs = self.orgs.lock().expect("searches lock");
            // Nothing holds an idle organization's semaphore but the map (a turn, running or
            // waiting, holds it too): those entries go, so that the map does not keep every
            // organization that ever searched, deleted ones included.
            orgs.retain(|_, room| Arc::strong_count(room) > 1);
            orgs.entry(org.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(PER_ORG)))
                .clone()
        };
        let node_room = self.node.clone();
        let both = async move {
            let org = org_room.acquire_owned().await?;
            let node = node_room.acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>(Turn {
                _org: org,
                _node: node,
            })
        };
        match tokio::time::timeout(WAIT, both).await {
            Ok(Ok(turn)) => Ok(turn),
            // The semaphores are never closed; a wait past `WAIT` is the other arm.
            Ok(Err(_)) | Err(_) => Err(ServiceError::TooManySearches),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn turns(searches: &Searches, org: &OrgId, n: usize) -> Vec<Turn> {
        let mut taken = Vec::new();
        for _ in 0..n {
            taken.push(searches.turn(org).await.unwrap());
        }
        taken
    }

    /// Whether a turn comes within a second (the clock is paused: at once or never).
    async fn comes(searches: &Searches, org: &OrgId) -> bool {
        tokio::time::timeout(Duration::from_secs(1), searches.turn(org))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn an_organization_searches_a_few_at_a_time_and_the_node_a_few_more() {
        let searches = Searches::default();
        let (acme, globex, initech) = (OrgId::generate(), OrgId::generate(), OrgId::generate());
        let acme_running = turns(&searches, &acme, PER_ORG).await;
        assert!(
            !comes(&searches, &acme).await,
            "past the organization's share"
        );
        // Another organization gets what the node has left, and no more.
        let globex_running = turns(&searches, &globex, PER_NODE - PER_ORG).await;
        assert!(!comes(&searches, &initech).await, "past the node's share");
        // A search that ends makes room for one waiting.
        let waiting = searches.turn(&initech);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut waiting)
                .await
                .is_err()
        );
        drop(acme_running);
        assert!(waiting.await.is_ok());
        drop(globex_running);
        // Once their searches end, organizations leave no entry behind but the one asking.
        assert!(comes(&searches, &acme).await);
        assert_eq!(searches.orgs.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_search_that_waits_too_long_is_refused() {
        let searches = Searches::default();
        let acme = OrgId::generate();
        let _running = turns(&searches, &acme, PER_ORG).await;
        let refused = searches.turn(&acme).await;
        assert!(matches!(refused, Err(ServiceError::TooManySearches)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_search_whose_caller_gives_up_keeps_its_turn_until_it_ends() {
        let searches = Arc::new(Searches::default());
        let acme = OrgId::generate();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let given_up = {
            let searches = searches.clone();
            let acme = acme.clone();
            tokio::spawn(async move {
                searches
                    .run(&acme, async move {
                        let _ = finished.await;
                        Ok(())
                    })
                    .await
            })
        };
        // Let it take its turn, then drop its caller.
        tokio::time::sleep(Duration::from_millis(10)).await;
        given_up.abort();
        let _ = given_up.await;
        let other = turns(&searches, &acme, PER_ORG - 1).await;
        assert!(
            !comes(&searches, &acme).await,
            "the search given up still runs"
        );
        let _ = finish.send(());
        drop(other);
        assert!(comes(&searches, &acme).await);
    }
}
