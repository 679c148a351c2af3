//! Handlers, one module per resource. Each module's `router` registers its documented routes.

pub mod backfills;
pub mod backtests;
pub mod channels;
pub mod deliveries;
pub mod departments;
pub mod health;
pub mod home;
pub mod incidents;
pub mod keys;
pub mod metrics;
pub mod notifications;
pub mod overview;
pub mod rules;
pub mod search;
pub mod services;
pub mod silences;
pub mod stream;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::AppState;

/// Everything under `/api`, all behind an API key.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(incidents::router())
        .merge(search::router())
        .merge(rules::router())
        .merge(backtests::router())
        .merge(backfills::router())
        .merge(services::router())
        .merge(metrics::router())
        .merge(departments::router())
        .merge(channels::router())
        .merge(notifications::router())
        .merge(silences::router())
        .merge(deliveries::router())
        .merge(keys::router())
        .merge(overview::router())
        .merge(stream::router())
}

/// Routes open without a key: liveness, readiness and Prometheus metrics.
pub fn open() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(crate::telemetry::render))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Parses the path id, naming it in the error.
pub fn parse_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    parse_path_uuid("id", raw)
}

/// Parses the UUID path parameter `name`, naming it in the error.
pub fn parse_path_uuid(name: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::BadRequest {
        message: format!("path parameter `{name}`: {raw:?} is not a UUID"),
        details: serde_json::json!([{ "field": name, "message": "not a UUID" }]),
    })
}
