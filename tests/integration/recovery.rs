//! How the evaluator rebuilds its state after a crash, each mechanism tested on its own:
//! messages a dead process held come back in order at once, and episodes that were published
//! but not yet recorded are found in the INCIDENTS stream.

use std::time::Duration;

use crate::support::{drained, evaluate_consumer_of, eventually, publish, sample, App, Stack};
use futures::StreamExt;
use schemas::{Operator, Severity};
use store::rules::NewRule;
use tracely::config::Role;

async fn prepare(stack: &Stack) {
    let pool = stack.pool().await;
    store::migrate(&pool).await.unwrap();
    let rule = NewRule::threshold("latency", "LATENCY_MS", Operator::Gt, 150.0, Severity::High);
    store::rules::insert(&pool, &rule).await.unwrap();
    let js = stack.js().await;
    let version = js.client().server_info().version;
    consumers::topology::apply(&js, &version, &consumers::Topology::built_in())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_held_by_a_dead_evaluator_are_reread_in_order_at_once() {
    let stack = Stack::start().await;
    prepare(&stack).await;
    let js = stack.js().await;
    publish(
        &js,
        &[
            sample("S1", "LATENCY_MS", 180.0, "2026-03-12T09:00:00Z"),
            sample("S1", "LATENCY_MS", 190.0, "2026-03-12T09:01:00Z"),
        ],
    )
    .await;
    // A process that pulled both and died before acking them.
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("METRICS")
        .await
        .unwrap()
        .get_consumer(&evaluate_consumer_of("S1", "LATENCY_MS"))
        .await
        .unwrap();
    let held: Vec<_> = consumer
        .fetch()
        .max_messages(2)
        .messages()
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(held.len(), 2);
    drop(held);
    publish(
        &js,
        &[sample("S1", "LATENCY_MS", 100.0, "2026-03-12T09:02:00Z")],
    )
    .await;

    // Without rewinding, the held samples would come back only after ack_wait (60 s), after
    // the recovery, and open an incident that never resolves.
    let app = App::start(&stack).await;
    drained(&js, Duration::from_secs(15)).await;
    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["opened_at"], "2026-03-12T09:00:00Z");
    assert_eq!(incidents[0]["violation_count"], 2);
    assert_eq!(incidents[0]["resolved_at"], "2026-03-12T09:02:00Z");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodes_not_yet_recorded_are_restored_from_the_stream() {
    let stack = Stack::start().await;
    prepare(&stack).await;
    let js = stack.js().await;
    let evaluate_only = || stack.settings(&[Role::Evaluate]);

    // Opened, published to INCIDENTS, but never recorded: record is not running.
    let app = App::start_with(evaluate_only()).await;
    publish(
        &js,
        &[sample("S1", "LATENCY_MS", 180.0, "2026-03-12T09:00:00Z")],
    )
    .await;
    eventually("the opened transition", Duration::from_secs(10), || async {
        let mut stream = js.get_stream("INCIDENTS").await.ok()?;
        (stream.info().await.ok()?.state.messages == 1).then_some(())
    })
    .await;
    app.stop().await;

    // A restarted evaluator must continue that episode, not open a second incident.
    let app = App::start_with(evaluate_only()).await;
    publish(
        &js,
        &[sample("S1", "LATENCY_MS", 190.0, "2026-03-12T09:01:00Z")],
    )
    .await;
    eventually(
        "the updated transition",
        Duration::from_secs(10),
        || async {
            let mut stream = js.get_stream("INCIDENTS").await.ok()?;
            (stream.info().await.ok()?.state.messages == 2).then_some(())
        },
    )
    .await;
    app.stop().await;

    let app = App::start(&stack).await;
    drained(&js, Duration::from_secs(15)).await;
    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["violation_count"], 2);
    assert_eq!(incidents[0]["peak_value"], 190.0);
    app.stop().await;
}

/// Per three minutes: a recovery, then two violations (one incident of two violations).
fn flapping(from_minute: i64, count: i64) -> Vec<schemas::MetricSample> {
    (from_minute..from_minute + count)
        .map(|m| {
            let value = if m % 3 == 0 { 100.0 } else { 200.0 };
            let at = format!("2026-03-12T{:02}:{:02}:00Z", 9 + m / 60, m % 60);
            sample("S1", "LATENCY_MS", value, &at)
        })
        .collect()
}

async fn incident_summary(app: &App) -> Vec<(String, i64, String)> {
    let mut found: Vec<(String, i64, String)> = app
        .incidents("")
        .await
        .iter()
        .map(|i| {
            (
                i["opened_at"].as_str().unwrap().to_owned(),
                i["violation_count"].as_i64().unwrap(),
                i["resolved_at"].as_str().unwrap_or("open").to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_evaluator_shares_the_partitions_and_takes_over() {
    let stack = Stack::start().await;
    prepare(&stack).await;
    let js = stack.js().await;
    let first = App::start(&stack).await;
    let second = App::start_with(stack.settings(&[Role::Evaluate])).await;

    publish(&js, &flapping(0, 30)).await;
    drained(&js, Duration::from_secs(15)).await;
    let before = incident_summary(&first).await;
    assert_eq!(before.len(), 10, "{before:?}");

    // The first process goes away and hands its partitions over; the second must continue
    // exactly where it stopped.
    first.stop().await;
    let api = App::start_with(stack.settings(&[Role::Record, Role::Archive, Role::Api])).await;
    publish(&js, &flapping(30, 30)).await;
    drained(&js, Duration::from_secs(20)).await;
    let after = incident_summary(&api).await;
    assert_eq!(after.len(), 20, "{after:?}");
    assert!(after.iter().all(|(_, count, _)| *count == 2), "{after:?}");
    second.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_by_hand_is_recreated_after_what_was_applied() {
    let stack = Stack::start().await;
    prepare(&stack).await;
    let js = stack.js().await;
    let app = App::start(&stack).await;
    publish(&js, &flapping(0, 30)).await;
    drained(&js, Duration::from_secs(15)).await;

    let consumer = evaluate_consumer_of("S1", "LATENCY_MS");
    js.get_stream("METRICS")
        .await
        .unwrap()
        .delete_consumer(&consumer)
        .await
        .unwrap();
    publish(&js, &flapping(30, 30)).await;
    eventually(
        "the consumer to be re-created",
        Duration::from_secs(15),
        || async {
            js.get_stream("METRICS")
                .await
                .ok()?
                .consumer_info(&consumer)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    // Generous: noticing the deletion may take missed heartbeats (10 s and more).
    drained(&js, Duration::from_secs(60)).await;
    let found = incident_summary(&app).await;
    assert_eq!(found.len(), 20, "{found:?}");
    assert!(found.iter().all(|(_, count, _)| *count == 2), "{found:?}");
    app.stop().await;
}
