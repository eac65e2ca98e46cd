//! What the dashboard shows when a page cannot: an HTML page with the status and a message
//! that says what to do. Service errors get the same status and words as in the JSON API
//! (`api::ApiError` is the one place that maps them, and logs 5xx causes once).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::templates;
use crate::api::ApiError;
use crate::service::ServiceError;

#[derive(Debug)]
pub enum DashError {
    Service(ServiceError),
    Status(StatusCode, &'static str),
}

impl DashError {
    pub fn not_found() -> Self {
        Self::Status(
            StatusCode::NOT_FOUND,
            "There is nothing here. It may have been deleted, or it belongs to an organization you cannot see.",
        )
    }
}

impl From<ServiceError> for DashError {
    fn from(e: ServiceError) -> Self {
        Self::Service(e)
    }
}

/// The status and message a person sees for an error.
pub fn describe(e: ServiceError) -> (StatusCode, String) {
    if let ServiceError::NotFound(what) = &e {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "No such {what} here. It may have been deleted, or it belongs to an organization you cannot see."
            ),
        );
    }
    let api = ApiError::from(e);
    (api.status, api.message)
}

impl IntoResponse for DashError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            DashError::Service(e) => describe(e),
            DashError::Status(status, message) => (status, message.to_owned()),
        };
        templates::error_page(status, &message)
    }
}

pub type DashResult<T> = Result<T, DashError>;
