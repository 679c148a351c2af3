//! Working incidents over the API: the status lifecycle, severity and assignee, comments and
//! the timeline, and how each change reaches the INCIDENTS stream through the outbox, even
//! when NATS is down while it is made. Every test runs its own nats-server and Postgres.

use std::time::Duration;

use crate::support::{decode, drained, eventually, publish, sample, App, KeyRole, Stack};
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use schemas::{ActivityKind, IncidentActivity};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Opens a LATENCY_MS incident on `service` with the seed rules and returns its id.
async fn open_incident(stack: &Stack, app: &App, service: &str) -> String {
    publish(
        &stack.js().await,
        &[sample(service, "LATENCY_MS", 180.0, "2026-03-12T09:00:00Z")],
    )
    .await;
    eventually("the incident to be recorded", WAIT, || async {
        let found = app.incidents(&format!("&service_id={service}")).await;
        found.first().map(|i| i["id"].as_str().unwrap().to_owned())
    })
    .await
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    decode(request.send().await.expect("sending a request")).await
}

fn actor(role: KeyRole) -> String {
    format!("key:test-{role}")
}

/// The timeline, oldest first.
async fn timeline(app: &App, id: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/incidents/{id}/events?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

fn assert_error(response: &(u16, Value), status: u16, code: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["error"]["code"], code, "{}", response.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_moves_follow_the_lifecycle_and_every_change_is_on_the_timeline() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    let id = open_incident(&stack, &app, "S1").await;
    let path = app.url(&format!("/api/incidents/{id}"));
    let operator = app.client(KeyRole::Operator).await;
    let patch = |body: Value| send(operator.patch(&path).json(&body));

    let (status, moved) = patch(json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(status, 200, "{moved}");
    let moved = &moved["data"];
    assert_eq!(moved["status"], "IN_PROGRESS");
    assert_eq!(moved["id"], id.as_str());
    assert!(moved["in_progress_at"].is_string(), "{moved}");
    assert!(moved["acknowledged_at"].is_string(), "{moved}");
    assert_eq!(moved["closed_at"], Value::Null);
    let acknowledged_at = moved["acknowledged_at"].clone();

    let refused = patch(json!({"status": "OPEN"})).await;
    assert_error(&refused, 409, "conflict");
    let message = refused.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("from IN_PROGRESS to OPEN"), "{message}");

    let (status, same) = patch(json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["data"]["updated_at"], moved["updated_at"], "a no-op");

    let (status, closed) = patch(json!({"status": "CLOSED"})).await;
    assert_eq!(status, 200, "{closed}");
    assert!(closed["data"]["closed_at"].is_string(), "{closed}");

    let refused = patch(json!({"status": "IN_PROGRESS"})).await;
    assert_error(&refused, 409, "conflict");
    let message = refused.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("from CLOSED to IN_PROGRESS"), "{message}");

    let (status, reopened) = patch(json!({"status": "OPEN"})).await;
    assert_eq!(status, 200, "{reopened}");
    assert_eq!(reopened["data"]["closed_at"], Value::Null);
    assert_eq!(reopened["data"]["acknowledged_at"], acknowledged_at);

    let (status, closed) = patch(json!({"status": "CLOSED"})).await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["data"]["status"], "CLOSED");

    // Severity and assignee, alone and together; the assignee is trimmed.
    let (status, body) = patch(json!({"severity": "LOW", "assignee": "  ana  "})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["data"]["severity"], &body["data"]["assignee"]),
        (&json!("LOW"), &json!("ana"))
    );
    let (status, body) = patch(json!({"assignee": null})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["assignee"], Value::Null);
    let (_, detail) = app.get(&format!("/api/incidents/{id}")).await;
    assert_eq!(detail["data"]["assignee"], Value::Null);
    assert_eq!(detail["data"]["severity"], "LOW");

    let events = timeline(&app, &id).await;
    assert_eq!(
        kinds(&events),
        [
            "CREATED",
            "STATUS_CHANGED",
            "STATUS_CHANGED",
            "STATUS_CHANGED",
            "STATUS_CHANGED",
            "SEVERITY_CHANGED",
            "ASSIGNED",
            "ASSIGNED"
        ]
    );
    let moves: Vec<(Value, Value)> = events[1..]
        .iter()
        .map(|e| (e["data"]["from"].clone(), e["data"]["to"].clone()))
        .collect();
    assert_eq!(
        moves,
        [
            (json!("OPEN"), json!("IN_PROGRESS")),
            (json!("IN_PROGRESS"), json!("CLOSED")),
            (json!("CLOSED"), json!("OPEN")),
            (json!("OPEN"), json!("CLOSED")),
            (json!("HIGH"), json!("LOW")),
            (Value::Null, json!("ana")),
            (json!("ana"), Value::Null),
        ]
    );
    assert_eq!(events[0]["actor"], "pipeline");
    for e in &events[1..] {
        assert_eq!(e["actor"], actor(KeyRole::Operator).as_str(), "{e}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_what_is_wrong_and_change_nothing() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    let id = open_incident(&stack, &app, "S1").await;
    let incident = format!("/api/incidents/{id}");
    let unknown = format!("/api/incidents/{}", uuid::Uuid::new_v4());

    for (body, field) in [
        (json!({}), Value::Null),
        (json!({"colour": "red"}), json!("colour")),
        (json!({"status": "DONE"}), json!("status")),
        (json!({"status": null}), json!("status")),
        (json!({"severity": 3}), json!("severity")),
        (json!({"assignee": "   "}), json!("assignee")),
        (json!({"assignee": "x".repeat(201)}), json!("assignee")),
        (json!({"assignee": 7}), json!("assignee")),
    ] {
        let response = app.patch(&incident, &body).await;
        assert_error(&response, 422, "validation_failed");
        assert_eq!(response.1["error"]["details"][0]["field"], field, "{body}");
    }
    let (status, body) = app
        .patch(&incident, &json!({"assignee": "x".repeat(200)}))
        .await;
    assert_eq!(status, 200, "200 characters are allowed: {body}");

    let comments = format!("{incident}/comments");
    for body in [
        json!({}),
        json!({"body": ""}),
        json!({"body": " \n\t "}),
        json!({"body": "x".repeat(10_001)}),
        json!({"body": "fine", "extra": 1}),
        json!({"body": null}),
    ] {
        let response = app.post(&comments, &body).await;
        assert_error(&response, 422, "validation_failed");
    }

    // Viewers read but cannot change.
    let viewer = app.client(KeyRole::Viewer).await;
    let forbidden = [
        send(
            viewer
                .patch(app.url(&incident))
                .json(&json!({"status": "CLOSED"})),
        )
        .await,
        send(viewer.post(app.url(&comments)).json(&json!({"body": "hi"}))).await,
        send(viewer.delete(app.url(&format!("{comments}/{}", uuid::Uuid::new_v4())))).await,
    ];
    for response in &forbidden {
        assert_error(response, 403, "forbidden");
    }
    let (status, _) = send(viewer.get(app.url(&comments))).await;
    assert_eq!(status, 200);
    let (status, _) = send(viewer.get(app.url(&format!("{incident}/events")))).await;
    assert_eq!(status, 200);

    // Unknown incidents and comments.
    assert_error(
        &app.patch(&unknown, &json!({"status": "CLOSED"})).await,
        404,
        "not_found",
    );
    assert_error(
        &app.post(&format!("{unknown}/comments"), &json!({"body": "hi"}))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &app.get(&format!("{unknown}/comments")).await,
        404,
        "not_found",
    );
    assert_error(
        &app.get(&format!("{unknown}/events")).await,
        404,
        "not_found",
    );
    assert_error(
        &send(
            app.http
                .delete(app.url(&format!("{comments}/{}", uuid::Uuid::new_v4()))),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &app.patch("/api/incidents/nope", &json!({"status": "CLOSED"}))
            .await,
        400,
        "bad_request",
    );
    let bad_comment = send(app.http.delete(app.url(&format!("{comments}/nope")))).await;
    assert_error(&bad_comment, 400, "bad_request");
    assert_eq!(bad_comment.1["error"]["details"][0]["field"], "comment_id");

    // Query strings.
    for query in [
        "comments?colour=red",
        "comments?sort_by=body",
        "comments?sort_dir=sideways",
        "comments?limit=0",
        "events?sort_by=kind",
        "events?page=2",
    ] {
        let response = app.get(&format!("{incident}/{query}")).await;
        assert_error(&response, 400, "bad_request");
    }

    // The document describes the new operations and their bodies.
    let (_, doc) = app.get("/api/openapi.json").await;
    let paths = &doc["paths"];
    let patch = &paths["/api/incidents/{id}"]["patch"];
    assert!(patch["responses"]["409"].is_object(), "{patch}");
    assert!(paths["/api/incidents/{id}/comments"]["post"].is_object());
    assert!(paths["/api/incidents/{id}/comments/{comment_id}"]["delete"].is_object());
    assert!(paths["/api/incidents/{id}/events"]["get"].is_object());
    let schema = &doc["components"]["schemas"];
    assert_eq!(schema["IncidentPatch"]["additionalProperties"], false);
    assert!(schema["IncidentRecord"]["properties"]["assignee"].is_object());

    // Only the one valid patch left a trace.
    let events = timeline(&app, &id).await;
    assert_eq!(kinds(&events), ["CREATED", "ASSIGNED"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_are_listed_in_pages_and_deleted_with_a_trace() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    let id = open_incident(&stack, &app, "S1").await;
    let other = open_incident(&stack, &app, "S2").await;
    let comments = format!("/api/incidents/{id}/comments");
    let operator = app.client(KeyRole::Operator).await;

    let mut ids = Vec::new();
    for text in ["first", "  second  ", "third"] {
        let (status, body) = send(
            operator
                .post(app.url(&comments))
                .json(&json!({"body": text})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["data"]["body"], text.trim());
        assert_eq!(body["data"]["author"], actor(KeyRole::Operator).as_str());
        assert_eq!(body["data"]["incident_id"], id.as_str());
        ids.push(body["data"]["id"].as_str().unwrap().to_owned());
    }
    let app_ref = &app;
    let page = |query: &str| {
        let path = format!("{comments}{query}");
        async move { app_ref.get(&path).await }
    };
    let bodies = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["body"].as_str().unwrap().to_owned())
            .collect()
    };

    let (status, all) = page("").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(bodies(&all), ["first", "second", "third"], "oldest first");
    assert_eq!(all["meta"], json!({"total": 3, "limit": 50, "offset": 0}));
    let (_, one) = page("?limit=1&offset=1").await;
    assert_eq!(bodies(&one), ["second"]);
    assert_eq!(one["meta"], json!({"total": 3, "limit": 1, "offset": 1}));
    let (status, past) = page("?offset=5").await;
    assert_eq!(status, 200);
    assert_eq!(past["data"], json!([]));
    assert_eq!(past["meta"]["total"], 3);
    let (_, newest) = page("?sort_by=created_at&sort_dir=desc&limit=2").await;
    assert_eq!(bodies(&newest), ["third", "second"]);
    let (_, none) = app.get(&format!("/api/incidents/{other}/comments")).await;
    assert_eq!(none["meta"]["total"], 0);

    // A comment is deleted only through its own incident.
    let (status, body) =
        send(operator.delete(app.url(&format!("/api/incidents/{other}/comments/{}", ids[1]))))
            .await;
    assert_eq!(status, 404, "{body}");
    let delete = app.url(&format!("{comments}/{}", ids[1]));
    let (status, body) = send(operator.delete(&delete)).await;
    assert_eq!((status, body), (204, Value::Null));
    assert_error(&send(operator.delete(&delete)).await, 404, "not_found");
    let (_, left) = page("").await;
    assert_eq!(bodies(&left), ["first", "third"]);
    assert_eq!(left["meta"]["total"], 2);

    let events = timeline(&app, &id).await;
    assert_eq!(
        kinds(&events),
        [
            "CREATED",
            "COMMENTED",
            "COMMENTED",
            "COMMENTED",
            "COMMENT_DELETED"
        ]
    );
    // The deleted comment's text leaves the timeline; that it was made stays.
    assert_eq!(events[2]["data"], json!({"comment_id": ids[1]}));
    assert_eq!(events[3]["data"]["body"], "third");
    assert_eq!(events[4]["data"], json!({"comment_id": ids[1]}));
    assert_eq!(events[4]["actor"], actor(KeyRole::Operator).as_str());

    // The timeline pages like any list.
    let events_path = format!("/api/incidents/{id}/events");
    let (_, second) = app.get(&format!("{events_path}?limit=1&offset=1")).await;
    assert_eq!(second["meta"], json!({"total": 5, "limit": 1, "offset": 1}));
    assert_eq!(second["data"][0]["kind"], "COMMENTED");
    let (_, past) = app.get(&format!("{events_path}?offset=9")).await;
    assert_eq!(
        (&past["data"], &past["meta"]["total"]),
        (&json!([]), &json!(5))
    );
    let (_, latest) = app
        .get(&format!("{events_path}?sort_by=at&sort_dir=desc&limit=1"))
        .await;
    assert_eq!(latest["data"][0]["kind"], "COMMENT_DELETED");
    app.stop().await;
}

/// A consumer of everything on INCIDENTS under `filter`, from the start.
async fn activity_consumer(
    js: &jetstream::Context,
    filter: &str,
) -> jetstream::consumer::PullConsumer {
    js.get_stream("INCIDENTS")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn pending(consumer: &mut jetstream::consumer::PullConsumer) -> u64 {
    consumer.info().await.unwrap().num_pending
}

async fn outbox_unpublished(app: &App) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The messages under `filter`, decoded, with their `Nats-Msg-Id`.
async fn activities(js: &jetstream::Context, filter: &str) -> Vec<(String, IncidentActivity)> {
    let mut consumer = activity_consumer(js, filter).await;
    let count = pending(&mut consumer).await as usize;
    if count == 0 {
        return Vec::new();
    }
    let messages: Vec<_> = consumer
        .fetch()
        .max_messages(count)
        .messages()
        .await
        .unwrap()
        .collect()
        .await;
    messages
        .into_iter()
        .map(|m| {
            let m = m.unwrap();
            let msg_id = m.headers.as_ref().unwrap().get("Nats-Msg-Id").unwrap();
            (
                msg_id.as_str().to_owned(),
                IncidentActivity::from_msgpack(&m.payload).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_incidents_stream_once_and_record_leaves_them_alone() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    let id = open_incident(&stack, &app, "S1").await;
    let js = stack.js().await;
    let path = format!("/api/incidents/{id}");

    let (status, body) = app.patch(&path, &json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, comment) = app
        .post(&format!("{path}/comments"), &json!({"body": "looking"}))
        .await;
    assert_eq!(status, 201, "{comment}");
    let comment_id = comment["data"]["id"].as_str().unwrap().to_owned();
    let (status, _) = send(
        app.http
            .delete(app.url(&format!("{path}/comments/{comment_id}"))),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .patch(&path, &json!({"severity": "CRITICAL", "assignee": "ana"}))
        .await;
    assert_eq!(status, 200);

    eventually("the outbox to be relayed", WAIT, || async {
        (outbox_unpublished(&app).await == 0).then_some(())
    })
    .await;
    // Two more relay rounds: nothing is sent twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moved = activities(&js, "incidents.*.status_changed").await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    let (msg_id, activity) = &moved[0];
    let events = timeline(&app, &id).await;
    let event = events
        .iter()
        .find(|e| e["kind"] == "STATUS_CHANGED")
        .unwrap();
    assert_eq!(activity.id.to_string(), event["id"].as_str().unwrap());
    assert_eq!(msg_id, &activity.id.to_string());
    assert_eq!(activity.incident_id.to_string(), id);
    assert_eq!(activity.service_id, "S1");
    assert_eq!(activity.kind, ActivityKind::StatusChanged);
    assert_eq!(activity.actor, actor(KeyRole::Admin));
    assert_eq!(
        (activity.from.as_deref(), activity.to.as_deref()),
        (Some("OPEN"), Some("IN_PROGRESS"))
    );
    assert_eq!(
        serde_json::to_value(activity.at).unwrap(),
        event["at"],
        "the message and the timeline agree on the time"
    );

    let commented = activities(&js, "incidents.S1.commented").await;
    assert_eq!(commented.len(), 1);
    assert_eq!(commented[0].1.body.as_deref(), Some("looking"));
    assert_eq!(
        commented[0].1.comment_id.map(|c| c.to_string()),
        Some(comment_id.clone())
    );
    let deleted = activities(&js, "incidents.S1.comment_deleted").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].1.body, None);
    assert_eq!(
        activities(&js, "incidents.*.severity_changed").await.len(),
        1
    );
    let assigned = activities(&js, "incidents.*.assigned").await;
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].1.to.as_deref(), Some("ana"));

    // record reads only the pipeline's transitions: nothing was dead-lettered.
    drained(&js, WAIT).await;
    let mut dlq = js.get_stream("DEADLETTER").await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 0);
    let (_, detail) = app.get(&path).await;
    assert_eq!(detail["data"]["status"], "IN_PROGRESS");

    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tracely_outbox_published_total"),
        "{metrics}"
    );
    assert!(metrics.contains("tracely_outbox_pending"), "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_nats_is_down_is_published_when_it_returns() {
    let mut stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    let id = open_incident(&stack, &app, "S1").await;

    stack.nats.shut_down().await.unwrap();
    let (status, body) = app
        .patch(
            &format!("/api/incidents/{id}"),
            &json!({"status": "CLOSED"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "CLOSED");
    // The relay tries and fails a few times meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(outbox_unpublished(&app).await, 1);

    stack.nats.restart().await.unwrap();
    let js = stack.js().await;
    let arrived = eventually("the change to be published", WAIT, || async {
        let found = activities(&js, "incidents.*.status_changed").await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(arrived[0].1.to.as_deref(), Some("CLOSED"));
    eventually("the outbox to be relayed", WAIT, || async {
        (outbox_unpublished(&app).await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = activities(&js, "incidents.*.status_changed").await;
    assert_eq!(all.len(), 1, "exactly once: {all:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_closes_auto_resolving_incidents_but_keeps_a_persons_close() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.rule(json!({"metric_type": "ERROR_RATE", "operator": ">", "threshold": 1, "severity": "LOW", "auto_resolve": true}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let js = stack.js().await;
    publish(
        &js,
        &[
            sample("S1", "ERROR_RATE", 2.0, "2026-03-12T09:00:00Z"),
            sample("S2", "ERROR_RATE", 2.0, "2026-03-12T09:00:00Z"),
        ],
    )
    .await;
    drained(&js, WAIT).await;
    let id = |service: &str| {
        let service = service.to_owned();
        let app = &app;
        async move {
            app.incidents(&format!("&service_id={service}")).await[0]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (s1, s2) = (id("S1").await, id("S2").await);
    let (status, closed) = app
        .patch(
            &format!("/api/incidents/{s1}"),
            &json!({"status": "CLOSED"}),
        )
        .await;
    assert_eq!(status, 200, "{closed}");
    let (status, _) = app
        .patch(
            &format!("/api/incidents/{s2}"),
            &json!({"status": "IN_PROGRESS"}),
        )
        .await;
    assert_eq!(status, 200);

    publish(
        &js,
        &[
            sample("S1", "ERROR_RATE", 0.5, "2026-03-12T09:01:00Z"),
            sample("S2", "ERROR_RATE", 0.5, "2026-03-12T09:01:00Z"),
        ],
    )
    .await;
    drained(&js, WAIT).await;
    let (_, s1) = app.get(&format!("/api/incidents/{s1}")).await;
    assert_eq!(s1["data"]["status"], "CLOSED");
    assert_eq!(s1["data"]["resolved_at"], "2026-03-12T09:01:00Z");
    assert_eq!(
        s1["data"]["closed_at"], closed["data"]["closed_at"],
        "closed by a person first"
    );
    let (_, s2) = app.get(&format!("/api/incidents/{s2}")).await;
    assert_eq!(s2["data"]["status"], "CLOSED");
    assert_eq!(s2["data"]["closed_at"], "2026-03-12T09:01:00Z");
    app.stop().await;
}
