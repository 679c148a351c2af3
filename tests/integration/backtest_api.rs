//! Backtests: `POST /api/rules/{id}/backtest` and `POST /api/rules/backtest` run a rule over
//! samples already in METRICS and answer the incidents it would have opened, with chart series,
//! without writing anything.

use crate::support::{incidents_stream_last, publish, App, KeyRole, Stack};
use chrono::{DateTime, Duration, DurationRound, Utc};
use schemas::MetricSample;
use serde_json::{json, Value};

/// Two hours ago, to the hour: the samples fall inside the default range (the last 24 h).
fn start() -> DateTime<Utc> {
    (Utc::now() - Duration::hours(2))
        .duration_trunc(Duration::hours(1))
        .unwrap()
}

fn at(t0: DateTime<Utc>, minutes: i64, seconds: i64) -> DateTime<Utc> {
    t0 + Duration::minutes(minutes) + Duration::seconds(seconds)
}

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An hour of LATENCY_MS every 10 s for S1 and S2. S1 goes above 150 twice: from minute 10 to
/// 15 (200 to 220, peaking at 300 at minute 12) and from minute 30 to 33 (180, peaking at 220
/// at minute 31). S2 stays at 100.
fn samples(t0: DateTime<Utc>) -> Vec<MetricSample> {
    let mut out = Vec::new();
    for i in 0..360 {
        let t = t0 + Duration::seconds(i * 10);
        let minute = i / 6;
        let s1 = match minute {
            12 if i % 6 == 0 => 300.0,
            10..=14 => 200.0 + (i % 3) as f64 * 10.0,
            31 if i % 6 == 0 => 220.0,
            30..=32 => 180.0,
            _ => 100.0,
        };
        for (service, value) in [("S1", s1), ("S2", 100.0)] {
            out.push(MetricSample {
                service_id: service.into(),
                metric_type: "LATENCY_MS".into(),
                value,
                recorded_at: t,
                id: Some(format!("{service}-{i}")),
                labels: Default::default(),
            });
        }
    }
    out
}

fn rule_body(threshold: f64) -> Value {
    json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": threshold,
           "severity": "HIGH", "enabled": false})
}

/// (service, opened_at, resolved_at, peak, violation_count) of each incident.
fn summary(answer: &Value) -> Vec<(String, String, Option<String>, f64, u64)> {
    answer["data"]["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let time = |v: &Value| {
                v.as_str()
                    .map(|t| text(t.parse::<DateTime<Utc>>().unwrap()))
            };
            (
                i["service_id"].as_str().unwrap().to_owned(),
                time(&i["opened_at"]).unwrap(),
                time(&i["resolved_at"]),
                i["peak_value"].as_f64().unwrap(),
                i["violation_count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtests_find_the_episodes_chart_the_peak_and_write_nothing() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let t0 = start();
    publish(&stack.js().await, &samples(t0)).await;
    let rule = app.rule(rule_body(150.0)).await;
    let range = json!({"from": text(t0), "to": text(at(t0, 60, 0))});
    let seq_before = incidents_stream_last(&stack.js().await).await;

    // The saved rule, though disabled.
    let (status, saved) = app
        .post(&format!("/api/rules/{rule}/backtest"), &range)
        .await;
    assert_eq!(status, 200, "{saved}");
    let expected = vec![
        (
            "S1".to_owned(),
            text(at(t0, 10, 0)),
            Some(text(at(t0, 15, 0))),
            300.0,
            30,
        ),
        (
            "S1".to_owned(),
            text(at(t0, 30, 0)),
            Some(text(at(t0, 33, 0))),
            220.0,
            18,
        ),
    ];
    assert_eq!(summary(&saved), expected, "{saved}");
    let data = &saved["data"];
    assert_eq!(data["rule"]["id"], rule.as_str());
    assert_eq!(data["rule"]["draft"], false);
    assert_eq!(data["rule"]["enabled"], false);
    assert_eq!(
        data["from"]
            .as_str()
            .map(|t| t.parse::<DateTime<Utc>>().unwrap()),
        Some(t0)
    );
    let first = &data["incidents"][0];
    assert_eq!(first["series_key"], "S1:LATENCY_MS");
    assert_eq!(first["severity"], "HIGH");
    assert_eq!(first["value"], 200.0);
    assert!(first["id"].as_str().is_some());
    assert!(first["message"].as_str().is_some_and(|m| !m.is_empty()));

    // The chart: S1 (with incidents) first, the peak kept, points in order and in range.
    let series = data["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{series:?}");
    assert_eq!(series[0]["series_key"], "S1:LATENCY_MS");
    assert_eq!(series[1]["series_key"], "S2:LATENCY_MS");
    let points: Vec<(i64, f64)> = series[0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert!(
        points.contains(&(at(t0, 12, 0).timestamp_millis(), 300.0)),
        "the peak is charted: {points:?}"
    );
    assert!(points.contains(&(at(t0, 31, 0).timestamp_millis(), 220.0)));
    assert!(points.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(points.len() <= 600);
    let stats = &data["stats"];
    assert_eq!(stats["samples"], 720, "{stats}");
    assert_eq!(stats["series_total"], 2);
    assert_eq!(stats["series_shown"], 2);
    assert_eq!(stats["truncated"], false);
    assert!(stats["first_seq"].as_u64().unwrap() >= 1);
    assert_eq!(stats["end_seq"], 720);
    assert_eq!(data["warnings"], json!([]));

    // The same rule, never saved: the same episodes, under other (illustrative) ids.
    let (status, draft) = app
        .post(
            "/api/rules/backtest",
            &json!({"from": text(t0), "to": text(at(t0, 60, 0)), "rule": rule_body(150.0)}),
        )
        .await;
    assert_eq!(status, 200, "{draft}");
    assert_eq!(summary(&draft), expected);
    assert_eq!(draft["data"]["rule"]["draft"], true);
    assert_ne!(draft["data"]["rule"]["id"], rule.as_str());
    assert_ne!(
        draft["data"]["incidents"][0]["id"],
        saved["data"]["incidents"][0]["id"]
    );

    // The default range (the last 24 h, to now) holds the same samples.
    let (status, default_range) = app
        .post("/api/rules/backtest", &json!({"rule": rule_body(150.0)}))
        .await;
    assert_eq!(status, 200, "{default_range}");
    assert_eq!(summary(&default_range), expected);
    let (from, to) = (
        default_range["data"]["from"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        default_range["data"]["to"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
    );
    assert_eq!(to - from, Duration::hours(24));
    assert!((Utc::now() - to).num_seconds().abs() < 60);

    // An edit, tried before saving: a higher threshold finds only the top of the first episode.
    let edited = json!({"from": text(t0), "to": text(at(t0, 60, 0)), "rule": rule_body(250.0)});
    let (status, higher) = app
        .post(&format!("/api/rules/{rule}/backtest"), &edited)
        .await;
    assert_eq!(status, 200, "{higher}");
    assert_eq!(
        summary(&higher),
        vec![(
            "S1".to_owned(),
            text(at(t0, 12, 0)),
            Some(text(at(t0, 12, 10))),
            300.0,
            1
        )]
    );
    assert_eq!(higher["data"]["rule"]["id"], rule.as_str());
    assert_eq!(higher["data"]["rule"]["draft"], true);
    assert_eq!(higher["data"]["rule"]["threshold"], 250.0);
    // The saved rule is unchanged.
    let (_, stored) = app.get(&format!("/api/rules/{rule}")).await;
    assert_eq!(stored["data"]["threshold"], 150.0);

    // Part of the range only: the second episode alone.
    let (status, later) = app
        .post(
            &format!("/api/rules/{rule}/backtest"),
            &json!({"from": text(at(t0, 20, 0)), "to": text(at(t0, 60, 0))}),
        )
        .await;
    assert_eq!(status, 200, "{later}");
    assert_eq!(summary(&later), expected[1..].to_vec());

    // Nothing was written anywhere.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM incidents")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    assert_eq!(incidents_stream_last(&stack.js().await).await, seq_before);
    let (_, rules) = app.get("/api/rules").await;
    assert_eq!(rules["meta"]["total"], 1, "a draft is never saved");

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtests_refuse_bad_ranges_rules_and_roles_and_warn_of_lost_history() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let t0 = start();
    publish(&stack.js().await, &samples(t0)).await;
    let rule = app.rule(rule_body(150.0)).await;
    let path = format!("/api/rules/{rule}/backtest");

    // `from` before the oldest sample still held: answered, with a warning.
    let (status, early) = app
        .post(
            &path,
            &json!({"from": text(t0 - Duration::hours(1)), "to": text(at(t0, 60, 0))}),
        )
        .await;
    assert_eq!(status, 200, "{early}");
    assert_eq!(early["data"]["incidents"].as_array().unwrap().len(), 2);
    let warnings = early["data"]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("before the oldest sample"),
        "{warnings:?}"
    );

    // `from` after `to`.
    let (status, inverted) = app
        .post(
            &path,
            &json!({"from": text(at(t0, 30, 0)), "to": text(at(t0, 10, 0))}),
        )
        .await;
    assert_eq!(status, 422, "{inverted}");
    assert_eq!(inverted["error"]["code"], "validation_failed");
    let message = inverted["error"]["message"].as_str().unwrap();
    assert!(message.contains("must be before"), "{message}");
    assert_eq!(inverted["error"]["details"][0]["field"], "from");

    // In the future.
    let (status, future) = app
        .post(
            &path,
            &json!({"from": text(t0), "to": text(Utc::now() + Duration::hours(2))}),
        )
        .await;
    assert_eq!(status, 422, "{future}");
    assert!(future["error"]["message"]
        .as_str()
        .unwrap()
        .contains("in the future"));

    // Ending before the oldest sample still held.
    let (status, gone) = app
        .post(
            &path,
            &json!({"from": text(t0 - Duration::hours(3)), "to": text(t0 - Duration::hours(2))}),
        )
        .await;
    assert_eq!(status, 422, "{gone}");
    assert_eq!(gone["error"]["details"][0]["field"], "to");

    // Times only: a stream sequence is for backfill jobs.
    let (status, sequence) = app.post(&path, &json!({"from": 1})).await;
    assert_eq!(status, 422, "{sequence}");
    assert_eq!(sequence["error"]["details"][0]["field"], "from");
    let (status, malformed) = app.post(&path, &json!({"from": "yesterday"})).await;
    assert_eq!(status, 422, "{malformed}");
    assert_eq!(malformed["error"]["details"][0]["field"], "from");

    // An unknown rule.
    let (status, missing) = app
        .post(
            &format!("/api/rules/{}/backtest", uuid::Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "not_found");

    // Invalid rule bodies name the field.
    let (status, no_threshold) = app
        .post(
            "/api/rules/backtest",
            &json!({"rule": {"metric_type": "LATENCY_MS", "operator": ">", "severity": "HIGH"}}),
        )
        .await;
    assert_eq!(status, 422, "{no_threshold}");
    assert_eq!(
        no_threshold["error"]["details"][0]["field"],
        "rule.threshold"
    );
    let (status, bad_metric) = app
        .post(
            &path,
            &json!({"rule": {"metric_type": "latency", "operator": ">", "threshold": 1,
                             "severity": "HIGH"}}),
        )
        .await;
    assert_eq!(status, 422, "{bad_metric}");
    assert_eq!(
        bad_metric["error"]["details"][0]["field"],
        "rule.metric_type"
    );
    let (status, bad_severity) = app
        .post(
            "/api/rules/backtest",
            &json!({"rule": {"metric_type": "LATENCY_MS", "operator": ">", "threshold": 1,
                             "severity": "URGENT"}}),
        )
        .await;
    assert_eq!(status, 422, "{bad_severity}");
    assert_eq!(
        bad_severity["error"]["details"][0]["field"],
        "rule.severity"
    );
    let (status, no_rule) = app.post("/api/rules/backtest", &json!({})).await;
    assert_eq!(status, 422, "{no_rule}");
    assert_eq!(no_rule["error"]["details"][0]["field"], "rule");

    // A viewer may not run backtests; an operator may.
    let viewer = app.client(KeyRole::Viewer).await;
    let response = viewer
        .post(app.url(&path))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let operator = app.client(KeyRole::Operator).await;
    let response = operator
        .post(app.url(&path))
        .json(&json!({"from": text(t0), "to": text(at(t0, 60, 0))}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    app.stop().await;
}
