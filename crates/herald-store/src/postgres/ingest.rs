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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use herald_core::store::{ConfigMark, IngestItem, IngestResult, StoreError, StoreResult};
use herald_core::{DeliveryId, OrgId, Timestamp};

use super::deliveries::{self, IngestRequest};
use super::{OPERATION_TIMEOUT, TIMED_OUT, pool_error, sql, timed, timed_within};

/// Groups stored at the same time, each on a connection of its own: one can wait for its
/// commit while the next is written. More only made the groups smaller (one, two, four and
/// eight were tried with `./scripts/bench-postgres --scenario burst`).
const GROUPS_IN_FLIGHT: usize = 2;
/// The most events one group's statement carries (a request is never split).
const MAX_GROUP_EVENTS: usize = 1_000;

/// One request waiting to be stored.
struct Job {
    org: OrgId,
    seen: Option<ConfigMark>,
    items: Vec<IngestItem>,
    now: Timestamp,
    lease_until: Timestamp,
    reply: oneshot::Sender<StoreResult<Vec<IngestResult>>>,
}

impl Job {
    fn request(&self) -> IngestRequest<'_> {
        IngestRequest {
            org: &self.org,
            seen: self.seen.as_ref(),
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
    /// Deliveries of requests whose storing was cut off, to give back once the database
    /// answers (`UnsureCommits`).
    unsure: Arc<UnsureCommits>,
    /// When storing a request last failed for want of the database (a lock held, a stall),
    /// cleared when one is stored again: the readiness check reports it, since its own read
    /// may pass while the tables events go to are locked.
    last_failed_at: Mutex<Option<(std::time::Instant, Failure)>>,
    /// When each request now waiting to be stored began, by a number of its own: the oldest
    /// shows a stall before any request has failed (that takes 10 to 20 s).
    waiting: Arc<Mutex<std::collections::BTreeMap<u64, std::time::Instant>>>,
    next_waiting: std::sync::atomic::AtomicU64,
}

/// How storing events last failed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    /// No answer within the bound: a lock or an overloaded server, most likely.
    TimedOut,
    /// The database server's disk is full (SQLSTATE 53100: "could not extend file …: No space
    /// left on device"): said as such, as it names nothing of the deployment.
    DiskFull,
    /// Anything else that counts as the database being away (refused, a password changed, a
    /// certificate that does not pass): the log has its words.
    Away,
}

impl Failure {
    fn of(why: &(dyn std::error::Error + 'static)) -> Self {
        if why.to_string() == TIMED_OUT {
            return Self::TimedOut;
        }
        let mut chain = std::iter::successors(Some(why), |e| e.source());
        if chain.any(|e| {
            e.downcast_ref::<tokio_postgres::Error>()
                .and_then(|e| e.code())
                == Some(&tokio_postgres::error::SqlState::DISK_FULL)
                || e.to_string().contains("No space left on device")
        }) {
            Self::DiskFull
        } else {
            Self::Away
        }
    }
}

/// A request's place among those waiting to be stored, given up however its wait ends (the
/// API drops the future of a request whose client went away).
struct Waiting {
    waiting: Arc<Mutex<std::collections::BTreeMap<u64, std::time::Instant>>>,
    number: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.number);
    }
}

/// How long the oldest request may wait to be stored before the node says it is not ready: a
/// group normally commits in milliseconds.
const STALL_SHOWN_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// How long after a failed store of events the node still reports it is not ready, unless one
/// is stored meanwhile.
const TROUBLE_SHOWN_FOR: std::time::Duration = std::time::Duration::from_secs(5);

impl IngestQueue {
    /// Stores one request's events, with whatever other requests are waiting, unless its
    /// organization changed after `seen` ([`StoreError::DirectoryChanged`]).
    pub(crate) async fn store(
        &self,
        pool: &Pool,
        org: &OrgId,
        seen: Option<&ConfigMark>,
        items: &[IngestItem],
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<Vec<IngestResult>> {
        let number = self
            .next_waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(number, std::time::Instant::now());
        let _waiting = Waiting {
            waiting: self.waiting.clone(),
            number,
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            org: org.clone(),
            seen: seen.cloned(),
            items: items.to_vec(),
            now,
            lease_until,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = self.runner(pool).send(job) {
            // The runner's runtime is shutting down: store it here.
            let mut results = store_group(pool, &[job.request()]).await?;
            return results.pop().unwrap_or_else(|| Ok(Vec::new()));
        }
        // The runner answers every job it takes; it drops one only if it is itself stopped.
        // The wait is bounded as one statement is: a caller that gives up is told the database
        // is away, and if its events are stored after all, the runner gives their leases back.
        let stored = timed_within(2 * OPERATION_TIMEOUT, async {
            answer.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "storing the events stopped before it answered (the server may be shutting \
                     down); send them again: repeated ids are recognized"
                        .into(),
                ))
            })
        })
        .await;
        let mut failing = self
            .last_failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &stored {
            Ok(_) => *failing = None,
            Err(StoreError::Unavailable(why)) => {
                *failing = Some((std::time::Instant::now(), Failure::of(&**why)));
            }
            Err(_) => {}
        }
        stored
    }

    /// Why events cannot be stored now: a request has waited over [`STALL_SHOWN_AFTER`], or
    /// storing one failed for want of the database moments ago.
    pub(crate) fn trouble(&self) -> Option<String> {
        let oldest = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .next()
            .copied();
        if let Some(since) = oldest.filter(|at| at.elapsed() > STALL_SHOWN_AFTER) {
            return Some(format!(
                "events have waited {} s to be stored: the database does not answer in time (a \
                 lock held on Herald's tables, or an overloaded server)",
                since.elapsed().as_secs()
            ));
        }
        let failing = self
            .last_failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (_, failure) = failing
            .as_ref()
            .filter(|(at, _)| at.elapsed() < TROUBLE_SHOWN_FOR)?;
        // The readiness check answers anyone: what the database said (its address, a user's
        // name, a certificate's path) stays in the log.
        let why = match failure {
            Failure::TimedOut => {
                "the database did not answer in time (a lock held on Herald's tables, or an \
                 overloaded server)"
            }
            Failure::DiskFull => {
                "the database server's disk is full: free some space where PostgreSQL keeps its \
                 data"
            }
            Failure::Away => "the database is unavailable (the log says why)",
        };
        Some(format!(
            "storing events failed moments ago: {why}; Herald tries again with the next request"
        ))
    }

    fn runner(&self, pool: &Pool) -> mpsc::UnboundedSender<Job> {
        let mut runner = self.runner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = runner.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool.clone(), rx, self.unsure.clone()));
        *runner = Some(tx.clone());
        tx
    }
}

/// Takes everything queued as one group, while fewer than [`GROUPS_IN_FLIGHT`] are being
/// stored; stops when the store (the queue's sender) is dropped.
async fn run(pool: Pool, mut jobs: mpsc::UnboundedReceiver<Job>, unsure: Arc<UnsureCommits>) {
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
        let (pool, unsure) = (pool.clone(), unsure.clone());
        tokio::spawn(async move {
            answer(&pool, group, &unsure).await;
            drop(slot);
        });
    }
}

/// Stores a group and answers each of its jobs: in runs of jobs that repeat no id of one
/// another, each run its own statement and commit, one after the other. A job repeating an id
/// of an earlier one is stored once that one's fate is known (its organization may have
/// changed, and then nothing of it is stored); the two in one transaction would hold the first
/// statement's rows while the second waited for another node's, which crossed repeats turned
/// into deadlocks.
async fn answer(pool: &Pool, mut group: Vec<Job>, unsure: &Arc<UnsureCommits>) {
    while !group.is_empty() {
        let requests: Vec<IngestRequest<'_>> = group.iter().map(Job::request).collect();
        let run = deliveries::without_repeats(&requests);
        drop(requests);
        let rest = group.split_off(run);
        answer_run(pool, group, unsure).await;
        group = rest;
    }
}

/// Stores a run of jobs that repeat no id of one another in one statement, and answers each.
async fn answer_run(pool: &Pool, group: Vec<Job>, unsure: &Arc<UnsureCommits>) {
    let requests: Vec<IngestRequest<'_>> = group.iter().map(Job::request).collect();
    let outcome = store_group(pool, &requests).await;
    drop(requests);
    match outcome {
        Ok(results) => {
            for (job, results) in group.into_iter().zip(results) {
                reply(pool, unsure, job, results).await;
            }
        }
        Err(StoreError::Unavailable(cause)) => {
            // Told to every job of the group, whole: a driver error's own text is only its
            // kind ("db error", "error performing TLS handshake"), its cause says what.
            let why = herald_core::error_chain(&*cause);
            // Cut off by the timeout or a broken connection, the group may have been stored
            // all the same (the server took the commit, then stalled or answered too late):
            // its deliveries, leased to this node and handed to nobody, would wait for their
            // leases to end. Once the database answers they are given back, which finds
            // nothing of what was not stored.
            for job in &group {
                let held = held_at_ingest(&job.items, None, job.lease_until);
                unsure.add(pool, &job.org, held);
            }
            for job in group {
                reply(
                    pool,
                    unsure,
                    job,
                    Err(StoreError::Unavailable(why.clone().into())),
                )
                .await;
            }
        }
        Err(e) if group.len() == 1 => {
            if let Some(job) = group.into_iter().next() {
                reply(pool, unsure, job, Err(e)).await;
            }
        }
        Err(_) => {
            for job in group {
                let results = store_group(pool, &[job.request()]).await;
                reply(
                    pool,
                    unsure,
                    job,
                    results.and_then(|mut r| r.pop().unwrap_or_else(|| Ok(Vec::new()))),
                )
                .await;
            }
        }
    }
}

/// Deliveries of requests whose storing was cut off (a timeout, a broken connection): stored or
/// not, nobody knows yet. Only their ids and leases are kept, not the events; one task gives
/// them back once the database answers, for every such request at once.
#[derive(Default)]
pub(crate) struct UnsureCommits {
    /// By organization: each delivery and the lease it would be under.
    held: Mutex<HashMap<OrgId, Vec<(DeliveryId, Timestamp)>>>,
    draining: std::sync::atomic::AtomicBool,
}

impl UnsureCommits {
    fn add(self: &Arc<Self>, pool: &Pool, org: &OrgId, held: Vec<(DeliveryId, Timestamp)>) {
        if held.is_empty() {
            return;
        }
        self.keep(org, held);
        if !self
            .draining
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tokio::spawn(self.clone().drain(pool.clone()));
        }
    }

    /// Holds `held` for the next give-back.
    fn keep(&self, org: &OrgId, held: Vec<(DeliveryId, Timestamp)>) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(org.clone())
            .or_default()
            .extend(held);
    }

    /// Gives back what is held a little after the database answers again (a commit the server
    /// took before stalling lands only then); drops what is past its lease, which is due
    /// anyway. Ends when nothing is held.
    async fn drain(self: Arc<Self>, pool: Pool) {
        let now = || herald_core::Clock::now(&herald_core::SystemClock);
        let answers = || {
            timed(async {
                let client = pool.get().await.map_err(pool_error)?;
                client.simple_query("SELECT 1").await.map_err(sql)?;
                Ok(())
            })
        };
        loop {
            tokio::time::sleep(ASK_AGAIN).await;
            if self.prune(now()) {
                self.draining
                    .store(false, std::sync::atomic::Ordering::Release);
                // Added while this was stopping: go on.
                if self
                    .held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                    || self
                        .draining
                        .swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    return;
                }
                continue;
            }
            if answers().await.is_err() {
                continue;
            }
            tokio::time::sleep(5 * ASK_AGAIN).await;
            let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
            for (org, deliveries) in held {
                if let Err(deliveries) = give_back(&pool, &org, deliveries, now()).await {
                    // Asked again at the next round, until their leases end.
                    self.keep(&org, deliveries);
                }
            }
        }
    }

    /// Drops what is past its lease by `now`; answers whether nothing is left.
    fn prune(&self, now: Timestamp) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, deliveries| {
            deliveries.retain(|(_, lease)| *lease > now);
            !deliveries.is_empty()
        });
        held.is_empty()
    }
}

/// How often the give-back waiting for the database asks whether it answers again.
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The deliveries of `items` that were leased to this node as they were stored (of those
/// `results` says were stored, if it says).
fn held_at_ingest(
    items: &[IngestItem],
    results: Option<&[IngestResult]>,
    lease_until: Timestamp,
) -> Vec<(DeliveryId, Timestamp)> {
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| results.is_none_or(|r| r.get(*i) == Some(&IngestResult::Stored)))
        .flat_map(|(_, item)| &item.deliveries)
        .filter(|d| d.held_at_ingest())
        .map(|d| (d.id.clone(), lease_until))
        .collect()
}

/// Answers one job; if its caller has gone, gives back what it stored, or, if the database
/// does not take that either (a lock held past the caller's patience), has it given back once
/// the database answers rather than when its lease ends.
async fn reply(
    pool: &Pool,
    unsure: &Arc<UnsureCommits>,
    job: Job,
    result: StoreResult<Vec<IngestResult>>,
) {
    let Job {
        org,
        items,
        now,
        lease_until,
        reply,
        ..
    } = job;
    if let Err(Ok(results)) = reply.send(result) {
        let held = held_at_ingest(&items, Some(&results), lease_until);
        // On its own: the group's other callers are not kept waiting for it.
        let (pool, unsure) = (pool.clone(), unsure.clone());
        tokio::spawn(async move {
            if let Err(held) = give_back(&pool, &org, held, now).await {
                unsure.add(&pool, &org, held);
            }
        });
    }
}

/// Deliveries leased to this node as they were stored that nobody hands to its dispatcher (the
/// request's caller went away, or was told the database was unavailable while it stored them
/// after all) are made due now instead of when their lease ends. Finds nothing of what was not
/// stored, or was given back already. Answers what it could not give back.
async fn give_back(
    pool: &Pool,
    org: &OrgId,
    held: Vec<(DeliveryId, Timestamp)>,
    now: Timestamp,
) -> Result<(), Vec<(DeliveryId, Timestamp)>> {
    if held.is_empty() {
        return Ok(());
    }
    let given_back = timed(async { Ok(deliveries::defer(pool, org, &held, now).await?) }).await;
    match given_back {
        Ok(deferred) => {
            tracing::debug!(
                deliveries = deferred,
                "deliveries of a request whose caller was not answered are due now"
            );
            Ok(())
        }
        Err(e) => {
            if let Some(held_back) = NOT_GIVEN_BACK.admit() {
                tracing::warn!(
                    error = %herald_core::error_chain(&e),
                    held_back,
                    "could not give back the deliveries of a request whose caller was not \
                     answered; asking again once the database answers (at the latest, they are \
                     attempted when their lease ends)"
                );
            }
            Err(held)
        }
    }
}

/// Give-backs that failed: one line per 10 s.
static NOT_GIVEN_BACK: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(std::time::Duration::from_secs(10));

/// One statement for all of `requests` (which repeat no id of one another), in a transaction
/// only when work must be announced with it (deliveries stored without a lease, which no node
/// holds yet).
async fn store_group(
    pool: &Pool,
    requests: &[IngestRequest<'_>],
) -> StoreResult<Vec<StoreResult<Vec<IngestResult>>>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The readiness check says a full disk as such; other failures keep their words in the log.
    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        let of = |said: &str| {
            let why: Box<dyn std::error::Error + Send + Sync> = said.into();
            Failure::of(&*why)
        };
        assert_eq!(
            of("could not extend file \"base/16384/2619\": No space left on device"),
            Failure::DiskFull
        );
        assert_eq!(of(TIMED_OUT), Failure::TimedOut);
        assert_eq!(of("connection refused"), Failure::Away);
    }
}
