//! A line on stderr every second while a scenario runs (sent, acknowledged, delivered), so a long
//! run shows it is alive and where it stands; the table goes to stdout at the end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::load::Counters;
use super::receiver::Endpoints;
use super::report::thousands;

/// Something more to show on each line (e.g. memory).
pub type Extra = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// Prints until dropped or stopped.
pub struct Progress {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    pub fn start(
        label: &str,
        counters: Arc<Counters>,
        endpoints: Arc<Endpoints>,
        extra: Option<Extra>,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let label = label.to_owned();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => return,
                }
                let all: Vec<usize> = (0..endpoints.len()).collect();
                let mut line = format!(
                    "[{label}] {:>5.1} s  sent {}  acked {}  delivered {}",
                    started.elapsed().as_secs_f64(),
                    thousands(counters.sent.load(Ordering::Relaxed)),
                    thousands(counters.acked()),
                    thousands(endpoints.delivered(&all)),
                );
                let failures = counters.failures.load(Ordering::Relaxed);
                if failures > 0 {
                    line.push_str(&format!("  failed requests {}", thousands(failures)));
                }
                if let Some(more) = extra.as_ref().and_then(|f| f()) {
                    line.push_str("  ");
                    line.push_str(&more);
                }
                note!("{line}");
            }
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
