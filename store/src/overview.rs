//! What the dashboard's overview shows at a glance: each service's quality from its firing
//! incidents, incident counts by status, and how quickly incidents are detected.

use chrono::TimeDelta;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// One service's tile: its incidents that are still firing (unresolved and not closed by a
/// person) decide its status.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ServiceQuality {
    pub id: String,
    pub display_name: Option<String>,
    pub department_id: Option<Uuid>,
    /// Unresolved incidents not closed by a person.
    pub firing: i64,
    /// The worst severity among them.
    pub worst_severity: Option<String>,
    /// Incidents `OPEN` or `IN_PROGRESS`.
    pub open: i64,
    /// Every metric archived for the service, by name.
    pub metric_types: Vec<String>,
}

/// Up to `limit` services, the most troubled first (worst firing severity, then most firing),
/// then by id.
pub async fn services(pool: &PgPool, limit: i64) -> Result<Vec<ServiceQuality>, sqlx::Error> {
    // Metric names come from skipping through the rollups' primary key, which starts with
    // (service_id, metric_type), instead of reading every minute.
    sqlx::query_as(&format!(
        "WITH firing AS (
             SELECT service_id, count(*) AS firing, max({rank}) AS worst
             FROM incidents WHERE resolved_at IS NULL AND status <> 'CLOSED'
             GROUP BY service_id
         ),
         open AS (
             SELECT service_id, count(*) AS open
             FROM incidents WHERE status IN ('OPEN', 'IN_PROGRESS')
             GROUP BY service_id
         ),
         shown AS (
             SELECT s.id, s.display_name, s.department_id,
                    COALESCE(f.firing, 0) AS firing, f.worst, COALESCE(o.open, 0) AS open
             FROM services s
             LEFT JOIN firing f ON f.service_id = s.id
             LEFT JOIN open o ON o.service_id = s.id
             ORDER BY f.worst DESC NULLS LAST, COALESCE(f.firing, 0) DESC, s.id
             LIMIT $1
         )
         SELECT shown.id, shown.display_name, shown.department_id, shown.firing,
                CASE shown.worst WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH'
                                 WHEN 2 THEN 'MEDIUM' WHEN 1 THEN 'LOW' END AS worst_severity,
                shown.open,
                ARRAY(
                    WITH RECURSIVE metrics AS (
                        (SELECT r.metric_type FROM metric_rollups r WHERE r.service_id = shown.id
                         ORDER BY r.metric_type LIMIT 1)
                        UNION ALL
                        SELECT (SELECT r.metric_type FROM metric_rollups r
                                WHERE r.service_id = shown.id AND r.metric_type > m.metric_type
                                ORDER BY r.metric_type LIMIT 1)
                        FROM metrics m WHERE m.metric_type IS NOT NULL
                    )
                    SELECT metric_type FROM metrics WHERE metric_type IS NOT NULL
                ) AS metric_types
         FROM shown
         ORDER BY shown.worst DESC NULLS LAST, shown.firing DESC, shown.id",
        rank = crate::SEVERITY_RANK
    ))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Incidents by where people are in working them, and how many still fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct IncidentCounts {
    pub open: i64,
    pub in_progress: i64,
    pub closed: i64,
    /// Unresolved and not closed.
    pub firing: i64,
}

pub async fn incident_counts(pool: &PgPool) -> Result<IncidentCounts, sqlx::Error> {
    // One count per index rather than one pass over every incident.
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM incidents WHERE status = 'OPEN') AS open,
                (SELECT count(*) FROM incidents WHERE status = 'IN_PROGRESS') AS in_progress,
                (SELECT count(*) FROM incidents WHERE status = 'CLOSED') AS closed,
                (SELECT count(*) FROM incidents
                 WHERE resolved_at IS NULL AND status <> 'CLOSED') AS firing",
    )
    .fetch_one(pool)
    .await
}

/// Detection latency of the live incidents recorded lately: from the event time of the sample
/// that opened each one to its row's insertion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DetectionLatency {
    /// How far back incidents are counted.
    pub window_seconds: i64,
    pub count: i64,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

pub async fn detection_latency(
    pool: &PgPool,
    window: TimeDelta,
) -> Result<DetectionLatency, sqlx::Error> {
    let (count, p50, p99): (i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY latency)
         FROM (SELECT GREATEST(extract(epoch FROM created_at - opened_at), 0)::float8 AS latency
               FROM incidents
               WHERE source = 'live' AND created_at >= now() - $1::interval) recent",
    )
    .bind(window)
    .fetch_one(pool)
    .await?;
    Ok(DetectionLatency {
        window_seconds: window.num_seconds(),
        count,
        p50_seconds: p50,
        p99_seconds: p99,
    })
}
