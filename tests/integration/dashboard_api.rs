//! What the dashboard reads: `/api/stream` (server-sent events fed from NATS), `/api/overview`
//! and `/api/pipeline`, against real nats-server and Postgres.

use std::time::Duration;

use crate::support::{client_with_key, publish, sample, App, Stack};
use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(20);

/// An open event stream, read as the browser reads it.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(app: &App, query: &str) -> Events {
        let response = app
            .http
            .get(app.url(&format!("/api/stream{query}")))
            .send()
            .await
            .expect("opening the event stream");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        assert_eq!(response.headers()["cache-control"], "no-cache");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event as (name, data); `None` once the server ends the stream.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = value.to_owned();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                if name.is_empty() {
                    // A keep-alive comment.
                    continue;
                }
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Some((name, data));
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("no event for too long")
                .expect("reading the event stream")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads events until one named `name` matches, and returns its data; the others read on
    /// the way are returned too.
    async fn until(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<(String, Value)>) {
        let mut passed = Vec::new();
        let wait = async {
            loop {
                let (event, data) = self.next().await.expect("the stream ended");
                if event == name && matches(&data) {
                    return data;
                }
                passed.push((event, data));
            }
        };
        let found = tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no matching `{name}` event"));
        (found, passed)
    }
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

fn now() -> String {
    Utc::now().trunc_subsecs(3).to_rfc3339()
}

fn tile<'a>(overview: &'a Value, service: &str) -> &'a Value {
    overview["data"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == service)
        .unwrap_or_else(|| panic!("no tile for {service}: {overview}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_follows_incidents_notifications_rules_and_samples() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let js = stack.js().await;
    let (_, department) = app.post("/api/departments", &json!({"name": "Web"})).await;
    let department = department["data"]["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(
            &format!("/api/departments/{department}/channels"),
            &json!({"type": "in_app"}),
        )
        .await;
    assert_eq!(status, 201);
    let rule = app
        .rule(
            json!({"name": "web slow", "service_id": "web", "metric_type": "LATENCY_MS",
            "operator": ">", "threshold": 500, "severity": "HIGH", "department_id": department}),
        )
        .await;
    // Rule changes take up to a second to reach the evaluator.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut events = Events::open(&app, "?services=web").await;
    let (hello, _) = events.until("hello", |_| true).await;
    assert!(hello["at"].is_string());

    publish(
        &js,
        &[
            sample("db", "LATENCY_MS", 5.0, &now()),
            sample("web", "LATENCY_MS", 100.0, &now()),
        ],
    )
    .await;
    let (points, mut passed) = events.until("points", |_| true).await;
    for service in ["db", "web"] {
        let announced = |(name, data): &(String, Value)| name == "service" && data["id"] == service;
        if !passed.iter().any(announced) {
            let (registered, more) = events.until("service", |d| d["id"] == service).await;
            passed.extend(more);
            passed.push(("service".to_owned(), registered));
        }
    }
    let points = points["points"].as_array().unwrap();
    assert!(
        points
            .iter()
            .all(|p| p["service_id"] == "web" && p["metric_type"] == "LATENCY_MS"),
        "only the services asked for are streamed: {points:?}"
    );
    assert_eq!(points[0]["last"], 100.0);
    assert!(passed.iter().all(|(name, _)| name != "incident"));

    let overview = eventually_overview(&app, |o| {
        tile(o, "web")["metric_types"] == json!(["LATENCY_MS"])
    })
    .await;
    assert_eq!(tile(&overview, "web")["status"], "ok");
    assert_eq!(tile(&overview, "db")["status"], "ok");

    publish(&js, &[sample("web", "LATENCY_MS", 900.0, &now())]).await;
    let (opened, _) = events
        .until("incident", |d| {
            d["kind"] == "opened" && d["service_id"] == "web"
        })
        .await;
    let incident = opened["id"].as_str().unwrap().to_owned();
    // The announcement follows the commit: the row is there the moment it arrives.
    let row = store::incidents::get(&app.pool, incident.parse().unwrap())
        .await
        .unwrap()
        .expect("the announced incident is in Postgres");
    assert_eq!(row.rule_id.to_string(), rule);
    let (overview_status, overview) = app.get("/api/overview").await;
    assert_eq!(overview_status, 200);
    let web = tile(&overview, "web");
    assert_eq!(
        (
            &web["status"],
            &web["firing"],
            &web["open"],
            &web["worst_severity"]
        ),
        (&json!("violated"), &json!(1), &json!(1), &json!("HIGH"))
    );
    assert_eq!(tile(&overview, "db")["status"], "ok");
    assert_eq!(
        overview["data"]["services"][0]["id"], "web",
        "the troubled come first"
    );
    assert_eq!(
        overview["data"]["top_rules"],
        json!([{"rule_id": rule, "name": "web slow", "severity": "HIGH", "enabled": true, "count": 1}])
    );

    let (notification, _) = events
        .until("notification", |d| d["incident_id"] == incident.as_str())
        .await;
    assert_eq!(notification["department_id"], department.as_str());
    let (_, inbox) = app.get("/api/notifications").await;
    assert!(
        inbox["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == notification["id"]),
        "the notification is in the inbox when announced: {inbox}"
    );

    let (status, _) = app
        .patch(
            &format!("/api/incidents/{incident}"),
            &json!({"status": "IN_PROGRESS"}),
        )
        .await;
    assert_eq!(status, 200);
    events
        .until("incident", |d| {
            d["kind"] == "status_changed" && d["id"] == incident.as_str()
        })
        .await;
    let (_, comment) = app
        .post(
            &format!("/api/incidents/{incident}/comments"),
            &json!({"body": "looking"}),
        )
        .await;
    assert!(comment["data"]["id"].is_string(), "{comment}");
    events
        .until("incident", |d| {
            d["kind"] == "commented" && d["id"] == incident.as_str()
        })
        .await;

    let second = app
        .rule(
            json!({"service_id": "db", "metric_type": "LATENCY_MS", "operator": ">",
            "threshold": 50, "severity": "LOW"}),
        )
        .await;
    events
        .until("rules", |d| {
            d["id"] == second.as_str() && d["change"] == "created"
        })
        .await;
    let (status, _) = app
        .patch(&format!("/api/rules/{second}"), &json!({"enabled": false}))
        .await;
    assert_eq!(status, 200);
    events
        .until("rules", |d| {
            d["id"] == second.as_str() && d["change"] == "updated"
        })
        .await;

    let (health, _) = events.until("health", |_| true).await;
    let consumers: Vec<&str> = health["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in ["evaluate", "archive", "record", "notify"] {
        assert!(consumers.contains(&name), "{name} in {consumers:?}");
    }
    assert!(
        !consumers.contains(&"index"),
        "without Meilisearch nobody reads `index`: {consumers:?}"
    );
    assert!(health["detection_latency"]["count"].as_i64().unwrap() >= 1);
    let (status, pipeline) = app.get("/api/pipeline").await;
    assert_eq!(status, 200);
    assert_eq!(
        pipeline["data"]["consumers"].as_array().unwrap().len(),
        consumers.len()
    );

    let hour_ago = (Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    let (status, charts) = app
        .get(&format!(
            "/api/metrics/charts?service_ids=web,db,quiet&from={}&to={}",
            urlencode(&hour_ago),
            urlencode(&Utc::now().to_rfc3339())
        ))
        .await;
    assert_eq!(status, 200, "{charts}");
    let series: Vec<(&str, &str, f64)> = charts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let buckets = c["buckets"].as_array().unwrap();
            (
                c["service_id"].as_str().unwrap(),
                c["metric_type"].as_str().unwrap(),
                buckets
                    .iter()
                    .map(|b| b["max"].as_f64().unwrap())
                    .fold(0.0, f64::max),
            )
        })
        .collect();
    assert_eq!(
        series,
        [("db", "LATENCY_MS", 5.0), ("web", "LATENCY_MS", 900.0)],
        "by service, then metric; a service without data has no series"
    );

    let (_, overview) = app.get("/api/overview").await;
    assert_eq!(
        overview["data"]["incidents"],
        json!({"open": 0, "in_progress": 1, "closed": 0, "firing": 1})
    );
    assert_eq!(overview["data"]["services_total"], 2);

    // Stopping the server ends open streams instead of waiting on them.
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("an open event stream held up shutdown");
    let rest = tokio::time::timeout(PATIENCE, async {
        while let Some((name, _)) = events.next().await {
            assert_ne!(name, "incident");
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream ended with the server");
}

async fn eventually_overview(app: &App, ready: impl Fn(&Value) -> bool) -> Value {
    crate::support::eventually("the overview", PATIENCE, || async {
        let (status, overview) = app.get("/api/overview").await;
        assert_eq!(status, 200, "{overview}");
        let has_tiles = overview["data"]["services"].as_array()?.len() == 2;
        (has_tiles && ready(&overview)).then_some(overview)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_requests_get_clear_errors() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let (status, body) = app.get("/api/stream?services=ok,bad%20id").await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("services") && message.contains("bad id"),
        "{message}"
    );
    let many: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
    let (status, body) = app
        .get(&format!("/api/stream?services={}", many.join(",")))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("give 0 to 100"));
    let (status, body) = app.get("/api/stream?service=web").await;
    assert_eq!(status, 400, "an unknown parameter is named: {body}");
    let anonymous = client_with_key("trk_0000");
    let response = anonymous.get(app.url("/api/stream")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    for path in [
        "/api/overview?x=1",
        "/api/pipeline?x=1",
        "/api/me?x=1",
        "/api/metrics/charts?from=2026-01-01T00:00:00Z&to=2026-01-01T01:00:00Z",
        "/api/metrics/charts?service_ids=,&from=2026-01-01T00:00:00Z&to=2026-01-01T01:00:00Z",
        "/api/metrics/charts?service_ids=a&from=2026-01-02T00:00:00Z&to=2026-01-01T01:00:00Z",
        "/api/metrics/charts?service_ids=a&from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z",
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let many: Vec<String> = (0..51).map(|i| format!("s{i}")).collect();
    let (status, body) = app
        .get(&format!(
            "/api/metrics/charts?service_ids={}&from=2026-01-01T00:00:00Z&to=2026-01-01T01:00:00Z",
            many.join(",")
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1 to 50"));

    let (status, me) = app.get("/api/me").await;
    assert_eq!(status, 200);
    assert_eq!(
        (&me["data"]["role"], &me["data"]["name"]),
        (&json!("admin"), &json!("test-admin"))
    );
    let viewer = app.client(crate::support::KeyRole::Viewer).await;
    let (status, me) =
        crate::support::decode(viewer.get(app.url("/api/me")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(me["data"]["role"], "viewer");
    app.stop().await;
}
