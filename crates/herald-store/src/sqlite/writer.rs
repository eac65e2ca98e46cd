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
use super::file_watch::FileWatch;

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
    /// Answers the caller that the work was not run, and why.
    fn refuse(self: Box<Self>, why: StoreError);
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

    fn refuse(self: Box<Self>, why: StoreError) {
        let _ = self.reply.send(Err(why));
    }
}

#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
    /// How long each group takes from BEGIN to the end of COMMIT (the fsync).
    pub(crate) commit_latency: Arc<Histogram>,
    /// The last group's failure (a full disk, an I/O error) and when; cleared by a commit.
    failure: Arc<std::sync::Mutex<Option<(std::time::Instant, String)>>>,
}

/// For how long a failed commit makes the node not ready: long enough for a load balancer to
/// look elsewhere, short enough that a node nobody writes to any more is tried again.
const FAILURE_SAYS_NOT_READY: std::time::Duration = std::time::Duration::from_secs(10);

impl Writer {
    /// Starts the writer thread on `conn`; with a `watch`, it commits nothing while the
    /// database's files are missing ([`FileWatch`]).
    pub(crate) fn start(conn: Connection, watch: Option<Arc<FileWatch>>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let commit_latency = Arc::new(Histogram::default());
        let latency = commit_latency.clone();
        let failure = Arc::new(std::sync::Mutex::new(None));
        let failed = failure.clone();
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || {
                // A panic ends the thread (the callers of its group get "stopped"); say so once,
                // loudly, since every write fails from then on.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(conn, rx, &latency, &failed, watch.as_deref())
                }));
                if ran.is_err() {
                    tracing::error!(
                        "the SQLite writer stopped after a panic; nothing can be stored until Herald restarts"
                    );
                }
            })
            .expect("spawning the writer thread");
        Self {
            tx,
            commit_latency,
            failure,
        }
    }

    /// The error of the last group, if it failed within `FAILURE_SAYS_NOT_READY`.
    pub(crate) fn recent_failure(&self) -> Option<String> {
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FAILURE_SAYS_NOT_READY)
            .map(|(_, e)| e.clone())
    }

    /// Whether the writer thread still takes work (it ends only after a panic).
    pub(crate) fn is_running(&self) -> bool {
        !self.tx.is_closed()
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

type Failure = std::sync::Mutex<Option<(std::time::Instant, String)>>;

/// How long commits go through without a failure before an outage is said to be over.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(5);

fn run(
    conn: Connection,
    rx: mpsc::Receiver<Box<dyn Job>>,
    latency: &Histogram,
    last_failure: &Failure,
    watch: Option<&FileWatch>,
) {
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_GROUP);
    // Declared after `group`, so that a panic drops it first: `is_running` is false before the
    // group's callers hear that the writer stopped (a parameter would be dropped last).
    let mut rx = rx;
    // Since when, and how many, group commits have failed: an outage (a full disk) is logged
    // as it starts (`commit_group`) and here as it ends, once commits have gone through for
    // `SETTLED` without a failure (a full disk lets a small commit through now and then).
    let mut failing: Option<(std::time::Instant, u64)> = None;
    let mut going_through_since: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if let Some(missing) = watch.and_then(|w| w.before_commit(&conn)) {
            for job in group.drain(..) {
                job.refuse(StoreError::Unavailable(missing.clone().into()));
            }
            continue;
        }
        let started = std::time::Instant::now();
        let failure = commit_group(&conn, &mut group).err();
        match (&failure, &mut failing) {
            (Some(_), Some((_, failed))) => {
                *failed += 1;
                going_through_since = None;
            }
            (Some(_), None) => failing = Some((std::time::Instant::now(), 1)),
            (None, Some((since, failed))) => {
                let through = *going_through_since.get_or_insert_with(std::time::Instant::now);
                if through.elapsed() >= SETTLED {
                    tracing::info!(
                        failed_commits = *failed,
                        for_secs = since.elapsed().as_secs(),
                        "the database takes writes again: events and changes are stored"
                    );
                    failing = None;
                    going_through_since = None;
                }
            }
            (None, None) => {}
        }
        *last_failure.lock().unwrap_or_else(|e| e.into_inner()) = failure
            .as_ref()
            .map(|e| (std::time::Instant::now(), e.to_string()));
        for job in group.drain(..) {
            job.finish(failure.as_ref());
        }
        latency.observe_ms(started.elapsed().as_millis() as u64);
    }
}

/// Runs the group in one transaction and commits it. `Err` if nothing of it was kept.
fn commit_group(conn: &Connection, group: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
    if !conn.is_autocommit() {
        // A transaction left open by a failure that could not even roll back would make every
        // later BEGIN fail; end it first.
        run_cached(conn, "ROLLBACK")?;
    }
    begin(conn)?;
    if !run_together(conn, group) {
        // Undo everything and run the group again, each job in a savepoint of its own. SQLite
        // may have rolled the transaction back itself (disk full, I/O error).
        if !conn.is_autocommit() {
            run_cached(conn, "ROLLBACK")
                .inspect_err(|e| tracing::error!(error = %herald_core::error_chain(e), "could not roll back a group"))?;
        }
        begin(conn)?;
        for job in group.iter_mut() {
            run_isolated(conn, job.as_mut())?;
        }
    }
    run_cached(conn, "COMMIT").inspect_err(|e| {
        if let Some(held_back) = COMMIT_FAILED.admit() {
            tracing::error!(error = %herald_core::error_chain(e), held_back, "a group commit failed; its writes are rolled back and their callers told (said once per 10 s; held_back counts the others)");
        }
        let _ = conn.execute_batch("ROLLBACK");
    })
}

/// Failed commits: one line per 10 s. A full disk fails every commit, thousands a second.
static COMMIT_FAILED: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(std::time::Duration::from_secs(10));

/// Runs the jobs back to back in the open transaction. `false` if the transaction holds writes
/// of a job that failed (or is gone), so that the group must run again job by job. A job that
/// failed without changing anything (a conflict found by reading, a row not found) leaves
/// nothing to undo, so it does not cost the others a second run.
fn run_together(conn: &Connection, group: &mut [Box<dyn Job>]) -> bool {
    for job in group.iter_mut() {
        let changes = conn.total_changes();
        if !job.run(conn) && (conn.total_changes() != changes || conn.is_autocommit()) {
            return false;
        }
    }
    true
}

fn begin(conn: &Connection) -> rusqlite::Result<()> {
    run_cached(conn, "BEGIN IMMEDIATE")
        .inspect_err(|e| tracing::error!(error = %herald_core::error_chain(e), "could not begin a write transaction"))
}

/// Runs one job inside a savepoint, undoing its writes if it fails. `Err` if that cannot be
/// guaranteed (no savepoint, a rollback that failed, the transaction gone): then the whole group
/// must be given up rather than commit a failed job's writes or run jobs outside it.
fn run_isolated(conn: &Connection, job: &mut dyn Job) -> rusqlite::Result<()> {
    run_cached(conn, "SAVEPOINT job")?;
    let ok = job.run(conn);
    if conn.is_autocommit() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
            Some("the write transaction was rolled back by SQLite".into()),
        ));
    }
    if !ok {
        run_cached(conn, "ROLLBACK TO job")?;
    }
    run_cached(conn, "RELEASE job")
}

/// Runs a statement from the connection's cache: transactions open and close for every group,
/// and parsing those statements each time cost the writer thread a tenth of its time.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    type Answer = tokio::task::JoinHandle<StoreResult<()>>;

    /// A writer on a new database with one table, held busy by a job of its own until
    /// `release` is called, so that the jobs sent meanwhile form one group.
    struct Held {
        writer: Writer,
        path: std::path::PathBuf,
        release: std::sync::mpsc::Sender<()>,
        busy: Answer,
        _dir: tempfile::TempDir,
    }

    async fn held_writer() -> Held {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT PRIMARY KEY);")
            .unwrap();
        let writer = Writer::start(conn, None);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = std::sync::Mutex::new(hold);
        let busy = spawn_write(&writer, move |_| {
            let _ = hold.lock().unwrap().recv();
            Ok(())
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Held {
            writer,
            path,
            release,
            busy,
            _dir: dir,
        }
    }

    /// A commit that fails (here a deferred foreign key; in life a full disk) is remembered
    /// for a while, so that the node says it is not ready; the next commit clears it.
    #[tokio::test]
    async fn a_failed_commit_is_remembered_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("f.db")).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; CREATE TABLE p (id INTEGER PRIMARY KEY); \
             CREATE TABLE c (pid INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        let writer = Writer::start(conn, None);
        assert_eq!(writer.recent_failure(), None);
        let failed = writer
            .write(|c| exec(c, "INSERT INTO c (pid) VALUES (42)"))
            .await;
        assert!(failed.is_err());
        let failure = writer.recent_failure().expect("remembered");
        assert!(failure.contains("FOREIGN KEY"), "{failure}");
        writer
            .write(|c| exec(c, "INSERT INTO p (id) VALUES (1)"))
            .await
            .unwrap();
        assert_eq!(writer.recent_failure(), None);
    }

    fn spawn_write<F>(writer: &Writer, work: F) -> Answer
    where
        F: Fn(&Connection) -> StoreResult<()> + Send + 'static,
    {
        let writer = writer.clone();
        tokio::spawn(async move { writer.write(work).await })
    }

    fn exec(c: &Connection, sql: &str) -> StoreResult<()> {
        c.execute(sql, []).map(drop).map_err(|e| classify(&e))
    }

    /// An insert that counts how often it ran.
    fn counted_insert(writer: &Writer, v: &'static str, runs: &Arc<AtomicUsize>) -> Answer {
        let runs = runs.clone();
        spawn_write(writer, move |c| {
            runs.fetch_add(1, Ordering::SeqCst);
            exec(c, &format!("INSERT INTO t (v) VALUES ('{v}')"))
        })
    }

    impl Held {
        /// Lets the writer go on (the jobs sent meanwhile are queued behind it by now).
        async fn release(&self) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.release.send(()).unwrap();
        }

        /// What is committed, as another connection sees it.
        fn committed(&self) -> Vec<String> {
            let check = Connection::open(&self.path).unwrap();
            let mut s = check.prepare("SELECT v FROM t ORDER BY v").unwrap();
            let rows = s.query_map([], |r| r.get(0)).unwrap();
            rows.map(Result::unwrap).collect()
        }
    }

    /// One job failing after it wrote leaves the others' writes committed and its own undone.
    #[tokio::test]
    async fn a_failing_job_undoes_only_its_own_writes() {
        let mut held = held_writer().await;
        let runs = Arc::new(AtomicUsize::new(0));
        let first = counted_insert(&held.writer, "a", &runs);
        let failing = spawn_write(&held.writer, |c| {
            exec(c, "INSERT INTO t (v) VALUES ('b')")?;
            // Fails after writing: 'a' is there already.
            exec(c, "INSERT INTO t (v) VALUES ('a')")
        });
        let last = counted_insert(&held.writer, "c", &runs);
        held.release().await;
        (&mut held.busy).await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        assert!(failing.await.unwrap().is_err(), "the duplicate key fails");
        last.await.unwrap().unwrap();
        let committed = held.committed();
        assert_eq!(
            committed,
            ["a", "c"],
            "b was written by the failing job and undone"
        );
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "'a' ran again after the rollback"
        );
    }

    /// A job that fails without having written anything costs the others no second run.
    #[tokio::test]
    async fn a_job_failing_before_it_writes_does_not_replay_the_group() {
        let mut held = held_writer().await;
        let runs = Arc::new(AtomicUsize::new(0));
        let first = counted_insert(&held.writer, "a", &runs);
        let refused = spawn_write(&held.writer, |_| Err(StoreError::NotFound));
        let last = counted_insert(&held.writer, "c", &runs);
        held.release().await;
        (&mut held.busy).await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        assert!(matches!(refused.await.unwrap(), Err(StoreError::NotFound)));
        last.await.unwrap().unwrap();
        let committed = held.committed();
        assert_eq!(committed, ["a", "c"]);
        assert_eq!(runs.load(Ordering::SeqCst), 2, "each insert ran once");
    }

    /// A writer that died (a panic in a job) says so: every write fails at once, and
    /// `is_running` turns false for the readiness check.
    #[tokio::test]
    async fn a_writer_that_panicked_says_it_stopped() {
        let held = held_writer().await;
        held.release().await;
        assert!(held.writer.is_running());
        let crashed = spawn_write(&held.writer, |_| panic!("a bug in a job"));
        assert!(matches!(
            crashed.await.unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert!(!held.writer.is_running());
        let after = spawn_write(&held.writer, |_| Ok(()));
        assert!(matches!(
            after.await.unwrap(),
            Err(StoreError::Unavailable(_))
        ));
    }
}
