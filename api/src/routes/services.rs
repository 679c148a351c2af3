//! `/api/services`: the list, one service with how each of its metrics is doing, and the
//! admin's patch of its name and department.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use schemas::Severity;
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::services::{ServiceChange, ServiceFilter, ServiceRecord, UpdateError};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Admin, Caller, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::{bounded_text, present, JsonBody, Params};
use crate::openapi::PageQuery;
use crate::AppState;

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get, update))
}

/// A service with the state of each metric seen for it.
#[derive(Serialize, ToSchema)]
pub struct ServiceDetail {
    #[serde(flatten)]
    pub service: ServiceRecord,
    /// One entry per metric type seen for the service, by name.
    pub metrics: Vec<ServiceMetric>,
}

/// How one metric of a service is doing.
#[derive(Serialize, ToSchema)]
pub struct ServiceMetric {
    pub metric_type: String,
    /// `violating` while the metric has unresolved incidents, else `ok`.
    pub status: MetricStatus,
    /// The worst severity among its unresolved incidents; null when there are none.
    pub severity: Option<Severity>,
    /// Unresolved incidents (not yet resolved by the pipeline, whatever their status).
    pub open_incidents: i64,
    /// The last value of the latest archived minute; null when none is archived.
    pub last_value: Option<f64>,
    /// The event time of that value.
    pub last_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricStatus {
    Ok,
    Violating,
}

/// A patch of a service: given fields replace the current ones, `null` clears them, absent
/// fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePatch {
    /// A name for people, 1 to 200 characters; null clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200)]
    pub display_name: Option<Option<String>>,
    /// The owning department, which must exist; null clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub department_id: Option<Option<Uuid>>,
}

/// Services, registered on first sight of a sample; by id unless sorted otherwise.
///
/// `sort_by` is one of `id`, `first_seen_at`, `display_name`.
#[utoipa::path(get, path = "/services", tag = "services",
    params(
        PageQuery,
        ("department_id" = Option<Uuid>, Query, description = "Only services owned by this department."),
    ),
    responses((status = 200, description = "A page of services.", body = List<ServiceRecord>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let filter = ServiceFilter {
        department_id: params.take("department_id")?,
    };
    let page = params.page()?;
    let sort = params.sort(store::services::SORT_FIELDS, store::services::DEFAULT_SORT)?;
    params.finish()?;
    let (items, total) = store::services::list(&state.pool, &filter, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// One service, with the state of each metric seen for it: open incidents, their worst
/// severity, and the latest archived value.
#[utoipa::path(get, path = "/services/{id}", tag = "services",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The service's id.")),
    responses((status = 200, description = "The service.", body = Data<ServiceDetail>)))]
pub async fn get(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_service_id(&id)?;
    let service = store::services::get(&state.pool, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let metrics = store::services::metric_health(&state.pool, &id)
        .await?
        .into_iter()
        .map(|m| ServiceMetric {
            status: if m.open_incidents > 0 {
                MetricStatus::Violating
            } else {
                MetricStatus::Ok
            },
            severity: m.worst_severity.and_then(|s| s.parse().ok()),
            metric_type: m.metric_type,
            open_incidents: m.open_incidents,
            last_value: m.last_value,
            last_at: m.last_at,
        })
        .collect();
    Ok(envelope::data(ServiceDetail { service, metrics }))
}

/// Names a service or gives it to a department. Fields left out stay as they are; `null`
/// clears one.
#[utoipa::path(patch, path = "/services/{id}", tag = "services", request_body = ServicePatch,
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The service's id.")),
    responses((status = 200, description = "The changed service.", body = Data<ServiceRecord>)))]
pub async fn update(
    _: Caller<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<ServicePatch>,
) -> Result<Response, ApiError> {
    let id = parse_service_id(&id)?;
    let display_name = match patch.display_name {
        Some(Some(name)) => Some(Some(
            bounded_text("display_name", &name, MAX_DISPLAY_NAME)?.to_owned(),
        )),
        other => other,
    };
    let change = ServiceChange {
        display_name,
        department_id: patch.department_id,
    };
    match store::services::update(&state.pool, &id, &change).await {
        Ok(Some(service)) => {
            tracing::info!(service_id = %id, "service updated");
            Ok(envelope::data(service))
        }
        Ok(None) => Err(not_found(&id)),
        Err(e @ UpdateError::UnknownDepartment(_)) => {
            Err(ApiError::invalid_field("department_id", e.to_string()))
        }
        Err(UpdateError::Database(e)) => Err(e.into()),
    }
}

/// A service id from the path: `[A-Za-z0-9_-]{1,64}`, else 400 naming `id`.
fn parse_service_id(raw: &str) -> Result<String, ApiError> {
    schemas::sample::validate_service_id(raw).map_err(|reason| ApiError::BadRequest {
        message: format!("path parameter `id`: {reason}"),
        details: json!([{ "field": "id", "message": reason }]),
    })?;
    Ok(raw.to_owned())
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("service {id} not found"))
}
