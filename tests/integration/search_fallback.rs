//! With Meilisearch configured but unreachable, nothing is lost and search keeps working: the
//! index consumer's backlog waits in the stream, `/ready` says so, and `/api/search` answers
//! from Postgres. (Nothing here stands in for Meilisearch: the configured address has no
//! server at all. The tests against a real Meilisearch are in tests/search_meili.rs.)

use std::time::Duration;

use crate::support::{eventually, publish, sample, App, Stack};
use serde_json::json;
use store::search::meili::MeiliConfig;
use tracely::config::Role;

#[tokio::test]
async fn search_falls_back_to_postgres_while_meilisearch_is_unreachable() {
    let stack = Stack::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = stack.settings(&Role::ALL);
    settings.meili = Some(MeiliConfig {
        url: format!("http://{closed}"),
        key: Some("a-key".to_owned()),
        index: "incidents".to_owned(),
    });
    let app = App::start_with(settings).await;
    app.rule(json!({"name": "Paycell timeout", "metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH"}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let js = stack.js().await;
    publish(
        &js,
        &[sample(
            "paycell",
            "LATENCY_MS",
            420.0,
            "2026-11-23T10:00:00Z",
        )],
    )
    .await;
    eventually("the incident", Duration::from_secs(20), || async {
        app.incidents("").await.first().cloned()
    })
    .await;

    let (status, body) = app.get("/api/search?q=paycell%20timeout").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["meta"]["engine"], "postgres");
    assert_eq!(body["meta"]["total"], 1);

    let (status, ready) = app.get("/ready").await;
    assert_eq!(
        status, 200,
        "search still works, so the process is ready: {ready}"
    );
    let meili = &ready["checks"]["meilisearch"];
    assert_eq!(meili["ok"], false, "{ready}");
    assert_eq!(meili["state"], "unavailable");
    assert!(meili["error"].is_string());

    // The index consumer has not applied its settings, so the whole backlog waits in the stream:
    // nothing was acked, nothing dead-lettered.
    let incidents = js.get_stream("INCIDENTS").await.unwrap();
    let waiting = incidents.consumer_info("index").await.unwrap();
    assert_eq!(waiting.ack_floor.stream_sequence, 0);
    assert!(waiting.num_pending >= 1, "{waiting:?}");
    let deadletters = js.get_stream("DEADLETTER").await.unwrap();
    assert_eq!(deadletters.cached_info().state.messages, 0);

    // A rename puts nothing on INCIDENTS; the index consumer finds the incidents it touches.
    let incident = app.incidents("").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, before) = store::search::document::touched_by_renames(&app.pool, chrono::Utc::now())
        .await
        .unwrap();
    let (status, body) = app
        .patch(
            "/api/services/paycell",
            &json!({"display_name": "Payments cell"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (touched, after) = store::search::document::touched_by_renames(&app.pool, before)
        .await
        .unwrap();
    assert_eq!(touched, [incident.parse::<uuid::Uuid>().unwrap()]);
    let (untouched, _) = store::search::document::touched_by_renames(
        &app.pool,
        after + chrono::TimeDelta::seconds(1),
    )
    .await
    .unwrap();
    assert!(untouched.is_empty());
    let document = store::search::document::for_incidents(&app.pool, &[touched[0]])
        .await
        .unwrap();
    assert_eq!(document[0].service_name, "Payments cell");
    assert_eq!(document[0].title, "Paycell timeout on Payments cell");
    app.stop().await;
}
