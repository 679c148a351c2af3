//! Backfill jobs: `POST /api/backfills` checks the request, then replays the range in the
//! background and writes the incidents found; `GET` follows it; a job whose process died is
//! reported interrupted and can be resumed, with the same incidents as a run never interrupted.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration as StdDuration;

use crate::support::{client_with_key, decode, eventually, publish, App, KeyRole, Stack};
use chrono::{DateTime, Duration, DurationRound, Utc};
use schemas::{MetricSample, Operator, Severity};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use store::rules::NewRule;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An hour of LATENCY_MS every 10 s from `t0` for S1 and S2; S1 goes above 150 from minute 10
/// to 15 and from minute 30 to 33, S2 never does.
fn samples(t0: DateTime<Utc>) -> Vec<MetricSample> {
    let mut out = Vec::new();
    for i in 0..360 {
        let minute = i / 6;
        let s1 = match minute {
            10..=14 => 200.0 + (i % 3) as f64 * 10.0,
            30..=32 => 180.0,
            _ => 100.0,
        };
        for (service, value) in [("S1", s1), ("S2", 100.0)] {
            out.push(MetricSample {
                service_id: service.into(),
                metric_type: "LATENCY_MS".into(),
                value,
                recorded_at: t0 + Duration::seconds(i * 10),
                id: Some(format!("{service}-{i}")),
                labels: Default::default(),
            });
        }
    }
    out
}

fn start() -> DateTime<Utc> {
    (Utc::now() - Duration::hours(3))
        .duration_trunc(Duration::hours(1))
        .unwrap()
}

/// Polls the job until it is in one of `states`.
async fn job_in(app: &App, id: &str, states: &[&str]) -> Value {
    eventually(
        &format!("backfill {id} to be {states:?}"),
        StdDuration::from_secs(60),
        || async {
            let (status, body) = app.get(&format!("/api/backfills/{id}")).await;
            assert_eq!(status, 200, "{body}");
            let state = body["data"]["state"].as_str().unwrap();
            assert!(
                !["failed", "cancelled"].contains(&state) || states.contains(&state),
                "{body}"
            );
            states.contains(&state).then(|| body["data"].clone())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_job_writes_the_missed_incidents_once() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let t0 = start();
    publish(&stack.js().await, &samples(t0)).await;
    let rule = app
        .rule(
            json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 150,
                     "severity": "HIGH", "enabled": false}),
        )
        .await;
    let request = json!({"from": text(t0), "to": text(t0 + Duration::hours(1)),
                         "rule_ids": [rule]});

    let (status, created) = app.post("/api/backfills", &request).await;
    assert_eq!(status, 202, "{created}");
    let job = created["data"].clone();
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["created_by"], "key:test-admin");
    assert_eq!(job["request"]["rule_ids"], json!([rule]));
    let id = job["id"].as_str().unwrap().to_owned();

    let done = job_in(&app, &id, &["succeeded"]).await;
    assert_eq!(done["resumable"], false);
    assert_eq!(done["attempts"], 1);
    assert!(done["finished_at"].is_string() && done["started_at"].is_string());
    let progress = &done["progress"];
    assert_eq!(progress["stage"], "done", "{progress}");
    assert_eq!(progress["samples"], 720, "{progress}");
    assert_eq!(progress["fraction"], 1.0);
    assert_eq!(progress["opened"], 2);
    assert!(progress["published_through"].as_u64().unwrap() > 0);
    assert_eq!(progress["recorded_through"], progress["published_through"]);
    let result = &done["result"];
    assert_eq!(result["incidents"], 2, "{result}");
    assert_eq!(result["written"], 2, "{result}");
    assert_eq!(result["unchanged"], 0);
    assert_eq!(result["warnings"], json!([]));
    assert!(done["error"].is_null());

    // Written once record has them, which the job waited for.
    let incidents = app.incidents("").await;
    let mut opened: Vec<(String, String, String)> = incidents
        .iter()
        .map(|i| {
            let t = |f: &str| text(i[f].as_str().unwrap().parse::<DateTime<Utc>>().unwrap());
            (
                i["source"].as_str().unwrap().to_owned(),
                i["service_id"].as_str().unwrap().to_owned(),
                t("opened_at"),
            )
        })
        .collect();
    opened.sort();
    assert_eq!(
        opened,
        vec![
            (
                "backfill".into(),
                "S1".into(),
                text(t0 + Duration::minutes(10))
            ),
            (
                "backfill".into(),
                "S1".into(),
                text(t0 + Duration::minutes(30))
            ),
        ]
    );

    // Again over the same range: nothing new.
    let (status, again) = app.post("/api/backfills", &request).await;
    assert_eq!(status, 202, "{again}");
    let again = job_in(&app, again["data"]["id"].as_str().unwrap(), &["succeeded"]).await;
    assert_eq!(again["result"]["written"], 0, "{again}");
    assert_eq!(again["result"]["unchanged"], 2, "{again}");
    assert_eq!(again["result"]["transitions"], 0);
    assert_eq!(app.incidents("").await.len(), 2);

    // Listed newest first, paged.
    let (status, list) = app.get("/api/backfills?limit=1").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["meta"]["total"], 2);
    assert_eq!(list["data"][0]["id"], again["id"]);
    let (_, second) = app.get("/api/backfills?limit=1&offset=1").await;
    assert_eq!(second["data"][0]["id"], id.as_str());
    let viewer = app.client(KeyRole::Viewer).await;
    let (status, _) = decode(viewer.get(app.url("/api/backfills")).send().await.unwrap()).await;
    assert_eq!(status, 200, "viewers may follow jobs");

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_requests_are_checked_before_a_job_exists() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let t0 = start();
    publish(&stack.js().await, &samples(t0)).await;
    let rule = app
        .rule(
            json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 150,
                     "severity": "HIGH", "enabled": false}),
        )
        .await;

    let (status, inverted) = app
        .post(
            "/api/backfills",
            &json!({"from": text(t0 + Duration::hours(1)), "to": text(t0), "rule_ids": [rule]}),
        )
        .await;
    assert_eq!(status, 422, "{inverted}");
    assert!(inverted["error"]["message"]
        .as_str()
        .unwrap()
        .contains("must be before"));
    assert_eq!(inverted["error"]["details"][0]["field"], "from");

    let unknown = Uuid::new_v4();
    let (status, missing) = app
        .post(
            "/api/backfills",
            &json!({"from": text(t0), "rule_ids": [unknown]}),
        )
        .await;
    assert_eq!(status, 422, "{missing}");
    assert_eq!(missing["error"]["details"][0]["field"], "rule_ids");
    assert!(missing["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&unknown.to_string()));

    // Every rule is disabled, and none is named.
    let (status, none) = app.post("/api/backfills", &json!({"from": text(t0)})).await;
    assert_eq!(status, 422, "{none}");
    assert_eq!(none["error"]["details"][0]["field"], "rule_ids");

    let (status, future) = app
        .post(
            "/api/backfills",
            &json!({"from": text(Utc::now() + Duration::hours(1)), "rule_ids": [rule]}),
        )
        .await;
    assert_eq!(status, 422, "{future}");
    let (status, bad_service) = app
        .post(
            "/api/backfills",
            &json!({"from": text(t0), "rule_ids": [rule], "service_ids": ["S1", "a.b"]}),
        )
        .await;
    assert_eq!(status, 422, "{bad_service}");
    assert_eq!(
        bad_service["error"]["details"][0]["field"],
        "service_ids[1]"
    );
    let (status, past_end) = app
        .post(
            "/api/backfills",
            &json!({"from": 1_000_000, "rule_ids": [rule]}),
        )
        .await;
    assert_eq!(status, 422, "{past_end}");

    // Only admins start, resume and cancel jobs.
    let operator = app.client(KeyRole::Operator).await;
    let (status, forbidden) = decode(
        operator
            .post(app.url("/api/backfills"))
            .json(&json!({"from": text(t0), "rule_ids": [rule]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{forbidden}");

    let (_, list) = app.get("/api/backfills").await;
    assert_eq!(list["meta"]["total"], 0, "no job was made: {list}");

    // A job running, and heard from, in another process cannot be resumed.
    let request = json!({"from": text(t0), "to": text(t0 + Duration::hours(1)),
                         "rule_ids": [rule], "service_ids": [], "notify": false});
    let fresh = insert_job(&app.pool, &request, "running", Duration::zero()).await;
    let (status, body) = app.get(&format!("/api/backfills/{fresh}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["state"], "running");
    assert_eq!(body["data"]["resumable"], false);
    let (status, conflict) = app
        .post(&format!("/api/backfills/{fresh}/resume"), &json!({}))
        .await;
    assert_eq!(status, 409, "{conflict}");
    assert!(conflict["error"]["message"]
        .as_str()
        .unwrap()
        .contains("running"));
    let (status, _) = decode(
        operator
            .post(app.url(&format!("/api/backfills/{fresh}/cancel")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    // Cancelled wherever it runs: its process finds out at its next heartbeat.
    let (status, cancelled) = app
        .post(&format!("/api/backfills/{fresh}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["data"]["state"], "cancelled");
    let (status, conflict) = app
        .post(&format!("/api/backfills/{fresh}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{conflict}");
    let (status, conflict) = app
        .post(&format!("/api/backfills/{fresh}/resume"), &json!({}))
        .await;
    assert_eq!(status, 409, "{conflict}");

    // A job whose process went quiet 20 s ago is interrupted, and resuming runs it here.
    let stale = insert_job(&app.pool, &request, "running", Duration::seconds(20)).await;
    let (_, body) = app.get(&format!("/api/backfills/{stale}")).await;
    assert_eq!(body["data"]["state"], "interrupted", "{body}");
    assert_eq!(body["data"]["resumable"], true);
    let (status, resumed) = app
        .post(&format!("/api/backfills/{stale}/resume"), &json!({}))
        .await;
    assert_eq!(status, 202, "{resumed}");
    let done = job_in(&app, &stale.to_string(), &["succeeded"]).await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["result"]["written"], 2, "{done}");

    let (status, body) = app.get(&format!("/api/backfills/{}", Uuid::new_v4())).await;
    assert_eq!(status, 404, "{body}");
    for action in ["resume", "cancel"] {
        let path = format!("/api/backfills/{}/{action}", Uuid::new_v4());
        let (status, body) = app.post(&path, &json!({})).await;
        assert_eq!(status, 404, "{path}: {body}");
    }

    app.stop().await;
}

/// A job as another process would have left it: `state`, last heard from `quiet` ago.
async fn insert_job(pool: &PgPool, request: &Value, state: &str, quiet: Duration) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO backfills (id, request, state, owner, heartbeat_at, attempts, created_by,
                                created_at, started_at)
         VALUES ($1, $2, $3, $4, now() - $5, 1, 'key:elsewhere', now() - $5, now() - $5)",
    )
    .bind(id)
    .bind(sqlx::types::Json(request))
    .bind(state)
    .bind(Uuid::new_v4())
    .bind(quiet.to_std().unwrap())
    .execute(pool)
    .await
    .unwrap();
    id
}

/// 100 services, one LATENCY_MS sample a second each for 3,000 s: 300,000 samples. Each
/// service goes above 150 for a stretch now and then.
fn big_workload(t0: DateTime<Utc>) -> Vec<MetricSample> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut violating = [false; 100];
    let mut out = Vec::with_capacity(300_000);
    for second in 0..3_000 {
        for (service, bad) in violating.iter_mut().enumerate() {
            if next() % 200 == 0 {
                *bad = !*bad;
            }
            let jitter = (next() % 1000) as f64 / 100.0;
            out.push(MetricSample {
                service_id: format!("svc-{service:03}"),
                metric_type: "LATENCY_MS".into(),
                value: if *bad { 200.0 + jitter } else { 100.0 + jitter },
                recorded_at: t0 + Duration::seconds(second),
                id: Some(format!("{service}-{second}")),
                labels: Default::default(),
            });
        }
    }
    out
}

/// `tracely run` as its own process, serving the API on `port`.
fn spawn_tracely(stack: &Stack, port: u16, n: usize) -> Child {
    let log = std::fs::File::create(stack.path().join(format!("tracely-{n}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tracely"))
        .args(["run", "--roles", "api,record"])
        .env("TRACELY_NATS_URL", stack.nats.url())
        .env("DATABASE_URL", &stack.database_url)
        .env("TRACELY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env_remove("MEILI_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting tracely run")
}

/// A client of a child process's API.
struct Remote {
    http: reqwest::Client,
    base: String,
}

impl Remote {
    async fn up(key: &str, port: u16) -> Remote {
        let remote = Remote {
            http: client_with_key(key),
            base: format!("http://127.0.0.1:{port}"),
        };
        eventually("tracely to serve", StdDuration::from_secs(60), || async {
            let response = remote
                .http
                .get(format!("{}/health", remote.base))
                .send()
                .await;
            response
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
        remote
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        decode(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        decode(
            self.http
                .post(format!("{}{path}", self.base))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

/// (opened_at, resolved_at, peak, violation_count) by incident id.
type Incidents = BTreeMap<Uuid, (String, Option<String>, String, i64)>;

async fn stored_incidents(pool: &PgPool) -> Incidents {
    sqlx::query(
        "SELECT id, opened_at, resolved_at, peak_value::text, violation_count, source
         FROM incidents",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        assert_eq!(r.get::<String, _>("source"), "backfill");
        (
            r.get("id"),
            (
                r.get::<DateTime<Utc>, _>("opened_at").to_rfc3339(),
                r.get::<Option<DateTime<Utc>>, _>("resolved_at")
                    .map(|t| t.to_rfc3339()),
                r.get::<String, _>(3).parse::<f64>().unwrap().to_string(),
                r.get("violation_count"),
            ),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_with_its_process_is_interrupted_and_resumes_to_the_same_incidents() {
    let stack = Stack::start().await;
    let pool = stack.pool().await;
    store::migrate(&pool).await.unwrap();
    let key = crate::support::key(&pool, KeyRole::Admin).await;
    let rule = store::rules::insert(
        &pool,
        &NewRule {
            enabled: false,
            ..NewRule::threshold("latency", "LATENCY_MS", Operator::Gt, 150.0, Severity::High)
        },
    )
    .await
    .unwrap();

    let port = tracely::devstack::free_port().unwrap();
    let mut child = spawn_tracely(&stack, port, 0);
    let remote = Remote::up(&key, port).await;
    let js = stack.js().await;
    let t0 = start();
    let samples = big_workload(t0);
    for chunk in samples.chunks(2_000) {
        publish(&js, chunk).await;
    }
    let request = json!({"from": text(t0), "to": text(t0 + Duration::seconds(3_000)),
                         "rule_ids": [rule.id]});
    let (status, created) = remote.post("/api/backfills", &request).await;
    assert_eq!(status, 202, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();

    // Killed while it reads.
    let seen = eventually(
        "the job to report progress",
        StdDuration::from_secs(60),
        || async {
            let (_, body) = remote.get(&format!("/api/backfills/{id}")).await;
            let job = &body["data"];
            assert_ne!(
                job["state"], "succeeded",
                "the job ended before it could be killed; make the workload bigger"
            );
            let samples = job["progress"]["samples"].as_u64().unwrap_or(0);
            (job["state"] == "running" && samples > 0).then(|| job.clone())
        },
    )
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert_eq!(seen["progress"]["stage"], "reading", "{seen}");
    let read_when_killed = seen["progress"]["samples"].as_u64().unwrap();
    assert!(read_when_killed < 300_000, "{seen}");
    eprintln!("killed after the job had read {read_when_killed} of 300000 samples");
    let owner_before = seen["owner"].clone();

    // A new process: the job reads as running until its heartbeat is 15 s old.
    let port = tracely::devstack::free_port().unwrap();
    let mut child = spawn_tracely(&stack, port, 1);
    let remote = Remote::up(&key, port).await;
    let (_, body) = remote.get(&format!("/api/backfills/{id}")).await;
    assert_eq!(body["data"]["state"], "running", "{body}");
    let interrupted = eventually(
        "the job to read as interrupted",
        StdDuration::from_secs(30),
        || async {
            let (_, body) = remote.get(&format!("/api/backfills/{id}")).await;
            (body["data"]["state"] == "interrupted").then(|| body["data"].clone())
        },
    )
    .await;
    assert_eq!(interrupted["resumable"], true);
    let (status, listed) = remote.get("/api/backfills").await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"][0]["state"], "interrupted");

    let (status, resumed) = remote
        .post(&format!("/api/backfills/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, 202, "{resumed}");
    assert_ne!(resumed["data"]["owner"], owner_before);
    let (status, again) = remote
        .post(&format!("/api/backfills/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, 409, "resumed once only: {again}");
    let resumed_at = std::time::Instant::now();
    let done = eventually(
        "the resumed job to succeed",
        StdDuration::from_secs(180),
        || async {
            let (_, body) = remote.get(&format!("/api/backfills/{id}")).await;
            let job = &body["data"];
            assert_ne!(job["state"], "failed", "{job}");
            (job["state"] == "succeeded").then(|| job.clone())
        },
    )
    .await;
    eprintln!("the resumed job took {:?}", resumed_at.elapsed());
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["progress"]["samples"], 300_000, "{done}");

    // The same incidents as a run never interrupted: a dry run of the same request.
    let uninterrupted = {
        let request: replay::backfill::Request = serde_json::from_value(request.clone()).unwrap();
        let lateness = schemas::Span(30_000);
        let prepared = replay::backfill::prepare(&js, &pool, &request, lateness)
            .await
            .unwrap();
        let summary = replay::backfill::execute(
            &js,
            &pool,
            (&prepared.0, &prepared.1),
            &request,
            true,
            &CancellationToken::new(),
            |_| {},
        )
        .await
        .unwrap();
        summary
            .incidents
            .iter()
            .map(|w| {
                let i = &w.latest;
                (
                    i.id,
                    (
                        i.opened_at.to_rfc3339(),
                        i.resolved_at.map(|t| t.to_rfc3339()),
                        i.peak_value.to_string(),
                        i.violation_count as i64,
                    ),
                )
            })
            .collect::<Incidents>()
    };
    assert!(uninterrupted.len() >= 50, "{}", uninterrupted.len());
    let stored = stored_incidents(&pool).await;
    assert_eq!(
        stored.len(),
        uninterrupted.len(),
        "no incident lost or duplicated"
    );
    assert_eq!(stored, uninterrupted);
    assert_eq!(done["result"]["written"], uninterrupted.len(), "{done}");
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM incident_events WHERE kind = 'CREATED'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(created as usize, uninterrupted.len());

    // Stopped gracefully mid-read, the process lets go of its job promptly and leaves it
    // running, to be reported interrupted, rather than failed or cancelled.
    let (status, created) = remote.post("/api/backfills", &request).await;
    assert_eq!(status, 202, "{created}");
    let id: Uuid = created["data"]["id"].as_str().unwrap().parse().unwrap();
    eventually("the job to read", StdDuration::from_secs(60), || async {
        let (_, body) = remote.get(&format!("/api/backfills/{id}")).await;
        assert_ne!(body["data"]["state"], "succeeded", "{body}");
        (body["data"]["progress"]["samples"].as_u64() > Some(0)).then_some(())
    })
    .await;
    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: signals a child process of this test that has not been waited for.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let exit = tokio::time::timeout(StdDuration::from_secs(10), child.wait())
        .await
        .expect("the process stops within its shutdown timeout")
        .unwrap();
    assert!(exit.success(), "{exit}");
    let left = store::backfills::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(left.state, store::backfills::BackfillState::Running);
    assert!(left.finished_at.is_none() && left.error.is_none());
    assert!(left.progress.0["samples"].as_u64() < Some(300_000));
}
