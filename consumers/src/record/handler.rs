//! Applying incident transitions to Postgres.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use schemas::{IncidentSnapshot, IncidentTransition, Source, TransitionKind};
use serde_json::json;
use sqlx::PgPool;
use store::events::{NewEvent, PIPELINE_ACTOR};
use uuid::Uuid;

use crate::error::is_transient_db_error;
use crate::jetstream::{Outcome, Rejection};

/// Timeline event kinds written by the pipeline.
pub const CREATED: &str = "CREATED";
pub const RESOLVED: &str = "RESOLVED";

/// Applies every transition in one transaction, with a few statements whatever the batch's
/// size. Returns, for each live incident whose row it created, the event time at which the
/// incident opened.
pub async fn apply_batch(
    pool: &PgPool,
    transitions: &[IncidentTransition],
) -> Result<Vec<DateTime<Utc>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut services: Vec<String> = transitions
        .iter()
        .map(|t| t.incident.service_id.clone())
        .collect();
    services.sort_unstable();
    services.dedup();
    store::services::register_many(&mut *tx, &services).await?;
    let snapshots: Vec<&IncidentSnapshot> = transitions.iter().map(|t| &t.incident).collect();
    let created: HashSet<Uuid> = store::incidents::apply_snapshots(&mut *tx, &snapshots)
        .await?
        .into_iter()
        .collect();
    let mut opened = Vec::new();
    let mut triggered: HashMap<Uuid, i64> = HashMap::new();
    let mut events = Vec::new();
    let (mut seen, mut resolved) = (HashSet::new(), HashSet::new());
    for t in transitions {
        let incident = &t.incident;
        // The first transition of an incident created its row, as when applied one by one.
        if created.contains(&incident.id) && seen.insert(incident.id) {
            *triggered.entry(incident.rule_id).or_default() += 1;
            events.push(created_event(incident));
            if incident.source == Source::Live {
                opened.push(if t.kind == TransitionKind::Opened {
                    t.at
                } else {
                    incident.opened_at
                });
            }
        }
        // Only the first is stored, as the event's id is the incident's.
        if t.kind == TransitionKind::Resolved && resolved.insert(incident.id) {
            events.push(resolved_event(t));
        }
    }
    if !triggered.is_empty() {
        let counts: Vec<(Uuid, i64)> = triggered.into_iter().collect();
        store::rules::add_trigger_counts(&mut *tx, &counts).await?;
    }
    store::events::insert_many(&mut *tx, &events).await?;
    tx.commit().await?;
    Ok(opened)
}

/// Applies a single transition in its own transaction and classifies the result; also returns
/// what [`apply_batch`] does.
pub async fn apply_one(pool: &PgPool, t: &IncidentTransition) -> (Outcome, Vec<DateTime<Utc>>) {
    match apply_batch(pool, std::slice::from_ref(t)).await {
        Ok(opened) => (Outcome::Done, opened),
        Err(e) if is_transient_db_error(&e) => (Outcome::Retry, Vec::new()),
        Err(e) => (
            Outcome::Poison(Rejection {
                kind: "database",
                reason: e.to_string(),
            }),
            Vec::new(),
        ),
    }
}

fn created_event(incident: &IncidentSnapshot) -> NewEvent<'static> {
    NewEvent {
        id: event_id(incident.id, CREATED),
        incident_id: incident.id,
        kind: CREATED,
        at: incident.opened_at,
        actor: PIPELINE_ACTOR,
        data: json!({
            "value": incident.value,
            "operator": incident.operator,
            "threshold": incident.threshold,
            "severity": incident.severity,
            "source": incident.source,
        }),
    }
}

fn resolved_event(t: &IncidentTransition) -> NewEvent<'static> {
    let incident = &t.incident;
    NewEvent {
        id: event_id(incident.id, RESOLVED),
        incident_id: incident.id,
        kind: RESOLVED,
        at: incident.resolved_at.unwrap_or(t.at),
        actor: PIPELINE_ACTOR,
        data: json!({
            "last_value": incident.last_value,
            "peak_value": incident.peak_value,
            "violation_count": incident.violation_count,
            "auto_resolved": incident.auto_resolve,
        }),
    }
}

/// Deterministic id of a pipeline timeline event: one of each kind per incident.
fn event_id(incident_id: Uuid, kind: &str) -> Uuid {
    Uuid::new_v5(&incident_id, kind.as_bytes())
}
