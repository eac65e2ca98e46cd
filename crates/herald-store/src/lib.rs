//! Herald's storage backends: the only crate that speaks SQL. Each backend implements
//! [`herald_core::store::Store`]; migrations live in `migrations/<backend>/` with the same
//! numbered sequence for every backend.

pub mod cipher;
pub mod migrations;
pub mod postgres;
pub mod sqlite;

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;
