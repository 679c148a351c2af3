//! The resource endpoints: departments, notifications, rule lists and statistics, and the
//! incident list's filters, sorting and pagination.

use std::time::Duration;

use crate::support::{decode, eventually, publish, sample, App, KeyRole, Stack};
use serde_json::{json, Value};
use store::notifications::NewNotification;
use uuid::Uuid;

async fn delete(app: &App, path: &str) -> (u16, Value) {
    decode(app.http.delete(app.url(path)).send().await.unwrap()).await
}

async fn put(app: &App, path: &str, body: &Value) -> (u16, Value) {
    decode(app.http.put(app.url(path)).json(body).send().await.unwrap()).await
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn departments_are_managed_and_guarded_while_rules_use_them() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;

    let (status, video) = app
        .post(
            "/api/departments",
            &json!({"name": " Video ", "description": "Streaming"}),
        )
        .await;
    assert_eq!(status, 201, "{video}");
    assert_eq!(video["data"]["name"], "Video", "names are trimmed");
    let video_id = video["data"]["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post("/api/departments", &json!({"name": "Audio"}))
        .await;
    assert_eq!(status, 201);

    // Duplicate names, bad bodies.
    let (status, body) = app
        .post("/api/departments", &json!({"name": "Video"}))
        .await;
    assert_eq!(status, 409, "{body}");
    for bad in [
        json!({"name": ""}),
        json!({}),
        json!({"name": "x", "colour": "red"}),
    ] {
        let (status, body) = app.post("/api/departments", &bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }

    // List, sorted and paged.
    let (status, list) = app.get("/api/departments").await;
    assert_eq!(status, 200);
    let names: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, [json!("Audio"), json!("Video")]);
    assert_eq!(list["meta"], json!({"total": 2, "limit": 50, "offset": 0}));
    let (_, desc) = app
        .get("/api/departments?sort_by=name&sort_dir=desc&limit=1")
        .await;
    assert_eq!(desc["data"][0]["name"], "Video");
    assert_eq!(desc["meta"]["total"], 2);
    let (_, past) = app.get("/api/departments?offset=5").await;
    assert_eq!(past["data"], json!([]));
    assert_eq!(past["meta"]["total"], 2);
    for bad in [
        "sort_by=colour",
        "sort_dir=up",
        "limit=0",
        "limit=1001",
        "offset=-1",
        "colour=red",
    ] {
        let (status, body) = app.get(&format!("/api/departments?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Get, replace, 404s.
    let (status, got) = app.get(&format!("/api/departments/{video_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["data"]["description"], "Streaming");
    let (status, replaced) = put(
        &app,
        &format!("/api/departments/{video_id}"),
        &json!({"name": "Video QoE"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(replaced["data"]["name"], "Video QoE");
    assert_eq!(
        replaced["data"]["description"], "",
        "PUT replaces every field"
    );
    let (status, _) = put(
        &app,
        &format!("/api/departments/{video_id}"),
        &json!({"name": "Audio"}),
    )
    .await;
    assert_eq!(status, 409);
    let unknown = Uuid::new_v4();
    let (status, _) = app.get(&format!("/api/departments/{unknown}")).await;
    assert_eq!(status, 404);
    let (status, _) = put(
        &app,
        &format!("/api/departments/{unknown}"),
        &json!({"name": "Z"}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/api/departments/not-a-uuid").await;
    assert_eq!(status, 400);

    // A rule references the department: deleting it is refused until the rule is gone.
    let rule = app
        .rule(json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH", "department_id": video_id}))
        .await;
    let (status, body) = delete(&app, &format!("/api/departments/{video_id}")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("rules"));
    let (status, _) = delete(&app, &format!("/api/rules/{rule}")).await;
    assert_eq!(status, 204);
    let (status, _) = delete(&app, &format!("/api/departments/{video_id}")).await;
    assert_eq!(status, 204);
    let (status, _) = delete(&app, &format!("/api/departments/{video_id}")).await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn notifications_are_listed_read_and_counted() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let (_, video) = app
        .post("/api/departments", &json!({"name": "Video"}))
        .await;
    let video = video["data"]["id"]
        .as_str()
        .unwrap()
        .parse::<Uuid>()
        .unwrap();
    let incident = Uuid::new_v4();
    let mut made = Vec::new();
    for (i, department) in [Some(video), Some(video), None].into_iter().enumerate() {
        let n = NewNotification {
            id: Uuid::new_v4(),
            department_id: department,
            incident_id: Some(incident),
            kind: "incident_opened".into(),
            severity: Some(schemas::Severity::High),
            title: format!("notification {i}"),
            body: String::new(),
        };
        assert!(store::notifications::insert(&app.pool, &n).await.unwrap());
        assert!(
            !store::notifications::insert(&app.pool, &n).await.unwrap(),
            "ids are idempotent"
        );
        made.push(n.id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let (status, all) = app.get("/api/notifications").await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&all),
        [made[2], made[1], made[0]].map(|i| i.to_string()),
        "newest first"
    );
    let (_, oldest) = app
        .get("/api/notifications?sort_dir=asc&limit=1&offset=1")
        .await;
    assert_eq!(ids(&oldest), [made[1].to_string()]);
    let (_, of_video) = app
        .get(&format!("/api/notifications?department_id={video}"))
        .await;
    assert_eq!(of_video["meta"]["total"], 2);
    let (_, of_incident) = app
        .get(&format!("/api/notifications?incident_id={incident}"))
        .await;
    assert_eq!(of_incident["meta"]["total"], 3);

    let (status, unread) = app.get("/api/notifications/unread-count").await;
    assert_eq!(status, 200);
    assert_eq!(unread["data"]["unread"], 3);
    let (status, read) = app
        .post(
            &format!("/api/notifications/{}/read", made[0]),
            &json!(null),
        )
        .await;
    assert_eq!(status, 200, "{read}");
    let first_read = read["data"]["read_at"].clone();
    assert!(first_read.is_string());
    let (_, again) = app
        .post(
            &format!("/api/notifications/{}/read", made[0]),
            &json!(null),
        )
        .await;
    assert_eq!(
        again["data"]["read_at"], first_read,
        "reading twice keeps the first time"
    );
    let (_, unread) = app
        .get(&format!(
            "/api/notifications/unread-count?department_id={video}"
        ))
        .await;
    assert_eq!(unread["data"]["unread"], 1);
    let (_, read_list) = app.get("/api/notifications?read=true").await;
    assert_eq!(ids(&read_list), [made[0].to_string()]);

    let (status, unread_again) = app
        .post(
            &format!("/api/notifications/{}/unread", made[0]),
            &json!(null),
        )
        .await;
    assert_eq!(status, 200);
    assert!(unread_again["data"]["read_at"].is_null());

    let (status, all_read) = app
        .post(
            &format!("/api/notifications/read-all?department_id={video}"),
            &json!(null),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(all_read["data"]["updated"], 2);
    let (_, unread) = app.get("/api/notifications/unread-count").await;
    assert_eq!(
        unread["data"]["unread"], 1,
        "the other department's stays unread"
    );

    let (status, _) = app
        .post(
            &format!("/api/notifications/{}/read", Uuid::new_v4()),
            &json!(null),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/api/notifications?read=maybe").await;
    assert_eq!(status, 400);
    let viewer = app.client(KeyRole::Viewer).await;
    let response = viewer
        .post(app.url(&format!("/api/notifications/{}/read", made[1])))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn rules_are_filtered_sorted_and_ranked_by_trigger_count() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let latency = app
        .rule(json!({"name": "latency", "metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH"}))
        .await;
    let buffer = app
        .rule(json!({"name": "buffer", "metric_type": "BUFFER_RATIO", "operator": ">", "threshold": 6, "severity": "MEDIUM", "service_id": "S2"}))
        .await;
    let idle = app
        .rule(json!({"name": "idle", "metric_type": "PACKET_LOSS", "operator": ">", "threshold": 1.5, "severity": "LOW", "enabled": false}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // latency opens two incidents (S1, S3), buffer one.
    let js = stack.js().await;
    publish(
        &js,
        &[
            sample("S1", "LATENCY_MS", 400.0, "2026-01-01T00:00:00Z"),
            sample("S3", "LATENCY_MS", 300.0, "2026-01-01T00:00:01Z"),
            sample("S2", "BUFFER_RATIO", 9.0, "2026-01-01T00:00:02Z"),
        ],
    )
    .await;
    eventually("three incidents", Duration::from_secs(20), || async {
        (app.incidents("").await.len() == 3).then_some(())
    })
    .await;

    let (status, top) = app.get("/api/rules/stats/top-triggered").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&top), [latency.clone(), buffer.clone(), idle.clone()]);
    assert_eq!(top["data"][0]["trigger_count"], 2);
    assert_eq!(top["meta"]["limit"], 10);
    let (_, first) = app.get("/api/rules/stats/top-triggered?limit=1").await;
    assert_eq!(ids(&first), [latency.as_str()]);
    let (status, _) = app.get("/api/rules/stats/top-triggered?limit=0").await;
    assert_eq!(status, 400);

    for (query, expected) in [
        ("metric_type=BUFFER_RATIO", vec![buffer.clone()]),
        ("service_id=S2", vec![buffer.clone()]),
        ("severity=LOW", vec![idle.clone()]),
        ("enabled=false", vec![idle.clone()]),
        (
            "sort_by=name",
            vec![buffer.clone(), idle.clone(), latency.clone()],
        ),
        (
            "sort_by=severity&sort_dir=desc",
            vec![latency.clone(), buffer.clone(), idle.clone()],
        ),
        (
            "sort_by=trigger_count&sort_dir=desc&limit=1",
            vec![latency.clone()],
        ),
    ] {
        let (status, body) = app.get(&format!("/api/rules?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(ids(&body), expected, "{query}");
    }
    for bad in [
        "severity=URGENT",
        "enabled=yes",
        "sort_by=threshold",
        "department_id=12",
    ] {
        let (status, _) = app.get(&format!("/api/rules?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn incidents_are_filtered_searched_sorted_and_paged() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let (_, video) = app
        .post("/api/departments", &json!({"name": "Video"}))
        .await;
    let video = video["data"]["id"].as_str().unwrap().to_owned();
    let latency = app
        .rule(json!({"name": "Latency above 150 ms", "metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH", "department_id": video}))
        .await;
    app.rule(json!({"name": "Buffering", "metric_type": "BUFFER_RATIO", "operator": ">", "threshold": 6, "severity": "CRITICAL"}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let js = stack.js().await;
    publish(
        &js,
        &[
            sample("checkout-eu", "LATENCY_MS", 400.0, "2026-01-01T00:00:00Z"),
            sample("checkout-us", "LATENCY_MS", 200.0, "2026-01-02T00:00:00Z"),
            sample("player_x", "BUFFER_RATIO", 9.0, "2026-01-03T00:00:00Z"),
        ],
    )
    .await;
    eventually("three incidents", Duration::from_secs(20), || async {
        (app.incidents("").await.len() == 3).then_some(())
    })
    .await;
    let services = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["service_id"].as_str().unwrap().to_owned())
            .collect()
    };

    for (query, expected) in [
        ("", vec!["player_x", "checkout-us", "checkout-eu"]),
        (
            "sort_dir=asc",
            vec!["checkout-eu", "checkout-us", "player_x"],
        ),
        (
            "sort_by=peak_value&sort_dir=desc",
            vec!["checkout-eu", "checkout-us", "player_x"],
        ),
        ("sort_by=severity&sort_dir=desc&limit=1", vec!["player_x"]),
        ("sort_by=service_id&offset=1&limit=1", vec!["checkout-us"]),
        ("offset=3", vec![]),
        ("severity=HIGH", vec!["checkout-us", "checkout-eu"]),
        ("status=OPEN&service_id=checkout-eu", vec!["checkout-eu"]),
        ("status=CLOSED", vec![]),
        (
            &format!("rule_id={latency}") as &str,
            vec!["checkout-us", "checkout-eu"],
        ),
        (
            &format!("department_id={video}"),
            vec!["checkout-us", "checkout-eu"],
        ),
        ("from=2026-01-02T00:00:00Z", vec!["player_x", "checkout-us"]),
        ("to=2026-01-02T00:00:00Z", vec!["checkout-eu"]),
        (
            "from=2026-01-01T12:00:00Z&to=2026-01-02T12:00:00Z",
            vec!["checkout-us"],
        ),
        // Substrings of the service, the rule name or the message, in any case; LIKE
        // wildcards are literal.
        ("search=CHECKOUT", vec!["checkout-us", "checkout-eu"]),
        ("search=buffering", vec!["player_x"]),
        ("search=t_e", vec![]),
        ("search=s%25e", vec![]),
        ("search=R_X", vec!["player_x"]),
        ("search=LATENCY_MS 400", vec!["checkout-eu"]),
        (
            "source=live",
            vec!["player_x", "checkout-us", "checkout-eu"],
        ),
        ("source=backfill", vec![]),
    ] {
        let (status, body) = app.get(&format!("/api/incidents?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(services(&body), expected, "{query}");
        if !query.contains("limit") && !query.contains("offset") {
            assert_eq!(body["meta"]["total"], expected.len(), "{query}");
        }
    }
    let (_, paged) = app.get("/api/incidents?limit=1&offset=1").await;
    assert_eq!(paged["meta"], json!({"total": 3, "limit": 1, "offset": 1}));

    for bad in [
        "status=DONE",
        "severity=high",
        "rule_id=abc",
        "from=yesterday",
        "sort_by=message",
        "sort_dir=sideways",
        "limit=abc",
        "assignee=me",
        "status=OPEN&status=CLOSED",
        "from=-5000-01-01T00:00:00Z",
        "source=replayed",
    ] {
        let (status, body) = app.get(&format!("/api/incidents?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    app.stop().await;
}
