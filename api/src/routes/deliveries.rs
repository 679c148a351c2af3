//! `/api/deliveries`: the delivery log. What each channel was told, and every attempt to send
//! it, with its outcome, status code and latency.

use axum::extract::{Path, State};
use axum::response::Response;
use serde::Serialize;
use store::deliveries::{AttemptRecord, DeliveryFilter, DeliveryRecord, ItemSummary};
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

/// A delivery with what it told and every attempt.
#[derive(Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryRecord,
    pub items: Vec<ItemSummary>,
    pub attempts: Vec<AttemptRecord>,
}

/// Deliveries, newest first (`sort_by`: `created_at`).
#[utoipa::path(get, path = "/deliveries", tag = "notifications",
    params(
        PageQuery,
        ("incident_id" = Option<Uuid>, Query, description = "Only deliveries telling about this incident."),
        ("channel_id" = Option<Uuid>, Query, description = "Only this channel's deliveries."),
        ("department_id" = Option<Uuid>, Query, description = "Only this department's deliveries."),
        ("state" = Option<String>, Query, description = "One of grouping, sending, delivered, failed, suppressed, cancelled."),
    ),
    responses((status = 200, description = "A page of deliveries.", body = List<DeliveryRecord>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let filter = DeliveryFilter {
        incident_id: params.take("incident_id")?,
        channel_id: params.take("channel_id")?,
        department_id: params.take("department_id")?,
        state: params.take("state")?,
    };
    let page = params.page()?;
    let sort = params.sort(
        store::deliveries::SORT_FIELDS,
        store::deliveries::DEFAULT_SORT,
    )?;
    params.finish()?;
    let (items, total) = store::deliveries::list(&state.pool, &filter, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// One delivery, with its items and attempts.
#[utoipa::path(get, path = "/deliveries/{id}", tag = "notifications",
    params(("id" = Uuid, Path, description = "The delivery's id, which is also its Idempotency-Key.")),
    responses((status = 200, description = "The delivery.", body = Data<DeliveryDetail>)))]
pub async fn get(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let delivery = store::deliveries::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("delivery {id} not found")))?;
    let items = store::deliveries::item_summaries(&state.pool, id).await?;
    let attempts = store::deliveries::attempts(&state.pool, id).await?;
    Ok(envelope::data(DeliveryDetail {
        delivery,
        items,
        attempts,
    }))
}
