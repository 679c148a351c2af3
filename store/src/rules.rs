//! The `rules` table, and `rule_departments`: the departments besides its own that hear about a
//! rule's incidents. Every write to `rules` fires the `tracely_rules_changed` notification (a
//! statement trigger in the schema), which evaluators listen on to reload.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use schemas::{Aggregation, Operator, RuleKind, Severity, Span};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{Page, Sort, SortField};

/// Channel that rule changes are announced on.
pub const CHANGED_CHANNEL: &str = "tracely_rules_changed";

const COLUMNS: &str = "id, name, kind, metric_type, service_id, labels, aggregation, window_ms, \
                       operator, threshold, pending_for_ms, clear_threshold, clear_for_ms, \
                       auto_resolve, severity, department_id, enabled, trigger_count, \
                       created_at, updated_at, \
                       ARRAY(SELECT rd.department_id FROM rule_departments rd \
                             WHERE rd.rule_id = rules.id ORDER BY rd.department_id) \
                       AS extra_department_ids";

/// Most extra departments one rule may name.
pub const MAX_EXTRA_DEPARTMENTS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RuleRecord {
    pub id: Uuid,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub kind: RuleKind,
    pub metric_type: String,
    pub service_id: Option<String>,
    #[schema(value_type = BTreeMap<String, String>)]
    pub labels: sqlx::types::Json<BTreeMap<String, String>>,
    #[sqlx(try_from = "String")]
    pub aggregation: Aggregation,
    #[serde(rename = "window", serialize_with = "as_span")]
    #[schema(value_type = Span)]
    pub window_ms: i64,
    #[sqlx(try_from = "String")]
    pub operator: Operator,
    pub threshold: f64,
    #[serde(rename = "for", serialize_with = "as_span")]
    #[schema(value_type = Span)]
    pub pending_for_ms: i64,
    pub clear_threshold: Option<f64>,
    #[serde(rename = "clear_for", serialize_with = "as_span")]
    #[schema(value_type = Span)]
    pub clear_for_ms: i64,
    pub auto_resolve: bool,
    #[sqlx(try_from = "String")]
    pub severity: Severity,
    pub department_id: Option<Uuid>,
    /// Departments besides `department_id` that hear about the rule's incidents, by id.
    pub extra_department_ids: Vec<Uuid>,
    pub enabled: bool,
    /// How many incidents the rule has opened.
    pub trigger_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Durations are stored as milliseconds and shown as text such as `5m`.
fn as_span<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&Span(*ms), s)
}

/// A validated rule to create.
#[derive(Debug, Clone)]
pub struct NewRule {
    pub name: String,
    pub kind: RuleKind,
    pub metric_type: String,
    pub service_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub aggregation: Aggregation,
    pub window: Span,
    pub operator: Operator,
    pub threshold: f64,
    pub pending_for: Span,
    pub clear_threshold: Option<f64>,
    pub clear_for: Span,
    pub auto_resolve: bool,
    pub severity: Severity,
    pub department_id: Option<Uuid>,
    /// Departments besides `department_id` to notify; repeats count once.
    pub extra_department_ids: Vec<Uuid>,
    pub enabled: bool,
}

/// A rule field that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct RuleError {
    pub field: &'static str,
    pub reason: String,
}

impl NewRule {
    /// A seed-style rule: each sample judged on its own, firing and clearing at once.
    pub fn threshold(
        name: &str,
        metric_type: &str,
        operator: Operator,
        threshold: f64,
        severity: Severity,
    ) -> NewRule {
        NewRule {
            name: name.to_owned(),
            kind: RuleKind::Threshold,
            metric_type: metric_type.to_owned(),
            service_id: None,
            labels: BTreeMap::new(),
            aggregation: Aggregation::Last,
            window: Span::ZERO,
            operator,
            threshold,
            pending_for: Span::ZERO,
            clear_threshold: None,
            clear_for: Span::ZERO,
            auto_resolve: false,
            severity,
            department_id: None,
            extra_department_ids: Vec::new(),
            enabled: true,
        }
    }

    /// Checks every invariant the engine relies on; the error names the field.
    pub fn validate(&self) -> Result<(), RuleError> {
        let err = |field, reason: String| Err(RuleError { field, reason });
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return err("name", "must be 1 to 200 characters".into());
        }
        if let Err(reason) = schemas::sample::validate_metric_type(&self.metric_type) {
            return err("metric_type", reason);
        }
        if let Some(service) = &self.service_id {
            if let Err(reason) = schemas::sample::validate_service_id(service) {
                return err("service_id", reason);
            }
        }
        if !self.threshold.is_finite() {
            return err("threshold", "must be a finite number".into());
        }
        if let Some(own) = self
            .department_id
            .filter(|own| self.extra_department_ids.contains(own))
        {
            return err(
                "extra_department_ids",
                format!("{own} is the rule's own department_id; list only other departments"),
            );
        }
        if self.extra_department_ids.len() > MAX_EXTRA_DEPARTMENTS {
            return err(
                "extra_department_ids",
                format!("at most {MAX_EXTRA_DEPARTMENTS} departments"),
            );
        }
        for (name, value) in &self.labels {
            if let Err(reason) = schemas::series::validate_label_name(name) {
                return err("labels", reason);
            }
            if value.is_empty() || value.len() > schemas::sample::MAX_LABEL_VALUE_LEN {
                return err(
                    "labels",
                    format!("the value of {name:?} must be 1 to 256 bytes"),
                );
            }
        }
        if self.kind == RuleKind::Absent {
            if self.window.is_zero() {
                return err(
                    "window",
                    "an absent rule needs the silence to wait for, such as 3m".into(),
                );
            }
            let unused = [
                ("aggregation", self.aggregation != Aggregation::Last),
                ("for", !self.pending_for.is_zero()),
                ("clear_threshold", self.clear_threshold.is_some()),
                ("clear_for", !self.clear_for.is_zero()),
            ];
            if let Some((field, _)) = unused.iter().find(|(_, set)| *set) {
                return err(field, "does not apply to absent rules".into());
            }
        }
        if self.kind == RuleKind::Threshold
            && self.window.is_zero()
            && self.aggregation != Aggregation::Last
        {
            return err(
                "window",
                format!(
                    "aggregation {} needs a window, such as 5m",
                    self.aggregation
                ),
            );
        }
        if let Some(clear) = self.clear_threshold {
            if !clear.is_finite() {
                return err("clear_threshold", "must be a finite number".into());
            }
            let (ok, side) = match self.operator {
                Operator::Gt | Operator::Ge => (clear <= self.threshold, "at most"),
                Operator::Lt | Operator::Le => (clear >= self.threshold, "at least"),
                Operator::Eq | Operator::Ne => {
                    return err(
                        "clear_threshold",
                        format!("is not supported with operator {}", self.operator),
                    )
                }
            };
            if !ok {
                return err(
                    "clear_threshold",
                    format!(
                        "must be {side} the threshold ({}) for operator {}: the value clears by coming back past it",
                        self.threshold, self.operator
                    ),
                );
            }
        }
        Ok(())
    }
}

pub async fn list_all(pool: &PgPool) -> Result<Vec<RuleRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rules ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await
}

/// Filters of `GET /api/rules`; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct RuleFilter {
    pub metric_type: Option<String>,
    pub service_id: Option<String>,
    pub severity: Option<Severity>,
    pub department_id: Option<Uuid>,
    pub enabled: Option<bool>,
}

pub const SORT_FIELDS: &[SortField] = &[
    SortField::new("created_at", "created_at"),
    SortField::new("updated_at", "updated_at"),
    SortField::new("name", "name"),
    SortField::new("metric_type", "metric_type"),
    SortField::new("trigger_count", "trigger_count"),
    SortField::new("severity", crate::SEVERITY_RANK),
];

/// Oldest first: the order rules were written in.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: false,
};

/// The rules that opened most incidents: `sort` by trigger count, descending.
pub const TOP_TRIGGERED: Sort = Sort {
    field: SORT_FIELDS[4],
    descending: true,
};

pub async fn list(
    pool: &PgPool,
    filter: &RuleFilter,
    sort: Sort,
    page: Page,
) -> Result<(Vec<RuleRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM rules"));
    push_filter(&mut query, filter);
    sort.push_order_and_page(&mut query, "id", page);
    let rows = query.build_query_as().fetch_all(pool).await?;
    let mut count = QueryBuilder::new("SELECT count(*) FROM rules");
    push_filter(&mut count, filter);
    let total = count.build_query_scalar().fetch_one(pool).await?;
    Ok((rows, total))
}

fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &RuleFilter) {
    let mut sep = " WHERE ";
    let mut clause = |query: &mut QueryBuilder<'_, Postgres>, condition: &str| {
        query.push(sep).push(condition);
        sep = " AND ";
    };
    if let Some(metric_type) = &filter.metric_type {
        clause(query, "metric_type = ");
        query.push_bind(metric_type.clone());
    }
    if let Some(service_id) = &filter.service_id {
        clause(query, "service_id = ");
        query.push_bind(service_id.clone());
    }
    if let Some(severity) = filter.severity {
        clause(query, "severity = ");
        query.push_bind(severity.as_str());
    }
    if let Some(department_id) = filter.department_id {
        clause(query, "department_id = ");
        query.push_bind(department_id);
    }
    if let Some(enabled) = filter.enabled {
        clause(query, "enabled = ");
        query.push_bind(enabled);
    }
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<RuleRecord>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM rules WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Creates a rule with its extra departments. A department that does not exist fails with a
/// foreign-key violation (SQLSTATE 23503).
pub async fn insert(pool: &PgPool, rule: &NewRule) -> Result<RuleRecord, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (id,): (Uuid,) = sqlx::query_as(
        "INSERT INTO rules (id, name, metric_type, service_id, operator, threshold, severity,
                            department_id, enabled, kind, labels, aggregation, window_ms,
                            pending_for_ms, clear_threshold, clear_for_ms, auto_resolve)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind_rule(rule)
    .fetch_one(&mut *tx)
    .await?;
    set_extra_departments(&mut tx, id, &rule.extra_department_ids).await?;
    let record = fetch(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(record)
}

/// Replaces every editable field of a rule (the API merges a PATCH onto the current record
/// first). Returns `None` when the rule does not exist.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    rule: &NewRule,
) -> Result<Option<RuleRecord>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let updated: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE rules SET name = $2, metric_type = $3, service_id = $4, operator = $5,
                threshold = $6, severity = $7, department_id = $8, enabled = $9, kind = $10,
                labels = $11, aggregation = $12, window_ms = $13, pending_for_ms = $14,
                clear_threshold = $15, clear_for_ms = $16, auto_resolve = $17,
                updated_at = now()
         WHERE id = $1 RETURNING id",
    )
    .bind(id)
    .bind_rule(rule)
    .fetch_optional(&mut *tx)
    .await?;
    if updated.is_none() {
        return Ok(None);
    }
    set_extra_departments(&mut tx, id, &rule.extra_department_ids).await?;
    let record = fetch(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(Some(record))
}

/// Makes `departments` the rule's extra departments, exactly.
async fn set_extra_departments(
    tx: &mut sqlx::PgConnection,
    rule_id: Uuid,
    departments: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM rule_departments WHERE rule_id = $1 AND department_id <> ALL($2)")
        .bind(rule_id)
        .bind(departments)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO rule_departments (rule_id, department_id)
         SELECT DISTINCT $1::uuid, department_id FROM unnest($2::uuid[]) AS department_id
         ON CONFLICT DO NOTHING",
    )
    .bind(rule_id)
    .bind(departments)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn fetch<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<RuleRecord, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM rules WHERE id = $1"))
        .bind(id)
        .fetch_one(executor)
        .await
}

/// The departments besides its own that hear about a rule's incidents, by id; empty for a rule
/// that names none or does not exist.
pub async fn extra_departments<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    rule_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT department_id FROM rule_departments WHERE rule_id = $1 ORDER BY department_id",
    )
    .bind(rule_id)
    .fetch_all(executor)
    .await
}

/// Returns whether a rule was deleted.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let result = sqlx::query("DELETE FROM rules WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// Counts more incidents opened by each rule: `(rule id, how many)`, one entry per rule. Does
/// not touch `updated_at`, and skips the change notification, since evaluators do not care
/// about counts. Rows are locked in id order, as concurrent writers do.
pub async fn add_trigger_counts<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    counts: &[(Uuid, i64)],
) -> Result<(), sqlx::Error> {
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    let (ids, added): (Vec<Uuid>, Vec<i64>) = counts.into_iter().unzip();
    sqlx::query(
        "UPDATE rules SET trigger_count = trigger_count + c.added
         FROM unnest($1::uuid[], $2::int8[]) AS c(id, added)
         WHERE rules.id = c.id",
    )
    .bind(ids)
    .bind(added)
    .execute(executor)
    .await
    .map(|_| ())
}

/// Binds a rule's fields as parameters $2 to $17 of an insert or update.
trait BindRule<'q> {
    fn bind_rule(self, rule: &'q NewRule) -> Self;
}

impl<'q, O> BindRule<'q>
    for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
{
    fn bind_rule(self, rule: &'q NewRule) -> Self {
        self.bind(&rule.name)
            .bind(&rule.metric_type)
            .bind(&rule.service_id)
            .bind(rule.operator.as_str())
            .bind(rule.threshold)
            .bind(rule.severity.as_str())
            .bind(rule.department_id)
            .bind(rule.enabled)
            .bind(rule.kind.as_str())
            .bind(sqlx::types::Json(&rule.labels))
            .bind(rule.aggregation.as_str())
            .bind(rule.window.millis())
            .bind(rule.pending_for.millis())
            .bind(rule.clear_threshold)
            .bind(rule.clear_for.millis())
            .bind(rule.auto_resolve)
    }
}
