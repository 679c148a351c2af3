//! The rule model: which series a rule watches and what counts as a violation.

use schemas::{Operator, Severity};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A seed-style threshold rule: a sample of `metric_type` (from `service_id`, or any service)
/// violates it when `value <operator> threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: Uuid,
    pub name: String,
    pub metric_type: String,
    /// `None` watches every service.
    pub service_id: Option<String>,
    pub operator: Operator,
    pub threshold: f64,
    pub severity: Severity,
    /// Owning team; copied onto incidents the rule opens.
    pub department_id: Option<Uuid>,
    /// Disabled rules are not evaluated, but their open episodes are kept.
    pub enabled: bool,
}

/// A rule field that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct RuleError {
    pub field: &'static str,
    pub reason: String,
}

impl Rule {
    /// Checks the invariants the engine relies on.
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

    /// Whether this rule watches the given series.
    pub fn selects(&self, service_id: &str, metric_type: &str) -> bool {
        self.metric_type == metric_type
            && self.service_id.as_deref().is_none_or(|s| s == service_id)
    }

    pub fn violated_by(&self, value: f64) -> bool {
        self.operator.holds(value, self.threshold)
    }
}
