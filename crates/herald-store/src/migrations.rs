//! The numbered schema migrations of every backend, compiled in.

/// One migration: its number, name and SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// SQLite's migrations, in order.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "webhook_signature_and_options",
        sql: include_str!("../migrations/sqlite/0002_webhook_signature_and_options.sql"),
    },
    Migration {
        version: 3,
        name: "websub",
        sql: include_str!("../migrations/sqlite/0003_websub.sql"),
    },
    Migration {
        version: 4,
        name: "webhook_health",
        sql: include_str!("../migrations/sqlite/0004_webhook_health.sql"),
    },
    Migration {
        version: 5,
        name: "retention",
        sql: include_str!("../migrations/sqlite/0005_retention.sql"),
    },
    Migration {
        version: 6,
        name: "rate_limit",
        sql: include_str!("../migrations/sqlite/0006_rate_limit.sql"),
    },
];
