//! What running the API as a service needs around the handlers: API keys,
//! Prometheus metrics, readiness, and the answers for admission's refusals
//! (admission itself is precis-core's, shared with batch jobs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{ApiError, ErrorCode};

impl From<precis_core::admission::AdmissionError> for ApiError {
    fn from(e: precis_core::admission::AdmissionError) -> Self {
        use precis_core::admission::AdmissionError;
        match e {
            AdmissionError::QueueFull { retry_after, .. } => {
                let mut refused = ApiError::new(ErrorCode::QueueFull, e.to_string());
                refused.retry_after = Some(retry_after);
                refused
            }
            AdmissionError::Timeout => timed_out(),
        }
    }
}

/// The answer when a request ran past its deadline.
pub fn timed_out() -> ApiError {
    ApiError::new(
        ErrorCode::Timeout,
        "the request took longer than this server allows (--timeout-secs); its work was cancelled: send a shorter text or raise the limit",
    )
}

/// API keys, kept as SHA-256 digests (the keys themselves are never logged
/// nor kept).
#[derive(Clone)]
pub struct ApiKeys(Arc<Vec<[u8; 32]>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl ApiKeys {
    /// The non-empty keys given; `None` when there are none.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let digests: Vec<[u8; 32]> = keys
            .into_iter()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        (!digests.is_empty()).then(|| Self(Arc::new(digests)))
    }

    /// Keys from a file's text (see [`key_lines`]).
    pub fn parse_file(text: &str) -> Option<Self> {
        Self::new(key_lines(text))
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a set of keys has at least one.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `key` is one of them (compared in constant time per key).
    pub fn accepts(&self, key: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.0.iter().fold(false, |found, k| {
            let diff = k.iter().zip(&d).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (diff == 0)
        })
    }
}

/// The keys of a keys file's text: one a line, trimmed; blank lines and
/// `#` comments skipped.
pub fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Who is calling, for what is kept per caller (batch jobs and their
/// idempotency keys): a digest of the API key the request carried, set by
/// [`authorize`]; a server without keys has one shared, empty, scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller(pub String);

impl Caller {
    fn of_key(key: &str) -> Self {
        let digest = Sha256::digest(format!("precis caller\0{key}").as_bytes());
        Caller(hex::encode(&digest[..16]))
    }
}

/// Routes open without a key: what load balancers and orchestrators probe,
/// the page at `/` (which asks its visitor for a key), and what
/// LibreTranslate serves without one.
fn open_route(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/") || super::compat::open_route(path)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware: requires `Authorization: Bearer KEY` with a known key (401
/// otherwise) on every route but the open ones; LibreTranslate's
/// `/translate` and `/detect` may carry it in their body instead.
pub async fn authorize(State(keys): State<ApiKeys>, mut req: Request, next: Next) -> Response {
    if open_route(req.uri().path()) {
        return next.run(req).await;
    }
    match bearer(req.headers()) {
        Some(key) if keys.accepts(key) => {
            let caller = Caller::of_key(key);
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        // LibreTranslate's clients send the key in the body: the route
        // checks it there.
        given if super::compat::takes_body_key(req.uri().path()) => {
            let check = super::compat::BodyKey {
                keys,
                header_given: given.is_some(),
            };
            req.extensions_mut().insert(check);
            next.run(req).await
        }
        given => {
            let message = if given.is_some() {
                "the API key is not valid"
            } else {
                "this server needs an API key: send `Authorization: Bearer KEY`"
            };
            let mut r = ApiError::new(ErrorCode::Unauthorized, message).into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
            r
        }
    }
}

/// The process's Prometheus recorder (one per process: every router built
/// in it reports there).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (an embedding
        // program's); then this one only renders what it is given.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(
        "precis_http_requests_total",
        "HTTP requests answered, by route, method and status"
    );
    metrics::describe_histogram!(
        "precis_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "time to answer HTTP requests, by route"
    );
    metrics::describe_gauge!("precis_requests_in_flight", "requests holding a slot");
    metrics::describe_gauge!("precis_queue_depth", "requests waiting for a slot");
    metrics::describe_counter!(
        "precis_tokens_generated_total",
        "tokens generated, by model"
    );
    metrics::describe_gauge!(
        "precis_model_load_seconds",
        metrics::Unit::Seconds,
        "time the model took to load, by model"
    );
}

/// A request method as a metric label: the API's own methods by name, any
/// other as `OTHER`. The label set stays bounded whatever a client sends
/// (hyper accepts method names of any length, before any key is checked).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware: counts every answer by route (its template, never the raw
/// path), method (as `method_label` names it) and status, times it,
/// and logs the causes of the failures it reports (each once, here).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = method_label(req.method());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    if let Some(super::error::FailureCauses(causes)) = response.extensions().get() {
        for cause in causes {
            tracing::error!(%route, %method, %status, %request_id, "{cause}");
        }
    }
    metrics::counter!("precis_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("precis_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Counters, gauges and histograms in Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format (version 0.0.4)", content_type = "text/plain", body = String)))]
pub async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus().render(),
    )
        .into_response()
}

/// Whether the server takes work: its models are loaded and it is not
/// shutting down.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Ready (`true`) or not.
    pub fn new(ready: bool) -> Self {
        Self(Arc::new(AtomicBool::new(ready)))
    }

    /// Sets it.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether it is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// `ready` or `not_ready` with its status.
pub fn readiness_answer(ready: bool) -> (StatusCode, &'static str) {
    if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    }
}

/// A deadline `timeout` from now.
pub fn deadline(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_lines_without_comments_and_match_exactly() {
        let keys = ApiKeys::parse_file("# ops team\nalpha-1\n\n  beta-2  \n").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts("alpha-1") && keys.accepts("beta-2"));
        assert!(!keys.accepts("alpha-") && !keys.accepts("# ops team") && !keys.accepts(""));
        assert!(ApiKeys::parse_file("# nothing\n\n").is_none());
        assert!(!format!("{keys:?}").contains("alpha"));
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer k1".parse().unwrap());
        assert_eq!(bearer(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
