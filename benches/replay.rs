//! How fast a replay reads METRICS, against a raw ordered consumer reading the same range on
//! the same nats-server in the same run. Starts its own nats-server in a temp directory,
//! publishes 1,000,000 samples for 10,000 series (5,000 services × 2 metrics; about 1% of the
//! samples spike) and replays them, as a dry run, through two rule sets: a seed-style threshold
//! rule per metric, and 10 rules with windowed averages, percentiles, pending and clearing
//! periods. The readers take turns, three rounds each; the medians are compared. Pass
//! `--samples N` for another size.
//!
//! Run with `cargo bench --bench replay`.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use pipeline::Rule;
use replay::{Bound, Replay};
use schemas::{Aggregation, MetricSample, Operator, Severity, Span};
use tokio_util::sync::CancellationToken;
use tracely::devstack::NatsServer;

/// `cargo test --all-targets` runs this without `--bench`: then a small smoke run checks that
/// the benchmark still works, and its figures mean nothing.
fn scale() -> (usize, usize) {
    let args: Vec<String> = std::env::args().collect();
    let samples = args
        .iter()
        .position(|a| a == "--samples")
        .and_then(|i| args.get(i + 1)?.parse().ok());
    if args.iter().any(|a| a == "--bench") {
        (samples.unwrap_or(1_000_000), 3)
    } else {
        (20_000, 1)
    }
}

const SERVICES: usize = 5_000;
const METRICS: [&str; 2] = ["LATENCY_MS", "ERROR_RATE"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(&dir.path().join("nats")).await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    let version = client.server_info().version;
    consumers::topology::apply(&js, &version, &consumers::Topology::built_in()).await?;
    // The pipeline's own consumers would read along; the comparison is of readers alone.
    let stream = js.get_stream("METRICS").await?;
    for (name, spec) in consumers::Topology::built_in().durable_consumers() {
        if spec.stream == "METRICS" {
            stream.delete_consumer(&name).await.ok();
        }
    }

    let (count, rounds) = scale();
    eprintln!("publishing {count} samples…");
    let publishing = Instant::now();
    let start: DateTime<Utc> = Utc::now() - chrono::Duration::days(1);
    let per_series = count / (SERVICES * METRICS.len());
    let mut batch = Vec::with_capacity(10_000);
    for step in 0..per_series {
        for s in 0..SERVICES {
            for (m, metric) in METRICS.iter().enumerate() {
                let wave = ((step + s * 7 + m * 3) % 40) as f64;
                batch.push(MetricSample {
                    service_id: format!("svc-{s}"),
                    metric_type: (*metric).into(),
                    value: if wave > 35.0 {
                        500.0 + wave
                    } else {
                        100.0 + wave
                    },
                    recorded_at: start + chrono::Duration::seconds(10 * step as i64),
                    id: None,
                    labels: Default::default(),
                });
                if batch.len() == batch.capacity() {
                    api::publish::publish_samples(&js, &batch).await?;
                    batch.clear();
                    eprint!(".");
                }
            }
        }
    }
    api::publish::publish_samples(&js, &batch).await?;
    let total = js.get_stream("METRICS").await?.cached_info().state.messages;
    eprintln!(
        "published {total} in {:.1} s",
        publishing.elapsed().as_secs_f64()
    );

    let all = rules();
    let workloads = [
        (
            "seed-style: one threshold rule per metric",
            Replay {
                rules: vec![all[0].clone(), all[5].clone()],
                services: Vec::new(),
                allowed_lateness: Span(30_000),
            },
        ),
        (
            "10 rules: windows up to 5 m, p95/p99, pending and clearing",
            Replay {
                rules: all,
                services: Vec::new(),
                allowed_lateness: Span(30_000),
            },
        ),
    ];
    let mut raw_runs = Vec::new();
    let mut replay_runs = vec![Vec::new(); workloads.len()];
    let mut found = vec![0; workloads.len()];
    for round in 0..rounds {
        let raw = read_raw(&js, total).await?;
        eprint!("round {}: raw {:.2} s", round + 1, raw.as_secs_f64());
        raw_runs.push(raw);
        for (i, (_, replay)) in workloads.iter().enumerate() {
            let (took, incidents) = read_replay(&js, replay, total).await?;
            eprint!(", replay {} {:.2} s", i + 1, took.as_secs_f64());
            replay_runs[i].push(took);
            found[i] = incidents;
        }
        eprintln!();
    }
    let median = |runs: &mut Vec<Duration>| {
        runs.sort();
        runs[runs.len() / 2].as_secs_f64()
    };
    let raw = median(&mut raw_runs);
    let rate = |secs: f64| total as f64 / secs;
    println!("| reader | samples | median s | samples/s | of raw |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| raw ordered consumer | {total} | {raw:.2} | {:.0} | 100% |",
        rate(raw)
    );
    for (i, (name, _)) in workloads.iter().enumerate() {
        let replayed = median(&mut replay_runs[i]);
        println!(
            "| replay, {name} ({} incidents) | {total} | {replayed:.2} | {:.0} | {:.0}% |",
            found[i],
            rate(replayed),
            100.0 * raw / replayed
        );
    }
    client.flush().await?;
    drop(client);
    nats.stop().await
}

/// Ten rules over both metrics: what a busy installation might backfill at once.
fn rules() -> Vec<Rule> {
    let rule = |metric: &str, aggregation, window: i64, op, threshold, pending: i64| {
        let mut r = Rule::threshold("bench", metric, op, threshold, Severity::High);
        r.aggregation = aggregation;
        r.window = Span(window * 1000);
        r.pending_for = Span(pending * 1000);
        r.clear_for = Span(pending * 1000);
        r
    };
    vec![
        rule("LATENCY_MS", Aggregation::Last, 0, Operator::Gt, 300.0, 0),
        rule("LATENCY_MS", Aggregation::Avg, 60, Operator::Gt, 250.0, 30),
        rule("LATENCY_MS", Aggregation::Max, 120, Operator::Gt, 520.0, 0),
        rule("LATENCY_MS", Aggregation::P95, 300, Operator::Gt, 400.0, 60),
        rule("LATENCY_MS", Aggregation::Min, 60, Operator::Lt, 50.0, 0),
        rule("ERROR_RATE", Aggregation::Last, 0, Operator::Gt, 530.0, 0),
        rule("ERROR_RATE", Aggregation::Avg, 120, Operator::Gt, 200.0, 20),
        rule("ERROR_RATE", Aggregation::Sum, 60, Operator::Gt, 3000.0, 0),
        rule("ERROR_RATE", Aggregation::Count, 60, Operator::Lt, 2.0, 0),
        rule("ERROR_RATE", Aggregation::P99, 300, Operator::Ge, 530.0, 30),
    ]
}

/// Reads every message with an ordered consumer and touches its payload: the floor.
async fn read_raw(js: &jetstream::Context, total: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let stream = js.get_stream("METRICS").await?;
    let consumer = stream.create_consumer(OrderedConfig::default()).await?;
    let mut messages = consumer.messages().await?;
    let (mut read, mut bytes) = (0u64, 0usize);
    while read < total {
        let msg = messages.next().await.expect("the stream ended early")?;
        bytes += msg.payload.len();
        read += 1;
    }
    anyhow::ensure!(bytes > 0);
    Ok(started.elapsed())
}

/// Replays the whole stream through the rules, writing nothing.
async fn read_replay(
    js: &jetstream::Context,
    replay: &Replay,
    total: u64,
) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let plan = replay::plan::plan(
        js,
        "METRICS",
        Bound::Sequence(1),
        Bound::Now,
        replay.lookback(),
    )
    .await?;
    let outcome = replay
        .run(js, "METRICS", &plan, &CancellationToken::new(), |_| {
            ControlFlow::Continue(())
        })
        .await?;
    anyhow::ensure!(
        outcome.progress.samples == total,
        "replayed {} of {total} samples",
        outcome.progress.samples
    );
    Ok((started.elapsed(), outcome.incidents.len()))
}
