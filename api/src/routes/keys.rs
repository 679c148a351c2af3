//! `/api/keys`: API keys. Only admins manage them; a key's secret is shown once, at creation.

use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use store::api_keys::{ApiKeyRecord, Role};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, Admin, Caller, CreatedKey, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::{bounded_text, JsonBody, Params};
use crate::openapi::PageQuery;
use crate::routes::parse_id;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
        .routes(routes!(me))
}

/// The key making the request, as a page needs it to show only what the key may do.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Me {
    pub key_id: uuid::Uuid,
    pub name: String,
    pub role: Role,
}

/// Who is asking: the key's id, name and role. Any valid key may ask.
#[utoipa::path(get, path = "/me", tag = "keys",
    responses((status = 200, description = "The calling key.", body = Data<Me>)))]
pub async fn me(caller: Caller<Viewer>, params: Params) -> Result<Response, ApiError> {
    params.finish()?;
    let principal = caller.0;
    Ok(envelope::data(Me {
        key_id: principal.key_id,
        name: principal.name,
        role: principal.role,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    /// What the key may do.
    pub role: Role,
    /// A name to recognise the key by, 1 to 100 characters; it is the actor in timelines.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// Keys, oldest first unless sorted otherwise (`sort_by`: `created_at`, `name`, `role`,
/// `last_used_at`). Secrets are never listed.
#[utoipa::path(get, path = "/keys", tag = "keys", params(PageQuery),
    responses((status = 200, description = "A page of keys.", body = List<ApiKeyRecord>)))]
pub async fn list(
    _: Caller<Admin>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let page = params.page()?;
    let default = store::Sort {
        field: store::api_keys::SORT_FIELDS[0],
        descending: false,
    };
    let sort = params.sort(store::api_keys::SORT_FIELDS, default)?;
    params.finish()?;
    let (items, total) = store::api_keys::list(&state.pool, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// Creates a key. The response holds the key itself; it cannot be shown again.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = KeyBody,
    responses((status = 201, description = "The key, with its secret.", body = Data<CreatedKey>)))]
pub async fn create(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<KeyBody>,
) -> Result<Response, ApiError> {
    let name = bounded_text("name", &body.name, 100)?;
    let created = auth::create_key(&state.pool, name, body.role).await?;
    tracing::info!(key_id = %created.record.id, role = %body.role, by = %caller.actor(), "API key created");
    Ok(envelope::created(created))
}

/// Revokes a key; requests with it get 401 from then on. Revoking twice keeps the first time.
#[utoipa::path(delete, path = "/keys/{id}", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id.")),
    responses((status = 200, description = "The revoked key.", body = Data<ApiKeyRecord>)))]
pub async fn revoke(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let record = store::api_keys::revoke(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("key {id} not found")))?;
    state.auth.forget(id);
    tracing::info!(key_id = %id, by = %caller.actor(), "API key revoked");
    Ok(envelope::data(record))
}
