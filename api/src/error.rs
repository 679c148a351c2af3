//! The one error type of the API and its envelope:
//! `{"error": {"code", "message", "details"}}`. Client errors are 4xx and logged at debug;
//! internal errors answer a generic 500 and are logged with their cause.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: unparseable JSON, unknown query parameters.
    #[error("{message}")]
    BadRequest { message: String, details: Value },
    /// Well-formed but invalid input; `details` names the fields.
    #[error("{message}")]
    Validation { message: String, details: Value },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A dependency is unreachable; the client may retry.
    #[error("{message}")]
    Unavailable { message: String, details: Value },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            details: Value::Null,
        }
    }

    /// A single invalid field.
    pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
        let (field, reason) = (field.into(), reason.into());
        ApiError::Validation {
            message: format!("field `{field}`: {reason}"),
            details: json!([{ "field": field, "message": reason }]),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        match e {
            // Postgres is unreachable, not the request at fault: the client may retry.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::Unavailable {
                    message: "the database is unavailable; retry later".to_owned(),
                    details: Value::Null,
                }
            }
            e => ApiError::Internal(anyhow::Error::new(e).context("database query failed")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let (message, details) = match self {
            ApiError::Internal(e) => {
                tracing::error!(error = %e, cause = ?e, "internal error");
                ("internal server error".to_owned(), Value::Null)
            }
            ApiError::BadRequest { message, details }
            | ApiError::Validation { message, details }
            | ApiError::Unavailable { message, details } => (message, details),
            ApiError::NotFound(message)
            | ApiError::Conflict(message)
            | ApiError::PayloadTooLarge(message) => (message, Value::Null),
            ApiError::MethodNotAllowed => {
                ("method not allowed on this route".to_owned(), Value::Null)
            }
        };
        if status.is_client_error() {
            tracing::debug!(%status, %message, "rejected request");
        }
        let body = json!({ "error": { "code": code, "message": message, "details": details } });
        (status, Json(body)).into_response()
    }
}
