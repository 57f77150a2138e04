//! The REST API through the router (no socket), with the deterministic fake
//! backend: every documented error code, the result shape, and that no bad
//! input stops the server from serving.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use precis::http::{router, ApiKeys, AppState, ServerLimits};
use precis_core::engine::{FakeLoader, Routing};
use precis_service::app::Services;
use serde_json::{json, Value};
use tower::ServiceExt;

#[path = "common/sse.rs"]
mod sse;
use sse::{parse_events, Sse};

const SAMPLE: &str = include_str!("../examples/sample-article.txt");

/// The fake models this server knows.
const FAKES: [&str; 6] = [
    "fake",
    "fake-2",
    "fake-cancel",
    "fake-stream",
    "fake-cached",
    "broken",
];

/// The server's parts over the fake models, made as `precis serve` makes
/// its own: routed to `model`, refusing articles over `limits`' size,
/// with `cache` when given.
fn services(
    model: &str,
    limits: &ServerLimits,
    cache: Option<Arc<precis_core::cache::ResultCache>>,
) -> Services {
    let services = Services::assemble(
        Arc::new(FakeLoader::new(&FAKES)),
        Routing {
            summarizers: vec![model.into()],
            translators: vec![model.into()],
        },
        cache,
        Some(limits.max_chars),
    );
    services.engine.load_routed().unwrap();
    services
}

fn limits() -> ServerLimits {
    ServerLimits {
        max_body_bytes: 1024 * 1024,
        max_chars: 20_000,
        ..ServerLimits::default()
    }
}

fn state(limits: ServerLimits) -> AppState {
    AppState::new(services("fake", &limits, None).engine, limits)
}

fn app() -> axum::Router {
    router(state(limits()))
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("body is not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

async fn post(app: &axum::Router, uri: &str, body: Value) -> (StatusCode, Value) {
    call(app, "POST", uri, serde_json::to_vec(&body).unwrap()).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn digest_returns_summary_translations_and_model() {
    let app = app();
    let (status, v) = post(
        &app,
        "/v1/digest",
        json!({"text": SAMPLE, "to": ["ru", "hi"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["task"], "digest");
    let summary = v["summary"]["text"].as_str().unwrap();
    assert!(!summary.is_empty());
    assert!(summary.len() * 4 < SAMPLE.len());
    assert_eq!(v["summary"]["model"]["id"], "fake");
    let langs: Vec<&str> = v["translations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["language"].as_str().unwrap())
        .collect();
    assert_eq!(langs, ["ru", "hi"]);
    assert_eq!(v["input"]["dropped"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn digest_without_to_uses_the_default_targets() {
    let app = app();
    let (status, v) = post(&app, "/v1/digest", json!({"text": SAMPLE})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["translations"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn translate_keeps_paragraph_count() {
    let app = app();
    let (status, v) = post(&app, "/v1/translate", json!({"text": SAMPLE, "to": ["ru"]})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let kept = v["input"]["paragraphs_kept"].as_u64().unwrap() as usize;
    let t = &v["translations"][0];
    assert_eq!(t["paragraphs"].as_array().unwrap().len(), kept);
    assert_eq!(t["source"], "article");
    assert!(t["title"].is_string());
}

#[tokio::test]
async fn summarize_result_snapshot() {
    let app = app();
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!({"id": "a1", "title": "Ministers meet", "text": "The ministers met on Monday. They agreed on 3 points.\n\nPool photo by Jane Doe"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    insta::assert_json_snapshot!("summarize_result", v);
}

#[tokio::test]
async fn error_bodies_snapshot() {
    let app = app();
    let (_, malformed) = call(&app, "POST", "/v1/summarize", b"{\"text\": ".to_vec()).await;
    let (_, empty) = post(&app, "/v1/summarize", json!({"text": "  \n "})).await;
    let (_, xx) = post(&app, "/v1/translate", json!({"text": "Hi.", "to": ["xx"]})).await;
    insta::assert_json_snapshot!("error_bodies", json!([malformed, empty, xx]));
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = app();
    for body in [&b"{"[..], b"not json", b"", b"[1,2", b"{\"text\": \"a\",}"] {
        let (status, v) = call(&app, "POST", "/v1/digest", body.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(code(&v), "malformed_json");
    }
}

#[tokio::test]
async fn invalid_utf8_is_400() {
    let app = app();
    let mut body = b"{\"text\": \"caf".to_vec();
    body.extend([0xff, 0xfe]);
    body.extend(b"\"}");
    let (status, v) = call(&app, "POST", "/v1/summarize", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&v), "invalid_utf8");
}

#[tokio::test]
async fn huge_body_is_413_and_server_keeps_serving() {
    let app = app();
    let mut body = b"{\"text\": \"".to_vec();
    body.extend(std::iter::repeat_n(b'a', 50 * 1024 * 1024));
    body.extend(b"\"}");
    let (status, v) = call(&app, "POST", "/v1/summarize", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&v), "payload_too_large");
    let (status, _) = call(&app, "GET", "/health", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn empty_text_is_422() {
    let app = app();
    for text in ["", "   ", "\n\n\t"] {
        let (status, v) = post(&app, "/v1/summarize", json!({ "text": text })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code(&v), "empty_text");
    }
    // Only non-story paragraphs: also nothing to summarize, and the message says how to keep them.
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!({ "text": "Leave a Reply\n\nYour email address will not be published. Required fields are marked *" }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "empty_text");
    assert!(v["error"]["message"].as_str().unwrap().contains("clean"));
}

#[tokio::test]
async fn language_errors_are_422() {
    let app = app();
    let cases = [
        (json!({"text": "Hi.", "to": ["xx"]}), "unsupported_language"),
        (
            json!({"text": "Hi.", "to": ["ru", "ru"]}),
            "duplicate_language",
        ),
        (json!({"text": "Hi.", "to": ["en"]}), "unsupported_language"),
        (json!({"text": "Hi."}), "no_target_language"),
    ];
    for (body, expected) in cases {
        let (status, v) = post(&app, "/v1/translate", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(code(&v), expected);
    }
    let (status, v) = post(&app, "/v1/digest", json!({"text": "Hi.", "to": ["de"]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"]["message"].as_str().unwrap().contains("ru"));
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!({"text": "Hi.", "language": "zz"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "unsupported_language");
    // An article the caller says is Russian needs a translator that reads
    // Russian; the fake LLM does not, so the refusal names one to fetch.
    let russian = [
        (
            "/v1/translate",
            json!({"text": "Hi.", "from": "ru", "to": ["hi"]}),
        ),
        (
            "/v1/digest",
            json!({"text": "Hi.", "from": "ru", "to": ["hi"]}),
        ),
        ("/v1/summarize", json!({"text": "Hi.", "from": "ru"})),
    ];
    // A declared language that is no language subtag is not one: the text
    // decides (too short here: English), and the junk is never echoed.
    let junk = "x".repeat(10_000);
    let (status, v) = post(
        &app,
        "/v1/translate",
        json!({"text": "Hi.", "from": junk, "to": ["ru"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(
        v.get("input").and_then(|i| i.get("language")).is_none(),
        "{v}"
    );
    for (path, body) in russian {
        let (status, v) = post(&app, path, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {v}");
        assert_eq!(code(&v), "not_english", "{path}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("Russian (declared)") && message.contains("m2m100-418m"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn unknown_and_wrong_fields_are_422() {
    let app = app();
    let (status, v) = post(&app, "/v1/summarize", json!({"text": "Hi.", "txet": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "unknown_field");
    let (status, v) = post(&app, "/v1/summarize", json!({"text": 5})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "invalid_request");
    let (status, v) = post(&app, "/v1/translate", json!({"text": "Hi.", "to": "ru"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "invalid_request");
    // Neither `text` nor `url`: nothing to work on.
    let (status, v) = post(&app, "/v1/summarize", json!({"title": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "empty_text");
}

#[tokio::test]
async fn models_unknown_to_the_server_are_422_and_broken_ones_503() {
    let app = app();
    for m in ["/etc/passwd", "Qwen/Qwen2.5-7B", "nope"] {
        let (status, v) = post(&app, "/v1/summarize", json!({"text": "Hi.", "model": m})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{m}");
        assert_eq!(code(&v), "unknown_model");
    }
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!({"text": "Hi.", "model": "broken"}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&v), "model_unavailable");
    assert!(v["error"]["message"].as_str().unwrap().contains("sha256"));
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!({"text": "Hi.", "model": "fake-2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["summary"]["model"]["id"], "fake-2");
}

#[tokio::test]
async fn too_many_characters_is_422() {
    let app = app();
    let text = "word ".repeat(5000);
    let (status, v) = post(&app, "/v1/summarize", json!({ "text": text })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "text_too_long");
}

#[tokio::test]
async fn strict_mode_fails_flagged_output() {
    let app = app();
    let body = json!({"text": "The talks went on. FAKE_LOOP", "strict": true});
    let (status, v) = post(&app, "/v1/summarize", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(code(&v), "flagged");
    let body = json!({"text": "The talks went on. FAKE_LOOP"});
    let (status, v) = post(&app, "/v1/summarize", body).await;
    assert_eq!(status, StatusCode::OK);
    let flags: Vec<&str> = v["summary"]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(flags.contains(&"loop_detected"), "{flags:?}");
}

#[tokio::test]
async fn a_crashing_model_fails_one_request_and_the_server_goes_on() {
    let app = app();
    let (status, v) = post(&app, "/v1/summarize", json!({"text": "Boom. FAKE_PANIC"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(code(&v), "internal");
    assert!(!v["error"]["message"].as_str().unwrap().contains("panic"));
    let (status, _) = post(&app, "/v1/summarize", json!({"text": "Calm. All is well."})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn nul_bytes_and_deep_nesting_do_not_hurt() {
    let app = app();
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!({"text": "A\u{0}B met C. They talked."}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let (status, v) = call(&app, "POST", "/v1/summarize", deep.into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&v), "malformed_json");
}

#[tokio::test]
async fn routes_health_models_404_405() {
    let app = app();
    let (status, v) = call(&app, "GET", "/health", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    let (status, v) = call(&app, "GET", "/v1/models", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["models"][0]["id"], "fake");
    let (status, v) = call(&app, "GET", "/v2/nothing", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&v), "not_found");
    let (status, v) = call(&app, "GET", "/v1/digest", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(code(&v), "method_not_allowed");
}

#[tokio::test]
async fn concurrent_requests_queue_instead_of_failing() {
    let app = app();
    let mut handles = Vec::new();
    for i in 0..8 {
        let app = app.clone();
        handles.push(tokio::spawn(async move {
            post(
                &app,
                "/v1/summarize",
                json!({"text": format!("Item {i} happened. More text.")}),
            )
            .await
        }));
    }
    for h in handles {
        let (status, v) = h.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
    }
}

/// A request and its whole answer: status, headers, body as JSON (or
/// `null` when the body is not JSON).
async fn send(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, value)
}

fn summarize_request(text: &str) -> Request<Body> {
    json_request("/v1/summarize", &json!({ "text": text }))
}
/// After a client left mid-generation on `model` (whose token count was
/// `before`): the next request gets the slot at once, and the abandoned
/// generation stopped and stays stopped.
async fn assert_abandoned_work_stopped(app: &axum::Router, model: &str, before: u64) {
    let started = std::time::Instant::now();
    let (status, _, v) = send(app, summarize_request("Next in line. Done.")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the next request waited {:?}: the slot was not freed",
        started.elapsed()
    );
    let stopped = tokens_generated(&metrics_text(app).await, model) - before;
    assert!(stopped < 200, "{stopped} tokens: generation did not stop");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let later = tokens_generated(&metrics_text(app).await, model) - before;
    assert_eq!(later, stopped, "tokens kept coming after the client left");
}

/// A POST of `body` as JSON.
fn json_request(uri: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// An article whose summary takes the fake model `words` × 50 ms.
fn slow_article(words: usize) -> String {
    let sentence: Vec<String> = (0..words).map(|i| format!("w{i}")).collect();
    format!("FAKE_SLOW start.\n\nFAKE_SLOW {}.", sentence.join(" "))
}

#[tokio::test]
async fn a_burst_past_the_queue_gets_429_with_retry_after_and_no_5xx() {
    let app = router(state(ServerLimits {
        max_concurrency: 1,
        queue_depth: 1,
        ..limits()
    }));
    let mut handles = Vec::new();
    for _ in 0..6 {
        let app = app.clone();
        handles.push(tokio::spawn(async move {
            send(&app, summarize_request(&slow_article(4))).await
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for h in handles {
        let (status, headers, v) = h.await.unwrap();
        *counts.entry(status.as_u16()).or_insert(0) += 1;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(code(&v), "queue_full");
            let after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(after >= 1);
        } else {
            assert_eq!(status, StatusCode::OK, "{v}");
        }
    }
    // One at work and one waiting are answered; the other four are refused.
    assert_eq!(counts.get(&200), Some(&2), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&4), "{counts:?}");
    // And the server serves on.
    let (status, _, _) = send(&app, summarize_request("One more. Fine.")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_request_past_its_deadline_is_504_and_its_slot_comes_back() {
    let app = router(state(ServerLimits {
        max_concurrency: 1,
        timeout: std::time::Duration::from_millis(300),
        ..limits()
    }));
    let started = std::time::Instant::now();
    let (status, _, v) = send(&app, summarize_request(&slow_article(200))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(code(&v), "timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The cancelled work gives its slot back within a step of the model.
    let (status, _, v) = send(&app, summarize_request("Short one. Done.")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

fn tokens_generated(metrics: &str, model: &str) -> u64 {
    let prefix = format!("precis_tokens_generated_total{{model=\"{model}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn metrics_text(app: &axum::Router) -> String {
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_client_that_goes_away_stops_its_generation_and_frees_its_slot() {
    let app = router(state(ServerLimits {
        max_concurrency: 1,
        queue_depth: 1,
        ..limits()
    }));
    let before = tokens_generated(&metrics_text(&app).await, "fake-cancel");
    // 200 words at 50 ms: 10 s if nothing stopped it.
    let body = json!({"text": slow_article(200), "model": "fake-cancel"});
    let req = json_request("/v1/summarize", &body);
    let client = tokio::spawn({
        let app = app.clone();
        async move { app.oneshot(req).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // The client disconnects: hyper drops the request's future, as this does.
    client.abort();
    assert_abandoned_work_stopped(&app, "fake-cancel", before).await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_requests_latency_and_queue() {
    let app = app();
    let (status, _) = post(&app, "/v1/summarize", json!({"text": "A thing. B."})).await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics_text(&app).await;
    for name in [
        "# TYPE precis_http_requests_total counter",
        "# TYPE precis_http_request_duration_seconds histogram",
        "precis_http_requests_total{route=\"/v1/summarize\",method=\"POST\",status=\"200\"}",
        "precis_http_request_duration_seconds_bucket{route=\"/v1/summarize\",le=\"",
        "# TYPE precis_requests_in_flight gauge",
        "precis_tokens_generated_total{model=\"fake\"}",
        "precis_model_load_seconds{model=\"fake\"}",
    ] {
        assert!(text.contains(name), "no `{name}` in:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
    }
}

#[tokio::test]
async fn ready_is_503_until_the_models_are_loaded_and_work_waits_for_it() {
    let s = state(limits());
    s.ready.set(false);
    let app = router(s.clone());
    let (status, v) = call(&app, "GET", "/ready", Vec::new()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["status"], "not_ready");
    let (status, _) = call(&app, "GET", "/health", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = post(&app, "/v1/summarize", json!({"text": "A. B."})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&v), "not_ready");
    s.ready.set(true);
    let (status, v) = call(&app, "GET", "/ready", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], "ready");
}

#[tokio::test]
async fn api_keys_are_required_when_set_except_for_probes() {
    let mut s = state(limits());
    s.api_keys = ApiKeys::new(["k-one", "k-two"]);
    let app = router(s);
    let with = |key: Option<&str>| {
        let mut b = Request::builder()
            .method("POST")
            .uri("/v1/summarize")
            .header("content-type", "application/json");
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        b.body(Body::from(r#"{"text": "A thing. B."}"#)).unwrap()
    };
    let (status, headers, v) = send(&app, with(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&v), "unauthorized");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, v) = send(&app, with(Some("k-three"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!v.to_string().contains("k-three"));
    let (status, _, _) = send(&app, with(Some("k-two"))).await;
    assert_eq!(status, StatusCode::OK);
    for open in ["/health", "/ready"] {
        let (status, _) = call(&app, "GET", open, Vec::new()).await;
        assert_eq!(status, StatusCode::OK, "{open}");
    }
    let (status, _) = call(&app, "GET", "/metrics", Vec::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Requests refused before any key is checked still count in the metrics:
/// whatever method names and paths a client makes up, the label set stays
/// the API's own (methods GET / POST / DELETE / HEAD / OPTIONS / OTHER,
/// routes by template or `unmatched`).
#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_the_metrics() {
    let mut s = state(limits());
    s.api_keys = ApiKeys::new(["k-one"]);
    let app = router(s);
    for i in 0..1000 {
        let req = Request::builder()
            .method(format!("M{i:04}XYZ").as_str())
            .uri(format!("/v1/summarize/x{i}"))
            .body(Body::empty())
            .unwrap();
        let (status, _, _) = send(&app, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let keyless = router(state(limits()));
    let text = metrics_text(&keyless).await;
    assert!(!text.contains("XYZ") && !text.contains("/x1"), "{text}");
    let methods: std::collections::BTreeSet<&str> = text
        .match_indices("method=\"")
        .map(|(at, _)| {
            let rest = &text[at + 8..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    let known = ["GET", "POST", "DELETE", "HEAD", "OPTIONS", "OTHER"];
    assert!(methods.iter().all(|m| known.contains(m)), "{methods:?}");
    assert!(methods.contains("OTHER"), "{methods:?}");
}

/// A web page can make a browser post `text/plain`, a form or an untyped
/// body to a local server without asking it first: only a body declared
/// JSON runs anything.
#[tokio::test]
async fn only_bodies_declared_json_are_read() {
    let app = app();
    let body = r#"{"text": "Ministers met. They agreed."}"#;
    for (uri, kind) in [
        ("/v1/summarize", Some("text/plain")),
        ("/v1/digest", Some("text/plain;charset=UTF-8")),
        ("/v1/translate", Some("application/x-www-form-urlencoded")),
        ("/v1/digest", Some("multipart/form-data; boundary=x")),
        ("/v1/summarize", None),
    ] {
        let mut req = Request::builder().method("POST").uri(uri);
        if let Some(kind) = kind {
            req = req.header("content-type", kind);
        }
        let (status, _, v) = send(&app, req.body(Body::from(body)).unwrap()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{uri} {kind:?}");
        assert_eq!(code(&v), "unsupported_media_type");
    }
    let req = Request::builder()
        .method("POST")
        .uri("/v1/summarize")
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(Body::from(body))
        .unwrap();
    let (status, _, _) = send(&app, req).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let app = app();
    let req = Request::builder()
        .uri("/health")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = send(&app, req).await;
    assert_eq!(headers["x-request-id"], "abc-123");
    let req = Request::builder()
        .uri("/health")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = send(&app, req).await;
    let made = headers["x-request-id"].to_str().unwrap();
    assert_eq!(made.len(), 36, "{made}");
}

#[tokio::test]
async fn cors_allows_the_configured_origins_only() {
    let mut s = state(limits());
    s.cors_origins = vec!["https://news.example".into()];
    let app = router(s);
    let preflight = |origin: &str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/v1/summarize")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, _) = send(&app, preflight("https://news.example")).await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://news.example"
    );
    let (_, headers, _) = send(&app, preflight("https://evil.example")).await;
    assert!(headers.get("access-control-allow-origin").is_none());
    // Without origins configured, no CORS headers at all.
    let (_, headers, _) = send(&crate::app(), preflight("https://news.example")).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_batch_answers_every_article_in_order_each_with_its_own_error() {
    let app = app();
    let body = json!([
        {"text": "First story happened. More.", "id": "a"},
        {"text": ""},
        {"text": "Third story. Yes.", "colour": "red"},
        "not an object",
        {"text": "Fifth story FAKE_PANIC. End."},
        {"text": "Sixth story happened. Done.", "id": "f"}
    ]);
    let (status, v) = post(&app, "/v1/summarize", body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["result"]["id"], "a");
    assert!(results[0]["result"]["summary"]["text"]
        .as_str()
        .unwrap()
        .contains("First"));
    assert_eq!(results[1]["status"], 422);
    assert_eq!(results[1]["error"]["code"], "empty_text");
    assert_eq!(results[2]["error"]["code"], "unknown_field");
    assert_eq!(results[3]["error"]["code"], "invalid_request");
    assert_eq!(results[4]["status"], 500);
    assert_eq!(results[4]["error"]["code"], "internal");
    assert_eq!(results[5]["status"], 200);
    assert_eq!(results[5]["result"]["id"], "f");
    // Translate and digest take arrays too.
    let (status, v) = post(
        &app,
        "/v1/translate",
        json!([{"text": "Hello there.", "to": ["ru"]}, {"text": "Bye.", "to": ["xx"]}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["results"][0]["status"], 200);
    assert_eq!(v["results"][1]["error"]["code"], "unsupported_language");
    let (status, v) = post(
        &app,
        "/v1/digest",
        json!([{"text": "A thing happened. B."}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v["results"][0]["result"]["translations"][0]["language"],
        "ru"
    );
}

#[tokio::test]
async fn batch_limits_name_themselves() {
    let app = router(state(ServerLimits {
        max_batch: 2,
        max_request_chars: 50,
        ..limits()
    }));
    let (status, v) = post(&app, "/v1/summarize", json!([])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "empty_batch");
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!([{"text": "A."}, {"text": "B."}, {"text": "C."}]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "batch_too_large");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-batch"));
    let long = "x".repeat(30);
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!([{"text": long}, {"text": long}]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "request_too_long");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-request-chars"));
}

#[tokio::test]
async fn bodies_of_the_wrong_type_are_422_and_the_server_serves_on() {
    let app = app();
    for body in [
        json!(42),
        json!("text"),
        json!(null),
        json!(true),
        json!({"text": 5}),
        json!({"text": ["a"]}),
        json!({"text": "A.", "to": "ru"}),
        json!({"text": "A.", "length": {"sentences": "three"}}),
        json!({"text": "A.", "generation": {"max_new_tokens": -1}}),
    ] {
        let (status, v) = post(&app, "/v1/translate", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert!(
            ["invalid_request", "unknown_field"].contains(&code(&v)),
            "{body}: {v}"
        );
    }
    let huge = "word ".repeat(5_000);
    let (status, v) = post(&app, "/v1/summarize", json!({ "text": huge })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "text_too_long");
    let (status, _) = call(&app, "GET", "/health", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
}

/// Every route the router serves, with its method.
const ROUTES: [(&str, &str); 18] = [
    ("post", "/v1/summarize"),
    ("post", "/v1/translate"),
    ("post", "/v1/digest"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("delete", "/v1/jobs/{id}"),
    ("get", "/v1/models"),
    ("get", "/v1/languages"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
    ("get", "/"),
    ("post", "/translate"),
    ("post", "/detect"),
    ("get", "/languages"),
    ("get", "/frontend/settings"),
];

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// `GET /v1/languages`: every language the server's models write, named,
/// with the models that write it; a target no model writes is refused,
/// naming these.
#[tokio::test]
async fn languages_lists_what_the_models_write() {
    let app = app();
    let (status, v) = call(&app, "GET", "/v1/languages", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v["languages"],
        json!([
            {"code": "en", "name": "English", "models": ["fake"]},
            {"code": "hi", "name": "Hindi", "models": ["fake"]},
            {"code": "ru", "name": "Russian", "models": ["fake"]},
        ])
    );
    let (status, v) = post(
        &app,
        "/v1/translate",
        json!({"text": "Hello.", "to": ["de"]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "unsupported_language");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("hi (Hindi)") && message.contains("ru (Russian)"),
        "{message}"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_resolves_every_reference() {
    let app = app();
    let (status, doc) = call(&app, "GET", "/openapi.json", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["title"], "precis");
    assert!(doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in ROUTES {
        let op = &paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the document"))[method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        assert!(op["responses"]["200"].is_object(), "{method} {path}");
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "the document has routes the router lacks"
    );
    // Every documented route exists on the router.
    for (method, path) in ROUTES {
        let req = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let (status, _, _) = send(&app, req).await;
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status}"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a schema reference");
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }
    // Request and response types carry examples.
    for name in [
        "SummarizeRequest",
        "TranslateRequest",
        "DigestRequest",
        "BatchResponse",
        "ErrorBody",
        "ModelsResponse",
        "SummaryTextEvent",
        "ParagraphEvent",
        "ProgressEvent",
        "StreamError",
    ] {
        assert!(
            schemas[name]["example"].is_object(),
            "{name} has no example"
        );
    }
    // The job routes document their streamed answer, and the `stream` field.
    for path in ["/v1/summarize", "/v1/translate", "/v1/digest"] {
        let content = &paths[path]["post"]["responses"]["200"]["content"];
        assert!(content["application/json"].is_object(), "{path}");
        let events = &content["text/event-stream"];
        assert!(
            events["example"]
                .as_str()
                .unwrap()
                .contains("event: result"),
            "{path}"
        );
    }
    for name in ["SummarizeRequest", "TranslateRequest", "DigestRequest"] {
        assert!(schemas[name]["properties"]["stream"].is_object(), "{name}");
    }
    // The error codes the document lists are the ones the server uses.
    let codes: Vec<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in [
        "queue_full",
        "timeout",
        "unauthorized",
        "not_ready",
        "empty_batch",
    ] {
        assert!(codes.contains(&c), "{c}");
    }
}

#[tokio::test]
async fn the_docs_page_describes_every_route_and_needs_nothing_from_elsewhere() {
    let app = app();
    let req = Request::builder().uri("/docs").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for (_, path) in ROUTES {
        assert!(page.contains(&format!("<code>{path}</code>")), "{path}");
    }
    assert!(page.contains("id=\"schema-TaskResult\""));
    // Nothing loaded from elsewhere (examples may show URLs as text).
    assert!(!page.contains("<script") && !page.contains("<link"));
    for attr in ["src=\"", "href=\"http", "url("] {
        assert!(!page.contains(attr), "{attr}");
    }
}

/// A streamed request's status, content type and events.
async fn stream(
    app: &axum::Router,
    uri: &str,
    accept: Option<&str>,
    body: Value,
) -> (StatusCode, String, Vec<Sse>) {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let req = req
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let events = if ctype.starts_with("text/event-stream") {
        parse_events(&text)
    } else {
        Vec::new()
    };
    (status, ctype, events)
}

/// Checks the stream ends with exactly one `result` and gives it.
fn final_result(events: &[Sse]) -> &Value {
    let last = events.last().expect("no events");
    assert_eq!(last.event, "result", "{events:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event == "result" || e.event == "error")
            .count(),
        1,
        "{events:?}"
    );
    &last.data
}

/// Progress events count up, by one, to their total.
fn check_progress(events: &[Sse]) {
    let steps: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| {
            (
                e.data["done"].as_u64().unwrap(),
                e.data["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!steps.is_empty(), "{events:?}");
    for (k, (done, total)) in steps.iter().enumerate() {
        assert_eq!(*done, k as u64 + 1, "{steps:?}");
        assert_eq!(*total, steps.len() as u64, "{steps:?}");
    }
}

/// The sample article's summary, streamed: the events, and the text of
/// the `summary` events in order.
async fn streamed_sample_summary(app: &axum::Router) -> (Vec<Sse>, Vec<String>) {
    let body = json!({"text": SAMPLE, "stream": true});
    let (status, ctype, events) = stream(app, "/v1/summarize", None, body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let pieces = events
        .iter()
        .filter(|e| e.event == "summary")
        .map(|e| {
            assert_eq!(e.data["language"], "en");
            e.data["text"].as_str().unwrap().to_string()
        })
        .collect();
    (events, pieces)
}

#[tokio::test]
async fn summarize_streams_the_summary_as_it_is_written_then_the_result() {
    let app = app();
    let (events, pieces) = streamed_sample_summary(&app).await;
    let result = final_result(&events);
    assert_eq!(result["task"], "summarize");
    // The fake writes a word at a time: one event per word.
    let summary = result["summary"]["text"].as_str().unwrap();
    assert_eq!(
        pieces.len(),
        summary.split_whitespace().count(),
        "{pieces:?}"
    );
    assert_eq!(pieces.concat().trim(), summary);
    check_progress(&events);
    // The text came before the result.
    let first_text = events.iter().position(|e| e.event == "summary").unwrap();
    assert!(first_text < events.len() - 1);
}

#[tokio::test]
async fn translate_streams_each_paragraph_when_the_client_accepts_events() {
    let app = app();
    let text = "First paragraph here.\n\nSecond paragraph here.\n\nThird one.";
    let (status, ctype, events) = stream(
        &app,
        "/v1/translate",
        Some("text/event-stream"),
        json!({"text": text, "title": "A headline", "to": ["ru", "hi"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let result = final_result(&events);
    // Every headline and paragraph, in order, as in the result.
    let mut expected = Vec::new();
    for t in result["translations"].as_array().unwrap() {
        let lang = t["language"].as_str().unwrap().to_string();
        expected.push((
            lang.clone(),
            "headline".to_string(),
            None,
            t["title"].as_str().unwrap().to_string(),
        ));
        for (i, p) in t["paragraphs"].as_array().unwrap().iter().enumerate() {
            expected.push((
                lang.clone(),
                "paragraph".into(),
                Some(i as u64),
                p.as_str().unwrap().to_string(),
            ));
        }
    }
    let got: Vec<(String, String, Option<u64>, String)> = events
        .iter()
        .filter(|e| e.event == "paragraph")
        .map(|e| {
            assert_eq!(e.data["source"], "article");
            (
                e.data["language"].as_str().unwrap().to_string(),
                e.data["part"].as_str().unwrap().to_string(),
                e.data["index"].as_u64(),
                e.data["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), 8);
    assert_eq!(got, expected);
    check_progress(&events);
    // Accept lists with parameters and other types count too.
    let (_, ctype, events) = stream(
        &app,
        "/v1/translate",
        Some("application/json;q=0.5, text/event-stream;q=1"),
        json!({"text": text, "to": ["ru"]}),
    )
    .await;
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    final_result(&events);
    // `"stream": false` wins over the header.
    let (status, ctype, _) = stream(
        &app,
        "/v1/translate",
        Some("text/event-stream"),
        json!({"text": text, "to": ["ru"], "stream": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("application/json"), "{ctype}");
}

#[tokio::test]
async fn digest_streams_the_summary_then_its_translations() {
    let app = app();
    let (status, _, events) = stream(
        &app,
        "/v1/digest",
        None,
        json!({"text": SAMPLE, "to": ["ru", "hi"], "stream": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let result = final_result(&events);
    assert_eq!(result["task"], "digest");
    let last_summary = events.iter().rposition(|e| e.event == "summary").unwrap();
    let first_paragraph = events.iter().position(|e| e.event == "paragraph").unwrap();
    assert!(last_summary < first_paragraph);
    let langs: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "paragraph" && e.data["part"] == "paragraph")
        .map(|e| {
            assert_eq!(e.data["source"], "summary");
            e.data["language"].as_str().unwrap()
        })
        .collect();
    assert_eq!(langs, ["ru", "hi"]);
    check_progress(&events);
}

#[tokio::test]
async fn streams_refuse_up_front_what_they_can_and_end_with_an_error_event_otherwise() {
    let app = app();
    // Refused before streaming: plain JSON errors.
    let (status, v) = post(&app, "/v1/summarize", json!({"text": " ", "stream": true})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "empty_text");
    let body = json!({"text": "One. Two.", "to": ["xx"], "stream": true});
    let (status, v) = post(&app, "/v1/translate", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "unsupported_language");
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!([{"text": "One. Two.", "stream": true}, {"text": "Three. Four."}]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(code(&v), "invalid_request");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("one article"));
    let (status, ctype, _) = stream(
        &app,
        "/v1/summarize",
        Some("text/event-stream"),
        json!([{"text": "One. Two."}]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(ctype.starts_with("application/json"));
    // Failing once under way: the last event is the error, with its status.
    let (status, _, events) = stream(
        &app,
        "/v1/summarize",
        None,
        json!({"text": "The talks went on. FAKE_LOOP", "strict": true, "stream": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.data["status"], 422);
    assert_eq!(last.data["error"]["code"], "flagged");
    assert!(events.iter().all(|e| e.event != "result"));
    let (_, _, events) = stream(
        &app,
        "/v1/translate",
        None,
        json!({"text": "Fine first.\n\nThis one FAKE_ERROR.", "to": ["ru"], "stream": true}),
    )
    .await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.data["status"], 500);
    // The paragraph before the failure was delivered.
    assert_eq!(
        events.iter().filter(|e| e.event == "paragraph").count(),
        1,
        "{events:?}"
    );
    // And the server serves on.
    let (status, _) = post(&app, "/v1/summarize", json!({"text": "One more. Fine."})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_stream_past_its_deadline_ends_with_a_timeout_event() {
    let app = router(state(ServerLimits {
        max_concurrency: 1,
        timeout: std::time::Duration::from_millis(300),
        ..limits()
    }));
    let started = std::time::Instant::now();
    let (status, _, events) = stream(
        &app,
        "/v1/summarize",
        None,
        json!({"text": slow_article(200), "stream": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.data["status"], 504);
    assert_eq!(last.data["error"]["code"], "timeout");
    assert!(events.iter().any(|e| e.event == "summary"), "{events:?}");
    let (status, _, v) = send(&app, summarize_request("Short one. Done.")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn a_client_that_closes_its_stream_stops_its_generation_and_frees_its_slot() {
    let app = router(state(ServerLimits {
        max_concurrency: 1,
        queue_depth: 1,
        ..limits()
    }));
    let before = tokens_generated(&metrics_text(&app).await, "fake-stream");
    let body = json!({"text": slow_article(200), "model": "fake-stream", "stream": true});
    let req = json_request("/v1/summarize", &body);
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // Read until some summary text has arrived, then hang up.
    let mut seen = String::new();
    while !seen.contains("event: summary") {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    drop(body);
    assert_abandoned_work_stopped(&app, "fake-stream", before).await;
}

#[tokio::test]
async fn the_result_cache_answers_repeated_work_without_running_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let cache = precis_core::cache::ResultCache::open(
        &precis_core::database::Database::Sqlite(dir.path().join("results.sqlite3")),
        precis_core::cache::CacheLimits::default(),
    )
    .unwrap();
    let services = services("fake-cached", &limits(), Some(Arc::new(cache)));
    let app = router(AppState::new(services.engine, limits()));
    let tokens = |m: &str| tokens_generated(m, "fake-cached");
    let body = json!({"text": SAMPLE, "to": ["ru", "hi"]});
    let before = tokens(&metrics_text(&app).await);
    let (status, first) = post(&app, "/v1/digest", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // The summary, and the headline and summary in two languages: 5 calls.
    assert_eq!(first["cache"], json!({"hits": 0, "misses": 5}));
    let metrics = metrics_text(&app).await;
    let ran = tokens(&metrics);
    assert!(ran > before);
    assert!(
        metrics.contains("precis_cache_misses_total{model=\"fake-cached\"} 5"),
        "{metrics}"
    );
    // The same again: all from the cache, no token generated, the same result.
    let (status, second) = post(&app, "/v1/digest", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["cache"], json!({"hits": 5, "misses": 0}));
    let metrics = metrics_text(&app).await;
    assert_eq!(tokens(&metrics), ran);
    assert!(
        metrics.contains("precis_cache_hits_total{model=\"fake-cached\"} 5"),
        "{metrics}"
    );
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("cache");
        v
    };
    assert_eq!(strip(first.clone()), strip(second));
    // A changed parameter misses: the summary runs again. The fake writes
    // the same summary at this length, so its translation (and the
    // headline's) are hits.
    let (_, third) = post(
        &app,
        "/v1/digest",
        json!({"text": SAMPLE, "to": ["ru"], "length": {"words": 20}}),
    )
    .await;
    assert_eq!(third["summary"]["text"], first["summary"]["text"]);
    assert_eq!(third["cache"], json!({"hits": 2, "misses": 1}), "{third}");
    // A streamed request answered from the cache still streams its text.
    let (events, pieces) = streamed_sample_summary(&app).await;
    let result = final_result(&events);
    assert_eq!(result["cache"], json!({"hits": 1, "misses": 0}));
    assert_eq!(pieces.concat(), first["summary"]["text"].as_str().unwrap());
}

/// A server with batch jobs kept in `db`, its webhooks retried after 50 ms
/// and signed with `s3cret`, loopback allowed for feeds and webhooks.
fn jobs_app(db: &std::path::Path) -> axum::Router {
    jobs_app_with(db, limits())
}

/// [`jobs_app`] under other limits.
fn jobs_app_with(db: &std::path::Path, limits: ServerLimits) -> axum::Router {
    router(jobs_state(db, limits))
}

/// The state of [`jobs_app_with`].
fn jobs_state(db: &std::path::Path, limits: ServerLimits) -> AppState {
    let mut services = services("fake", &limits, None);
    services.database = Some(precis_core::database::Database::Sqlite(db.to_path_buf()));
    let mut state = AppState::new(Arc::clone(&services.engine), limits);
    let settings = precis_service::jobs::JobSettings {
        parallel: 2,
        admission: Arc::clone(&state.admission),
        item_timeout: state.limits.timeout,
        fetch: precis_service::fetch::FetchPolicy {
            allow: vec!["127.0.0.1".parse().unwrap()],
            ..precis_service::fetch::FetchPolicy::default()
        },
        webhook_secret: Some("s3cret".into()),
        retry_delay: std::time::Duration::from_millis(50),
        max_active_per_caller: 3,
        retention: None,
        lease: std::time::Duration::from_secs(30),
        run_items: true,
    };
    state.jobs = Some(services.start_jobs(settings).unwrap());
    state
}

/// Posts a job; gives the status, the `Location` and the answer.
async fn post_job(
    app: &axum::Router,
    body: Value,
    key: Option<&str>,
) -> (StatusCode, String, Value) {
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/jobs")
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let req = req
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let (status, headers, v) = send(app, req).await;
    let location = headers
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, location, v)
}

/// Polls a job until it has ended (10 s at most).
async fn finished_job(app: &axum::Router, id: &str) -> Value {
    job_when(app, id, |v| {
        ["done", "failed", "cancelled"].contains(&v["state"].as_str().unwrap_or_default())
    })
    .await
}

#[tokio::test]
async fn a_job_runs_in_the_background_once_per_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let app = jobs_app(&dir.path().join("precis.sqlite3"));
    let body = json!({"task": "summarize", "items": [
        {"text": "Ministers met on Tuesday. They agreed on a plan.", "id": "a"},
        {"text": "  "},
        {"text": "The talks resume in June. Both sides said so.", "id": "c"},
    ]});
    let (status, location, v) = post_job(&app, body.clone(), Some("weekly-42")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(v["progress"]["total"], 3);
    // The same key again: the same job, nothing new.
    let (status, _, again) = post_job(&app, body.clone(), Some("weekly-42")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], id.as_str());
    let done = finished_job(&app, &id).await;
    assert!(done.get("output").is_none(), "no format was asked for");
    let results = done["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["result"]["id"], "a");
    assert_eq!(results[1]["status"], 422);
    assert_eq!(results[1]["error"]["code"], "empty_text");
    assert_eq!(results[2]["result"]["id"], "c");
    let db = rusqlite::Connection::open(dir.path().join("precis.sqlite3")).unwrap();
    let jobs: i64 = db
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 1, "the repeated post made a second job");
    // Another key (or none) is another job.
    let (status, _, other) = post_job(&app, body, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(other["id"], id.as_str());
}

/// The engine, not each transport, refuses an article over the server's
/// character limit and fills in a digest's default targets: a job's item
/// gets the same code and the same languages as a request would.
#[tokio::test]
async fn job_items_meet_the_same_limits_and_defaults_as_requests() {
    let dir = tempfile::tempdir().unwrap();
    let app = jobs_app(&dir.path().join("precis.sqlite3"));
    let long = "Ministers met again. ".repeat(2_000);
    let (status, _, v) = post_job(
        &app,
        json!({"items": [{"text": long}, {"text": SAMPLE, "id": "ok"}]}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let done = finished_job(&app, v["id"].as_str().unwrap()).await;
    let results = done["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 422, "{done}");
    assert_eq!(results[0]["error"]["code"], "text_too_long");
    let (status, single) = post(&app, "/v1/digest", json!({"text": long})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(single["error"]["message"], results[0]["error"]["message"]);
    // No `to`: the languages the routed models write, Russian and Hindi first.
    let languages = |result: &Value| -> Vec<String> {
        result["translations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["language"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(languages(&results[1]["result"]), ["ru", "hi"], "{done}");
    let (_, models) = call(&app, "GET", "/v1/models", Vec::new()).await;
    assert_eq!(models["default_targets"], json!(["ru", "hi"]));
}

/// Jobs and their idempotency keys are the caller's own: another API key
/// neither gets a job back by reusing a key nor sees it by id, and a key
/// reused for a different request is refused.
#[tokio::test]
async fn jobs_and_idempotency_keys_are_scoped_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = jobs_state(&dir.path().join("precis.sqlite3"), limits());
    state.api_keys = ApiKeys::new(["alice-key", "bob-key"]);
    let app = router(state);
    let job = |key: &str, method: &str, uri: &str, idem: Option<&str>, body: &Value| {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"));
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        req.body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    };
    let body = json!({"task": "summarize", "items": [{"text": "Ministers met. They agreed."}]});
    let (status, _, alice) = send(
        &app,
        job("alice-key", "POST", "/v1/jobs", Some("k1"), &body),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{alice}");
    let id = alice["id"].as_str().unwrap().to_string();
    // The same key from another caller is another job.
    let (status, _, bob) = send(&app, job("bob-key", "POST", "/v1/jobs", Some("k1"), &body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{bob}");
    assert_ne!(bob["id"], id.as_str());
    // Nobody else sees or cancels Alice's job.
    let uri = format!("/v1/jobs/{id}");
    for method in ["GET", "DELETE"] {
        let (status, _, v) = send(&app, job("bob-key", method, &uri, None, &json!({}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}: {v}");
    }
    let (status, _, v) = send(&app, job("alice-key", "GET", &uri, None, &json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // Alice's retry gets her job; her key on another request is refused.
    let (status, _, again) = send(
        &app,
        job("alice-key", "POST", "/v1/jobs", Some("k1"), &body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], id.as_str());
    let other = json!({"task": "summarize", "items": [{"text": "Something else entirely."}]});
    let (status, _, v) = send(
        &app,
        job("alice-key", "POST", "/v1/jobs", Some("k1"), &other),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(code(&v), "idempotency_key_reused");
}

/// One caller cannot queue jobs without end: past the cap (3 here) a new
/// job gets 429 with `Retry-After`, and a slot comes back when one ends.
#[tokio::test]
async fn a_caller_past_the_job_cap_is_told_to_wait() {
    let dir = tempfile::tempdir().unwrap();
    let app = jobs_app(&dir.path().join("precis.sqlite3"));
    let slow = json!({"task": "summarize", "items": [{"text": "FAKE_SLOW one two three four five six seven eight nine ten. And more words here."}]});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, _, v) = post_job(&app, slow.clone(), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let req = Request::builder()
        .method("POST")
        .uri("/v1/jobs")
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&slow).unwrap()))
        .unwrap();
    let (status, headers, v) = send(&app, req).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(code(&v), "queue_full");
    assert_eq!(headers["retry-after"], "30");
    let (status, _) = call(&app, "DELETE", &format!("/v1/jobs/{}", ids[0]), Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, v) = post_job(&app, slow, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    for id in &ids[1..] {
        call(&app, "DELETE", &format!("/v1/jobs/{id}"), Vec::new()).await;
    }
}

#[tokio::test]
async fn accepted_jobs_survive_a_restart_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("precis.sqlite3");
    // Accepted by a server that stopped before working on it.
    let store =
        precis_service::jobs::JobStore::open(&precis_core::database::Database::Sqlite(db.clone()))
            .unwrap();
    let request: precis_service::jobs::JobRequest =
        serde_json::from_value(json!({"task": "summarize"})).unwrap();
    let articles = vec![
        Ok(precis_core::task::Article {
            text: "Ministers met on Tuesday. They agreed on a plan.".into(),
            ..Default::default()
        }),
        Ok(precis_core::task::Article {
            text: "The talks resume in June. Both sides said so.".into(),
            ..Default::default()
        }),
    ];
    let created = store.create(&request, articles, "", None, 8).unwrap();
    let precis_service::jobs::Created::New(id) = created else {
        panic!("{created:?}");
    };
    drop(store);
    // A new server on the same database takes it up.
    let app = jobs_app(&db);
    let done = finished_job(&app, &id).await;
    assert_eq!(done["state"], "done");
    assert_eq!(done["progress"], json!({"done": 2, "total": 2}));
    assert!(done["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == 200));
    // And the next server still knows it.
    let app = jobs_app(&db);
    let (status, v) = call(&app, "GET", &format!("/v1/jobs/{id}"), Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["state"], "done");
}

/// Webhook calls received: (timestamp, signature) and body.
type HookCalls = Arc<std::sync::Mutex<Vec<((String, String), Vec<u8>)>>>;

/// A local server: a feed at /feed.rss, and a webhook at /hook that fails
/// its first call with 500 and records every call's signature and body.
async fn hook_server() -> (String, HookCalls) {
    use axum::routing::{get, post};
    let calls: HookCalls = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let feed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/feeds/basin-weekly.rss"
    ))
    .unwrap();
    let recorded = Arc::clone(&calls);
    let app = axum::Router::new()
        .route("/feed.rss", get(move || async move { feed }))
        .route(
            "/hook",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default()
                    };
                    let signed = (header("x-precis-timestamp"), header("x-precis-signature"));
                    let mut calls = recorded.lock().unwrap();
                    calls.push((signed, body.to_vec()));
                    if calls.len() == 1 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                },
            ),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, calls)
}

#[tokio::test]
async fn a_feed_job_ends_with_a_signed_webhook_retried_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let app = jobs_app(&dir.path().join("precis.sqlite3"));
    let (base, calls) = hook_server().await;
    let (status, _, v) = post_job(
        &app,
        json!({"feed_url": format!("{base}/feed.rss"), "to": ["ru"], "webhook": format!("{base}/hook"), "format": "html"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = finished_job(&app, &id).await;
    assert_eq!(done["task"], "digest");
    assert_eq!(done["progress"]["total"], 3);
    // The newsletter, rendered from the stored results.
    let html = done["output"].as_str().unwrap();
    assert_eq!(html.matches("<article>").count(), 3, "{html}");
    assert_eq!(html.matches("<section lang=\"ru\">").count(), 3);
    // Delivered on the second try.
    let started = std::time::Instant::now();
    loop {
        let (_, v) = call(&app, "GET", &format!("/v1/jobs/{id}"), Vec::new()).await;
        if v["webhook"]["delivered"] == true {
            assert_eq!(v["webhook"]["attempts"], 2, "{v}");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for ((timestamp, signature), body) in &calls {
        // Signed with the time it was sent, so a replay can be told apart.
        let sent_at: u64 = timestamp.parse().unwrap();
        assert!(now.abs_diff(sent_at) < 60, "{timestamp}");
        let expected = precis_service::jobs::signature("s3cret", sent_at, body);
        assert_eq!(signature, &expected);
        assert_ne!(
            signature,
            &precis_service::jobs::signature("s3cret", sent_at + 1, body)
        );
        let sent: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(sent["id"], id.as_str());
        assert_eq!(sent["state"], "done");
        assert_eq!(sent["results"].as_array().unwrap().len(), 3);
    }
}

#[tokio::test]
async fn bad_jobs_are_refused_and_unknown_ones_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let app = jobs_app(&dir.path().join("precis.sqlite3"));
    for (body, code_for) in [
        (
            json!({"items": [{"text": "x"}], "feed_url": "https://news.example/f"}),
            "invalid_request",
        ),
        (json!({}), "invalid_request"),
        (json!({"items": []}), "empty_batch"),
        (
            json!({"items": [{"text": "x"}], "webhook": "ftp://x/y"}),
            "invalid_request",
        ),
        (json!({"feed_url": "file:///etc/passwd"}), "invalid_request"),
        (
            json!({"task": "translate", "items": [{"text": "x"}]}),
            "no_target_language",
        ),
        (json!({"items": [{"txt": "x"}]}), "unknown_field"),
    ] {
        let expected = code_for;
        let (status, _, v) = post_job(&app, body.clone(), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(code(&v), expected, "{body}");
    }
    let (status, v) = call(&app, "GET", "/v1/jobs/nope", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&v), "not_found");
    // A feed or webhook written as a non-public address (not allowed
    // here) is refused at once, naming the rule and the flag.
    for body in [
        json!({"feed_url": "http://10.255.255.1/feed"}),
        json!({"feed_url": "http://[64:ff9b::a00:5]/feed"}),
        json!({"feed_url": "https://[::ffff:169.254.169.254]/latest"}),
        json!({"items": [{"text": "x"}], "webhook": "http://192.168.1.10/hook"}),
        json!({"items": [{"text": "x"}], "webhook": "http://[fd00::1]:8080/hook"}),
    ] {
        let (status, _, v) = post_job(&app, body.clone(), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("not a public address") && message.contains("--allow-address"),
            "{message}"
        );
    }
    // An allowed one is accepted.
    let (status, _, _) = post_job(
        &app,
        json!({"items": [{"text": "x"}], "webhook": "http://127.0.0.1:9/hook"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

/// Polls a job until `ready` holds for it (10 s at most).
async fn job_when(app: &axum::Router, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let (status, v) = call(app, "GET", &format!("/v1/jobs/{id}"), Vec::new()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        if ready(&v) {
            return v;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_webhook_that_never_answers_delays_no_other_job() {
    let dir = tempfile::tempdir().unwrap();
    let app = jobs_app(&dir.path().join("precis.sqlite3"));
    // Accepts connections and never answers (the webhook call hangs until
    // the fetch time limit, 20 s, four times).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let article = json!({"text": "Ministers met on Tuesday. They agreed on a plan."});
    let (status, _, v) = post_job(
        &app,
        json!({"task": "summarize", "items": [article], "webhook": hook}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let first = v["id"].as_str().unwrap().to_string();
    assert_eq!(finished_job(&app, &first).await["state"], "done");
    let started = std::time::Instant::now();
    let (_, _, v) = post_job(&app, json!({"task": "summarize", "items": [article]}), None).await;
    let second = finished_job(&app, v["id"].as_str().unwrap()).await;
    assert_eq!(second["state"], "done");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the second job waited {:?} for the first one's webhook",
        started.elapsed()
    );
    let (_, first) = call(&app, "GET", &format!("/v1/jobs/{first}"), Vec::new()).await;
    assert_eq!(first["webhook"]["delivered"], false, "{first}");
}

#[tokio::test]
async fn an_interactive_request_is_served_while_a_batch_job_holds_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let app = jobs_app_with(
        &dir.path().join("precis.sqlite3"),
        ServerLimits {
            max_concurrency: 1,
            ..limits()
        },
    );
    // 16 items of about 250 ms each, on the server's one slot.
    let items: Vec<Value> = (0..16).map(|_| json!({"text": slow_article(4)})).collect();
    let (status, _, v) = post_job(&app, json!({"task": "summarize", "items": items}), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    job_when(&app, &id, |v| v["progress"]["done"].as_u64() >= Some(1)).await;
    let started = std::time::Instant::now();
    let (status, v) = call(
        &app,
        "POST",
        "/v1/summarize",
        serde_json::to_vec(&json!({"text": "Ministers met on Tuesday. They agreed on a plan."}))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let waited = started.elapsed();
    let (_, job) = call(&app, "GET", &format!("/v1/jobs/{id}"), Vec::new()).await;
    assert_eq!(
        job["state"], "running",
        "the request waited for the whole job ({waited:?})"
    );
    assert!(
        waited < std::time::Duration::from_secs(2),
        "the request waited {waited:?} behind batch items"
    );
    // The job still ends, every item done.
    let done = finished_job(&app, &id).await;
    assert_eq!(done["progress"], json!({"done": 16, "total": 16}));
}

#[tokio::test]
async fn a_cancelled_job_keeps_its_finished_items_and_runs_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let app = jobs_app(&dir.path().join("precis.sqlite3"));
    let items: Vec<Value> = (0..12).map(|_| json!({"text": slow_article(4)})).collect();
    let (_, _, v) = post_job(&app, json!({"task": "summarize", "items": items}), None).await;
    let id = v["id"].as_str().unwrap().to_string();
    job_when(&app, &id, |v| v["progress"]["done"].as_u64() >= Some(1)).await;
    let (status, v) = call(&app, "DELETE", &format!("/v1/jobs/{id}"), Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "cancelled");
    let kept = v["progress"]["done"].as_u64().unwrap();
    assert!((1..12).contains(&kept), "{v}");
    // Nothing more runs: the count stays where the cancellation left it
    // (an item finishing in the same instant may still be recorded).
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let (_, later) = call(&app, "GET", &format!("/v1/jobs/{id}"), Vec::new()).await;
    assert_eq!(later["state"], "cancelled");
    let after = later["progress"]["done"].as_u64().unwrap();
    assert!(after <= kept + 2 && after < 12, "{later}");
    assert!(later["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == 200));
    // Again: shown unchanged. Unknown: 404.
    let (status, again) = call(&app, "DELETE", &format!("/v1/jobs/{id}"), Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["state"], "cancelled");
    let (status, v) = call(&app, "DELETE", "/v1/jobs/nope", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&v), "not_found");
}

// LibreTranslate's API (`/translate`, `/detect`, `/languages`,
// `/frontend/settings`): its bodies, answers, keys and errors.

/// Sends `body` to `uri` with `content_type`; the status and JSON answer.
async fn send_as(
    app: &axum::Router,
    uri: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", content_type)
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, value) = send(app, req).await;
    (status, value)
}

fn cyrillic(text: &str) -> bool {
    text.chars().any(|c| ('\u{400}'..='\u{4ff}').contains(&c))
}

#[tokio::test]
async fn libretranslate_translates_a_string_an_array_and_a_form() {
    let app = app();
    let (status, v) = post(
        &app,
        "/translate",
        json!({"q": "The ministers met on Monday.", "source": "en", "target": "ru"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let text = v["translatedText"].as_str().unwrap();
    assert!(cyrillic(text) && !text.contains("ministers"), "{text}");
    assert!(v.get("detectedLanguage").is_none() && v.get("alternatives").is_none());

    // An array answers an array, in order; `auto` says what it found.
    let (status, v) = post(
        &app,
        "/translate",
        json!({"q": ["The talks ended.", "", "They met again."], "source": "auto", "target": "hi", "alternatives": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let items = v["translatedText"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[1], "");
    assert!(items[0]
        .as_str()
        .unwrap()
        .chars()
        .any(|c| ('\u{900}'..='\u{97f}').contains(&c)));
    assert_eq!(v["detectedLanguage"].as_array().unwrap().len(), 3);
    assert_eq!(v["detectedLanguage"][0]["language"], "en");
    assert_eq!(v["alternatives"], json!([[], [], []]));

    // A form, as LibreTranslate's Python client sends it, and a multipart form.
    let (status, v) = send_as(
        &app,
        "/translate",
        "application/x-www-form-urlencoded",
        "q=Hello+there.&source=en&target=ru",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(cyrillic(v["translatedText"].as_str().unwrap()));
    let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nHello there.\r\n--XyZ\r\nContent-Disposition: form-data; name=\"source\"\r\n\r\nen\r\n--XyZ\r\nContent-Disposition: form-data; name=\"target\"\r\n\r\nru\r\n--XyZ--\r\n";
    let (status, v) = send_as(
        &app,
        "/translate",
        "multipart/form-data; boundary=XyZ",
        multipart,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(cyrillic(v["translatedText"].as_str().unwrap()));
}

#[tokio::test]
async fn libretranslate_keeps_lines_and_markup() {
    let app = app();
    let q = "Ministers meet\nThe ministers met on Monday.\n\n  They agreed on three points.  \n";
    let (status, v) = post(
        &app,
        "/translate",
        json!({"q": q, "source": "en", "target": "ru"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let text = v["translatedText"].as_str().unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.len(), 5, "{text:?}");
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| (i == 2 || i == 4) == l.is_empty()),
        "{text:?}"
    );
    assert!(lines[3].starts_with("  ") && lines[3].ends_with("  ") && cyrillic(lines[3]));
    assert!(cyrillic(lines[0]) && cyrillic(lines[1]));

    let html = "<p class=\"green\">Hello!</p>\n<ul><li>Tom &amp; <b>Jerry</b></li></ul><script>var s = 'Hello';</script>";
    let (status, v) = post(
        &app,
        "/translate",
        json!({"q": html, "source": "en", "target": "ru", "format": "html"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let text = v["translatedText"].as_str().unwrap();
    let tags: Vec<&str> = text
        .split('<')
        .skip(1)
        .map(|t| t.split('>').next().unwrap())
        .collect();
    assert_eq!(
        tags,
        [
            "p class=\"green\"",
            "/p",
            "ul",
            "li",
            "b",
            "/b",
            "/li",
            "/ul",
            "script",
            "/script"
        ],
        "{text}"
    );
    assert!(text.contains("<script>var s = 'Hello';</script>"), "{text}");
    assert!(text.contains(" &amp; <b>"), "{text}");
    assert!(
        !text.contains("Hello!") && !text.contains("Jerry"),
        "{text}"
    );
}

#[tokio::test]
async fn libretranslate_errors_are_its_shape() {
    let app = app();
    let cases = [
        (
            json!({"source": "en", "target": "ru"}),
            "Invalid request: missing q parameter",
        ),
        (
            json!({"q": [], "source": "en", "target": "ru"}),
            "Invalid request: missing q parameter",
        ),
        (
            json!({"q": "Hi.", "target": "ru"}),
            "Invalid request: missing source parameter",
        ),
        (
            json!({"q": "Hi.", "source": "en"}),
            "Invalid request: missing target parameter",
        ),
        (
            json!({"q": "Hi.", "source": "en", "target": "es"}),
            "es is not supported",
        ),
        (
            json!({"q": "Hi.", "source": "xx", "target": "ru"}),
            "xx is not supported",
        ),
        (
            json!({"q": "Hi.", "source": "ru", "target": "hi"}),
            "Hindi (hi) is not available as a target language from Russian (ru)",
        ),
        (
            json!({"q": "Hi.", "source": "en", "target": "ru", "format": "xml"}),
            "xml format is not supported: use text or html",
        ),
        (
            json!({"q": "Hi.", "source": "en", "target": "ru", "alternatives": "many"}),
            "Invalid request: alternatives parameter is not a number",
        ),
        (
            json!({"q": [1, 2], "source": "en", "target": "ru"}),
            "Invalid request: q must be a string or an array of strings",
        ),
        (
            json!({"q": "x".repeat(20_001), "source": "en", "target": "ru"}),
            "the text has 20001 characters; at most 20000 are accepted per article (--max-chars)",
        ),
    ];
    for (body, message) in cases {
        let (status, v) = post(&app, "/translate", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v, json!({"error": message}), "{body}");
    }
    for (content_type, body) in [
        ("application/json", "[1]"),
        ("application/json", "{"),
        ("text/csv", "q,source"),
    ] {
        let (status, v) = send_as(&app, "/translate", content_type, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    // A file in a multipart form, and a body over --max-body-bytes.
    let file = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nHello.\r\n--XyZ--\r\n";
    let (status, v) = send_as(
        &app,
        "/translate",
        "multipart/form-data; boundary=XyZ",
        file,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v["error"],
        "files are not translated here: send the text as `q`"
    );
    let huge = format!("q={}&source=en&target=ru", "a".repeat(2 * 1024 * 1024));
    let (status, v) = send_as(
        &app,
        "/translate",
        "application/x-www-form-urlencoded",
        &huge,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("--max-body-bytes"),
        "{v}"
    );
    // A model that fails is a 500 whose message says nothing internal.
    let (status, v) = post(
        &app,
        "/translate",
        json!({"q": "FAKE_ERROR here.", "source": "en", "target": "ru"}),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert!(!v["error"].as_str().unwrap().contains("FAKE"), "{v}");
}

#[tokio::test]
async fn libretranslate_keys_come_from_the_body_or_the_header() {
    let mut s = state(limits());
    s.api_keys = ApiKeys::new(["k-one"]);
    let app = router(s);
    let body = |key: Option<&str>| {
        let mut b = json!({"q": "Hello there.", "source": "en", "target": "ru"});
        if let Some(key) = key {
            b["api_key"] = json!(key);
        }
        b
    };
    let (status, v) = post(&app, "/translate", body(None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("API key"), "{v}");
    let (status, v) = post(&app, "/translate", body(Some("wrong"))).await;
    assert_eq!(
        (status, v),
        (StatusCode::FORBIDDEN, json!({"error": "Invalid API key"}))
    );
    let (status, v) = post(&app, "/translate", body(Some("k-one"))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = send_as(
        &app,
        "/detect",
        "application/x-www-form-urlencoded",
        "q=Hello+there&api_key=k-one",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _) = send_as(
        &app,
        "/detect",
        "application/x-www-form-urlencoded",
        "q=Hello+there&api_key=nope",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // `apiKey`, as the npm client sends it; the header, as precis's clients do.
    let mut camel = body(None);
    camel["apiKey"] = json!("k-one");
    let (status, v) = post(&app, "/translate", camel).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    for (key, expected) in [("k-one", StatusCode::OK), ("wrong", StatusCode::FORBIDDEN)] {
        let req = Request::builder()
            .method("POST")
            .uri("/translate")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(body(None).to_string()))
            .unwrap();
        let (status, _, _) = send(&app, req).await;
        assert_eq!(status, expected, "{key}");
    }
    // What a client reads before it has a key is open, as LibreTranslate's is.
    let (status, v) = call(&app, "GET", "/languages", Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = call(&app, "GET", "/frontend/settings", Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["apiKeys"].clone(), v["keyRequired"].clone()),
        (json!(true), json!(true))
    );
    // precis's own routes still want the header.
    let (status, _) = post(&app, "/v1/languages", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn libretranslate_languages_detect_and_settings() {
    let app = app();
    let (status, v) = call(&app, "GET", "/languages", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v,
        json!([
            {"code": "en", "name": "English", "targets": ["hi", "ru"]},
            {"code": "hi", "name": "Hindi", "targets": []},
            {"code": "ru", "name": "Russian", "targets": []},
        ])
    );
    let (status, v) = post(
        &app,
        "/detect",
        json!({"q": "Министры иностранных дел встретились в четверг в Йоханнесбурге."}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v[0]["language"], "ru", "{v}");
    assert!(v[0]["confidence"].as_f64().unwrap() > 50.0, "{v}");
    let (_, v) = post(
        &app,
        "/detect",
        json!({"q": "The foreign ministers met in Johannesburg on Thursday."}),
    )
    .await;
    assert_eq!(v[0]["language"], "en", "{v}");
    let (status, v) = post(&app, "/detect", json!({})).await;
    assert_eq!(
        (status, v),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "Invalid request: missing q parameter"})
        )
    );
    // Text already in the target language comes back as it is.
    let ru = "Министры иностранных дел встретились в четверг.";
    let (status, v) = post(
        &app,
        "/translate",
        json!({"q": ru, "source": "auto", "target": "ru"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["translatedText"], ru);
    assert_eq!(v["detectedLanguage"]["language"], "ru");
    // HTML's language is its text's, not its markup's.
    let html = format!("<div class=\"article-body\"><p>{ru}</p></div>");
    let (status, v) = post(
        &app,
        "/translate",
        json!({"q": html, "source": "auto", "target": "ru", "format": "html"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["translatedText"], &v["detectedLanguage"]["language"]),
        (&json!(html), &json!("ru"))
    );
    // Text in a language not translated into the target is refused, named.
    let (status, v) = post(
        &app,
        "/translate",
        json!({"q": ru, "source": "auto", "target": "hi"}),
    )
    .await;
    assert_eq!(
        (status, v),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "Hindi (hi) is not available as a target language from Russian (ru)"})
        )
    );

    let (status, v) = call(&app, "GET", "/frontend/settings", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["charLimit"], 20_000);
    assert_eq!(v["keyRequired"], false);
    assert_eq!(
        v["language"]["source"],
        json!({"code": "auto", "name": "Auto Detect"})
    );
    assert_eq!(v["language"]["target"]["code"], "ru");
}

#[tokio::test]
async fn no_compat_turns_libretranslate_off() {
    let mut s = state(limits());
    s.compat = false;
    let app = router(s);
    for (method, path) in [
        ("POST", "/translate"),
        ("POST", "/detect"),
        ("GET", "/languages"),
    ] {
        let (status, _) = call(&app, method, path, b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    // Nor does the API's description name them.
    let (_, doc) = call(&app, "GET", "/openapi.json", Vec::new()).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/translate") && !paths.contains_key("/translate"));
    assert!(!doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "libretranslate"));
}

/// An article given by `url` alone is fetched under the server's address
/// rules and its page's main text read; a refused address is
/// `unreadable_url`, and text given with a `url` is used as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_article_can_be_given_by_its_url() {
    use axum::routing::get;
    let page = format!(
        "<html lang=\"en\"><head><title>Ministers meet</title></head><body><nav>Home | World</nav><article><h1>Ministers meet</h1>{}</article></body></html>",
        SAMPLE
            .split("\n\n")
            .map(|p| format!("<p>{p}</p>"))
            .collect::<String>()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let pages = axum::Router::new().route(
        "/story",
        get(move || async move { axum::response::Html(page) }),
    );
    tokio::spawn(async move { axum::serve(listener, pages).await.unwrap() });

    let (status, v) = post(
        &app(),
        "/v1/summarize",
        json!({"url": format!("{base}/story")}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(code(&v), "unreadable_url");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-address"),
        "{v}"
    );

    let mut s = state(limits());
    s.fetch.allow = vec!["127.0.0.1".parse().unwrap()];
    let app = router(s);
    let (status, v) = post(
        &app,
        "/v1/digest",
        json!({"url": format!("{base}/story"), "to": ["ru"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["url"], format!("{base}/story"));
    assert!(v["input"]["paragraphs_kept"].as_u64().unwrap() >= 3, "{v}");
    assert!(
        !v["summary"]["text"]
            .as_str()
            .unwrap()
            .contains("Home | World"),
        "{v}"
    );
    for url in [
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "gopher://x/",
    ] {
        let (status, v) = post(&app, "/v1/summarize", json!({ "url": url })).await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::UNPROCESSABLE_ENTITY, "unreadable_url"),
            "{url}: {v}"
        );
    }
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!({"url": format!("{base}/missing")}),
    )
    .await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unreadable_url"),
        "{v}"
    );
    let (status, v) = post(
        &app,
        "/v1/summarize",
        json!({"url": "http://127.0.0.1:9/x", "text": "Given text. It is used."}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = post(&app, "/v1/summarize", json!({})).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "empty_text"),
        "{v}"
    );
}

/// The page at `/`: served without a key, with a policy that allows its own
/// script and style (by hash) and requests to its origin only.
#[tokio::test]
async fn the_page_is_self_contained_and_locked_down() {
    let mut s = state(limits());
    s.api_keys = ApiKeys::new(["k-one"]);
    let app = router(s);
    let req = Request::builder().uri("/").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    let html = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(
        csp.contains("connect-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    // Nothing fetched from elsewhere: no external script, style, image or font.
    for outside in [
        "src=\"http",
        "href=\"http",
        "@import",
        "url(",
        "<link",
        "<iframe",
    ] {
        assert!(!html.contains(outside), "the page has {outside}");
    }
    // Every control has its label.
    for id in ["article", "url", "key", "length"] {
        assert!(
            html.contains(&format!("<label for=\"{id}\">")),
            "{id} has no label"
        );
    }
    insta::assert_snapshot!("page_html", html);
}

/// A full queue is LibreTranslate's 429, with `Retry-After`, in its shape.
#[tokio::test]
async fn libretranslate_past_the_queue_is_429() {
    let app = router(state(ServerLimits {
        max_concurrency: 1,
        queue_depth: 1,
        ..limits()
    }));
    let slow: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
    let body =
        json!({"q": format!("FAKE_SLOW {}.", slow.join(" ")), "source": "en", "target": "ru"});
    let mut handles = Vec::new();
    for _ in 0..5 {
        let app = app.clone();
        let req = json_request("/translate", &body);
        handles.push(tokio::spawn(async move { send(&app, req).await }));
    }
    let mut refused = 0;
    for h in handles {
        let (status, headers, v) = h.await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
            assert!(v["error"].is_string(), "{v}");
            assert!(headers.contains_key("retry-after"));
        } else {
            assert_eq!(status, StatusCode::OK, "{v}");
        }
    }
    assert_eq!(refused, 3);
}
