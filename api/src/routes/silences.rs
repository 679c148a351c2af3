//! `/api/silences`: silences and maintenance windows. While a silence covers a notification,
//! the notifier records it as suppressed instead of sending it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemas::Severity;
use serde::Deserialize;
use serde_json::json;
use store::silences::{
    NewSilence, Recurrence, SilenceError, SilenceFilter, SilencePatch, SilenceRecord,
};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Caller, Operator, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::{present, JsonBody, Params};
use crate::openapi::PageQuery;
use crate::routes::parse_id;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, update, delete))
}

/// A time in a body: RFC 3339, such as `2026-03-07T02:00:00Z`.
#[derive(Debug, Clone, Copy)]
pub struct Time(DateTime<Utc>);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Time(t.to_utc()))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is not an RFC 3339 time such as 2026-03-07T02:00:00Z ({e})"
                ))
            })
    }
}

/// A new silence. It needs at least one matcher: a silence that mutes every notification is
/// refused, so that nobody mutes everything by leaving the matchers out. A matcher that is
/// absent or null matches anything.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceBody {
    /// Only notifications about this service.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub service_id: Option<String>,
    /// Only notifications about this rule's incidents.
    #[serde(default)]
    pub rule_id: Option<Uuid>,
    /// Only notifications to this department; it must exist.
    #[serde(default)]
    pub department_id: Option<Uuid>,
    /// Only notifications of this severity.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// When the silence begins (RFC 3339); now when omitted or null.
    #[serde(default)]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub starts_at: Option<Time>,
    /// When the silence ends, exclusive (RFC 3339); after `starts_at`. Required unless the
    /// silence recurs; a recurring silence without it repeats for good.
    #[serde(default)]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub ends_at: Option<Time>,
    /// Makes the silence a maintenance window: it covers only these weekly windows.
    #[serde(default)]
    pub recurrence: Option<Recurrence>,
    /// Why; up to 2000 characters, empty when omitted.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub comment: String,
}

/// A change to a silence: the given fields replace the current ones; `null` clears a matcher,
/// `ends_at` or `recurrence`. A recurrence is replaced whole. The result must be a valid
/// silence, with at least one matcher. To end a silence early, set `ends_at`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SilencePatchBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, required = false, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub service_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>, required = false)]
    pub rule_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>, required = false)]
    pub department_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Severity>, required = false)]
    pub severity: Option<Option<Severity>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = DateTime<Utc>, required = false)]
    pub starts_at: Option<Option<Time>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>, required = false)]
    pub ends_at: Option<Option<Time>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Recurrence>, required = false)]
    pub recurrence: Option<Option<Recurrence>>,
    /// Up to 2000 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = false, max_length = 2000)]
    pub comment: Option<Option<String>>,
}

impl SilenceBody {
    fn into_new(self, created_by: String) -> NewSilence {
        NewSilence {
            service_id: self.service_id,
            rule_id: self.rule_id,
            department_id: self.department_id,
            severity: self.severity,
            starts_at: self.starts_at.map_or_else(Utc::now, |t| t.0),
            ends_at: self.ends_at.map(|t| t.0),
            recurrence: self.recurrence,
            comment: self.comment.trim().to_owned(),
            created_by,
        }
    }
}

impl SilencePatchBody {
    /// Fails when a field that cannot be cleared is null, or when no field is given.
    fn into_patch(self) -> Result<SilencePatch, ApiError> {
        let not_null = |field: &str| ApiError::invalid_field(field, "must not be null");
        let patch = SilencePatch {
            service_id: self.service_id,
            rule_id: self.rule_id,
            department_id: self.department_id,
            severity: self.severity,
            starts_at: match self.starts_at {
                Some(None) => return Err(not_null("starts_at")),
                other => other.flatten().map(|t| t.0),
            },
            ends_at: self.ends_at.map(|t| t.map(|t| t.0)),
            recurrence: self.recurrence,
            comment: match self.comment {
                Some(None) => return Err(not_null("comment")),
                other => other.flatten().map(|c| c.trim().to_owned()),
            },
        };
        if patch.is_empty() {
            return Err(ApiError::Validation {
                message: "nothing to change: give at least one field of the silence".to_owned(),
                details: json!([{ "field": null, "message": "no field given" }]),
            });
        }
        Ok(patch)
    }
}

impl From<SilenceError> for ApiError {
    fn from(e: SilenceError) -> ApiError {
        match e {
            SilenceError::Invalid { field, reason } => ApiError::invalid_field(field, reason),
            SilenceError::NoMatcher => ApiError::Validation {
                message: e.to_string(),
                details: store::silences::MATCHERS
                    .iter()
                    .map(|field| json!({ "field": field, "message": "give at least one matcher" }))
                    .collect(),
            },
            // As the rules API answers an unknown department.
            SilenceError::UnknownDepartment(department) => ApiError::invalid_field(
                "department_id",
                format!("department {department} does not exist"),
            ),
            SilenceError::Db(e) => e.into(),
        }
    }
}

/// Silences, newest first unless sorted otherwise (`sort_by`: `created_at`, `starts_at`,
/// `ends_at`). Each says whether it is `active`: whether it covers the present moment.
#[utoipa::path(get, path = "/silences", tag = "silences",
    params(
        PageQuery,
        ("active" = Option<bool>, Query, description = "Only silences that cover (true) or do not cover (false) the present moment."),
        ("service_id" = Option<String>, Query, description = "Only silences set on this service."),
        ("rule_id" = Option<Uuid>, Query, description = "Only silences set on this rule."),
        ("department_id" = Option<Uuid>, Query, description = "Only silences set on this department."),
    ),
    responses((status = 200, description = "A page of silences.", body = List<SilenceRecord>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let filter = SilenceFilter {
        active: params.take("active")?,
        service_id: params.take("service_id")?,
        rule_id: params.take("rule_id")?,
        department_id: params.take("department_id")?,
    };
    let page = params.page()?;
    let sort = params.sort(store::silences::SORT_FIELDS, store::silences::DEFAULT_SORT)?;
    params.finish()?;
    let (items, total) = store::silences::list(&state.pool, &filter, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// Creates a silence; the caller's key is recorded as `created_by`.
#[utoipa::path(post, path = "/silences", tag = "silences", request_body = SilenceBody,
    responses((status = 201, description = "The created silence.", body = Data<SilenceRecord>)))]
pub async fn create(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<SilenceBody>,
) -> Result<Response, ApiError> {
    let silence = body.into_new(caller.actor());
    let record = store::silences::insert(&state.pool, &silence).await?;
    tracing::info!(silence_id = %record.id, actor = %record.created_by, "silence created");
    Ok(envelope::created(record))
}

/// One silence.
#[utoipa::path(get, path = "/silences/{id}", tag = "silences",
    params(("id" = Uuid, Path, description = "The silence's id.")),
    responses((status = 200, description = "The silence.", body = Data<SilenceRecord>)))]
pub async fn get(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let record = store::silences::get(&state.pool, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(envelope::data(record))
}

/// Changes a silence: the given fields replace the current ones; `null` clears a matcher,
/// `ends_at` or `recurrence`. Set `ends_at` to end a silence early.
#[utoipa::path(patch, path = "/silences/{id}", tag = "silences", request_body = SilencePatchBody,
    params(("id" = Uuid, Path, description = "The silence's id.")),
    responses((status = 200, description = "The changed silence.", body = Data<SilenceRecord>)))]
pub async fn update(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SilencePatchBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let patch = body.into_patch()?;
    let record = store::silences::update(&state.pool, id, &patch)
        .await?
        .ok_or_else(|| not_found(id))?;
    tracing::info!(silence_id = %id, actor = %caller.actor(), "silence updated");
    Ok(envelope::data(record))
}

/// Deletes a silence. Notifications it suppressed stay recorded with its id.
#[utoipa::path(delete, path = "/silences/{id}", tag = "silences",
    params(("id" = Uuid, Path, description = "The silence's id.")),
    responses((status = 204, description = "Deleted.")))]
pub async fn delete(
    caller: Caller<Operator>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if !store::silences::delete(&state.pool, id).await? {
        return Err(not_found(id));
    }
    tracing::info!(silence_id = %id, actor = %caller.actor(), "silence deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("silence {id} not found"))
}
