//! A small pool of read-only connections. SQLite in WAL mode lets readers run beside the one
//! writer; each read runs on a blocking thread so it never stalls the async runtime.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::Connection;
use tokio::sync::Semaphore;

use herald_core::store::{StoreError, StoreResult};

pub(crate) struct ReadPool {
    path: PathBuf,
    /// Connections at most, each used by one read at a time.
    size: u32,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, size: usize) -> Self {
        Self {
            path,
            size: size as u32,
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
        // A read that opened a transaction (one snapshot for several statements) ends it when
        // it drops it; a connection still in one (a rollback that failed) would read that old
        // snapshot for ever after, so it is closed instead of kept.
        if conn.is_autocommit() {
            self.idle.lock().expect("read pool lock").push(conn);
        }
        result
    }

    /// Drops the pages the connections cache, one connection at a time, each taken as a read
    /// would take it (a read waits for it no longer than behind another read) and worked on a
    /// blocking thread.
    pub(crate) async fn release_memory(&self) -> StoreResult<()> {
        for _ in 0..self.size {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| StoreError::Unavailable("the read pool is closed".into()))?;
            // The oldest first: reads take the newest, and each goes back at the end.
            let oldest = {
                let mut idle = self.idle.lock().expect("read pool lock");
                (!idle.is_empty()).then(|| idle.remove(0))
            };
            let Some(conn) = oldest else {
                return Ok(());
            };
            let conn = tokio::task::spawn_blocking(move || {
                // Fails only on a misuse SQLite can detect; nothing is lost if it does.
                let _ = conn.release_memory();
                conn
            })
            .await
            .map_err(|e| StoreError::Other(Box::new(e)))?;
            self.idle.lock().expect("read pool lock").push(conn);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_left_in_a_transaction_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        // The file and its schema, as the store creates them.
        let writer = super::super::open_connection(&path, false).unwrap();
        super::super::migrate(&writer).unwrap();
        let pool = ReadPool::new(path, 2);
        let idle = |pool: &ReadPool| pool.idle.lock().unwrap().len();
        pool.read(|c| Ok(c.is_autocommit())).await.unwrap();
        assert_eq!(idle(&pool), 1);
        // A snapshot ended by its drop: kept.
        pool.read(|c| {
            let _snapshot = c.unchecked_transaction().unwrap();
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(idle(&pool), 1);
        // One left open: closed, not handed to the next read.
        let began = pool.read(|c| Ok(c.execute_batch("BEGIN").is_ok()));
        assert!(began.await.unwrap());
        assert_eq!(idle(&pool), 0);
    }
}
