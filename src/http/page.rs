//! The page at `/`: where a person pastes an article (or its address) and
//! watches its summary and translations arrive, without curl. One HTML file
//! with its style and script inside it (`page.html`), fetching nothing from
//! anywhere but this server's API, and served with a Content-Security-Policy
//! that lets it do no more: its own script and style by their hashes, and
//! requests to its own origin only.
//!
//! Model output reaches the page as text (`textContent`), never as markup,
//! so an article or a model cannot write into it.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The page, as served.
pub const PAGE: &str = include_str!("page.html");

/// The page's Content-Security-Policy: its inline style and script allowed
/// by their SHA-256, requests to its origin only, nothing else.
pub fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = |open: &str, close: &str| {
            let start = PAGE.find(open).map_or(0, |i| i + open.len());
            let end = PAGE[start..].find(close).map_or(start, |i| start + i);
            let digest = Sha256::digest(&PAGE.as_bytes()[start..end]);
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script>", "</script>"),
            hash("<style>", "</style>"),
        )
    })
}

/// The page for people: paste an article or give its address, choose a
/// summary, a translation or a digest and the languages, and watch the
/// result stream in.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "the page (HTML)", content_type = "text/html", body = String)))]
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, content_security_policy()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}
