//! Gives memory back to the system once a spike of work is over. A backlog that drains, or a
//! deep read of the history, fills the embedded database's page caches (up to 16 MiB on each
//! of its five connections) and leaves freed memory in the C allocator's arenas, where it
//! stayed for as long as the process ran: a node that had drained a backlog of 300,000 went
//! from 41 MiB to 157 MiB and stayed at 144 MiB, idle. Every [`EVERY`] the store drops the
//! cached pages it does not use now, and the C allocator (which SQLite uses; Rust's own
//! allocations go to mimalloc, which gives back pages once they are wholly free) returns its
//! free pages. A busy node reads the pages it needs again from the system's file cache.

use std::time::Duration;

use tokio::sync::watch;

use crate::app::AppState;

/// How often memory is given back.
const EVERY: Duration = Duration::from_secs(60);

pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = state.store.release_memory().await {
            // Only memory is at stake; the writer's own failures are said where they happen.
            tracing::debug!(error = %herald_core::error_chain(&e), "could not release the database's cached pages");
        }
        let _ = tokio::task::spawn_blocking(trim_c_heap).await;
    }
}

/// Returns the C allocator's free pages to the system: glibc keeps them in its arenas (one per
/// thread that allocated, up to eight a core) and gives back only the top of each by itself.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_c_heap() {
    // SAFETY: `malloc_trim` takes no pointers and has no preconditions; glibc locks each arena
    // while it trims it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_c_heap() {}
