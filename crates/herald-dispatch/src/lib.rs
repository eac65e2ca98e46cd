//! Herald's outbound side, and the only crate that calls customers' URLs.
//!
//! - [`client`]: the pooled HTTP client that sends one rendered request and classifies what
//!   happened into an [`herald_core::delivery::AttemptOutcome`].
//! - [`dispatcher`]: one queue per webhook with its own concurrency limit, so a slow endpoint
//!   only slows itself; deliveries arrive in memory straight from ingest.
//! - [`scheduler`]: wakes when retries come due (and at start-up, for what a previous run left)
//!   and leases them from the store into the dispatcher.

pub mod client;
pub mod dispatcher;
pub mod guard;
pub mod operations;
pub mod scheduler;
pub mod websub;

pub use client::HttpClient;
pub use dispatcher::{DispatchMetrics, DispatchSettings, Dispatcher};
