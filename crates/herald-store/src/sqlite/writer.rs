//! Group commit: one thread owns the only write connection. Callers send it closures; it runs
//! every closure that is waiting in one transaction (each inside its own savepoint, so that one
//! failing request does not undo the others), commits once, and only then answers each caller.
//! While one commit is being fsynced, the next group gathers by itself; no timer is needed.

use std::sync::Arc;

use herald_core::metrics::Histogram;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use herald_core::store::{StoreError, StoreResult};

use super::classify;

/// The most jobs committed together; bounds the latency a single huge group could add.
const MAX_GROUP: usize = 512;
/// How many jobs may wait; further writers wait for room (backpressure instead of memory growth).
const QUEUE: usize = 8192;

type Completion = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;
/// A job gets `None` when its group's transaction could not even begin.
type Job = Box<dyn FnOnce(Option<&Connection>) -> (bool, Completion) + Send>;

#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
    /// How long each group takes from BEGIN to the end of COMMIT (the fsync).
    pub(crate) commit_latency: Arc<Histogram>,
}

impl Writer {
    pub(crate) fn start(conn: Connection) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let commit_latency = Arc::new(Histogram::default());
        let latency = commit_latency.clone();
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || run(conn, rx, &latency))
            .expect("spawning the writer thread");
        Self { tx, commit_latency }
    }

    /// Runs `f` in the next group transaction and answers once that transaction committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Some(conn) => f(conn),
                None => Err(StoreError::Unavailable(
                    "could not begin a write transaction".into(),
                )),
            };
            let ok = result.is_ok();
            let complete: Completion = Box::new(move |commit_error| {
                let out = match (result, commit_error) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(e)) => Err(classify(e)),
                    (Ok(v), None) => Ok(v),
                };
                let _ = reply.send(out);
            });
            (ok, complete)
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Job>, latency: &Histogram) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        commit_group(&conn, &mut group);
        latency.observe_ms(started.elapsed().as_millis() as u64);
    }
}

fn commit_group(conn: &Connection, group: &mut Vec<Job>) {
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "could not begin a write transaction");
        for job in group.drain(..) {
            let (_, complete) = job(None);
            complete(Some(&e));
        }
        return;
    }
    let mut completions = Vec::with_capacity(group.len());
    for job in group.drain(..) {
        let savepoint = run_cached(conn, "SAVEPOINT job");
        let (ok, complete) = job(Some(conn));
        if savepoint.is_ok() {
            let end = if ok {
                run_cached(conn, "RELEASE job")
            } else {
                run_cached(conn, "ROLLBACK TO job").and_then(|()| run_cached(conn, "RELEASE job"))
            };
            if let Err(e) = end {
                tracing::error!(error = %e, "could not close a savepoint");
            }
        }
        completions.push(complete);
    }
    let commit = run_cached(conn, "COMMIT");
    if let Err(e) = &commit {
        tracing::error!(error = %e, "a group commit failed; its writes are rolled back");
        let _ = conn.execute_batch("ROLLBACK");
    }
    for complete in completions {
        complete(commit.as_ref().err());
    }
}

/// Runs a statement from the connection's cache: transactions and savepoints open and close for
/// every group and job, and parsing them each time cost the writer thread a tenth of its time.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}
