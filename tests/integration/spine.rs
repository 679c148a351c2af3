//! The spine end to end: samples on METRICS become incidents in Postgres, served by the API.
//! Every test runs its own nats-server and Postgres.

use std::time::Duration;

use crate::support::{drained, publish, sample, App, Stack};
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_case_through_the_cli_publisher() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;

    let file = stack.path().join("samples.csv");
    std::fs::write(
        &file,
        "service_id,metric_type,value,recorded_at\n\
         S1,LATENCY_MS,180,2026-03-12T09:00:00Z\n\
         S1,PACKET_LOSS,2.1,2026-03-12T09:00:00Z\n\
         S2,BUFFER_RATIO,7.5,2026-03-12T09:05:00Z\n\
         S3,ERROR_RATE,1.9,2026-03-12T09:10:00Z\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tracely"))
        .args(["publish", "--file"])
        .arg(&file)
        .env("TRACELY_NATS_URL", stack.nats.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("published 4 samples: 4 stored, 0 duplicates; 0 rejected"),
        "{stdout}"
    );

    drained(&stack.js().await, WAIT).await;
    let found = app.incident_kinds().await;
    assert_eq!(
        found,
        [
            ("S1".into(), "LATENCY_MS".into(), "HIGH".into()),
            ("S2".into(), "BUFFER_RATIO".into(), "MEDIUM".into()),
        ]
    );

    let (_, services) = app.get("/api/services").await;
    assert_eq!(services["meta"]["total"], 3, "{services}");

    let incident = &app.incidents("&service_id=S1").await[0];
    let (status, detail) = app
        .get(&format!(
            "/api/incidents/{}",
            incident["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(detail["data"]["status"], "OPEN");
    assert_eq!(detail["data"]["value"], 180.0);
    assert_eq!(detail["data"]["opened_at"], "2026-03-12T09:00:00Z");
    assert_eq!(detail["data"]["source"], "live");
    assert_eq!(detail["data"]["events"][0]["kind"], "CREATED");

    let (_, rules) = app.get("/api/rules").await;
    let triggered: Vec<i64> = rules["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trigger_count"].as_i64().unwrap())
        .collect();
    assert_eq!(triggered, [1, 0, 1]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_violations_open_one_incident() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    let samples: Vec<_> = (0..1000)
        .map(|i| {
            let mut s = sample(
                "S1",
                "LATENCY_MS",
                151.0 + (i % 97) as f64,
                "2026-03-12T09:00:00Z",
            );
            s.recorded_at += chrono::Duration::seconds(i);
            s
        })
        .collect();
    publish(&stack.js().await, &samples).await;
    drained(&stack.js().await, WAIT).await;

    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["violation_count"], 1000);
    assert_eq!(incidents[0]["peak_value"], 247.0);
    assert_eq!(incidents[0]["value"], 151.0);
    assert_eq!(incidents[0]["last_violation_at"], "2026-03-12T09:16:39Z");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_between_violations_opens_a_second_incident() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    publish(
        &stack.js().await,
        &[
            sample("S1", "LATENCY_MS", 180.0, "2026-03-12T09:00:00Z"),
            sample("S1", "LATENCY_MS", 90.0, "2026-03-12T09:01:00Z"),
            sample("S1", "LATENCY_MS", 200.0, "2026-03-12T09:02:00Z"),
        ],
    )
    .await;
    drained(&stack.js().await, WAIT).await;

    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 2);
    // Newest first.
    assert_eq!(incidents[0]["opened_at"], "2026-03-12T09:02:00Z");
    assert_eq!(incidents[0]["resolved_at"], serde_json::Value::Null);
    assert_eq!(incidents[1]["opened_at"], "2026-03-12T09:00:00Z");
    assert_eq!(incidents[1]["resolved_at"], "2026-03-12T09:01:00Z");
    let (_, detail) = app
        .get(&format!(
            "/api/incidents/{}",
            incidents[1]["id"].as_str().unwrap()
        ))
        .await;
    let kinds: Vec<&str> = detail["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["CREATED", "RESOLVED"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sample_id_twice_counts_once() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    let mut s = sample("S1", "LATENCY_MS", 180.0, "2026-03-12T09:00:00Z");
    s.id = Some("s1-latency-0900".into());
    let js = stack.js().await;
    let first = api::publish::publish_samples(&js, std::slice::from_ref(&s))
        .await
        .unwrap();
    let second = api::publish::publish_samples(&js, std::slice::from_ref(&s))
        .await
        .unwrap();
    assert_eq!((first.stored, first.duplicates), (1, 0));
    assert_eq!((second.stored, second.duplicates), (0, 1));
    // And once more through the HTTP API.
    let (status, body) = app
        .post("/api/metrics", &json!({"service_id": "S1", "metric_type": "LATENCY_MS", "value": 180, "recorded_at": "2026-03-12T09:00:00Z", "id": "s1-latency-0900"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["duplicates"], 1);
    drained(&js, WAIT).await;

    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0]["violation_count"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_later_samples_still_count() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    let js = stack.js().await;
    let nan = rmp_serde::to_vec_named(&json!({
        "service_id": "S1", "metric_type": "LATENCY_MS", "value": 1.0, "recorded_at": 0
    }))
    .unwrap();
    // Patch the float64 1.0 into a NaN in place: JSON cannot carry one.
    let nan = replace_f64(nan, 1.0, f64::NAN);
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("metrics.S1.LATENCY_MS", vec![0xc1, 0xff, 0x00]),
        ("metrics.S1.LATENCY_MS", nan),
        (
            "metrics.S1",
            sample("S1", "LATENCY_MS", 999.0, "2026-03-12T09:00:00Z").to_msgpack(),
        ),
        (
            "metrics.S2.LATENCY_MS",
            sample("S1", "LATENCY_MS", 999.0, "2026-03-12T09:00:00Z").to_msgpack(),
        ),
    ];
    for (subject, payload) in &poison {
        js.send_publish(
            subject.to_string(),
            PublishMessage::build().payload(payload.clone().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    publish(
        &js,
        &[sample("S1", "LATENCY_MS", 180.0, "2026-03-12T09:00:01Z")],
    )
    .await;
    drained(&js, WAIT).await;

    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0]["value"], 180.0);

    // Both consumers of METRICS decode with the same rules. Archive reads every subject and
    // dead-letters all four; evaluate reads the stored form `metrics.<service>.<metric>.<n>`,
    // which a subject without a metric type never takes, so it dead-letters three, each from
    // the partition of its subject.
    let dlq = js.get_stream("DEADLETTER").await.unwrap();
    let consumer = dlq
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "deadletter.METRICS.*".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut letters = Vec::new();
    let mut messages = consumer.messages().await.unwrap().take(7);
    while let Some(msg) = messages.next().await {
        let msg = msg.unwrap();
        let h = msg.headers.clone().unwrap();
        let get = |name: &str| {
            h.get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        assert!(!get("Tracely-Reason").is_empty());
        assert_eq!(
            msg.subject.as_str(),
            schemas::subject::deadletter_subject("METRICS", &get("Tracely-Consumer"))
        );
        letters.push((
            get("Tracely-Consumer"),
            get("Tracely-Original-Sequence").parse::<u64>().unwrap(),
            get("Tracely-Original-Subject"),
            get("Tracely-Reason-Kind"),
            get("Tracely-Reason"),
        ));
    }
    letters.sort_by_key(|l| l.1);
    let by = |reader: &str| -> Vec<_> {
        letters
            .iter()
            .filter(|l| l.0 == reader || (reader == "evaluate" && l.0.starts_with("evaluate-")))
            .cloned()
            .collect()
    };
    let archive = by("archive");
    assert_eq!(archive.len(), 4, "{letters:?}");
    assert_eq!(archive[0].3, "decode");
    assert_eq!(archive[1].3, "invalid");
    assert!(archive[1].4.contains("value"), "{:?}", archive[1]);
    assert_eq!(
        (archive[2].2.as_str(), archive[2].3.as_str()),
        ("metrics.S1", "subject")
    );
    assert_eq!(archive[3].3, "subject_mismatch");
    let evaluate = by("evaluate");
    let kinds: Vec<&str> = evaluate.iter().map(|l| l.3.as_str()).collect();
    assert_eq!(
        kinds,
        ["decode", "invalid", "subject_mismatch"],
        "{letters:?}"
    );
    let partition_of = |subject: &str| {
        let (service, metric, _) = schemas::subject::parse_stored_metrics_subject(subject).unwrap();
        crate::support::evaluate_consumer_of(service, metric)
    };
    for letter in &evaluate {
        assert_eq!(letter.0, partition_of(&letter.2), "{letter:?}");
        assert!(letter
            .2
            .ends_with(&format!(".{}", &letter.0["evaluate-".len()..])));
    }
    let archived: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_samples")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(archived, 1, "only the valid sample is archived");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_changes_take_effect_within_a_second() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let js = stack.js().await;
    let rule = app
        .rule(json!({"metric_type": "ERROR_RATE", "operator": ">", "threshold": 5, "severity": "LOW"}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish(
        &js,
        &[sample("S1", "ERROR_RATE", 3.0, "2026-03-12T09:00:00Z")],
    )
    .await;
    drained(&js, WAIT).await;
    assert!(app.incidents("").await.is_empty());

    let (status, body) = app
        .patch(&format!("/api/rules/{rule}"), &json!({"threshold": 2}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["threshold"], 2.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish(
        &js,
        &[sample("S1", "ERROR_RATE", 3.0, "2026-03-12T09:01:00Z")],
    )
    .await;
    drained(&js, WAIT).await;
    let incidents = app.incidents("").await;
    assert_eq!(
        incidents.len(),
        1,
        "the lowered threshold was not in effect after 1 s"
    );
    assert_eq!(incidents[0]["opened_at"], "2026-03-12T09:01:00Z");

    // Disabling stops new episodes.
    let (status, _) = app
        .patch(&format!("/api/rules/{rule}"), &json!({"enabled": false}))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish(
        &js,
        &[sample("S2", "ERROR_RATE", 9.0, "2026-03-12T09:02:00Z")],
    )
    .await;
    drained(&js, WAIT).await;
    assert_eq!(
        app.incidents("").await.len(),
        1,
        "a disabled rule opened an incident"
    );
    app.stop().await;
}

/// Replaces the first big-endian float64 equal to `from` in a MessagePack body.
fn replace_f64(mut body: Vec<u8>, from: f64, to: f64) -> Vec<u8> {
    let needle = [&[0xcb][..], &from.to_be_bytes()].concat();
    let at = body
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the float is encoded as float64");
    body[at + 1..at + 9].copy_from_slice(&to.to_be_bytes());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_narrow_the_incident_list() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    app.seed_rules().await;
    publish(
        &stack.js().await,
        &[
            sample("S1", "LATENCY_MS", 180.0, "2026-03-12T09:00:00Z"),
            sample("S2", "LATENCY_MS", 190.0, "2026-03-12T09:00:00Z"),
            sample("S2", "BUFFER_RATIO", 7.5, "2026-03-12T09:05:00Z"),
        ],
    )
    .await;
    drained(&stack.js().await, WAIT).await;
    assert_eq!(app.incidents("&service_id=S2").await.len(), 2);
    assert_eq!(app.incidents("&severity=MEDIUM").await.len(), 1);
    assert_eq!(app.incidents("&status=OPEN&severity=HIGH").await.len(), 2);
    assert_eq!(app.incidents("&status=CLOSED").await.len(), 0);
    let (_, page) = app.get("/api/incidents?limit=1&offset=1").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["meta"], json!({"total": 3, "limit": 1, "offset": 1}));
    let rule_id = app.incidents("&severity=MEDIUM").await[0]["rule_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.incidents(&format!("&rule_id={rule_id}")).await.len(), 1);
    app.stop().await;
}
