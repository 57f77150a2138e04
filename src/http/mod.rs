//! The REST API (axum only here): JSON in and out, one error format, limits,
//! admission (slots and a bounded queue), API keys, CORS, request ids,
//! metrics, and the engine behind it. Work runs on blocking threads; a
//! client that goes away, or a request past its deadline, cancels its work.
//!
//! Routes: `POST /v1/summarize`, `POST /v1/translate`, `POST /v1/digest`
//! (one article, an array of them, or a stream of events: see [`stream`]),
//! `GET /v1/models`, `GET /health`, `GET /ready`, `GET /metrics`;
//! LibreTranslate's API (see [`compat`]) and the page at `/` (see [`page`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub mod compat;
pub mod docs;
pub mod error;
pub mod jobs;
pub mod ops;
pub mod page;
pub mod stream;

use error::FailureCauses;
pub use error::{ApiError, ErrorCode};
pub use ops::{ApiKeys, Readiness};
pub use precis_core::admission::{Admission, Slot};

use precis_backend::ModelInfo;
use precis_core::admission::{run_admitted, Priority, RunError};
use precis_core::engine::Engine;
use precis_core::task::{
    normalise_languages, Article, CancelToken, GenerationOverrides, Length, Task, TaskOptions,
    TaskRequest, TaskResult,
};

/// Server limits (the command line, the environment and the configuration
/// file set them: see `precis serve --help`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most characters in one article's text.
    pub max_chars: usize,
    /// Most characters in one request (a batch's articles together).
    pub max_request_chars: usize,
    /// Most articles in one batch request.
    pub max_batch: usize,
    /// Requests worked on at once.
    pub max_concurrency: usize,
    /// Requests that may wait for a slot.
    pub queue_depth: usize,
    /// Time a request may take, queueing included.
    pub timeout: Duration,
    /// Time a client has to send a request's headers, from the moment its
    /// connection is open or its previous request answered.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in.
    pub body_timeout: Duration,
    /// Connections open at once; one past it is closed as it comes.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    /// Sized for a small machine (2 cores): two requests at work (the
    /// model worker batches what they send), eight waiting.
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            max_chars: 100_000,
            max_request_chars: 400_000,
            max_batch: 64,
            max_concurrency: 2,
            queue_depth: 8,
            timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 256,
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
    /// Slots and queue (sized from `limits`).
    pub admission: Arc<Admission>,
    /// Whether the models are loaded and the server is not shutting down.
    pub ready: Readiness,
    /// Keys a request must carry; `None`: no key needed.
    pub api_keys: Option<ApiKeys>,
    /// Origins allowed by CORS (`*`: any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Batch jobs; `None`: this server keeps none (`/v1/jobs` is 404).
    pub jobs: Option<precis_service::jobs::JobQueue>,
    /// Whether the API is served; false (`--role worker`): only /health,
    /// /ready and /metrics.
    pub api_routes: bool,
    /// Whether LibreTranslate's routes are served (`--no-compat`: not).
    pub compat: bool,
    /// What the server may fetch (an article's `url`, a job's feed).
    pub fetch: precis_service::fetch::FetchPolicy,
}

impl AppState {
    /// A ready server over `engine` with `limits`, no keys and no CORS.
    pub fn new(engine: Arc<Engine>, limits: ServerLimits) -> Self {
        Self {
            admission: Admission::new(limits.max_concurrency, limits.queue_depth),
            engine,
            limits,
            ready: Readiness::new(true),
            api_keys: None,
            cors_origins: Vec::new(),
            jobs: None,
            api_routes: true,
            compat: true,
            fetch: precis_service::fetch::FetchPolicy::default(),
        }
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    ops::prometheus();
    let limit = state.limits.max_body_bytes;
    let keys = state.api_keys.clone();
    let cors = cors_layer(&state.cors_origins);
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(ops::metrics_text));
    if state.api_routes {
        app = app
            .route("/", get(page::page))
            .route("/openapi.json", get(docs::openapi_json))
            .route("/docs", get(docs::docs_page))
            .route("/v1/models", get(models))
            .route("/v1/languages", get(languages))
            .route("/v1/summarize", post(summarize))
            .route("/v1/translate", post(translate))
            .route("/v1/digest", post(digest))
            .route("/v1/jobs", post(jobs::create))
            .route("/v1/jobs/{id}", get(jobs::show).delete(jobs::cancel));
        if state.compat {
            app = compat::routes(app);
        }
    }
    let mut app = app
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state);
    if let Some(keys) = keys {
        app = app.layer(middleware::from_fn_with_state(keys, ops::authorize));
    }
    app = app.layer(middleware::from_fn(ops::track));
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    let request_id = HeaderName::from_static("x-request-id");
    app.layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// CORS for `origins` (`*`: any); `None` when there are none.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::AUTHORIZATION,
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            axum::http::header::RETRY_AFTER,
        ]);
    if origins.iter().any(|o| o == "*") {
        return Some(base.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| match HeaderValue::from_str(o.trim()) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = %o, "CORS origin is not a valid header value; left out");
                None
            }
        })
        .collect();
    Some(base.allow_origin(AllowOrigin::list(list)))
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

/// Reads a request's body, with the API's errors: 415 unless it is
/// declared JSON, 413 past the limit.
///
/// The content type is what stops a web page from making a visitor's
/// browser run work on a keyless local server: a cross-site request may
/// carry `text/plain`, a form or no type at all without the browser asking
/// first, never `application/json`.
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let json = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    read_bytes(req, state).await
}

/// Reads a request's body whatever its type: 408 when it is slower than
/// `--body-timeout-secs`, 413 past the limit.
async fn read_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let body_timeout = state.limits.body_timeout;
    let read = tokio::time::timeout(body_timeout, Bytes::from_request(req, state))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the body did not arrive within {} s (--body-timeout-secs): send it at once",
                    body_timeout.as_secs()
                ),
            )
        })?;
    read.map_err(|e| {
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
    })
}

/// A task route's body: one request object, or an array of them (a batch),
/// whose items are read one by one so that a bad item fails alone.
pub enum SingleOrBatch<T> {
    /// A single request.
    Single(T),
    /// A batch: each item, or why it cannot be read.
    Batch(Vec<Result<T, ApiError>>),
}

impl<T: DeserializeOwned + Send + 'static> FromRequest<AppState> for SingleOrBatch<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        let max_batch = state.limits.max_batch;
        if bytes.len() <= PARSE_INLINE_BYTES {
            return parse_single_or_batch(&bytes, max_batch);
        }
        // A large body is parsed on a blocking thread, a few at a time, so
        // that bodies built to be slow to parse hold no async thread.
        let _permit = PARSES
            .acquire()
            .await
            .map_err(|e| ApiError::internal(format!("parse permits closed: {e}")))?;
        tokio::task::spawn_blocking(move || parse_single_or_batch(&bytes, max_batch))
            .await
            .map_err(|e| ApiError::internal(format!("parse thread failed: {e}")))?
    }
}

/// Bodies up to this size are parsed where they are read.
const PARSE_INLINE_BYTES: usize = 64 * 1024;

/// Larger bodies parsed at once, each on a blocking thread.
static PARSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Parses a task route's body: an object, or an array of at most
/// `max_batch` objects (see [`SingleOrBatch`]). A longer array is refused
/// as it is read: its elements past the limit are counted, never built.
pub fn parse_single_or_batch<T: DeserializeOwned>(
    bytes: &[u8],
    max_batch: usize,
) -> Result<SingleOrBatch<T>, ApiError> {
    check_utf8(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let document = serde::de::DeserializeSeed::deserialize(DocumentReader { max_batch }, &mut de)
        .and_then(|d| de.end().map(|()| d))
        .map_err(malformed)?;
    match document {
        Document::One(value) => shape(value).map(SingleOrBatch::Single),
        Document::Many(items) => Ok(SingleOrBatch::Batch(items.into_iter().map(shape).collect())),
        Document::TooMany(count) => Err(ApiError::new(
            ErrorCode::BatchTooLarge,
            format!(
                "the array has {count} articles; this server accepts at most {max_batch} per request (--max-batch): split it"
            ),
        )),
    }
}

/// A task route's body as JSON: a value, the elements of an array, or how
/// many elements an array too long to take has.
enum Document {
    One(serde_json::Value),
    Many(Vec<serde_json::Value>),
    TooMany(usize),
}

/// Reads a [`Document`], building at most `max_batch` array elements.
struct DocumentReader {
    max_batch: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for DocumentReader {
    type Value = Document;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Document, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DocumentReader {
    type Value = Document;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object or an array of objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Document, A::Error> {
        let mut items = Vec::new();
        while items.len() < self.max_batch {
            match seq.next_element::<serde_json::Value>()? {
                Some(item) => items.push(item),
                None => return Ok(Document::Many(items)),
            }
        }
        let mut count = items.len();
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok(if count > self.max_batch {
            Document::TooMany(count)
        } else {
            Document::Many(items)
        })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Document, A::Error> {
        serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            .map(Document::One)
    }

    // Any other value is one document, refused by its shape.
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Document, E> {
        Ok(Document::One(v.into()))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Document, E> {
        Ok(Document::One(v.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Document, E> {
        Ok(Document::One(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Document, E> {
        Ok(Document::One(v.into()))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Document, E> {
        Ok(Document::One(v.into()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Document, E> {
        Ok(Document::One(serde_json::Value::Null))
    }
}

/// Parses a request body into `T`, with the API's error codes: invalid
/// UTF-8 and malformed JSON are 400, unknown fields and wrong types 422.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    shape(parse_value(bytes)?)
}

/// The body as a JSON document: 400 unless it is UTF-8 and well-formed
/// JSON, whatever its shape.
fn parse_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    check_utf8(bytes)?;
    serde_json::from_slice(bytes).map_err(malformed)
}

/// 400 unless the body is UTF-8.
fn check_utf8(bytes: &[u8]) -> Result<(), ApiError> {
    std::str::from_utf8(bytes).map(|_| ()).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidUtf8,
            format!(
                "the body is not valid UTF-8 (invalid byte at offset {}); send UTF-8 JSON",
                e.valid_up_to()
            ),
        )
    })
}

/// 400: the body is not well-formed JSON.
fn malformed(e: serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::MalformedJson,
        format!("the body is not valid JSON: {e}"),
    )
}

/// A well-formed document of the wrong shape is a 422.
fn shape<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("unknown field") {
            ApiError::new(ErrorCode::UnknownField, msg)
        } else {
            ApiError::new(ErrorCode::InvalidRequest, msg)
        }
    })
}

/// Defines a task route's body: the article's fields first, then the
/// route's own, then how to run it; every body shares the article's and the
/// running fields, written here once (a new option is added in one place).
/// serde's `flatten` would share them too, but does not combine with
/// `deny_unknown_fields`.
macro_rules! task_body {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$field_meta:meta])* $field:ident: $ty:ty,)* }
    ) => {
        #[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
        #[serde(deny_unknown_fields)]
        $(#[$meta])*
        pub struct $name {
            /// The article text (or give `url`).
            #[serde(default)]
            pub text: String,
            /// Where the article is published. Given alone, the server
            /// fetches the page (public addresses only, unless
            /// `--allow-address`) and reads its main text.
            #[serde(default)]
            pub url: Option<String>,
            /// Its headline, when separate.
            #[serde(default)]
            pub title: Option<String>,
            /// Caller's id, echoed back.
            #[serde(default)]
            pub id: Option<String>,
            /// The article's language (ISO 639-1, e.g. `ru`) when the
            /// caller knows it; else it is detected. An article not in
            /// English needs a translator that reads its language.
            #[serde(default)]
            pub from: Option<String>,
            $(
                $(#[$field_meta])*
                #[serde(default)]
                pub $field: $ty,
            )*
            /// Model id (one this server knows).
            #[serde(default)]
            pub model: Option<String>,
            /// Drop non-story paragraphs (default true).
            #[serde(default)]
            pub clean: Option<bool>,
            /// Fail instead of returning flagged output.
            #[serde(default)]
            pub strict: Option<bool>,
            /// Answer with Server-Sent Events as the work goes (as does
            /// `Accept: text/event-stream`); one article only.
            #[serde(default)]
            pub stream: Option<bool>,
            /// Generation overrides.
            #[serde(default)]
            pub generation: Option<GenerationOverrides>,
        }
    };
}

task_body! {
    /// `POST /v1/summarize` body.
    #[schema(example = json!({"text": "G20 foreign ministers met in Johannesburg on Thursday.\n\nThe talks ended without a joint statement.", "id": "story-1", "length": {"sentences": 2}}))]
    SummarizeRequest {
        /// Summary length, `{"sentences": 3}` or `{"words": 60}`.
        length: Option<Length>,
        /// Language of the summary (default `en`).
        language: Option<String>,
    }
}

task_body! {
    /// `POST /v1/translate` body.
    #[schema(example = json!({"text": "The talks ended without a joint statement.", "to": ["ru", "hi"]}))]
    TranslateRequest {
        /// Target languages, e.g. `["ru", "hi"]`.
        to: Vec<String>,
    }
}

task_body! {
    /// `POST /v1/digest` body.
    #[schema(example = json!({"text": "G20 foreign ministers met in Johannesburg on Thursday.\n\nThe talks ended without a joint statement.", "to": ["ru"], "length": {"words": 40}}))]
    DigestRequest {
        /// Target languages (default: `ru` and `hi`, those of them the models write; else every language they write).
        to: Option<Vec<String>>,
        /// Summary length.
        length: Option<Length>,
        /// Also translate the whole article.
        full: Option<bool>,
    }
}

/// A task route's request: the task, and whether to stream its answer.
struct TaskCall {
    request: TaskRequest,
    /// The request's `stream` field.
    stream: Option<bool>,
}

/// Refuses a call the engine would not run (too many characters, a model
/// it does not know) before it waits for a slot. Gives the text's characters.
fn check_call(state: &AppState, call: &TaskCall) -> Result<usize, ApiError> {
    Ok(state.engine.screen(&call.request)?)
}

/// An article given by its `url` alone: the page fetched under the
/// server's address rules (`--allow-address`) and its main text read; its
/// title and declared language fill the article's when they are not given.
/// Any other article is left as it is.
async fn fetch_article(state: &AppState, article: &mut Article) -> Result<(), ApiError> {
    let Some(url) = article
        .url
        .clone()
        .filter(|_| article.text.trim().is_empty())
    else {
        return Ok(());
    };
    let unreadable = |e: String| ApiError::new(ErrorCode::UnreadableUrl, e);
    // A few pages fetched and read at once, whatever the clients send.
    let _permit = FETCHES
        .acquire()
        .await
        .map_err(|e| ApiError::internal(format!("fetch permits closed: {e}")))?;
    let fetched = precis_service::fetch::fetch(&url, &state.fetch)
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    // Reading a page is parsing work: off the async threads.
    let page = tokio::task::spawn_blocking(move || {
        let html = String::from_utf8_lossy(&fetched.body);
        precis_service::sources::page_text(&html, Some(&fetched.url))
    })
    .await
    .map_err(|e| ApiError::internal(format!("page reading failed: {e}")))?
    .map_err(|e| unreadable(format!("{url}: {e}")))?;
    *article = page.fill(std::mem::take(article));
    Ok(())
}

/// Articles' pages fetched and read at once.
static FETCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// A slot for a request, and its deadline: 503 when not ready, 429 when
/// the queue is full, 504 when the wait outlasts the deadline.
async fn admit(state: &AppState) -> Result<(Arc<Slot>, Instant), ApiError> {
    if !state.ready.get() {
        return Err(ApiError::new(
            ErrorCode::NotReady,
            "the server is not ready (models loading, or shutting down); GET /ready says when it is",
        ));
    }
    let deadline = ops::deadline(state.limits.timeout);
    let slot = state
        .admission
        .enter(Priority::Interactive, Some(deadline))
        .await?;
    Ok((Arc::new(slot), deadline))
}

/// Runs `call` on a blocking thread until `deadline` (504 past it). The
/// work is cancelled when this future is dropped (the client went away) or
/// times out; `slot` is held by the work, so it is free again when the work
/// has stopped, not when the client has gone.
async fn execute(
    state: &AppState,
    call: TaskCall,
    deadline: Instant,
    slot: Arc<Slot>,
) -> Result<TaskResult, ApiError> {
    run_call(Arc::clone(&state.engine), call, deadline, slot, |_| {}).await
}

/// [`execute`], reporting the task's events to `events` as they come.
async fn run_call(
    engine: Arc<Engine>,
    call: TaskCall,
    deadline: Instant,
    slot: Arc<Slot>,
    events: impl Fn(precis_core::task::TaskEvent<'_>) + Send + Sync + 'static,
) -> Result<TaskResult, ApiError> {
    let cancel = CancelToken::new();
    let token = cancel.clone();
    let result = run_admitted(slot, Some(deadline), cancel, move || {
        engine.run(&call.request, &token, &events)
    })
    .await
    .map_err(|e| match e {
        RunError::Timeout => ops::timed_out(),
        RunError::Lost(e) => ApiError::internal(format!("task thread failed: {e}")),
    })?;
    Ok(result?)
}

/// A task route's body, made into the call.
trait TaskBody: DeserializeOwned + Send + 'static {
    fn into_call(self) -> TaskCall;
    /// The request's `stream` field.
    fn stream(&self) -> Option<bool>;
}

/// Answers a task route: one result, its stream of events, or a batch's
/// results in order.
async fn serve_task<T: TaskBody>(
    state: AppState,
    headers: HeaderMap,
    body: SingleOrBatch<T>,
) -> Result<axum::response::Response, ApiError> {
    match body {
        SingleOrBatch::Single(req) => {
            let mut call = req.into_call();
            fetch_article(&state, &mut call.request.article).await?;
            check_call(&state, &call)?;
            let streamed = stream::wanted(&headers, call.stream);
            let (slot, deadline) = admit(&state).await?;
            if streamed {
                let engine = Arc::clone(&state.engine);
                return stream::respond(engine, call, deadline, slot).await;
            }
            let result = execute(&state, call, deadline, slot).await?;
            Ok(Json(result).into_response())
        }
        SingleOrBatch::Batch(items) => {
            let asked = items
                .iter()
                .any(|item| matches!(item, Ok(req) if req.stream() == Some(true)));
            if asked || (stream::wanted(&headers, None) && !items.is_empty()) {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "streaming answers one article at a time: send the array without `stream` and without Accept: text/event-stream, or stream each article on its own",
                ));
            }
            run_batch(state, items).await
        }
    }
}

/// One article of a batch: its result or its error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"index": 1, "status": 422, "error": {"code": "empty_text", "message": "the article is empty: give it some text"}}))]
pub struct BatchItem {
    /// The article's position in the request's array.
    pub index: usize,
    /// The status the article alone would have got.
    pub status: u16,
    /// The result, when it worked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    /// The error, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<error::ErrorDetail>,
}

/// A batch's answer: one item per article, in the request's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"results": [{"index": 0, "status": 200, "result": {"schema_version": 1, "task": "summarize"}}, {"index": 1, "status": 422, "error": {"code": "empty_text", "message": "the article is empty: give it some text"}}]}))]
pub struct BatchResponse {
    /// The articles' results and errors.
    pub results: Vec<BatchItem>,
}

/// Runs a batch under one slot: every article at once (the model's worker
/// batches them), each with its own result or error.
async fn run_batch<T: TaskBody>(
    state: AppState,
    items: Vec<Result<T, ApiError>>,
) -> Result<Response, ApiError> {
    if items.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptyBatch,
            "the array has no articles: send at least one",
        ));
    }
    if items.len() > state.limits.max_batch {
        return Err(ApiError::new(
            ErrorCode::BatchTooLarge,
            format!(
                "the array has {} articles; this server accepts at most {} per request (--max-batch): split it",
                items.len(),
                state.limits.max_batch
            ),
        ));
    }
    let mut chars = 0;
    let mut calls: Vec<Result<TaskCall, ApiError>> = Vec::new();
    for item in items {
        let call = async {
            let mut call = item?.into_call();
            fetch_article(&state, &mut call.request.article).await?;
            chars += check_call(&state, &call)?;
            Ok(call)
        };
        calls.push(call.await);
    }
    if chars > state.limits.max_request_chars {
        return Err(ApiError::new(
            ErrorCode::RequestTooLong,
            format!(
                "the articles have {chars} characters together; this server accepts at most {} per request (--max-request-chars): split the array",
                state.limits.max_request_chars
            ),
        ));
    }
    let (slot, deadline) = admit(&state).await?;
    let mut results = Vec::new();
    let mut causes = Vec::new();
    let answers = run_calls(&state, calls, deadline, slot).await?;
    for (index, result) in answers.into_iter().enumerate() {
        results.push(match result {
            Ok(r) => BatchItem {
                index,
                status: 200,
                result: Some(r),
                error: None,
            },
            Err(e) => {
                causes.extend(e.cause.clone());
                BatchItem {
                    index,
                    status: e.code.status(),
                    result: None,
                    error: Some(e.detail()),
                }
            }
        });
    }
    let mut response = Json(BatchResponse { results }).into_response();
    response.extensions_mut().insert(FailureCauses(causes));
    Ok(response)
}

/// Runs calls under one slot, all at once (the model's worker batches
/// them), until `deadline`: each call's result or error, in order.
/// Dropping the future (the client went away) cancels every call's work.
async fn run_calls(
    state: &AppState,
    calls: Vec<Result<TaskCall, ApiError>>,
    deadline: Instant,
    slot: Arc<Slot>,
) -> Result<Vec<Result<TaskResult, ApiError>>, ApiError> {
    let mut set = tokio::task::JoinSet::new();
    for (index, call) in calls.into_iter().enumerate() {
        let (state, slot) = (state.clone(), Arc::clone(&slot));
        set.spawn(async move {
            let result = match call {
                Ok(call) => execute(&state, call, deadline, slot).await,
                Err(e) => Err(e),
            };
            (index, result)
        });
    }
    drop(slot);
    let mut results = Vec::new();
    while let Some(done) = set.join_next().await {
        results.push(done.map_err(|e| ApiError::internal(format!("batch task failed: {e}")))?);
    }
    results.sort_by_key(|(index, _)| *index);
    Ok(results.into_iter().map(|(_, result)| result).collect())
}

/// The call a body makes: its article, `options` with the fields every
/// body shares, and its model.
macro_rules! task_call {
    ($body:ident, $task:expr, $options:expr) => {
        TaskCall {
            request: TaskRequest {
                task: $task,
                article: Article {
                    id: $body.id,
                    title: $body.title,
                    text: $body.text,
                    url: $body.url,
                    language: $body.from,
                },
                options: TaskOptions {
                    clean: $body.clean.unwrap_or(true),
                    strict: $body.strict.unwrap_or(false),
                    generation: $body.generation.unwrap_or_default(),
                    ..$options
                },
                model: $body.model,
            },
            stream: $body.stream,
        }
    };
}

impl TaskBody for SummarizeRequest {
    fn stream(&self) -> Option<bool> {
        self.stream
    }

    fn into_call(self) -> TaskCall {
        let options = TaskOptions {
            length: self.length,
            summary_language: self
                .language
                .as_ref()
                .map(|l| l.trim().to_ascii_lowercase()),
            ..TaskOptions::default()
        };
        task_call!(self, Task::Summarize, options)
    }
}

impl TaskBody for TranslateRequest {
    fn stream(&self) -> Option<bool> {
        self.stream
    }

    fn into_call(self) -> TaskCall {
        let options = TaskOptions {
            to: Some(normalise_languages(&self.to)),
            ..TaskOptions::default()
        };
        task_call!(self, Task::Translate, options)
    }
}

impl TaskBody for DigestRequest {
    fn stream(&self) -> Option<bool> {
        self.stream
    }

    fn into_call(self) -> TaskCall {
        // Without `to`, the engine's default targets.
        let options = TaskOptions {
            to: self.to.as_deref().map(normalise_languages),
            length: self.length,
            full: self.full.unwrap_or(false),
            ..TaskOptions::default()
        };
        task_call!(self, Task::Digest, options)
    }
}

/// Summarizes an article, or each article of an array.
#[utoipa::path(post, path = "/v1/summarize", tag = "jobs",
    request_body(content = docs::SummarizeBody, description = "one article, or an array of them (a batch)"),
    responses(docs::JobResponses))]
async fn summarize(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SingleOrBatch<SummarizeRequest>,
) -> Result<axum::response::Response, ApiError> {
    serve_task(state, headers, body).await
}

/// Translates an article paragraph by paragraph, or each article of an array.
#[utoipa::path(post, path = "/v1/translate", tag = "jobs",
    request_body(content = docs::TranslateBody, description = "one article, or an array of them (a batch)"),
    responses(docs::JobResponses))]
async fn translate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SingleOrBatch<TranslateRequest>,
) -> Result<axum::response::Response, ApiError> {
    serve_task(state, headers, body).await
}

/// Summarizes an article and translates the summary (and, with `full`, the
/// article), or does so for each article of an array.
#[utoipa::path(post, path = "/v1/digest", tag = "jobs",
    request_body(content = docs::DigestBody, description = "one article, or an array of them (a batch)"),
    responses(docs::JobResponses))]
async fn digest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SingleOrBatch<DigestRequest>,
) -> Result<axum::response::Response, ApiError> {
    serve_task(state, headers, body).await
}

/// The state of the process (`/health`) or of its models (`/ready`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "ok"}))]
struct Health {
    status: &'static str,
}

/// Whether the process serves: 200 while it does.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "the process serves", body = Health)))]
async fn health() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// Whether the server takes work: 200 once the models are loaded, 503
/// while they load and while shutting down.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "ready", body = Health, example = json!({"status": "ready"})),
        (status = 503, description = "loading or shutting down", body = Health, example = json!({"status": "not_ready"})),
    ))]
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let (status, word) = ops::readiness_answer(state.ready.get());
    (status, Json(Health { status: word }))
}

/// `GET /v1/models` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"models": [{"kind": "chat", "id": "qwen2.5-coder-1.5b-instruct-q4_k_m", "revision": "main", "family": "gguf-qwen2", "context_length": 32768, "target_languages": ["en", "ru", "hi"]}], "default_targets": ["ru", "hi"]}))]
pub struct ModelsResponse {
    /// Loaded models.
    pub models: Vec<ModelInfo>,
    /// Languages a digest translates into when its request has no `to`.
    pub default_targets: Vec<String>,
}

/// `GET /v1/languages` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"languages": [{"code": "en", "name": "English", "models": ["qwen2.5-coder-1.5b-instruct-q4_k_m"]}, {"code": "hi", "name": "Hindi", "models": ["opus-mt-en-hi", "qwen2.5-coder-1.5b-instruct-q4_k_m"]}]}))]
pub struct LanguagesResponse {
    /// Every language a model of this server writes, by code.
    pub languages: Vec<precis_core::engine::LanguageOffer>,
}

/// The languages this server's models write (a summary's `language`, a
/// translation's `to`), each with the models that write it.
#[utoipa::path(get, path = "/v1/languages", tag = "models",
    responses((status = 200, description = "the languages and their models", body = LanguagesResponse)))]
async fn languages(State(state): State<AppState>) -> Json<LanguagesResponse> {
    Json(LanguagesResponse {
        languages: state.engine.languages(),
    })
}

/// The loaded models and the languages a digest translates into by default.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, description = "loaded models", body = ModelsResponse)))]
async fn models(State(state): State<AppState>) -> Json<ModelsResponse> {
    Json(ModelsResponse {
        models: state.engine.loaded(),
        default_targets: state.engine.default_targets(),
    })
}

/// Serves the router on `listener` until SIGINT or SIGTERM (or `stop`
/// resolves); then stops taking connections, answers /ready with 503, and
/// lets the requests in flight finish for up to `grace` before returning.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    grace: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let limits = state.limits.clone();
    let ready = state.ready.clone();
    let app = router(state);
    let signal = async move {
        tokio::select! {
            _ = shutdown_signal() => {},
            _ = stop => {},
        }
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no new connections; finishing requests in flight"
        );
        ready.set(false);
    };
    tokio::pin!(signal);
    // Each connection holds a permit: past `max_connections` a new one is
    // closed at once, before it can hold anything.
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset while
                    // queued: wait a little rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter!("precis_connections_refused_total").increment(1);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection =
            graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; exiting with requests still in flight");
        }
    }
    Ok(())
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
}
