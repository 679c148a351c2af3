//! The HTTP API. [`app`] builds the router from an [`AppState`]; [`routes`] holds one module per
//! resource; [`auth`] checks API keys, roles and rate limits; [`error`] is the single error type
//! and its JSON envelope; [`extract`] has the JSON body and query-string extractors whose
//! rejections use that same envelope; [`lifecycle`] is people's workflow on incidents and how
//! each change is recorded and announced; [`jobs`] runs backfill jobs in the background;
//! [`live`] feeds dashboards' event streams from NATS;
//! [`openapi`] assembles the API document; [`telemetry`] records HTTP metrics and renders
//! `/metrics`.

pub mod auth;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod lifecycle;
pub mod live;
pub mod openapi;
pub mod publish;
pub mod routes;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;

/// Everything a handler may touch.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub metrics: PrometheusHandle,
    /// The search index, when Meilisearch is configured; search falls back to Postgres without.
    pub meili: Option<store::search::meili::Meili>,
    pub auth: Arc<auth::Auth>,
    pub settings: Arc<HttpSettings>,
    /// The backfill jobs this process runs.
    pub jobs: Arc<jobs::Jobs>,
    /// Live updates for dashboards.
    pub live: Arc<live::Hub>,
}

impl AppState {
    /// What a backfill job needs to run.
    pub fn job_context(&self) -> jobs::JobContext {
        jobs::JobContext {
            pool: self.pool.clone(),
            js: self.js.clone(),
            allowed_lateness: self.settings.allowed_lateness,
        }
    }
}

/// How the HTTP side behaves.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// How long readiness checks wait for each dependency.
    pub ready_timeout: Duration,
    /// Largest request body accepted, except `POST /api/metrics`, which takes batches.
    pub max_body_bytes: usize,
    /// Origins allowed to call the API from a browser; empty allows none, `*` allows any.
    pub cors_origins: Vec<String>,
    /// Which URLs notification channels may call.
    pub targets: store::targets::TargetPolicy,
    /// The live pipeline's allowed lateness, which backtests and backfills replay with.
    pub allowed_lateness: schemas::Span,
}

/// The whole router, ready to serve or to call with `oneshot` in tests.
pub fn app(state: AppState) -> Router {
    let (router, doc) = routes(&state);
    let doc = Arc::new(doc);
    router
        .route(
            "/api/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        )
        .route("/", get(routes::home::index))
        .route("/assets/{*path}", get(routes::home::asset))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(cors(&state.settings.cors_origins))
        .layer(axum::middleware::from_fn(telemetry::track_requests))
        .with_state(state)
}

/// For processes without the API role: only `/health`, `/ready` and `/metrics`, so that every
/// process can be probed and scraped.
pub fn operations_app(state: AppState) -> Router {
    let (router, _) = routes::open().split_for_parts();
    router
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn(telemetry::track_requests))
        .with_state(state)
}

/// The documented routes and their document: `/api/…` behind authentication, plus the open
/// health and metrics routes.
fn routes(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let api = routes::api().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api", api)
        .merge(routes::open())
        .split_for_parts();
    openapi::finish(&mut doc);
    (router, doc)
}

/// The API document alone, as served at `/api/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api", routes::api())
        .merge(routes::open())
        .split_for_parts();
    openapi::finish(&mut doc);
    doc
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}
