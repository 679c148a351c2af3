//! The `services` table: registered on first sight of a sample; an admin may name a service
//! and give it to a department.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{Page, Sort, SortField};

const COLUMNS: &str = "id, display_name, department_id, first_seen_at, created_at, updated_at";

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ServiceRecord {
    pub id: String,
    pub display_name: Option<String>,
    pub department_id: Option<Uuid>,
    pub first_seen_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Registers services not seen before; known ones are left untouched. Returns the ones newly
/// registered.
pub async fn register_many<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO services (id) SELECT * FROM UNNEST($1::text[]) ON CONFLICT (id) DO NOTHING
         RETURNING id",
    )
    .bind(ids)
    .fetch_all(executor)
    .await
}

/// Filters of `GET /api/services`; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct ServiceFilter {
    pub department_id: Option<Uuid>,
}

pub const SORT_FIELDS: &[SortField] = &[
    SortField::new("id", "id"),
    SortField::new("first_seen_at", "first_seen_at"),
    SortField::new("display_name", "display_name"),
];

/// By id, ascending.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: false,
};

pub async fn list(
    pool: &PgPool,
    filter: &ServiceFilter,
    sort: Sort,
    page: Page,
) -> Result<(Vec<ServiceRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM services"));
    push_filter(&mut query, filter);
    sort.push_order_and_page(&mut query, "id", page);
    let rows = query.build_query_as().fetch_all(pool).await?;

    let mut count = QueryBuilder::new("SELECT count(*) FROM services");
    push_filter(&mut count, filter);
    let total = count.build_query_scalar().fetch_one(pool).await?;
    Ok((rows, total))
}

fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &ServiceFilter) {
    if let Some(department_id) = filter.department_id {
        query
            .push(" WHERE department_id = ")
            .push_bind(department_id);
    }
}

pub async fn get(pool: &PgPool, id: &str) -> Result<Option<ServiceRecord>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM services WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The fields a patch changes: `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceChange {
    pub display_name: Option<Option<String>>,
    pub department_id: Option<Option<Uuid>>,
}

/// Why a service could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("department {0} does not exist")]
    UnknownDepartment(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Applies `change`; `Ok(None)` when there is no such service. Fails with
/// [`UpdateError::UnknownDepartment`] when the department does not exist (checked by the
/// foreign key, so a department deleted meanwhile cannot slip through).
pub async fn update(
    pool: &PgPool,
    id: &str,
    change: &ServiceChange,
) -> Result<Option<ServiceRecord>, UpdateError> {
    let result = sqlx::query_as(&format!(
        "UPDATE services SET
             display_name = CASE WHEN $2 THEN $3 ELSE display_name END,
             department_id = CASE WHEN $4 THEN $5 ELSE department_id END,
             updated_at = now()
         WHERE id = $1
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(change.display_name.is_some())
    .bind(change.display_name.clone().flatten())
    .bind(change.department_id.is_some())
    .bind(change.department_id.flatten())
    .fetch_optional(pool)
    .await;
    match result {
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            let department = change.department_id.flatten().unwrap_or_default();
            Err(UpdateError::UnknownDepartment(department))
        }
        other => Ok(other?),
    }
}

/// How one metric of a service is doing.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MetricHealth {
    pub metric_type: String,
    /// Unresolved incidents on this metric.
    pub open_incidents: i64,
    /// The worst severity among them.
    pub worst_severity: Option<String>,
    /// From the latest minute rollup.
    pub last_value: Option<f64>,
    pub last_at: Option<DateTime<Utc>>,
}

/// Every metric seen for the service (archived, or with an unresolved incident), by name.
pub async fn metric_health(
    pool: &PgPool,
    service_id: &str,
) -> Result<Vec<MetricHealth>, sqlx::Error> {
    // Rollups are kept for ever: the metric names are found by skipping through the primary
    // key, and each one's latest minute read from its end, instead of reading every minute.
    sqlx::query_as(&format!(
        "WITH RECURSIVE metrics AS (
             (SELECT metric_type FROM metric_rollups WHERE service_id = $1
              ORDER BY metric_type LIMIT 1)
             UNION ALL
             SELECT (SELECT r.metric_type FROM metric_rollups r
                     WHERE r.service_id = $1 AND r.metric_type > m.metric_type
                     ORDER BY r.metric_type LIMIT 1)
             FROM metrics m WHERE m.metric_type IS NOT NULL
         ),
         latest AS (
             SELECT m.metric_type, l.last, l.last_at
             FROM metrics m
             CROSS JOIN LATERAL (
                 SELECT last, last_at FROM metric_rollups r
                 WHERE r.service_id = $1 AND r.metric_type = m.metric_type
                 ORDER BY minute DESC LIMIT 1
             ) l
         ),
         open AS (
             SELECT metric_type, count(*) AS open_incidents, max({rank}) AS worst
             FROM incidents WHERE service_id = $1 AND resolved_at IS NULL
             GROUP BY metric_type
         )
         SELECT metric_type,
                COALESCE(open.open_incidents, 0) AS open_incidents,
                CASE open.worst WHEN 4 THEN 'CRITICAL' WHEN 3 THEN 'HIGH'
                                WHEN 2 THEN 'MEDIUM' WHEN 1 THEN 'LOW' END AS worst_severity,
                latest.last AS last_value,
                latest.last_at
         FROM latest FULL JOIN open USING (metric_type)
         ORDER BY metric_type",
        rank = crate::SEVERITY_RANK
    ))
    .bind(service_id)
    .fetch_all(pool)
    .await
}

/// How many services are registered.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM services")
        .fetch_one(pool)
        .await
}
