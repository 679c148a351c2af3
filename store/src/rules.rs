//! The `rules` table. Every write fires the `tracely_rules_changed` notification (a statement
//! trigger in the schema), which evaluators listen on to reload.

use chrono::{DateTime, Utc};
use schemas::{Operator, Severity};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Page;

/// Channel that rule changes are announced on.
pub const CHANGED_CHANNEL: &str = "tracely_rules_changed";

const COLUMNS: &str = "id, name, metric_type, service_id, operator, threshold, severity, \
                       department_id, enabled, trigger_count, created_at, updated_at";

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RuleRecord {
    pub id: Uuid,
    pub name: String,
    pub metric_type: String,
    pub service_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub operator: Operator,
    pub threshold: f64,
    #[sqlx(try_from = "String")]
    pub severity: Severity,
    pub department_id: Option<Uuid>,
    pub enabled: bool,
    /// How many incidents the rule has opened.
    pub trigger_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A validated rule to create.
#[derive(Debug, Clone)]
pub struct NewRule {
    pub name: String,
    pub metric_type: String,
    pub service_id: Option<String>,
    pub operator: Operator,
    pub threshold: f64,
    pub severity: Severity,
    pub department_id: Option<Uuid>,
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

pub async fn list(pool: &PgPool, page: Page) -> Result<(Vec<RuleRecord>, i64), sqlx::Error> {
    let rows = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rules ORDER BY created_at, id LIMIT $1 OFFSET $2"
    ))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM rules")
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<RuleRecord>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM rules WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn insert(pool: &PgPool, rule: &NewRule) -> Result<RuleRecord, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO rules (id, name, metric_type, service_id, operator, threshold, severity,
                            department_id, enabled)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(&rule.name)
    .bind(&rule.metric_type)
    .bind(&rule.service_id)
    .bind(rule.operator.as_str())
    .bind(rule.threshold)
    .bind(rule.severity.as_str())
    .bind(rule.department_id)
    .bind(rule.enabled)
    .fetch_one(pool)
    .await
}

/// Replaces every editable field of a rule (the API merges a PATCH onto the current record
/// first). Returns `None` when the rule does not exist.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    rule: &NewRule,
) -> Result<Option<RuleRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE rules SET name = $2, metric_type = $3, service_id = $4, operator = $5,
                threshold = $6, severity = $7, department_id = $8, enabled = $9,
                updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&rule.name)
    .bind(&rule.metric_type)
    .bind(&rule.service_id)
    .bind(rule.operator.as_str())
    .bind(rule.threshold)
    .bind(rule.severity.as_str())
    .bind(rule.department_id)
    .bind(rule.enabled)
    .fetch_optional(pool)
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

/// Counts one more incident opened by the rule. Does not touch `updated_at`, and skips the
/// change notification, since evaluators do not care about counts.
pub async fn increment_trigger_count<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE rules SET trigger_count = trigger_count + 1 WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await
        .map(|_| ())
}
