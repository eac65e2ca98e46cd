//! A small pool of read-only connections. SQLite in WAL mode lets readers run beside the one
//! writer; each read runs on a blocking thread so it never stalls the async runtime.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::Connection;
use tokio::sync::Semaphore;

use herald_core::store::{StoreError, StoreResult};

pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, size: usize) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
        }
    }

    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the read pool is closed".into()))?;
        let idle = self.idle.lock().expect("read pool lock").pop();
        let conn = match idle {
            Some(conn) => conn,
            None => super::open_connection(&self.path, true)?,
        };
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = f(&conn);
            (conn, result)
        })
        .await
        .map_err(|e| StoreError::Other(Box::new(e)))?;
        self.idle.lock().expect("read pool lock").push(conn);
        result
    }

    /// Drops the unused pages cached by the connections not in use now (one in use keeps its
    /// own until the next time).
    pub(crate) fn release_memory(&self) {
        for conn in self.idle.lock().expect("read pool lock").iter() {
            // Fails only on a misuse SQLite can detect; nothing is lost if it does.
            let _ = conn.release_memory();
        }
    }
}
