//! Windowed rules over the API and through the whole pipeline.

use std::time::Duration;

use crate::support::{drained, publish, sample, App, Stack};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn rule(extra: Value) -> Value {
    let mut body = json!({
        "metric_type": "LATENCY_MS", "aggregation": "avg", "window": "1m",
        "operator": ">", "threshold": 100, "severity": "HIGH"
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_fields_are_validated_and_named() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;

    let (status, created) = app
        .post(
            "/api/rules",
            &rule(json!({"for": "2m", "clear_threshold": 80, "clear_for": "30s", "auto_resolve": true, "labels": {"region": "eu"}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let data = &created["data"];
    assert_eq!(data["window"], "1m");
    assert_eq!(data["for"], "2m");
    assert_eq!(data["clear_for"], "30s");
    assert_eq!(data["clear_threshold"], 80.0);
    assert_eq!(data["auto_resolve"], true);
    assert_eq!(data["kind"], "threshold");
    assert_eq!(data["labels"], json!({"region": "eu"}));
    assert_eq!(data["name"], "avg(LATENCY_MS over 1m) > 100");

    let (status, absent) = app
        .post("/api/rules", &json!({"kind": "absent", "metric_type": "LATENCY_MS", "window": "3m", "severity": "LOW"}))
        .await;
    assert_eq!(status, 201, "{absent}");
    assert_eq!(absent["data"]["name"], "no LATENCY_MS for 3m");

    for (body, field) in [
        (rule(json!({"window": "5 minutes"})), "window"),
        (rule(json!({"window": "8d"})), "window"),
        (rule(json!({"for": "-1m"})), "for"),
        (rule(json!({"clear_for": 30})), "clear_for"),
        (rule(json!({"aggregation": "median"})), "aggregation"),
        (rule(json!({"clear_threshold": 120})), "clear_threshold"),
        (
            rule(json!({"operator": "<", "clear_threshold": 80})),
            "clear_threshold",
        ),
        (
            rule(json!({"operator": "==", "clear_threshold": 80})),
            "clear_threshold",
        ),
        (rule(json!({"window": "0"})), "window"),
        (rule(json!({"kind": "sometimes"})), "kind"),
        (rule(json!({"labels": {"9lives": "x"}})), "labels"),
        (
            json!({"metric_type": "LATENCY_MS", "threshold": 1, "severity": "LOW"}),
            "operator",
        ),
        (
            json!({"metric_type": "LATENCY_MS", "operator": ">", "severity": "LOW"}),
            "threshold",
        ),
        (
            json!({"kind": "absent", "metric_type": "LATENCY_MS", "severity": "LOW"}),
            "window",
        ),
        (
            json!({"kind": "absent", "metric_type": "LATENCY_MS", "window": "3m", "for": "1m", "severity": "LOW"}),
            "for",
        ),
        (
            json!({"kind": "absent", "metric_type": "LATENCY_MS", "window": "3m", "aggregation": "avg", "severity": "LOW"}),
            "aggregation",
        ),
        (
            json!({"kind": "absent", "metric_type": "LATENCY_MS", "window": "3m", "clear_threshold": 1, "severity": "LOW"}),
            "clear_threshold",
        ),
    ] {
        let (status, error) = app.post("/api/rules", &body).await;
        assert_eq!(status, 422, "{body} → {error}");
        assert_eq!(error["error"]["code"], "validation_failed");
        assert_eq!(
            error["error"]["details"][0]["field"], field,
            "{body} → {error}"
        );
    }

    // The selector of an existing rule cannot change; the rest can.
    let id = data["id"].as_str().unwrap();
    let (status, _) = app
        .patch(&format!("/api/rules/{id}"), &json!({"labels": {}}))
        .await;
    assert_eq!(status, 422);
    let (status, patched) = app
        .patch(
            &format!("/api/rules/{id}"),
            &json!({"window": "5m", "aggregation": "p95"}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["window"], "5m");
    assert_eq!(patched["data"]["aggregation"], "p95");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_rule_fires_after_its_pending_period_and_auto_resolves() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.rule(rule(
        json!({"for": "30s", "clear_for": "20s", "auto_resolve": true}),
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Every 10 s: normal, then high from 09:01:00 to 09:02:00, then normal again.
    let mut samples = Vec::new();
    for i in 0..30 {
        let value = if (6..=12).contains(&i) { 300.0 } else { 20.0 };
        let at = format!("2026-03-12T09:{:02}:{:02}Z", i / 6, (i % 6) * 10);
        samples.push(sample("S1", "LATENCY_MS", value, &at));
    }
    publish(&stack.js().await, &samples).await;
    drained(&stack.js().await, WAIT).await;

    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let incident = &incidents[0];
    // avg over 1 m first exceeds 100 at 09:01:10 (four 20s and two 300s: 113); it has held
    // for the 30 s pending period at 09:01:40, where the average is 253.3.
    assert_eq!(incident["opened_at"], "2026-03-12T09:01:40Z", "{incident}");
    // Still 113 at 09:02:40; under 100 from 09:02:50, and for 20 s at 09:03:10.
    assert_eq!(
        incident["last_violation_at"], "2026-03-12T09:02:40Z",
        "{incident}"
    );
    assert_eq!(
        incident["resolved_at"], "2026-03-12T09:03:10Z",
        "{incident}"
    );
    assert_eq!(incident["status"], "CLOSED");
    assert_eq!(incident["closed_at"], "2026-03-12T09:03:10Z");
    assert_eq!(incident["value"], 1520.0 / 6.0);
    assert!(incident["message"]
        .as_str()
        .unwrap()
        .starts_with("avg(LATENCY_MS over 1m)"));
    app.stop().await;
}
