//! `/api/departments`: the teams that own rules, services and incidents.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use store::departments::{DepartmentError, DepartmentRecord};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Admin, Caller, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::{bounded_text, JsonBody, Params};
use crate::openapi::PageQuery;
use crate::routes::parse_id;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, replace, delete))
}

/// A department as sent by clients; PUT replaces both fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepartmentBody {
    /// Unique, 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Up to 2000 characters; empty when omitted.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
}

impl DepartmentBody {
    fn validated(self) -> Result<(String, String), ApiError> {
        let name = bounded_text("name", &self.name, 100)?;
        let description = self.description.trim();
        if description.chars().count() > 2000 {
            return Err(ApiError::invalid_field(
                "description",
                "must be at most 2000 characters",
            ));
        }
        Ok((name.to_owned(), description.to_owned()))
    }
}

impl From<DepartmentError> for ApiError {
    fn from(e: DepartmentError) -> ApiError {
        match e {
            DepartmentError::NameTaken(_) | DepartmentError::InUse => {
                ApiError::Conflict(e.to_string())
            }
            DepartmentError::Db(e) => e.into(),
        }
    }
}

/// Departments, by name unless sorted otherwise (`sort_by`: `name`, `created_at`,
/// `updated_at`).
#[utoipa::path(get, path = "/departments", tag = "departments", params(PageQuery),
    responses((status = 200, description = "A page of departments.", body = List<DepartmentRecord>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let page = params.page()?;
    let sort = params.sort(
        store::departments::SORT_FIELDS,
        store::departments::DEFAULT_SORT,
    )?;
    params.finish()?;
    let (items, total) = store::departments::list(&state.pool, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// Creates a department.
#[utoipa::path(post, path = "/departments", tag = "departments", request_body = DepartmentBody,
    responses(
        (status = 201, description = "The created department.", body = Data<DepartmentRecord>),
        (status = 409, description = "The name is taken.", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    _: Caller<Admin>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<DepartmentBody>,
) -> Result<Response, ApiError> {
    let (name, description) = body.validated()?;
    let record = store::departments::insert(&state.pool, &name, &description).await?;
    tracing::info!(department_id = %record.id, name = %record.name, "department created");
    Ok(envelope::created(record))
}

/// One department.
#[utoipa::path(get, path = "/departments/{id}", tag = "departments",
    params(("id" = Uuid, Path, description = "The department's id.")),
    responses((status = 200, description = "The department.", body = Data<DepartmentRecord>)))]
pub async fn get(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let record = store::departments::get(&state.pool, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(envelope::data(record))
}

/// Replaces a department's name and description.
#[utoipa::path(put, path = "/departments/{id}", tag = "departments", request_body = DepartmentBody,
    params(("id" = Uuid, Path, description = "The department's id.")),
    responses(
        (status = 200, description = "The department as replaced.", body = Data<DepartmentRecord>),
        (status = 409, description = "The name is taken by another department.", body = crate::error::ErrorBody),
    ))]
pub async fn replace(
    _: Caller<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DepartmentBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (name, description) = body.validated()?;
    let record = store::departments::replace(&state.pool, id, &name, &description)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(envelope::data(record))
}

/// Deletes a department and its notification channels. Services and incidents it owned are
/// left without an owner; while rules still reference it, as their department or as an extra
/// department, it cannot be deleted.
#[utoipa::path(delete, path = "/departments/{id}", tag = "departments",
    params(("id" = Uuid, Path, description = "The department's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 409, description = "Rules still reference the department.", body = crate::error::ErrorBody),
    ))]
pub async fn delete(
    _: Caller<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if !store::departments::delete(&state.pool, id).await? {
        return Err(not_found(id));
    }
    tracing::info!(department_id = %id, "department deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("department {id} not found"))
}
