//! What API clients see when they get something wrong, and when a dependency is down: the
//! status, the error envelope `{"error": {"code", "message", "details"}}`, and that the
//! message or details name the offending field. Every test runs its own nats-server and
//! Postgres.

use std::time::{Duration, Instant};

use crate::support::{App, Stack};
use reqwest::Method;
use serde_json::{json, Value};
use tracely::config::Role;
use uuid::Uuid;

/// Asserts the status and the envelope's code, and returns the `error` object.
#[track_caller]
fn error(response: &(u16, Value), status: u16, code: &str) -> Value {
    let (got, body) = response;
    assert_eq!(*got, status, "unexpected status; body: {body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "unexpected code: {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "the message is missing: {body}"
    );
    assert!(
        error.as_object().unwrap().contains_key("details"),
        "no details key: {body}"
    );
    error.clone()
}

/// Asserts the error's details name `field`, and so does its message.
#[track_caller]
fn names_field(error: &Value, field: &str) {
    let details = error["details"]
        .as_array()
        .unwrap_or_else(|| panic!("details are not a list: {error}"));
    assert!(
        details.iter().any(|d| d["field"] == field),
        "details do not name `{field}`: {error}"
    );
    assert!(
        error["message"].as_str().unwrap().contains(field),
        "message does not name `{field}`: {error}"
    );
}

/// Asserts the status and code, and that details and message name `field`.
#[track_caller]
fn rejects_field(response: &(u16, Value), status: u16, code: &str, field: &str) {
    let error = error(response, status, code);
    names_field(&error, field);
}

/// A request with an arbitrary method, content type and body.
async fn send(
    app: &App,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if !body.is_empty() {
        request = request.body(body.to_owned());
    }
    let response = request.send().await.expect("sending the request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("reading the body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }))
    };
    (status, body)
}

async fn post_json_text(app: &App, path: &str, body: &str) -> (u16, Value) {
    send(app, Method::POST, path, Some("application/json"), body).await
}

async fn metrics_text(app: &App) -> String {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.unwrap()
}

fn rule() -> Value {
    json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH"})
}

/// `rule()` with `field` replaced, or removed when `value` is `None`.
fn rule_with(field: &str, value: Option<Value>) -> Value {
    let mut body = rule();
    match value {
        Some(value) => body[field] = value,
        None => {
            body.as_object_mut().unwrap().remove(field);
        }
    }
    body
}

async fn query_parameters(app: &App) {
    let ok = app
        .get("/api/incidents?status=OPEN&limit=1000&offset=0")
        .await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert_eq!(
        ok.1["meta"],
        json!({"total": 0, "limit": 1000, "offset": 0})
    );

    let unknown = error(&app.get("/api/incidents?bogus=1").await, 400, "bad_request");
    names_field(&unknown, "bogus");

    for (query, field) in [
        ("status=WEIRD", "status"),
        ("severity=SEVERE", "severity"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("rule_id=not-a-uuid", "rule_id"),
        ("status=OPEN&status=CLOSED", "status"),
    ] {
        let response = app.get(&format!("/api/incidents?{query}")).await;
        let error = error(&response, 400, "bad_request");
        names_field(&error, field);
    }
    let duplicate = error(
        &app.get("/api/incidents?status=OPEN&status=CLOSED").await,
        400,
        "bad_request",
    );
    assert!(
        duplicate["message"]
            .as_str()
            .unwrap()
            .contains("more than once"),
        "{duplicate}"
    );

    // The other lists share the paging rules and refuse unknown parameters too.
    rejects_field(
        &app.get("/api/rules?limit=1001").await,
        400,
        "bad_request",
        "limit",
    );
    rejects_field(
        &app.get("/api/services?status=OPEN").await,
        400,
        "bad_request",
        "status",
    );
}

async fn paths(app: &App) {
    rejects_field(
        &app.get("/api/incidents/not-a-uuid").await,
        400,
        "bad_request",
        "id",
    );
    let missing = Uuid::new_v4();
    let error_body = error(
        &app.get(&format!("/api/incidents/{missing}")).await,
        404,
        "not_found",
    );
    assert!(
        error_body["message"]
            .as_str()
            .unwrap()
            .contains(&missing.to_string()),
        "{error_body}"
    );
    error(&app.get("/api/nope").await, 404, "not_found");
    error(&app.get("/nope").await, 404, "not_found");
    error(
        &app.get(&format!("/api/rules/{missing}")).await,
        404,
        "not_found",
    );
    rejects_field(&app.get("/api/rules/123").await, 400, "bad_request", "id");
    let response = send(
        app,
        Method::PUT,
        "/api/rules",
        Some("application/json"),
        "{}",
    )
    .await;
    error(&response, 405, "method_not_allowed");
    let response = send(app, Method::DELETE, "/api/incidents", None, "").await;
    error(&response, 405, "method_not_allowed");
}

async fn rule_creation(app: &App) {
    // Not declared as JSON, or not JSON at all: the request is malformed.
    let body = rule().to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let response = send(app, Method::POST, "/api/rules", content_type, &body).await;
        let error = error(&response, 400, "bad_request");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{error}"
        );
    }
    let response = post_json_text(app, "/api/rules", r#"{"metric_type": "LATENCY_MS","#).await;
    let malformed = error(&response, 400, "bad_request");
    assert!(
        malformed["message"].as_str().unwrap().contains("JSON"),
        "{malformed}"
    );
    error(
        &post_json_text(app, "/api/rules", "").await,
        400,
        "bad_request",
    );

    // Well-formed JSON of the wrong shape: 422 naming the field.
    for (body, field) in [
        (rule_with("threshold", None), "threshold"),
        (rule_with("severity", None), "severity"),
        (rule_with("operator", Some(json!(">>"))), "operator"),
        (rule_with("severity", Some(json!("SEVERE"))), "severity"),
        (rule_with("severity", Some(json!("high"))), "severity"),
        (
            rule_with("metric_type", Some(json!("latency"))),
            "metric_type",
        ),
        (rule_with("metric_type", Some(json!(""))), "metric_type"),
        (rule_with("threshold", Some(json!("abc"))), "threshold"),
        (rule_with("threshold", Some(json!(null))), "threshold"),
        (rule_with("enabled", Some(json!("yes"))), "enabled"),
        (rule_with("colour", Some(json!("red"))), "colour"),
        (
            rule_with("service_id", Some(json!("has space"))),
            "service_id",
        ),
        (rule_with("name", Some(json!("   "))), "name"),
        (
            rule_with("department_id", Some(json!("nope"))),
            "department_id",
        ),
        (
            rule_with("department_id", Some(json!(Uuid::new_v4()))),
            "department_id",
        ),
    ] {
        let response = app.post("/api/rules", &body).await;
        let error = error(&response, 422, "validation_failed");
        names_field(&error, field);
    }
    // A repeated key is refused as invalid input, naming the field.
    let repeated = r#"{"metric_type": "LATENCY_MS", "metric_type": "ERROR_RATE",
                       "operator": ">", "threshold": 1, "severity": "LOW"}"#;
    let response = post_json_text(app, "/api/rules", repeated).await;
    rejects_field(&response, 422, "validation_failed", "metric_type");
    let (status, body) = app.post("/api/rules", &json!([rule()])).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    let (_, rules) = app.get("/api/rules").await;
    assert_eq!(
        rules["meta"]["total"], 0,
        "a rejected rule was stored: {rules}"
    );

    // A valid rule gets the defaults.
    let (status, created) = app.post("/api/rules", &rule()).await;
    assert_eq!(status, 201, "{created}");
    let data = &created["data"];
    assert!(
        data["id"].as_str().unwrap().parse::<Uuid>().is_ok(),
        "{created}"
    );
    assert_eq!(data["enabled"], true);
    assert_eq!(data["name"], "LATENCY_MS > 150");
    assert_eq!(data["service_id"], Value::Null);
    assert_eq!(data["department_id"], Value::Null);
    assert_eq!(data["trigger_count"], 0);
    assert_eq!(data["threshold"], 150.0);
}

async fn rule_updates(stack: &Stack, app: &App) {
    let department = Uuid::new_v4();
    sqlx::query("INSERT INTO departments (id, name) VALUES ($1, 'network')")
        .bind(department)
        .execute(&stack.pool().await)
        .await
        .unwrap();
    let id = app.rule(rule_with("service_id", Some(json!("S1")))).await;
    let path = format!("/api/rules/{id}");

    for (patch, field) in [
        (json!({"threshold": "x"}), "threshold"),
        (json!({"operator": ">>"}), "operator"),
        (json!({"metric_type": "latency"}), "metric_type"),
        (json!({"metric_type": null}), "metric_type"),
        (json!({"id": Uuid::new_v4()}), "id"),
        (json!({"trigger_count": 5}), "trigger_count"),
        (json!({"created_at": "2026-01-01T00:00:00Z"}), "created_at"),
        (json!({"colour": "red"}), "colour"),
        (json!({"department_id": Uuid::new_v4()}), "department_id"),
    ] {
        let response = app.patch(&path, &patch).await;
        let error = error(&response, 422, "validation_failed");
        names_field(&error, field);
    }
    let (_, unchanged) = app.get(&path).await;
    assert_eq!(unchanged["data"]["threshold"], 150.0, "{unchanged}");
    assert_eq!(unchanged["data"]["service_id"], "S1", "{unchanged}");

    let (status, body) = app.patch(&path, &json!([1])).await;
    assert_eq!(status, 422, "{body}");
    let response = send(app, Method::PATCH, &path, Some("text/plain"), "{}").await;
    error(&response, 400, "bad_request");
    let response = send(app, Method::PATCH, &path, Some("application/json"), "{").await;
    error(&response, 400, "bad_request");

    // The selector cannot change under open incidents; the same value is fine.
    for patch in [
        json!({"service_id": null}),
        json!({"service_id": "S2"}),
        json!({"metric_type": "ERROR_RATE"}),
    ] {
        let response = app.patch(&path, &patch).await;
        let error = error(&response, 422, "validation_failed");
        let field = patch.as_object().unwrap().keys().next().unwrap().clone();
        names_field(&error, &field);
    }
    let (status, body) = app.patch(&path, &json!({"service_id": "S1"})).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = app
        .patch(
            &path,
            &json!({"enabled": false, "department_id": department}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["enabled"], false, "{body}");
    assert_eq!(body["data"]["department_id"], department.to_string());
    assert_eq!(body["data"]["threshold"], 150.0, "{body}");
    let (_, fetched) = app.get(&path).await;
    assert_eq!(fetched["data"]["enabled"], false, "{fetched}");

    // null clears an optional field; the others stay.
    let (status, body) = app.patch(&path, &json!({"department_id": null})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["department_id"], Value::Null, "{body}");
    assert_eq!(body["data"]["enabled"], false, "{body}");

    let missing = format!("/api/rules/{}", Uuid::new_v4());
    error(
        &app.patch(&missing, &json!({"enabled": false})).await,
        404,
        "not_found",
    );
    rejects_field(
        &app.patch("/api/rules/not-a-uuid", &json!({"enabled": false}))
            .await,
        400,
        "bad_request",
        "id",
    );

    let deleted = send(app, Method::DELETE, &path, None, "").await;
    assert_eq!(deleted, (204, Value::Null));
    error(&app.get(&path).await, 404, "not_found");
    error(
        &send(app, Method::DELETE, &path, None, "").await,
        404,
        "not_found",
    );
    error(
        &app.patch(&path, &json!({"enabled": true})).await,
        404,
        "not_found",
    );
    rejects_field(
        &send(app, Method::DELETE, "/api/rules/not-a-uuid", None, "").await,
        400,
        "bad_request",
        "id",
    );
}

async fn metric_ingest(stack: &Stack, app: &App) {
    let metrics = stack.js().await.get_stream("METRICS").await.unwrap();
    let stored = || {
        let mut metrics = metrics.clone();
        async move { metrics.info().await.unwrap().state.messages }
    };
    let valid = json!({
        "service_id": "S1", "metric_type": "LATENCY_MS", "value": 120,
        "recorded_at": "2026-03-12T09:00:00Z",
    });

    // All or nothing: one valid and two invalid samples publish nothing.
    let mut bad_value = valid.clone();
    bad_value["value"] = json!("x");
    let mut bad_time = valid.clone();
    bad_time["recorded_at"] = json!("yesterday");
    let response = app
        .post("/api/metrics", &json!([valid, bad_value, bad_time]))
        .await;
    let rejected = error(&response, 422, "validation_failed");
    let details = rejected["details"].as_array().unwrap();
    assert_eq!(details.len(), 2, "{rejected}");
    assert_eq!(details[0]["index"], 1, "{rejected}");
    assert_eq!(details[0]["field"], "value", "{rejected}");
    assert_eq!(details[1]["index"], 2, "{rejected}");
    assert_eq!(details[1]["field"], "recorded_at", "{rejected}");
    assert!(
        rejected["message"].as_str().unwrap().contains("2 of the"),
        "{rejected}"
    );
    assert_eq!(stored().await, 0, "a rejected batch was published");

    // A single invalid object names the field without an index.
    let mut unknown = valid.clone();
    unknown["colour"] = json!("red");
    let response = app.post("/api/metrics", &unknown).await;
    let rejected = error(&response, 422, "validation_failed");
    assert_eq!(rejected["details"][0]["field"], "colour", "{rejected}");
    assert_eq!(rejected["details"][0]["index"], Value::Null, "{rejected}");
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("service_id");
    let rejected = error(
        &app.post("/api/metrics", &missing).await,
        422,
        "validation_failed",
    );
    assert_eq!(rejected["details"][0]["field"], "service_id", "{rejected}");

    let rejected = error(
        &app.post("/api/metrics", &json!([])).await,
        422,
        "validation_failed",
    );
    assert!(
        rejected["message"].as_str().unwrap().contains("empty"),
        "{rejected}"
    );
    let rejected = error(
        &app.post("/api/metrics", &json!([5])).await,
        422,
        "validation_failed",
    );
    assert_eq!(rejected["details"][0]["index"], 0, "{rejected}");
    error(
        &app.post("/api/metrics", &json!(5)).await,
        422,
        "validation_failed",
    );
    error(
        &app.post("/api/metrics", &json!("sample")).await,
        422,
        "validation_failed",
    );

    // A duplicate key in a sample is refused as invalid input (422, not 400), naming the key.
    let duplicate = r#"{"service_id": "S1", "service_id": "S2", "metric_type": "LATENCY_MS",
                        "value": 1, "recorded_at": "2026-03-12T09:00:00Z"}"#;
    let response = post_json_text(app, "/api/metrics", duplicate).await;
    rejects_field(&response, 422, "validation_failed", "service_id");

    let body = valid.to_string();
    for content_type in [None, Some("text/csv")] {
        let response = send(app, Method::POST, "/api/metrics", content_type, &body).await;
        error(&response, 400, "bad_request");
    }
    error(
        &post_json_text(app, "/api/metrics", "[{").await,
        400,
        "bad_request",
    );
    assert_eq!(stored().await, 0, "a rejected request was published");

    let (status, body) = app.post("/api/metrics", &valid).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["accepted"], 1, "{body}");
    assert_eq!(body["data"]["stored"], 1, "{body}");
    assert_eq!(stored().await, 1);
}

async fn prometheus(app: &App) {
    let id = Uuid::new_v4();
    app.get("/api/incidents").await;
    app.get(&format!("/api/incidents/{id}")).await;
    let stray = Uuid::new_v4();
    app.get(&format!("/api/unknown/{stray}")).await;
    app.get(&format!("/unknown/{stray}")).await;
    let text = metrics_text(app).await;
    assert!(text.contains("tracely_http_requests_total"), "{text}");
    assert!(text.contains(r#"route="/api/incidents""#), "{text}");
    assert!(text.contains(r#"route="/api/incidents/{id}""#), "{text}");
    assert!(
        !text.contains(&id.to_string()),
        "a raw path became a label: {text}"
    );
    assert!(
        !text.contains(&stray.to_string()),
        "an unmatched path became a label: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_name_what_to_fix() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;

    let (status, health) = app.get("/health").await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")));

    query_parameters(&app).await;
    paths(&app).await;
    rule_creation(&app).await;
    rule_updates(&stack, &app).await;
    metric_ingest(&stack, &app).await;
    prometheus(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_each_dependency() {
    let mut stack = Stack::start().await;
    // Every role runs: the consumers must ride out the outage while the API reports it.
    let app = App::start_with(stack.settings(&Role::ALL)).await;

    let (status, ready) = app.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["nats"]["ok"], true, "{ready}");
    assert_eq!(ready["checks"]["postgres"]["ok"], true, "{ready}");

    stack.postgres.kill();
    let started = Instant::now();
    let (status, ready) = app.get("/ready").await;
    assert!(started.elapsed() < Duration::from_secs(5), "{ready}");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "not_ready", "{ready}");
    assert_eq!(ready["checks"]["postgres"]["ok"], false, "{ready}");
    assert!(ready["checks"]["postgres"]["error"].is_string(), "{ready}");
    assert_eq!(ready["checks"]["nats"]["ok"], true, "{ready}");
    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200, "{health}");
    // Data requests answer 503 in the envelope, so clients know to retry.
    let response = app.get("/api/rules").await;
    let failed = error(&response, 503, "unavailable");
    assert!(
        failed["message"].as_str().unwrap().contains("database"),
        "{failed}"
    );

    stack.nats.pause();
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(10), app.get("/ready")).await;
    let elapsed = started.elapsed();
    stack.nats.resume();
    let (status, ready) = answered.expect("/ready hung while nats-server was paused");
    assert!(
        elapsed < Duration::from_secs(5),
        "took {elapsed:?}: {ready}"
    );
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["nats"]["ok"], false, "{ready}");
    assert!(ready["checks"]["nats"]["error"].is_string(), "{ready}");
    assert_eq!(ready["checks"]["postgres"]["ok"], false, "{ready}");
    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200, "{health}");

    app.stop().await;
}
