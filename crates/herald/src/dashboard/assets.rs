//! The stylesheet and the small script, compiled into the binary and served with a long cache
//! lifetime: their URLs carry the version, so a new release is fetched anew.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::app::AppState;

pub const CSS_PATH: &str = concat!("/assets/herald-", env!("CARGO_PKG_VERSION"), ".css");
pub const JS_PATH: &str = concat!("/assets/herald-", env!("CARGO_PKG_VERSION"), ".js");

const CSS: &str = include_str!("../../assets/herald.css");
const JS: &str = include_str!("../../assets/herald.js");
const CACHE: &str = "public, max-age=604800, immutable";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            CSS_PATH,
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    CSS,
                )
                    .into_response()
            }),
        )
        .route(
            JS_PATH,
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    JS,
                )
                    .into_response()
            }),
        )
}
