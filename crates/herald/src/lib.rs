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

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod database_lock;
pub mod http_server;
pub mod metrics;
pub mod service;
