//! A request body built to be expensive to expand (a 2 MiB array of a
//! million tiny elements) is refused as it is read, without building its
//! elements: in its own test binary, so that the memory it measures is its
//! own.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use precis::http::{router, AppState, ServerLimits};
use precis_core::engine::{FakeLoader, Routing};
use precis_service::app::Services;
use tower::ServiceExt;

/// Resident memory of this process, in bytes.
#[cfg(target_os = "linux")]
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_array_is_refused_before_its_elements_are_built() {
    let limits = ServerLimits::default();
    let services = Services::assemble(
        Arc::new(FakeLoader::new(&["fake"])),
        Routing {
            summarizers: vec!["fake".into()],
            translators: vec!["fake".into()],
        },
        None,
        Some(limits.max_chars),
    );
    let app = router(AppState::new(services.engine, limits.clone()));
    let mut body = Vec::with_capacity(limits.max_body_bytes);
    body.push(b'[');
    while body.len() < limits.max_body_bytes - 64 {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]");
    let elements = body.iter().filter(|&&b| b == b'0').count();
    #[cfg(target_os = "linux")]
    let before = resident();
    let req = Request::builder()
        .method("POST")
        .uri("/v1/summarize")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "batch_too_large", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(&elements.to_string()), "{message}");
    #[cfg(target_os = "linux")]
    {
        let grown = resident().saturating_sub(before);
        assert!(grown < 50 << 20, "resident memory grew by {grown} bytes");
    }
}
