//! The `incident_comments` table: what people wrote on an incident.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::{Page, Sort, SortField};

const COLUMNS: &str = "id, incident_id, author, body, created_at";

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CommentRecord {
    pub id: Uuid,
    pub incident_id: Uuid,
    /// The API key that wrote it, as `key:<name>`.
    pub author: String,
    /// The text, trimmed; 1 to 10 000 characters.
    pub body: String,
    pub created_at: DateTime<Utc>,
}

pub const SORT_FIELDS: &[SortField] = &[SortField::new("created_at", "created_at")];

/// Oldest first, as a conversation reads.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: false,
};

pub async fn insert(
    tx: &mut PgConnection,
    id: Uuid,
    incident_id: Uuid,
    author: &str,
    body: &str,
) -> Result<CommentRecord, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO incident_comments (id, incident_id, author, body)
         VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(incident_id)
    .bind(author)
    .bind(body)
    .fetch_one(tx)
    .await
}

/// Deletes the comment if it belongs to the incident; `None` when there is no such comment on
/// that incident.
pub async fn delete(
    tx: &mut PgConnection,
    incident_id: Uuid,
    id: Uuid,
) -> Result<Option<CommentRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "DELETE FROM incident_comments WHERE id = $1 AND incident_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(incident_id)
    .fetch_optional(tx)
    .await
}

/// One page of an incident's comments, with the number of its comments.
pub async fn page_for_incident(
    pool: &PgPool,
    incident_id: Uuid,
    sort: Sort,
    page: Page,
) -> Result<(Vec<CommentRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM incident_comments WHERE incident_id = "
    ));
    query.push_bind(incident_id);
    sort.push_order_and_page(&mut query, "id", page);
    let rows = query.build_query_as().fetch_all(pool).await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM incident_comments WHERE incident_id = $1")
        .bind(incident_id)
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}
