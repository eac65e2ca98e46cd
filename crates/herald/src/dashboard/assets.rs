//! The stylesheet, the small script and the icon, compiled into the binary and served with a
//! long cache lifetime. Their URLs carry a digest of their content, so a browser fetches them
//! anew exactly when they changed: the package version stays the same across many builds, and a
//! browser holding last week's stylesheet under the same URL would show new pages with old
//! styles.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::app::AppState;

const CSS: &str = include_str!("../../assets/herald.css");
const JS: &str = include_str!("../../assets/herald.js");
const ICON: &str = include_str!("../../assets/herald.svg");
const SVG: &str = "image/svg+xml";
const CACHE: &str = "public, max-age=604800, immutable";

/// Where the stylesheet is served: `/assets/herald-<digest>.css`.
pub static CSS_PATH: LazyLock<String> = LazyLock::new(|| content_path(CSS, "css"));
/// Where the script is served: `/assets/herald-<digest>.js`.
pub static JS_PATH: LazyLock<String> = LazyLock::new(|| content_path(JS, "js"));
/// Where the icon is served: `/assets/herald-<digest>.svg`.
pub static ICON_PATH: LazyLock<String> = LazyLock::new(|| content_path(ICON, "svg"));

/// `/assets/herald-<the first 12 hex digits of the content's SHA-256>.<extension>`.
fn content_path(content: &str, extension: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    format!("/assets/herald-{}.{extension}", &hex::encode(digest)[..12])
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            &CSS_PATH,
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            &JS_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route(&ICON_PATH, get(|| async { asset(SVG, ICON) }))
        // Asked for by browsers on pages that name no icon (a JSON answer opened in a tab): the
        // same icon, rather than a 404 in the browser's console. Its URL never changes, so it
        // is cached for a day only.
        .route(
            "/favicon.ico",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, SVG),
                        (header::CACHE_CONTROL, "public, max-age=86400"),
                    ],
                    ICON,
                )
            }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, CACHE),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_paths_change_with_their_content() {
        assert_ne!(content_path("a {}", "css"), content_path("b {}", "css"));
        assert_eq!(content_path("a {}", "css"), content_path("a {}", "css"));
        assert!(CSS_PATH.starts_with("/assets/herald-") && CSS_PATH.ends_with(".css"));
        assert!(JS_PATH.ends_with(".js"));
        assert!(ICON_PATH.ends_with(".svg"));
    }
}
