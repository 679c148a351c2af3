//! `/api/overview` and `/api/pipeline`: what the dashboard's overview shows at a glance.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use store::overview::IncidentCounts;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Caller, Viewer};
use crate::envelope::{self, Data};
use crate::error::ApiError;
use crate::extract::Params;
use crate::live::{health, Pipeline};
use crate::AppState;

/// Most service tiles the overview returns.
pub const MAX_TILES: i64 = 200;
/// How many of the most triggered rules the overview lists.
const TOP_RULES: i64 = 5;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(overview))
        .routes(routes!(pipeline))
}

/// A service's quality: `violated` while a CRITICAL or HIGH incident fires (unresolved and not
/// closed), `warning` while only MEDIUM or LOW ones do, else `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Ok,
    Warning,
    Violated,
}

impl Quality {
    fn from_worst(severity: Option<&str>) -> Quality {
        match severity {
            Some("CRITICAL" | "HIGH") => Quality::Violated,
            Some(_) => Quality::Warning,
            None => Quality::Ok,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceTile {
    pub id: String,
    pub display_name: Option<String>,
    pub department_id: Option<Uuid>,
    pub status: Quality,
    /// Unresolved incidents not closed by a person.
    pub firing: i64,
    /// The worst severity among them.
    pub worst_severity: Option<String>,
    /// Incidents OPEN or IN_PROGRESS.
    pub open: i64,
    /// Every metric archived for the service.
    pub metric_types: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopRule {
    pub rule_id: Uuid,
    pub name: String,
    pub severity: schemas::Severity,
    pub enabled: bool,
    /// Incidents the rule has opened.
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// At most 200, the most troubled first, then by id.
    pub services: Vec<ServiceTile>,
    /// All registered services.
    pub services_total: i64,
    pub incidents: IncidentCounts,
    /// The five most triggered rules.
    pub top_rules: Vec<TopRule>,
    /// The latest measurement; `null` in the first seconds after start-up.
    pub pipeline: Option<Pipeline>,
}

/// Everything the overview shows: a tile per service with its quality, incident counts, the
/// most triggered rules and the pipeline's health.
#[utoipa::path(get, path = "/overview", tag = "dashboard",
    responses((status = 200, description = "The overview.", body = Data<Overview>)))]
pub async fn overview(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    params: Params,
) -> Result<Response, ApiError> {
    params.finish()?;
    let pool = &state.pool;
    let services = store::overview::services(pool, MAX_TILES).await?;
    let services_total = store::services::count(pool).await?;
    let incidents = store::overview::incident_counts(pool).await?;
    let (rules, _) = store::rules::list(
        pool,
        &store::rules::RuleFilter::default(),
        store::rules::TOP_TRIGGERED,
        store::Page {
            limit: TOP_RULES,
            offset: 0,
        },
    )
    .await?;
    let overview = Overview {
        services: services
            .into_iter()
            .map(|s| ServiceTile {
                status: Quality::from_worst(s.worst_severity.as_deref()),
                id: s.id,
                display_name: s.display_name,
                department_id: s.department_id,
                firing: s.firing,
                worst_severity: s.worst_severity,
                open: s.open,
                metric_types: s.metric_types,
            })
            .collect(),
        services_total,
        incidents,
        top_rules: rules
            .into_iter()
            .filter(|r| r.trigger_count > 0)
            .map(|r| TopRule {
                rule_id: r.id,
                name: r.name,
                severity: r.severity,
                enabled: r.enabled,
                count: r.trigger_count,
            })
            .collect(),
        pipeline: state.live.pipeline().map(Arc::unwrap_or_clone),
    };
    Ok(envelope::data(overview))
}

/// The pipeline's health: samples arriving per second, each durable consumer's backlog, and
/// detection latency over the last 15 minutes. Measured every 5 s and also sent on
/// `/api/stream`; measured now, without an ingest rate, in the first seconds after start-up.
#[utoipa::path(get, path = "/pipeline", tag = "dashboard",
    responses((status = 200, description = "The pipeline's health.", body = Data<Pipeline>)))]
pub async fn pipeline(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    params: Params,
) -> Result<Response, ApiError> {
    params.finish()?;
    let pipeline = match state.live.pipeline() {
        Some(latest) => Arc::unwrap_or_clone(latest),
        None => {
            health::Meter::new(
                state.js.clone(),
                state.pool.clone(),
                state.live.consumers().to_vec(),
            )
            .measure()
            .await
        }
    };
    Ok(envelope::data(pipeline))
}
