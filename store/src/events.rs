//! The `incident_events` table: each incident's timeline.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use crate::{Page, Sort, SortField};

/// Who made a change that the pipeline made by itself.
pub const PIPELINE_ACTOR: &str = "pipeline";
/// The actor of notification events and reminders.
pub const NOTIFIER_ACTOR: &str = "notifier";

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventRecord {
    pub id: Uuid,
    pub incident_id: Uuid,
    /// `CREATED` and `RESOLVED` from the pipeline; `STATUS_CHANGED`, `SEVERITY_CHANGED`,
    /// `ASSIGNED`, `COMMENTED` and `COMMENT_DELETED` from people; `NOTIFIED`,
    /// `NOTIFICATION_FAILED` and `NOTIFICATION_SUPPRESSED` from the notifier, one per attempt,
    /// with a readable `summary` in `data`.
    pub kind: String,
    pub at: DateTime<Utc>,
    /// `pipeline`, or the API key that made the change as `key:<name>`.
    pub actor: String,
    /// What changed, by kind: `{"from", "to"}` for changes, `{"comment_id", …}` for comments.
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, incident_id, kind, at, actor, data, created_at";

pub const SORT_FIELDS: &[SortField] = &[SortField::new("at", "at")];

/// Oldest first.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: false,
};

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

/// Inserts the event unless one with the same id exists. `created_at` is the moment of the
/// insert rather than of the transaction, so events written by one change (a patch of status
/// and severity) keep the order they were written in.
pub async fn insert<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    event: &NewEvent<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO incident_events (id, incident_id, kind, at, actor, data, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp()) ON CONFLICT (id) DO NOTHING",
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

/// [`insert`] for many events in one statement, written in the order given.
pub async fn insert_many<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    events: &[NewEvent<'_>],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO incident_events (id, incident_id, kind, at, actor, data, created_at)
         SELECT e.id, e.incident_id, e.kind, e.at, e.actor, e.data, clock_timestamp()
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[],
                     $6::jsonb[])
              WITH ORDINALITY AS e(id, incident_id, kind, at, actor, data, n)
         ORDER BY e.n
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.incident_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.actor).collect::<Vec<_>>())
    .bind(events.iter().map(|e| &e.data).collect::<Vec<_>>())
    .execute(executor)
    .await
    .map(|_| ())
}

/// Like [`insert`], but writes nothing when the incident does not exist (any more).
pub async fn insert_if_incident_exists<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    event: &NewEvent<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO incident_events (id, incident_id, kind, at, actor, data, created_at)
         SELECT $1, $2, $3, $4, $5, $6, clock_timestamp()
         WHERE EXISTS (SELECT 1 FROM incidents WHERE id = $2)
         ON CONFLICT (id) DO NOTHING",
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

/// One page of an incident's timeline, with the number of its events.
pub async fn page_for_incident(
    pool: &PgPool,
    incident_id: Uuid,
    sort: Sort,
    page: Page,
) -> Result<(Vec<EventRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM incident_events WHERE incident_id = "
    ));
    query.push_bind(incident_id);
    // Events of one change share `at`; they follow in the order they were written.
    sort.push_order_and_page(&mut query, "(created_at, id)", page);
    let rows = query.build_query_as().fetch_all(pool).await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM incident_events WHERE incident_id = $1")
        .bind(incident_id)
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
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

/// Removes a deleted comment's text from the timeline event that recorded it; the event stays.
pub async fn scrub_comment_body<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    incident_id: Uuid,
    comment_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE incident_events SET data = data - 'body'
         WHERE incident_id = $1 AND kind = 'COMMENTED' AND data->>'comment_id' = $2::text",
    )
    .bind(incident_id)
    .bind(comment_id)
    .execute(executor)
    .await
    .map(|_| ())
}
