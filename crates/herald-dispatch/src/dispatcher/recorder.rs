//! Stores attempt outcomes in groups. Each attempt's outcome must be stored before its
//! delivery is let go, and storing each one on its own cost the store's single writer a
//! savepoint, a wake-up and a reply per delivery. The recorder gathers what arrives while its
//! previous writes are committing and stores it in one call, so the busier the dispatcher, the
//! bigger (and cheaper per attempt) each write.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

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
}

/// What a caller hears: which records moved their deliveries on, or why they were not stored,
/// with the records to try again.
type Answer = Result<Vec<bool>, (StoreError, Vec<AttemptRecord>)>;

/// One caller's outcomes, and where to tell it they are stored.
struct Pending {
    records: Vec<AttemptRecord>,
    done: oneshot::Sender<Answer>,
}

/// How long outcomes are kept trying while the database is away. An attempt whose outcome is
/// lost is sent again once its lease ends (a duplicate for the receiver); kept, it is stored
/// when the database is back. Bounded, so that the caller's lease renewal and the
/// shutdown's wait are not outlived by much.
const KEEP_TRYING: Duration = Duration::from_secs(30);

impl Recorder {
    /// Starts the recorder's task on the current runtime; it ends when every handle is gone.
    pub(super) fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// Stores the attempts (all or nothing for this caller) and answers once they are durable,
    /// with whether each moved its delivery on (`Store::record_attempts`). While the database is
    /// away it tries again, for `KEEP_TRYING` at most.
    pub(super) async fn record(&self, mut records: Vec<AttemptRecord>) -> StoreResult<Vec<bool>> {
        let give_up = Instant::now() + KEEP_TRYING;
        let mut pause = Duration::from_millis(250);
        loop {
            let (done, answer) = oneshot::channel();
            self.tx
                .send(Pending { records, done })
                .map_err(|_| stopped())?;
            // A stalled database holds a write until its timeout: the wait is bounded too.
            let answered = tokio::time::timeout_at(give_up, answer)
                .await
                .map_err(|_| {
                    StoreError::Unavailable("the database did not store the outcome in time".into())
                })?;
            match answered.map_err(|_| stopped())? {
                Ok(moved) => return Ok(moved),
                Err((StoreError::Unavailable(_), again)) if Instant::now() + pause < give_up => {
                    records = again;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(4));
                }
                Err((e, _)) => return Err(e),
            }
        }
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
        Err(StoreError::Unavailable(cause)) => Some(cause.to_string()),
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
