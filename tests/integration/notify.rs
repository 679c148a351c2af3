//! Notification fan-out end to end, with real nats-server and Postgres and a local HTTP
//! receiver that records every request and answers as each test tells it to: succeed, fail
//! with a status, or hang.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{eventually, publish, sample, App, Stack};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tracely::config::Role;

const SECRET: &str = "a-secret-of-some-length";
const PATIENCE: Duration = Duration::from_secs(30);

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Never answers (until the test ends).
    Hang,
}

#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Inbox {
    received: HashMap<String, Vec<Received>>,
    /// Per path, the replies to give next; 200 once they run out.
    script: HashMap<String, VecDeque<Reply>>,
}

/// A local HTTP receiver; each path is a separate target.
#[derive(Clone)]
struct Receiver {
    addr: std::net::SocketAddr,
    inbox: Arc<Mutex<Inbox>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let app = Router::new()
            .route("/{path}", post(receive))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, inbox }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn script(&self, path: &str, replies: &[Reply]) {
        let mut inbox = self.inbox.lock().unwrap();
        inbox
            .script
            .entry(path.to_owned())
            .or_default()
            .extend(replies.iter().copied());
    }

    fn received(&self, path: &str) -> Vec<Received> {
        let inbox = self.inbox.lock().unwrap();
        inbox.received.get(path).cloned().unwrap_or_default()
    }

    /// Waits for at least `n` requests on `path`.
    async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        eventually(&format!("{n} request(s) on /{path}"), timeout, || async {
            let got = self.received(path);
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

async fn receive(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let reply = {
        let mut inbox = inbox.lock().unwrap();
        inbox
            .received
            .entry(path.clone())
            .or_default()
            .push(Received {
                headers,
                body,
                at: Instant::now(),
            });
        inbox.script.get_mut(&path).and_then(VecDeque::pop_front)
    };
    match reply {
        None => StatusCode::OK,
        Some(Reply::Status(code)) => StatusCode::from_u16(code).unwrap(),
        Some(Reply::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }
    }
}

/// Publishes one latency sample.
async fn latency(js: &async_nats::jetstream::Context, service: &str, value: f64, at: &str) {
    publish(js, &[sample(service, "LATENCY_MS", value, at)]).await;
}

/// Creates a department and returns its id.
async fn department(app: &App, name: &str) -> String {
    let (status, dept) = app.post("/api/departments", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{dept}");
    dept["data"]["id"].as_str().unwrap().to_owned()
}

/// A department with a webhook channel; returns (department id, channel id).
async fn department_with_webhook(
    app: &App,
    name: &str,
    url: &str,
    extra: Value,
) -> (String, String) {
    let (status, dept) = app.post("/api/departments", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{dept}");
    let dept = dept["data"]["id"].as_str().unwrap().to_owned();
    let mut body =
        json!({"type": "webhook", "name": format!("{name} hook"), "url": url, "secret": SECRET});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let (status, channel) = app
        .post(&format!("/api/departments/{dept}/channels"), &body)
        .await;
    assert_eq!(status, 201, "{channel}");
    (dept, channel["data"]["id"].as_str().unwrap().to_owned())
}

/// A seed-style latency rule (> 150, HIGH) owned by `department`.
async fn latency_rule(app: &App, department: &str, extra: Value) -> String {
    let mut body = json!({
        "metric_type": "LATENCY_MS", "operator": ">", "threshold": 150,
        "severity": "HIGH", "department_id": department,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let id = app.rule(body).await;
    // Rule changes reach the evaluator within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    id
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Waits until the notify and deliver consumers hold nothing.
async fn notifications_settled(stack: &Stack) {
    let js = stack.js().await;
    eventually("the notifier to settle", PATIENCE, || async {
        for (stream, consumer) in [("INCIDENTS", "notify"), ("DELIVERIES", "deliver")] {
            let info = js
                .get_stream(stream)
                .await
                .ok()?
                .consumer_info(consumer)
                .await
                .ok()?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

async fn timeline(app: &App, incident: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/incidents/{incident}/events?limit=200"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

async fn attempts(app: &App, delivery: &str) -> Vec<(i32, String, Option<i32>)> {
    sqlx::query_as(
        "SELECT attempt, outcome, status_code FROM delivery_attempts
         WHERE delivery_id = $1::uuid ORDER BY attempt",
    )
    .bind(delivery)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_opened_incident_reaches_its_receiver_exactly_once_signed() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    let (dept, _) = department_with_webhook(&app, "Network", &receiver.url("net"), json!({})).await;
    latency_rule(&app, &dept, json!({})).await;

    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;
    let got = receiver.wait_for("net", 1, PATIENCE).await;
    notifications_settled(&stack).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_later = receiver.received("net");
    assert_eq!(got_later.len(), 1, "exactly one request: {got_later:?}");

    let request = &got[0];
    let body = request.json();
    assert_eq!(body["version"], 1);
    assert_eq!(
        request.header("idempotency-key"),
        body["id"].as_str().unwrap()
    );
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("x-tracely-attempt"), "1");
    assert_eq!(
        request.header("x-tracely-signature"),
        signature(SECRET, &request.body),
        "the signature is HMAC-SHA256 of the exact body"
    );
    assert_ne!(
        request.header("x-tracely-signature"),
        signature("another-secret-entirely", &request.body)
    );
    assert_eq!(body["department"]["name"], "Network");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kind"], "opened");
    assert_eq!(events[0]["incident"]["service_id"], "paycell");
    assert_eq!(events[0]["incident"]["value"], 420.0);
    assert_eq!(events[0]["incident"]["status"], "OPEN");

    // The delivery is on the incident's timeline.
    let incident = events[0]["incident"]["id"].as_str().unwrap();
    let notified: Vec<Value> = timeline(&app, incident)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "NOTIFIED")
        .collect();
    assert_eq!(notified.len(), 1, "{notified:?}");
    assert_eq!(
        notified[0]["data"]["summary"],
        "notified Network via webhook"
    );
    assert_eq!(notified[0]["data"]["status_code"], 200);
    assert_eq!(notified[0]["actor"], "notifier");
    app.stop().await;
}

#[tokio::test]
async fn the_signature_verifies_with_the_documented_python_and_shell() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    let (dept, _) =
        department_with_webhook(&app, "Payments", &receiver.url("pay"), json!({})).await;
    latency_rule(&app, &dept, json!({})).await;
    let js = stack.js().await;
    latency(&js, "ledger", 300.0, "2026-11-23T10:00:00Z").await;
    let request = receiver.wait_for("pay", 1, PATIENCE).await.remove(0);

    // The README's verification, run as written there.
    let body_file = stack.path().join("body.json");
    std::fs::write(&body_file, &request.body).unwrap();
    let script = r#"
import hashlib, hmac, sys

def verify(secret: bytes, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)

body = open(sys.argv[1], "rb").read()
sys.exit(0 if verify(sys.argv[2].encode(), body, sys.argv[3]) else 1)
"#;
    let verify = |secret: &str| {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&body_file)
            .arg(secret)
            .arg(request.header("x-tracely-signature"))
            .status()
            .expect("running python3")
            .success()
    };
    assert!(
        verify(SECRET),
        "the documented check accepts the real signature"
    );
    assert!(
        !verify("not-the-secret-at-all"),
        "and refuses a wrong secret"
    );

    // And the README's shell check.
    let shell = r#"expected="sha256=$(openssl dgst -sha256 -hmac "$SECRET" -r < body.json | cut -d' ' -f1)"
[ "$expected" = "$SIGNATURE" ] && echo valid || echo INVALID"#;
    let check = |secret: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(shell)
            .current_dir(stack.path())
            .env("SECRET", secret)
            .env("SIGNATURE", request.header("x-tracely-signature"))
            .output()
            .expect("running sh");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(check(SECRET), "valid");
    assert_eq!(check("not-the-secret-at-all"), "INVALID");
    app.stop().await;
}

#[tokio::test]
async fn failures_are_retried_under_one_idempotency_key() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    receiver.script("flaky", &[Reply::Status(500), Reply::Status(500)]);
    let (dept, _) =
        department_with_webhook(&app, "Network", &receiver.url("flaky"), json!({})).await;
    latency_rule(&app, &dept, json!({})).await;
    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;

    let got = receiver.wait_for("flaky", 3, PATIENCE).await;
    notifications_settled(&stack).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_later = receiver.received("flaky");
    assert_eq!(got_later.len(), 3, "500, 500, then 200: three requests");
    let keys: std::collections::BTreeSet<&str> =
        got.iter().map(|r| r.header("idempotency-key")).collect();
    assert_eq!(keys.len(), 1, "one key across retries: {keys:?}");
    let numbers: Vec<&str> = got.iter().map(|r| r.header("x-tracely-attempt")).collect();
    assert_eq!(numbers, ["1", "2", "3"]);
    assert!(
        got.windows(2).all(|w| w[0].body == w[1].body),
        "every retry sends the same bytes"
    );

    let delivery = *keys.iter().next().unwrap();
    assert_eq!(
        attempts(&app, delivery).await,
        vec![
            (1, "http_error".to_owned(), Some(500)),
            (2, "http_error".to_owned(), Some(500)),
            (3, "ok".to_owned(), Some(200)),
        ]
    );
    let (state,): (String,) = sqlx::query_as("SELECT state FROM deliveries WHERE id = $1::uuid")
        .bind(delivery)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "delivered");

    // The delivery log shows the same.
    let (status, detail) = app.get(&format!("/api/deliveries/{delivery}")).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["data"]["state"], "delivered");
    let codes: Vec<&Value> = detail["data"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(codes, [&json!(500), &json!(500), &json!(200)]);
    assert_eq!(detail["data"]["items"][0]["kind"], "opened");
    let (status, list) = app.get("/api/deliveries?state=delivered").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["meta"]["total"], 1);
    let (status, _) = app.get("/api/deliveries?state=lost").await;
    assert_eq!(status, 400);

    let incident = got[0].json()["events"][0]["incident"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let kinds: Vec<String> = timeline(&app, &incident)
        .await
        .iter()
        .filter(|e| e["actor"] == "notifier")
        .map(|e| format!("{} {}", e["kind"].as_str().unwrap(), e["data"]["attempt"]))
        .collect();
    assert_eq!(
        kinds,
        [
            "NOTIFICATION_FAILED 1",
            "NOTIFICATION_FAILED 2",
            "NOTIFIED 3"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn the_last_failed_attempt_is_dead_lettered_and_recorded() {
    let stack = Stack::start().await;
    let mut settings = stack.settings(&Role::ALL);
    settings.notify.max_attempts = 2;
    let app = App::start_with(settings).await;
    let receiver = Receiver::start().await;
    receiver.script("down", &[Reply::Status(503), Reply::Status(502)]);
    let (dept, _) =
        department_with_webhook(&app, "Network", &receiver.url("down"), json!({})).await;
    latency_rule(&app, &dept, json!({})).await;
    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;

    let got = receiver.wait_for("down", 2, PATIENCE).await;
    let delivery = got[0].header("idempotency-key").to_owned();
    let (state, last_status, last_error): (String, Option<i32>, Option<String>) = eventually(
        "the delivery to be recorded as failed",
        PATIENCE,
        || async {
            let row: (String, Option<i32>, Option<String>) = sqlx::query_as(
                "SELECT state, last_status, last_error FROM deliveries WHERE id = $1::uuid",
            )
            .bind(&delivery)
            .fetch_one(&app.pool)
            .await
            .ok()?;
            (row.0 == "failed").then_some(row)
        },
    )
    .await;
    assert_eq!(state, "failed");
    assert_eq!(last_status, Some(502));
    assert!(last_error.unwrap().contains("502"));

    let deadletters = js.get_stream("DEADLETTER").await.unwrap();
    let message = eventually("the dead-lettered job", PATIENCE, || async {
        deadletters
            .get_last_raw_message_by_subject("deadletter.DELIVERIES.deliver")
            .await
            .ok()
    })
    .await;
    assert_eq!(std::str::from_utf8(&message.payload).unwrap(), delivery);
    let reason = message
        .headers
        .get(schemas::headers::DEADLETTER_REASON)
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(
        reason.contains("502"),
        "the reason carries the last response: {reason}"
    );
    notifications_settled(&stack).await;
    assert_eq!(
        receiver.received("down").len(),
        2,
        "no attempt after the last"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_hanging_target_does_not_delay_another_department() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    // More hanging requests than the sender runs at once for one channel.
    receiver.script("stuck", &[Reply::Hang; 8]);
    let (slow, _) = department_with_webhook(&app, "Slow", &receiver.url("stuck"), json!({})).await;
    let (fast, _) = department_with_webhook(&app, "Fast", &receiver.url("quick"), json!({})).await;
    latency_rule(&app, &slow, json!({ "extra_department_ids": [fast] })).await;
    let timeout = consumers::notify::NotifyConfig::default().timeout;

    // The slow department's target hangs first...
    let js = stack.js().await;
    latency(&js, "svc-0", 420.0, "2026-11-23T10:00:00Z").await;
    receiver.wait_for("stuck", 1, PATIENCE).await;
    receiver.wait_for("quick", 1, PATIENCE).await;
    // ...then six more incidents open while its requests hang.
    let started = Instant::now();
    let samples: Vec<_> = (1..=6)
        .map(|i| {
            sample(
                &format!("svc-{i}"),
                "LATENCY_MS",
                420.0,
                "2026-11-23T10:00:00Z",
            )
        })
        .collect();
    publish(&js, &samples).await;
    let quick = receiver.wait_for("quick", 7, PATIENCE).await;
    let waited = quick[6].at.duration_since(started);
    assert!(
        waited < timeout / 2,
        "the fast department waited {waited:?} behind the hanging one (timeout {timeout:?})"
    );
    let stuck = receiver.received("stuck").len();
    assert!(
        (2..=consumers::notify::deliver::PER_CHANNEL).contains(&stuck),
        "the hanging target holds at most {} requests at once, got {stuck}",
        consumers::notify::deliver::PER_CHANNEL
    );
    app.stop().await;
}

#[tokio::test]
async fn the_log_never_shows_a_slack_token() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let dept = department(&app, "Network").await;
    // Nothing listens there, so the attempt fails with a network error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}/services/T000/B000/SECRETTOKEN");
    let (status, body) = app
        .post(
            &format!("/api/departments/{dept}/channels"),
            &json!({"type": "slack", "url": url}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    latency_rule(&app, &dept, json!({})).await;
    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;
    let error: String = eventually("a failed attempt", PATIENCE, || async {
        let row: (Option<String>,) =
            sqlx::query_as("SELECT error FROM delivery_attempts WHERE outcome = 'network' LIMIT 1")
                .fetch_one(&app.pool)
                .await
                .ok()?;
        row.0
    })
    .await;
    assert!(!error.contains("SECRETTOKEN"), "{error}");
    let (_, deliveries) = app.get("/api/deliveries").await;
    let id = deliveries["data"][0]["id"].as_str().unwrap().to_owned();
    let (_, detail) = app.get(&format!("/api/deliveries/{id}")).await;
    assert!(!detail.to_string().contains("SECRETTOKEN"), "{detail}");
    let incident = app.incidents("").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = timeline(&app, &incident).await;
    assert!(
        events.iter().any(|e| e["kind"] == "NOTIFICATION_FAILED"),
        "{events:?}"
    );
    assert!(!format!("{events:?}").contains("SECRETTOKEN"));
    app.stop().await;
}

#[tokio::test]
async fn a_silence_suppresses_delivery_and_is_recorded() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    let (dept, _) = department_with_webhook(&app, "Network", &receiver.url("net"), json!({})).await;
    latency_rule(&app, &dept, json!({})).await;
    let now = chrono::Utc::now();
    let (status, silence) = app
        .post(
            "/api/silences",
            &json!({
                "service_id": "paycell",
                "starts_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
                "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
                "comment": "planned maintenance",
            }),
        )
        .await;
    assert_eq!(status, 201, "{silence}");
    let silence = silence["data"]["id"].as_str().unwrap().to_owned();

    let js = stack.js().await;
    publish(
        &js,
        &[
            sample("paycell", "LATENCY_MS", 420.0, "2026-11-23T10:00:00Z"),
            // Another service is not covered.
            sample("ledger", "LATENCY_MS", 420.0, "2026-11-23T10:00:00Z"),
        ],
    )
    .await;
    receiver.wait_for("net", 1, PATIENCE).await;
    notifications_settled(&stack).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = receiver.received("net");
    assert_eq!(got.len(), 1, "only the unsilenced service was sent");
    assert_eq!(
        got[0].json()["events"][0]["incident"]["service_id"],
        "ledger"
    );

    let (state, silence_id, incident): (String, Option<uuid::Uuid>, uuid::Uuid) = sqlx::query_as(
        "SELECT d.state, d.silence_id, i.incident_id FROM deliveries d
         JOIN delivery_items i ON i.delivery_id = d.id WHERE d.service_id = 'paycell'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(state, "suppressed");
    assert_eq!(silence_id.unwrap().to_string(), silence);
    let suppressed: Vec<Value> = timeline(&app, &incident.to_string())
        .await
        .into_iter()
        .filter(|e| e["kind"] == "NOTIFICATION_SUPPRESSED")
        .collect();
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0]["data"]["silence_id"], silence.as_str());
    app.stop().await;
}

#[tokio::test]
async fn grouping_sends_one_message_for_three_incidents() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    let (dept, _) = department_with_webhook(
        &app,
        "Network",
        &receiver.url("grouped"),
        json!({ "group_wait": "3s" }),
    )
    .await;
    for metric in ["LATENCY_MS", "ERROR_RATE", "PACKET_LOSS"] {
        app.rule(json!({
            "metric_type": metric, "operator": ">", "threshold": 1,
            "severity": "HIGH", "department_id": dept,
        }))
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let js = stack.js().await;
    publish(
        &js,
        &[
            sample("paycell", "LATENCY_MS", 420.0, "2026-11-23T10:00:00Z"),
            sample("paycell", "ERROR_RATE", 5.0, "2026-11-23T10:00:00Z"),
            sample("paycell", "PACKET_LOSS", 3.0, "2026-11-23T10:00:00Z"),
        ],
    )
    .await;
    let got = receiver.wait_for("grouped", 1, PATIENCE).await;
    notifications_settled(&stack).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got_later = receiver.received("grouped");
    assert_eq!(got_later.len(), 1, "one message for the group");
    let events = got[0].json()["events"].as_array().unwrap().clone();
    let mut metrics: Vec<&str> = events
        .iter()
        .map(|e| e["incident"]["metric_type"].as_str().unwrap())
        .collect();
    metrics.sort_unstable();
    assert_eq!(metrics, ["ERROR_RATE", "LATENCY_MS", "PACKET_LOSS"]);
    assert!(events.iter().all(|e| e["kind"] == "opened"));
    app.stop().await;
}

#[tokio::test]
async fn a_resolved_notification_arrives_after_recovery() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    let (dept, _) = department_with_webhook(&app, "Network", &receiver.url("net"), json!({})).await;
    latency_rule(&app, &dept, json!({})).await;
    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;
    receiver.wait_for("net", 1, PATIENCE).await;
    latency(&js, "paycell", 90.0, "2026-11-23T10:00:05Z").await;
    let got = receiver.wait_for("net", 2, PATIENCE).await;
    let resolved = got[1].json();
    assert_eq!(resolved["events"][0]["kind"], "resolved");
    assert!(resolved["events"][0]["incident"]["resolved_at"].is_string());
    assert_ne!(
        got[0].header("idempotency-key"),
        got[1].header("idempotency-key"),
        "a different notification has a different key"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_status_change_by_a_person_is_notified_and_in_app_rows_appear() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    let (dept, _) = department_with_webhook(&app, "Network", &receiver.url("net"), json!({})).await;
    let (status, body) = app
        .post(
            &format!("/api/departments/{dept}/channels"),
            &json!({"type": "in_app"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    latency_rule(&app, &dept, json!({})).await;
    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;
    let got = receiver.wait_for("net", 1, PATIENCE).await;
    let incident = got[0].json()["events"][0]["incident"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = app
        .patch(
            &format!("/api/incidents/{incident}"),
            &json!({"status": "IN_PROGRESS"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = receiver.wait_for("net", 2, PATIENCE).await;
    let change = &got[1].json()["events"][0];
    assert_eq!(change["kind"], "status_changed");
    assert_eq!(change["from"], "OPEN");
    assert_eq!(change["to"], "IN_PROGRESS");
    assert!(change["actor"].as_str().unwrap().starts_with("key:"));

    // The in-app channel got a row for each.
    let rows = eventually("two in-app notifications", PATIENCE, || async {
        let (_, body) = app
            .get(&format!("/api/notifications?incident_id={incident}"))
            .await;
        let rows = body["data"].as_array()?.clone();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let mut kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["opened", "status_changed"]);
    assert!(rows.iter().all(|r| r["department_id"] == dept.as_str()));
    app.stop().await;
}

/// The sender runs in its own process so it can be killed while a request is under way.
fn spawn_sender(stack: &Stack, topology: &std::path::Path, n: usize) -> tokio::process::Child {
    let log = std::fs::File::create(stack.path().join(format!("notify-{n}.log"))).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tracely"))
        .args(["run", "--roles", "notify"])
        .env("TRACELY_NATS_URL", stack.nats.url())
        .env("DATABASE_URL", &stack.database_url)
        .env("TRACELY_HTTP_ADDR", "127.0.0.1:0")
        .env_remove("MEILI_URL")
        .env("TRACELY_TOPOLOGY", topology)
        .env("TRACELY_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("TRACELY_WEBHOOK_TIMEOUT_SECS", "3")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting tracely run --roles notify")
}

#[tokio::test]
async fn a_kill_between_sending_and_acking_sends_at_most_once_more_with_the_same_key() {
    let stack = Stack::start().await;
    // A short ack wait, so the job of the killed process comes back quickly.
    let mut topology = consumers::Topology::built_in();
    topology.consumers.get_mut("deliver").unwrap().ack_wait_secs = 10;
    let topology_file = stack.path().join("topology.toml");
    std::fs::write(
        &topology_file,
        consumers::topology::BUILT_IN.replace("ack_wait_secs = 75", "ack_wait_secs = 10"),
    )
    .unwrap();
    let mut settings = stack.settings(&[Role::Evaluate, Role::Record, Role::Archive, Role::Api]);
    settings.topology = topology;
    settings.notify.timeout = Duration::from_secs(3);
    let app = App::start_with(settings).await;
    let receiver = Receiver::start().await;
    // The first request is held open; the process is killed while it waits for the answer.
    receiver.script("net", &[Reply::Hang]);
    let (dept, _) = department_with_webhook(&app, "Network", &receiver.url("net"), json!({})).await;
    latency_rule(&app, &dept, json!({})).await;

    let mut sender = spawn_sender(&stack, &topology_file, 1);
    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;
    receiver.wait_for("net", 1, PATIENCE).await;
    sender.start_kill().unwrap();
    sender.wait().await.unwrap();

    let mut sender = spawn_sender(&stack, &topology_file, 2);
    let got = receiver.wait_for("net", 2, Duration::from_secs(60)).await;
    let key = got[0].header("idempotency-key").to_owned();
    let delivered = eventually("the delivery to be recorded", PATIENCE, || async {
        let (state,): (String,) =
            sqlx::query_as("SELECT state FROM deliveries WHERE id = $1::uuid")
                .bind(&key)
                .fetch_one(&app.pool)
                .await
                .ok()?;
        (state == "delivered").then_some(state)
    })
    .await;
    assert_eq!(delivered, "delivered");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = receiver.received("net");
    assert_eq!(got.len(), 2, "one request before the kill, one after");
    assert!(
        got.iter().all(|r| r.header("idempotency-key") == key),
        "never two keys for one notification"
    );
    assert_eq!(
        attempts(&app, &key).await,
        vec![
            (1, "interrupted".to_owned(), None),
            (2, "ok".to_owned(), Some(200)),
        ]
    );
    sender.start_kill().unwrap();
    let _ = sender.wait().await;
    app.stop().await;
}

#[tokio::test]
async fn an_incident_left_open_is_notified_again_after_the_repeat_interval() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    let (dept, channel) = department_with_webhook(
        &app,
        "Network",
        &receiver.url("net"),
        json!({ "repeat_interval": "1m" }),
    )
    .await;
    latency_rule(&app, &dept, json!({})).await;
    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;
    receiver.wait_for("net", 1, PATIENCE).await;

    // Let a minute pass for the channel, as far as its record of the opening goes.
    sqlx::query(
        "UPDATE delivery_items SET created_at = now() - interval '61 seconds'
         WHERE channel_id = $1::uuid AND kind = 'opened'",
    )
    .bind(&channel)
    .execute(&app.pool)
    .await
    .unwrap();
    let got = receiver.wait_for("net", 2, PATIENCE).await;
    let reminder = got[1].json();
    assert_eq!(reminder["events"][0]["kind"], "reminder");
    assert_eq!(reminder["events"][0]["actor"], "notifier");
    assert_ne!(
        got[0].header("idempotency-key"),
        got[1].header("idempotency-key")
    );

    // The same interval is not reminded twice, and nothing is reminded once work starts.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(receiver.received("net").len(), 2);
    let incident = reminder["events"][0]["incident"]["id"].as_str().unwrap();
    let (status, body) = app
        .patch(
            &format!("/api/incidents/{incident}"),
            &json!({"status": "IN_PROGRESS"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    receiver.wait_for("net", 3, PATIENCE).await;
    sqlx::query(
        "UPDATE delivery_items SET created_at = now() - interval '200 seconds'
         WHERE channel_id = $1::uuid AND kind = 'opened'",
    )
    .bind(&channel)
    .execute(&app.pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let kinds: Vec<String> = receiver
        .received("net")
        .iter()
        .map(|r| r.json()["events"][0]["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["opened", "reminder", "status_changed"]);
    app.stop().await;
}

#[tokio::test]
async fn a_private_target_is_refused_at_send_time_when_not_allowed() {
    let stack = Stack::start().await;
    let mut settings = stack.settings(&Role::ALL);
    settings.notify.targets.allow_private = false;
    let app = App::start_with(settings).await;
    let receiver = Receiver::start().await;
    // Saved while it pointed elsewhere, say, and now resolving to loopback: written straight to
    // the table, since the API refuses it.
    let dept = department(&app, "Network").await;
    let url = format!("http://localhost:{}/net", receiver.addr.port());
    let (status, refused) = app
        .post(
            &format!("/api/departments/{dept}/channels"),
            &json!({"type": "webhook", "url": url, "secret": SECRET}),
        )
        .await;
    assert_eq!(status, 422, "the API refuses it: {refused}");
    sqlx::query(
        "INSERT INTO notification_channels (id, department_id, name, kind, url, secret)
         VALUES (gen_random_uuid(), $1::uuid, 'sneaky', 'webhook', $2, $3)",
    )
    .bind(&dept)
    .bind(&url)
    .bind(SECRET)
    .execute(&app.pool)
    .await
    .unwrap();
    latency_rule(&app, &dept, json!({})).await;
    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;

    let (attempts, error): (i32, Option<String>) =
        eventually("the delivery to be refused", PATIENCE, || async {
            let row: (String, i32, Option<String>) = sqlx::query_as(
                "SELECT state, attempts, last_error FROM deliveries WHERE service_id = 'paycell'",
            )
            .fetch_one(&app.pool)
            .await
            .ok()?;
            (row.0 == "failed").then_some((row.1, row.2))
        })
        .await;
    assert_eq!(attempts, 1, "a refused target is not retried");
    assert!(
        error.unwrap().contains("TRACELY_WEBHOOK_ALLOW_PRIVATE"),
        "the reason says how to allow it"
    );
    assert!(receiver.received("net").is_empty(), "nothing reached it");
    app.stop().await;
}

#[tokio::test]
async fn slack_channels_get_slacks_message_format() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let receiver = Receiver::start().await;
    let dept = department(&app, "Network").await;
    let (status, channel) = app
        .post(
            &format!("/api/departments/{dept}/channels"),
            &json!({"type": "slack", "url": receiver.url("slack")}),
        )
        .await;
    assert_eq!(status, 201, "{channel}");
    latency_rule(&app, &dept, json!({})).await;
    let js = stack.js().await;
    latency(&js, "paycell", 420.0, "2026-11-23T10:00:00Z").await;
    let request = receiver.wait_for("slack", 1, PATIENCE).await.remove(0);
    let message = request.json();
    let text = message["text"].as_str().unwrap();
    assert!(text.contains("[HIGH]") && text.contains("opened"), "{text}");
    let section = message["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(section.contains("LATENCY_MS"), "{section}");
    assert!(!request.body.is_empty());
    assert!(!request.header("idempotency-key").is_empty());
    app.stop().await;
}
