//! `/api/incidents`: list with filters, and detail with the timeline.

use axum::extract::{Path, State};
use axum::response::Response;
use schemas::{IncidentStatus, Severity};
use serde::Serialize;
use store::events::EventRecord;
use store::incidents::{IncidentFilter, IncidentRecord};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::Params;
use crate::openapi::PageQuery;
use crate::routes::parse_id;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
}

/// An incident with its timeline.
#[derive(Serialize, ToSchema)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: IncidentRecord,
    pub events: Vec<EventRecord>,
}

/// Incidents, newest first unless sorted otherwise.
///
/// `sort_by` is one of `opened_at`, `last_violation_at`, `updated_at`, `severity`, `status`,
/// `service_id`, `peak_value`.
#[utoipa::path(get, path = "/incidents", tag = "incidents",
    params(
        PageQuery,
        ("status" = Option<IncidentStatus>, Query, description = "Only incidents in this status."),
        ("severity" = Option<Severity>, Query, description = "Only incidents of this severity."),
        ("service_id" = Option<String>, Query, description = "Only incidents of this service."),
        ("rule_id" = Option<uuid::Uuid>, Query, description = "Only incidents opened by this rule."),
        ("department_id" = Option<uuid::Uuid>, Query, description = "Only incidents owned by this department."),
        ("from" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "Opened at or after this time (RFC 3339)."),
        ("to" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "Opened before this time (RFC 3339)."),
        ("search" = Option<String>, Query, description = "A substring of the message, service id or rule name, in any case."),
    ),
    responses((status = 200, description = "A page of incidents.", body = List<IncidentRecord>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let filter = IncidentFilter {
        status: params.take("status")?,
        severity: params.take("severity")?,
        service_id: params.take("service_id")?,
        rule_id: params.take("rule_id")?,
        department_id: params.take("department_id")?,
        from: params.take("from")?,
        to: params.take("to")?,
        search: params.take("search")?,
    };
    let page = params.page()?;
    let sort = params.sort(
        store::incidents::SORT_FIELDS,
        store::incidents::DEFAULT_SORT,
    )?;
    params.finish()?;
    let (items, total) = store::incidents::list(&state.pool, &filter, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// One incident, with its timeline oldest first.
#[utoipa::path(get, path = "/incidents/{id}", tag = "incidents",
    params(("id" = uuid::Uuid, Path, description = "The incident's id.")),
    responses((status = 200, description = "The incident.", body = Data<IncidentDetail>)))]
pub async fn get(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let incident = store::incidents::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("incident {id} not found")))?;
    let events = store::events::list_for_incident(&state.pool, id).await?;
    Ok(envelope::data(IncidentDetail { incident, events }))
}
