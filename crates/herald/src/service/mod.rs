//! Use cases shared by the API, the CLI and the dashboard: each function takes the
//! caller's scope and plain inputs, checks them into domain values, and calls the store, the
//! directory and the dispatcher. Nothing here knows HTTP.
//!
//! Beside them, the node's background work that the use cases rely on: `retention` (the
//! purge), `clock_watch` (the wall clock every stored time is read by), `cluster` (what other nodes
//! changed), `memory` (giving memory back after a spike), and `token_failures` (holding back
//! token guesses), with `cancel_safe` for writes
//! that must finish though their caller is gone.

pub mod auth;
mod cancel_safe;
pub mod clock_watch;
pub mod cluster;
pub mod deliveries;
pub mod event_types;
pub mod events;
pub mod health;
pub mod ingest;
pub mod memory;
pub mod operations;
pub mod orgs;
pub mod retention;
pub mod searches;
pub mod subscriptions;
pub mod token_failures;
pub mod webhooks;

use herald_core::store::StoreError;
use herald_core::{Invalid, OrgId, Timestamp};

pub use auth::Scope;

/// Runs `change`, which checks the organization as it is and then writes (a webhook, an event
/// type), in the organization's turn for changes ([`herald_core::directory::Directory::changing`]),
/// to the end even if the request is given up: the turn is held until its write is done, not
/// handed to the next change while the write still runs.
pub(crate) async fn one_change_at_a_time<T, F, Fut>(
    state: &crate::app::AppState,
    org: &OrgId,
    change: F,
) -> ServiceResult<T>
where
    T: Send + 'static,
    F: FnOnce(crate::app::AppState) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ServiceResult<T>> + Send,
{
    let org = org.clone();
    cancel_safe::to_the_end(state, move |state| async move {
        let directory = state.directory.clone();
        directory
            .changing(&org, change(state))
            .await
            .map_err(ServiceError::from_store("organization"))?
    })
    .await
}

/// The organization's snapshot, for a caller allowed to see it (`404` for anyone else, as for
/// an organization that does not exist).
pub(crate) async fn org_snapshot(
    state: &crate::app::AppState,
    scope: &Scope,
    org: &OrgId,
) -> ServiceResult<std::sync::Arc<herald_core::directory::OrgSnapshot>> {
    scope.check_org(org)?;
    state
        .directory
        .snapshot(org)
        .await
        .map_err(ServiceError::from_store("organization"))
}

/// Webhooks named in a refusal as people know them, by name with the id the API takes:
/// `'crm' (wh_…), 'audit' (wh_…)`, the first five and how many more. `detail` adds what
/// concerns each, in parentheses after it.
pub(crate) fn name_webhooks<'a>(
    webhooks: impl IntoIterator<Item = (&'a herald_core::webhook::Webhook, Option<String>)>,
) -> String {
    const SHOWN: usize = 5;
    let mut named = Vec::new();
    let mut more = 0;
    for (webhook, detail) in webhooks {
        if named.len() == SHOWN {
            more += 1;
            continue;
        }
        let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
        named.push(format!("'{}' ({}{detail})", webhook.name, webhook.id));
    }
    let mut text = named.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// Why a use case did not happen. The API maps each variant to one status in `api/error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// An input is malformed or out of range; names the field.
    #[error(transparent)]
    Invalid(Invalid),
    /// An event names a type the organization does not know; says which input field, and the
    /// known type it most likely meant.
    #[error("the event type '{name}' is not known to this organization")]
    UnknownEventType {
        name: String,
        /// The organization, for the advice (where its types are listed).
        org: OrgId,
        field: String,
        /// Why, for the message: the known type it most likely meant, or the catalog that has
        /// it ([`herald_core::directory::OrgSnapshot::not_a_type_because`]).
        because: String,
    },
    #[error("the event data does not match its type's schema")]
    SchemaViolation(Invalid),
    /// More than one event of a batch refused (each an `Invalid`, `UnknownEventType` or
    /// `SchemaViolation`): the first [`MAX_LISTED_REFUSALS`] of them, and how many in all, so
    /// that a producer mends them all in one go.
    #[error("{total} events of the batch are refused")]
    EventsRefused {
        listed: Vec<ServiceError>,
        total: usize,
    },
    /// The events of one request would create more deliveries than one request may
    /// (`HERALD_MAX_DELIVERIES_PER_REQUEST`); the message says how many the first of them make.
    /// Its own code, so that a client sending many events can split the request and go on.
    #[error("{0}")]
    TooManyDeliveries(String),
    /// Nothing with that id is visible to the caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Nothing of that name: says the name, and the one it most likely meant.
    #[error("{what} '{name}' not found")]
    NoSuchName {
        what: &'static str,
        name: String,
        suggestion: Option<String>,
    },
    #[error("{0}")]
    Conflict(String),
    /// The caller's copy is out of date: the webhook changed since the version it names was
    /// read (`If-Match`, the dashboard's form). Carries the version it has now.
    #[error("the webhook changed since it was read")]
    Changed { now: Timestamp },
    /// Only the admin token may do this; the message says what, in the API's words.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The organization runs as many searches of its history at once as it may
    /// ([`searches::AT_ONCE`]), and this one waited too long for its turn.
    #[error("too many searches of the organization's history at once")]
    TooManySearches,
    #[error("the store is unavailable")]
    Unavailable(#[source] StoreError),
    #[error("internal error")]
    Internal(#[source] StoreError),
}

/// The most refused events of a batch an answer lists.
pub const MAX_LISTED_REFUSALS: usize = 100;

impl From<Invalid> for ServiceError {
    fn from(e: Invalid) -> Self {
        Self::Invalid(e)
    }
}

impl ServiceError {
    /// Maps a store error, naming what was not found.
    pub fn from_store(what: &'static str) -> impl FnOnce(StoreError) -> Self {
        move |e| match e {
            StoreError::NotFound => Self::NotFound(what),
            StoreError::Conflict(m) => Self::Conflict(m),
            e @ StoreError::Unavailable(_) => Self::Unavailable(e),
            // Ingest fans out again on a change (`ingest::ingest_values`): never answered.
            e @ (StoreError::Other(_) | StoreError::Refused(_) | StoreError::DirectoryChanged) => {
                Self::Internal(e)
            }
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
