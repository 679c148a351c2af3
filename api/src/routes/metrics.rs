//! `/api/metrics`: `POST` publishes one sample or an array, validated as a whole, to
//! JetStream (202 means every sample is durably in the METRICS stream); `GET` lists archived
//! samples, raw or per minute; `GET /api/metrics/chart` serves chart buckets from the minute
//! rollups, and `GET /api/metrics/charts` those of many series at once.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use schemas::raw::RawValue;
use schemas::MetricSample;
use serde::Serialize;
use serde_json::{json, Value};
use store::rollups::{ChartBucket, RollupRecord, SeriesChart};
use store::samples::{MetricFilter, SampleRecord};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Operator, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::{query_error, service_id_list, JsonBody, Params};
use crate::openapi::PageQuery;
use crate::publish::publish_samples;
use crate::AppState;

/// Most samples accepted in one request.
pub const MAX_SAMPLES_PER_REQUEST: usize = 10_000;
/// Room for the largest request: 10,000 samples with ids and labels.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, publish))
        .routes(routes!(chart))
        .routes(routes!(charts))
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

/// One row of `GET /api/metrics`: an archived sample (`resolution=raw`) or a minute rollup
/// (`resolution=1m`). Every row of a response has the same shape.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum MetricRow {
    Raw(SampleRecord),
    Minute(RollupRecord),
}

/// Most buckets one chart may have.
pub const MAX_CHART_BUCKETS: i64 = 10_000;

/// Archived samples, newest first unless sorted otherwise.
///
/// With `resolution=raw` (the default) each row is one sample as stored: `stream_seq`,
/// `service_id`, `metric_type`, `labels`, `value`, `recorded_at`, `id`; `from` and `to` apply to
/// `recorded_at`, and `sort_by` is one of `recorded_at` (default), `value`. With
/// `resolution=1m` each row is one minute of one series: `service_id`, `metric_type`, `minute`,
/// `count`, `avg`, `min`, `max`, `last`; `from` and `to` apply to the start of the minute, and
/// `sort_by` is one of `minute` (default), `count`, `avg`, `min`, `max`, `last`. Raw samples are
/// kept for the retention period; minutes are kept for good.
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    params(
        PageQuery,
        ("service_id" = Option<String>, Query, description = "Only this service."),
        ("metric_type" = Option<String>, Query, description = "Only this metric."),
        ("from" = Option<DateTime<Utc>>, Query, description = "At or after this event time (RFC 3339)."),
        ("to" = Option<DateTime<Utc>>, Query, description = "Before this event time (RFC 3339); must be later than `from`."),
        ("resolution" = inline(Option<Resolution>), Query, description = "`raw` samples (default) or `1m` rollups."),
    ),
    responses((status = 200, description = "A page of samples or of minute rollups, as `resolution` says.", body = List<MetricRow>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let filter = MetricFilter {
        service_id: params.take("service_id")?,
        metric_type: params.take("metric_type")?,
        from: params.take("from")?,
        to: params.take("to")?,
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if from >= to {
            return Err(query_error("to", "must be later than `from`"));
        }
    }
    let resolution = params.take::<Resolution>("resolution")?.unwrap_or_default();
    let page = params.page()?;
    match resolution {
        Resolution::Raw => {
            let sort = params.sort(store::samples::SORT_FIELDS, store::samples::DEFAULT_SORT)?;
            params.finish()?;
            let (items, total) = store::samples::list(&state.pool, &filter, sort, page).await?;
            Ok(envelope::list(items, total, page))
        }
        Resolution::Minute => {
            let sort = params.sort(store::rollups::SORT_FIELDS, store::rollups::DEFAULT_SORT)?;
            params.finish()?;
            let (items, total) = store::rollups::list(&state.pool, &filter, sort, page).await?;
            Ok(envelope::list(items, total, page))
        }
    }
}

/// The rows `GET /api/metrics` returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ToSchema)]
pub enum Resolution {
    /// Samples as stored.
    #[default]
    #[schema(rename = "raw")]
    Raw,
    /// Per-minute rollups.
    #[schema(rename = "1m")]
    Minute,
}

impl std::str::FromStr for Resolution {
    type Err = String;

    fn from_str(s: &str) -> Result<Resolution, String> {
        match s {
            "raw" => Ok(Resolution::Raw),
            "1m" => Ok(Resolution::Minute),
            other => Err(format!("{other:?} is not raw or 1m")),
        }
    }
}

/// The width of a chart bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ToSchema)]
pub enum Bucket {
    #[default]
    #[schema(rename = "1m")]
    Minute,
    #[schema(rename = "5m")]
    FiveMinutes,
    #[schema(rename = "1h")]
    Hour,
}

impl Bucket {
    pub fn seconds(self) -> i64 {
        match self {
            Bucket::Minute => 60,
            Bucket::FiveMinutes => 300,
            Bucket::Hour => 3600,
        }
    }
}

impl std::str::FromStr for Bucket {
    type Err = String;

    fn from_str(s: &str) -> Result<Bucket, String> {
        match s {
            "1m" => Ok(Bucket::Minute),
            "5m" => Ok(Bucket::FiveMinutes),
            "1h" => Ok(Bucket::Hour),
            other => Err(format!("{other:?} is not 1m, 5m or 1h")),
        }
    }
}

/// A chart of one series, served from the per-minute rollups, oldest bucket first.
///
/// Buckets are aligned to the Unix epoch in UTC (a `1h` bucket starts on the hour), and hold
/// the minutes whose start lies in `[from, to)`, so the first bucket may start before `from`.
/// Buckets without samples are left out rather than returned empty. `last` is the last value of
/// the latest minute in the bucket. At most 10,000 buckets may be asked for.
#[utoipa::path(get, path = "/metrics/chart", tag = "metrics",
    params(
        ("service_id" = String, Query, description = "The service."),
        ("metric_type" = String, Query, description = "The metric."),
        ("from" = DateTime<Utc>, Query, description = "Start of the range, inclusive (RFC 3339)."),
        ("to" = DateTime<Utc>, Query, description = "End of the range, exclusive (RFC 3339); later than `from`."),
        ("bucket" = inline(Option<Bucket>), Query, description = "Bucket width: `1m` (default), `5m` or `1h`."),
    ),
    responses((status = 200, description = "The non-empty buckets, oldest first.", body = Data<Vec<ChartBucket>>)))]
pub async fn chart(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let service_id: String = required(&mut params, "service_id")?;
    schemas::sample::validate_service_id(&service_id)
        .map_err(|reason| query_error("service_id", &reason))?;
    let metric_type: String = required(&mut params, "metric_type")?;
    schemas::sample::validate_metric_type(&metric_type)
        .map_err(|reason| query_error("metric_type", &reason))?;
    let from: DateTime<Utc> = required(&mut params, "from")?;
    let to: DateTime<Utc> = required(&mut params, "to")?;
    let bucket = params.take::<Bucket>("bucket")?.unwrap_or_default();
    params.finish()?;
    if from >= to {
        return Err(query_error("to", "must be later than `from`"));
    }
    let buckets = bucket_count(from, to, bucket.seconds());
    if buckets > MAX_CHART_BUCKETS {
        return Err(query_error(
            "bucket",
            &format!(
                "{buckets} buckets of {} s between from and to; at most {MAX_CHART_BUCKETS} \
                 are allowed: choose a wider bucket or a shorter range",
                bucket.seconds()
            ),
        ));
    }
    let points = store::rollups::chart(
        &state.pool,
        &service_id,
        &metric_type,
        from,
        to,
        bucket.seconds(),
    )
    .await?;
    Ok(envelope::data(points))
}

/// Most services one `GET /api/metrics/charts` may ask for.
pub const MAX_CHART_SERVICES: usize = 50;
/// Most buckets per series in one `GET /api/metrics/charts`.
pub const MAX_SERIES_BUCKETS: i64 = 1_440;

/// Charts of every metric of several services at once, from the per-minute rollups: what a
/// dashboard draws for a page of services in one request. Series come by service and then
/// metric; each holds its non-empty buckets, oldest first, as `GET /api/metrics/chart` gives
/// them. At most 50 services and 1,440 buckets per series.
#[utoipa::path(get, path = "/metrics/charts", tag = "metrics",
    params(
        ("service_ids" = String, Query, description = "Comma-separated service ids, 1 to 50."),
        ("from" = DateTime<Utc>, Query, description = "Start of the range, inclusive (RFC 3339)."),
        ("to" = DateTime<Utc>, Query, description = "End of the range, exclusive (RFC 3339); later than `from`."),
        ("bucket" = inline(Option<Bucket>), Query, description = "Bucket width: `1m` (default), `5m` or `1h`."),
    ),
    responses((status = 200, description = "A chart per series with data, by service and metric.", body = Data<Vec<SeriesChart>>)))]
pub async fn charts(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let raw: String = required(&mut params, "service_ids")?;
    let from: DateTime<Utc> = required(&mut params, "from")?;
    let to: DateTime<Utc> = required(&mut params, "to")?;
    let bucket = params.take::<Bucket>("bucket")?.unwrap_or_default();
    params.finish()?;
    let service_ids = service_id_list(&raw, "service_ids", 1, MAX_CHART_SERVICES)?;
    if from >= to {
        return Err(query_error("to", "must be later than `from`"));
    }
    let buckets = bucket_count(from, to, bucket.seconds());
    if buckets > MAX_SERIES_BUCKETS {
        return Err(query_error(
            "bucket",
            &format!(
                "{buckets} buckets of {} s between from and to; at most {MAX_SERIES_BUCKETS} \
                 per series are allowed: choose a wider bucket or a shorter range",
                bucket.seconds()
            ),
        ));
    }
    let charts =
        store::rollups::charts(&state.pool, &service_ids, from, to, bucket.seconds()).await?;
    Ok(envelope::data(charts))
}

/// How many epoch-aligned buckets of `seconds` the range `[from, to)` touches.
fn bucket_count(from: DateTime<Utc>, to: DateTime<Utc>, seconds: i64) -> i64 {
    let first = from.timestamp().div_euclid(seconds);
    let last = (to.timestamp() - i64::from(to.timestamp_subsec_nanos() == 0)).div_euclid(seconds);
    last - first + 1
}

/// A parameter that must be given.
fn required<T>(params: &mut Params, name: &'static str) -> Result<T, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    params
        .take(name)?
        .ok_or_else(|| query_error(name, "is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_count_covers_partial_buckets_at_both_ends() {
        let (from, to) = (at("2026-03-12T09:00:00Z"), at("2026-03-12T10:00:00Z"));
        assert_eq!(bucket_count(from, to, 60), 60);
        assert_eq!(bucket_count(from, to, 3600), 1);
        assert_eq!(bucket_count(at("2026-03-12T09:00:30Z"), to, 60), 60);
        assert_eq!(bucket_count(from, at("2026-03-12T10:00:01Z"), 60), 61);
        assert_eq!(bucket_count(from, at("2026-03-12T09:00:00.5Z"), 60), 1);
        // 10,000 minutes exactly is allowed; one more second is not.
        let end = from + chrono::Duration::minutes(10_000);
        assert_eq!(bucket_count(from, end, 60), 10_000);
        assert_eq!(
            bucket_count(from, end + chrono::Duration::seconds(1), 60),
            10_001
        );
    }

    /// The document describes both row shapes and the parameter values, with every reference
    /// resolvable.
    #[test]
    fn the_document_describes_both_shapes_truthfully() {
        use utoipa::OpenApi as _;
        let (_, mut doc) = utoipa_axum::router::OpenApiRouter::<AppState>::with_openapi(
            crate::openapi::ApiDoc::openapi(),
        )
        .nest("/api", crate::routes::api())
        .merge(crate::routes::open())
        .split_for_parts();
        crate::openapi::finish(&mut doc);
        let doc = serde_json::to_value(doc).unwrap();
        let text = doc.to_string();
        let schemas = &doc["components"]["schemas"];
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(schemas.get(name).is_some(), "dangling reference to {name}");
        }
        let row = &schemas["MetricRow"]["oneOf"];
        assert_eq!(
            row.as_array().map(Vec::len),
            Some(2),
            "{}",
            schemas["MetricRow"]
        );
        let param = |path: &str, name: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["schema"]
                .to_string()
        };
        let resolution = param("/api/metrics", "resolution");
        assert!(resolution.contains(r#"["raw","1m"]"#), "{resolution}");
        let bucket = param("/api/metrics/chart", "bucket");
        assert!(bucket.contains(r#"["1m","5m","1h"]"#), "{bucket}");
        let chart = &doc["paths"]["/api/metrics/chart"]["get"]["parameters"];
        let required: Vec<&str> = chart
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["required"] == true)
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(required, ["service_id", "metric_type", "from", "to"]);
    }

    #[test]
    fn resolutions_and_buckets_parse_only_their_names() {
        assert_eq!("1m".parse::<Resolution>(), Ok(Resolution::Minute));
        assert!("5m".parse::<Resolution>().is_err());
        assert_eq!("1h".parse::<Bucket>().map(Bucket::seconds), Ok(3600));
        assert!("2m".parse::<Bucket>().is_err());
    }
}
