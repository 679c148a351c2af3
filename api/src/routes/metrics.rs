//! `POST /api/metrics`: one sample or an array, validated as a whole, then published to
//! JetStream. 202 means every sample is durably in the METRICS stream.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemas::raw::RawValue;
use schemas::MetricSample;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Operator};
use crate::envelope::Data;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::publish::publish_samples;
use crate::AppState;

/// Most samples accepted in one request.
pub const MAX_SAMPLES_PER_REQUEST: usize = 10_000;
/// Room for the largest request: 10,000 samples with ids and labels.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(publish))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// What a publish stored.
#[derive(Serialize, ToSchema)]
pub struct PublishResult {
    /// Samples in the request.
    pub accepted: usize,
    /// Samples newly stored in the METRICS stream.
    pub stored: usize,
    /// Samples the stream already had (same `id` within its duplicate window).
    pub duplicates: usize,
}

/// Publishes one sample, or an array of up to 10,000, to the METRICS stream. All or nothing:
/// any invalid sample rejects the request, and every problem is listed with its index. 202
/// means every sample is durably stored.
#[utoipa::path(post, path = "/metrics", tag = "metrics",
    request_body(content = Object, description = "A sample (`service_id`, `metric_type`, `value`, `recorded_at`, optional `id` and `labels`) or an array of them; see the wire format."),
    responses(
        (status = 202, description = "Every sample is stored.", body = Data<PublishResult>),
        (status = 413, description = "The body is larger than 16 MiB.", body = crate::error::ErrorBody),
        (status = 422, description = "Some samples are invalid; `details` lists each with its index and field.", body = crate::error::ErrorBody),
    ))]
pub async fn publish(
    _: Caller<Operator>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RawValue>,
) -> Result<Response, ApiError> {
    let samples = validate(body)?;
    let published = publish_samples(&state.js, &samples).await.map_err(|e| {
        tracing::warn!(error = %e, "publishing samples failed");
        ApiError::Unavailable {
            message: format!("could not publish to JetStream: {}", e.source),
            details: json!({ "published": e.published, "total": e.total }),
        }
    })?;
    let body = Data {
        data: PublishResult {
            accepted: samples.len(),
            stored: published.stored,
            duplicates: published.duplicates,
        },
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// All or nothing: any invalid sample rejects the request, and every problem is listed with its
/// index and field.
fn validate(body: RawValue) -> Result<Vec<MetricSample>, ApiError> {
    let (items, is_array) = match body {
        RawValue::List(items) => (items, true),
        single => (vec![single], false),
    };
    if items.is_empty() {
        return Err(ApiError::invalid_field("body", "the array is empty"));
    }
    if items.len() > MAX_SAMPLES_PER_REQUEST {
        return Err(ApiError::invalid_field(
            "body",
            format!("at most {MAX_SAMPLES_PER_REQUEST} samples per request"),
        ));
    }
    let mut samples = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match MetricSample::from_raw(item) {
            Ok(sample) => samples.push(sample),
            Err(e) => problems.push(json!({
                "index": if is_array { Some(index) } else { None },
                "field": e.field(),
                "message": e.to_string(),
            })),
        }
    }
    if problems.is_empty() {
        return Ok(samples);
    }
    let first = problems[0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Err(ApiError::Validation {
        message: if is_array {
            format!(
                "{} of the samples are invalid; first: {first}",
                problems.len()
            )
        } else {
            first
        },
        details: Value::Array(problems),
    })
}
