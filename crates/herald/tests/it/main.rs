//! Herald's integration tests: one binary, the real server on loopback, real receivers.

mod api;
mod bench;
mod browser;
mod cluster;
mod crash;
mod dashboard;
mod delivery;
mod helpers;
mod openapi;
mod outage;
mod pg;
mod profiles;
mod security;
mod webdriver;
mod websub;
