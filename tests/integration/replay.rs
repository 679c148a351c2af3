//! `tracely replay` against real nats-server and Postgres: a backfill of a rule added after the
//! fact finds exactly the incidents a live run with the rule from the start opened, re-running
//! it changes nothing, a dry run writes nothing, a replay over what the live pipeline already
//! saw duplicates none of its incidents, and bad ranges get clear errors.

use std::process::Output;
use std::time::Duration;

use crate::support::{drained, incidents_stream_last, publish, App, Stack};
use async_nats::jetstream;
use chrono::{DateTime, Duration as Span, DurationRound, Utc};
use schemas::MetricSample;
use serde_json::json;
use sqlx::PgPool;
use tokio::process::Command;
use tracely::config::Role;

const SERVICES: usize = 20;
const MINUTES: i64 = 24 * 60;
/// Short, so the live run's last windows close soon after publishing; the replays are told
/// the same.
const LATENESS_SECS: u64 = 2;

fn day_start() -> DateTime<Utc> {
    (Utc::now() - Span::days(2))
        .duration_trunc(Span::days(1))
        .unwrap()
}

/// A day of LATENCY_MS, one sample a minute for each of 20 services, in time order across
/// services as live publishers would send them. Each service has two violations of different
/// lengths, a lone spike that does not move the 5-minute average past the threshold, and the
/// last service is still violating when the day ends.
fn samples(start: DateTime<Utc>) -> Vec<MetricSample> {
    let mut out = Vec::with_capacity(SERVICES * MINUTES as usize);
    for m in 0..MINUTES {
        for s in 0..SERVICES {
            let si = s as i64;
            let first = (si * 67 + 100) % 1300;
            let second = (si * 131 + 700) % 1300;
            let in_episode = (first..first + 10 + si % 7).contains(&m)
                || (second..second + 4 + si % 5).contains(&m)
                || (s == SERVICES - 1 && m >= MINUTES - 12);
            let value = if in_episode {
                600.0 + (m % 7) as f64 * 10.0
            } else if m == (si * 53 + 400) % 1400 {
                700.0
            } else {
                100.0 + ((si * 7 + m * 13) % 50) as f64
            };
            out.push(MetricSample {
                service_id: format!("S{s:02}"),
                metric_type: "LATENCY_MS".into(),
                value,
                recorded_at: start + Span::minutes(m),
                id: None,
                labels: Default::default(),
            });
        }
    }
    out
}

fn rule_body(enabled: bool) -> serde_json::Value {
    json!({
        "metric_type": "LATENCY_MS", "aggregation": "avg", "window": "5m",
        "operator": ">", "threshold": 300, "for": "2m", "clear_for": "3m", "severity": "HIGH",
        "enabled": enabled
    })
}

fn settings(stack: &Stack) -> tracely::startup::Settings {
    let mut settings = stack.settings(&Role::ALL);
    settings.allowed_lateness = Duration::from_secs(LATENESS_SECS);
    settings
}

async fn replay(stack: &Stack, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_tracely"))
        .arg("replay")
        .args(args)
        .env("TRACELY_NATS_URL", stack.nats.url())
        .env("DATABASE_URL", &stack.database_url)
        .env("TRACELY_ALLOWED_LATENESS_SECS", LATENESS_SECS.to_string())
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("running tracely replay");
    eprintln!(
        "tracely replay {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every incident as the comparison needs it, by id.
type Row = (
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    f64,
    f64,
    i64,
    String,
);

async fn incidents(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "SELECT id::text, opened_at, last_violation_at, resolved_at, value, peak_value,
                violation_count, source
         FROM incidents ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every column of every incident, timeline event and rule, as text: what "nothing changed"
/// compares.
async fn everything(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT t::text FROM (
             SELECT row_to_json(i)::text AS t FROM incidents i
             UNION ALL SELECT row_to_json(e)::text FROM incident_events e
             UNION ALL SELECT row_to_json(r)::text FROM rules r
         ) x ORDER BY t",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until the live run has settled: consumers drained, the last windows closed by idle
/// time, and the incidents unchanged for a while.
async fn settled(js: &jetstream::Context, pool: &PgPool) -> Vec<Row> {
    drained(js, Duration::from_secs(120)).await;
    let mut last = incidents(pool).await;
    let mut stable = 0;
    while stable < 4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drained(js, Duration::from_secs(60)).await;
        let now = incidents(pool).await;
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_equals_a_live_run_and_re_running_changes_nothing() {
    let start = day_start();
    let data = samples(start);

    // The live run: the rule exists before the first sample.
    let live_stack = Stack::start().await;
    let live = App::start_with(settings(&live_stack)).await;
    let rule_id = live.rule(rule_body(true)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let live_js = live_stack.js().await;
    publish(&live_js, &data).await;
    let live_incidents = settled(&live_js, &live.pool).await;
    assert!(
        live_incidents.len() >= 2 * SERVICES,
        "the data should open at least two incidents per service: {live_incidents:?}"
    );
    assert!(
        live_incidents.iter().any(|i| i.3.is_none()),
        "one incident should still be open at the end of the day"
    );

    // The backfill: samples first, with no rules; the rule is added afterwards, disabled while
    // it is tried on history, with the same id so that the incident ids can be compared.
    let stack = Stack::start().await;
    let app = App::start_with(settings(&stack)).await;
    let js = stack.js().await;
    publish(&js, &data).await;
    drained(&js, Duration::from_secs(120)).await;
    let added = app.rule(rule_body(false)).await;
    sqlx::query("UPDATE rules SET id = $1::uuid WHERE id = $2::uuid")
        .bind(&rule_id)
        .bind(&added)
        .execute(&app.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(incidents(&app.pool).await.is_empty());
    let from = (start - Span::hours(1)).to_rfc3339();

    // A dry run lists exactly the live incidents and writes nothing.
    let before = everything(&app.pool).await;
    let stream_before = incidents_stream_last(&js).await;
    let dry = replay(&stack, &["--from", &from, "--rule", &rule_id, "--dry-run"]).await;
    assert!(dry.status.success());
    let table = text(&dry.stdout);
    for row in &live_incidents {
        assert!(table.contains(&row.0), "dry run misses {}", row.0);
    }
    assert!(
        table.contains(&format!("{} incidents would open", live_incidents.len())),
        "{table}"
    );
    assert!(text(&dry.stderr).contains("older history is gone"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        everything(&app.pool).await,
        before,
        "a dry run wrote something"
    );
    assert_eq!(incidents_stream_last(&js).await, stream_before);

    // The backfill writes the live run's incidents: same ids, times, values and peaks.
    let applied = replay(&stack, &["--from", &from, "--rule", &rule_id]).await;
    assert!(applied.status.success());
    let summary = text(&applied.stdout);
    assert!(
        summary.contains(&format!("{} written", live_incidents.len())),
        "{summary}"
    );
    let backfilled = incidents(&app.pool).await;
    let as_live: Vec<Row> = backfilled
        .iter()
        .map(|r| {
            assert_eq!(r.7, "backfill");
            let mut r = r.clone();
            r.7 = "live".into();
            r
        })
        .collect();
    assert_eq!(as_live, live_incidents);

    // Running it again changes nothing at all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_first = everything(&app.pool).await;
    let stream_after_first = incidents_stream_last(&js).await;
    let again = replay(&stack, &["--from", &from, "--rule", &rule_id]).await;
    assert!(again.status.success());
    assert!(
        text(&again.stdout).contains(&format!(
            "0 written, {} already stored unchanged",
            live_incidents.len()
        )),
        "{}",
        text(&again.stdout)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(everything(&app.pool).await, after_first);
    assert_eq!(incidents_stream_last(&js).await, stream_after_first);

    // Backfilled incidents notified nobody: no in-app notification or delivery exists.
    let notified: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM notifications) + (SELECT count(*) FROM deliveries)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(notified, 0);

    // Over the live run's own history, a replay duplicates none of its incidents: not from
    // before the day, not from a time in an episode (the lookback finds its true start), and
    // not from a stream sequence in an episode, where the replay has no lookback and sees the
    // episode begin later than it did: that incident overlaps the live one and is skipped.
    let (long, opened, resolved) = live_incidents
        .iter()
        .filter_map(|r| Some((r.0.clone(), r.1, r.3?)))
        .max_by_key(|(_, opened, resolved)| *resolved - *opened)
        .expect("a resolved episode");
    let service: String =
        sqlx::query_scalar("SELECT service_id FROM incidents WHERE id = $1::uuid")
            .bind(&long)
            .fetch_one(&live.pool)
            .await
            .unwrap();
    let service_index: i64 = service[1..].parse().unwrap();
    let minute = (opened - start).num_minutes() + 1;
    assert!(
        resolved - opened > Span::minutes(12),
        "{opened}..{resolved}"
    );
    // Samples were published minute by minute, services in order.
    let in_episode = (minute * SERVICES as i64 + service_index + 1).to_string();
    for from in [from.clone(), (opened + Span::minutes(3)).to_rfc3339()] {
        let over_live = replay(&live_stack, &["--from", &from, "--rule", &rule_id]).await;
        assert!(over_live.status.success());
        assert_eq!(incidents(&live.pool).await, live_incidents, "from {from}");
    }
    let entered = replay(&live_stack, &["--from", &in_episode, "--rule", &rule_id]).await;
    assert!(entered.status.success());
    let summary = text(&entered.stdout);
    assert!(
        summary.contains("1 skipped as already covered by another incident"),
        "the episode entered in its middle should overlap the live incident: {summary}"
    );
    assert_eq!(incidents(&live.pool).await, live_incidents);

    app.stop().await;
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ranges_get_clear_errors_and_lost_history_a_warning() {
    let stack = Stack::start().await;
    let app = App::start_with(settings(&stack)).await;
    let rule_id = app.rule(rule_body(true)).await;
    let js = stack.js().await;
    let start = day_start();
    let data: Vec<MetricSample> = samples(start)
        .into_iter()
        .filter(|s| s.service_id == "S00" || s.service_id == "S01")
        .collect();
    publish(&js, &data).await;
    drained(&js, Duration::from_secs(60)).await;

    let check = |output: &Output, says: &str| {
        assert!(!output.status.success(), "should fail saying {says}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(says), "expected {says:?} in {stderr}");
    };
    let t = |minutes: i64| (start + Span::minutes(minutes)).to_rfc3339();
    check(
        &replay(&stack, &["--from", &t(600), "--to", &t(60), "--dry-run"]).await,
        "must be before",
    );
    check(
        &replay(&stack, &["--from", &t(60), "--to", &t(60), "--dry-run"]).await,
        "must be before",
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    check(
        &replay(&stack, &["--from", &t(0), "--rule", &unknown, "--dry-run"]).await,
        &format!("unknown rule {unknown}"),
    );
    check(
        &replay(&stack, &["--from", "yesterday", "--dry-run"]).await,
        "RFC 3339",
    );
    let tomorrow = (Utc::now() + Span::days(1)).to_rfc3339();
    check(
        &replay(&stack, &["--from", &tomorrow, "--dry-run"]).await,
        "in the future",
    );
    check(
        &replay(&stack, &["--from", "999999", "--dry-run"]).await,
        "past the end of METRICS",
    );
    // A sequence `from` and a time `to` are compared through the sample at the sequence:
    // sequence 2001 is minute 1000 of the day (two services a minute).
    check(
        &replay(&stack, &["--from", "2001", "--to", &t(600), "--dry-run"]).await,
        "must be before",
    );

    // The oldest part of the stream expires: a replay from before it warns and starts at the
    // oldest sample left.
    let stream = js.get_stream("METRICS").await.unwrap();
    stream.purge().sequence(1001).await.unwrap();
    let first_left = data[1000].recorded_at;
    check(
        &replay(&stack, &["--from", &t(0), "--to", &t(100), "--dry-run"]).await,
        "before the oldest sample METRICS still holds",
    );
    let warned = replay(&stack, &["--from", &t(0), "--rule", &rule_id, "--dry-run"]).await;
    assert!(warned.status.success());
    let stderr = text(&warned.stderr);
    assert!(stderr.contains("older history is gone"), "{stderr}");
    assert!(stderr.contains("sequence 1001"), "{stderr}");
    assert!(
        stderr.contains(&first_left.to_rfc3339()),
        "the warning should name the oldest sample's time: {stderr}"
    );
    let stdout = text(&warned.stdout);
    assert!(
        stdout.contains(&format!("read {} samples", data.len() - 1000)),
        "{stdout}"
    );

    // A range in the middle evaluates from its start less the rule's lookback (5 + 5 + 2 + 3
    // minutes) to the end of the stream, so incidents opened in the range are followed to
    // their resolution; older samples are read but skipped.
    let middle = replay(
        &stack,
        &[
            "--from",
            &t(720),
            "--to",
            &t(780),
            "--rule",
            &rule_id,
            "--dry-run",
        ],
    )
    .await;
    assert!(middle.status.success());
    let evaluated = 2 * (MINUTES as usize - 705);
    let skipped = data.len() - 1000 - evaluated;
    let stdout = text(&middle.stdout);
    assert!(
        stdout.contains(&format!("read {evaluated} samples in"))
            && stdout.contains(&format!("{skipped} skipped outside the range")),
        "{stdout}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfilled_incidents_notify_only_when_asked() {
    let stack = Stack::start().await;
    let app = App::start_with(settings(&stack)).await;
    let (status, dept) = app
        .post("/api/departments", &json!({"name": "Video"}))
        .await;
    assert_eq!(status, 201, "{dept}");
    let dept = dept["data"]["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(
            &format!("/api/departments/{dept}/channels"),
            &json!({"type": "in_app"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut body = rule_body(false);
    body["department_id"] = json!(dept);
    let quiet = app.rule(body.clone()).await;
    body["threshold"] = json!(301);
    let loud = app.rule(body).await;
    let js = stack.js().await;
    let data: Vec<MetricSample> = samples(day_start())
        .into_iter()
        .filter(|s| s.service_id == "S03" || s.service_id == "S04")
        .collect();
    publish(&js, &data).await;
    drained(&js, Duration::from_secs(60)).await;
    let from = (day_start() - Span::hours(1)).to_rfc3339();

    assert!(replay(&stack, &["--from", &from, "--rule", &quiet])
        .await
        .status
        .success());
    assert!(
        replay(&stack, &["--from", &from, "--rule", &loud, "--notify"])
            .await
            .status
            .success()
    );
    let count = |rule: String| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM notifications n JOIN incidents i ON i.id = n.incident_id
                 WHERE i.rule_id = $1::uuid",
            )
            .bind(rule)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let loud_incidents: i64 =
        sqlx::query_scalar("SELECT count(*) FROM incidents WHERE rule_id = $1::uuid")
            .bind(&loud)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(loud_incidents >= 4, "two episodes for each of two services");
    // Each backfilled incident with --notify is announced in the app when it opens.
    crate::support::eventually(
        "in-app notifications of the --notify backfill",
        Duration::from_secs(30),
        || {
            let count = count(loud.clone());
            async move { (count.await >= loud_incidents).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(quiet.clone()).await,
        0,
        "a plain backfill notified someone"
    );
    app.stop().await;
}
