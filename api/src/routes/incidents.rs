//! `/api/incidents`: list with filters, detail, people's changes (status, severity, assignee),
//! comments and the timeline. Every change writes its timeline event and the outbox message
//! that announces it on INCIDENTS in the same transaction.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{SubsecRound, Utc};
use schemas::{ActivityKind, IncidentStatus, Severity, Source};
use serde::{Deserialize, Serialize};
use store::comments::CommentRecord;
use store::events::EventRecord;
use store::incidents::{IncidentFilter, IncidentRecord};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Caller, Operator, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::{bounded_text, present, JsonBody, Params};
use crate::lifecycle::{self, Activity, Change, CommentRef};
use crate::openapi::PageQuery;
use crate::routes::{parse_id, parse_path_uuid};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get, update))
        .routes(routes!(list_comments, add_comment))
        .routes(routes!(delete_comment))
        .routes(routes!(events))
}

/// Longest assignee name, in characters.
const MAX_ASSIGNEE_CHARS: usize = 200;
/// Longest comment, in characters.
const MAX_COMMENT_CHARS: usize = 10_000;

/// A change to the fields people own. Give at least one; a field set to its current value
/// changes nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentPatch {
    /// OPEN → IN_PROGRESS → CLOSED, OPEN → CLOSED, or CLOSED → OPEN to reopen; other moves
    /// answer 409.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = IncidentStatus, required = false)]
    status: Option<Option<IncidentStatus>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Severity, required = false)]
    severity: Option<Option<Severity>>,
    /// Who works the incident, 1 to 200 characters after trimming; `null` unassigns.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, required = false, min_length = 1, max_length = 200)]
    assignee: Option<Option<String>>,
}

impl IncidentPatch {
    /// Fails naming the field when it is null where null means nothing, or out of bounds, and
    /// when no field is given at all.
    fn into_change(self) -> Result<Change, ApiError> {
        let not_null = |field: &str| ApiError::invalid_field(field, "must not be null");
        let change = Change {
            status: match self.status {
                Some(None) => return Err(not_null("status")),
                other => other.flatten(),
            },
            severity: match self.severity {
                Some(None) => return Err(not_null("severity")),
                other => other.flatten(),
            },
            assignee: match self.assignee {
                Some(Some(name)) => Some(Some(
                    bounded_text("assignee", &name, MAX_ASSIGNEE_CHARS)?.to_owned(),
                )),
                other => other,
            },
        };
        if change == Change::default() {
            return Err(ApiError::Validation {
                message: "nothing to change: give at least one of status, severity, assignee"
                    .to_owned(),
                details: serde_json::json!([{ "field": null, "message": "no field given" }]),
            });
        }
        Ok(change)
    }
}

/// A new comment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    /// 1 to 10 000 characters after trimming; stored trimmed.
    #[schema(min_length = 1, max_length = 10000)]
    body: String,
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
        ("source" = Option<Source>, Query, description = "Only live or only backfilled incidents."),
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
        source: params.take("source")?,
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
        .ok_or_else(|| not_found(id))?;
    let events = store::events::list_for_incident(&state.pool, id).await?;
    Ok(envelope::data(IncidentDetail { incident, events }))
}

/// Changes an incident's status, severity or assignee. Each changed field adds a timeline event
/// and is announced on the INCIDENTS stream as `incidents.<service_id>.<kind>`.
#[utoipa::path(patch, path = "/incidents/{id}", tag = "incidents", request_body = IncidentPatch,
    params(("id" = Uuid, Path, description = "The incident's id.")),
    responses(
        (status = 200, description = "The incident after the change.", body = Data<IncidentRecord>),
        (status = 409, description = "The status cannot move that way; the message names both statuses.", body = crate::error::ErrorBody),
    ))]
pub async fn update(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<IncidentPatch>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let change = patch.into_change()?;
    let mut tx = state.pool.begin().await?;
    let current = store::incidents::lock(&mut tx, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    // Postgres keeps microseconds; the message must say what the timeline says.
    let now = Utc::now().trunc_subsecs(6);
    let (work, changed) = lifecycle::plan(&current, &change, now)?;
    if changed.is_empty() {
        return Ok(envelope::data(current));
    }
    let updated = store::incidents::set_work(&mut tx, id, &work).await?;
    let actor = caller.actor();
    for c in changed {
        let activity = Activity {
            kind: c.kind,
            actor: &actor,
            at: now,
            from: c.from,
            to: c.to,
            comment: None,
        };
        lifecycle::record(&mut tx, &updated, activity).await?;
    }
    tx.commit().await?;
    tracing::info!(incident_id = %id, actor, "incident changed");
    Ok(envelope::data(updated))
}

/// An incident's comments, oldest first unless sorted otherwise.
///
/// `sort_by` is `created_at`.
#[utoipa::path(get, path = "/incidents/{id}/comments", tag = "incidents",
    params(("id" = Uuid, Path, description = "The incident's id."), PageQuery),
    responses((status = 200, description = "A page of comments.", body = List<CommentRecord>)))]
pub async fn list_comments(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let page = params.page()?;
    let sort = params.sort(store::comments::SORT_FIELDS, store::comments::DEFAULT_SORT)?;
    params.finish()?;
    ensure_exists(&state, id).await?;
    let (items, total) = store::comments::page_for_incident(&state.pool, id, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// Adds a comment, written by the calling key.
#[utoipa::path(post, path = "/incidents/{id}/comments", tag = "incidents", request_body = CommentBody,
    params(("id" = Uuid, Path, description = "The incident's id.")),
    responses((status = 201, description = "The comment.", body = Data<CommentRecord>)))]
pub async fn add_comment(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CommentBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let text = bounded_text("body", &body.body, MAX_COMMENT_CHARS)?;
    let actor = caller.actor();
    let mut tx = state.pool.begin().await?;
    let incident = store::incidents::lock(&mut tx, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let comment = store::comments::insert(&mut tx, Uuid::new_v4(), id, &actor, text).await?;
    let activity = Activity {
        kind: ActivityKind::Commented,
        actor: &actor,
        at: comment.created_at,
        from: None,
        to: None,
        comment: Some(CommentRef {
            id: comment.id,
            body: Some(&comment.body),
        }),
    };
    lifecycle::record(&mut tx, &incident, activity).await?;
    tx.commit().await?;
    Ok(envelope::created(comment))
}

/// Deletes one of the incident's comments.
#[utoipa::path(delete, path = "/incidents/{id}/comments/{comment_id}", tag = "incidents",
    params(
        ("id" = Uuid, Path, description = "The incident's id."),
        ("comment_id" = Uuid, Path, description = "The comment's id."),
    ),
    responses((status = 204, description = "Deleted.")))]
pub async fn delete_comment(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    Path((id, comment_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let comment_id = parse_path_uuid("comment_id", &comment_id)?;
    let actor = caller.actor();
    let mut tx = state.pool.begin().await?;
    let incident = store::incidents::lock(&mut tx, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    store::comments::delete(&mut tx, id, comment_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("incident {id} has no comment {comment_id}")))?;
    // A comment is often deleted for what it says: the timeline keeps that it was made.
    store::events::scrub_comment_body(&mut *tx, id, comment_id).await?;
    let activity = Activity {
        kind: ActivityKind::CommentDeleted,
        actor: &actor,
        at: Utc::now().trunc_subsecs(6),
        from: None,
        to: None,
        comment: Some(CommentRef {
            id: comment_id,
            body: None,
        }),
    };
    lifecycle::record(&mut tx, &incident, activity).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An incident's timeline, oldest first unless sorted otherwise.
///
/// `sort_by` is `at`.
#[utoipa::path(get, path = "/incidents/{id}/events", tag = "incidents",
    params(("id" = Uuid, Path, description = "The incident's id."), PageQuery),
    responses((status = 200, description = "A page of timeline events.", body = List<EventRecord>)))]
pub async fn events(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let page = params.page()?;
    let sort = params.sort(store::events::SORT_FIELDS, store::events::DEFAULT_SORT)?;
    params.finish()?;
    ensure_exists(&state, id).await?;
    let (items, total) = store::events::page_for_incident(&state.pool, id, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

async fn ensure_exists(state: &AppState, id: Uuid) -> Result<(), ApiError> {
    if store::incidents::exists(&state.pool, id).await? {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("incident {id} not found"))
}
