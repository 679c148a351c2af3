//! Rules as the engine sees them, and which ones a replay runs.

use pipeline::Rule;
use schemas::Span;
use store::rules::{NewRule, RuleRecord};
use uuid::Uuid;

pub fn engine_rule(r: &RuleRecord) -> Rule {
    Rule {
        id: r.id,
        name: r.name.clone(),
        kind: r.kind,
        metric_type: r.metric_type.clone(),
        service_id: r.service_id.clone(),
        labels: r.labels.0.clone(),
        aggregation: r.aggregation,
        window: Span(r.window_ms),
        operator: r.operator,
        threshold: r.threshold,
        pending_for: Span(r.pending_for_ms),
        clear_threshold: r.clear_threshold,
        clear_for: Span(r.clear_for_ms),
        auto_resolve: r.auto_resolve,
        severity: r.severity,
        department_id: r.department_id,
        enabled: r.enabled,
    }
}

/// A rule that is not stored (or not as it is stored), under `id`: a draft to try out.
pub fn draft_rule(id: Uuid, r: &NewRule) -> Rule {
    Rule {
        id,
        name: r.name.clone(),
        kind: r.kind,
        metric_type: r.metric_type.clone(),
        service_id: r.service_id.clone(),
        labels: r.labels.clone(),
        aggregation: r.aggregation,
        window: r.window,
        operator: r.operator,
        threshold: r.threshold,
        pending_for: r.pending_for,
        clear_threshold: r.clear_threshold,
        clear_for: r.clear_for,
        auto_resolve: r.auto_resolve,
        severity: r.severity,
        department_id: r.department_id,
        enabled: r.enabled,
    }
}

/// METRICS subjects holding the series of `rules`, narrowed to `services` when any are given.
/// Never overlapping, as JetStream requires of a consumer's filters.
pub fn filter_subjects(rules: &[Rule], services: &[String]) -> Vec<String> {
    let mut wildcard: Vec<&str> = Vec::new();
    let mut exact: Vec<(String, &str)> = Vec::new();
    for rule in rules {
        let mt = rule.metric_type.as_str();
        match (&rule.service_id, services.is_empty()) {
            (None, true) => wildcard.push(mt),
            (None, false) => exact.extend(services.iter().map(|s| (s.clone(), mt))),
            (Some(s), true) => exact.push((s.clone(), mt)),
            (Some(s), false) if services.contains(s) => exact.push((s.clone(), mt)),
            (Some(_), false) => {}
        }
    }
    wildcard.sort_unstable();
    wildcard.dedup();
    exact.retain(|(_, mt)| !wildcard.contains(mt));
    exact.sort_unstable();
    exact.dedup();
    wildcard
        .into_iter()
        .map(|mt| schemas::subject::metrics_subject("*", mt))
        .chain(
            exact
                .into_iter()
                .map(|(s, mt)| schemas::subject::metrics_subject(&s, mt)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Operator, Severity};

    fn rule(metric: &str, service: Option<&str>) -> Rule {
        let mut r = Rule::threshold("r", metric, Operator::Gt, 1.0, Severity::High);
        r.service_id = service.map(str::to_owned);
        r
    }

    #[test]
    fn filters_do_not_overlap() {
        let rules = [
            rule("LATENCY_MS", None),
            rule("LATENCY_MS", Some("S1")),
            rule("ERRORS", Some("S2")),
        ];
        assert_eq!(
            filter_subjects(&rules, &[]),
            ["metrics.*.LATENCY_MS", "metrics.S2.ERRORS"]
        );
        let services = ["S1".to_owned(), "S3".to_owned()];
        assert_eq!(
            filter_subjects(&rules, &services),
            ["metrics.S1.LATENCY_MS", "metrics.S3.LATENCY_MS"]
        );
    }
}
