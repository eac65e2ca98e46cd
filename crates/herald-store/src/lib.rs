//! Herald's storage backends: the only crate that speaks SQL. Each backend implements
//! [`herald_core::store::Store`]; migrations live in `migrations/<backend>/` with the same
//! numbered sequence for every backend.

// The workspace denies unsafe code (one call in `herald` is allowed where it is written);
// this crate has none at all.
#![forbid(unsafe_code)]

pub mod cipher;
pub mod copy;
pub mod migrations;
pub mod postgres;
pub mod sqlite;

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;

/// How many of a webhook's most recent deliveries the health counts look at.
pub(crate) const HEALTH_SCAN_LIMIT: i64 = herald_core::health::SCAN_LIMIT as i64;

/// A SQL `CASE` giving the latency class of `column` (an index into
/// [`herald_core::health::DURATION_BOUNDS_MS`]), the same for both backends.
pub(crate) fn duration_class_sql(column: &str) -> String {
    let bounds = herald_core::health::DURATION_BOUNDS_MS;
    let mut sql = String::from("CASE");
    for (i, bound) in bounds.iter().enumerate() {
        sql.push_str(&format!(" WHEN {column} <= {bound} THEN {i}"));
    }
    sql.push_str(&format!(" ELSE {} END", bounds.len()));
    sql
}

/// Where an event list's page starts. The API lets only such cursors through; one that is
/// not has nothing after it.
pub(crate) fn event_cursor(
    page: &herald_core::PageRequest,
) -> Option<herald_core::event::EventCursor> {
    page.cursor.as_deref().map(|c| {
        herald_core::event::EventCursor::parse(c).unwrap_or(herald_core::event::EventCursor {
            received_at: herald_core::Timestamp::from_millis(i64::MIN),
            id: String::new(),
        })
    })
}

/// Cuts the one extra row a list query fetched and turns it into the next cursor.
pub(crate) fn paginate<T>(
    mut items: Vec<T>,
    page: &herald_core::PageRequest,
    key: impl Fn(&T) -> String,
) -> herald_core::Page<T> {
    let next_cursor = if items.len() > page.limit as usize {
        items.truncate(page.limit as usize);
        items.last().map(key)
    } else {
        None
    };
    herald_core::Page {
        data: items,
        next_cursor,
    }
}
