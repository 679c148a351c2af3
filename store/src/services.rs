//! The `services` table: registered on first sight of a sample.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Page;

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ServiceRecord {
    pub id: String,
    pub display_name: Option<String>,
    pub department_id: Option<Uuid>,
    pub first_seen_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Registers services not seen before; known ones are left untouched.
pub async fn register_many<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    ids: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO services (id) SELECT * FROM UNNEST($1::text[]) ON CONFLICT (id) DO NOTHING",
    )
    .bind(ids)
    .execute(executor)
    .await
    .map(|_| ())
}

pub async fn list(pool: &PgPool, page: Page) -> Result<(Vec<ServiceRecord>, i64), sqlx::Error> {
    let rows = sqlx::query_as::<_, ServiceRecord>(
        "SELECT id, display_name, department_id, first_seen_at, created_at, updated_at
         FROM services ORDER BY id LIMIT $1 OFFSET $2",
    )
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM services")
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}
