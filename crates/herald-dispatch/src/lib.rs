//! Herald's outbound side, and the only crate that calls customers' URLs.
//!
//! - [`client`]: the pooled HTTP client that sends one rendered request and classifies what
//!   happened into an [`herald_core::delivery::AttemptOutcome`].
//! - [`dispatcher`]: one queue per webhook with its own concurrency limit, so a slow endpoint
//!   only slows itself; deliveries arrive in memory straight from ingest.
//! - [`scheduler`]: wakes when deliveries in the store come due (retries, first delays, what
//!   did not fit in memory, what a previous run left) and leases them into the dispatcher;
//!   renews the leases of what waits in memory.
//! - [`websub`]: WebSub's verification of intent, the `GET` with a challenge to a callback.
//! - [`guard`]: the address policy on every outgoing connection (SSRF protection), applied
//!   where names are resolved.
//! - [`operations`]: how the dispatcher tells the app about endpoint health (a webhook
//!   disabled, a delivery exhausted), which the app turns into operational events.

// The workspace denies unsafe code (one call in `herald` is allowed where it is written);
// this crate has none at all.
#![forbid(unsafe_code)]

pub mod client;
pub mod dispatcher;
pub mod guard;
pub mod operations;
pub mod scheduler;
pub mod websub;

pub use client::HttpClient;
pub use dispatcher::{DispatchMetrics, DispatchSettings, Dispatcher};
