//! Dead letters as an operator meets them: what each carries, `tracely deadletter list` and
//! `show`, and `replay` re-driving a message to the one consumer that gave up on it.

use std::process::Output;
use std::time::Duration;

use crate::support::{eventually, sample, App, Stack};
use async_nats::jetstream;
use async_nats::HeaderMap;
use chrono::{SubsecRound, Utc};
use serde_json::json;
use tokio::process::Command;

const PATIENCE: Duration = Duration::from_secs(30);

fn tracely(stack: &Stack) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracely"));
    cmd.env("TRACELY_DATA_DIR", "/nonexistent-tracely-data-dir")
        .env("TRACELY_NATS_URL", stack.nats.url());
    cmd
}

async fn run(stack: &Stack, args: &[&str]) -> (bool, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = tracely(stack)
        .args(args)
        .output()
        .await
        .expect("running tracely");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

/// Every message in DEADLETTER: (sequence, headers, payload).
async fn letters(js: &jetstream::Context) -> Vec<(u64, HeaderMap, Vec<u8>)> {
    let stream = js.get_stream("DEADLETTER").await.unwrap();
    let state = stream.cached_info().state.clone();
    let mut found = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            found.push((seq, m.headers, m.payload.to_vec()));
        }
    }
    found
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).map(|v| v.as_str()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_re_driven_to_their_consumer_only() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let js = stack.js().await;
    app.rule(
        json!({"service_id": "web", "metric_type": "LATENCY_MS", "operator": ">",
        "threshold": 500, "severity": "HIGH"}),
    )
    .await;

    // A poison message: both consumers of METRICS give up on it.
    let ack = js
        .publish("metrics.web.LATENCY_MS", "not a sample".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let poison_seq = ack.sequence;
    // The stream stores it under its series' partition, read by that partition's consumer.
    let evaluate = crate::support::evaluate_consumer_of("web", "LATENCY_MS");
    let stored = format!("metrics.web.LATENCY_MS.{}", &evaluate["evaluate-".len()..]);
    let found = eventually("two dead letters", PATIENCE, || async {
        let found = letters(&js).await;
        (found.len() == 2).then_some(found)
    })
    .await;
    let mut consumers: Vec<&str> = found
        .iter()
        .map(|(_, h, _)| header(h, "Tracely-Consumer"))
        .collect();
    consumers.sort_unstable();
    assert_eq!(consumers, ["archive", evaluate.as_str()]);
    for (_, headers, payload) in &found {
        assert_eq!(header(headers, "Tracely-Original-Subject"), stored);
        assert_eq!(header(headers, "Tracely-Original-Stream"), "METRICS");
        assert_eq!(
            header(headers, "Tracely-Original-Sequence"),
            poison_seq.to_string()
        );
        assert_eq!(header(headers, "Tracely-Delivered"), "1");
        assert_eq!(header(headers, "Tracely-Reason-Kind"), "decode");
        assert!(!header(headers, "Tracely-Reason").is_empty());
        assert_eq!(payload, b"not a sample");
    }
    let evaluate_letter = found
        .iter()
        .find(|(_, h, _)| header(h, "Tracely-Consumer") == evaluate)
        .unwrap()
        .0;

    let (ok, list) = run(&stack, &["deadletter", "list"]).await;
    assert!(ok, "{list}");
    assert!(
        list.contains(&evaluate) && list.contains("archive") && list.contains("decode"),
        "{list}"
    );
    assert!(list.contains(&format!("METRICS:{poison_seq}")), "{list}");
    let (ok, list) = run(&stack, &["deadletter", "list", "--consumer", "archive"]).await;
    assert!(ok, "{list}");
    assert!(!list.contains("evaluate"), "{list}");
    let (ok, shown) = run(
        &stack,
        &["deadletter", "show", &evaluate_letter.to_string()],
    )
    .await;
    assert!(ok, "{shown}");
    assert!(
        shown.contains(&format!("METRICS seq {poison_seq} on {stored}"))
            && shown.contains(&format!("{evaluate} (delivered 1 times)"))
            && shown.contains("not a sample"),
        "{shown}"
    );
    let (ok, missing) = run(&stack, &["deadletter", "show", "999"]).await;
    assert!(!ok && missing.contains("no dead letter 999"), "{missing}");
    let (ok, refused) = run(&stack, &["deadletter", "replay"]).await;
    assert!(!ok && refused.contains("--all"), "{refused}");

    let (ok, dry) = run(
        &stack,
        &[
            "deadletter",
            "replay",
            "--consumer",
            "evaluate",
            "--dry-run",
        ],
    )
    .await;
    assert!(ok && dry.contains("1 would be re-driven"), "{dry}");
    assert_eq!(letters(&js).await.len(), 2, "a dry run changes nothing");

    // Re-driven while still poison (`evaluate` names every partition's consumer): evaluate
    // gives up on the copy again, and archive, which handled the original, acks it unread.
    let (ok, redriven) = run(&stack, &["deadletter", "replay", "--consumer", "evaluate"]).await;
    assert!(ok, "{redriven}");
    let again = eventually("evaluate's new dead letter", PATIENCE, || async {
        letters(&js)
            .await
            .into_iter()
            .find(|(_, h, _)| header(h, "Tracely-Redrive-Of") == evaluate_letter.to_string())
    })
    .await;
    assert_eq!(header(&again.1, "Tracely-Consumer"), evaluate);
    crate::support::drained(&js, PATIENCE).await;
    let remaining = letters(&js).await;
    assert_eq!(
        remaining.len(),
        2,
        "the old letter is gone, one new: {remaining:?}"
    );
    assert!(remaining.iter().all(|(seq, _, _)| *seq != evaluate_letter));

    // A message a consumer gave up on although it was sound (as after `max_deliver`), once the
    // cause is fixed: re-driven, evaluate opens the incident and archive does not store it.
    // This letter is as written before METRICS was partitioned: the single `evaluate` consumer,
    // the published subject. Its copy is stored in the series' partition, whose consumer takes
    // it as its own.
    let at = Utc::now().trunc_subsecs(3).to_rfc3339();
    let good = sample("web", "LATENCY_MS", 900.0, &at);
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("Tracely-Reason", "gave up after 5 deliveries"),
        ("Tracely-Reason-Kind", "max_deliver"),
        ("Tracely-Original-Subject", "metrics.web.LATENCY_MS"),
        ("Tracely-Original-Stream", "METRICS"),
        ("Tracely-Original-Sequence", "424242"),
        ("Tracely-Consumer", "evaluate"),
        ("Tracely-Delivered", "5"),
    ] {
        headers.insert(name, value);
    }
    let sound = js
        .publish_with_headers(
            "deadletter.METRICS.evaluate",
            headers,
            good.to_msgpack().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let (ok, redriven) = run(&stack, &["deadletter", "replay", &sound.to_string()]).await;
    assert!(ok && redriven.contains("1 re-driven"), "{redriven}");
    let incidents = eventually("the incident", PATIENCE, || async {
        let incidents = app.incidents("&service_id=web").await;
        (!incidents.is_empty()).then_some(incidents)
    })
    .await;
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0]["value"], 900.0);
    crate::support::drained(&js, PATIENCE).await;
    let (_, archived) = app.get("/api/metrics?service_id=web").await;
    assert_eq!(
        archived["meta"]["total"], 0,
        "archive acked the copy unread: {archived}"
    );
    assert!(letters(&js).await.iter().all(|(seq, _, _)| *seq != sound));
    app.stop().await;
}
