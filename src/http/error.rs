//! The API's error format, `{"error": {"code": "...", "message": "..."}}`, and
//! the catalogue of codes. Every failure an HTTP caller can meet goes through
//! [`ApiError`]; a 5xx body says nothing internal (details go to the log).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::backend::BackendError;
use crate::engine::EngineError;
use crate::task::TaskError;

/// Error codes, with their HTTP status. The README's catalogue lists the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body is not valid JSON.
    MalformedJson,
    /// 400: the body is not valid UTF-8.
    InvalidUtf8,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists with another method.
    MethodNotAllowed,
    /// 413: the body is larger than the server accepts.
    PayloadTooLarge,
    /// 422: a field the endpoint does not know.
    UnknownField,
    /// 422: a field has the wrong type or value.
    InvalidRequest,
    /// 422: the text is empty (or only non-story paragraphs).
    EmptyText,
    /// 422: the article is not in English (declared by its source, or detected).
    NotEnglish,
    /// 422: the text has more characters than allowed.
    TextTooLong,
    /// 422: a batch's articles have more characters together than allowed.
    RequestTooLong,
    /// 422: a batch (array) with no articles.
    EmptyBatch,
    /// 422: a batch with more articles than allowed.
    BatchTooLarge,
    /// 422: the input does not fit the model and cannot be split.
    InputTooLong,
    /// 422: no present model writes this language.
    UnsupportedLanguage,
    /// 422: a language is listed twice.
    DuplicateLanguage,
    /// 422: translate without `to`.
    NoTargetLanguage,
    /// 422: the model is not one this server knows.
    UnknownModel,
    /// 422: strict mode and the output was flagged.
    Flagged,
    /// 401: no API key, or one the server does not know.
    Unauthorized,
    /// 429: every slot is busy and the queue is full (`Retry-After` says
    /// when to try again).
    QueueFull,
    /// 503: a known model cannot be loaded.
    ModelUnavailable,
    /// 503: the server is starting (models loading) or shutting down.
    NotReady,
    /// 504: the request ran past the server's time limit; its work was
    /// cancelled.
    Timeout,
    /// 500: something failed inside the server.
    Internal,
}

impl ErrorCode {
    /// The code as written in error bodies, e.g. `malformed_json`.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The HTTP status of this code.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            MalformedJson | InvalidUtf8 => StatusCode::BAD_REQUEST,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnknownField | InvalidRequest | EmptyText | NotEnglish | TextTooLong
            | RequestTooLong | EmptyBatch | BatchTooLarge | InputTooLong | UnsupportedLanguage
            | DuplicateLanguage | NoTargetLanguage | UnknownModel | Flagged => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Unauthorized => StatusCode::UNAUTHORIZED,
            QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ModelUnavailable | NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Timeout => StatusCode::GATEWAY_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The code.
    pub code: ErrorCode,
    /// A message for the caller: what went wrong and what to do.
    pub message: String,
    /// Seconds to wait before retrying (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "unsupported_language", "message": "unsupported language `xx`; supported: ru (Russian), hi (Hindi)"}}))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What an error body holds: its code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// The code and message, as an error body holds them.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.detail(),
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, after.into());
        }
        response
    }
}

/// The code for a task failure.
pub fn task_error_code(e: &TaskError) -> ErrorCode {
    match e {
        TaskError::EmptyText | TaskError::NothingLeft { .. } => ErrorCode::EmptyText,
        TaskError::NotEnglish { .. } => ErrorCode::NotEnglish,
        TaskError::UnsupportedLanguage { .. } | TaskError::SameLanguage(_) => {
            ErrorCode::UnsupportedLanguage
        }
        TaskError::DuplicateLanguage(_) => ErrorCode::DuplicateLanguage,
        TaskError::NoTargetLanguage => ErrorCode::NoTargetLanguage,
        TaskError::InputTooLong { .. } => ErrorCode::InputTooLong,
        TaskError::Backend(BackendError::ContextOverflow { .. }) => ErrorCode::InputTooLong,
        TaskError::Flagged(_) => ErrorCode::Flagged,
        TaskError::ModelUnavailable(_) => ErrorCode::ModelUnavailable,
        _ => ErrorCode::Internal,
    }
}

/// The code for an engine failure.
pub fn engine_error_code(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::UnknownModel(_) => ErrorCode::UnknownModel,
        EngineError::ModelUnavailable { .. } => ErrorCode::ModelUnavailable,
        EngineError::Task(t) => task_error_code(t),
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        EngineError::Task(e).into()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = engine_error_code(&e);
        match code {
            ErrorCode::Internal => {
                tracing::error!(error = %e, "request failed");
                ApiError::new(
                    code,
                    "the request failed inside the server; see the server log",
                )
            }
            ErrorCode::ModelUnavailable => {
                tracing::error!(error = %e, "model unavailable");
                ApiError::new(code, e.to_string())
            }
            _ => ApiError::new(code, e.to_string()),
        }
    }
}
