//! The `incident_events` table: each incident's timeline.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Who made a change that the pipeline made by itself.
pub const PIPELINE_ACTOR: &str = "pipeline";

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventRecord {
    pub id: Uuid,
    pub incident_id: Uuid,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// A timeline entry to add; `id` must be deterministic for pipeline events.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub id: Uuid,
    pub incident_id: Uuid,
    pub kind: &'a str,
    pub at: DateTime<Utc>,
    pub actor: &'a str,
    pub data: serde_json::Value,
}

/// Inserts the event unless one with the same id exists.
pub async fn insert<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    event: &NewEvent<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO incident_events (id, incident_id, kind, at, actor, data)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(event.id)
    .bind(event.incident_id)
    .bind(event.kind)
    .bind(event.at)
    .bind(event.actor)
    .bind(&event.data)
    .execute(executor)
    .await
    .map(|_| ())
}

pub async fn list_for_incident(
    pool: &PgPool,
    incident_id: Uuid,
) -> Result<Vec<EventRecord>, sqlx::Error> {
    sqlx::query_as::<_, EventRecord>(
        "SELECT id, incident_id, kind, at, actor, data, created_at
         FROM incident_events WHERE incident_id = $1 ORDER BY at, created_at, id",
    )
    .bind(incident_id)
    .fetch_all(pool)
    .await
}
