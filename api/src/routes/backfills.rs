//! `/api/backfills`: background jobs that replay a range of METRICS through the engine and
//! write the incidents found, as `source = backfill`, like live ones. The request is checked
//! before the job is created, so a bad range or an unknown rule is refused at once; the job
//! then runs in this process (see [`crate::jobs`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use replay::backfill::{Request, RequestError};
use replay::Bound;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::backfills::{BackfillRecord, BackfillState, Change, NewBackfill};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Admin, Caller, Viewer};
use crate::envelope::{self, Data, List};
use crate::error::ApiError;
use crate::extract::{JsonBody, Params};
use crate::jobs::{JobProgress, JobResult};
use crate::routes::backtests::range_error;
use crate::routes::parse_id;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get))
        .routes(routes!(resume))
        .routes(routes!(cancel))
}

/// A new backfill job.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillBody {
    /// Start of the range: an RFC 3339 event time, or a METRICS stream sequence.
    #[schema(value_type = BoundText)]
    pub from: Bound,
    /// End of the range: an RFC 3339 event time, a METRICS sequence, or `now` (the default),
    /// which the job fixes at creation as the sequence METRICS ends at.
    #[serde(default)]
    #[schema(value_type = Option<BoundText>)]
    pub to: Option<Bound>,
    /// The rules to run, enabled or not; every enabled rule when empty or omitted.
    #[serde(default)]
    pub rule_ids: Vec<Uuid>,
    /// Only these services; all when empty or omitted.
    #[serde(default)]
    pub service_ids: Vec<String>,
    /// Notify the owning departments of the backfilled incidents, as for live ones.
    #[serde(default)]
    pub notify: bool,
}

/// An end of a range: an RFC 3339 time such as `2026-11-20T00:00:00Z`, `now`, or a METRICS
/// stream sequence (a positive integer, as a number or as text).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum BoundText {
    Text(String),
    Sequence(u64),
}

/// The request a job runs, as stored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BackfillRequest {
    from: BoundText,
    /// `now` when created is stored as the METRICS sequence it stood at, so that a resumed job
    /// replays the same range.
    to: BoundText,
    rule_ids: Vec<Uuid>,
    service_ids: Vec<String>,
    notify: bool,
}

/// A backfill job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Backfill {
    pub id: Uuid,
    #[schema(value_type = BackfillRequest)]
    pub request: Value,
    /// `interrupted`: queued or running, but its process has not been heard from for 15 s.
    pub state: BackfillState,
    /// Whether `POST /api/backfills/{id}/resume` would take it: it is interrupted or failed.
    pub resumable: bool,
    /// How many times it was started.
    pub attempts: i32,
    #[schema(value_type = JobProgress)]
    pub progress: Value,
    /// What it wrote, once it succeeded.
    #[schema(value_type = Option<JobResult>)]
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// The process that runs (or last ran) it.
    pub owner: Option<Uuid>,
    /// When that process last said it was alive.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// Who asked for it, such as `key:ops`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When its current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<BackfillRecord> for Backfill {
    fn from(r: BackfillRecord) -> Backfill {
        Backfill {
            id: r.id,
            request: r.request.0,
            state: r.state,
            resumable: r.resumable,
            attempts: r.attempts,
            progress: r.progress.0,
            result: r.result.map(|r| r.0),
            error: r.error,
            owner: r.owner,
            heartbeat_at: r.heartbeat_at,
            created_by: r.created_by,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

impl BackfillBody {
    /// The request, with valid service ids and each rule once.
    fn into_request(self) -> Result<Request, ApiError> {
        for (i, service) in self.service_ids.iter().enumerate() {
            schemas::sample::validate_service_id(service)
                .map_err(|reason| ApiError::invalid_field(format!("service_ids[{i}]"), reason))?;
        }
        let mut rule_ids = self.rule_ids;
        let mut seen = std::collections::HashSet::new();
        rule_ids.retain(|id| seen.insert(*id));
        let mut service_ids = self.service_ids;
        let mut seen = std::collections::HashSet::new();
        service_ids.retain(|s| seen.insert(s.clone()));
        Ok(Request {
            from: self.from,
            to: self.to.unwrap_or(Bound::Now),
            rule_ids,
            service_ids,
            notify: self.notify,
        })
    }
}

fn request_error(e: RequestError) -> ApiError {
    match e {
        RequestError::UnknownRule(id) => {
            ApiError::invalid_field("rule_ids", format!("rule {id} does not exist"))
        }
        RequestError::NoRules => ApiError::invalid_field("rule_ids", e.to_string()),
        RequestError::NoSeries | RequestError::InvalidService { .. } => {
            ApiError::invalid_field("service_ids", e.to_string())
        }
        RequestError::Range(e) => range_error(e),
        RequestError::Other(e) => ApiError::Internal(e),
    }
}

/// Backfill jobs, newest first.
#[utoipa::path(get, path = "/backfills", tag = "backfills",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Items per page, 1 to 1000; 50 when omitted."),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Items to skip."),
    ),
    responses((status = 200, description = "A page of backfill jobs.", body = List<Backfill>)))]
pub async fn list(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let page = params.page()?;
    params.finish()?;
    let (items, total) = store::backfills::list(&state.pool, page).await?;
    let items: Vec<Backfill> = items.into_iter().map(Backfill::from).collect();
    Ok(envelope::list(items, total, page))
}

/// Starts a backfill job: replays the range through the chosen rules (enabled or not) and
/// writes the incidents found, with the ids the live pipeline would give them. Incidents
/// already stored in the same state, or covering the same episode, are left alone, so running
/// a backfill again writes nothing new.
///
/// The request is checked first: a bad range or an unknown rule is a 422 and no job is made.
/// The job runs in this process; follow it with `GET /api/backfills/{id}`.
#[utoipa::path(post, path = "/backfills", tag = "backfills", request_body = BackfillBody,
    responses(
        (status = 202, description = "The job, queued.", body = Data<Backfill>),
        (status = 422, description = "The body is invalid, a rule does not exist, or the range is (`from` not before `to`, in the future, past the end of METRICS, or ending before the oldest sample held); `details` names the field.", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<BackfillBody>,
) -> Result<Response, ApiError> {
    let mut request = body.into_request()?;
    let (replay, plan) = replay::backfill::prepare(
        &state.js,
        &state.pool,
        &request,
        state.settings.allowed_lateness,
    )
    .await
    .map_err(request_error)?;
    if request.to == Bound::Now && plan.end_seq > 0 {
        // A resumed job replays the same range, not whatever METRICS holds by then.
        request.to = Bound::Sequence(plan.end_seq);
    }
    let id = Uuid::new_v4();
    let owner = state.jobs.new_attempt();
    let actor = caller.actor();
    let stored = serde_json::to_value(&request).map_err(anyhow::Error::from)?;
    let record = store::backfills::insert(
        &state.pool,
        &NewBackfill {
            id,
            request: &stored,
            progress: &JobProgress::queued(),
            created_by: &actor,
            owner,
        },
    )
    .await?;
    tracing::info!(backfill = %id, %actor, "backfill created");
    state.jobs.spawn(
        state.job_context(),
        id,
        owner,
        request,
        Some((replay, plan)),
    );
    Ok(accepted(record))
}

/// One backfill job: its state, progress, and once it has ended, its result or error.
#[utoipa::path(get, path = "/backfills/{id}", tag = "backfills",
    params(("id" = Uuid, Path, description = "The job's id.")),
    responses((status = 200, description = "The job.", body = Data<Backfill>)))]
pub async fn get(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let record = store::backfills::get(&state.pool, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(envelope::data(Backfill::from(record)))
}

/// Runs an interrupted or failed job again, from the start, in this process. Safe: a backfill
/// is idempotent, and incidents the first attempt wrote are left alone.
#[utoipa::path(post, path = "/backfills/{id}/resume", tag = "backfills",
    params(("id" = Uuid, Path, description = "The job's id.")),
    responses(
        (status = 202, description = "The job, queued again.", body = Data<Backfill>),
        (status = 409, description = "The job is neither interrupted nor failed: it is still running, or it succeeded or was cancelled.", body = crate::error::ErrorBody),
    ))]
pub async fn resume(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let owner = state.jobs.new_attempt();
    let claimed = store::backfills::claim(&state.pool, id, owner, &JobProgress::queued()).await?;
    let record = match claimed {
        Change::Done(record) => record,
        Change::Refused(record) => {
            return Err(ApiError::Conflict(format!(
                "backfill {id} is {}; only an interrupted or failed job can be resumed{}",
                record.state,
                if record.state.is_finished() {
                    ""
                } else {
                    " (a job is interrupted once its process has not been heard from for 15 s)"
                }
            )))
        }
        Change::NotFound => return Err(not_found(id)),
    };
    let request: Request = serde_json::from_value(record.request.0.clone())
        .map_err(|e| anyhow::anyhow!("backfill {id} has an unreadable request: {e}"))?;
    tracing::info!(backfill = %id, actor = %caller.actor(), "backfill resumed");
    state
        .jobs
        .spawn(state.job_context(), id, owner, request, None);
    Ok(accepted(record))
}

/// Cancels a queued or running (or interrupted) job, wherever it runs. Incidents it already
/// published are written all the same.
#[utoipa::path(post, path = "/backfills/{id}/cancel", tag = "backfills",
    params(("id" = Uuid, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job, cancelled.", body = Data<Backfill>),
        (status = 409, description = "The job has already ended.", body = crate::error::ErrorBody),
    ))]
pub async fn cancel(
    caller: Caller<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match store::backfills::cancel(&state.pool, id).await? {
        Change::Done(record) => {
            state.jobs.cancel(id);
            tracing::info!(backfill = %id, actor = %caller.actor(), "backfill cancelled");
            Ok(envelope::data(Backfill::from(record)))
        }
        Change::Refused(record) => Err(ApiError::Conflict(format!(
            "backfill {id} has already ended: it {}",
            record.state
        ))),
        Change::NotFound => Err(not_found(id)),
    }
}

fn accepted(record: BackfillRecord) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "data": Backfill::from(record) })),
    )
        .into_response()
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("backfill {id} not found"))
}
