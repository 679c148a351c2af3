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

impl Rule {
    /// Whether this rule watches the given series.
    pub fn selects(&self, service_id: &str, metric_type: &str) -> bool {
        self.metric_type == metric_type
            && self.service_id.as_deref().is_none_or(|s| s == service_id)
    }

    pub fn violated_by(&self, value: f64) -> bool {
        self.operator.holds(value, self.threshold)
    }
}
