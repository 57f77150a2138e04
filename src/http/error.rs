//! The API's error format, `{"error": {"code": "...", "message": "..."}}`.
//! Every failure an HTTP caller can meet goes through [`ApiError`], with a
//! code from precis-core's catalogue ([`ErrorCode`]); a 5xx body says
//! nothing internal (details go to the log).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use precis_core::engine::EngineError;
pub use precis_core::error::{ErrorCode, ErrorDetail};
use precis_core::task::TaskError;

/// The HTTP status of a code.
pub fn status(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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
    /// What failed inside the server, for the log: never sent, and logged
    /// once, by the [`super::ops::track`] middleware (or, for an error
    /// event of a stream already under way, where the event is sent).
    pub cause: Option<String>,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// A failure inside the server: `500 internal`, whose body says nothing
    /// internal; `cause` goes to the log.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            ErrorCode::Internal,
            "the request failed inside the server; see the server log",
        );
        e.cause = Some(cause.to_string());
        e
    }
}

/// The causes of the failures an answer reports (a response extension the
/// [`super::ops::track`] middleware logs).
#[derive(Debug, Clone, Default)]
pub struct FailureCauses(pub Vec<String>);

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "unsupported_language", "message": "unsupported language `xx`; supported: ru (Russian), hi (Hindi)"}}))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
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
        let mut response = (status(self.code), Json(body)).into_response();
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(FailureCauses(vec![cause]));
        }
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, after.into());
        }
        response
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        EngineError::Task(e).into()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = e.code();
        match code {
            ErrorCode::Internal => ApiError::internal(&e),
            // The caller learns which model; the operator needs to know too.
            ErrorCode::ModelUnavailable => {
                let mut answer = ApiError::new(code, e.to_string());
                answer.cause = Some(e.to_string());
                answer
            }
            _ => ApiError::new(code, e.to_string()),
        }
    }
}
