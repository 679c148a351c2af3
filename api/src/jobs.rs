//! Backfill jobs run by this process, in the background.
//!
//! A job is a row of `backfills` (see [`store::backfills`]) owned by the process that runs it.
//! While it runs, the task here writes its progress and a heartbeat about every second and at
//! each change of stage; then `succeeded` with what was written, `failed` with why, or nothing
//! at all when the process is stopping: the job is left to be read as interrupted, and may be
//! resumed by any process. A job that another process claimed, or that was cancelled through
//! another process, is noticed at the next heartbeat and stopped here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use replay::backfill::{self, Request, Stage};
use replay::scan::Ended;
use replay::{Plan, Replay};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use store::backfills::Finish;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

/// How often a running job writes its progress and heartbeat, at most (besides stage changes).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The backfill jobs this process runs.
pub struct Jobs {
    /// Fires when the process stops.
    shutdown: CancellationToken,
    /// Job id → the attempt running here (its owner token) and what stops it.
    running: Mutex<HashMap<Uuid, (Uuid, CancellationToken)>>,
}

/// What a job needs to run.
#[derive(Clone)]
pub struct JobContext {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub allowed_lateness: schemas::Span,
}

/// Where a job is, as stored in `progress`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStage {
    /// Not started yet.
    #[default]
    Queued,
    /// The range is planned; reading is about to start.
    Planned,
    /// Reading METRICS through the engine.
    Reading,
    /// The incidents are published; waiting for `record` to write them.
    Recording,
    /// Finished.
    Done,
}

/// A job's progress: the replay's counts, its stage, and how far `record` has written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct JobProgress {
    pub stage: JobStage,
    /// The share of the range read, from 0 to 1.
    pub fraction: f64,
    /// First METRICS sequence read (0 before any).
    pub first_seq: u64,
    /// The METRICS sequence the replay ends at.
    pub end_seq: u64,
    /// Last METRICS sequence read.
    pub position: u64,
    /// Samples evaluated.
    pub samples: u64,
    /// Samples read but outside the range in event time.
    pub skipped: u64,
    /// Messages that are not valid samples.
    pub rejected: u64,
    /// Samples dropped as later than the allowed lateness.
    pub late: u64,
    /// Incidents found opening, and resolving, so far.
    pub opened: u64,
    pub resolved: u64,
    /// INCIDENTS sequence `record` has written through, of those this job published.
    pub recorded_through: u64,
    /// Last INCIDENTS sequence this job published.
    pub published_through: u64,
}

impl JobProgress {
    pub fn queued() -> Value {
        serde_json::to_value(JobProgress::default()).expect("progress serializes")
    }

    fn observe(&mut self, stage: Stage<'_>) {
        match stage {
            Stage::Planned(plan) => {
                self.stage = JobStage::Planned;
                self.end_seq = plan.end_seq;
            }
            Stage::Reading(p) => {
                self.stage = JobStage::Reading;
                self.fraction = p.fraction();
                self.first_seq = p.first_seq;
                self.end_seq = p.end_seq;
                self.position = p.position;
                self.samples = p.samples;
                self.skipped = p.skipped;
                self.rejected = p.rejected;
                self.late = p.late;
                self.opened = p.opened;
                self.resolved = p.resolved;
            }
            Stage::Recording(r) => {
                self.stage = JobStage::Recording;
                self.recorded_through = r.recorded_through;
                self.published_through = r.published_through;
            }
        }
    }
}

/// What a succeeded job did, as stored in `result`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct JobResult {
    /// Incidents published to be written or brought up to date.
    pub written: u64,
    /// Incidents already stored in the same state, left alone.
    pub unchanged: u64,
    /// Incidents skipped because another stored incident covers the same episode.
    pub overlapping: u64,
    /// Incidents of rules enabled live still firing at the end of the stream, left to the
    /// live evaluator.
    pub left_to_live: u64,
    /// Transitions published to INCIDENTS.
    pub transitions: u64,
    /// Incidents the replay found.
    pub incidents: u64,
    /// Said about the range: history that is gone, for example.
    pub warnings: Vec<String>,
}

impl Jobs {
    /// Jobs that stop when `shutdown` fires.
    pub fn new(shutdown: CancellationToken) -> Jobs {
        Jobs {
            shutdown,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// A new owner token for one attempt at a job. Each attempt has its own, so an attempt
    /// that was taken over, even by a resume in this same process, learns so at its next
    /// heartbeat and stops.
    pub fn new_attempt(&self) -> Uuid {
        Uuid::new_v4()
    }

    /// Runs the queued job `id` of this owner in the background. `prepared` is the checked
    /// request and its plan, when the caller has them; otherwise they are made again. While the
    /// process is stopping nothing starts: the job stays queued and is soon read as
    /// interrupted.
    pub fn spawn(
        self: &Arc<Self>,
        ctx: JobContext,
        id: Uuid,
        owner: Uuid,
        request: Request,
        prepared: Option<(Replay, Plan)>,
    ) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let token = self.shutdown.child_token();
        if let Some((_, earlier)) = self.lock().insert(id, (owner, token.clone())) {
            // An earlier attempt here was taken over: it stops now rather than at its heartbeat.
            earlier.cancel();
        }
        let jobs = self.clone();
        tokio::spawn(async move {
            let _running = Running {
                jobs: &jobs,
                id,
                owner,
            };
            run(&ctx, id, owner, &request, prepared, &token, &jobs.shutdown).await;
        });
    }

    /// Stops the job `id` if it runs here; whether it did.
    pub fn cancel(&self, id: Uuid) -> bool {
        match self.lock().get(&id) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Waits for the process to stop, then for its jobs to let go.
    pub async fn run_until_stopped(&self) {
        self.shutdown.cancelled().await;
        while !self.lock().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Uuid, CancellationToken)>> {
        self.running.lock().expect("backfill jobs lock poisoned")
    }
}

/// Forgets a job when its task ends, however it ends.
struct Running<'a> {
    jobs: &'a Jobs,
    id: Uuid,
    owner: Uuid,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut running = self.jobs.lock();
        if running
            .get(&self.id)
            .is_some_and(|(owner, _)| *owner == self.owner)
        {
            running.remove(&self.id);
        }
    }
}

async fn run(
    ctx: &JobContext,
    id: Uuid,
    owner: Uuid,
    request: &Request,
    prepared: Option<(Replay, Plan)>,
    token: &CancellationToken,
    shutdown: &CancellationToken,
) {
    match store::backfills::start(&ctx.pool, id, owner).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(backfill = %id, "backfill cancelled or taken over before it started");
            return;
        }
        Err(e) => {
            tracing::warn!(backfill = %id, error = %e, "could not start a backfill; it will be reported interrupted");
            return;
        }
    }
    tracing::info!(backfill = %id, from = %request.from, to = %request.to, "backfill started");
    let progress = Mutex::new(JobProgress::default());
    let stage_changed = Notify::new();
    let snapshot = || {
        let p = progress.lock().expect("progress lock poisoned").clone();
        serde_json::to_value(p).expect("progress serializes")
    };
    let work = async {
        let (replay, plan) = match prepared {
            Some(prepared) => prepared,
            None => backfill::prepare(&ctx.js, &ctx.pool, request, ctx.allowed_lateness)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        backfill::execute(
            &ctx.js,
            &ctx.pool,
            (&replay, &plan),
            request,
            false,
            token,
            |stage| {
                let mut p = progress.lock().expect("progress lock poisoned");
                let before = p.stage;
                p.observe(stage);
                if p.stage != before {
                    stage_changed.notify_one();
                }
            },
        )
        .await
    };
    // Returns only when the job is no longer this process's to run.
    let beat = async {
        loop {
            tokio::select! {
                () = tokio::time::sleep(HEARTBEAT) => {}
                () = stage_changed.notified() => {}
            }
            match store::backfills::heartbeat(&ctx.pool, id, owner, &snapshot()).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(backfill = %id, error = %e, "could not record a backfill's progress");
                }
            }
        }
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        () = beat => {
            token.cancel();
            tracing::info!(backfill = %id, "backfill cancelled or taken over by another process; stopped here");
            return;
        }
    };
    let how = match outcome {
        Ok(summary) if summary.ended == Ended::Complete => {
            let applied = summary.applied.unwrap_or_default();
            let result = JobResult {
                written: applied.written,
                unchanged: applied.unchanged,
                overlapping: applied.overlapping,
                left_to_live: applied.left_to_live,
                transitions: applied.transitions,
                incidents: summary.incidents.len() as u64,
                warnings: summary.warnings,
            };
            tracing::info!(backfill = %id, ?result, "backfill succeeded");
            let mut p = progress.lock().expect("progress lock poisoned");
            p.stage = JobStage::Done;
            p.fraction = 1.0;
            Ok(serde_json::to_value(result).expect("a result serializes"))
        }
        _ if token.is_cancelled() && shutdown.is_cancelled() => {
            tracing::info!(backfill = %id, "stopping with the process; the backfill will be reported interrupted");
            return;
        }
        _ if token.is_cancelled() => Err(None),
        Ok(summary) => Err(Some(format!(
            "the replay stopped before the end of the range ({:?})",
            summary.ended
        ))),
        Err(e) => Err(Some(format!("{e:#}"))),
    };
    let progress = snapshot();
    let finish = match &how {
        Ok(result) => Finish::Succeeded { result },
        Err(Some(error)) => {
            tracing::warn!(backfill = %id, error, "backfill failed");
            Finish::Failed { error }
        }
        Err(None) => Finish::Cancelled,
    };
    match store::backfills::finish(&ctx.pool, id, owner, &progress, finish).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(backfill = %id, "backfill was cancelled or taken over as it ended")
        }
        Err(e) => {
            tracing::warn!(backfill = %id, error = %e, "could not record how a backfill ended; it will be reported interrupted")
        }
    }
}
