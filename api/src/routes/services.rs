//! `/api/services`.

use axum::extract::State;
use axum::response::Response;

use crate::envelope;
use crate::error::ApiError;
use crate::extract::Params;
use crate::AppState;

pub async fn list(State(state): State<AppState>, mut params: Params) -> Result<Response, ApiError> {
    let page = params.page()?;
    params.finish()?;
    let (items, total) = store::services::list(&state.pool, page).await?;
    Ok(envelope::list(items, total, page))
}
