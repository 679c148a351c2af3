//! `/api/services`.

use axum::extract::State;
use axum::response::Response;
use store::services::ServiceRecord;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Viewer};
use crate::envelope::{self, List};
use crate::error::ApiError;
use crate::extract::Params;
use crate::openapi::PageQuery;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Services, registered on first sight of a sample.
#[utoipa::path(get, path = "/services", tag = "services", params(PageQuery),
    responses((status = 200, description = "A page of services.", body = List<ServiceRecord>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let page = params.page()?;
    params.finish()?;
    let (items, total) = store::services::list(&state.pool, page).await?;
    Ok(envelope::list(items, total, page))
}
