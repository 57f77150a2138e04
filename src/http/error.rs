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
