//! A whole replay as the CLI and background jobs run it: check the request, plan the range,
//! read it, and (unless it is a dry run) write the incidents and wait for `record`.

use std::collections::HashSet;
use std::ops::ControlFlow;

use async_nats::jetstream;
use pipeline::Rule;
use schemas::subject::METRICS_STREAM;
use schemas::Span;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::apply::{self, Applied, Recording};
use crate::plan::{self, Plan, RangeError};
use crate::run::{Event, Progress, Replay, WouldBe};
use crate::scan::Ended;
use crate::Bound;

/// What to replay, as a user asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub from: Bound,
    #[serde(default = "now")]
    pub to: Bound,
    /// The rules to run; none means every enabled rule.
    #[serde(default)]
    pub rule_ids: Vec<Uuid>,
    /// Only these services; none means all.
    #[serde(default)]
    pub service_ids: Vec<String>,
    /// Notify the owning teams of backfilled incidents, as for live ones.
    #[serde(default)]
    pub notify: bool,
}

fn now() -> Bound {
    Bound::Now
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("unknown rule {0}")]
    UnknownRule(Uuid),
    #[error("there are no enabled rules to replay; name the rules to run")]
    NoRules,
    #[error("the chosen rules watch none of the chosen services")]
    NoSeries,
    #[error("invalid service id `{id}`: {reason}")]
    InvalidService { id: String, reason: String },
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Where a replay is.
pub enum Stage<'a> {
    Planned(&'a Plan),
    Reading(&'a Progress),
    Recording(Recording),
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub warnings: Vec<String>,
    pub progress: Progress,
    pub incidents: Vec<WouldBe>,
    /// `None` for a dry run, or one that was stopped before writing.
    pub applied: Option<Applied>,
    pub ended: Ended,
}

/// The rules a request names (each must exist), or every enabled rule.
pub async fn load_rules(pool: &PgPool, rule_ids: &[Uuid]) -> Result<Vec<Rule>, RequestError> {
    let all = store::rules::list_all(pool)
        .await
        .map_err(|e| anyhow::anyhow!("loading rules: {e}"))?;
    if rule_ids.is_empty() {
        let enabled: Vec<Rule> = all
            .iter()
            .filter(|r| r.enabled)
            .map(crate::rules::engine_rule)
            .collect();
        if enabled.is_empty() {
            return Err(RequestError::NoRules);
        }
        return Ok(enabled);
    }
    rule_ids
        .iter()
        .map(|id| {
            all.iter()
                .find(|r| r.id == *id)
                .map(crate::rules::engine_rule)
                .ok_or(RequestError::UnknownRule(*id))
        })
        .collect()
}

/// Checks the request and plans it; nothing is read yet.
pub async fn prepare(
    js: &jetstream::Context,
    pool: &PgPool,
    request: &Request,
    allowed_lateness: Span,
) -> Result<(Replay, Plan), RequestError> {
    plan::check_order(request.from, request.to, chrono::Utc::now())?;
    for id in &request.service_ids {
        schemas::sample::validate_service_id(id).map_err(|reason| {
            RequestError::InvalidService {
                id: id.clone(),
                reason,
            }
        })?;
    }
    let rules = load_rules(pool, &request.rule_ids).await?;
    let replay = Replay {
        rules,
        services: request.service_ids.clone(),
        allowed_lateness,
    };
    if replay.filter_subjects().is_empty() {
        return Err(RequestError::NoSeries);
    }
    let plan = plan::plan(
        js,
        METRICS_STREAM,
        request.from,
        request.to,
        replay.lookback(),
    )
    .await?;
    Ok((replay, plan))
}

/// Runs a prepared replay; writes its incidents unless `dry_run`.
pub async fn execute(
    js: &jetstream::Context,
    pool: &PgPool,
    (replay, plan): (&Replay, &Plan),
    request: &Request,
    dry_run: bool,
    cancel: &CancellationToken,
    mut report: impl FnMut(Stage<'_>),
) -> anyhow::Result<Summary> {
    report(Stage::Planned(plan));
    let outcome = replay
        .run(js, METRICS_STREAM, plan, cancel, |event| {
            if let Event::Progress(p) = event {
                report(Stage::Reading(p));
            }
            ControlFlow::Continue(())
        })
        .await?;
    let mut summary = Summary {
        warnings: plan.warnings.clone(),
        progress: outcome.progress,
        incidents: outcome.incidents,
        applied: None,
        ended: outcome.ended,
    };
    if dry_run || summary.ended != Ended::Complete {
        return Ok(summary);
    }
    let live_rules: HashSet<Uuid> = replay
        .rules
        .iter()
        .filter(|r| r.enabled)
        .map(|r| r.id)
        .collect();
    let (applied, through, published) =
        apply::publish(js, pool, &summary.incidents, &live_rules, request.notify).await?;
    summary.applied = Some(applied);
    apply::wait_for_record(js, through, cancel, |r| report(Stage::Recording(r))).await?;
    apply::confirm_written(pool, &published).await?;
    Ok(summary)
}
