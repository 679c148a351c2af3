//! The rule model: which series a rule watches, how it reduces them, and what counts as a
//! violation, a pending period and a clearing.

use std::collections::BTreeMap;

use schemas::{Aggregation, Operator, RuleKind, Severity, Span};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: Uuid,
    pub name: String,
    pub kind: RuleKind,
    pub metric_type: String,
    /// `None` watches every service.
    pub service_id: Option<String>,
    /// Every label here must be present on the series with this value.
    pub labels: BTreeMap<String, String>,
    pub aggregation: Aggregation,
    /// Width of the sliding event-time window; zero judges each sample on its own. For
    /// `absent` rules, how long a series must be silent.
    pub window: Span,
    pub operator: Operator,
    pub threshold: f64,
    /// How long the condition must hold before the rule fires.
    pub pending_for: Span,
    /// Hysteresis: the level the value must get back past to clear (defaults to `threshold`).
    pub clear_threshold: Option<f64>,
    /// How long the clear condition must hold before the incident resolves.
    pub clear_for: Span,
    /// Whether clearing also closes the incident.
    pub auto_resolve: bool,
    pub severity: Severity,
    /// Owning team; copied onto incidents the rule opens.
    pub department_id: Option<Uuid>,
    /// Disabled rules are not evaluated, but their state is kept.
    pub enabled: bool,
}

impl Rule {
    /// A seed-style rule: each sample judged on its own, firing at once, clearing at once.
    pub fn threshold(
        name: &str,
        metric_type: &str,
        operator: Operator,
        threshold: f64,
        severity: Severity,
    ) -> Rule {
        Rule {
            id: Uuid::new_v4(),
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
            enabled: true,
        }
    }

    /// Whether this rule watches the given series.
    pub fn selects(
        &self,
        service_id: &str,
        metric_type: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        self.metric_type == metric_type
            && self.service_id.as_deref().is_none_or(|s| s == service_id)
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }

    pub fn violated_by(&self, value: f64) -> bool {
        self.operator.holds(value, self.threshold)
    }

    /// Whether `value` is back past the clear level.
    pub fn cleared_by(&self, value: f64) -> bool {
        !self
            .operator
            .holds(value, self.clear_threshold.unwrap_or(self.threshold))
    }

    /// Samples this late (behind the newest of their series) still count. Only windows wait
    /// for them: a rule without a window judges each sample as it arrives.
    pub fn lateness(&self, allowed: Span) -> i64 {
        if self.kind == RuleKind::Threshold && self.window.is_zero() {
            0
        } else {
            allowed.millis()
        }
    }

    /// Whether each sample can be judged on its own, without keeping a window.
    pub fn judges_single_samples(&self) -> bool {
        self.kind == RuleKind::Threshold && self.window.is_zero()
    }
}
