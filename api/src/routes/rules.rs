//! `/api/rules`: CRUD. Every change reaches running evaluators through the rules table's
//! change notification, within a second.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

use schemas::live::RuleChange;
use schemas::{Aggregation, Operator, RuleKind, Severity, Span};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use store::rules::{NewRule, RuleFilter, RuleRecord};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Admin, Caller, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::{from_value, JsonBody, Params};
use crate::openapi::PageQuery;
use crate::routes::parse_id;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, update, delete))
        .routes(routes!(top_triggered))
}

/// The editable fields of a rule, as sent by clients.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    /// 1 to 200 characters; derived from the condition when omitted.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[serde(default = "threshold_kind")]
    pub kind: RuleKind,
    #[schema(pattern = "^[A-Z0-9_]{1,64}$")]
    pub metric_type: String,
    /// Only this service's series; all services when omitted.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub service_id: Option<String>,
    /// Only series carrying all these labels.
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
    /// How long the condition must hold before the rule fires.
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
    /// Departments besides `department_id` that hear about the rule's incidents. Each must
    /// exist, and the rule's own department may not be listed; repeats count once.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub extra_department_ids: Vec<Uuid>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

/// A merge patch of a rule: the given fields replace the current ones, `null` clears an
/// optional one. `kind`, `metric_type`, `service_id` and `labels` cannot change.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RulePatch {
    name: Option<String>,
    #[schema(nullable = false)]
    aggregation: Option<Aggregation>,
    #[schema(nullable = false)]
    window: Option<Span>,
    #[schema(nullable = false)]
    operator: Option<Operator>,
    #[schema(nullable = false)]
    threshold: Option<f64>,
    #[schema(rename = "for")]
    #[schema(nullable = false)]
    pending_for: Option<Span>,
    clear_threshold: Option<f64>,
    #[schema(nullable = false)]
    clear_for: Option<Span>,
    #[schema(nullable = false)]
    auto_resolve: Option<bool>,
    #[schema(nullable = false)]
    severity: Option<Severity>,
    department_id: Option<Uuid>,
    /// Replaces the whole list; `[]` clears it.
    #[schema(nullable = false, max_items = 100)]
    extra_department_ids: Option<Vec<Uuid>>,
    #[schema(nullable = false)]
    enabled: Option<bool>,
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
    "extra_department_ids",
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
    pub(crate) fn into_new_rule(self) -> Result<NewRule, ApiError> {
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
            extra_department_ids: self.extra_department_ids,
            enabled: self.enabled,
        })
    }
}

/// Rules, oldest first unless sorted otherwise.
///
/// `sort_by` is one of `created_at`, `updated_at`, `name`, `metric_type`, `trigger_count`,
/// `severity`.
#[utoipa::path(get, path = "/rules", tag = "rules",
    params(
        PageQuery,
        ("metric_type" = Option<String>, Query, description = "Only rules on this metric."),
        ("service_id" = Option<String>, Query, description = "Only rules scoped to this service."),
        ("severity" = Option<Severity>, Query, description = "Only rules of this severity."),
        ("department_id" = Option<Uuid>, Query, description = "Only rules owned by this department."),
        ("enabled" = Option<bool>, Query, description = "Only enabled (true) or disabled (false) rules."),
    ),
    responses((status = 200, description = "A page of rules.", body = List<RuleRecord>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let filter = RuleFilter {
        metric_type: params.take("metric_type")?,
        service_id: params.take("service_id")?,
        severity: params.take("severity")?,
        department_id: params.take("department_id")?,
        enabled: params.take("enabled")?,
    };
    let page = params.page()?;
    let sort = params.sort(store::rules::SORT_FIELDS, store::rules::DEFAULT_SORT)?;
    params.finish()?;
    let (items, total) = store::rules::list(&state.pool, &filter, sort, page).await?;
    Ok(envelope::list(items, total, page))
}

/// The rules that opened the most incidents, most first.
#[utoipa::path(get, path = "/rules/stats/top-triggered", tag = "rules",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "How many rules; 10 when omitted."),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Rules to skip."),
        ("department_id" = Option<Uuid>, Query, description = "Only rules owned by this department."),
    ),
    responses((status = 200, description = "Rules by trigger count.", body = List<RuleRecord>)))]
pub async fn top_triggered(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let filter = RuleFilter {
        department_id: params.take("department_id")?,
        ..RuleFilter::default()
    };
    let limit = params.take::<i64>("limit")?.unwrap_or(10);
    let mut page = params.page()?;
    page.limit = limit;
    if !(1..=store::Page::MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest {
            message: format!(
                "query parameter `limit`: must be between 1 and {}",
                store::Page::MAX_LIMIT
            ),
            details: json!([{ "field": "limit", "message": "out of range" }]),
        });
    }
    params.finish()?;
    let (items, total) =
        store::rules::list(&state.pool, &filter, store::rules::TOP_TRIGGERED, page).await?;
    Ok(envelope::list(items, total, page))
}

/// One rule.
#[utoipa::path(get, path = "/rules/{id}", tag = "rules",
    params(("id" = Uuid, Path, description = "The rule's id.")),
    responses((status = 200, description = "The rule.", body = Data<RuleRecord>)))]
pub async fn get(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rule = find(&state, parse_id(&id)?).await?;
    Ok(envelope::data(rule))
}

/// Creates a rule; running evaluators apply it within a second.
#[utoipa::path(post, path = "/rules", tag = "rules", request_body = RuleBody,
    responses((status = 201, description = "The created rule.", body = Data<RuleRecord>)))]
pub async fn create(
    _: Caller<Admin>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RuleBody>,
) -> Result<Response, ApiError> {
    let rule = checked(&state, body.into_new_rule()?).await?;
    let record = store::rules::insert(&state.pool, &rule).await?;
    tracing::info!(rule_id = %record.id, name = %record.name, "rule created");
    state
        .live
        .rule_changed(record.id, RuleChange::Created)
        .await;
    Ok(envelope::created(record))
}

/// Changes a rule with a merge patch: the given fields replace the current ones; `null` clears
/// an optional field.
#[utoipa::path(patch, path = "/rules/{id}", tag = "rules", request_body = RulePatch,
    params(("id" = Uuid, Path, description = "The rule's id.")),
    responses((status = 200, description = "The changed rule.", body = Data<RuleRecord>)))]
pub async fn update(
    _: Caller<Admin>,
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
    state.live.rule_changed(id, RuleChange::Updated).await;
    Ok(envelope::data(record))
}

/// Deletes a rule. Its incidents stay.
#[utoipa::path(delete, path = "/rules/{id}", tag = "rules",
    params(("id" = Uuid, Path, description = "The rule's id.")),
    responses((status = 204, description = "Deleted.")))]
pub async fn delete(
    _: Caller<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if !store::rules::delete(&state.pool, id).await? {
        return Err(not_found(id));
    }
    tracing::info!(rule_id = %id, "rule deleted");
    state.live.rule_changed(id, RuleChange::Deleted).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn find(state: &AppState, id: Uuid) -> Result<RuleRecord, ApiError> {
    store::rules::get(&state.pool, id)
        .await?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("rule {id} not found"))
}

/// Validates the rule and that its departments exist.
pub(crate) async fn checked(state: &AppState, rule: NewRule) -> Result<NewRule, ApiError> {
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
    let missing = store::departments::missing(&state.pool, &rule.extra_department_ids).await?;
    if let Some(department) = missing.first() {
        return Err(ApiError::invalid_field(
            "extra_department_ids",
            format!("department {department} does not exist"),
        ));
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
        "extra_department_ids": r.extra_department_ids,
        "enabled": r.enabled,
    })
}
