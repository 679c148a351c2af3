//! The HTTP API. [`app`] builds the router from an [`AppState`]; [`routes`] holds one module per
//! resource; [`error`] is the single error type and its JSON envelope; [`extract`] has the JSON
//! body and query-string extractors whose rejections use that same envelope; [`telemetry`]
//! records HTTP metrics and renders `/metrics`.

pub mod envelope;
pub mod error;
pub mod extract;
pub mod publish;
pub mod routes;
pub mod telemetry;

use std::time::Duration;

use async_nats::jetstream;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

pub use error::ApiError;

/// Everything a handler may touch.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub metrics: PrometheusHandle,
    /// How long readiness checks wait for each dependency.
    pub ready_timeout: Duration,
}

/// The whole router, ready to serve or to call with `oneshot` in tests.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/incidents", get(routes::incidents::list))
        .route("/incidents/{id}", get(routes::incidents::get))
        .route(
            "/rules",
            get(routes::rules::list).post(routes::rules::create),
        )
        .route(
            "/rules/{id}",
            get(routes::rules::get)
                .patch(routes::rules::update)
                .delete(routes::rules::delete),
        )
        .route("/services", get(routes::services::list))
        .route(
            "/metrics",
            post(routes::metrics::publish)
                .layer(DefaultBodyLimit::max(routes::metrics::MAX_BODY_BYTES)),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed);
    Router::new()
        .route("/", get(routes::home::index))
        .nest("/api", api)
        .route("/health", get(routes::health::health))
        .route("/ready", get(routes::health::ready))
        .route("/metrics", get(telemetry::render))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn(telemetry::track_requests))
        .with_state(state)
}
