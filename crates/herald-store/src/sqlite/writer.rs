//! Group commit: one thread owns the only write connection. Callers send it jobs; it runs every
//! job that is waiting in one transaction, commits once, and only then answers each caller.
//! While one commit is being fsynced, the next group gathers by itself; no timer is needed.
//!
//! One failing job must not undo the others. Jobs run back to back with nothing between them,
//! since a savepoint per job cost two statements and a copy of every page the job first touched;
//! if one of them fails, the whole transaction is rolled back and the group runs again, this
//! time each job inside its own savepoint, so that only the failing job's writes are undone.
//! That is why a job must be able to run twice: it only reads what it captured.

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

/// A caller's work and the way back to it.
trait Job: Send {
    /// Runs the work, keeping its result; answers whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller with the result of the last run, unless the group did not commit.
    fn finish(self: Box<Self>, failure: Option<&rusqlite::Error>);
}

struct Pending<T, F> {
    work: F,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: Fn(&Connection) -> StoreResult<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, failure: Option<&rusqlite::Error>) {
        let out = match (self.result, failure) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(e)) => Err(classify(e)),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StoreError::Unavailable("the write was never run".into())),
        };
        let _ = self.reply.send(out);
    }
}

#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
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

    /// Runs `work` in the next group transaction and answers once that transaction committed.
    /// `work` may run twice (if another job of its group fails), so it must not consume what it
    /// captured.
    pub(crate) async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Pending {
            work,
            result: None,
            reply,
        };
        self.tx
            .send(Box::new(job))
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn Job>>, latency: &Histogram) {
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let failure = commit_group(&conn, &mut group).err();
        for job in group.drain(..) {
            job.finish(failure.as_ref());
        }
        latency.observe_ms(started.elapsed().as_millis() as u64);
    }
}

/// Runs the group in one transaction and commits it. `Err` if nothing of it was kept.
fn commit_group(conn: &Connection, group: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
    begin(conn)?;
    let mut all_ok = true;
    for job in group.iter_mut() {
        if !job.run(conn) {
            all_ok = false;
            break;
        }
    }
    if !all_ok {
        // Undo everything and run the group again, each job in a savepoint of its own.
        if let Err(e) = run_cached(conn, "ROLLBACK") {
            tracing::error!(error = %e, "could not roll back a failed group");
            return Err(e);
        }
        begin(conn)?;
        for job in group.iter_mut() {
            run_isolated(conn, job.as_mut());
        }
    }
    run_cached(conn, "COMMIT").inspect_err(|e| {
        tracing::error!(error = %e, "a group commit failed; its writes are rolled back");
        let _ = conn.execute_batch("ROLLBACK");
    })
}

fn begin(conn: &Connection) -> rusqlite::Result<()> {
    run_cached(conn, "BEGIN IMMEDIATE")
        .inspect_err(|e| tracing::error!(error = %e, "could not begin a write transaction"))
}

/// Runs one job inside a savepoint, undoing its writes if it fails.
fn run_isolated(conn: &Connection, job: &mut dyn Job) {
    let savepoint = run_cached(conn, "SAVEPOINT job");
    let ok = job.run(conn);
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
}

/// Runs a statement from the connection's cache: transactions open and close for every group,
/// and parsing those statements each time cost the writer thread a tenth of its time.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Jobs queued while the writer is busy share one group; one of them failing after it wrote
    /// must leave the others' writes committed and its own undone.
    #[tokio::test]
    async fn a_failing_job_undoes_only_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT PRIMARY KEY);")
            .unwrap();
        let writer = Writer::start(conn);

        // Hold the writer in a job of its own until the others are queued behind it.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = std::sync::Mutex::new(hold);
        let busy = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write(move |_| {
                        let _ = hold.lock().unwrap().recv();
                        Ok(())
                    })
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        let insert = |v: &'static str| {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write(move |c| {
                        c.execute("INSERT INTO t (v) VALUES (?)", [v])
                            .map_err(|e| classify(&e))?;
                        Ok(())
                    })
                    .await
            })
        };
        let first = insert("a");
        let failing = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write(|c| {
                        c.execute("INSERT INTO t (v) VALUES ('b')", [])
                            .map_err(|e| classify(&e))?;
                        // Fails after writing: 'a' is there already.
                        c.execute("INSERT INTO t (v) VALUES ('a')", [])
                            .map_err(|e| classify(&e))?;
                        Ok(())
                    })
                    .await
            })
        };
        let last = insert("c");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        release.send(()).unwrap();

        busy.await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        assert!(failing.await.unwrap().is_err(), "the duplicate key fails");
        last.await.unwrap().unwrap();
        let rows: Vec<String> = writer
            .write(|c| {
                let mut s = c.prepare("SELECT v FROM t ORDER BY v").unwrap();
                let rows = s.query_map([], |r| r.get(0)).unwrap();
                Ok(rows.map(Result::unwrap).collect())
            })
            .await
            .unwrap();
        assert_eq!(
            rows,
            ["a", "c"],
            "b was written by the failing job and undone"
        );
        let check = Connection::open(&path).unwrap();
        assert_eq!(count(&check), 2, "committed for other connections too");
    }
}
