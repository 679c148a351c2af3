//! `tracely bench`: the whole pipeline on this machine, against raw JetStream on the same
//! machine in the same run.
//!
//! 1. **Raw JetStream.** The same messages Tracely gets (MessagePack samples with their
//!    `Nats-Msg-Id`) are published, with acks awaited a window at a time, to a stream
//!    configured like METRICS, while one durable pull consumer reads and acks them. The rate is
//!    messages over the time until the last is acked.
//! 2. **Tracely, sustained.** The same number of samples go to METRICS while `evaluate` (10
//!    rules over every series) and `record` run: the path from a sample to its incident. The
//!    rate is samples over the time until both have acked everything, incidents recorded
//!    included. `archive` (every sample into Postgres, for charts) is a role of its own and is
//!    not measured here.
//! 3. **Detection latency** at 25%, 50% and 80% of that rate: load is published at a steady
//!    pace, and probe samples open one incident each, on 100 probe series registered before,
//!    each cleared just before its next probe. Latency is from a probe's event time, taken as
//!    it is published, to the commit of its incident's row, seen when `record` announces it
//!    on the live subjects, both on this machine's clock.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use async_nats::HeaderMap;
use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt as _;
use schemas::{headers, Aggregation, MetricSample, Operator, Severity, Span};
use sqlx::PgPool;
use store::rules::NewRule;

use crate::config::{BenchArgs, Role};
use crate::devstack::{NatsServer, Postgres};
use crate::startup::{connect_nats, Application, Settings};

/// Publishes awaiting their acks at once, as `POST /api/metrics` and `tracely publish` do.
const ACK_WINDOW: usize = 1_000;
const LOAD_METRIC: &str = "LATENCY_MS";
const PROBE_METRIC: &str = "PROBE_MS";
/// How often the paced publisher sends a batch.
const TICK: Duration = Duration::from_millis(10);
const LEVELS: [u32; 3] = [25, 50, 80];
/// Probe series; each carries a probe at most every `PROBE_SERIES / --probes-per-sec` s.
const PROBE_SERIES: usize = 100;
const THROUGHPUT_TARGET: f64 = 0.5;
const LATENCY_TARGET_SECS: f64 = 0.1;

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.samples >= 10_000, "--samples must be at least 10000");
    anyhow::ensure!(args.series >= 1, "--series must be at least 1");
    let dir = &args.data_dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let nats = NatsServer::start(&dir.join("nats")).await?;
    let postgres = Postgres::start(&dir.join("postgres"), false).await?;
    // A signal ends the measurement, but the servers are stopped all the same.
    let stopped = crate::shutdown::on_signal();
    let result = tokio::select! {
        result = measure(&args, &nats, &postgres) => result,
        _ = stopped.cancelled() => Err(anyhow::anyhow!("interrupted; nothing was written")),
    };
    let _ = tokio::join!(postgres.stop(), nats.stop());
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    println!("\n{}", report.markdown(&args));
    if args.write.as_os_str() != "-" {
        write_section(&args.write, &report.markdown(&args))?;
        println!("written to {}", args.write.display());
    }
    Ok(ExitCode::SUCCESS)
}

struct Report {
    raw_per_sec: f64,
    tracely_per_sec: f64,
    incidents: i64,
    transitions: u64,
    levels: Vec<Level>,
}

struct Level {
    percent: u32,
    target_per_sec: f64,
    achieved_per_sec: f64,
    transitions: u64,
    probes: usize,
    p50: f64,
    p99: f64,
    p999: f64,
}

async fn measure(
    args: &BenchArgs,
    nats: &NatsServer,
    postgres: &Postgres,
) -> anyhow::Result<Report> {
    let client = connect_nats(&nats.url()).await?;
    let js = jetstream::new(client);

    println!(
        "1/3 raw JetStream: {} messages published and consumed",
        args.samples
    );
    let raw_per_sec = raw_jetstream(&js, args).await?;
    println!("    {raw_per_sec:.0} messages/s");

    let database_url = postgres.create_database("bench").await?;
    let topology = consumers::Topology::built_in();
    let settings = Settings {
        nats_url: nats.url(),
        database_url,
        // The path a sample takes to an incident. `archive` copies every sample into Postgres
        // for charts; it is a separate role, sized on its own, and not on that path.
        roles: vec![Role::Evaluate, Role::Record],
        http_addr: "127.0.0.1:0".parse().expect("an address"),
        topology,
        db_max_connections: 10,
        shutdown_timeout: Duration::from_secs(10),
        allowed_lateness: Duration::from_secs(30),
        sample_retention: Duration::from_secs(24 * 3600),
        http: Default::default(),
        notify: Default::default(),
        meili: None,
    };
    let app = Application::build(settings).await?;
    let pool = app.pool().clone();
    for rule in rules() {
        store::rules::insert(&pool, &rule).await?;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));
    let measured = async {
        evaluating(&js).await?;
        println!(
            "2/3 Tracely sustained: {} samples over {} series × 10 rules",
            args.samples, args.series
        );
        let tracely_per_sec = sustained(&js, args).await?;
        let incidents: i64 = sqlx::query_scalar("SELECT count(*) FROM incidents")
            .fetch_one(&pool)
            .await?;
        let transitions = transitions(&js).await?;
        println!(
            "    {tracely_per_sec:.0} samples/s, {:.0}% of raw JetStream; {incidents} incidents from {transitions} transitions recorded",
            100.0 * tracely_per_sec / raw_per_sec
        );
        println!("3/3 detection latency at 25%, 50% and 80% of that rate");
        // Registered now, as a service is once it has been seen, so that no level pays for it.
        let probes: Vec<MetricSample> = (0..PROBE_SERIES)
            .map(|k| probe(k, 0.0, Utc::now(), "register"))
            .collect();
        api::publish::publish_samples(&js, &probes).await?;
        drained(&js).await?;
        let mut levels = Vec::new();
        for percent in LEVELS {
            let level = latency(&js, &pool, args, percent, tracely_per_sec).await?;
            println!(
                "    {percent}%: {:.0} samples/s, {} probes: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
                level.achieved_per_sec,
                level.probes,
                level.p50 * 1000.0,
                level.p99 * 1000.0,
                level.p999 * 1000.0
            );
            levels.push(level);
        }
        anyhow::Ok(Report {
            raw_per_sec,
            tracely_per_sec,
            incidents,
            transitions,
            levels,
        })
    }
    .await;
    stop.cancel();
    running.await.context("the pipeline panicked")??;
    measured
}

/// Ten rules on the load metric, as in the replay benchmark, and one on the probes.
fn rules() -> Vec<NewRule> {
    let rule = |aggregation, window: i64, operator, threshold: f64, pending: i64| NewRule {
        aggregation,
        window: Span(window * 1000),
        pending_for: Span(pending * 1000),
        clear_for: Span(pending * 1000),
        ..NewRule::threshold(
            &format!("{aggregation:?} {window}s {operator} {threshold}"),
            LOAD_METRIC,
            operator,
            threshold,
            Severity::High,
        )
    };
    vec![
        rule(Aggregation::Last, 0, Operator::Gt, 300.0, 0),
        rule(Aggregation::Avg, 60, Operator::Gt, 250.0, 30),
        rule(Aggregation::Max, 120, Operator::Gt, 520.0, 0),
        rule(Aggregation::P95, 300, Operator::Gt, 400.0, 60),
        rule(Aggregation::Min, 60, Operator::Lt, 50.0, 0),
        rule(Aggregation::Sum, 60, Operator::Gt, 100_000.0, 0),
        rule(Aggregation::Count, 60, Operator::Gt, 10_000.0, 0),
        rule(Aggregation::P99, 300, Operator::Ge, 530.0, 30),
        rule(Aggregation::P50, 120, Operator::Gt, 450.0, 0),
        rule(Aggregation::Avg, 300, Operator::Gt, 350.0, 0),
        NewRule::threshold("probe", PROBE_METRIC, Operator::Gt, 0.0, Severity::High),
    ]
}

/// Samples `from..to` of the load: series round-robin, about 1% spiking, a millisecond apart
/// and ending now, so that each series' samples have times of their own.
fn load(from: usize, to: usize, series: usize, run: &str) -> Vec<MetricSample> {
    let now = Utc::now();
    let at = |i: usize| now - chrono::TimeDelta::milliseconds((to - 1 - i) as i64);
    (from..to)
        .map(|i| {
            let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x ^= x >> 29;
            let value = if x % 100 == 0 {
                600.0
            } else {
                100.0 + (x % 100) as f64
            };
            MetricSample {
                service_id: format!("svc-{:05}", i % series),
                metric_type: LOAD_METRIC.to_owned(),
                value,
                recorded_at: at(i),
                id: Some(format!("{run}-{i}")),
                labels: Default::default(),
            }
        })
        .collect()
}

/// A sample of probe series `series`.
fn probe(series: usize, value: f64, at: chrono::DateTime<Utc>, id: &str) -> MetricSample {
    MetricSample {
        service_id: format!("probe-{series:03}"),
        metric_type: PROBE_METRIC.to_owned(),
        value,
        recorded_at: at,
        id: Some(id.to_owned()),
        labels: Default::default(),
    }
}

fn message(sample: &MetricSample) -> PublishMessage {
    let mut headers = HeaderMap::new();
    headers.insert(headers::CONTENT_TYPE, headers::MSGPACK_CONTENT_TYPE);
    PublishMessage::build()
        .headers(headers)
        .payload(sample.to_msgpack().into())
        .message_id(sample.id.clone().unwrap_or_default())
}

/// Messages per second through one stream and one consumer, published and acked concurrently.
async fn raw_jetstream(js: &jetstream::Context, args: &BenchArgs) -> anyhow::Result<f64> {
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "BENCH".to_owned(),
            subjects: vec!["bench.>".to_owned()],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .context("creating the BENCH stream")?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let total = args.samples;
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        let mut read = 0;
        while read < total {
            let message = messages
                .next()
                .await
                .context("the consumer ended early")?
                .map_err(|e| anyhow::anyhow!("reading: {e}"))?;
            message
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("acking: {e}"))?;
            read += 1;
        }
        anyhow::Ok(())
    });
    for from in (0..total).step_by(ACK_WINDOW) {
        let to = (from + ACK_WINDOW).min(total);
        let mut acks = Vec::with_capacity(to - from);
        for sample in load(from, to, args.series, "raw") {
            let subject = format!("bench.{}.{}", sample.service_id, sample.metric_type);
            acks.push(js.send_publish(subject, message(&sample)).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    reader.await??;
    let elapsed = started.elapsed();
    js.delete_stream("BENCH").await?;
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// Samples per second from the first publish until every consumer has acked everything.
async fn sustained(js: &jetstream::Context, args: &BenchArgs) -> anyhow::Result<f64> {
    let started = Instant::now();
    for from in (0..args.samples).step_by(10 * ACK_WINDOW) {
        let to = (from + 10 * ACK_WINDOW).min(args.samples);
        api::publish::publish_samples(js, &load(from, to, args.series, "sustained")).await?;
    }
    drained(js).await?;
    Ok(args.samples as f64 / started.elapsed().as_secs_f64())
}

/// Messages in INCIDENTS: transitions, as nothing else writes there during the benchmark.
async fn transitions(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut incidents = js.get_stream(consumers::topology::INCIDENTS).await?;
    Ok(incidents.info().await?.state.messages)
}

/// Waits until every partition of METRICS has its evaluator, so that no measure includes
/// the start-up.
async fn evaluating(js: &jetstream::Context) -> anyhow::Result<()> {
    let partitions = consumers::Topology::built_in().partitions();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(kv) = js.get_key_value(consumers::topology::LEASES_BUCKET).await {
            let mut held = 0;
            for p in 0..partitions {
                if matches!(kv.get(format!("partition.{p}")).await, Ok(Some(_))) {
                    held += 1;
                }
            }
            if held == partitions {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the evaluators did not take every partition within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the pipeline's consumers have nothing pending or unacked.
async fn drained(js: &jetstream::Context) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut idle = true;
        for (consumer, spec) in consumers::Topology::built_in().durable_consumers() {
            if !(consumer.starts_with("evaluate-") || consumer == "record") {
                continue;
            }
            let info = js
                .get_stream(&spec.stream)
                .await?
                .consumer_info(&consumer)
                .await?;
            idle &= info.num_pending == 0 && info.num_ack_pending == 0;
        }
        if idle {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pipeline did not catch up in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes load at `percent` of `sustained` for `--level-secs`, with probes, and reads the
/// probes' detection latency.
async fn latency(
    js: &jetstream::Context,
    pool: &PgPool,
    args: &BenchArgs,
    percent: u32,
    sustained: f64,
) -> anyhow::Result<Level> {
    let target = sustained * f64::from(percent) / 100.0;
    let run = format!("level{percent}");
    let per_tick = target * TICK.as_secs_f64();
    let probe_every = Duration::from_secs_f64(1.0 / args.probes_per_sec.max(1) as f64);
    let started = Instant::now();
    let ends = started + Duration::from_secs(args.level_secs);
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut owed, mut sent, mut probes) = (0.0, 0usize, 0usize);
    let mut next_probe = started;
    // Event times travel in whole milliseconds.
    let since = Utc::now().trunc_subsecs(3);
    let openings = Openings::watch(js).await?;
    let transitions_before = transitions(js).await?;
    while Instant::now() < ends {
        ticker.tick().await;
        owed += per_tick;
        let count = owed.floor() as usize;
        owed -= count as f64;
        let mut batch = load(sent, sent + count, args.series, &run);
        sent += count;
        while next_probe <= Instant::now() {
            // Clears the series' previous probe incident, then opens the next.
            let (series, now) = (probes % PROBE_SERIES, Utc::now());
            let clear = now - chrono::TimeDelta::milliseconds(1);
            batch.push(probe(series, 0.0, clear, &format!("{run}-clear-{probes}")));
            batch.push(probe(series, 1.0, now, &format!("{run}-probe-{probes}")));
            probes += 1;
            next_probe += probe_every;
        }
        api::publish::publish_samples(js, &batch).await?;
    }
    let achieved = sent as f64 / started.elapsed().as_secs_f64();
    drained(js).await?;
    let seen = openings.stop();
    let transitions = transitions(js).await? - transitions_before;
    let rows: Vec<(uuid::Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, opened_at, created_at FROM incidents WHERE metric_type = $1 AND opened_at >= $2",
    )
    .bind(PROBE_METRIC)
    .bind(since)
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        rows.len() == probes,
        "{probes} probes were published but {} incidents recorded",
        rows.len()
    );
    // Committed when record announced it; its row's insertion time if that was missed.
    let mut unannounced = 0;
    let mut probed: Vec<Probe> = rows
        .iter()
        .map(|(id, opened_at, created_at)| {
            let committed = seen.committed.get(id).copied().unwrap_or_else(|| {
                unannounced += 1;
                *created_at
            });
            Probe {
                latency: seconds(committed - *opened_at),
                at: seconds(*opened_at - since),
                to_incidents: seen.published.get(id).map(|p| seconds(*p - *opened_at)),
            }
        })
        .collect();
    probed.sort_by(|a, b| a.latency.total_cmp(&b.latency));
    let latencies: Vec<f64> = probed.iter().map(|p| p.latency).collect();
    let slowest: Vec<String> = probed
        .iter()
        .rev()
        .take(8)
        .map(|p| {
            let to_incidents = p
                .to_incidents
                .map_or_else(|| "?".to_owned(), |s| format!("{:.0}", s * 1000.0));
            format!(
                "{:.0} ms ({to_incidents} ms to INCIDENTS) at +{:.2} s",
                p.latency * 1000.0,
                p.at
            )
        })
        .collect();
    println!(
        "    {transitions} transitions; slowest probes: {}",
        slowest.join(", ")
    );
    if unannounced > 0 {
        println!(
            "    {unannounced} commits were not announced; their rows' insertion times were used"
        );
    }
    Ok(Level {
        percent,
        target_per_sec: target,
        achieved_per_sec: achieved,
        transitions,
        probes: latencies.len(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
    })
}

/// One probe's detection latency, when it was published in the level, and how long its
/// opening took to reach INCIDENTS, all in seconds.
struct Probe {
    latency: f64,
    at: f64,
    to_incidents: Option<f64>,
}

fn seconds(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// The `q` quantile of sorted values, interpolated between the nearest two.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let rank = q * last as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// Per incident id, when its opening reached INCIDENTS and when `record` announced its row
/// committed: splits a probe's latency into evaluation and recording.
struct Openings {
    seen: Arc<Mutex<Seen>>,
    watching: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Seen {
    published: HashMap<uuid::Uuid, DateTime<Utc>>,
    committed: HashMap<uuid::Uuid, DateTime<Utc>>,
}

impl Openings {
    async fn watch(js: &jetstream::Context) -> anyhow::Result<Openings> {
        let client = js.client();
        let mut published = client
            .subscribe(schemas::subject::incidents_subject("*", "opened"))
            .await?;
        let mut committed = client
            .subscribe(format!("{}.*", schemas::live::INCIDENTS))
            .await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let into = seen.clone();
        let publishing = tokio::spawn(async move {
            while let Some(msg) = published.next().await {
                let at = Utc::now();
                if let Ok(t) = schemas::IncidentTransition::from_msgpack(&msg.payload) {
                    let mut seen = into.lock().unwrap_or_else(PoisonError::into_inner);
                    seen.published.insert(t.incident.id, at);
                }
            }
        });
        let into = seen.clone();
        let committing = tokio::spawn(async move {
            let probes = format!("{}.probe-", schemas::live::INCIDENTS);
            while let Some(msg) = committed.next().await {
                let at = Utc::now();
                if !msg.subject.starts_with(probes.as_str()) {
                    continue;
                }
                if let Ok(changed) =
                    serde_json::from_slice::<schemas::live::IncidentChanged>(&msg.payload)
                {
                    if changed.kind == "opened" {
                        let mut seen = into.lock().unwrap_or_else(PoisonError::into_inner);
                        seen.committed.entry(changed.id).or_insert(at);
                    }
                }
            }
        });
        Ok(Openings {
            seen,
            watching: vec![publishing, committing],
        })
    }

    fn stop(self) -> Seen {
        for task in &self.watching {
            task.abort();
        }
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Report {
    fn markdown(&self, args: &BenchArgs) -> String {
        let ratio = self.tracely_per_sec / self.raw_per_sec;
        let half = self.levels.iter().find(|l| l.percent == 50);
        let verdict = |met: bool| if met { "met" } else { "missed" };
        let mut text = format!(
            "## End to end (`tracely bench`)\n\n\
             ```sh\ncargo run --release -- bench --samples {} --series {} --level-secs {} --probes-per-sec {}\n```\n\n\
             Run on {}, on {}. nats-server and Postgres run on the same machine, started by the\n\
             command; Tracely runs `evaluate` and `record`, the path from a sample to its\n\
             incident, in one process. Every sample is judged by 10 rules (windows up to 5 m,\n\
             p95/p99, pending and clearing) over {} series; about 1% of them spike.\n\n\
             | pipeline | samples/s | of raw JetStream |\n|---|---:|---:|\n\
             | raw JetStream: publish with acks + one consumer acking | {:.0} | 100% |\n\
             | Tracely: publish, evaluate, record ({} incidents from {} transitions) | {:.0} | {:.0}% |\n\n\
             Target: at least 50% of raw JetStream: {}.\n\n\
             Detection latency, from a probe sample's event time (taken as it is published) to\n\
             the commit of its incident's row (seen as `record` announces it), at a steady load:\n\n\
             | load | samples/s asked | sent | transitions | probes | p50 | p99 | p99.9 |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
            args.samples,
            args.series,
            args.level_secs,
            args.probes_per_sec,
            Utc::now().format("%Y-%m-%d"),
            machine(),
            args.series,
            self.raw_per_sec,
            self.incidents,
            self.transitions,
            self.tracely_per_sec,
            100.0 * ratio,
            verdict(ratio >= THROUGHPUT_TARGET),
        );
        for l in &self.levels {
            text.push_str(&format!(
                "| {}% | {:.0} | {:.0} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
                l.percent,
                l.target_per_sec,
                l.achieved_per_sec,
                l.transitions,
                l.probes,
                l.p50 * 1000.0,
                l.p99 * 1000.0,
                l.p999 * 1000.0
            ));
        }
        if let Some(half) = half {
            text.push_str(&format!(
                "\nTarget: p99 under 100 ms at 50% load: {} ({:.1} ms).\n",
                verdict(half.p99 < LATENCY_TARGET_SECS),
                half.p99 * 1000.0
            ));
        }
        text
    }
}

/// The CPU model, cores and memory, as Linux reports them.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("an unknown CPU")
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!(
        "{cores} cores of {model} with {} GiB",
        (memory_kib as f64 / 1024.0 / 1024.0).round()
    )
}

const BEGIN: &str = "<!-- tracely bench: begin -->";
const END: &str = "<!-- tracely bench: end -->";

/// Replaces the section between the markers, or appends it.
fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{section}{END}\n");
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            let rest = text[end + END.len()..].trim_start_matches('\n');
            let gap = if rest.is_empty() { "" } else { "\n" };
            format!("{}{block}{gap}{rest}", &text[..begin])
        }
        _ => format!("{}\n{block}", text.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}
