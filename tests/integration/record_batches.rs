//! `record` writes a batch of transitions with a few statements, merging the transitions of
//! each incident first. Written that way, a batch must leave Postgres exactly as applying its
//! transitions one at a time does: same rows, timeline events and trigger counts.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use consumers::record::handler::apply_batch;
use schemas::{IncidentSnapshot, IncidentTransition, Operator, Severity, Source, TransitionKind};
use sqlx::PgPool;
use store::rules::NewRule;
use tracely::devstack::Postgres;
use uuid::Uuid;

/// A small deterministic generator, so that a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap()
}

/// The transitions of one incident's episode, as an evaluator emits them: an opening, updates
/// with growing counts, maybe a resolution. `auto_resolve` changes halfway for some, as after
/// a restart under an edited rule; some start as backfill and turn live.
fn episode(rule: Uuid, operator: Operator, n: usize, rng: &mut Lcg) -> Vec<IncidentTransition> {
    let series = format!("svc-{}:LATENCY_MS", n % 7);
    let opened = at(n as i64 * 1000);
    let mut snapshot = IncidentSnapshot {
        id: pipeline::identity::incident_id(rule, &series, opened),
        rule_id: rule,
        rule_name: "r".into(),
        service_id: format!("svc-{}", n % 7),
        metric_type: "LATENCY_MS".into(),
        series_key: series,
        labels: BTreeMap::from([("region".to_owned(), format!("r{}", n % 3))]),
        department_id: None,
        severity: Severity::High,
        operator,
        threshold: 100.0,
        message: format!("opened {n}"),
        value: 150.0,
        peak_value: 150.0,
        last_value: 150.0,
        violation_count: 1,
        opened_at: opened,
        last_violation_at: opened,
        resolved_at: None,
        source: if n % 5 == 0 {
            Source::Backfill
        } else {
            Source::Live
        },
        last_sample_seq: n as u64 * 100,
        auto_resolve: n % 2 == 0,
    };
    let mut out = vec![IncidentTransition {
        kind: TransitionKind::Opened,
        at: opened,
        incident: snapshot.clone(),
    }];
    let updates = rng.next(6);
    for u in 1..=updates {
        let value = 50.0 + rng.next(200) as f64;
        snapshot.violation_count += 1;
        snapshot.last_value = value;
        snapshot.peak_value = match operator {
            Operator::Lt | Operator::Le => snapshot.peak_value.min(value),
            _ => snapshot.peak_value.max(value),
        };
        snapshot.last_violation_at = opened + TimeDelta::milliseconds(u as i64 * 10);
        snapshot.last_sample_seq += 1 + rng.next(3);
        if u == 2 {
            snapshot.source = Source::Live;
            if n % 3 == 0 {
                snapshot.auto_resolve = !snapshot.auto_resolve;
            }
        }
        out.push(IncidentTransition {
            kind: TransitionKind::Updated,
            at: snapshot.last_violation_at,
            incident: snapshot.clone(),
        });
    }
    if rng.next(3) > 0 {
        let resolved = snapshot.last_violation_at + TimeDelta::milliseconds(5);
        snapshot.resolved_at = Some(resolved);
        out.push(IncidentTransition {
            kind: TransitionKind::Resolved,
            at: resolved,
            incident: snapshot.clone(),
        });
    }
    out
}

/// Rows, events and trigger counts, without the times of writing.
async fn contents(pool: &PgPool) -> (Vec<String>, Vec<String>, Vec<String>) {
    let rows = sqlx::query_scalar(
        "SELECT (to_jsonb(i) - 'created_at' - 'updated_at')::text FROM incidents i ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let events = sqlx::query_scalar(
        "SELECT concat_ws(' ', id, incident_id, kind, at, actor, data::text)
         FROM incident_events ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let counts = sqlx::query_scalar("SELECT concat(id, ' ', trigger_count) FROM rules ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    (rows, events, counts)
}

async fn database(postgres: &Postgres, name: &str, rules: &[NewRule]) -> (PgPool, Vec<Uuid>) {
    let pool = PgPool::connect(&postgres.create_database(name).await.unwrap())
        .await
        .unwrap();
    store::MIGRATOR.run(&pool).await.unwrap();
    let mut ids = Vec::new();
    for rule in rules {
        ids.push(store::rules::insert(&pool, rule).await.unwrap().id);
    }
    (pool, ids)
}

#[tokio::test]
async fn a_merged_batch_writes_what_one_at_a_time_writes() {
    let dir = tempfile::tempdir().unwrap();
    let postgres = Postgres::start_from_template(&dir.path().join("postgres"))
        .await
        .unwrap();
    let rules = [
        NewRule::threshold("above", "LATENCY_MS", Operator::Gt, 100.0, Severity::High),
        NewRule::threshold("below", "LATENCY_MS", Operator::Lt, 100.0, Severity::High),
    ];
    let (single, single_rules) = database(&postgres, "single", &rules).await;
    let (batched, batched_rules) = database(&postgres, "batched", &rules).await;
    // The rules get new ids in each database; the transitions use the first's.
    for (single_id, batched_id) in single_rules.iter().zip(&batched_rules) {
        sqlx::query("UPDATE rules SET id = $1 WHERE id = $2")
            .bind(single_id)
            .bind(batched_id)
            .execute(&batched)
            .await
            .unwrap();
    }

    let mut rng = Lcg(7);
    let mut transitions = Vec::new();
    for n in 0..60 {
        let (rule, operator) = if n % 4 == 0 {
            (single_rules[1], Operator::Lt)
        } else {
            (single_rules[0], Operator::Gt)
        };
        transitions.extend(episode(rule, operator, n, &mut rng));
    }
    // Interleaved across incidents, and some delivered twice or out of order.
    let mut stream = Vec::new();
    while !transitions.is_empty() {
        let k = rng.next(transitions.len().min(4) as u64) as usize;
        let t = transitions.remove(k);
        if rng.next(8) == 0 {
            stream.push(t.clone());
        }
        stream.push(t);
    }
    assert!(stream.len() > 200, "{} transitions", stream.len());
    let mut at = 0;
    let mut batches = 0;
    while at < stream.len() {
        let size = (1 + rng.next(60) as usize).min(stream.len() - at);
        let batch = &stream[at..at + size];
        for t in batch {
            apply_batch(&single, std::slice::from_ref(t)).await.unwrap();
        }
        apply_batch(&batched, batch).await.unwrap();
        at += size;
        batches += 1;
        if batches == 2 {
            // People close an incident before the pipeline resolves it.
            for pool in [&single, &batched] {
                let closed = sqlx::query(
                    "UPDATE incidents SET status = 'CLOSED', closed_at = opened_at
                     WHERE id = (SELECT id FROM incidents
                                 WHERE auto_resolve AND resolved_at IS NULL ORDER BY id LIMIT 1)",
                )
                .execute(pool)
                .await
                .unwrap();
                assert_eq!(closed.rows_affected(), 1);
            }
        }
    }

    let (rows, events, counts) = contents(&single).await;
    assert_eq!(rows.len(), 60);
    assert!(events.len() > 60, "{} events", events.len());
    let closed: i64 = sqlx::query_scalar("SELECT count(*) FROM incidents WHERE status = 'CLOSED'")
        .fetch_one(&single)
        .await
        .unwrap();
    assert!(closed > 1, "some resolutions closed their incidents");
    let batched_contents = contents(&batched).await;
    assert_eq!(rows, batched_contents.0, "incident rows differ");
    assert_eq!(events, batched_contents.1, "timeline events differ");
    assert_eq!(counts, batched_contents.2, "trigger counts differ");
    postgres.stop().await.unwrap();
}
