//! JSON answers, ending with a newline: a terminal shows `curl`'s output, and then the prompt on
//! a line of its own, as it does for command-line tools. Parsers pass the newline over.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A value answered as JSON (`application/json`), then a newline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(128);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => {
                body.push(b'\n');
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body,
                )
                    .into_response()
            }
            // Only a map with keys that are not strings fails, which no answer of Herald's has.
            Err(e) => {
                tracing::error!(error = %e, "could not write an answer as JSON");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    "{\"error\":{\"code\":\"internal\",\"message\":\"an internal error occurred; it has been logged\"}}\n",
                )
                    .into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_is_json_and_a_newline() {
        let response = Json(serde_json::json!({ "a": [1, "b"] })).into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"a\":[1,\"b\"]}\n");
    }
}
