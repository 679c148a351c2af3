//! The `departments` table: the teams that own rules, services and incidents.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use crate::{Page, Sort, SortField};

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DepartmentRecord {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a department write was refused.
#[derive(Debug, thiserror::Error)]
pub enum DepartmentError {
    #[error("a department named {0:?} already exists")]
    NameTaken(String),
    #[error(
        "rules still refer to this department, as their department_id or among their \
         extra_department_ids; change or delete them first"
    )]
    InUse,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub const SORT_FIELDS: &[SortField] = &[
    SortField::new("name", "name"),
    SortField::new("created_at", "created_at"),
    SortField::new("updated_at", "updated_at"),
];

/// Alphabetical.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: false,
};

const COLUMNS: &str = "id, name, description, created_at, updated_at";

pub async fn exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM departments WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Which of `ids` name no department, in the order given.
pub async fn missing(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT id FROM unnest($1::uuid[]) WITH ORDINALITY AS given (id, n)
         WHERE NOT EXISTS (SELECT 1 FROM departments d WHERE d.id = given.id)
         ORDER BY n",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DepartmentRecord>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM departments WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn list(
    pool: &PgPool,
    sort: Sort,
    page: Page,
) -> Result<(Vec<DepartmentRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM departments"));
    sort.push_order_and_page(&mut query, "id", page);
    let rows = query.build_query_as().fetch_all(pool).await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM departments")
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}

/// Fails with [`DepartmentError::NameTaken`] when the name is in use.
pub async fn insert(
    pool: &PgPool,
    name: &str,
    description: &str,
) -> Result<DepartmentRecord, DepartmentError> {
    sqlx::query_as(&format!(
        "INSERT INTO departments (id, name, description) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(description)
    .fetch_one(pool)
    .await
    .map_err(|e| classify(e, name))
}

/// Replaces name and description; `None` when there is no such department.
pub async fn replace(
    pool: &PgPool,
    id: Uuid,
    name: &str,
    description: &str,
) -> Result<Option<DepartmentRecord>, DepartmentError> {
    sqlx::query_as(&format!(
        "UPDATE departments SET name = $2, description = $3, updated_at = now() WHERE id = $1
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(name)
    .bind(description)
    .fetch_optional(pool)
    .await
    .map_err(|e| classify(e, name))
}

/// Deletes a department and its notification channels; services and incidents it owned keep no
/// owner. Fails with [`DepartmentError::InUse`] while rules reference it, as owner or as an
/// extra department. Returns whether it existed.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, DepartmentError> {
    sqlx::query("DELETE FROM departments WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() > 0)
        .map_err(|e| classify(e, ""))
}

fn classify(e: sqlx::Error, name: &str) -> DepartmentError {
    match e.as_database_error().and_then(|d| d.code()).as_deref() {
        Some("23505") => DepartmentError::NameTaken(name.to_owned()),
        Some("23503") => DepartmentError::InUse,
        _ => DepartmentError::Db(e),
    }
}
