//! Herald's integration tests: one binary, the real server on loopback, real receivers.

mod api;
mod bench;
mod crash;
mod delivery;
mod helpers;
mod profiles;
mod security;
mod websub;
