//! `/metrics` after real load, parsed with the reference Prometheus text-format parser
//! (python3's prometheus_client): consumer backlog gauges rise while a burst waits and fall to
//! zero once it is handled, detection latency is observed when an incident opens, consumer
//! counters move, and HTTP metrics are labelled by matched route. Without python3 and
//! prometheus_client the test is skipped loudly, unless `CI` is set.
//!
//! The metrics recorder is process-wide, so this file holds a single test.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{drained, eventually, publish, sample, App, Stack};
use tracely::config::Role;

const WAIT: Duration = Duration::from_secs(30);
const BURST: usize = 300;

const PARSER: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": f.name,
        "type": f.type,
        "samples": [
            {"name": s.name, "labels": s.labels,
             "value": s.value if math.isfinite(s.value) else None}
            for s in f.samples
        ],
    })
print(json.dumps(families))
"#;

/// Whether python3 can import prometheus_client. Panics when it cannot and `CI` is set.
fn parser_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .current_dir("/")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with prometheus-client is required when CI is set; run make deps"
        );
        // Written to the stderr handle, not with eprintln!, so the test harness does not
        // capture it and the skip shows even when the test passes.
        let _ = writeln!(
            std::io::stderr(),
            "\n{bar}\nSKIPPED: python3 with prometheus-client is not available; run make deps\n{bar}\n",
            bar = "!".repeat(78)
        );
    }
    ok
}

/// The metric families of a scrape, as the reference parser reads them. Fails the test when
/// the text is not valid exposition format.
fn parse(text: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the scrape is not valid Prometheus text:\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

async fn scrape(app: &App) -> Vec<Value> {
    let response = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    parse(&response.text().await.unwrap())
}

fn family<'a>(families: &'a [Value], name: &str) -> Option<&'a Value> {
    families.iter().find(|f| f["name"] == name)
}

/// The value of the sample named `sample` whose labels include `labels`.
fn value(families: &[Value], sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .find(|s| s["name"] == sample && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

fn lag(families: &[Value], consumer: &str) -> Option<(f64, f64)> {
    let labels = [("consumer", consumer)];
    Some((
        value(families, "tracely_consumer_pending_messages", &labels)?,
        value(families, "tracely_consumer_ack_pending_messages", &labels)?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_health_is_exposed_as_valid_prometheus_metrics() {
    if !parser_ready() {
        return;
    }
    let stack = Stack::start().await;
    let js = stack.js().await;
    // The API alone: nothing consumes yet, so a burst stays pending.
    let api = App::start_with(stack.settings(&[Role::Api])).await;
    api.rule(serde_json::json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH"}))
        .await;

    let now = chrono::Utc::now();
    let mut burst: Vec<_> = (0..BURST)
        .map(|i| {
            let mut s = sample("S1", "LATENCY_MS", 100.0, "2026-03-12T09:00:00Z");
            s.recorded_at = now - chrono::Duration::milliseconds((BURST - i) as i64);
            s
        })
        .collect();
    burst.last_mut().unwrap().value = 180.0;
    publish(&js, &burst).await;

    let pending = BURST as f64;
    // Every sample of the burst is in S1's partition.
    let evaluate = support::evaluate_consumer_of("S1", "LATENCY_MS");
    eventually("the backlog gauges to show the burst", WAIT, || async {
        let families = scrape(&api).await;
        let full = |c| lag(&families, c).is_some_and(|(p, _)| p == pending);
        (full(&evaluate) && full("archive")).then_some(())
    })
    .await;
    let before = scrape(&api).await;
    let detections_before =
        value(&before, "tracely_detection_latency_seconds_count", &[]).unwrap_or(0.0);
    assert_eq!(
        value(&before, "tracely_db_pool_max_connections", &[]),
        Some(5.0),
        "pool gauges are refreshed with the lag"
    );
    assert!(value(&before, "tracely_db_pool_connections", &[]).is_some());
    assert!(value(&before, "tracely_db_pool_idle_connections", &[]).is_some());

    // Now the consumers run and drain it.
    let workers =
        App::start_with(stack.settings(&[Role::Evaluate, Role::Record, Role::Archive])).await;
    drained(&js, WAIT).await;
    eventually("the backlog gauges to return to zero", WAIT, || async {
        let families = scrape(&api).await;
        let empty = |c| lag(&families, c) == Some((0.0, 0.0));
        (empty(&evaluate) && empty("archive") && empty("record")).then_some(())
    })
    .await;
    let incidents = api.incidents("").await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");

    // A route with a path parameter, to see how requests are labelled.
    let (status, _) = api.get("/api/services/S1").await;
    assert_eq!(status, 200);
    let after = scrape(&api).await;

    let detections = value(&after, "tracely_detection_latency_seconds_count", &[]).unwrap();
    assert!(
        detections > detections_before,
        "detection latency was not observed: {detections_before} then {detections}"
    );
    let slowest = family(&after, "tracely_detection_latency_seconds").unwrap()["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["name"] == "tracely_detection_latency_seconds_bucket"
                && s["labels"]["le"]
                    .as_str()
                    .and_then(|le| le.parse::<f64>().ok())
                    == Some(300.0)
        })
        .and_then(|s| s["value"].as_f64())
        .expect("a 300 s bucket");
    assert!(slowest >= 1.0, "a fresh sample is detected within minutes");

    for consumer in [evaluate.as_str(), "archive"] {
        let processed = value(
            &after,
            "tracely_consumer_messages_processed_total",
            &[("consumer", consumer)],
        )
        .unwrap_or(0.0);
        assert!(processed >= pending, "{consumer} processed {processed}");
        let batches = value(
            &after,
            "tracely_consumer_batch_duration_seconds_count",
            &[("consumer", consumer)],
        )
        .unwrap_or(0.0);
        assert!(batches >= 1.0, "{consumer} timed no batch");
    }
    let recorded = value(
        &after,
        "tracely_consumer_messages_processed_total",
        &[("consumer", "record")],
    )
    .unwrap_or(0.0);
    assert!(recorded >= 1.0, "record processed nothing");
    assert!(value(&after, "tracely_samples_archived_total", &[]).unwrap_or(0.0) >= pending);

    // Durations are histograms, not summaries, so they aggregate across processes.
    for name in [
        "tracely_http_request_duration_seconds",
        "tracely_consumer_batch_duration_seconds",
        "tracely_detection_latency_seconds",
    ] {
        let f = family(&after, name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(f["type"], "histogram", "{name}");
    }
    for (name, kind) in [
        ("tracely_consumer_pending_messages", "gauge"),
        ("tracely_consumer_ack_pending_messages", "gauge"),
        ("tracely_consumer_messages_processed", "counter"),
        ("tracely_http_requests", "counter"),
    ] {
        let f = family(&after, name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(f["type"], kind, "{name}");
    }

    // HTTP metrics carry the matched route, never the raw path.
    let routes: Vec<String> = family(&after, "tracely_http_requests").unwrap()["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["labels"]["route"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        routes.iter().any(|r| r == "/api/services/{id}"),
        "{routes:?}"
    );
    assert!(routes.iter().any(|r| r == "/metrics"), "{routes:?}");
    assert!(!routes.iter().any(|r| r.contains("S1")), "{routes:?}");

    workers.stop().await;
    api.stop().await;
}
