//! Applying incident transitions to Postgres.

use chrono::{DateTime, Utc};
use schemas::{IncidentTransition, Source, TransitionKind};
use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};
use store::events::{NewEvent, PIPELINE_ACTOR};
use uuid::Uuid;

use crate::error::is_transient_db_error;
use crate::jetstream::{Outcome, Rejection};

/// Timeline event kinds written by the pipeline.
pub const CREATED: &str = "CREATED";
pub const RESOLVED: &str = "RESOLVED";

/// Applies every transition in one transaction. Returns, for each live incident whose row it
/// created, the event time at which the incident opened.
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
    let mut opened = Vec::new();
    for t in transitions {
        if apply(&mut tx, t).await? && t.incident.source == Source::Live {
            opened.push(if t.kind == TransitionKind::Opened {
                t.at
            } else {
                t.incident.opened_at
            });
        }
    }
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

/// Returns whether the incident's row was created.
async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    t: &IncidentTransition,
) -> Result<bool, sqlx::Error> {
    let incident = &t.incident;
    let created = store::incidents::apply_snapshot(&mut **tx, incident).await?;
    if created {
        store::rules::increment_trigger_count(&mut **tx, incident.rule_id).await?;
        let event = NewEvent {
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
        };
        store::events::insert(&mut **tx, &event).await?;
    }
    if t.kind == TransitionKind::Resolved {
        let event = NewEvent {
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
        };
        store::events::insert(&mut **tx, &event).await?;
    }
    Ok(created)
}

/// Deterministic id of a pipeline timeline event: one of each kind per incident.
fn event_id(incident_id: Uuid, kind: &str) -> Uuid {
    Uuid::new_v5(&incident_id, kind.as_bytes())
}
