//! Ingest requests that arrive together are stored with one statement and one commit.
//!
//! Each `202` waits for its events to be committed. Stored one by one, every request was a
//! statement and a commit of its own, and PostgreSQL's work per statement, not per event,
//! bounded how many events a node could take (on two cores, requests of 6 events stored twice
//! as many events per second as requests of one). So requests queue here, and a runner stores
//! everything queued (up to [`MAX_GROUP_EVENTS`] events) with one statement, at most
//! [`GROUPS_IN_FLIGHT`] groups at a time: the busier the database, the larger the groups.
//!
//! A group that fails for any reason but the database being away is stored again request by
//! request, so that one request's failure is that request's alone.

use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use herald_core::store::{IngestItem, IngestResult, StoreError, StoreResult};
use herald_core::{DeliveryId, OrgId, Timestamp};

use super::deliveries::{self, IngestRequest};
use super::{OPERATION_TIMEOUT, pool_error, sql, timed, timed_within};

/// Groups stored at the same time, each on a connection of its own: one can wait for its
/// commit while the next is written. More only made the groups smaller (one, two, four and
/// eight were tried with `./scripts/bench-postgres --scenario burst`).
const GROUPS_IN_FLIGHT: usize = 2;
/// The most events one group's statement carries (a request is never split).
const MAX_GROUP_EVENTS: usize = 1_000;

/// One request waiting to be stored.
struct Job {
    org: OrgId,
    items: Vec<IngestItem>,
    now: Timestamp,
    lease_until: Timestamp,
    reply: oneshot::Sender<StoreResult<Vec<IngestResult>>>,
}

impl Job {
    fn request(&self) -> IngestRequest<'_> {
        IngestRequest {
            org: &self.org,
            items: &self.items,
            now: self.now,
            lease_until: self.lease_until,
        }
    }
}

/// The queue in front of the runner. The runner is started by the first request, in that
/// request's runtime, and again if that runtime has gone (as between tests).
#[derive(Default)]
pub(crate) struct IngestQueue {
    runner: Mutex<Option<mpsc::UnboundedSender<Job>>>,
}

impl IngestQueue {
    /// Stores one request's events, with whatever other requests are waiting.
    pub(crate) async fn store(
        &self,
        pool: &Pool,
        org: &OrgId,
        items: &[IngestItem],
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<Vec<IngestResult>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            org: org.clone(),
            items: items.to_vec(),
            now,
            lease_until,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = self.runner(pool).send(job) {
            // The runner's runtime is shutting down: store it here.
            let mut results = store_group(pool, &[job.request()]).await?;
            return Ok(results.pop().unwrap_or_default());
        }
        // The runner answers every job it takes; it drops one only if it is itself stopped.
        // The wait is bounded as one statement is: a caller that gives up is told the database
        // is away, and if its events are stored after all, the runner gives their leases back.
        timed_within(2 * OPERATION_TIMEOUT, async {
            answer.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "storing the events stopped before it answered (the server may be shutting \
                     down); send them again: repeated ids are recognized"
                        .into(),
                ))
            })
        })
        .await
    }

    fn runner(&self, pool: &Pool) -> mpsc::UnboundedSender<Job> {
        let mut runner = self.runner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = runner.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool.clone(), rx));
        *runner = Some(tx.clone());
        tx
    }
}

/// Takes everything queued as one group, while fewer than [`GROUPS_IN_FLIGHT`] are being
/// stored; stops when the store (the queue's sender) is dropped.
async fn run(pool: Pool, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    while let Some(first) = jobs.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut events = first.items.len();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS {
            let Ok(job) = jobs.try_recv() else { break };
            events += job.items.len();
            group.push(job);
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            answer(&pool, group).await;
            drop(slot);
        });
    }
}

/// Stores a group and answers each of its jobs.
async fn answer(pool: &Pool, group: Vec<Job>) {
    let requests: Vec<IngestRequest<'_>> = group.iter().map(Job::request).collect();
    let outcome = store_group(pool, &requests).await;
    drop(requests);
    match outcome {
        Ok(results) => {
            for (job, results) in group.into_iter().zip(results) {
                reply(pool, job, Ok(results)).await;
            }
        }
        Err(StoreError::Unavailable(cause)) => {
            let why = cause.to_string();
            // Cut off by the timeout or a broken connection, the group may have been stored
            // all the same (the server took the commit, then stalled or answered too late):
            // its deliveries, leased to this node and handed to nobody, would wait for their
            // leases to end. Once the database answers they are given back, which finds
            // nothing of what was not stored.
            let unknown: Vec<Unanswered> = group
                .iter()
                .map(|job| Unanswered {
                    org: job.org.clone(),
                    items: job.items.clone(),
                    lease_until: job.lease_until,
                })
                .collect();
            tokio::spawn(give_back_when_answering(pool.clone(), unknown));
            for job in group {
                reply(pool, job, Err(StoreError::Unavailable(why.clone().into()))).await;
            }
        }
        Err(e) if group.len() == 1 => {
            if let Some(job) = group.into_iter().next() {
                reply(pool, job, Err(e)).await;
            }
        }
        Err(_) => {
            for job in group {
                let results = store_group(pool, &[job.request()]).await;
                reply(pool, job, results.map(|mut r| r.pop().unwrap_or_default())).await;
            }
        }
    }
}

/// A request whose storing was cut off: stored or not, nobody knows yet.
struct Unanswered {
    org: OrgId,
    items: Vec<IngestItem>,
    lease_until: Timestamp,
}

/// How often a give-back waiting for the database asks whether it answers again.
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Gives back the deliveries of requests that may have been stored while their callers heard
/// "unavailable", once the database answers again (and once more a little later, for a commit
/// the server finishes only after answering others); until their leases end, after which
/// they are due anyway.
async fn give_back_when_answering(pool: Pool, requests: Vec<Unanswered>) {
    let Some(last_lease) = requests.iter().map(|r| r.lease_until).max() else {
        return;
    };
    let now = || herald_core::Clock::now(&herald_core::SystemClock);
    let answers = || {
        timed(async {
            let client = pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map_err(sql)?;
            Ok(())
        })
    };
    while now() < last_lease {
        tokio::time::sleep(ASK_AGAIN).await;
        if answers().await.is_err() {
            continue;
        }
        for pass in 0..2 {
            if pass > 0 {
                tokio::time::sleep(5 * ASK_AGAIN).await;
            }
            for r in &requests {
                let stored = vec![IngestResult::Stored; r.items.len()];
                give_back(&pool, &r.org, &r.items, &stored, now(), r.lease_until).await;
            }
        }
        return;
    }
}

/// Answers one job; if its caller has gone, gives back what it stored.
async fn reply(pool: &Pool, job: Job, result: StoreResult<Vec<IngestResult>>) {
    let Job {
        org,
        items,
        now,
        lease_until,
        reply,
    } = job;
    if let Err(Ok(results)) = reply.send(result) {
        give_back(pool, &org, &items, &results, now, lease_until).await;
    }
}

/// The caller of a stored request went away (its client disconnected), so nobody hands the
/// deliveries leased to this node to its dispatcher: they are made due now instead of when
/// their lease ends. Its own give-back may have run before the commit and found nothing.
async fn give_back(
    pool: &Pool,
    org: &OrgId,
    items: &[IngestItem],
    results: &[IngestResult],
    now: Timestamp,
    lease_until: Timestamp,
) {
    let held: Vec<(DeliveryId, Timestamp)> = items
        .iter()
        .zip(results)
        .filter(|(_, result)| **result == IngestResult::Stored)
        .flat_map(|(item, _)| &item.deliveries)
        .filter(|d| d.held_at_ingest())
        .map(|d| (d.id.clone(), lease_until))
        .collect();
    if held.is_empty() {
        return;
    }
    let given_back = timed(async {
        let client = pool.get().await.map_err(pool_error)?;
        Ok(deliveries::defer(&client, org, &held, now).await?)
    })
    .await;
    match given_back {
        Ok(()) => tracing::debug!(
            deliveries = held.len(),
            "deliveries of a request whose caller was not answered are due now"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not give back the deliveries of a request whose client went away; \
             they are attempted when their lease ends"
        ),
    }
}

/// One statement for all of `requests`, in a transaction only when work must be announced
/// with it (deliveries stored without a lease, which no node holds yet).
async fn store_group(
    pool: &Pool,
    requests: &[IngestRequest<'_>],
) -> StoreResult<Vec<Vec<IngestResult>>> {
    timed(async {
        let mut client = pool.get().await.map_err(pool_error)?;
        if requests.iter().any(IngestRequest::announces) {
            let tx = client.transaction().await.map_err(sql)?;
            let results = deliveries::insert_events(&tx, requests).await?;
            tx.commit().await.map_err(sql)?;
            Ok(results)
        } else {
            Ok(deliveries::insert_events(&client, requests).await?)
        }
    })
    .await
}
