//! The stylesheet and the script, compiled into the binary: `cargo build`
//! makes everything the console serves, with no Node toolchain and no files
//! to deploy beside the binary.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// Versioned by the build, so that a browser never runs an old script against new pages.
pub const CSS_PATH: &str = concat!("/console/console.css?v=", env!("CARGO_PKG_VERSION"));
pub const JS_PATH: &str = concat!("/console/console.js?v=", env!("CARGO_PKG_VERSION"));

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")], body)
}

/// Served without a session: they hold nothing about any workflow.
pub(super) fn router() -> Router {
    Router::new()
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
}
