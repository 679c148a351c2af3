//! The fault-injection suite (`make test-faults`). Each case runs real nats-server, Postgres
//! and `tracely run` processes, publishes a workload while injecting one kind of fault, waits
//! for the pipeline to drain, and then checks that every accepted sample was evaluated once in
//! effect:
//! - METRICS holds every sample of the workload;
//! - the incidents are exactly those of the pure engine run over those samples in stream order
//!   (a sample stored twice counting once), with every count, peak and time the same: none
//!   missing, none duplicated;
//! - each incident has one CREATED event and, once resolved, one RESOLVED event, and its
//!   rule's trigger count counts it once;
//! - the owning department's in-app channel got one notification per opening and per
//!   resolution, each with one NOTIFIED event on the timeline.
//!
//! The workload's samples carry ids, so a publish retried after a fault is stored once.
//!
//! Where a case injects its faults at random points, it prints the seed it drew;
//! `TRACELY_FAULT_SEED=<seed>` repeats those points.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use pipeline::Engine;
use schemas::{Aggregation, MetricSample, Operator, Severity, Span};
use sqlx::{PgPool, Row};
use store::rules::NewRule;
use support::{eventually, Stack};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use uuid::Uuid;

const CHUNK: usize = 1_000;
/// How long the pipeline may take to catch up after the last fault.
const DRAIN: Duration = Duration::from_secs(300);

/// A deterministic mix of 20 services × 3 metrics whose values drift in and out of violation,
/// one sample every 100 ms of event time.
fn workload(samples: usize) -> Vec<MetricSample> {
    let start: DateTime<Utc> = "2026-03-12T00:00:00Z".parse().unwrap();
    let metrics = [
        ("LATENCY_MS", 100.0, 200.0),
        ("ERROR_RATE", 1.0, 3.0),
        ("BUFFER_RATIO", 5.0, 1.0),
    ];
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let mut violating = [false; 60];
    (0..samples)
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

/// 20 series of one metric, one sample every 10 s of event time, drifting between calm and
/// degraded for minutes at a time, then a far-later calm sample per series so every point
/// before it is final.
fn windowed_workload() -> Vec<MetricSample> {
    let start: DateTime<Utc> = "2026-03-12T00:00:00Z".parse().unwrap();
    let mut next = xorshift(0x1234_5678_9abc_def1);
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

/// A random generator for fault points: seeded from `TRACELY_FAULT_SEED` when set, otherwise
/// from the clock. The seed is printed, so a failing run can be repeated.
fn fault_points(case: &str) -> impl FnMut() -> u64 {
    let seed = match std::env::var("TRACELY_FAULT_SEED") {
        Ok(seed) => seed
            .parse()
            .expect("TRACELY_FAULT_SEED must be an unsigned integer"),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
    };
    eprintln!("{case}: fault seed {seed} (TRACELY_FAULT_SEED={seed} repeats these fault points)");
    xorshift(seed)
}

fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn threshold_rules() -> Vec<NewRule> {
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

fn windowed_rules() -> Vec<NewRule> {
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
    vec![pending, sticky]
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

/// A case under way: the stack, the `tracely run` process and the publisher.
struct Case {
    stack: Stack,
    pool: PgPool,
    js: jetstream::Context,
    tracely: Option<Child>,
    starts: usize,
    samples: Arc<Vec<MetricSample>>,
    published: Arc<AtomicUsize>,
    publisher: Option<JoinHandle<()>>,
    /// Extra settings for every `tracely run` of the case.
    env: Vec<(String, String)>,
    department: Uuid,
}

impl Case {
    /// Starts the stack with `rules` owned by a department with an in-app channel, then
    /// `tracely run`.
    async fn start(rules: Vec<NewRule>, samples: Vec<MetricSample>) -> Case {
        Case::start_with(rules, samples, Vec::new()).await
    }

    async fn start_with(
        rules: Vec<NewRule>,
        samples: Vec<MetricSample>,
        mut env: Vec<(String, String)>,
    ) -> Case {
        let stack = Stack::start().await;
        if !env.iter().any(|(k, _)| k == "TRACELY_TOPOLOGY") {
            let path = stack.path().join("topology.toml");
            std::fs::write(&path, topology(&[])).unwrap();
            env.push(("TRACELY_TOPOLOGY".to_owned(), path.display().to_string()));
        }
        let pool = stack.pool().await;
        store::migrate(&pool).await.unwrap();
        let department = Uuid::new_v4();
        sqlx::query("INSERT INTO departments (id, name) VALUES ($1, 'Operations')")
            .bind(department)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO notification_channels (id, department_id, name, kind)
             VALUES ($1, $2, 'inbox', 'in_app')",
        )
        .bind(Uuid::new_v4())
        .bind(department)
        .execute(&pool)
        .await
        .unwrap();
        for rule in rules {
            let rule = NewRule {
                department_id: Some(department),
                ..rule
            };
            store::rules::insert(&pool, &rule).await.unwrap();
        }
        let js = stack.js().await;
        let mut case = Case {
            stack,
            pool,
            js,
            tracely: None,
            starts: 0,
            samples: Arc::new(samples),
            published: Arc::new(AtomicUsize::new(0)),
            publisher: None,
            env,
            department,
        };
        case.start_tracely();
        let js = case.js.clone();
        // The topology exists once the first process is up.
        eventually(
            "tracely to apply the topology",
            Duration::from_secs(30),
            || async {
                js.get_stream("INCIDENTS")
                    .await
                    .ok()?
                    .consumer_info("notify")
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        case
    }

    fn start_tracely(&mut self) {
        self.tracely = Some(self.spawn("evaluate,record,archive,notify"));
    }

    /// Another `tracely run` with `roles`, sharing the durable consumers.
    fn spawn(&mut self, roles: &str) -> Child {
        let log = std::fs::File::create(
            self.stack
                .path()
                .join(format!("tracely-{}.log", self.starts)),
        )
        .unwrap();
        self.starts += 1;
        let mut command = Command::new(env!("CARGO_BIN_EXE_tracely"));
        command
            .args(["run", "--roles", roles])
            .env("TRACELY_NATS_URL", self.stack.nats.url())
            .env("DATABASE_URL", &self.stack.database_url)
            // Every process serves health and metrics; a free port keeps parallel tests apart.
            .env("TRACELY_HTTP_ADDR", "127.0.0.1:0")
            .env("TRACELY_WEBHOOK_ALLOW_PRIVATE", "true")
            .env_remove("MEILI_URL")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        command.spawn().expect("starting tracely run")
    }

    async fn kill_tracely(&mut self) {
        if let Some(mut child) = self.tracely.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// Publishes the workload in the background, in order, as fast as it is accepted.
    fn publish(&mut self) {
        self.spawn_publisher(CHUNK, None);
    }

    /// Publishes the workload in the background at a steady `per_sec`, so that load keeps
    /// arriving all through a fault that lasts a while.
    fn publish_steadily(&mut self, per_sec: usize) {
        self.spawn_publisher(per_sec / 10, Some(Duration::from_millis(100)));
    }

    /// Publishes `chunk` samples at a time, each `every` apart if given. A chunk whose publish
    /// fails (the server is down or paused) is published again until it is stored, as a
    /// producer would.
    fn spawn_publisher(&mut self, chunk: usize, every: Option<Duration>) {
        let (js, samples, published) = (
            self.js.clone(),
            self.samples.clone(),
            self.published.clone(),
        );
        self.publisher = Some(tokio::spawn(async move {
            let mut ticks = every.map(tokio::time::interval);
            for chunk in samples.chunks(chunk.max(1)) {
                if let Some(ticks) = ticks.as_mut() {
                    ticks.tick().await;
                }
                while api::publish::publish_samples(&js, chunk).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                published.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        }));
    }

    /// Waits until `percent` of the workload is published.
    async fn published(&self, percent: usize) {
        let want = self.samples.len() * percent / 100;
        let published = self.published.clone();
        eventually(
            &format!("{percent}% of the workload to be published"),
            DRAIN,
            || async { (published.load(Ordering::SeqCst) >= want).then_some(()) },
        )
        .await;
    }

    /// Waits for the publisher and for every consumer to finish, then checks the outcome.
    async fn finish(&mut self, rules: Vec<pipeline::Rule>, min_incidents: usize) {
        if let Some(publisher) = self.publisher.take() {
            publisher.await.unwrap();
        }
        drained(&self.js).await;
        let accepted = accepted(&self.js).await;
        let mut stored: Vec<&str> = accepted.iter().map(|s| s.id.as_deref().unwrap()).collect();
        let mut published: Vec<&str> = self
            .samples
            .iter()
            .map(|s| s.id.as_deref().unwrap())
            .collect();
        stored.sort_unstable();
        published.sort_unstable();
        assert!(
            stored == published,
            "the stream does not hold every sample of the workload once"
        );
        check(&self.pool, &accepted, rules, min_incidents, self.department).await;
        self.kill_tracely().await;
    }
}

/// The samples METRICS accepted, in stream order, each id once (a copy stored again outside
/// the duplicate window must change nothing): what the pipeline must have evaluated. A retry
/// after a fault can store a workload's samples in another order than they were first sent.
async fn accepted(js: &jetstream::Context) -> Vec<MetricSample> {
    let stream = js.get_stream("METRICS").await.unwrap();
    let total = stream.cached_info().state.messages;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for _ in 0..total {
        let message = futures::StreamExt::next(&mut messages)
            .await
            .expect("METRICS ended early")
            .unwrap();
        let content_type = message
            .headers
            .as_ref()
            .and_then(|h| h.get(schemas::headers::CONTENT_TYPE))
            .map(|v| v.as_str());
        if let Ok(sample) =
            MetricSample::from_message(message.subject.as_str(), content_type, &message.payload)
        {
            if seen.insert(sample.id.clone()) {
                samples.push(sample);
            }
        }
    }
    samples
}

/// Waits until every durable consumer has handled everything in its stream.
async fn drained(js: &jetstream::Context) {
    let all = consumers::Topology::built_in().durable_consumers();
    let names: Vec<(&str, &str)> = all
        .iter()
        .filter(|(name, _)| name != "index")
        .map(|(name, spec)| (spec.stream.as_str(), name.as_str()))
        .collect();
    support::drained_consumers(js, &names, DRAIN).await
}

/// Lease time of the cases: a killed evaluator's partitions move within it.
const LEASE_SECS: u64 = 3;

/// The shipped topology with short leases and `edits` (text replacements) applied.
fn topology(edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/topology.toml"),
    )
    .unwrap();
    for (from, to) in [("ttl_secs = 10", format!("ttl_secs = {LEASE_SECS}").as_str())]
        .into_iter()
        .chain(edits.iter().copied())
    {
        assert!(text.contains(from), "the topology has no {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// Partition → the process id of the evaluator holding its lease, read in one round trip;
/// `None` when the bucket could not be read (a busy server), so that the caller asks again.
async fn lease_holders(js: &jetstream::Context) -> Option<BTreeMap<u32, u32>> {
    let kv = js.get_key_value("tracely_evaluate_leases").await.ok()?;
    let partitions = consumers::Topology::built_in().partitions();
    let reads = (0..partitions).map(|p| {
        let kv = &kv;
        async move { (p, kv.get(format!("partition.{p}")).await) }
    });
    let mut holders = BTreeMap::new();
    for (p, owner) in futures::future::join_all(reads).await {
        if let Some(owner) = owner.ok()? {
            // Owners are `<pid>-<random>`.
            let owner = String::from_utf8(owner.to_vec()).unwrap();
            let pid = owner.split('-').next().unwrap().parse().unwrap();
            holders.insert(p, pid);
        }
    }
    Some(holders)
}

async fn check(
    pool: &PgPool,
    samples: &[MetricSample],
    rules: Vec<pipeline::Rule>,
    min_incidents: usize,
    department: Uuid,
) {
    let rows = sqlx::query(
        "SELECT id::text, violation_count, peak_value::text, last_value::text,
                opened_at, last_violation_at, resolved_at FROM incidents",
    )
    .fetch_all(pool)
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
    let expected = expected(samples, rules);
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
        "{} incidents, {} expected: missing {missing:?}, unexpected {extra:?}",
        actual.len(),
        expected.len()
    );
    for (id, want) in &expected {
        assert_eq!(
            &actual[id], want,
            "incident {id} differs from the uninterrupted run"
        );
    }
    let resolved = expected.values().filter(|v| v.5.is_some()).count();

    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .unwrap() as usize
    };
    assert_eq!(
        count("SELECT count(*) FROM incident_events WHERE kind = 'CREATED'").await,
        expected.len()
    );
    assert_eq!(
        count("SELECT count(*) FROM incident_events WHERE kind = 'RESOLVED'").await,
        resolved
    );
    assert_eq!(
        count("SELECT COALESCE(sum(trigger_count), 0)::bigint FROM rules").await,
        expected.len()
    );

    // In-app notifications: one per opening and one per resolution, each on the timeline once.
    let duplicated = count(
        "SELECT count(*) FROM (SELECT incident_id, kind FROM notifications
         GROUP BY incident_id, kind HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(duplicated, 0, "no event is notified twice");
    let notifications: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE department_id = $1")
            .bind(department)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        notifications as usize,
        expected.len() + resolved,
        "one notification per opening and per resolution"
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM incident_events
             WHERE kind = 'NOTIFIED' AND data->>'channel_type' = 'in_app'"
        )
        .await,
        expected.len() + resolved
    );
}

/// The cases, in a module of their own so that `make test` can run them apart, with more
/// threads: most of their time is spent waiting out a fault.
mod injected_fault {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tracely_sigkilled_five_times_under_load() {
        let rules = threshold_rules();
        let mut case = Case::start(rules.clone(), workload(40_000)).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        // Four kills at random points of the publish, and one at a random moment while the
        // last restarted process restores its state.
        let mut random = fault_points("tracely_sigkilled_five_times_under_load");
        let mut points: Vec<usize> = (0..4).map(|_| 5 + (random() % 86) as usize).collect();
        points.sort_unstable();
        let restoring = Duration::from_millis(50 + random() % 950);
        eprintln!("killing at {points:?}% of the publish, then {restoring:?} after a restart");
        case.publish();
        for percent in points {
            case.published(percent).await;
            case.kill_tracely().await;
            case.start_tracely();
        }
        tokio::time::sleep(restoring).await;
        case.kill_tracely().await;
        case.start_tracely();
        case.finish(engine_rules, 200).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tracely_sigkilled_mid_window_rebuilds_five_minute_averages() {
        let mut case = Case::start(windowed_rules(), windowed_workload()).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        case.publish();
        for percent in [30, 65] {
            case.published(percent).await;
            case.kill_tracely().await;
            case.start_tracely();
        }
        case.finish(engine_rules, 100).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_server_sigkilled_and_restarted_on_its_store() {
        let mut case = Case::start(threshold_rules(), workload(25_000)).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        case.publish();
        case.published(40).await;
        case.stack.nats.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        case.stack
            .nats
            .restart()
            .await
            .expect("restarting nats-server");
        case.finish(engine_rules, 100).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_server_paused_for_thirty_seconds() {
        let mut case = Case::start(threshold_rules(), workload(25_000)).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        case.publish();
        case.published(40).await;
        case.stack.nats.pause();
        tokio::time::sleep(Duration::from_secs(30)).await;
        case.stack.nats.resume();
        case.finish(engine_rules, 100).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_stopped_for_thirty_seconds_under_load() {
        // 900 samples a second for 40 s: load keeps arriving all through the outage.
        let mut case = Case::start(threshold_rules(), workload(36_000)).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        case.publish_steadily(900);
        case.published(15).await;
        case.stack.postgres.shut_down().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        case.stack
            .postgres
            .restart(true)
            .await
            .expect("starting Postgres again");
        assert!(
            case.published.load(Ordering::SeqCst) < case.samples.len(),
            "the load should still be arriving when Postgres comes back"
        );
        case.finish(engine_rules, 100).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poison_messages_mixed_into_the_load() {
        let mut case = Case::start(threshold_rules(), workload(20_000)).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        case.publish();
        let mut poison = 0;
        for percent in [10, 30, 50, 70, 90] {
            case.published(percent).await;
            for body in [
                &b"not a sample"[..],
                b"{\"service_id\": 5}",
                &[0xc1, 0x00][..],
            ] {
                poison += 1;
                // An id of its own, so a publish retried under load is stored once.
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("poison-{poison}").as_str());
                let js = &case.js;
                eventually("a poison message to be stored", DRAIN, || async {
                    js.publish_with_headers(
                        "metrics.svc-00.LATENCY_MS",
                        headers.clone(),
                        body.to_vec().into(),
                    )
                    .await
                    .ok()?
                    .await
                    .ok()
                })
                .await;
            }
        }
        case.finish(engine_rules, 100).await;
        let letters = case
            .js
            .get_stream("DEADLETTER")
            .await
            .unwrap()
            .cached_info()
            .state
            .messages;
        assert_eq!(
            letters,
            2 * poison,
            "each poison message is dead-lettered once by evaluate and once by archive"
        );
    }

    const DEDUP_WINDOW_SECS: u64 = 20;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicate_publishes_inside_and_outside_the_dedup_window() {
        // A shorter duplicate window, so that publishing again "outside" it is quick. It must
        // still outlast publishing the first half twice on a machine busy with other cases.
        let dir = tempfile::tempdir().unwrap();
        let topology = topology(&[(
            "duplicate_window_secs = 120",
            &format!("duplicate_window_secs = {DEDUP_WINDOW_SECS}"),
        )]);
        let path = dir.path().join("topology.toml");
        std::fs::write(&path, topology).unwrap();
        let env = vec![("TRACELY_TOPOLOGY".to_owned(), path.display().to_string())];
        let mut case = Case::start_with(threshold_rules(), workload(20_000), env).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        let samples = case.samples.clone();
        let (first, rest) = samples.split_at(10_000);
        api::publish::publish_samples(&case.js, first)
            .await
            .unwrap();
        // Inside the window: stored once.
        let again = api::publish::publish_samples(&case.js, first)
            .await
            .unwrap();
        assert_eq!(again.duplicates, first.len(), "{again:?}");
        // Outside it the stream stores them again; the evaluator must not count them twice.
        tokio::time::sleep(Duration::from_secs(DEDUP_WINDOW_SECS + 1)).await;
        let later = api::publish::publish_samples(&case.js, &first[5_000..])
            .await
            .unwrap();
        assert_eq!(later.duplicates, 0, "{later:?}");
        api::publish::publish_samples(&case.js, rest).await.unwrap();
        case.finish(engine_rules, 100).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_consumer_deleted_by_hand_while_running() {
        let mut case = Case::start(threshold_rules(), workload(25_000)).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        case.publish();
        case.published(30).await;
        // Every partition's evaluate consumer, then record.
        let metrics = case.js.get_stream("METRICS").await.unwrap();
        for p in 0..consumers::Topology::built_in().partitions() {
            metrics
                .delete_consumer(&format!("evaluate-{p}"))
                .await
                .unwrap();
        }
        case.published(60).await;
        case.js
            .get_stream("INCIDENTS")
            .await
            .unwrap()
            .delete_consumer("record")
            .await
            .unwrap();
        case.finish(engine_rules, 100).await;
    }

    /// Three evaluate processes share the partitions; one is SIGKILLed under load. Its
    /// partitions move to the two others within the lease time, rebuilt from the stream, and
    /// the incidents are exactly the pure engine's: nothing lost, nothing twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_evaluators_one_sigkilled_under_load() {
        let mut case = Case::start(threshold_rules(), workload(30_000)).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        let main = case.tracely.as_ref().unwrap().id().unwrap();
        let partitions = consumers::Topology::built_in().partitions() as usize;
        let js = case.js.clone();
        // The first process takes every partition; the two joining take theirs from it.
        eventually(
            "the first evaluator to take every partition",
            Duration::from_secs(60),
            || async {
                let holders = lease_holders(&js).await?;
                (holders.len() == partitions && holders.values().all(|p| *p == main)).then_some(())
            },
        )
        .await;
        let mut doomed = case.spawn("evaluate");
        let survivor = case.spawn("evaluate");
        let (doomed_pid, survivor_pid) = (doomed.id().unwrap(), survivor.id().unwrap());
        eventually(
            "the three evaluators to share the partitions",
            Duration::from_secs(60),
            || async {
                let holders = lease_holders(&js).await?;
                let owners: std::collections::BTreeSet<u32> = holders.values().copied().collect();
                (holders.len() == partitions && owners == [main, doomed_pid, survivor_pid].into())
                    .then_some(())
            },
        )
        .await;
        case.publish();
        case.published(40).await;
        doomed.start_kill().unwrap();
        doomed.wait().await.unwrap();
        let killed_at = std::time::Instant::now();
        eventually(
            "the killed evaluator's partitions to move to the others",
            Duration::from_secs(10 * LEASE_SECS),
            || async {
                let holders = lease_holders(&js).await?;
                (holders.len() == partitions && holders.values().all(|p| *p != doomed_pid))
                    .then_some(())
            },
        )
        .await;
        let moved = killed_at.elapsed();
        eprintln!(
            "the killed evaluator's partitions moved within {moved:?} (lease time {LEASE_SECS} s)"
        );
        // Keys expire 3/4 of the lease time after their last renewal and the others look every
        // eighth. Half a lease more covers the server's expiry check (up to 0.3 s) and rounds
        // slowed by a busy machine, as with four cases at once on 2 cores.
        assert!(
            moved <= Duration::from_millis(LEASE_SECS * 1500),
            "the partitions took {moved:?} to move"
        );
        case.finish(engine_rules, 100).await;
        let mut survivor = survivor;
        survivor.start_kill().unwrap();
        survivor.wait().await.unwrap();
    }

    /// Not a fault: the stateless roles in three processes at once, sharing their durable
    /// consumers, one of them killed half way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stateless_roles_shared_by_several_processes() {
        let mut case = Case::start(threshold_rules(), workload(25_000)).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        let mut copies = vec![
            case.spawn("record,archive,notify"),
            case.spawn("record,archive,notify"),
        ];
        case.publish();
        case.published(50).await;
        let mut killed = copies.remove(0);
        killed.start_kill().unwrap();
        killed.wait().await.unwrap();
        case.finish(engine_rules, 100).await;
        for mut copy in copies {
            copy.start_kill().unwrap();
            copy.wait().await.unwrap();
        }
    }

    /// The `Idempotency-Key` of every request the webhook receiver accepted.
    #[derive(Clone, Default)]
    struct Receiver {
        accepted: Arc<Mutex<Vec<String>>>,
    }

    /// The webhook target is down: its port is held by a socket that is bound but not
    /// listening, so every connection is refused, as when the receiving service is not running.
    /// A minute later the same socket starts listening.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_webhook_target_down_for_a_minute() {
        use axum::http::{HeaderMap, StatusCode};
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State(r): axum::extract::State<Receiver>,
                     headers: HeaderMap| async move {
                        let key = headers
                            .get("idempotency-key")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        r.accepted.lock().unwrap().push(key);
                        StatusCode::OK
                    },
                ),
            )
            .with_state(receiver.clone());
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}/hook", socket.local_addr().unwrap());
        let down_until = tokio::time::Instant::now() + Duration::from_secs(60);
        tokio::spawn(async move {
            tokio::time::sleep_until(down_until).await;
            let listener = socket.listen(1024).unwrap();
            axum::serve(listener, app).await.unwrap()
        });

        let mut case = Case::start(threshold_rules(), workload(5_000)).await;
        let engine_rules = consumers::rules::load(&case.pool).await.unwrap();
        sqlx::query(
            "INSERT INTO notification_channels (id, department_id, name, kind, url, secret)
             VALUES ($1, $2, 'hook', 'webhook', $3, 'a-secret-of-some-length')",
        )
        .bind(Uuid::new_v4())
        .bind(case.department)
        .bind(&url)
        .execute(&case.pool)
        .await
        .unwrap();
        // 100 samples a second: events keep coming for most of the minute the target is down.
        case.publish_steadily(100);
        let (pool, department) = (case.pool.clone(), case.department);
        case.finish(engine_rules.clone(), 20).await;
        let samples = accepted(&case.js).await;
        let refused: i64 =
            sqlx::query_scalar("SELECT count(*) FROM delivery_attempts WHERE outcome = 'network'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(refused > 0, "no attempt met the target down");
        // Every event reached the webhook once it was back: one delivery each, all delivered.
        let expected = expected(&samples, engine_rules);
        let events = expected.len() + expected.values().filter(|v| v.5.is_some()).count();
        let states: Vec<(String, i64)> = sqlx::query_as(
            "SELECT d.state, count(*) FROM deliveries d
             JOIN notification_channels c ON c.id = d.channel_id
             WHERE c.kind = 'webhook' AND c.department_id = $1 GROUP BY d.state",
        )
        .bind(department)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(states, [("delivered".to_owned(), events as i64)]);
        let mut accepted = receiver.accepted.lock().unwrap().clone();
        accepted.sort();
        accepted.dedup();
        assert_eq!(
            accepted.len(),
            events,
            "each event accepted under its own key"
        );
    }
}
