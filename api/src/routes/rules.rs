//! `/api/rules`: CRUD. Every change reaches running evaluators through the rules table's
//! change notification, within a second.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

use schemas::{Aggregation, Operator, RuleKind, Severity, Span};
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
    #[serde(default = "threshold_kind")]
    pub kind: RuleKind,
    pub metric_type: String,
    #[serde(default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "last")]
    pub aggregation: Aggregation,
    #[serde(default)]
    pub window: Span,
    /// Required for threshold rules; absent rules have none.
    #[serde(default)]
    pub operator: Option<Operator>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default, rename = "for")]
    pub pending_for: Span,
    #[serde(default)]
    pub clear_threshold: Option<f64>,
    #[serde(default)]
    pub clear_for: Span,
    #[serde(default)]
    pub auto_resolve: bool,
    pub severity: Severity,
    #[serde(default)]
    pub department_id: Option<Uuid>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

const EDITABLE: &[&str] = &[
    "name",
    "kind",
    "metric_type",
    "service_id",
    "labels",
    "aggregation",
    "window",
    "operator",
    "threshold",
    "for",
    "clear_threshold",
    "clear_for",
    "auto_resolve",
    "severity",
    "department_id",
    "enabled",
];

fn enabled_by_default() -> bool {
    true
}

fn threshold_kind() -> RuleKind {
    RuleKind::Threshold
}

fn last() -> Aggregation {
    Aggregation::Last
}

impl RuleBody {
    /// Fails naming the field when a threshold rule lacks its operator or threshold.
    fn into_new_rule(self) -> Result<NewRule, ApiError> {
        let (operator, threshold) = match (self.kind, self.operator, self.threshold) {
            (RuleKind::Threshold, None, _) => {
                return Err(ApiError::invalid_field(
                    "operator",
                    "is required for threshold rules",
                ))
            }
            (RuleKind::Threshold, _, None) => {
                return Err(ApiError::invalid_field(
                    "threshold",
                    "is required for threshold rules",
                ))
            }
            (_, operator, threshold) => {
                (operator.unwrap_or(Operator::Gt), threshold.unwrap_or(0.0))
            }
        };
        let name = self.name.unwrap_or_else(|| match self.kind {
            RuleKind::Absent => format!("no {} for {}", self.metric_type, self.window),
            RuleKind::Threshold if self.window.is_zero() => {
                format!("{} {operator} {threshold}", self.metric_type)
            }
            RuleKind::Threshold => format!(
                "{}({} over {}) {operator} {threshold}",
                self.aggregation, self.metric_type, self.window
            ),
        });
        Ok(NewRule {
            name,
            kind: self.kind,
            metric_type: self.metric_type,
            service_id: self.service_id,
            labels: self.labels,
            aggregation: self.aggregation,
            window: self.window,
            operator,
            threshold,
            pending_for: self.pending_for,
            clear_threshold: self.clear_threshold,
            clear_for: self.clear_for,
            auto_resolve: self.auto_resolve,
            severity: self.severity,
            department_id: self.department_id,
            enabled: self.enabled,
        })
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
    let rule = checked(&state, body.into_new_rule()?).await?;
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
        ("kind", json!(current.kind)),
        ("metric_type", json!(current.metric_type)),
        ("service_id", json!(current.service_id)),
        ("labels", json!(current.labels.0)),
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
    let rule = checked(&state, body.into_new_rule()?).await?;
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
        "kind": r.kind,
        "metric_type": r.metric_type,
        "service_id": r.service_id,
        "labels": r.labels.0,
        "aggregation": r.aggregation,
        "window": Span(r.window_ms),
        "operator": r.operator,
        "threshold": r.threshold,
        "for": Span(r.pending_for_ms),
        "clear_threshold": r.clear_threshold,
        "clear_for": Span(r.clear_for_ms),
        "auto_resolve": r.auto_resolve,
        "severity": r.severity,
        "department_id": r.department_id,
        "enabled": r.enabled,
    })
}
