//! The numbered schema migrations of every backend, compiled in. Both backends have the same
//! sequence (number and name); only the SQL differs. The list is written once, so a migration
//! added for one backend and not the other does not compile, and a test checks that the
//! directories hold exactly the files the list names.
//!
//! On PostgreSQL, nodes of the previous version keep running on a migrated database during a
//! rolling upgrade, with their statements prepared. A migration may add tables, columns and
//! indexes, but must not change the type or collation of a column those statements return:
//! PostgreSQL then refuses every one of them (`cached plan must not change result type`) until
//! the node restarts.
//!
//! Adding a column takes, besides the two migrations, each backend's statements that write the
//! row and the reads that take it apart, which agree by position: for a webhook, the `INSERT`
//! and `UPDATE` in `webhooks.rs`, and `WEBHOOK_COLUMNS` with the `row.get(n)` reads after it in
//! `rows.rs`. `herald copy` reads PostgreSQL's columns from its catalog and needs nothing. A
//! conformance story (`tests/stories.rs`) that saves the new field and reads it back runs on
//! both backends and catches a list left behind.

/// One migration: its number, name and SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Builds a backend's list from `migrations/<backend>/NNNN_<name>.sql`.
macro_rules! migrations {
    ($backend:literal: $($version:literal $file:literal $name:literal),* $(,)?) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../migrations/", $backend, "/", $file, "_", $name, ".sql")),
        }),*]
    };
}

/// Declares the sequence once and instantiates it for each backend.
macro_rules! sequence {
    ($($version:literal $file:literal $name:literal),* $(,)?) => {
        /// SQLite's migrations, in order.
        pub const SQLITE: &[Migration] = migrations!("sqlite": $($version $file $name),*);
        /// PostgreSQL's migrations, in order.
        pub const POSTGRES: &[Migration] = migrations!("postgres": $($version $file $name),*);
    };
}

sequence! {
    1 "0001" "initial",
    2 "0002" "webhook_signature_and_options",
    3 "0003" "websub",
    4 "0004" "webhook_health",
    5 "0005" "retention",
    6 "0006" "rate_limit",
    7 "0007" "clustered_deliveries",
    8 "0008" "events_sequence",
    9 "0009" "api_key_roles",
    10 "0010" "dashboard_sessions",
    11 "0011" "events_by_org",
    12 "0012" "deleted_organizations",
    13 "0013" "directory_changes",
}

/// Says that the database was migrated by a newer Herald (its `schema` version is past the
/// `known` ones). This one runs on it, as old nodes do beside new ones during a rolling
/// upgrade, but knows nothing of what the newer migrations added.
pub fn warn_if_newer(schema: i64, known: usize) {
    if schema > known as i64 {
        tracing::warn!(
            schema,
            known,
            "the database was migrated by a newer Herald; this one runs on it as during a rolling upgrade, but should be replaced by the newer version"
        );
    }
}

/// Refuses a SQLite database migrated by a newer Herald (its `schema` version past the `known`
/// ones). One node owns the file, so no rolling upgrade needs an older one to run on it, and an
/// older Herald misreads what a newer one wrote: older versions run on upgraded files stored
/// deliveries nothing could find and sealed already sealed secrets a second time.
pub fn refuse_if_newer(schema: i64, known: usize) -> herald_core::store::StoreResult<()> {
    if schema > known as i64 {
        return Err(herald_core::store::StoreError::Refused(format!(
            "the database was migrated by a newer Herald (schema version {schema}; this one \
                 knows up to {known}), and running an older Herald on it is not supported: run \
                 the newer Herald, or restore the backup taken before the upgrade"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(backend: &str) -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn listed(list: &[Migration]) -> Vec<String> {
        list.iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect()
    }

    #[test]
    fn both_backends_have_the_same_numbered_migrations() {
        assert_eq!(files("sqlite"), files("postgres"));
        assert_eq!(listed(SQLITE), files("sqlite"));
        assert_eq!(listed(POSTGRES), files("postgres"));
        let versions: Vec<i64> = SQLITE.iter().map(|m| m.version).collect();
        let expected: Vec<i64> = (1..=SQLITE.len() as i64).collect();
        assert_eq!(versions, expected, "versions run 1, 2, 3… without gaps");
    }
}
