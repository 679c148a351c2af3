//! `/api/notifications`: in-app notifications per department, read and unread.

use axum::extract::{Path, State};
use axum::response::Response;
use serde::Serialize;
use store::notifications::{NotificationFilter, NotificationRecord};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Operator, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::Params;
use crate::openapi::PageQuery;
use crate::routes::parse_id;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(mark_read))
        .routes(routes!(mark_unread))
        .routes(routes!(read_all))
        .routes(routes!(unread_count))
}

#[derive(Serialize, ToSchema)]
pub struct ReadAll {
    /// Notifications that were unread and now are read.
    pub updated: u64,
}

#[derive(Serialize, ToSchema)]
pub struct UnreadCount {
    pub unread: i64,
}

/// Notifications, newest first (`sort_by`: `created_at`).
#[utoipa::path(get, path = "/notifications", tag = "notifications",
    params(
        PageQuery,
        ("department_id" = Option<Uuid>, Query, description = "Only this department's notifications."),
        ("incident_id" = Option<Uuid>, Query, description = "Only notifications about this incident."),
        ("read" = Option<bool>, Query, description = "Only read (true) or unread (false) notifications."),
    ),
    responses((status = 200, description = "A page of notifications.", body = List<NotificationRecord>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let filter = NotificationFilter {
        department_id: params.take("department_id")?,
        incident_id: params.take("incident_id")?,
        read: params.take("read")?,
    };
    let page = params.page()?;
    let sort = params.sort(
        store::notifications::SORT_FIELDS,
        store::notifications::DEFAULT_SORT,
    )?;
    params.finish()?;
    let (items, total) = store::notifications::list(&state.pool, &filter, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// Marks a notification read; marking it again keeps the first time.
#[utoipa::path(post, path = "/notifications/{id}/read", tag = "notifications",
    params(("id" = Uuid, Path, description = "The notification's id.")),
    responses((status = 200, description = "The notification.", body = Data<NotificationRecord>)))]
pub async fn mark_read(
    _: Caller<Operator>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_read(&state, &id, true).await
}

/// Marks a notification unread.
#[utoipa::path(post, path = "/notifications/{id}/unread", tag = "notifications",
    params(("id" = Uuid, Path, description = "The notification's id.")),
    responses((status = 200, description = "The notification.", body = Data<NotificationRecord>)))]
pub async fn mark_unread(
    _: Caller<Operator>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_read(&state, &id, false).await
}

async fn set_read(state: &AppState, id: &str, read: bool) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let record = store::notifications::set_read(&state.pool, id, read)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("notification {id} not found")))?;
    Ok(envelope::data(record))
}

/// Marks every unread notification read, or only one department's.
#[utoipa::path(post, path = "/notifications/read-all", tag = "notifications",
    params(("department_id" = Option<Uuid>, Query, description = "Only this department's notifications.")),
    responses((status = 200, description = "How many changed.", body = Data<ReadAll>)))]
pub async fn read_all(
    _: Caller<Operator>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let department_id = params.take("department_id")?;
    params.finish()?;
    let updated = store::notifications::read_all(&state.pool, department_id).await?;
    Ok(envelope::data(ReadAll { updated }))
}

/// How many notifications are unread, in all or one department.
#[utoipa::path(get, path = "/notifications/unread-count", tag = "notifications",
    params(("department_id" = Option<Uuid>, Query, description = "Only this department's notifications.")),
    responses((status = 200, description = "The count.", body = Data<UnreadCount>)))]
pub async fn unread_count(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let department_id = params.take("department_id")?;
    params.finish()?;
    let unread = store::notifications::unread_count(&state.pool, department_id).await?;
    Ok(envelope::data(UnreadCount { unread }))
}
