//! The REST API through the router (no socket), with the deterministic fake
//! backend: every documented error code, the result shape, and that no bad
//! input stops the server from serving.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use precis::backend::fake::FakeBackend;
use precis::backend::Backend;
use precis::engine::{Engine, EngineError, ModelLoader, Routing};
use precis::http::{router, AppState, ServerLimits};
use serde_json::{json, Value};
use tower::ServiceExt;

const SAMPLE: &str = include_str!("../examples/sample-article.txt");

struct FakeLoader;

impl ModelLoader for FakeLoader {
    fn canonical(&self, name: &str) -> Option<String> {
        ["fake", "fake-2", "broken"]
            .contains(&name)
            .then(|| name.to_string())
    }
    fn load(&self, id: &str) -> Result<Box<dyn Backend>, EngineError> {
        if id == "broken" {
            return Err(EngineError::ModelUnavailable {
                id: id.into(),
                reason: "file broken.gguf does not match its sha256".into(),
            });
        }
        Ok(Box::new(FakeBackend::new(id)))
    }
}

fn app() -> axum::Router {
    let engine = Engine::new(
        Arc::new(FakeLoader),
        Routing {
            summarizers: vec!["fake".into()],
            translators: vec!["fake".into()],
        },
    );
    engine.load_routed().unwrap();
    router(AppState {
        engine: Arc::new(engine),
        limits: ServerLimits {
            max_body_bytes: 1024 * 1024,
            max_chars: 20_000,
        },
        default_targets: vec!["ru".into(), "hi".into()],
    })
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
    let (status, v) = post(&app, "/v1/summarize", json!({"title": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "invalid_request");
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
