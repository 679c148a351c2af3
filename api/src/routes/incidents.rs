//! `/api/incidents`: list with filters, and detail with the timeline.

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::json;
use store::incidents::IncidentFilter;

use crate::envelope;
use crate::error::ApiError;
use crate::extract::Params;
use crate::routes::parse_id;
use crate::AppState;

pub async fn list(State(state): State<AppState>, mut params: Params) -> Result<Response, ApiError> {
    let filter = IncidentFilter {
        status: params.take("status")?,
        severity: params.take("severity")?,
        service_id: params.take("service_id")?,
        rule_id: params.take("rule_id")?,
    };
    let page = params.page()?;
    params.finish()?;
    let (items, total) = store::incidents::list(&state.pool, &filter, page).await?;
    Ok(envelope::list(items, total, page))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let incident = store::incidents::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("incident {id} not found")))?;
    let events = store::events::list_for_incident(&state.pool, id).await?;
    let mut body = serde_json::to_value(incident).map_err(anyhow::Error::from)?;
    body["events"] = json!(events);
    Ok(envelope::data(body))
}
