use super::*;
use chrono::Duration;
use proptest::prelude::*;
use schemas::{Aggregation, Severity};

fn t0() -> DateTime<Utc> {
    "2026-03-12T09:00:00Z".parse().unwrap()
}

fn secs(s: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(s)
}

fn seed(metric: &str, op: Operator, threshold: f64) -> Rule {
    Rule::threshold(
        &format!("{metric} {op} {threshold}"),
        metric,
        op,
        threshold,
        Severity::High,
    )
}

fn windowed(aggregation: Aggregation, window: &str, op: Operator, threshold: f64) -> Rule {
    Rule {
        aggregation,
        window: Span::parse(window).unwrap(),
        ..seed("LATENCY_MS", op, threshold)
    }
}

fn sample(service: &str, metric: &str, value: f64, at_secs: i64) -> MetricSample {
    MetricSample {
        service_id: service.into(),
        metric_type: metric.into(),
        value,
        recorded_at: secs(at_secs),
        id: None,
        labels: Default::default(),
    }
}

fn lat(value: f64, at_secs: i64) -> MetricSample {
    sample("S1", "LATENCY_MS", value, at_secs)
}

/// Evaluates in order with sequences 1.., then flushes.
fn run(engine: &mut Engine, samples: &[MetricSample]) -> Vec<IncidentTransition> {
    let mut out = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        engine.evaluate(s, i as u64 + 1, &mut out);
    }
    engine.flush(&mut out);
    out
}

fn kinds(out: &[IncidentTransition]) -> Vec<(TransitionKind, DateTime<Utc>)> {
    out.iter().map(|t| (t.kind, t.at)).collect()
}

use TransitionKind::{Opened, Resolved, Updated};

// Seed-style rules: each sample judged on its own.

#[test]
fn consecutive_violations_open_one_incident() {
    let mut engine = Engine::new(vec![seed("LATENCY_MS", Operator::Gt, 150.0)]);
    let samples: Vec<_> = (0..1000).map(|i| lat(151.0 + i as f64, i)).collect();
    let out = run(&mut engine, &samples);
    assert_eq!(kinds(&out), [(Opened, secs(0)), (Updated, secs(999))]);
    let last = &out[1].incident;
    assert_eq!(last.id, out[0].incident.id);
    assert_eq!(last.violation_count, 1000);
    assert_eq!(last.peak_value, 1150.0);
    assert_eq!(last.value, 151.0);
    assert_eq!(last.message, "LATENCY_MS 151 > 150 on S1");
}

#[test]
fn recovery_ends_the_episode() {
    let mut engine = Engine::new(vec![seed("LATENCY_MS", Operator::Gt, 150.0)]);
    let out = run(&mut engine, &[lat(180.0, 0), lat(100.0, 1), lat(190.0, 2)]);
    assert_eq!(
        kinds(&out),
        [(Opened, secs(0)), (Resolved, secs(1)), (Opened, secs(2))]
    );
    assert_ne!(out[0].incident.id, out[2].incident.id);
    assert_eq!(out[1].incident.resolved_at, Some(secs(1)));
    assert_eq!(engine.open_episodes(), 1);
}

#[test]
fn incident_ids_follow_rule_series_and_episode_start() {
    let rule = seed("LATENCY_MS", Operator::Gt, 150.0);
    let out = run(&mut Engine::new(vec![rule.clone()]), &[lat(180.0, 0)]);
    assert_eq!(
        out[0].incident.id,
        incident_id(rule.id, "S1:LATENCY_MS", secs(0))
    );
}

#[test]
fn service_label_filters_and_disabled_rules() {
    let mut only_s2 = seed("BUFFER_RATIO", Operator::Gt, 6.0);
    only_s2.service_id = Some("S2".into());
    let mut only_eu = seed("ERROR_RATE", Operator::Gt, 1.0);
    only_eu.labels = BTreeMap::from([("region".into(), "eu".into())]);
    let mut disabled = seed("PACKET_LOSS", Operator::Gt, 1.5);
    disabled.enabled = false;
    let mut engine = Engine::new(vec![only_s2, only_eu, disabled]);
    let mut eu = sample("S3", "ERROR_RATE", 2.0, 0);
    eu.labels.insert("region".into(), "eu".into());
    let mut us = sample("S3", "ERROR_RATE", 2.0, 0);
    us.labels.insert("region".into(), "us".into());
    let out = run(
        &mut engine,
        &[
            sample("S1", "BUFFER_RATIO", 7.5, 0),
            sample("S1", "PACKET_LOSS", 2.1, 0),
            sample("S2", "BUFFER_RATIO", 7.5, 0),
            eu,
            us,
        ],
    );
    let series: Vec<&str> = out.iter().map(|t| t.incident.series_key.as_str()).collect();
    assert_eq!(series, ["S2:BUFFER_RATIO", "S3:ERROR_RATE{region=\"eu\"}"]);
}

#[test]
fn peak_follows_the_operator_direction() {
    let mut engine = Engine::new(vec![seed("BUFFER_RATIO", Operator::Lt, 10.0)]);
    let samples = [(5.0, 0), (2.0, 10), (4.0, 20)].map(|(v, t)| sample("S1", "BUFFER_RATIO", v, t));
    let out = run(&mut engine, &samples);
    assert_eq!(out.last().unwrap().incident.peak_value, 2.0);
}

#[test]
fn deleting_a_rule_forgets_its_state() {
    let rule = seed("LATENCY_MS", Operator::Gt, 150.0);
    let mut engine = Engine::new(vec![rule]);
    run(&mut engine, &[lat(200.0, 0)]);
    assert_eq!(engine.open_episodes(), 1);
    engine.set_rules(vec![]);
    assert_eq!(engine.open_episodes(), 0);
}

#[test]
fn late_samples_are_counted_and_dropped() {
    let mut engine = Engine::new(vec![seed("LATENCY_MS", Operator::Gt, 150.0)]);
    let out = run(
        &mut engine,
        &[
            lat(200.0, 0),
            lat(100.0, 10),
            lat(200.0, 0),  // re-sent after the duplicate window
            lat(250.0, 10), // same time as the resolution
            lat(100.0, 5),  // an old recovery
            lat(300.0, 11),
        ],
    );
    assert_eq!(
        kinds(&out),
        [(Opened, secs(0)), (Resolved, secs(10)), (Opened, secs(11))]
    );
    assert_eq!(engine.take_late(), 3);
}

// Restart safety.

#[test]
fn a_restored_episode_continues_and_skips_what_it_counted() {
    let rule = seed("LATENCY_MS", Operator::Gt, 150.0);
    let first = run(
        &mut Engine::new(vec![rule.clone()]),
        &[lat(200.0, 0), lat(210.0, 1)],
    );
    let open = first.last().unwrap().incident.clone();
    assert_eq!(open.last_sample_seq, 2);

    let mut restarted = Engine::new(vec![rule]);
    restarted.restore([open.clone()]);
    assert_eq!(restarted.open_episodes(), 1);
    let mut out = Vec::new();
    restarted.evaluate(&lat(210.0, 1), 2, &mut out); // delivered again
    restarted.evaluate(&lat(220.0, 2), 3, &mut out);
    restarted.flush(&mut out);
    assert_eq!(kinds(&out), [(Updated, secs(2))]);
    assert_eq!(out[0].incident.id, open.id);
    assert_eq!(out[0].incident.violation_count, 3);
}

#[test]
fn rereading_a_resolved_episode_opens_nothing() {
    let rule = seed("LATENCY_MS", Operator::Gt, 150.0);
    let samples = [lat(200.0, 0), lat(210.0, 1), lat(100.0, 2)];
    let first = run(&mut Engine::new(vec![rule.clone()]), &samples);
    let resolved = first.last().unwrap().incident.clone();

    let mut restarted = Engine::new(vec![rule.clone()]);
    restarted.restore_watermark(
        rule.id,
        resolved.series_key.clone(),
        resolved.last_sample_seq,
    );
    restarted.restore_resolution(rule.id, resolved.series_key, resolved.resolved_at.unwrap());
    assert!(run(&mut restarted, &samples).is_empty());
    let mut out = Vec::new();
    restarted.evaluate(&lat(300.0, 3), 4, &mut out);
    assert_eq!(kinds(&out), [(Opened, secs(3))]);
}

// Windows, pending periods and hysteresis.

#[test]
fn pending_for_not_elapsed_fires_nothing() {
    // A 10 s window holds one sample of a series reporting every 10 s.
    let mut rule = windowed(Aggregation::Avg, "10s", Operator::Gt, 100.0);
    rule.pending_for = Span::parse("2m").unwrap();
    let mut engine = Engine::new(vec![rule]);
    engine.set_allowed_lateness(Span::ZERO);
    // Violating from 0 s to 110 s (under 2 minutes), then back to normal.
    let mut samples: Vec<_> = (0..=11).map(|i| lat(150.0, i * 10)).collect();
    samples.extend((12..30).map(|i| lat(10.0, i * 10)));
    assert!(run(&mut engine, &samples).is_empty());
}

#[test]
fn pending_for_fires_at_the_first_point_after_it_and_keys_on_the_start() {
    let mut rule = windowed(Aggregation::Avg, "1m", Operator::Gt, 100.0);
    rule.pending_for = Span::parse("2m").unwrap();
    let mut engine = Engine::new(vec![rule.clone()]);
    engine.set_allowed_lateness(Span::ZERO);
    let samples: Vec<_> = (0..=13).map(|i| lat(150.0, i * 10)).collect();
    let out = run(&mut engine, &samples);
    // Pending from 0 s; 2 minutes have passed at the 120 s point.
    assert_eq!(kinds(&out), [(Opened, secs(120)), (Updated, secs(130))]);
    assert_eq!(out[0].incident.opened_at, secs(120));
    assert_eq!(
        out[0].incident.id,
        incident_id(rule.id, "S1:LATENCY_MS", secs(0))
    );
    assert_eq!(
        out[0].incident.message,
        "avg(LATENCY_MS over 1m) 150 > 100 on S1"
    );
}

#[test]
fn the_window_slides_over_event_time() {
    let mut engine = Engine::new(vec![windowed(Aggregation::Avg, "30s", Operator::Gt, 100.0)]);
    engine.set_allowed_lateness(Span::ZERO);
    // avg over (t-30s, t]: 0s:90 → 90; 10s:120 → 105 fires; 40s:90 → window (10,40] = 90 clears.
    let out = run(&mut engine, &[lat(90.0, 0), lat(120.0, 10), lat(90.0, 40)]);
    assert_eq!(kinds(&out), [(Opened, secs(10)), (Resolved, secs(40))]);
    assert_eq!(out[0].incident.value, 105.0);
}

#[test]
fn a_flap_inside_clear_for_keeps_the_incident_open() {
    let mut rule = seed("LATENCY_MS", Operator::Gt, 100.0);
    rule.clear_for = Span::parse("1m").unwrap();
    let mut engine = Engine::new(vec![rule]);
    let out = run(
        &mut engine,
        &[
            lat(150.0, 0),
            lat(50.0, 10),  // clearing since 10 s
            lat(150.0, 40), // flap: still the same incident
            lat(50.0, 50),  // clearing since 50 s
            lat(50.0, 100), // 50 s clear: not yet
            lat(50.0, 110), // 60 s clear: resolves
        ],
    );
    assert_eq!(kinds(&out), [(Opened, secs(0)), (Resolved, secs(110))]);
    assert_eq!(out[1].incident.violation_count, 2);
}

#[test]
fn hysteresis_needs_the_value_past_the_clear_threshold() {
    let mut rule = seed("LATENCY_MS", Operator::Gt, 100.0);
    rule.clear_threshold = Some(80.0);
    rule.auto_resolve = true;
    let mut engine = Engine::new(vec![rule]);
    let out = run(
        &mut engine,
        &[lat(150.0, 0), lat(90.0, 10), lat(85.0, 20), lat(80.0, 30)],
    );
    assert_eq!(kinds(&out), [(Opened, secs(0)), (Resolved, secs(30))]);
    assert!(out[1].incident.auto_resolve);
}

#[test]
fn late_samples_within_the_lateness_join_their_window() {
    let mut engine = Engine::new(vec![windowed(Aggregation::Max, "1m", Operator::Gt, 100.0)]);
    engine.set_allowed_lateness(Span::parse("30s").unwrap());
    let mut out = Vec::new();
    for (i, s) in [lat(10.0, 0), lat(10.0, 20), lat(500.0, 10), lat(10.0, 45)]
        .iter()
        .enumerate()
    {
        engine.evaluate(s, i as u64 + 1, &mut out);
    }
    // The 10 s sample arrived after the 20 s one, within 30 s: the 10 s point fires.
    assert_eq!(kinds(&out), [(Opened, secs(10))]);
    // 2 s is before the last evaluated point (10 s): too late.
    engine.evaluate(&lat(999.0, 2), 5, &mut out);
    assert_eq!(engine.take_late(), 1);
}

#[test]
fn idle_series_are_advanced_by_processing_time() {
    let mut engine = Engine::new(vec![windowed(Aggregation::Avg, "1m", Operator::Gt, 100.0)]);
    let mut out = Vec::new();
    engine.evaluate_at(&lat(150.0, 0), 1, 1_000, &mut out);
    assert!(out.is_empty(), "waits for the allowed lateness");
    engine.tick(20_000, &mut out);
    assert!(out.is_empty());
    engine.tick(31_000, &mut out);
    assert_eq!(kinds(&out), [(Opened, secs(0))]);

    engine.set_idle_advance(false);
    engine.evaluate_at(&lat(10.0, 60), 2, 40_000, &mut out);
    engine.tick(999_000, &mut out);
    assert_eq!(out.len(), 1, "no advance when idle advance is off");
    engine.finish(secs(3600), &mut out);
    assert_eq!(kinds(&out)[1], (Resolved, secs(60)));
}

#[test]
fn absent_fires_after_the_silence_and_resolves_when_samples_return() {
    let rule = Rule {
        kind: RuleKind::Absent,
        window: Span::parse("3m").unwrap(),
        ..seed("LATENCY_MS", Operator::Gt, 0.0)
    };
    // From the data alone: the gap is judged once the samples around it are final.
    let mut engine = Engine::new(vec![rule.clone()]);
    engine.set_idle_advance(false);
    let mut out = run(
        &mut engine,
        &[lat(1.0, 0), lat(1.0, 60), lat(1.0, 600), lat(1.0, 620)],
    );
    assert_eq!(kinds(&out), [(Opened, secs(240))]);
    assert_eq!(
        out[0].incident.message,
        "no LATENCY_MS samples for 3m on S1"
    );
    // Time reaches 700 s: the samples at 600 s and 620 s are final, 620 s + 3 m is not yet.
    engine.finish(secs(700), &mut out);
    assert_eq!(kinds(&out), [(Opened, secs(240)), (Resolved, secs(600))]);

    // Live: fired by processing time while the series is silent.
    let mut live = Engine::new(vec![rule]);
    let mut out = Vec::new();
    live.evaluate_at(&lat(1.0, 60), 1, 0, &mut out);
    live.tick(180_000, &mut out);
    assert!(out.is_empty());
    live.tick(210_000, &mut out); // 3 minutes plus the 30 s lateness
    assert_eq!(kinds(&out), [(Opened, secs(240))]);
    live.evaluate_at(&lat(1.0, 400), 2, 400_000, &mut out);
    live.tick(431_000, &mut out); // the returning sample is final 30 s later
    assert_eq!(kinds(&out)[1], (Resolved, secs(400)));
}

#[test]
fn absent_rules_respect_the_allowed_lateness() {
    let rule = Rule {
        kind: RuleKind::Absent,
        window: Span::parse("3m").unwrap(),
        ..seed("LATENCY_MS", Operator::Gt, 0.0)
    };
    let outcome = |order: &[i64]| {
        let mut engine = Engine::new(vec![rule.clone()]);
        engine.set_idle_advance(false);
        let samples: Vec<_> = order.iter().map(|&t| lat(1.0, t)).collect();
        let mut out = run(&mut engine, &samples);
        engine.finish(secs(3600), &mut out);
        kinds(&out)
    };
    // 170 s arriving 20 s after 190 s is within the lateness: no silence of 3 minutes.
    assert_eq!(outcome(&[0, 170, 190]), outcome(&[0, 190, 170]));
}

#[test]
fn changing_a_rules_aggregation_restarts_its_window() {
    let rule = windowed(Aggregation::Avg, "1m", Operator::Gt, 100.0);
    let mut engine = Engine::new(vec![rule.clone()]);
    engine.set_allowed_lateness(Span::ZERO);
    run(&mut engine, &[lat(50.0, 0), lat(60.0, 10)]);
    engine.set_rules(vec![Rule {
        aggregation: Aggregation::P95,
        ..rule
    }]);
    let mut out = Vec::new();
    engine.evaluate(&lat(500.0, 20), 3, &mut out);
    assert_eq!(kinds(&out), [(Opened, secs(20))]);
    assert_eq!(
        out[0].incident.value, 500.0,
        "only samples since the change count"
    );
}

// Properties.

fn windowed_rules() -> Vec<Rule> {
    let mut pending = windowed(Aggregation::Avg, "1m", Operator::Gt, 100.0);
    pending.pending_for = Span::parse("30s").unwrap();
    let mut sticky = windowed(Aggregation::P95, "2m", Operator::Gt, 150.0);
    sticky.clear_threshold = Some(120.0);
    sticky.clear_for = Span::parse("20s").unwrap();
    let count = Rule {
        metric_type: "ERROR_RATE".into(),
        ..windowed(Aggregation::Count, "30s", Operator::Lt, 2.0)
    };
    let absent = Rule {
        kind: RuleKind::Absent,
        window: Span::parse("15s").unwrap(),
        ..seed("LATENCY_MS", Operator::Gt, 0.0)
    };
    vec![
        pending,
        sticky,
        count,
        windowed(Aggregation::Rate, "1m", Operator::Gt, 1.0),
        absent,
    ]
}

/// Samples for three series with times strictly increasing per series and values that drift
/// in and out of violation.
fn arb_samples() -> impl Strategy<Value = Vec<MetricSample>> {
    proptest::collection::vec((0usize..3, 1i64..20_000, 0f64..300.0), 1..150).prop_map(|steps| {
        let mut clock = [0i64; 3];
        steps
            .into_iter()
            .map(|(series, gap, value)| {
                clock[series] += gap;
                let (service, metric) = [
                    ("S1", "LATENCY_MS"),
                    ("S2", "LATENCY_MS"),
                    ("S1", "ERROR_RATE"),
                ][series];
                MetricSample {
                    service_id: service.into(),
                    metric_type: metric.into(),
                    value,
                    recorded_at: t0() + Duration::milliseconds(clock[series]),
                    id: None,
                    labels: Default::default(),
                }
            })
            .collect()
    })
}

/// Opened and resolved transitions plus each incident's final snapshot, after finishing.
fn outcome(
    samples: &[MetricSample],
) -> (Vec<IncidentTransition>, BTreeMap<Uuid, IncidentSnapshot>) {
    let mut engine = Engine::new(windowed_rules_fixed());
    engine.set_idle_advance(false);
    let mut out = Vec::new();
    for s in samples {
        engine.evaluate(s, 0, &mut out);
    }
    engine.finish(t0() + Duration::days(1), &mut out);
    engine.flush(&mut out);
    let finals = out
        .iter()
        .map(|t| (t.incident.id, t.incident.clone()))
        .collect();
    let mut edges: Vec<_> = out.into_iter().filter(|t| t.kind != Updated).collect();
    edges.sort_by_key(|t| (t.at, t.incident.id, t.kind.as_str()));
    (edges, finals)
}

thread_local! {
    static RULES: Vec<Rule> = windowed_rules();
}

fn windowed_rules_fixed() -> Vec<Rule> {
    RULES.with(Clone::clone)
}

proptest! {
    /// Samples arriving out of order, but each before any sample 30 s (the allowed lateness)
    /// newer than itself, give exactly the transitions of the ordered stream.
    #[test]
    fn shuffling_within_the_lateness_changes_nothing(
        samples in arb_samples(),
        jitter in proptest::collection::vec(0i64..30_000, 150),
    ) {
        let ordered = outcome(&samples);
        let mut shuffled: Vec<(i64, &MetricSample)> = samples
            .iter()
            .zip(&jitter)
            .map(|(s, j)| (s.recorded_at.timestamp_millis() + j, s))
            .collect();
        shuffled.sort_by_key(|(arrival, _)| *arrival);
        let shuffled: Vec<MetricSample> = shuffled.into_iter().map(|(_, s)| s.clone()).collect();
        prop_assert_eq!(outcome(&shuffled), ordered);
    }

    /// The same samples in a fresh engine give identical transitions and ids. This guards
    /// against anything run-dependent in the engine (random hash seeds deciding iteration
    /// order, fresh UUIDs, the wall clock); redelivered samples are the evaluator's concern.
    #[test]
    fn the_same_samples_give_the_same_transitions(samples in arb_samples()) {
        let mut rules = windowed_rules_fixed();
        rules.push(seed("LATENCY_MS", Operator::Gt, 200.0));
        let run_once = || run(&mut Engine::new(rules.clone()), &samples);
        prop_assert_eq!(run_once(), run_once());
    }
}

/// What a restarted engine needs from the incidents recorded before a crash: the last snapshot
/// of each.
fn recorded(out: &[IncidentTransition]) -> Vec<IncidentSnapshot> {
    let mut last: BTreeMap<Uuid, IncidentSnapshot> = BTreeMap::new();
    for t in out {
        last.insert(t.incident.id, t.incident.clone());
    }
    last.into_values().collect()
}

/// Opened and resolved transitions in order, and each incident's final snapshot.
type Outcome = (
    Vec<(TransitionKind, DateTime<Utc>, Uuid)>,
    BTreeMap<Uuid, IncidentSnapshot>,
);

fn edges_and_finals(out: Vec<IncidentTransition>) -> Outcome {
    let finals: BTreeMap<Uuid, IncidentSnapshot> = out
        .iter()
        .map(|t| (t.incident.id, t.incident.clone()))
        .collect();
    let mut edges: Vec<_> = out
        .iter()
        .filter(|t| t.kind != Updated)
        .map(|t| (t.kind, t.at, t.incident.id))
        .collect();
    edges.sort_by_key(|(kind, at, id)| (*at, *id, kind.as_str()));
    let finals = finals
        .into_iter()
        .map(|(id, mut s)| {
            s.last_sample_seq = 0; // bookkeeping, not outcome
            (id, s)
        })
        .collect();
    (edges, finals)
}

/// Runs `samples` through an engine that never stops, and through one that stops after
/// `stop_at` samples and whose successor is rebuilt from the recorded incidents, re-reading from
/// `reread` (`None` for the whole stream, else the first index and its event time). Returns
/// (transitions of the stopped pair, transitions of the uninterrupted engine, transitions the
/// successor emitted).
fn stop_and_rebuild(
    samples: &[MetricSample],
    stop_at: usize,
    reread: impl FnOnce(&Engine, &[MetricSample]) -> Option<(usize, DateTime<Utc>)>,
) -> (
    Vec<IncidentTransition>,
    Vec<IncidentTransition>,
    Vec<IncidentTransition>,
) {
    let rules = windowed_rules_fixed();
    let evaluate_all = |engine: &mut Engine, samples: &[MetricSample], skip: usize| {
        let mut out = Vec::new();
        for (i, s) in samples.iter().enumerate().skip(skip) {
            engine.evaluate(s, i as u64 + 1, &mut out);
        }
        engine.flush(&mut out);
        out
    };
    let fresh = || {
        let mut engine = Engine::new(rules.clone());
        engine.set_idle_advance(false);
        engine
    };
    let expected = evaluate_all(&mut fresh(), samples, 0);
    let before = evaluate_all(&mut fresh(), &samples[..stop_at], 0);
    let mut second = fresh();
    second.restore(recorded(&before));
    let (start, since) = match reread(&second, &samples[..stop_at]) {
        Some((start, since)) => (start, Some(since)),
        None => (0, None),
    };
    second.prepare_rebuild(stop_at as u64, since);
    let after = evaluate_all(&mut second, samples, start);
    let mut stopped = before;
    stopped.extend(after.iter().cloned());
    (stopped, expected, after)
}

proptest! {
    /// An engine that stops after any sample and is rebuilt from the recorded incidents and a
    /// re-read of the samples before the stop continues exactly like one that never stopped.
    #[test]
    fn a_rebuilt_engine_continues_like_an_uninterrupted_one(
        samples in arb_samples(),
        stop_at in 0usize..150,
    ) {
        let stop_at = stop_at.min(samples.len());
        // The stream is short: the re-read covers it from the start.
        let (stopped, expected, after) = stop_and_rebuild(&samples, stop_at, |_, _| None);
        prop_assert!(after.iter().all(|t| t.incident.last_sample_seq > stop_at as u64 || t.kind == Updated),
            "the re-read emitted something");
        prop_assert_eq!(edges_and_finals(stopped), edges_and_finals(expected));
    }
}

/// Samples for three series on one clock, in time order, as live publishers send them: each
/// step a random subset of the series publishes, and none stays silent for longer than the
/// allowed lateness. (A series silent for longer falls behind the others' clock; live, idle
/// advance evaluates its windows by processing time, which this engine has switched off.)
fn arb_synced_samples() -> impl Strategy<Value = Vec<MetricSample>> {
    const SERIES: [(&str, &str); 3] = [
        ("S1", "LATENCY_MS"),
        ("S2", "LATENCY_MS"),
        ("S1", "ERROR_RATE"),
    ];
    const MAX_SILENCE_MS: i64 = 25_000;
    proptest::collection::vec((1u8..8, 1i64..20_000, 0f64..300.0), 1..120).prop_map(|steps| {
        let mut clock = 0i64;
        let mut last = [0i64; 3];
        let mut samples = Vec::new();
        for (mask, gap, value) in steps {
            clock += gap;
            for (i, (service, metric)) in SERIES.iter().enumerate() {
                if mask & (1 << i) == 0 && clock - last[i] < MAX_SILENCE_MS {
                    continue;
                }
                last[i] = clock;
                samples.push(MetricSample {
                    service_id: (*service).into(),
                    metric_type: (*metric).into(),
                    value,
                    recorded_at: t0() + Duration::milliseconds(clock + i as i64),
                    id: None,
                    labels: Default::default(),
                });
            }
        }
        samples
    })
}

proptest! {
    /// The same with a re-read that starts mid-stream, as far back as the engine asks: series on
    /// one clock are rebuilt exactly.
    #[test]
    fn a_partial_reread_of_the_lookback_is_enough(
        samples in arb_synced_samples(),
        stop_at in 0usize..360,
    ) {
        let stop_at = stop_at.min(samples.len());
        let (stopped, expected, _) = stop_and_rebuild(&samples, stop_at, |engine, before| {
            let newest = before.iter().map(|s| s.recorded_at).max().unwrap_or(t0());
            let since = newest - Duration::milliseconds(engine.rebuild_lookback().millis() + 60_000);
            let start = samples.iter().position(|s| s.recorded_at >= since).unwrap_or(0);
            (start > 0).then_some((start, since))
        });
        prop_assert_eq!(edges_and_finals(stopped), edges_and_finals(expected));
    }
}

#[test]
fn close_through_makes_the_last_points_final_without_firing_absence_early() {
    let rule = windowed(Aggregation::Avg, "1m", Operator::Gt, 100.0);
    let mut engine = Engine::with_source(vec![rule.clone()], Source::Backfill);
    engine.set_idle_advance(false);
    let mut out = run(&mut engine, &[lat(150.0, 0), lat(150.0, 10)]);
    assert!(out.is_empty(), "the points wait for the allowed lateness");
    engine.close_through(secs(10), &mut out);
    assert_eq!(kinds(&out), [(Opened, secs(0))]);
    assert_eq!(out[0].incident.source, Source::Backfill);

    // An absent rule is judged only up to the newest sample: a silence that has not lasted
    // its window by then does not fire.
    let absent = Rule {
        kind: RuleKind::Absent,
        window: Span::parse("3m").unwrap(),
        ..seed("LATENCY_MS", Operator::Gt, 0.0)
    };
    let mut engine = Engine::with_source(vec![absent], Source::Backfill);
    engine.set_idle_advance(false);
    let mut out = run(&mut engine, &[lat(1.0, 0), lat(1.0, 60)]);
    engine.close_through(secs(200), &mut out);
    assert!(out.is_empty(), "{out:?}");
    engine.close_through(secs(250), &mut out);
    assert_eq!(kinds(&out), [(Opened, secs(240))]);
}

#[test]
fn a_warm_up_keeps_partial_windows_from_firing() {
    let rule = windowed(Aggregation::Avg, "1m", Operator::Gt, 100.0);
    // The replay starts reading at 0 s while older samples exist: the spike alone at 0 s
    // would average 500 over a window that is really missing its first minute.
    let samples: Vec<_> = [(500.0, 0), (50.0, 30), (50.0, 60), (50.0, 90), (500.0, 100)]
        .into_iter()
        .map(|(v, t)| lat(v, t))
        .collect();
    let mut cold = Engine::with_source(vec![rule.clone()], Source::Backfill);
    cold.set_idle_advance(false);
    let mut out = run(&mut cold, &samples);
    cold.close_through(secs(100), &mut out);
    assert_eq!(
        kinds(&out)[0],
        (Opened, secs(0)),
        "without a warm-up the first point fires"
    );

    let mut warm = Engine::with_source(vec![rule], Source::Backfill);
    warm.set_idle_advance(false);
    warm.set_warm_up(secs(0));
    let mut out = run(&mut warm, &samples);
    warm.close_through(secs(100), &mut out);
    // Points before 60 s only fill; at 100 s the full window (60 s to 100 s) averages 200.
    assert_eq!(kinds(&out), [(Opened, secs(100))]);
}
