//! Per-(rule, series) episode state for seed-style threshold rules.
//!
//! A violating sample opens an episode (and with it one incident); further violations update
//! that incident; the first non-violating sample resolves it and ends the episode, so a later
//! violation opens a new incident. Each transition carries a full [`IncidentSnapshot`].
//!
//! Samples carry their METRICS stream sequence. An episode remembers the last sequence applied
//! to it and ignores samples at or below it, so a sample delivered again after a crash is not
//! counted twice. After a restart the engine is also given watermarks for episodes that ended
//! recently, so re-reading the samples of an episode that already resolved cannot open a
//! phantom one.
//!
//! Event time only moves forward within a (rule, series): a violation at or before the last
//! resolution cannot open a new episode (its id would be the resolved one's), and a
//! non-violating sample older than the open episode's last violation cannot resolve it. Such
//! samples are late: they are counted and dropped.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::{
    IncidentSnapshot, IncidentTransition, MetricSample, Operator, Source, TransitionKind,
};
use uuid::Uuid;

use crate::identity::incident_id;
use crate::rule::Rule;

/// Open episodes keyed by (rule id, series key).
type EpisodeKey = (Uuid, String);

#[derive(Debug, Default)]
pub struct Engine {
    rules: HashMap<Uuid, Rule>,
    /// Enabled rules per metric type, so a sample only meets the rules that can select it.
    by_metric: HashMap<String, Vec<Uuid>>,
    episodes: HashMap<EpisodeKey, IncidentSnapshot>,
    /// Restored sequence watermarks: samples at or below them were already applied. Cleared
    /// once the stream has moved past all of them.
    watermarks: HashMap<EpisodeKey, u64>,
    highest_watermark: u64,
    /// Event time of the last resolution per (rule, series).
    resolved: HashMap<EpisodeKey, DateTime<Utc>>,
    /// Samples dropped as late since the last [`Engine::take_late`].
    late: u64,
    source: Option<Source>,
}

impl Engine {
    /// An engine for the live pipeline.
    pub fn new(rules: Vec<Rule>) -> Engine {
        Engine::with_source(rules, Source::Live)
    }

    /// An engine whose incidents are marked with `source` (live or backfill).
    pub fn with_source(rules: Vec<Rule>, source: Source) -> Engine {
        let mut engine = Engine {
            source: Some(source),
            ..Engine::default()
        };
        engine.set_rules(rules);
        engine
    }

    /// Replaces the rule set. Episodes of rules that no longer exist are forgotten; episodes of
    /// disabled rules are kept so that re-enabling continues them.
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        self.rules = rules.into_iter().map(|r| (r.id, r)).collect();
        self.by_metric.clear();
        for rule in self.rules.values().filter(|r| r.enabled) {
            self.by_metric
                .entry(rule.metric_type.clone())
                .or_default()
                .push(rule.id);
        }
        for ids in self.by_metric.values_mut() {
            ids.sort_unstable();
        }
        let rules = &self.rules;
        self.episodes
            .retain(|(rule_id, _), _| rules.contains_key(rule_id));
    }

    /// Restores open episodes, for example from the unresolved incidents after a restart. If two
    /// snapshots claim the same (rule, series), the one with the later sample wins.
    pub fn restore(&mut self, open: impl IntoIterator<Item = IncidentSnapshot>) {
        for incident in open {
            if incident.resolved_at.is_some() {
                continue;
            }
            let key = (incident.rule_id, incident.series_key.clone());
            match self.episodes.get(&key) {
                Some(known) if known.last_sample_seq > incident.last_sample_seq => {}
                _ => {
                    self.episodes.insert(key, incident);
                }
            }
        }
    }

    /// Marks samples of a (rule, series) up to `seq` as already applied, so that re-reading them
    /// after a restart changes nothing even when their episode has since resolved.
    pub fn restore_watermark(&mut self, rule_id: Uuid, series_key: String, seq: u64) {
        let mark = self.watermarks.entry((rule_id, series_key)).or_insert(0);
        *mark = (*mark).max(seq);
        self.highest_watermark = self.highest_watermark.max(seq);
    }

    /// Restores the event time of the last resolution of a (rule, series).
    pub fn restore_resolution(&mut self, rule_id: Uuid, series_key: String, at: DateTime<Utc>) {
        let last = self.resolved.entry((rule_id, series_key)).or_insert(at);
        *last = (*last).max(at);
    }

    /// How many samples were dropped as late since the last call.
    pub fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    pub fn open_episodes(&self) -> usize {
        self.episodes.len()
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Evaluates one sample against every enabled rule that selects its series and appends the
    /// resulting transitions to `out`. `seq` is the sample's stream sequence (0 when unknown).
    pub fn evaluate(&mut self, sample: &MetricSample, seq: u64, out: &mut Vec<IncidentTransition>) {
        if !self.watermarks.is_empty() && seq > self.highest_watermark {
            self.watermarks = HashMap::new();
        }
        let Some(rule_ids) = self.by_metric.get(&sample.metric_type) else {
            return;
        };
        let mut series_key = None;
        for rule_id in rule_ids {
            let rule = &self.rules[rule_id];
            if !rule.selects(&sample.service_id, &sample.metric_type) {
                continue;
            }
            let key = (
                rule.id,
                series_key
                    .get_or_insert_with(|| sample.series_key())
                    .clone(),
            );
            if seq != 0 && self.watermarks.get(&key).is_some_and(|&mark| seq <= mark) {
                continue;
            }
            let source = self.source.unwrap_or(Source::Live);
            let violated = rule.violated_by(sample.value);
            let at = sample.recorded_at;
            match self.episodes.get_mut(&key) {
                Some(open) if seq != 0 && seq <= open.last_sample_seq => {}
                Some(open) if violated => {
                    apply_violation(open, sample, seq);
                    out.push(transition(TransitionKind::Updated, sample, open.clone()));
                }
                Some(open) if at < open.last_violation_at => self.late += 1,
                Some(_) => {
                    let mut closed = self.episodes.remove(&key).expect("episode exists");
                    closed.last_value = sample.value;
                    closed.last_sample_seq = seq.max(closed.last_sample_seq);
                    closed.resolved_at = Some(at);
                    out.push(transition(TransitionKind::Resolved, sample, closed));
                    self.resolved.insert(key, at);
                }
                None if violated && self.resolved.get(&key).is_some_and(|&last| at <= last) => {
                    self.late += 1;
                }
                None if violated => {
                    let opened = open_incident(rule, key.1.clone(), sample, seq, source);
                    out.push(transition(TransitionKind::Opened, sample, opened.clone()));
                    self.episodes.insert(key, opened);
                }
                None => {}
            }
        }
    }
}

fn transition(
    kind: TransitionKind,
    sample: &MetricSample,
    incident: IncidentSnapshot,
) -> IncidentTransition {
    IncidentTransition {
        kind,
        at: sample.recorded_at,
        incident,
    }
}

fn open_incident(
    rule: &Rule,
    series_key: String,
    sample: &MetricSample,
    seq: u64,
    source: Source,
) -> IncidentSnapshot {
    let id = incident_id(rule.id, &series_key, sample.recorded_at);
    IncidentSnapshot {
        id,
        rule_id: rule.id,
        rule_name: rule.name.clone(),
        service_id: sample.service_id.clone(),
        metric_type: sample.metric_type.clone(),
        message: message(rule, sample),
        series_key,
        labels: sample.labels.clone(),
        department_id: rule.department_id,
        severity: rule.severity,
        operator: rule.operator,
        threshold: rule.threshold,
        value: sample.value,
        peak_value: sample.value,
        last_value: sample.value,
        violation_count: 1,
        opened_at: sample.recorded_at,
        last_violation_at: sample.recorded_at,
        resolved_at: None,
        source,
        last_sample_seq: seq,
    }
}

fn apply_violation(open: &mut IncidentSnapshot, sample: &MetricSample, seq: u64) {
    open.last_value = sample.value;
    open.peak_value = worse(open.operator, open.peak_value, sample.value);
    open.violation_count += 1;
    open.last_violation_at = open.last_violation_at.max(sample.recorded_at);
    open.last_sample_seq = seq.max(open.last_sample_seq);
}

/// The peak is the value furthest past the threshold: the lowest for `<` rules, else the highest.
fn worse(operator: Operator, a: f64, b: f64) -> f64 {
    match operator {
        Operator::Lt | Operator::Le => a.min(b),
        _ => a.max(b),
    }
}

fn message(rule: &Rule, sample: &MetricSample) -> String {
    let mut msg = format!(
        "{} {} {} {} on {}",
        sample.metric_type, sample.value, rule.operator, rule.threshold, sample.service_id
    );
    if !sample.labels.is_empty() {
        let labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        msg.push_str(&format!(" ({})", labels.join(", ")));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use schemas::Severity;

    fn rule(metric: &str, op: Operator, threshold: f64) -> Rule {
        Rule {
            id: Uuid::new_v4(),
            name: format!("{metric} {op} {threshold}"),
            metric_type: metric.into(),
            service_id: None,
            operator: op,
            threshold,
            severity: Severity::High,
            department_id: None,
            enabled: true,
        }
    }

    fn t0() -> DateTime<Utc> {
        "2026-03-12T09:00:00Z".parse().unwrap()
    }

    fn sample(service: &str, metric: &str, value: f64, secs: i64) -> MetricSample {
        MetricSample {
            service_id: service.into(),
            metric_type: metric.into(),
            value,
            recorded_at: t0() + Duration::seconds(secs),
            id: None,
            labels: Default::default(),
        }
    }

    fn run(engine: &mut Engine, samples: &[MetricSample]) -> Vec<IncidentTransition> {
        let mut out = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            engine.evaluate(s, i as u64 + 1, &mut out);
        }
        out
    }

    fn kinds(out: &[IncidentTransition]) -> Vec<TransitionKind> {
        out.iter().map(|t| t.kind).collect()
    }

    #[test]
    fn consecutive_violations_open_one_incident() {
        let mut engine = Engine::new(vec![rule("LATENCY_MS", Operator::Gt, 150.0)]);
        let samples: Vec<_> = (0..1000)
            .map(|i| sample("S1", "LATENCY_MS", 151.0 + i as f64, i))
            .collect();
        let out = run(&mut engine, &samples);
        assert_eq!(out[0].kind, TransitionKind::Opened);
        assert!(out[1..].iter().all(|t| t.kind == TransitionKind::Updated));
        let last = &out.last().unwrap().incident;
        assert!(out.iter().all(|t| t.incident.id == out[0].incident.id));
        assert_eq!(last.violation_count, 1000);
        assert_eq!(last.peak_value, 1150.0);
        assert_eq!(last.value, 151.0);
        assert_eq!(last.last_violation_at, t0() + Duration::seconds(999));
    }

    #[test]
    fn recovery_ends_the_episode() {
        let mut engine = Engine::new(vec![rule("LATENCY_MS", Operator::Gt, 150.0)]);
        let out = run(
            &mut engine,
            &[
                sample("S1", "LATENCY_MS", 180.0, 0),
                sample("S1", "LATENCY_MS", 100.0, 1),
                sample("S1", "LATENCY_MS", 190.0, 2),
            ],
        );
        assert_eq!(
            kinds(&out),
            [
                TransitionKind::Opened,
                TransitionKind::Resolved,
                TransitionKind::Opened
            ]
        );
        assert_ne!(out[0].incident.id, out[2].incident.id);
        assert_eq!(
            out[1].incident.resolved_at,
            Some(t0() + Duration::seconds(1))
        );
        assert_eq!(engine.open_episodes(), 1);
    }

    #[test]
    fn replay_yields_the_same_ids() {
        let r = rule("ERROR_RATE", Operator::Ge, 2.0);
        let samples = [
            sample("S1", "ERROR_RATE", 2.0, 0),
            sample("S2", "ERROR_RATE", 3.0, 5),
            sample("S1", "ERROR_RATE", 1.0, 9),
        ];
        let a = run(&mut Engine::new(vec![r.clone()]), &samples);
        let b = run(&mut Engine::new(vec![r]), &samples);
        assert_eq!(a, b);
    }

    #[test]
    fn service_filter_and_disabled_rules() {
        let mut only_s2 = rule("BUFFER_RATIO", Operator::Gt, 6.0);
        only_s2.service_id = Some("S2".into());
        let mut disabled = rule("PACKET_LOSS", Operator::Gt, 1.5);
        disabled.enabled = false;
        let mut engine = Engine::new(vec![only_s2, disabled]);
        let out = run(
            &mut engine,
            &[
                sample("S1", "BUFFER_RATIO", 7.5, 0),
                sample("S1", "PACKET_LOSS", 2.1, 0),
                sample("S2", "BUFFER_RATIO", 7.5, 0),
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].incident.service_id, "S2");
    }

    #[test]
    fn redelivered_samples_are_not_counted_twice() {
        let r = rule("LATENCY_MS", Operator::Gt, 150.0);
        let mut engine = Engine::new(vec![r.clone()]);
        let mut out = Vec::new();
        engine.evaluate(&sample("S1", "LATENCY_MS", 200.0, 0), 10, &mut out);
        engine.evaluate(&sample("S1", "LATENCY_MS", 210.0, 1), 11, &mut out);
        let open = out.last().unwrap().incident.clone();

        // A restarted engine restored from the recorded incident sees 11 again, then 12.
        let mut restarted = Engine::new(vec![r]);
        restarted.restore([open]);
        let mut again = Vec::new();
        restarted.evaluate(&sample("S1", "LATENCY_MS", 210.0, 1), 11, &mut again);
        assert!(again.is_empty());
        restarted.evaluate(&sample("S1", "LATENCY_MS", 220.0, 2), 12, &mut again);
        assert_eq!(again[0].incident.violation_count, 3);
        assert_eq!(again[0].incident.id, out[0].incident.id);
    }

    #[test]
    fn rereading_a_resolved_episode_opens_nothing() {
        let r = rule("LATENCY_MS", Operator::Gt, 150.0);
        let samples = [
            sample("S1", "LATENCY_MS", 200.0, 0),
            sample("S1", "LATENCY_MS", 210.0, 1),
            sample("S1", "LATENCY_MS", 100.0, 2),
        ];
        let first = run(&mut Engine::new(vec![r.clone()]), &samples);
        let resolved = first.last().unwrap().incident.clone();
        assert_eq!(resolved.last_sample_seq, 3);

        // Restarted after publishing all three, before acking: all three are read again.
        let mut restarted = Engine::new(vec![r.clone()]);
        restarted.restore_watermark(r.id, resolved.series_key.clone(), resolved.last_sample_seq);
        let again = run(&mut restarted, &samples);
        assert!(again.is_empty(), "{again:?}");
        // Later samples are evaluated as usual.
        let mut out = Vec::new();
        restarted.evaluate(&sample("S1", "LATENCY_MS", 300.0, 3), 4, &mut out);
        assert_eq!(out[0].kind, TransitionKind::Opened);
    }

    #[test]
    fn a_violation_at_or_before_the_last_resolution_is_late() {
        let r = rule("LATENCY_MS", Operator::Gt, 150.0);
        let mut engine = Engine::new(vec![r.clone()]);
        let out = run(
            &mut engine,
            &[
                sample("S1", "LATENCY_MS", 200.0, 0),
                sample("S1", "LATENCY_MS", 100.0, 10),
                // Re-sent without an id after the duplicate window, and a late violation.
                sample("S1", "LATENCY_MS", 200.0, 0),
                sample("S1", "LATENCY_MS", 250.0, 10),
                sample("S1", "LATENCY_MS", 300.0, 11),
            ],
        );
        assert_eq!(
            kinds(&out),
            [
                TransitionKind::Opened,
                TransitionKind::Resolved,
                TransitionKind::Opened
            ]
        );
        assert_ne!(out[2].incident.id, out[0].incident.id);
        assert_eq!(out[2].incident.opened_at, t0() + Duration::seconds(11));
        assert_eq!(engine.take_late(), 2);

        // The same holds after a restart that restored the resolution.
        let mut restarted = Engine::new(vec![r.clone()]);
        restarted.restore_resolution(r.id, "S1:LATENCY_MS".into(), t0() + Duration::seconds(10));
        let again = run(&mut restarted, &[sample("S1", "LATENCY_MS", 200.0, 5)]);
        assert!(again.is_empty());
        assert_eq!(restarted.take_late(), 1);
    }

    #[test]
    fn an_old_recovery_does_not_resolve_a_newer_violation() {
        let mut engine = Engine::new(vec![rule("LATENCY_MS", Operator::Gt, 150.0)]);
        let out = run(
            &mut engine,
            &[
                sample("S1", "LATENCY_MS", 200.0, 10),
                sample("S1", "LATENCY_MS", 100.0, 5),
            ],
        );
        assert_eq!(kinds(&out), [TransitionKind::Opened]);
        assert_eq!(engine.take_late(), 1);
        assert_eq!(engine.open_episodes(), 1);
    }

    #[test]
    fn peak_follows_the_operator_direction() {
        let mut engine = Engine::new(vec![rule("BUFFER_RATIO", Operator::Lt, 10.0)]);
        let out = run(
            &mut engine,
            &[
                sample("S1", "BUFFER_RATIO", 5.0, 0),
                sample("S1", "BUFFER_RATIO", 2.0, 1),
                sample("S1", "BUFFER_RATIO", 4.0, 2),
            ],
        );
        assert_eq!(out.last().unwrap().incident.peak_value, 2.0);
    }

    #[test]
    fn deleting_a_rule_forgets_its_episodes() {
        let r = rule("LATENCY_MS", Operator::Gt, 150.0);
        let mut engine = Engine::new(vec![r]);
        run(&mut engine, &[sample("S1", "LATENCY_MS", 200.0, 0)]);
        assert_eq!(engine.open_episodes(), 1);
        engine.set_rules(vec![]);
        assert_eq!(engine.open_episodes(), 0);
    }
}
