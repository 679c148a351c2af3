//! The whole `tracely run` process is SIGKILLed three times while 100,000 samples are being
//! published, and restarted each time. Afterwards the incidents must be exactly those of an
//! uninterrupted run: none lost, none duplicated, every count and peak the same.
//!
//! The uninterrupted run is computed by feeding the same samples, in stream order, through
//! the pure engine the evaluator uses.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pipeline::Engine;
use schemas::{Aggregation, MetricSample, Operator, Severity, Span};
use sqlx::Row;
use store::rules::NewRule;
use support::{drained, eventually, publish, Stack};
use tokio::process::{Child, Command};

const SAMPLES: usize = 100_000;
const CHUNK: usize = 1_000;

/// A deterministic mix of 20 services × 3 metrics whose values drift in and out of violation.
fn workload() -> Vec<MetricSample> {
    let start: DateTime<Utc> = "2026-03-12T00:00:00Z".parse().unwrap();
    let metrics = [
        ("LATENCY_MS", 100.0, 200.0),
        ("ERROR_RATE", 1.0, 3.0),
        ("BUFFER_RATIO", 5.0, 1.0),
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut violating = [false; 60];
    (0..SAMPLES)
        .map(|i| {
            let series = (next() % 60) as usize;
            if next() % 10 == 0 {
                violating[series] = !violating[series];
            }
            let (metric, ok, bad) = metrics[series % 3];
            let jitter = (next() % 1000) as f64 / 1000.0;
            MetricSample {
                service_id: format!("svc-{:02}", series / 3),
                metric_type: metric.to_owned(),
                value: if violating[series] {
                    bad + jitter
                } else {
                    ok + jitter
                },
                recorded_at: start + chrono::Duration::milliseconds(i as i64 * 100),
                id: Some(format!("sample-{i}")),
                labels: Default::default(),
            }
        })
        .collect()
}

fn rules() -> Vec<NewRule> {
    let rule = |metric: &str, operator, threshold, severity| {
        NewRule::threshold(
            &format!("{metric} {operator} {threshold}"),
            metric,
            operator,
            threshold,
            severity,
        )
    };
    vec![
        rule("LATENCY_MS", Operator::Gt, 150.0, Severity::High),
        rule("ERROR_RATE", Operator::Ge, 2.0, Severity::Medium),
        rule("BUFFER_RATIO", Operator::Lt, 3.0, Severity::Low),
    ]
}

fn spawn_tracely(stack: &Stack, attempt: usize) -> Child {
    let log = std::fs::File::create(stack.path().join(format!("tracely-{attempt}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tracely"))
        .args(["run", "--roles", "evaluate,record,archive"])
        .env("TRACELY_NATS_URL", stack.nats.url())
        .env("DATABASE_URL", &stack.database_url)
        // Every process serves health and metrics; a free port keeps parallel tests apart.
        .env("TRACELY_HTTP_ADDR", "127.0.0.1:0")
        .env_remove("MEILI_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting tracely run")
}

/// (violation_count, peak, last value, opened_at, last violation, resolved_at) per incident id.
type Outcome = BTreeMap<String, (i64, String, String, String, String, Option<String>)>;

fn expected(samples: &[MetricSample], rules: Vec<pipeline::Rule>) -> Outcome {
    let mut engine = Engine::new(rules);
    let mut out = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        engine.evaluate(s, i as u64 + 1, &mut out);
    }
    engine.flush(&mut out);
    let mut outcome = Outcome::new();
    for t in out {
        let i = t.incident;
        outcome.insert(
            i.id.to_string(),
            (
                i.violation_count as i64,
                i.peak_value.to_string(),
                i.last_value.to_string(),
                i.opened_at.to_rfc3339(),
                i.last_violation_at.to_rfc3339(),
                i.resolved_at.map(|t| t.to_rfc3339()),
            ),
        );
    }
    outcome
}

/// Publishes `samples` while SIGKILLing `tracely run` three times (at 30% and 65% of the
/// publish, and once more while it restores its state), waits for the pipeline to drain, and
/// checks the incidents against the pure engine run over the same stream order.
async fn crash_scenario(rules: Vec<NewRule>, samples: Vec<MetricSample>, min_incidents: usize) {
    let stack = Stack::start().await;
    let pool = stack.pool().await;
    store::migrate(&pool).await.unwrap();
    for rule in rules {
        store::rules::insert(&pool, &rule).await.unwrap();
    }
    let engine_rules = consumers::rules::load(&pool).await.unwrap();
    let total = samples.len();
    let samples = Arc::new(samples);

    let mut child = spawn_tracely(&stack, 0);
    let js = stack.js().await;
    // The topology exists once the first process is up.
    eventually(
        "tracely to apply the topology",
        Duration::from_secs(30),
        || async {
            js.get_stream("INCIDENTS")
                .await
                .ok()?
                .consumer_info("record")
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;

    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (js, samples, published) = (js.clone(), samples.clone(), published.clone());
        tokio::spawn(async move {
            for chunk in samples.chunks(CHUNK) {
                publish(&js, chunk).await;
                published.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        })
    };

    for (attempt, kill_at) in [(1, total * 30 / 100), (2, total * 65 / 100)] {
        eventually(
            "the publisher to progress",
            Duration::from_secs(120),
            || async { (published.load(Ordering::SeqCst) >= kill_at).then_some(()) },
        )
        .await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        child = spawn_tracely(&stack, attempt);
        if attempt == 2 {
            // Once more while it is restoring state and rewinding.
            tokio::time::sleep(Duration::from_millis(300)).await;
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            child = spawn_tracely(&stack, 3);
        }
    }
    publisher.await.unwrap();
    drained(&js, Duration::from_secs(300)).await;

    let rows = sqlx::query(
        "SELECT id::text, violation_count, peak_value::text, last_value::text,
                opened_at, last_violation_at, resolved_at FROM incidents",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let actual: Outcome = rows
        .iter()
        .map(|r| {
            let t = |c: &str| r.get::<DateTime<Utc>, _>(c).to_rfc3339();
            (
                r.get::<String, _>(0),
                (
                    r.get(1),
                    r.get::<String, _>(2).parse::<f64>().unwrap().to_string(),
                    r.get::<String, _>(3).parse::<f64>().unwrap().to_string(),
                    t("opened_at"),
                    t("last_violation_at"),
                    r.get::<Option<DateTime<Utc>>, _>(6).map(|t| t.to_rfc3339()),
                ),
            )
        })
        .collect();
    let expected = expected(&samples, engine_rules);
    assert!(
        expected.len() >= min_incidents,
        "the workload should open at least {min_incidents} incidents, got {}",
        expected.len()
    );
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    for (id, want) in &expected {
        assert_eq!(
            &actual[id], want,
            "incident {id} differs from the uninterrupted run"
        );
    }

    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM incident_events WHERE kind = 'CREATED'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let resolved: i64 =
        sqlx::query_scalar("SELECT count(*) FROM incident_events WHERE kind = 'RESOLVED'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(created as usize, expected.len());
    assert_eq!(
        resolved as usize,
        expected.values().filter(|v| v.5.is_some()).count()
    );
    let triggers: i64 = sqlx::query_scalar("SELECT sum(trigger_count)::bigint FROM rules")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(triggers as usize, expected.len());

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_publish_loses_and_duplicates_nothing() {
    crash_scenario(rules(), workload(), 500).await;
}

/// 20 series of one metric, one sample every 10 s of event time, drifting between calm and
/// degraded for minutes at a time, then a far-later calm sample per series so every point
/// before it is final.
fn windowed_workload() -> Vec<MetricSample> {
    let start: DateTime<Utc> = "2026-03-12T00:00:00Z".parse().unwrap();
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut degraded = [false; 20];
    let mut samples = Vec::new();
    let rounds = 1_500;
    for round in 0..=rounds {
        for (series, bad) in degraded.iter_mut().enumerate() {
            if next() % 40 == 0 {
                *bad = !*bad;
            }
            let jitter = (next() % 100) as f64;
            let (value, at) = if round == rounds {
                (10.0, start + chrono::Duration::hours(10))
            } else {
                let base = if *bad { 200.0 } else { 80.0 };
                (
                    base + jitter,
                    start + chrono::Duration::seconds(round as i64 * 10),
                )
            };
            samples.push(MetricSample {
                service_id: format!("svc-{series:02}"),
                metric_type: "LATENCY_MS".to_owned(),
                value,
                recorded_at: at,
                id: Some(format!("w-{round}-{series}")),
                labels: Default::default(),
            });
        }
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_window_rebuilds_five_minute_averages() {
    let five_minutes = Span::parse("5m").unwrap();
    let pending = NewRule {
        aggregation: Aggregation::Avg,
        window: five_minutes,
        pending_for: Span::parse("1m").unwrap(),
        ..NewRule::threshold(
            "avg 5m above 150 for 1m",
            "LATENCY_MS",
            Operator::Gt,
            150.0,
            Severity::High,
        )
    };
    let sticky = NewRule {
        aggregation: Aggregation::Avg,
        window: five_minutes,
        clear_threshold: Some(120.0),
        clear_for: Span::parse("2m").unwrap(),
        ..NewRule::threshold(
            "avg 5m above 170",
            "LATENCY_MS",
            Operator::Gt,
            170.0,
            Severity::Medium,
        )
    };
    crash_scenario(vec![pending, sticky], windowed_workload(), 100).await;
}
