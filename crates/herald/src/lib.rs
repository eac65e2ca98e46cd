//! Herald: self-hosted webhook delivery for identity and access events.
//!
//! - [`config`]: settings from flags and environment variables.
//! - [`app`]: wiring and the server's run loop.
//! - [`database_lock`]: one process at a time on an embedded database.
//! - [`service`]: use cases shared by the API, the dashboard and the CLI.
//! - [`api`]: the JSON API over HTTP (axum); maps service errors to statuses in one place.
//! - [`dashboard`]: the web dashboard at `/` (server-rendered pages over the same services).
//! - [`http_server`]: the accept loop (hyper, with a header deadline and bounded buffers).
//! - [`cli`]: the `herald` command.
//! - [`counted`]: "1 channel", "2 channels", for the CLI's and the dashboard's sentences.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod data_dir;
pub mod database_lock;
pub mod http_server;
pub mod metrics;
pub mod service;

/// `n` and the noun that goes with it: "1 delivery", "2 deliveries", "0 webhooks".
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The git commit this binary was built from (ten hex digits; empty when built outside a git
/// checkout), recorded by `build.rs`.
pub const COMMIT: &str = env!("BUILT_FROM_COMMIT");

/// The version and, where known, the commit: `0.1.0 (3d21b09d2a)`. `herald --version`, the
/// start-up line and `herald bench --json` show it.
pub const BUILD: &str = env!("BUILT_VERSION");
