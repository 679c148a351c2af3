//! `/api/rules`: CRUD. Every change reaches running evaluators through the rules table's
//! change notification, within a second.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemas::{Operator, Severity};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use store::rules::{NewRule, RuleRecord};
use uuid::Uuid;

use crate::envelope;
use crate::error::ApiError;
use crate::extract::{from_value, JsonBody, Params};
use crate::routes::parse_id;
use crate::AppState;

/// The editable fields of a rule, as sent by clients.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    #[serde(default)]
    pub name: Option<String>,
    pub metric_type: String,
    #[serde(default)]
    pub service_id: Option<String>,
    pub operator: Operator,
    pub threshold: f64,
    pub severity: Severity,
    #[serde(default)]
    pub department_id: Option<Uuid>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

const EDITABLE: &[&str] = &[
    "name",
    "metric_type",
    "service_id",
    "operator",
    "threshold",
    "severity",
    "department_id",
    "enabled",
];

fn enabled_by_default() -> bool {
    true
}

impl RuleBody {
    fn into_new_rule(self) -> NewRule {
        let name = self.name.unwrap_or_else(|| {
            format!("{} {} {}", self.metric_type, self.operator, self.threshold)
        });
        NewRule {
            name,
            metric_type: self.metric_type,
            service_id: self.service_id,
            operator: self.operator,
            threshold: self.threshold,
            severity: self.severity,
            department_id: self.department_id,
            enabled: self.enabled,
        }
    }
}

pub async fn list(State(state): State<AppState>, mut params: Params) -> Result<Response, ApiError> {
    let page = params.page()?;
    params.finish()?;
    let (items, total) = store::rules::list(&state.pool, page).await?;
    Ok(envelope::list(items, total, page))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rule = find(&state, parse_id(&id)?).await?;
    Ok(envelope::data(rule))
}

pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RuleBody>,
) -> Result<Response, ApiError> {
    let rule = checked(&state, body.into_new_rule()).await?;
    let record = store::rules::insert(&state.pool, &rule).await?;
    tracing::info!(rule_id = %record.id, name = %record.name, "rule created");
    Ok(envelope::created(record))
}

/// A merge patch: the given fields replace the current ones; `null` clears an optional field.
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if let Some(unknown) = patch.keys().find(|k| !EDITABLE.contains(&k.as_str())) {
        return Err(ApiError::invalid_field(
            unknown.clone(),
            format!(
                "unknown or read-only field; editable fields are {}",
                EDITABLE.join(", ")
            ),
        ));
    }
    let current = find(&state, id).await?;
    for (field, now) in [
        ("metric_type", json!(current.metric_type)),
        ("service_id", json!(current.service_id)),
    ] {
        if patch.get(field).is_some_and(|new| *new != now) {
            return Err(ApiError::invalid_field(
                field,
                "cannot change: the rule's open incidents would never resolve; create a new rule instead",
            ));
        }
    }
    let mut merged = editable_fields(&current);
    for (field, value) in patch {
        merged[field] = value;
    }
    let body: RuleBody = from_value(merged)?;
    let rule = checked(&state, body.into_new_rule()).await?;
    let record = store::rules::update(&state.pool, id, &rule)
        .await?
        .ok_or_else(|| not_found(id))?;
    tracing::info!(rule_id = %id, "rule updated");
    Ok(envelope::data(record))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if !store::rules::delete(&state.pool, id).await? {
        return Err(not_found(id));
    }
    tracing::info!(rule_id = %id, "rule deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn find(state: &AppState, id: Uuid) -> Result<RuleRecord, ApiError> {
    store::rules::get(&state.pool, id)
        .await?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("rule {id} not found"))
}

/// Validates the rule and that its department exists.
async fn checked(state: &AppState, rule: NewRule) -> Result<NewRule, ApiError> {
    rule.validate()
        .map_err(|e| ApiError::invalid_field(e.field, e.reason))?;
    if let Some(department) = rule.department_id {
        if !store::departments::exists(&state.pool, department).await? {
            return Err(ApiError::invalid_field(
                "department_id",
                format!("department {department} does not exist"),
            ));
        }
    }
    Ok(rule)
}

fn editable_fields(r: &RuleRecord) -> Value {
    json!({
        "name": r.name,
        "metric_type": r.metric_type,
        "service_id": r.service_id,
        "operator": r.operator,
        "threshold": r.threshold,
        "severity": r.severity,
        "department_id": r.department_id,
        "enabled": r.enabled,
    })
}
