//! The search document of an incident, as the `index` consumer sends it to Meilisearch: always
//! built from the incident's current row (and its comments), never from an event, so that an
//! old event replayed late cannot overwrite newer data.

use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

/// One incident in the index; `id` is the primary key. Times are unix seconds (with their
/// fraction, so filters agree with Postgres to the microsecond), so that Meilisearch can filter
/// and sort on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SearchDocument {
    pub id: Uuid,
    pub title: String,
    pub message: String,
    pub service_id: String,
    pub service_name: String,
    pub rule_id: Uuid,
    pub rule_name: String,
    pub severity: String,
    pub status: String,
    pub department_id: Option<Uuid>,
    pub department_name: Option<String>,
    pub opened_at: f64,
    pub closed_at: Option<f64>,
    pub resolved_at: Option<f64>,
    pub peak_value: f64,
    /// The text of every comment, oldest first.
    pub comments: Vec<String>,
}

/// The title both engines show: `<rule name> on <service name>`.
pub const TITLE_SQL: &str = "i.rule_name || ' on ' || coalesce(s.display_name, i.service_id)";

const SELECT: &str =
    "SELECT i.id, i.rule_name || ' on ' || coalesce(s.display_name, i.service_id) AS title,
        i.message, i.service_id, coalesce(s.display_name, i.service_id) AS service_name,
        i.rule_id, i.rule_name, i.severity, i.status, i.department_id,
        d.name AS department_name,
        extract(epoch FROM i.opened_at)::float8 AS opened_at,
        extract(epoch FROM i.closed_at)::float8 AS closed_at,
        extract(epoch FROM i.resolved_at)::float8 AS resolved_at,
        i.peak_value,
        ARRAY(SELECT c.body FROM incident_comments c WHERE c.incident_id = i.id
              ORDER BY c.created_at, c.id) AS comments
     FROM incidents i
     JOIN services s ON s.id = i.service_id
     LEFT JOIN departments d ON d.id = i.department_id";

/// The documents of these incidents; ids with no incident are left out.
pub async fn for_incidents<'e>(
    executor: impl PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<Vec<SearchDocument>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT} WHERE i.id = ANY($1)"))
        .bind(ids)
        .fetch_all(executor)
        .await
}

/// Up to `limit` documents with ids above `after`, in id order: the pages of a reindex.
pub async fn page_after<'e>(
    executor: impl PgExecutor<'e>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<SearchDocument>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE ($1::uuid IS NULL OR i.id > $1) ORDER BY i.id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Incidents whose service or department was changed (renamed, say) at or after `since`, whose
/// documents therefore show old names; and the database's time now, the next `since`.
pub async fn touched_by_renames<'e>(
    executor: impl PgExecutor<'e>,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<(Vec<Uuid>, chrono::DateTime<chrono::Utc>), sqlx::Error> {
    let rows: Vec<(Option<Uuid>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "WITH touched AS (
             SELECT i.id FROM incidents i JOIN services s ON s.id = i.service_id
             WHERE s.updated_at >= $1
             UNION
             SELECT i.id FROM incidents i JOIN departments d ON d.id = i.department_id
             WHERE d.updated_at >= $1)
         SELECT t.id, now() FROM (SELECT now()) AS clock
         LEFT JOIN touched t ON true",
    )
    .bind(since)
    .fetch_all(executor)
    .await?;
    let now = rows.first().map(|r| r.1).unwrap_or_else(chrono::Utc::now);
    Ok((rows.into_iter().filter_map(|r| r.0).collect(), now))
}

/// How many incidents there are: what a full index holds.
pub async fn count<'e>(executor: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM incidents")
        .fetch_one(executor)
        .await
}
