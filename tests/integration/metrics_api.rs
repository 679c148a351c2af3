//! The archive consumer and the metrics and services API over it: raw samples and minute
//! rollups are stored exactly once whatever is redelivered, the list filters and pages them,
//! charts come from the rollups and agree with the raw samples, and services show how each of
//! their metrics is doing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{drained, publish, sample, App, KeyRole, Stack};
use chrono::{DateTime, Utc};
use schemas::MetricSample;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn with_id(mut s: MetricSample, id: &str) -> MetricSample {
    s.id = Some(id.to_owned());
    s
}

/// S1 latency: three samples in 09:00 (10, 30, 20 last by time), one in 09:01 (40); S1 error
/// rate once; S2 latency once.
fn fixture() -> Vec<MetricSample> {
    let mut labelled = sample("S1", "ERROR_RATE", 1.5, "2026-03-12T09:00:00Z");
    labelled.labels.insert("region".into(), "eu".into());
    vec![
        with_id(
            sample("S1", "LATENCY_MS", 10.0, "2026-03-12T09:00:10Z"),
            "a",
        ),
        // Published before the 09:00:20 sample but later in event time: it is the minute's last.
        with_id(
            sample("S1", "LATENCY_MS", 20.0, "2026-03-12T09:00:50Z"),
            "b",
        ),
        with_id(
            sample("S1", "LATENCY_MS", 30.0, "2026-03-12T09:00:20Z"),
            "c",
        ),
        with_id(
            sample("S1", "LATENCY_MS", 40.0, "2026-03-12T09:01:05Z"),
            "d",
        ),
        with_id(labelled, "e"),
        with_id(sample("S2", "LATENCY_MS", 5.0, "2026-03-12T09:02:00Z"), "f"),
    ]
}

async fn rollups(app: &App) -> Vec<(String, String, String, i64, f64, f64, f64, f64)> {
    sqlx::query_as::<_, (String, String, DateTime<Utc>, i64, f64, f64, f64, f64)>(
        "SELECT service_id, metric_type, minute, count, sum, min, max, last
         FROM metric_rollups ORDER BY 1, 2, 3",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(s, m, minute, c, sum, min, max, last)| {
        (s, m, minute.to_rfc3339(), c, sum, min, max, last)
    })
    .collect()
}

async fn sample_count(app: &App) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM metric_samples")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn get_ok(app: &App, path: &str) -> Value {
    let (status, body) = app.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn field<'a>(body: &'a Value, name: &str) -> Vec<&'a Value> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| &row[name])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_stores_each_sample_once_and_the_api_serves_it() {
    let stack = Stack::start().await;
    let js = stack.js().await;
    let app = App::start(&stack).await;
    publish(&js, &fixture()).await;
    // The same ids again: the stream drops them as duplicates.
    publish(&js, &fixture()).await;
    drained(&js, WAIT).await;

    let expected_rollups = vec![
        (
            "S1".into(),
            "ERROR_RATE".into(),
            "2026-03-12T09:00:00+00:00".into(),
            1,
            1.5,
            1.5,
            1.5,
            1.5,
        ),
        (
            "S1".into(),
            "LATENCY_MS".into(),
            "2026-03-12T09:00:00+00:00".into(),
            3,
            60.0,
            10.0,
            30.0,
            20.0,
        ),
        (
            "S1".into(),
            "LATENCY_MS".into(),
            "2026-03-12T09:01:00+00:00".into(),
            1,
            40.0,
            40.0,
            40.0,
            40.0,
        ),
        (
            "S2".into(),
            "LATENCY_MS".into(),
            "2026-03-12T09:02:00+00:00".into(),
            1,
            5.0,
            5.0,
            5.0,
            5.0,
        ),
    ];
    assert_eq!(sample_count(&app).await, 6);
    assert_eq!(rollups(&app).await, expected_rollups);

    // Redeliver everything: re-create the archive consumer at the start of the stream and
    // restart. Every sample comes back; nothing may be stored or counted twice.
    app.stop().await;
    let metrics = js.get_stream("METRICS").await.unwrap();
    metrics.delete_consumer("archive").await.unwrap();
    let app = App::start(&stack).await;
    crate::support::eventually("the archive to re-read the stream", WAIT, || async {
        let info = metrics.consumer_info("archive").await.ok()?;
        (info.delivered.stream_sequence == 6 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    drained(&js, WAIT).await;
    assert_eq!(sample_count(&app).await, 6);
    assert_eq!(rollups(&app).await, expected_rollups);

    // Raw rows, newest first by default, with every documented field.
    let all = get_ok(&app, "/api/metrics").await;
    assert_eq!(all["meta"], json!({"total": 6, "limit": 50, "offset": 0}));
    let first = &all["data"][0];
    assert_eq!(
        first,
        &json!({"stream_seq": 6, "service_id": "S2", "metric_type": "LATENCY_MS", "labels": {},
                "value": 5.0, "recorded_at": "2026-03-12T09:02:00Z", "id": "f"})
    );
    let labelled = get_ok(&app, "/api/metrics?metric_type=ERROR_RATE").await;
    assert_eq!(labelled["data"][0]["labels"], json!({"region": "eu"}));
    assert_eq!(labelled["meta"]["total"], 1);

    // Each filter.
    let s1 = get_ok(&app, "/api/metrics?service_id=S1").await;
    assert_eq!(s1["meta"]["total"], 5);
    let latency = get_ok(&app, "/api/metrics?metric_type=LATENCY_MS").await;
    assert_eq!(latency["meta"]["total"], 5);
    let window = get_ok(
        &app,
        "/api/metrics?service_id=S1&metric_type=LATENCY_MS&from=2026-03-12T09:00:20Z&to=2026-03-12T09:01:05Z",
    )
    .await;
    assert_eq!(field(&window, "value"), [&json!(20.0), &json!(30.0)]);

    // Sorting and paging edges.
    let by_value = get_ok(
        &app,
        "/api/metrics?sort_by=value&sort_dir=asc&limit=2&offset=1",
    )
    .await;
    assert_eq!(field(&by_value, "value"), [&json!(5.0), &json!(10.0)]);
    assert_eq!(
        by_value["meta"],
        json!({"total": 6, "limit": 2, "offset": 1})
    );
    let last_page = get_ok(&app, "/api/metrics?limit=4&offset=4").await;
    assert_eq!(last_page["data"].as_array().unwrap().len(), 2);
    let past_end = get_ok(&app, "/api/metrics?offset=6").await;
    assert_eq!(past_end["data"], json!([]));
    assert_eq!(past_end["meta"]["total"], 6);
    let oldest = get_ok(&app, "/api/metrics?sort_dir=asc&limit=1").await;
    assert_eq!(oldest["data"][0]["recorded_at"], "2026-03-12T09:00:00Z");

    // Minute rollups.
    let minutes = get_ok(
        &app,
        "/api/metrics?resolution=1m&service_id=S1&metric_type=LATENCY_MS",
    )
    .await;
    assert_eq!(
        minutes["data"],
        json!([
            {"service_id": "S1", "metric_type": "LATENCY_MS", "minute": "2026-03-12T09:01:00Z",
             "count": 1, "avg": 40.0, "min": 40.0, "max": 40.0, "last": 40.0},
            {"service_id": "S1", "metric_type": "LATENCY_MS", "minute": "2026-03-12T09:00:00Z",
             "count": 3, "avg": 20.0, "min": 10.0, "max": 30.0, "last": 20.0},
        ])
    );
    let all_minutes = get_ok(
        &app,
        "/api/metrics?resolution=1m&sort_by=count&sort_dir=desc&limit=1",
    )
    .await;
    assert_eq!(all_minutes["meta"]["total"], 4);
    assert_eq!(all_minutes["data"][0]["count"], 3);
    let from_0901 = get_ok(&app, "/api/metrics?resolution=1m&from=2026-03-12T09:01:00Z").await;
    assert_eq!(from_0901["meta"]["total"], 2);

    // Charts, from the rollups.
    let chart = |bucket: &str| {
        format!("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-03-12T09:00:00Z&to=2026-03-12T10:00:00Z&bucket={bucket}")
    };
    let per_minute = get_ok(&app, &chart("1m")).await;
    assert_eq!(
        per_minute["data"],
        json!([
            {"bucket_start": "2026-03-12T09:00:00Z", "count": 3, "avg": 20.0, "min": 10.0, "max": 30.0, "last": 20.0},
            {"bucket_start": "2026-03-12T09:01:00Z", "count": 1, "avg": 40.0, "min": 40.0, "max": 40.0, "last": 40.0},
        ])
    );
    let whole = json!([{"bucket_start": "2026-03-12T09:00:00Z", "count": 4, "avg": 25.0, "min": 10.0, "max": 40.0, "last": 40.0}]);
    assert_eq!(get_ok(&app, &chart("5m")).await["data"], whole);
    assert_eq!(get_ok(&app, &chart("1h")).await["data"], whole);
    let default_bucket = get_ok(&app, "/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-03-12T09:00:00Z&to=2026-03-12T09:01:00Z").await;
    assert_eq!(default_bucket["data"].as_array().unwrap().len(), 1);

    // Bad requests name the parameter.
    for (path, field) in [
        ("/api/metrics/chart?metric_type=LATENCY_MS&from=2026-03-12T09:00:00Z&to=2026-03-12T10:00:00Z", "service_id"),
        ("/api/metrics/chart?service_id=S1&from=2026-03-12T09:00:00Z&to=2026-03-12T10:00:00Z", "metric_type"),
        ("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&to=2026-03-12T10:00:00Z", "from"),
        ("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-03-12T09:00:00Z", "to"),
        ("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-03-12T09:00:00Z&to=2026-03-12T10:00:00Z&bucket=2m", "bucket"),
        ("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-03-12T10:00:00Z&to=2026-03-12T10:00:00Z", "to"),
        ("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-03-12T11:00:00Z&to=2026-03-12T10:00:00Z", "to"),
        ("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-01-01T00:00:00Z&to=2026-03-12T10:00:00Z", "bucket"),
        ("/api/metrics/chart?service_id=S1&metric_type=latency&from=2026-03-12T09:00:00Z&to=2026-03-12T10:00:00Z", "metric_type"),
        ("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=yesterday&to=2026-03-12T10:00:00Z", "from"),
        ("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-03-12T09:00:00Z&to=2026-03-12T10:00:00Z&limit=5", "limit"),
        ("/api/metrics?resolution=5m", "resolution"),
        ("/api/metrics?resolution=1m&sort_by=value", "sort_by"),
        ("/api/metrics?sort_by=minute", "sort_by"),
        ("/api/metrics?limit=0", "limit"),
        ("/api/metrics?limit=1001", "limit"),
        ("/api/metrics?offset=-1", "offset"),
        ("/api/metrics?from=2026-03-12T10:00:00Z&to=2026-03-12T09:00:00Z", "to"),
        ("/api/metrics?service=S1", "service"),
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["details"][0]["field"], field, "{path}: {body}");
    }
    // Pruning keeps what the stream still holds, whatever its age, so that a redelivery can
    // never count a sample twice; it removes old samples the stream has dropped.
    let long_ago = chrono::Utc::now();
    assert_eq!(
        store::samples::prune(&app.pool, long_ago, 1, 100)
            .await
            .unwrap(),
        0
    );
    let pruned = store::samples::prune(&app.pool, long_ago, 4, 100)
        .await
        .unwrap();
    assert_eq!(pruned, 3);
    // Of seqs 4 (09:01:05), 5 (09:00:00) and 6 (09:02:00), only 4 is both old and dropped.
    let recent = "2026-03-12T09:01:30Z".parse().unwrap();
    assert_eq!(
        store::samples::prune(&app.pool, recent, 5, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(sample_count(&app).await, 2);
    assert_eq!(rollups(&app).await, expected_rollups, "rollups are kept");

    // Exactly 10,000 one-minute buckets is allowed.
    let (status, body) = app
        .get("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-03-05T11:20:00Z&to=2026-03-12T10:00:00Z")
        .await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

/// A small deterministic generator, so the test needs no extra crates.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[derive(Debug, PartialEq)]
struct Bucket {
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_key: (DateTime<Utc>, usize),
}

/// Per bucket start, the aggregates of `samples` computed directly, in publish (stream) order.
fn expected(samples: &[MetricSample], bucket_secs: i64) -> BTreeMap<DateTime<Utc>, Bucket> {
    let mut out: BTreeMap<DateTime<Utc>, Bucket> = BTreeMap::new();
    for (seq, s) in samples.iter().enumerate() {
        let secs = s.recorded_at.timestamp().div_euclid(bucket_secs) * bucket_secs;
        let start = DateTime::from_timestamp(secs, 0).unwrap();
        let key = (s.recorded_at, seq);
        let b = out.entry(start).or_insert(Bucket {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: s.value,
            last_key: key,
        });
        b.count += 1;
        b.sum += s.value;
        b.min = b.min.min(s.value);
        b.max = b.max.max(s.value);
        if key >= b.last_key {
            b.last = s.value;
            b.last_key = key;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_agree_with_the_raw_samples() {
    let stack = Stack::start().await;
    let js = stack.js().await;
    let app = App::start(&stack).await;
    let start: DateTime<Utc> = "2026-03-12T08:00:00Z".parse().unwrap();
    let mut rng = Lcg(7);
    // Three hours, out of order, with repeated event times; integer values keep sums exact.
    let samples: Vec<MetricSample> = (0..600)
        .map(|i| {
            let at = start + chrono::Duration::seconds(rng.next(3 * 3600) as i64 / 7 * 7);
            let mut s = sample(
                "S1",
                "LATENCY_MS",
                rng.next(500) as f64 - 100.0,
                "2026-03-12T00:00:00Z",
            );
            s.recorded_at = at;
            // Distinct ids: samples of one series at the same millisecond are all kept.
            with_id(s, &format!("chart-{i}"))
        })
        .collect();
    // Another series in the same minutes must not leak into the chart.
    let noise: Vec<MetricSample> = samples
        .iter()
        .take(50)
        .enumerate()
        .map(|(i, s)| {
            let noise = sample("S2", "LATENCY_MS", 1e6, &s.recorded_at.to_rfc3339());
            with_id(noise, &format!("noise-{i}"))
        })
        .collect();
    publish(&js, &samples).await;
    publish(&js, &noise).await;
    drained(&js, WAIT).await;

    for (bucket, secs) in [("1m", 60), ("5m", 300), ("1h", 3600)] {
        let body = get_ok(
            &app,
            &format!("/api/metrics/chart?service_id=S1&metric_type=LATENCY_MS&from=2026-03-12T08:00:00Z&to=2026-03-12T11:00:00Z&bucket={bucket}"),
        )
        .await;
        let want: Vec<Value> = expected(&samples, secs)
            .into_iter()
            .map(|(start, b)| {
                json!({
                    "bucket_start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "count": b.count,
                    "avg": b.sum / b.count as f64,
                    "min": b.min,
                    "max": b.max,
                    "last": b.last,
                })
            })
            .collect();
        assert_eq!(body["data"], Value::Array(want), "bucket {bucket}");
    }
    // And the raw rows are the samples themselves.
    let raw = get_ok(&app, "/api/metrics?service_id=S1&limit=1000&sort_dir=asc").await;
    assert_eq!(raw["meta"]["total"], 600);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_show_their_metrics_and_admins_can_patch_them() {
    let stack = Stack::start().await;
    let js = stack.js().await;
    let app = App::start(&stack).await;
    app.rule(
        json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 35, "severity": "HIGH"}),
    )
    .await;
    app.rule(
        json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 25, "severity": "LOW"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish(&js, &fixture()).await;
    drained(&js, WAIT).await;

    let detail = get_ok(&app, "/api/services/S1").await;
    assert_eq!(detail["data"]["id"], "S1");
    assert_eq!(
        detail["data"]["metrics"],
        json!([
            {"metric_type": "ERROR_RATE", "status": "ok", "severity": null, "open_incidents": 0,
             "last_value": 1.5, "last_at": "2026-03-12T09:00:00Z"},
            {"metric_type": "LATENCY_MS", "status": "violating", "severity": "HIGH",
             "open_incidents": 2, "last_value": 40.0, "last_at": "2026-03-12T09:01:05Z"},
        ])
    );
    let s2 = get_ok(&app, "/api/services/S2").await;
    assert_eq!(s2["data"]["metrics"][0]["status"], "ok");
    assert_eq!(s2["data"]["metrics"][0]["last_value"], 5.0);

    let (status, body) = app.get("/api/services/not%20valid").await;
    assert_eq!(
        (status, body["error"]["details"][0]["field"].clone()),
        (400, json!("id")),
        "{body}"
    );
    let (status, _) = app.get("/api/services/NOPE").await;
    assert_eq!(status, 404);

    // Patching needs an admin.
    let viewer = app.client(KeyRole::Viewer).await;
    let response = viewer
        .patch(app.url("/api/services/S1"))
        .json(&json!({"display_name": "Checkout"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let response = viewer
        .get(app.url("/api/services/S1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    let (status, body) = app
        .patch("/api/services/S1", &json!({"display_name": "Checkout"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["display_name"], "Checkout");
    assert_eq!(body["data"]["department_id"], Value::Null);

    let department = uuid::Uuid::new_v4();
    let (status, body) = app
        .patch("/api/services/S1", &json!({"department_id": department}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "department_id");
    sqlx::query("INSERT INTO departments (id, name) VALUES ($1, 'Payments')")
        .bind(department)
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = app
        .patch("/api/services/S1", &json!({"department_id": department}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["department_id"], department.to_string());
    assert_eq!(
        body["data"]["display_name"], "Checkout",
        "absent fields stay"
    );

    let owned = get_ok(&app, &format!("/api/services?department_id={department}")).await;
    assert_eq!(field(&owned, "id"), [&json!("S1")]);
    let by_name = get_ok(&app, "/api/services?sort_by=display_name&sort_dir=asc").await;
    assert_eq!(field(&by_name, "id"), [&json!("S1"), &json!("S2")]);
    let by_id_desc = get_ok(&app, "/api/services?sort_by=id&sort_dir=desc").await;
    assert_eq!(field(&by_id_desc, "id"), [&json!("S2"), &json!("S1")]);
    let by_first_seen = get_ok(&app, "/api/services?sort_by=first_seen_at").await;
    assert_eq!(by_first_seen["meta"]["total"], 2);
    let (status, _) = app.get("/api/services?sort_by=name").await;
    assert_eq!(status, 400);

    let (status, body) = app
        .patch("/api/services/S1", &json!({"display_name": null}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["display_name"], Value::Null);
    assert_eq!(body["data"]["department_id"], department.to_string());

    for (patch, field) in [
        (json!({"bogus": 1}), "bogus"),
        (json!({"display_name": ""}), "display_name"),
        (json!({"display_name": "   "}), "display_name"),
        (json!({"display_name": "x".repeat(201)}), "display_name"),
        (json!({"display_name": 7}), "display_name"),
        (json!({"department_id": "not-a-uuid"}), "department_id"),
    ] {
        let (status, body) = app.patch("/api/services/S1", &patch).await;
        assert_eq!(status, 422, "{patch}: {body}");
        let named = body["error"]["details"][0]["field"]
            .as_str()
            .unwrap_or_default();
        assert!(named.contains(field), "{patch}: {body}");
    }
    let (status, body) = app
        .patch(
            "/api/services/S1",
            &json!({"display_name": "é".repeat(200)}),
        )
        .await;
    assert_eq!(status, 200, "200 characters are allowed: {body}");
    let (status, _) = app
        .patch("/api/services/NOPE", &json!({"display_name": "x"}))
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_refuses_a_recreated_metrics_stream() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let js = stack.js().await;
    publish(
        &js,
        &[
            sample("S1", "LATENCY_MS", 1.0, "2026-03-12T09:00:00Z"),
            sample("S1", "LATENCY_MS", 2.0, "2026-03-12T09:00:01Z"),
        ],
    )
    .await;
    drained(&js, Duration::from_secs(20)).await;
    app.stop().await;

    // The stream is deleted and made again: its sequences restart at 1.
    js.delete_stream("METRICS").await.unwrap();
    let app = tracely::startup::Application::build(stack.settings(&tracely::config::Role::ALL))
        .await
        .expect("start-up recreates the stream");
    let stopped = tokio::time::timeout(
        Duration::from_secs(20),
        app.run_until_stopped(tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the archive refuses at once");
    let error = format!("{:#}", stopped.unwrap_err());
    assert!(error.contains("METRICS was created again"), "{error}");
}
