//! The `notifications` table: in-app notifications per department, read or unread. Rows are
//! written by the notifier; people read and mark them through the API.

use chrono::{DateTime, Utc};
use schemas::Severity;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{Page, Sort, SortField};

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NotificationRecord {
    pub id: Uuid,
    pub department_id: Option<Uuid>,
    pub incident_id: Option<Uuid>,
    pub kind: String,
    #[sqlx(try_from = "OptionalSeverity")]
    pub severity: Option<Severity>,
    pub title: String,
    pub body: String,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Reads a nullable severity column.
#[derive(sqlx::Type)]
#[sqlx(transparent)]
pub(crate) struct OptionalSeverity(Option<String>);

impl TryFrom<OptionalSeverity> for Option<Severity> {
    type Error = schemas::incident::ParseEnumError;
    fn try_from(s: OptionalSeverity) -> Result<Self, Self::Error> {
        s.0.map(|s| s.parse()).transpose()
    }
}

/// Filters of `GET /api/notifications`; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    pub department_id: Option<Uuid>,
    pub incident_id: Option<Uuid>,
    pub read: Option<bool>,
}

pub const SORT_FIELDS: &[SortField] = &[SortField::new("created_at", "created_at")];

/// Newest first.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: true,
};

const COLUMNS: &str =
    "id, department_id, incident_id, kind, severity, title, body, read_at, created_at";

pub async fn list(
    pool: &PgPool,
    filter: &NotificationFilter,
    sort: Sort,
    page: Page,
) -> Result<(Vec<NotificationRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM notifications"));
    push_filter(&mut query, filter);
    sort.push_order_and_page(&mut query, "id", page);
    let rows = query.build_query_as().fetch_all(pool).await?;
    let mut count = QueryBuilder::new("SELECT count(*) FROM notifications");
    push_filter(&mut count, filter);
    let total = count.build_query_scalar().fetch_one(pool).await?;
    Ok((rows, total))
}

fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &NotificationFilter) {
    let mut sep = " WHERE ";
    let mut clause = |query: &mut QueryBuilder<'_, Postgres>, condition: &str| {
        query.push(sep).push(condition);
        sep = " AND ";
    };
    if let Some(department_id) = filter.department_id {
        clause(query, "department_id = ");
        query.push_bind(department_id);
    }
    if let Some(incident_id) = filter.incident_id {
        clause(query, "incident_id = ");
        query.push_bind(incident_id);
    }
    match filter.read {
        Some(true) => clause(query, "read_at IS NOT NULL"),
        Some(false) => clause(query, "read_at IS NULL"),
        None => {}
    }
}

/// Marks one notification read (keeping the first time) or unread; `None` when there is no
/// such notification.
pub async fn set_read(
    pool: &PgPool,
    id: Uuid,
    read: bool,
) -> Result<Option<NotificationRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE notifications
         SET read_at = CASE WHEN $2 THEN COALESCE(read_at, now()) ELSE NULL END
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(read)
    .fetch_optional(pool)
    .await
}

/// Marks every unread notification read, or only a department's; returns how many changed.
pub async fn read_all(pool: &PgPool, department_id: Option<Uuid>) -> Result<u64, sqlx::Error> {
    let mut query = QueryBuilder::new("UPDATE notifications SET read_at = now()");
    push_unread(&mut query, department_id);
    query.build().execute(pool).await.map(|r| r.rows_affected())
}

pub async fn unread_count(pool: &PgPool, department_id: Option<Uuid>) -> Result<i64, sqlx::Error> {
    let mut query = QueryBuilder::new("SELECT count(*) FROM notifications");
    push_unread(&mut query, department_id);
    query.build_query_scalar().fetch_one(pool).await
}

/// Unread, and of the department when one is given; spelled out rather than as
/// `($1 IS NULL OR …)` so that the partial index on unread rows is used.
fn push_unread(query: &mut QueryBuilder<'_, Postgres>, department_id: Option<Uuid>) {
    query.push(" WHERE read_at IS NULL");
    if let Some(department_id) = department_id {
        query.push(" AND department_id = ").push_bind(department_id);
    }
}

/// A notification to add, as the notifier writes them.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: Uuid,
    pub department_id: Option<Uuid>,
    pub incident_id: Option<Uuid>,
    pub kind: String,
    pub severity: Option<Severity>,
    pub title: String,
    pub body: String,
}

/// Inserts the notification unless one with its id exists; returns whether it was new.
pub async fn insert<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    n: &NewNotification,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (id, department_id, incident_id, kind, severity, title, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(n.id)
    .bind(n.department_id)
    .bind(n.incident_id)
    .bind(&n.kind)
    .bind(n.severity.map(|s| s.as_str()))
    .bind(&n.title)
    .bind(&n.body)
    .execute(executor)
    .await
    .map(|r| r.rows_affected() == 1)
}
