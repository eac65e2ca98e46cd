//! Stores attempt outcomes in groups. Each attempt's outcome must be stored before its
//! delivery is let go, and storing each one on its own cost the store's single writer a
//! savepoint, a wake-up and a reply per delivery. The recorder gathers what arrives while its
//! previous writes are committing and stores it in one call, so the busier the dispatcher, the
//! bigger (and cheaper per attempt) each write.
//!
//! It also knows whether outcomes can be stored at all. While the database is away no attempt
//! should start: its outcome could not be stored, and a delivery whose outcome is lost is sent
//! again once its lease ends (a duplicate for the receiver). So the webhooks' tasks wait for
//! [`Recorder::storable`] before each attempt, and a queued backlog waits out an outage instead
//! of draining into outcomes that would be lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use herald_core::Clock;
use herald_core::store::{AttemptRecord, Store, StoreError, StoreResult};

/// Attempts stored in one call at most.
const MAX_GROUP: usize = 512;
/// Writes in flight at once: one commits while the next gathers, and a backend that commits
/// in parallel (PostgreSQL) gets a little more.
const WRITES_IN_FLIGHT: usize = 4;

/// The handle attempts record through. Cheap to clone.
#[derive(Clone)]
pub(super) struct Recorder {
    tx: mpsc::UnboundedSender<Pending>,
    health: Arc<Health>,
}

/// What a caller hears: which records moved their deliveries on, or why they were not stored,
/// with the records to try again.
type Answer = Result<Vec<bool>, (StoreError, Vec<AttemptRecord>)>;

/// One caller's outcomes, and where to tell it they are stored.
struct Pending {
    records: Vec<AttemptRecord>,
    done: oneshot::Sender<Answer>,
}

/// How long outcomes are kept trying while the database is away, at least: an attempt whose
/// outcome is lost is sent again once its lease ends, so they are kept trying until the lease
/// they were sent under ends (less a margin), when that is later. Storing one after that would
/// change nothing: its delivery may be another node's by then.
const KEEP_TRYING: Duration = Duration::from_secs(30);
/// A write of outcomes unanswered for this long means the database is stalled (frozen, or cut
/// off without the connection noticing): attempts pause as if it had refused.
const STALLED: Duration = Duration::from_secs(5);
/// Pauses said in the log: one line per 10 s.
static PAUSED: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(Duration::from_secs(10));
/// How long attempts must have gone on before the end of a pause is said.
const RESUME_SAID_AFTER: Duration = Duration::from_secs(1);
/// How often the database is looked at while away and no outcome is waiting to be stored.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Whether the database stores outcomes now, as the recorder last saw it.
struct Health {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The longest an outcome is kept trying: the lease setting.
    lease: Duration,
    /// `Some(since)` while the database is away.
    away: watch::Sender<Option<Instant>>,
    /// The same, read before every attempt without the watch's lock.
    paused: AtomicBool,
    /// Whether this pause was said in the log (its end is said only if it was).
    announced: AtomicBool,
    /// Callers in [`Recorder::record`] now: while any is, its next write tells whether the
    /// database is back.
    waiting: AtomicUsize,
}

impl Recorder {
    /// Starts the recorder's task on the current runtime; it ends when every handle is gone.
    /// `lease` is the lease setting: outcomes are not kept trying for longer.
    pub(super) fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>, lease: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store.clone(), rx));
        Self {
            tx,
            health: Arc::new(Health {
                store,
                clock,
                lease,
                away: watch::Sender::new(None),
                paused: AtomicBool::new(false),
                announced: AtomicBool::new(false),
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// Stores the attempts (all or nothing for this caller) and answers once they are durable,
    /// with whether each moved its delivery on (`Store::record_attempts`). While the database is
    /// away it tries again, until the earliest of their leases ends ([`KEEP_TRYING`] at least).
    pub(super) async fn record(&self, records: Vec<AttemptRecord>) -> StoreResult<Vec<bool>> {
        let give_up = Instant::now() + self.health.keep_trying(&records);
        let answer = {
            let _waiting = Waiting::enter(&self.health.waiting);
            self.record_until(records, give_up).await
        };
        match &answer {
            Ok(_) => self.health.back(),
            Err(e @ StoreError::Unavailable(_)) => self.health.away(e),
            Err(_) => {}
        }
        answer
    }

    async fn record_until(
        &self,
        mut records: Vec<AttemptRecord>,
        give_up: Instant,
    ) -> StoreResult<Vec<bool>> {
        let mut pause = Duration::from_millis(250);
        loop {
            let (done, mut answer) = oneshot::channel();
            self.tx
                .send(Pending { records, done })
                .map_err(|_| stopped())?;
            // A stalled database holds a write until its timeout: the wait is bounded too, and
            // attempts pause once it has lasted too long.
            let answered = match tokio::time::timeout(STALLED, &mut answer).await {
                Ok(answered) => answered,
                Err(_) => {
                    self.health.away(&StoreError::Unavailable(
                        format!(
                            "a write of attempt outcomes took over {} s",
                            STALLED.as_secs()
                        )
                        .into(),
                    ));
                    tokio::time::timeout_at(give_up, answer)
                        .await
                        .map_err(|_| {
                            StoreError::Unavailable(
                                "the database did not store the outcome in time".into(),
                            )
                        })?
                }
            };
            match answered.map_err(|_| stopped())? {
                Ok(moved) => return Ok(moved),
                Err((e @ StoreError::Unavailable(_), again))
                    if Instant::now() + pause < give_up =>
                {
                    self.health.away(&e);
                    records = again;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(4));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Notes a store error met on the way to an attempt (renewing its lease, say): if the
    /// database is away, attempts pause until it is back.
    pub(super) fn saw(&self, error: &StoreError) {
        if matches!(error, StoreError::Unavailable(_)) {
            self.health.away(error);
        }
    }

    /// Whether attempts are paused: the database did not store the last outcomes.
    pub(super) fn paused(&self) -> bool {
        self.health.paused.load(Ordering::Relaxed)
    }

    /// Waits until outcomes can be stored (at once, unless the database is away).
    pub(super) async fn storable(&self) {
        let mut away = self.health.away.subscribe();
        let _ = away.wait_for(Option::is_none).await;
    }
}

impl Health {
    /// How long to keep an outcome trying: until the earliest lease it was sent under ends.
    fn keep_trying(&self, records: &[AttemptRecord]) -> Duration {
        let now = self.clock.now();
        let lease_left = records
            .iter()
            .filter_map(|r| r.lease_until)
            .min()
            .and_then(|ends| u64::try_from(ends.as_millis() - now.as_millis()).ok())
            .map(Duration::from_millis)
            .map_or(Duration::ZERO, |left| {
                left.saturating_sub(super::leases::LEASE_MARGIN)
            });
        lease_left.min(self.lease).max(KEEP_TRYING)
    }

    /// The database did not store outcomes: attempts pause, and the first to notice says so
    /// and starts looking for its return.
    fn away(self: &Arc<Self>, error: &StoreError) {
        let newly = self.away.send_if_modified(|away| {
            let newly = away.is_none();
            if newly {
                *away = Some(Instant::now());
                self.paused.store(true, Ordering::Relaxed);
            }
            newly
        });
        if newly {
            // Said once per 10 s: a database that fails now and then would otherwise fill the
            // log with pauses and resumptions.
            let said = PAUSED.admit();
            self.announced.store(said.is_some(), Ordering::Relaxed);
            if let Some(held_back) = said {
                tracing::warn!(error = %herald_core::error_chain(error), held_back, "the database is not storing attempt outcomes: no new attempt starts until it does (deliveries wait in their queues)");
            }
            tokio::spawn(self.clone().look_for_return());
        }
    }

    /// Outcomes were stored: attempts go on. The end of a pause that was said is said once it
    /// has held for [`RESUME_SAID_AFTER`]: a write under way when the database went away may
    /// succeed just after the first failure, and "attempts resume" was said while it was still
    /// away (and its real return, within the throttle's 10 s, not at all).
    fn back(self: &Arc<Self>) {
        // Called after every stored write: the watch's lock only when there is a pause to end.
        // (One set just now, unseen here, is ended by the next write or by the look for the
        // database's return.)
        if !self.paused.load(Ordering::Relaxed) {
            return;
        }
        let mut since = None;
        self.away.send_if_modified(|away| {
            since = away.take();
            self.paused.store(false, Ordering::Relaxed);
            since.is_some()
        });
        if let Some(since) = since.filter(|_| self.announced.swap(false, Ordering::Relaxed)) {
            let (health, paused) = (self.clone(), since.elapsed());
            tokio::spawn(async move {
                tokio::time::sleep(RESUME_SAID_AFTER).await;
                if health.away.borrow().is_some() {
                    // Away again: the pause said goes on, and its end is said when it comes.
                    health.announced.store(true, Ordering::Relaxed);
                } else {
                    tracing::info!(
                        paused_seconds = paused.as_secs(),
                        "the database stores attempt outcomes again: attempts resume"
                    );
                }
            });
        }
    }

    /// While the database is away, looks at it every [`LOOK_EVERY`] when no outcome is waiting
    /// to be stored (otherwise that write tells): it is back once it answers a read and knows of
    /// no trouble with writes.
    async fn look_for_return(self: Arc<Self>) {
        loop {
            tokio::time::sleep(LOOK_EVERY).await;
            if self.away.borrow().is_none() {
                return;
            }
            if self.waiting.load(Ordering::SeqCst) > 0 || self.store.write_trouble().is_some() {
                continue;
            }
            if let Ok(Ok(_)) = tokio::time::timeout(STALLED, self.store.answers_reads()).await {
                self.back();
                return;
            }
        }
    }
}

/// Counts a caller in [`Recorder::record`] for as long as it is there (dropped with it, if its
/// task is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the attempt recorder has stopped".into())
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let permits = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Waiting for a free write lets the next group grow meanwhile.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        let mut count = group[0].records.len();
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(pending) => {
                    count += pending.records.len();
                    group.push(pending);
                }
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            write(&*store, group).await;
            drop(permit);
        });
    }
}

/// Stores a group in one call. If that fails, each caller's attempts are tried on their own, so
/// that one caller's bad record cannot fail the others.
async fn write(store: &dyn Store, group: Vec<Pending>) {
    if group.len() == 1 {
        let Pending { records, done } = group.into_iter().next().expect("one");
        let answer = store.record_attempts(&records).await;
        let _ = done.send(answer.map_err(|e| (e, records)));
        return;
    }
    let mut all = Vec::with_capacity(group.iter().map(|p| p.records.len()).sum());
    let mut callers = Vec::with_capacity(group.len());
    for Pending { records, done } in group {
        callers.push((records.len(), done));
        all.extend(records);
    }
    let unavailable = match store.record_attempts(&all).await {
        Ok(moved) => {
            let mut moved = moved.into_iter();
            for (len, done) in callers {
                let _ = done.send(Ok(moved.by_ref().take(len).collect()));
            }
            return;
        }
        // Whole: a driver error's own text is only its kind ("db error"), its cause says what.
        Err(StoreError::Unavailable(cause)) => Some(herald_core::error_chain(&*cause)),
        Err(_) => None,
    };
    let mut all = all.into_iter();
    if let Some(cause) = unavailable {
        // No record can make the database away: each caller would only wait its turn to fail
        // the same way.
        for (len, done) in callers {
            let mine: Vec<AttemptRecord> = all.by_ref().take(len).collect();
            let _ = done.send(Err((StoreError::Unavailable(cause.clone().into()), mine)));
        }
        return;
    }
    for (len, done) in callers {
        let mine: Vec<AttemptRecord> = all.by_ref().take(len).collect();
        let answer = store.record_attempts(&mine).await;
        let _ = done.send(answer.map_err(|e| (e, mine)));
    }
}
