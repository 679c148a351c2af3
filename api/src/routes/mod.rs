//! Handlers, one module per resource.

pub mod health;
pub mod home;
pub mod incidents;
pub mod metrics;
pub mod rules;
pub mod services;

use crate::error::ApiError;

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Parses a path id, naming it in the error.
pub fn parse_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::BadRequest {
        message: format!("path parameter `id`: {raw:?} is not a UUID"),
        details: serde_json::json!([{ "field": "id", "message": "not a UUID" }]),
    })
}
