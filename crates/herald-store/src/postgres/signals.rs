//! Hearing the other nodes: one dedicated connection (outside the pool) that `LISTEN`s on
//! `herald_work` (work may be due) and `herald_directory` (an organization changed; the payload
//! is its id), and passes what it hears on as [`StoreSignal`]s.
//!
//! Notifications sent while this connection is down are lost, so after it reconnects it sends
//! [`StoreSignal::Resync`]: the node forgets its caches and looks for due work.

use std::time::Duration;

use super::tls::DatabaseTls;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use herald_core::OrgId;
use herald_core::store::StoreSignal;

/// The channel that wakes the nodes' schedulers (`deliveries.rs`, `announce_work`).
pub(crate) const WORK_CHANNEL: &str = "herald_work";
/// The channel the directory triggers (migration 0001) notify on, and an API key's revocation.
pub(crate) const DIRECTORY_CHANNEL: &str = "herald_directory";
/// Waits between reconnection attempts: doubling from the first to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Failed tries to listen, while the database is away: one line per 10 s, not one per try.
static UNREACHABLE: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(Duration::from_secs(10));

/// Starts the listener; it runs until aborted.
pub(crate) fn spawn(
    config: tokio_postgres::Config,
    tls: DatabaseTls,
    signals: broadcast::Sender<StoreSignal>,
) -> tokio::task::AbortHandle {
    tokio::spawn(run(config, tls, signals)).abort_handle()
}

async fn run(
    config: tokio_postgres::Config,
    tls: DatabaseTls,
    signals: broadcast::Sender<StoreSignal>,
) {
    let mut wait = RECONNECT_FIRST;
    let mut first = true;
    loop {
        // Any connection but the very first may have missed something.
        match listen(&config, &tls, &signals, !first).await {
            Ok(()) => {
                tracing::warn!("lost the connection that hears other nodes; reconnecting");
                wait = RECONNECT_FIRST;
            }
            Err(e) => {
                if let Some(held_back) = UNREACHABLE.admit() {
                    tracing::warn!(error = %herald_core::error_chain(&*e), held_back, "could not listen for other nodes' changes; retrying (said once per 10 s; held_back counts the tries since)");
                }
            }
        }
        first = false;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// Listens on one connection until it ends (`Ok`) or fails to start (`Err`).
async fn listen(
    config: &tokio_postgres::Config,
    tls: &DatabaseTls,
    signals: &broadcast::Sender<StoreSignal>,
    resync: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The driver's connect timeout covers the TCP connection only, not the TLS handshake or
    // the sign-in after it: a server that stalls there would hold the listener for good.
    let (client, mut connection) =
        match tokio::time::timeout(super::OPERATION_TIMEOUT, config.connect(tls.clone())).await {
            Ok(connected) => connected?,
            Err(_) => return Err(super::TIMED_OUT.into()),
        };
    let forward = signals.clone();
    // The connection object does the socket's work; polling it also yields notifications.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let signal = if n.channel() == DIRECTORY_CHANNEL {
                        StoreSignal::OrgChanged(OrgId::from_trusted(n.payload().to_owned()))
                    } else {
                        StoreSignal::WorkDue
                    };
                    let _ = forward.send(signal);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "the listening connection ended");
                    break;
                }
            }
        }
    });
    let listening = client
        .batch_execute(&format!(
            "LISTEN {WORK_CHANNEL}; LISTEN {DIRECTORY_CHANNEL}"
        ))
        .await;
    if let Err(e) = listening {
        driver.abort();
        return Err(e.into());
    }
    if resync {
        let _ = signals.send(StoreSignal::Resync);
    }
    let _ = driver.await;
    drop(client);
    Ok(())
}
