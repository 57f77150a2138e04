//! The error kinds every transport reports: one closed set of codes, each
//! stable (scripts and clients match on them) and each with the HTTP status
//! it answers with. The HTTP layer and the CLI print the same codes; which
//! code a task or engine failure gets is decided here, once.

use serde::{Deserialize, Serialize};

use crate::engine::EngineError;
use crate::task::TaskError;
use precis_backend::BackendError;

/// Error codes, with the HTTP status each answers with. The README's
/// catalogue lists the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 413: the body is larger than the server accepts.
    PayloadTooLarge,
    /// 415: a body that is not declared `Content-Type: application/json`
    /// (what a browser may send cross-site without asking first).
    UnsupportedMediaType,
    /// 422: a field the endpoint does not know.
    UnknownField,
    /// 422: a field has the wrong type or value.
    InvalidRequest,
    /// 422: the text is empty (or only non-story paragraphs).
    EmptyText,
    /// 422: the article is not in English (declared by its source, or
    /// detected) and no present translator reads its language.
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
    /// 422: an `Idempotency-Key` used before for a different request.
    IdempotencyKeyReused,
    /// 422: an article's `url` cannot be fetched (not allowed, not
    /// reachable, an error status) or has no article text.
    UnreadableUrl,
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

    /// The HTTP status this code answers with. It lives here, beside the
    /// code, because it is part of the code's contract beyond HTTP routes:
    /// a batch job's items and a stream's error events carry the status each
    /// would have had on its own.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MalformedJson | InvalidUtf8 => 400,
            NotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            UnknownField | InvalidRequest | EmptyText | NotEnglish | TextTooLong
            | RequestTooLong | EmptyBatch | BatchTooLarge | InputTooLong | UnsupportedLanguage
            | DuplicateLanguage | NoTargetLanguage | UnknownModel | Flagged
            | IdempotencyKeyReused | UnreadableUrl => 422,
            Unauthorized => 401,
            QueueFull => 429,
            ModelUnavailable | NotReady => 503,
            Timeout => 504,
            Internal => 500,
        }
    }
}

/// What an error body holds: its code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl TaskError {
    /// The code this failure is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            TaskError::TextTooLong { .. } => ErrorCode::TextTooLong,
            TaskError::EmptyText | TaskError::NothingLeft { .. } => ErrorCode::EmptyText,
            TaskError::NotEnglish { .. } => ErrorCode::NotEnglish,
            TaskError::UnsupportedLanguage { .. } | TaskError::SameLanguage { .. } => {
                ErrorCode::UnsupportedLanguage
            }
            TaskError::DuplicateLanguage(_) => ErrorCode::DuplicateLanguage,
            TaskError::NoTargetLanguage => ErrorCode::NoTargetLanguage,
            TaskError::InputTooLong { .. } | TaskError::Unreducible(_) => ErrorCode::InputTooLong,
            TaskError::Backend(BackendError::ContextOverflow { .. }) => ErrorCode::InputTooLong,
            // Any other backend failure is a fault of the model code, not of
            // the request.
            TaskError::Backend(_) => ErrorCode::Internal,
            TaskError::Flagged(_) => ErrorCode::Flagged,
            TaskError::ModelUnavailable { .. } => ErrorCode::ModelUnavailable,
            TaskError::Cancelled | TaskError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl EngineError {
    /// The code this failure is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::UnknownModel(_) => ErrorCode::UnknownModel,
            EngineError::Task(t) => t.code(),
        }
    }
}

/// Why a model could not be loaded: its files could not be found or
/// fetched, or were not a model precis runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The model store could not resolve the name or locate the files.
    #[error(transparent)]
    Store(Box<precis_backend::store::StoreError>),
    /// The files are there, but the backend could not build the model.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The name or the files are not something precis runs (it says what is).
    #[error("{0}")]
    Unsupported(String),
    /// Files with no pinned sha256, where only checked files are loaded.
    #[error("no pinned sha256 to check its files against ({0}); pass --allow-unverified to load them as they are")]
    Unverified(String),
}

impl From<precis_backend::store::StoreError> for LoadError {
    fn from(e: precis_backend::store::StoreError) -> Self {
        LoadError::Store(Box::new(e))
    }
}
