//! The REST API (axum only here): JSON in and out, one error format, a body
//! size limit, and the engine behind it. Work runs on blocking threads; a
//! client that goes away cancels its work.
//!
//! Routes: `POST /v1/summarize`, `POST /v1/translate`, `POST /v1/digest`,
//! `GET /v1/models`, `GET /health`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod error;

pub use error::{ApiError, ErrorCode};

use crate::backend::ModelInfo;
use crate::engine::Engine;
use crate::task::{
    normalise_languages, Article, CancelToken, GenerationOverrides, Length, Task, TaskOptions,
    TaskResult,
};

/// Server limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most characters in one article's text.
    pub max_chars: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            max_chars: 100_000,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The engine with the loaded models.
    pub engine: Arc<Engine>,
    /// Limits.
    pub limits: ServerLimits,
    /// Targets of a digest whose request has no `to`.
    pub default_targets: Vec<String>,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let limit = state.limits.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/summarize", post(summarize))
        .route("/v1/translate", post(translate))
        .route("/v1/digest", post(digest))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; see the README's REST reference",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

/// A JSON body with the API's own errors: invalid UTF-8 and malformed JSON are
/// 400, unknown fields and wrong types 422, an oversized body 413.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the request body is larger than this server accepts (see --max-body-bytes)",
                )
            } else {
                ApiError::new(
                    ErrorCode::MalformedJson,
                    format!("cannot read the body: {e}"),
                )
            }
        })?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// Parses a request body into `T`, with the API's error codes.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ApiError::new(
            ErrorCode::InvalidUtf8,
            format!(
                "the body is not valid UTF-8 (invalid byte at offset {}); send UTF-8 JSON",
                e.valid_up_to()
            ),
        ));
    }
    // Syntax first, as a whole document, so malformed JSON is always a 400
    // whatever the shape; then the shape, so a well-formed body of the wrong
    // shape is a 422.
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("unknown field") {
            ApiError::new(ErrorCode::UnknownField, msg)
        } else {
            ApiError::new(ErrorCode::InvalidRequest, msg)
        }
    })
}

/// `POST /v1/summarize` body.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SummarizeRequest {
    /// The article text.
    pub text: String,
    /// Its headline, when separate.
    #[serde(default)]
    pub title: Option<String>,
    /// Caller's id, echoed back.
    #[serde(default)]
    pub id: Option<String>,
    /// Summary length, `{"sentences": 3}` or `{"words": 60}`.
    #[serde(default)]
    pub length: Option<Length>,
    /// Language of the summary (default `en`).
    #[serde(default)]
    pub language: Option<String>,
    /// Model id (one this server knows).
    #[serde(default)]
    pub model: Option<String>,
    /// Drop non-story paragraphs (default true).
    #[serde(default)]
    pub clean: Option<bool>,
    /// Fail instead of returning flagged output.
    #[serde(default)]
    pub strict: Option<bool>,
    /// Generation overrides.
    #[serde(default)]
    pub generation: Option<GenerationOverrides>,
}

/// `POST /v1/translate` body.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TranslateRequest {
    /// The article text.
    pub text: String,
    /// Its headline, when separate.
    #[serde(default)]
    pub title: Option<String>,
    /// Caller's id, echoed back.
    #[serde(default)]
    pub id: Option<String>,
    /// Target languages, e.g. `["ru", "hi"]`.
    #[serde(default)]
    pub to: Vec<String>,
    /// Model id (one this server knows).
    #[serde(default)]
    pub model: Option<String>,
    /// Drop non-story paragraphs (default true).
    #[serde(default)]
    pub clean: Option<bool>,
    /// Fail instead of returning flagged output.
    #[serde(default)]
    pub strict: Option<bool>,
    /// Generation overrides.
    #[serde(default)]
    pub generation: Option<GenerationOverrides>,
}

/// `POST /v1/digest` body.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DigestRequest {
    /// The article text.
    pub text: String,
    /// Its headline, when separate.
    #[serde(default)]
    pub title: Option<String>,
    /// Caller's id, echoed back.
    #[serde(default)]
    pub id: Option<String>,
    /// Target languages (default: every language the translator writes).
    #[serde(default)]
    pub to: Option<Vec<String>>,
    /// Summary length.
    #[serde(default)]
    pub length: Option<Length>,
    /// Also translate the whole article.
    #[serde(default)]
    pub full: Option<bool>,
    /// Model id (one this server knows).
    #[serde(default)]
    pub model: Option<String>,
    /// Drop non-story paragraphs (default true).
    #[serde(default)]
    pub clean: Option<bool>,
    /// Fail instead of returning flagged output.
    #[serde(default)]
    pub strict: Option<bool>,
    /// Generation overrides.
    #[serde(default)]
    pub generation: Option<GenerationOverrides>,
}

struct Job {
    task: Task,
    article: Article,
    options: TaskOptions,
    model: Option<String>,
}

/// Cancels the job's token when the handler is dropped (the client went away).
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn run_job(state: AppState, job: Job) -> Result<Json<TaskResult>, ApiError> {
    let chars = job.article.text.chars().count();
    if chars > state.limits.max_chars {
        return Err(ApiError::new(
            ErrorCode::TextTooLong,
            format!(
                "the text has {chars} characters; this server accepts at most {} per article (--max-chars)",
                state.limits.max_chars
            ),
        ));
    }
    if let Some(m) = &job.model {
        if state.engine.canonical(m).is_none() {
            return Err(ApiError::new(
                ErrorCode::UnknownModel,
                format!("unknown model `{m}`: GET /v1/models lists the models this server knows"),
            ));
        }
    }
    let cancel = CancelToken::new();
    let guard = CancelOnDrop(cancel.clone());
    let engine = Arc::clone(&state.engine);
    let result = tokio::task::spawn_blocking(move || {
        engine.run(
            job.task,
            &job.article,
            &job.options,
            job.model.as_deref(),
            &cancel,
            &|_| {},
        )
    })
    .await
    .map_err(|e| {
        tracing::error!("task thread failed: {e}");
        ApiError::new(
            ErrorCode::Internal,
            "the request failed inside the server; see the server log",
        )
    })?;
    drop(guard);
    Ok(Json(result?))
}

fn options(
    clean: Option<bool>,
    strict: Option<bool>,
    generation: Option<GenerationOverrides>,
) -> TaskOptions {
    TaskOptions {
        clean: clean.unwrap_or(true),
        strict: strict.unwrap_or(false),
        generation: generation.unwrap_or_default(),
        ..TaskOptions::default()
    }
}

async fn summarize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SummarizeRequest>,
) -> Result<Json<TaskResult>, ApiError> {
    let mut opts = options(req.clean, req.strict, req.generation);
    opts.length = req.length;
    opts.summary_language = req.language.map(|l| l.trim().to_ascii_lowercase());
    let job = Job {
        task: Task::Summarize,
        article: Article {
            id: req.id,
            title: req.title,
            text: req.text,
        },
        options: opts,
        model: req.model,
    };
    run_job(state, job).await
}

async fn translate(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TranslateRequest>,
) -> Result<Json<TaskResult>, ApiError> {
    let mut opts = options(req.clean, req.strict, req.generation);
    opts.to = normalise_languages(&req.to);
    let job = Job {
        task: Task::Translate,
        article: Article {
            id: req.id,
            title: req.title,
            text: req.text,
        },
        options: opts,
        model: req.model,
    };
    run_job(state, job).await
}

async fn digest(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DigestRequest>,
) -> Result<Json<TaskResult>, ApiError> {
    let mut opts = options(req.clean, req.strict, req.generation);
    opts.to = match &req.to {
        Some(to) => normalise_languages(to),
        None => state.default_targets.clone(),
    };
    opts.length = req.length;
    opts.full = req.full.unwrap_or(false);
    let job = Job {
        task: Task::Digest,
        article: Article {
            id: req.id,
            title: req.title,
            text: req.text,
        },
        options: opts,
        model: req.model,
    };
    run_job(state, job).await
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

async fn health() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// `GET /v1/models` answer.
#[derive(Debug, Serialize)]
pub struct ModelsResponse {
    /// Loaded models.
    pub models: Vec<ModelInfo>,
    /// Languages a digest translates into when its request has no `to`.
    pub default_targets: Vec<String>,
}

async fn models(State(state): State<AppState>) -> Json<ModelsResponse> {
    Json(ModelsResponse {
        models: state.engine.loaded(),
        default_targets: state.default_targets.clone(),
    })
}

/// Serves the router on `addr` until SIGINT or SIGTERM, then finishes in-flight requests.
pub async fn serve(state: AppState, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
