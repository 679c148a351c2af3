//! Who may do what: keys and roles (401, 403), rate limits (429 with Retry-After), body limits
//! (413), CORS, the open routes, and the key endpoints themselves.

use crate::support::{client_with_key, decode, App, KeyRole, Stack};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tracely::config::{HttpConfig, Role};

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    decode(request.send().await.expect("sending a request")).await
}

#[tokio::test]
async fn keys_and_roles_decide_who_may_do_what() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let anonymous = reqwest::Client::new();
    let viewer = app.client(KeyRole::Viewer).await;
    let operator = app.client(KeyRole::Operator).await;

    // No key, a malformed header, an unknown key: 401 with the envelope and a challenge.
    let response = anonymous
        .get(app.url("/api/incidents"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (_, body) = decode(response).await;
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = send(
        anonymous
            .get(app.url("/api/incidents"))
            .header("Authorization", "Basic abc"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = send(client_with_key("trk_0000").get(app.url("/api/rules"))).await;
    assert_eq!(status, 401);

    // The open routes need no key.
    for path in ["/health", "/ready", "/metrics", "/api/openapi.json"] {
        let (status, _) = send(anonymous.get(app.url(path))).await;
        assert_eq!(status, 200, "{path} should be open");
    }

    // A viewer reads but may not change anything.
    let (status, _) = send(viewer.get(app.url("/api/rules"))).await;
    assert_eq!(status, 200);
    let rule =
        json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 1, "severity": "LOW"});
    let (status, body) = send(viewer.post(app.url("/api/rules")).json(&rule)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = send(
        viewer
            .post(app.url("/api/metrics"))
            .json(&json!({"service_id": "S1", "metric_type": "X", "value": 1, "recorded_at": 0})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(viewer.post(app.url("/api/notifications/read-all"))).await;
    assert_eq!(status, 403);

    // An operator works incidents and notifications but may not manage rules, departments
    // or keys.
    let (status, _) = send(operator.post(app.url("/api/notifications/read-all"))).await;
    assert_eq!(status, 200);
    let (status, _) = send(operator.post(app.url("/api/rules")).json(&rule)).await;
    assert_eq!(status, 403);
    let (status, _) = send(
        operator
            .post(app.url("/api/departments"))
            .json(&json!({"name": "Ops"})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(operator.get(app.url("/api/keys"))).await;
    assert_eq!(status, 403);

    // The role check comes before the body is read: a viewer learns nothing about validity.
    let (status, _) = send(
        viewer
            .post(app.url("/api/rules"))
            .header("Content-Type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_by_admins() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;

    let (status, created) = app
        .post("/api/keys", &json!({"name": "grafana", "role": "viewer"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["data"]["key"].as_str().unwrap().to_owned();
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("trk_") && key.len() == 68, "{key}");
    assert_eq!(created["data"]["prefix"], key[..12]);
    assert_eq!(created["data"]["role"], "viewer");

    let grafana = client_with_key(&key);
    let (status, _) = send(grafana.get(app.url("/api/incidents"))).await;
    assert_eq!(status, 200);

    // The secret is never listed, and the stored form is a digest.
    let (status, listed) = app.get("/api/keys?sort_by=name&sort_dir=asc").await;
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains(&key[12..]), "{listed}");
    let names: Vec<_> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["grafana", "test-admin"]);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);

    // Bad bodies and unknown ids.
    for (body, field) in [
        (json!({"name": "x", "role": "root"}), "role"),
        (json!({"name": "  ", "role": "viewer"}), "name"),
        (json!({"name": "x", "role": "viewer", "extra": 1}), "extra"),
    ] {
        let (status, error) = app.post("/api/keys", &body).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    let response = app
        .http
        .delete(app.url("/api/keys/7f0c4d5e-0000-4000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Revoked keys stop working at once.
    let response = app
        .http
        .delete(app.url(&format!("/api/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, revoked) = decode(response).await;
    assert!(revoked["data"]["revoked_at"].is_string());
    let (status, body) = send(grafana.get(app.url("/api/incidents"))).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    app.stop().await;
}

#[tokio::test]
async fn callers_beyond_their_rate_get_429_with_retry_after() {
    let stack = Stack::start().await;
    let mut settings = stack.settings(&Role::ALL);
    settings.http = HttpConfig {
        rate_limit: api::auth::RateLimit {
            per_second: 1.try_into().unwrap(),
            burst: 3.try_into().unwrap(),
        },
        ..HttpConfig::default()
    };
    let app = App::start_with(settings).await;
    let other = app.client(KeyRole::Viewer).await;

    for _ in 0..3 {
        let (status, _) = app.get("/api/rules").await;
        assert_eq!(status, 200);
    }
    let response = app.http.get(app.url("/api/rules")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let (_, body) = decode(response).await;
    assert_eq!(body["error"]["code"], "rate_limited");

    // Limits are per key; the open routes are not limited.
    let (status, _) = send(other.get(app.url("/api/rules"))).await;
    assert_eq!(status, 200);
    for _ in 0..5 {
        let (status, _) = send(reqwest::Client::new().get(app.url("/health"))).await;
        assert_eq!(status, 200);
    }

    // Without a valid key the limit is per address, and it applies before the 401. The
    // address paid for the two key lookups above; let its budget refill first.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let anonymous = reqwest::Client::new();
    let mut statuses = Vec::new();
    // Guessed keys pay the same way, before the database is asked.
    for i in 0..4 {
        let client = if i % 2 == 0 {
            anonymous.clone()
        } else {
            client_with_key(&format!("trk_guess{i}"))
        };
        statuses.push(send(client.get(app.url("/api/rules"))).await.0);
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
    app.stop().await;
}

#[tokio::test]
async fn bodies_beyond_the_limit_get_413_and_cors_follows_the_configured_origins() {
    let stack = Stack::start().await;
    let mut settings = stack.settings(&Role::ALL);
    settings.http = HttpConfig {
        max_body_bytes: 4096,
        cors_origins: vec!["https://ops.example.com".to_owned()],
        ..HttpConfig::default()
    };
    let app = App::start_with(settings).await;

    let big = json!({"name": "x".repeat(5000)});
    let (status, body) = app.post("/api/departments", &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Sample batches have their own, larger limit.
    let samples: Vec<Value> = (0..100)
        .map(|i| json!({"service_id": "S1", "metric_type": "LATENCY_MS", "value": i, "recorded_at": i}))
        .collect();
    let (status, body) = app.post("/api/metrics", &json!(samples)).await;
    assert_eq!(status, 202, "{body}");

    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, app.url("/api/incidents"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let allowed = preflight("https://ops.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://ops.example.com"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    app.stop().await;
}
