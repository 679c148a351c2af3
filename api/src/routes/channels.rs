//! `/api/departments/{id}/channels`: where a department hears about incidents. Secrets are
//! write-only, Slack URLs are shown masked, and webhook and Slack URLs must pass the target
//! policy (no private addresses unless allowed).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemas::{Severity, Span};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use store::channels::{Channel, ChannelKind, ChannelRecord, NewChannel};
use store::targets::TargetError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Admin, Caller, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::{bounded_text, from_value, JsonBody, Params};
use crate::openapi::PageQuery;
use crate::routes::{parse_id, parse_path_uuid};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, update, delete))
}

/// A channel as sent by clients.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelBody {
    /// `in_app`, `webhook` or `slack`; cannot change later.
    #[serde(rename = "type")]
    pub kind: ChannelKind,
    /// 1 to 100 characters; the type when omitted.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// Required for `webhook` and `slack` (an `http` or `https` URL that is not a private
    /// address unless allowed); not allowed for `in_app`.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// Signs webhook bodies: required for `webhook`, 16 to 256 characters; not allowed for the
    /// other types. Never returned.
    #[serde(default)]
    #[schema(min_length = 16, max_length = 256)]
    pub secret: Option<String>,
    /// The least severe incidents the channel hears about.
    #[serde(default = "low")]
    pub min_severity: Severity,
    /// Whether the channel also hears when an incident resolves.
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Transitions for one service within this time go out as one message; 0 to 1h, whole
    /// seconds, and 0 for `in_app`.
    #[serde(default)]
    pub group_wait: Span,
    /// Remind this often while an incident stays open: 1m to 7d, whole seconds; null never.
    #[serde(default)]
    pub repeat_interval: Option<Span>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// A merge patch of a channel: the given fields replace the current ones, `null` clears an
/// optional one. `type` cannot change; send a new `secret` to rotate it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChannelPatch {
    #[schema(rename = "type", nullable = false)]
    kind: Option<ChannelKind>,
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    #[schema(max_length = 2048)]
    url: Option<String>,
    #[schema(min_length = 16, max_length = 256)]
    secret: Option<String>,
    #[schema(nullable = false)]
    min_severity: Option<Severity>,
    #[schema(nullable = false)]
    send_resolved: Option<bool>,
    #[schema(nullable = false)]
    group_wait: Option<Span>,
    repeat_interval: Option<Span>,
    #[schema(nullable = false)]
    enabled: Option<bool>,
}

const EDITABLE: &[&str] = &[
    "type",
    "name",
    "url",
    "secret",
    "min_severity",
    "send_resolved",
    "group_wait",
    "repeat_interval",
    "enabled",
];

fn low() -> Severity {
    Severity::Low
}

fn yes() -> bool {
    true
}

impl ChannelBody {
    /// Checks every field; the URL's target is checked separately, by [`checked_url`].
    fn validated(self) -> Result<NewChannel, ApiError> {
        let name = match &self.name {
            Some(name) => bounded_text("name", name, store::channels::MAX_NAME_CHARS)?.to_owned(),
            None => self.kind.as_str().to_owned(),
        };
        let duration = |span: Span| Duration::from_millis(span.millis().unsigned_abs());
        let channel = NewChannel {
            name,
            kind: self.kind,
            url: self.url.map(|url| url.trim().to_owned()),
            secret: self.secret,
            min_severity: self.min_severity,
            send_resolved: self.send_resolved,
            group_wait: duration(self.group_wait),
            repeat_interval: self.repeat_interval.map(duration),
            enabled: self.enabled,
        };
        channel
            .validate()
            .map_err(|e| ApiError::invalid_field(e.field, e.reason))?;
        Ok(channel)
    }
}

/// Refuses a URL the server may not call under the configured target policy.
async fn checked_url(state: &AppState, channel: &NewChannel) -> Result<(), ApiError> {
    let Some(url) = &channel.url else {
        return Ok(());
    };
    store::targets::check(url, state.settings.targets)
        .await
        .map(|_| ())
        .map_err(|e: TargetError| ApiError::invalid_field("url", e.to_string()))
}

/// A department's channels, oldest first unless sorted otherwise (`sort_by`: `created_at`,
/// `name`).
#[utoipa::path(get, path = "/departments/{id}/channels", tag = "channels",
    params(("id" = Uuid, Path, description = "The department's id."), PageQuery),
    responses((status = 200, description = "A page of the department's channels.", body = List<ChannelRecord>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let page = params.page()?;
    let sort = params.sort(store::channels::SORT_FIELDS, store::channels::DEFAULT_SORT)?;
    params.finish()?;
    department_exists(&state, id).await?;
    let (items, total) = store::channels::list(&state.pool, id, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// Adds a channel to a department.
#[utoipa::path(post, path = "/departments/{id}/channels", tag = "channels",
    request_body = ChannelBody,
    params(("id" = Uuid, Path, description = "The department's id.")),
    responses((status = 201, description = "The created channel.", body = Data<ChannelRecord>)))]
pub async fn create(
    _: Caller<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ChannelBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    department_exists(&state, id).await?;
    let channel = body.validated()?;
    checked_url(&state, &channel).await?;
    let record = store::channels::insert(&state.pool, id, &channel)
        .await
        .map_err(|e| department_gone(e, id))?;
    tracing::info!(department_id = %id, channel_id = %record.id, kind = %record.kind,
        "notification channel created");
    Ok(envelope::created(record))
}

/// One channel of a department.
#[utoipa::path(get, path = "/departments/{id}/channels/{channel_id}", tag = "channels",
    params(
        ("id" = Uuid, Path, description = "The department's id."),
        ("channel_id" = Uuid, Path, description = "The channel's id."),
    ),
    responses((status = 200, description = "The channel.", body = Data<ChannelRecord>)))]
pub async fn get(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path((id, channel_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (id, channel_id) = ids(&id, &channel_id)?;
    match store::channels::get_in(&state.pool, id, channel_id).await? {
        Some(record) => Ok(envelope::data(record)),
        None => Err(not_found(&state, id, channel_id).await),
    }
}

/// Changes a channel with a merge patch: the given fields replace the current ones; `null`
/// clears an optional field. `type` cannot change; a new `secret` replaces the old one.
#[utoipa::path(patch, path = "/departments/{id}/channels/{channel_id}", tag = "channels",
    request_body = ChannelPatch,
    params(
        ("id" = Uuid, Path, description = "The department's id."),
        ("channel_id" = Uuid, Path, description = "The channel's id."),
    ),
    responses((status = 200, description = "The changed channel.", body = Data<ChannelRecord>)))]
pub async fn update(
    _: Caller<Admin>,
    State(state): State<AppState>,
    Path((id, channel_id)): Path<(String, String)>,
    JsonBody(patch): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let (id, channel_id) = ids(&id, &channel_id)?;
    if let Some(unknown) = patch.keys().find(|k| !EDITABLE.contains(&k.as_str())) {
        return Err(ApiError::invalid_field(
            unknown.clone(),
            format!(
                "unknown or read-only field; editable fields are {}",
                EDITABLE.join(", ")
            ),
        ));
    }
    let current = match store::channels::get(&state.pool, channel_id).await? {
        Some(channel) if channel.department_id == id => channel,
        _ => return Err(not_found(&state, id, channel_id).await),
    };
    if patch
        .get("type")
        .is_some_and(|kind| *kind != json!(current.kind))
    {
        return Err(ApiError::invalid_field(
            "type",
            format!(
                "cannot change a {} channel's type; create a new channel and delete this one",
                current.kind
            ),
        ));
    }
    let url_changed = patch.get("url").is_some_and(|url| !url.is_null());
    let mut merged = editable_fields(&current);
    for (field, value) in patch {
        merged[field] = value;
    }
    let channel = from_value::<ChannelBody>(merged)?.validated()?;
    if url_changed {
        checked_url(&state, &channel).await?;
    }
    let record = match store::channels::update(&state.pool, id, channel_id, &channel).await? {
        Some(record) => record,
        None => return Err(not_found(&state, id, channel_id).await),
    };
    tracing::info!(department_id = %id, channel_id = %channel_id, "notification channel updated");
    Ok(envelope::data(record))
}

/// Deletes a channel. Deliveries already recorded for it stay in the log.
#[utoipa::path(delete, path = "/departments/{id}/channels/{channel_id}", tag = "channels",
    params(
        ("id" = Uuid, Path, description = "The department's id."),
        ("channel_id" = Uuid, Path, description = "The channel's id."),
    ),
    responses((status = 204, description = "Deleted.")))]
pub async fn delete(
    _: Caller<Admin>,
    State(state): State<AppState>,
    Path((id, channel_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (id, channel_id) = ids(&id, &channel_id)?;
    if !store::channels::delete(&state.pool, id, channel_id).await? {
        return Err(not_found(&state, id, channel_id).await);
    }
    tracing::info!(department_id = %id, channel_id = %channel_id, "notification channel deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn ids(id: &str, channel_id: &str) -> Result<(Uuid, Uuid), ApiError> {
    Ok((parse_id(id)?, parse_path_uuid("channel_id", channel_id)?))
}

/// The current channel as a body, secret included, for a patch to be merged onto.
fn editable_fields(c: &Channel) -> Value {
    let span = |d: Duration| Span(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    json!({
        "type": c.kind,
        "name": c.name,
        "url": c.url,
        "secret": c.secret,
        "min_severity": c.min_severity,
        "send_resolved": c.send_resolved,
        "group_wait": span(c.group_wait),
        "repeat_interval": c.repeat_interval.map(span),
        "enabled": c.enabled,
    })
}

async fn department_exists(state: &AppState, id: Uuid) -> Result<(), ApiError> {
    if store::departments::exists(&state.pool, id).await? {
        Ok(())
    } else {
        Err(department_not_found(id))
    }
}

fn department_not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("department {id} not found"))
}

/// A department deleted between the check and the insert.
fn department_gone(e: sqlx::Error, id: Uuid) -> ApiError {
    match e.as_database_error().and_then(|d| d.code()).as_deref() {
        Some("23503") => department_not_found(id),
        _ => e.into(),
    }
}

/// Says whether the department or only the channel is missing.
async fn not_found(state: &AppState, id: Uuid, channel_id: Uuid) -> ApiError {
    match store::departments::exists(&state.pool, id).await {
        Ok(false) => department_not_found(id),
        Ok(true) => ApiError::NotFound(format!("department {id} has no channel {channel_id}")),
        Err(e) => e.into(),
    }
}
