//! The Herald under test: one started in this process on a temporary data directory (the
//! default), the real binary as a child process (for `restart`, which must SIGKILL it, and for
//! `backlog`, whose memory must be the server's alone), or a server the user points at with
//! `--server`.
//!
//! The in-process server gets a runtime of its own, built like `herald serve` builds it, so its
//! tasks are scheduled as in production and not interleaved with the load generator's.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use herald_core::SystemClock;

use crate::app;
use crate::config::Settings;

/// A Herald server to run a scenario against.
pub enum Server {
    InProcess(InProcess),
    /// `herald serve` as a child process on a temporary data directory, measured on its own.
    Spawned(Spawned),
    /// `--server`: someone else's; nothing to start, stop or measure.
    External {
        base: String,
        token: String,
    },
}

impl Server {
    pub fn base(&self) -> &str {
        match self {
            Self::InProcess(s) => &s.base,
            Self::Spawned(s) => s.child.base(),
            Self::External { base, .. } => base,
        }
    }

    pub fn token(&self) -> &str {
        match self {
            Self::InProcess(s) => &s.token,
            Self::Spawned(s) => &s.token,
            Self::External { token, .. } => token,
        }
    }

    /// The process the server runs in, when we can see it: `self` or a pid, as `/proc` names it.
    pub fn process(&self) -> Option<String> {
        match self {
            Self::InProcess(_) => Some("self".into()),
            Self::Spawned(s) => Some(s.child.pid.to_string()),
            Self::External { .. } => None,
        }
    }

    /// The memory of the process the server runs in, when we can see it.
    pub fn memory(&self) -> Option<Memory> {
        Memory::of(&self.process()?)
    }

    /// Starts counting the peak memory afresh (best effort: Linux's `clear_refs`).
    pub fn reset_peak_memory(&self) {
        if let Some(process) = self.process() {
            Memory::reset_peak(&process);
        }
    }

    pub async fn stop(self) {
        match self {
            Self::InProcess(s) => s.stop().await,
            Self::Spawned(mut s) => s.child.kill().await,
            Self::External { .. } => {}
        }
    }
}

/// Resident memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Now (VmRSS), in KiB.
    pub rss_kib: u64,
    /// The peak since start or the last reset (VmHWM), in KiB.
    pub peak_kib: u64,
}

impl Memory {
    /// Of a process as `/proc` names it (`self` or a pid).
    pub fn of(pid: &str) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some(Self {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    fn reset_peak(pid: &str) {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

/// Herald running in this process, on its own runtime.
pub struct InProcess {
    base: String,
    token: String,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Builds the app on a fresh data directory under `parent` and serves it on 127.0.0.1.
    pub async fn start(
        parent: &Path,
        token: &str,
        endpoint_concurrency: u32,
    ) -> anyhow::Result<Self> {
        let dir = temp_data_dir(parent)?;
        let mut settings = Settings::for_data_dir(dir.path().to_path_buf());
        settings.security.admin_token = Some(token.to_owned());
        // The receiver listens on loopback, which Herald refuses by default.
        settings.security.allow_private_networks = vec!["127.0.0.0/8".into()];
        settings.delivery.endpoint_concurrency = endpoint_concurrency;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("herald-server")
            .enable_all()
            .build()
            .context("could not start the server's runtime")?;
        let (ready, listening) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = runtime.spawn(async move {
            let app = app::build(settings, Arc::new(SystemClock)).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("the server could not listen on 127.0.0.1")?;
            let _ = ready.send(listener.local_addr()?);
            app::run(app, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        let addr = match listening.await {
            Ok(addr) => addr,
            Err(_) => {
                let why = match done.await {
                    Ok(Err(e)) => format!("{e:#}"),
                    Ok(Ok(())) => "it stopped at once".into(),
                    Err(e) => e.to_string(),
                };
                bail!("the in-process Herald server did not start: {why}");
            }
        };
        Ok(Self {
            base: format!("http://{addr}"),
            token: token.to_owned(),
            runtime: Some(runtime),
            stop: Some(stop),
            done: Some(done),
            _dir: dir,
        })
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            // Shutdown lets deliveries in flight finish (up to 10 s); a slow endpoint's need not.
            let _ = tokio::time::timeout(Duration::from_secs(3), done).await;
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// `herald serve` started as a child process on a data directory of its own, removed when the
/// server stops.
pub struct Spawned {
    child: Child,
    token: String,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts `herald serve` on a fresh data directory under `parent`.
    pub async fn start(
        parent: &Path,
        token: &str,
        endpoint_concurrency: u32,
    ) -> anyhow::Result<Self> {
        let dir = temp_data_dir(parent)?;
        let child = Child::start(dir.path(), token, endpoint_concurrency).await?;
        Ok(Self {
            child,
            token: token.to_owned(),
            _dir: dir,
        })
    }
}

/// The real `herald serve` as a child process, which can be killed and started again on the
/// same data directory.
pub struct Child {
    base: String,
    pid: u32,
    child: tokio::process::Child,
    /// The last lines it logged, to show if it fails.
    log: Arc<Mutex<Vec<String>>>,
}

impl Child {
    /// Starts `herald serve` on `data_dir` (this same executable) and waits until it listens.
    pub async fn start(
        data_dir: &Path,
        token: &str,
        endpoint_concurrency: u32,
    ) -> anyhow::Result<Self> {
        let exe =
            std::env::current_exe().context("could not find the herald executable to start")?;
        let mut command = tokio::process::Command::new(&exe);
        // Only the settings below: a HERALD_DATABASE_URL (or any other HERALD_ setting) in the
        // bench's environment must not point the benchmark's server at someone's real data.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HERALD_") {
                command.env_remove(&name);
            }
        }
        let mut child = command
            .arg("serve")
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_DATA_DIR", data_dir)
            .env("HERALD_ADMIN_TOKEN", token)
            .env("HERALD_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8")
            .env(
                "HERALD_ENDPOINT_CONCURRENCY",
                endpoint_concurrency.to_string(),
            )
            .env("HERALD_LOG", "info")
            .env("HERALD_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {} serve", exe.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stderr = child
            .stderr
            .take()
            .context("the server's log is not piped")?;
        let mut lines = BufReader::new(stderr).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let read_address = async {
            while let Ok(Some(line)) = lines.next_line().await {
                keep(&log, line.clone());
                if let Some(addr) = line
                    .split("address=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                {
                    return Some(addr.to_owned());
                }
            }
            None
        };
        let addr = match tokio::time::timeout(Duration::from_secs(30), read_address).await {
            Ok(Some(addr)) => addr,
            _ => {
                let _ = child.start_kill();
                bail!(
                    "the herald server did not start listening within 30 s; its log:\n{}",
                    log.lock().map(|l| l.join("\n")).unwrap_or_default()
                );
            }
        };
        // Keep reading its log so it never blocks on a full pipe.
        let keep_log = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep(&keep_log, line);
            }
        });
        Ok(Self {
            base: format!("http://{addr}"),
            pid,
            child,
            log,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn memory(&self) -> Option<Memory> {
        Memory::of(&self.pid.to_string())
    }

    /// SIGKILL: no shutdown, no flush, as a power cut or the OOM killer would.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Whether it has exited (it should not have, until killed).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn recent_log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

fn keep(log: &Mutex<Vec<String>>, line: String) {
    if let Ok(mut log) = log.lock() {
        if log.len() >= 50 {
            log.remove(0);
        }
        log.push(line);
    }
}

/// A fresh directory for one server's data, removed when dropped.
pub fn temp_data_dir(parent: &Path) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("herald-bench-")
        .tempdir_in(parent)
        .with_context(|| {
            format!(
                "could not create a data directory in {}; choose another place with --data-dir",
                parent.display()
            )
        })
}

/// Where temporary data directories go by default.
pub fn default_parent() -> PathBuf {
    std::env::temp_dir()
}
