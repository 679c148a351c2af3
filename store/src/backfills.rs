//! The `backfills` table: background jobs that replay a range of METRICS through the engine and
//! write the incidents found. The request, progress and result are JSON documents whose shape
//! the API owns; this module keeps the job's state and who runs it.
//!
//! A job is owned by the process running it, which refreshes `heartbeat_at` about every second.
//! A queued or running job whose heartbeat (or creation, if it never started) is older than
//! [`STALE_AFTER_SECS`] is read as [`BackfillState::Interrupted`]: its process died or stopped.
//! Such a job, or a failed one, may be claimed again ([`claim`]); every write a running job
//! makes names its owner and expects the state `running`, so a process that lost its job (it was
//! claimed by another, or cancelled) finds out at its next write and stops.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Page;

/// How long a queued or running job may go without a heartbeat before it counts as interrupted.
pub const STALE_AFTER_SECS: i64 = 15;

/// Where a job is. `interrupted` is never stored: it is a queued or running job whose heartbeat
/// is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackfillState {
    /// Accepted, not started yet.
    Queued,
    /// A process is replaying it.
    Running,
    /// Queued or running, but its process has not been heard from for 15 s.
    Interrupted,
    Succeeded,
    Failed,
    Cancelled,
}

impl BackfillState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::Queued => "queued",
            BackfillState::Running => "running",
            BackfillState::Interrupted => "interrupted",
            BackfillState::Succeeded => "succeeded",
            BackfillState::Failed => "failed",
            BackfillState::Cancelled => "cancelled",
        }
    }

    /// Whether the job is over, one way or another.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            BackfillState::Succeeded | BackfillState::Failed | BackfillState::Cancelled
        )
    }
}

impl fmt::Display for BackfillState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for BackfillState {
    type Error = String;
    fn try_from(s: String) -> Result<BackfillState, String> {
        [
            BackfillState::Queued,
            BackfillState::Running,
            BackfillState::Interrupted,
            BackfillState::Succeeded,
            BackfillState::Failed,
            BackfillState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not a backfill state"))
    }
}

/// A job as read, with its state as of the read.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BackfillRecord {
    pub id: Uuid,
    pub request: Json<Value>,
    #[sqlx(try_from = "String")]
    pub state: BackfillState,
    /// Interrupted or failed: [`claim`] would take it.
    pub resumable: bool,
    pub owner: Option<Uuid>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub progress: Json<Value>,
    pub result: Option<Json<Value>>,
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Queued or running, without a heartbeat (or, before the first, a creation) for
/// [`STALE_AFTER_SECS`]. Judged by the database's clock, the same for every process.
fn stale() -> String {
    format!(
        "(state IN ('queued', 'running') AND coalesce(heartbeat_at, created_at) \
         < now() - make_interval(secs => {STALE_AFTER_SECS}))"
    )
}

fn columns() -> String {
    let stale = stale();
    format!(
        "id, request, CASE WHEN {stale} THEN 'interrupted' ELSE state END AS state, \
         ({stale} OR state = 'failed') AS resumable, owner, heartbeat_at, attempts, progress, \
         result, error, created_by, created_at, started_at, finished_at"
    )
}

/// A job to create, owned by the process that will run it.
#[derive(Debug, Clone)]
pub struct NewBackfill<'a> {
    pub id: Uuid,
    pub request: &'a Value,
    pub progress: &'a Value,
    pub created_by: &'a str,
    pub owner: Uuid,
}

/// Creates a queued job.
pub async fn insert(pool: &PgPool, new: &NewBackfill<'_>) -> Result<BackfillRecord, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO backfills (id, request, progress, created_by, owner)
         VALUES ($1, $2, $3, $4, $5) RETURNING {}",
        columns()
    ))
    .bind(new.id)
    .bind(Json(new.request))
    .bind(Json(new.progress))
    .bind(new.created_by)
    .bind(new.owner)
    .fetch_one(pool)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<BackfillRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {} FROM backfills WHERE id = $1",
        columns()
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A page of jobs, newest first, and how many there are.
pub async fn list(pool: &PgPool, page: Page) -> Result<(Vec<BackfillRecord>, i64), sqlx::Error> {
    let rows = sqlx::query_as(&format!(
        "SELECT {} FROM backfills ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2",
        columns()
    ))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM backfills")
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}

/// Marks a queued job of `owner` running, counting the attempt. False when the job is no longer
/// queued for this owner (it was cancelled, or claimed by another process).
pub async fn start(pool: &PgPool, id: Uuid, owner: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "UPDATE backfills SET state = 'running', started_at = now(), heartbeat_at = now(),
                attempts = attempts + 1
         WHERE id = $1 AND owner = $2 AND state = 'queued'",
    )
    .bind(id)
    .bind(owner)
    .execute(pool)
    .await
    .map(|r| r.rows_affected() == 1)
}

/// Records progress and that the owner is alive. False when the job is no longer running for
/// this owner: it was cancelled, or another process claimed it.
pub async fn heartbeat(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    progress: &Value,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "UPDATE backfills SET progress = $3, heartbeat_at = now()
         WHERE id = $1 AND owner = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(Json(progress))
    .execute(pool)
    .await
    .map(|r| r.rows_affected() == 1)
}

/// How a job ended.
#[derive(Debug, Clone)]
pub enum Finish<'a> {
    Succeeded { result: &'a Value },
    Failed { error: &'a str },
    Cancelled,
}

/// Ends a running job of `owner`. False when it was no longer running for this owner.
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    progress: &Value,
    how: Finish<'_>,
) -> Result<bool, sqlx::Error> {
    let (state, result, error) = match how {
        Finish::Succeeded { result } => ("succeeded", Some(Json(result)), None),
        Finish::Failed { error } => ("failed", None, Some(error)),
        Finish::Cancelled => ("cancelled", None, None),
    };
    sqlx::query(
        "UPDATE backfills SET state = $3, progress = $4, result = $5, error = $6,
                heartbeat_at = now(), finished_at = now()
         WHERE id = $1 AND owner = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(state)
    .bind(Json(progress))
    .bind(result)
    .bind(error)
    .execute(pool)
    .await
    .map(|r| r.rows_affected() == 1)
}

/// What [`claim`] and [`cancel`] found.
#[derive(Debug, Clone)]
pub enum Change {
    /// Done; the job as it is now.
    Done(BackfillRecord),
    /// The job is not in a state that allows it; as it is.
    Refused(BackfillRecord),
    NotFound,
}

/// Takes an interrupted or failed job for `owner`, queued again from the start with `progress`.
/// Atomic: of two processes claiming the same job, one gets it.
pub async fn claim(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    progress: &Value,
) -> Result<Change, sqlx::Error> {
    let claimed: Option<BackfillRecord> = sqlx::query_as(&format!(
        "UPDATE backfills SET state = 'queued', owner = $2, heartbeat_at = now(), progress = $3,
                result = NULL, error = NULL, started_at = NULL, finished_at = NULL
         WHERE id = $1 AND ({} OR state = 'failed') RETURNING {}",
        stale(),
        columns()
    ))
    .bind(id)
    .bind(owner)
    .bind(Json(progress))
    .fetch_optional(pool)
    .await?;
    refused_unless(pool, id, claimed).await
}

/// Cancels a queued or running job, wherever it runs: its owner stops at its next heartbeat.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<Change, sqlx::Error> {
    let cancelled: Option<BackfillRecord> = sqlx::query_as(&format!(
        "UPDATE backfills SET state = 'cancelled', finished_at = now()
         WHERE id = $1 AND state IN ('queued', 'running') RETURNING {}",
        columns()
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    refused_unless(pool, id, cancelled).await
}

async fn refused_unless(
    pool: &PgPool,
    id: Uuid,
    changed: Option<BackfillRecord>,
) -> Result<Change, sqlx::Error> {
    if let Some(record) = changed {
        return Ok(Change::Done(record));
    }
    Ok(match get(pool, id).await? {
        Some(record) => Change::Refused(record),
        None => Change::NotFound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_as_written() {
        for state in [
            BackfillState::Queued,
            BackfillState::Running,
            BackfillState::Interrupted,
            BackfillState::Succeeded,
            BackfillState::Failed,
            BackfillState::Cancelled,
        ] {
            assert_eq!(BackfillState::try_from(state.to_string()), Ok(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert!(BackfillState::try_from("paused".to_owned()).is_err());
    }
}
