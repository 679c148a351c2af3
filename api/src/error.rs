//! The one error type of the API and its envelope:
//! `{"error": {"code", "message", "details"}}`. Client errors are 4xx and logged at debug;
//! internal errors answer a generic 500 and are logged with their cause.

use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
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
    /// No key, or a key that is unknown or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// The key's role is too weak for this request.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
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
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
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
            // character_not_in_repertoire: Postgres text cannot hold NUL characters.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("22021") => {
                ApiError::bad_request(
                    "text may not contain NUL (\\u0000) characters; they cannot be stored",
                )
            }
            // datetime_field_overflow: a time Postgres cannot represent (before 4713 BC).
            sqlx::Error::Database(d) if d.code().as_deref() == Some("22008") => {
                ApiError::bad_request("a time is out of the range that can be stored")
            }
            e => ApiError::Internal(anyhow::Error::new(e).context("database query failed")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut headers = HeaderMap::new();
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { retry_after_secs } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        let message = self.to_string();
        let (message, details) = match self {
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                ("internal server error".to_owned(), Value::Null)
            }
            ApiError::BadRequest { message, details }
            | ApiError::Validation { message, details }
            | ApiError::Unavailable { message, details } => (message, details),
            ApiError::RateLimited { retry_after_secs } => {
                (message, json!({ "retry_after_secs": retry_after_secs }))
            }
            ApiError::Unauthorized(_)
            | ApiError::Forbidden(_)
            | ApiError::NotFound(_)
            | ApiError::Conflict(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::MethodNotAllowed => (message, Value::Null),
        };
        if status.is_client_error() {
            tracing::debug!(%status, %message, "rejected request");
        }
        let body = json!({ "error": { "code": code, "message": message, "details": details } });
        (status, headers, Json(body)).into_response()
    }
}

/// The error envelope, as documented.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `not_found` or `validation_failed`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Per-field problems (`[{"field", "message"}]`), or other structured detail, or null.
    pub details: Value,
}
