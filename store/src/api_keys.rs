//! The `api_keys` table. A key is shown once, when created; only a SHA-256 digest of it is
//! stored. Keys are 256 random bits, so a fast digest is as safe as a slow password hash here,
//! and it lets every request be checked with one indexed lookup.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Page, Sort, SortField};

/// What a key may do. Each role includes the ones before it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also works incidents: status, severity, assignee, comments, notifications.
    Operator,
    /// Also manages rules, departments, services and keys.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role; use viewer, operator or admin"))
    }
}

impl TryFrom<String> for Role {
    type Error = String;
    fn try_from(s: String) -> Result<Role, String> {
        s.parse()
    }
}

/// A key as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Who a request comes from, once its key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub name: String,
    pub role: Role,
}

pub const SORT_FIELDS: &[SortField] = &[
    SortField::new("created_at", "created_at"),
    SortField::new("name", "name"),
    SortField::new("role", "role"),
    SortField::new("last_used_at", "last_used_at"),
];

const COLUMNS: &str = "id, name, role, prefix, created_at, last_used_at, revoked_at";

/// Stores a key by its digest.
pub async fn insert(
    pool: &PgPool,
    name: &str,
    role: Role,
    prefix: &str,
    digest: &[u8],
) -> Result<ApiKeyRecord, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO api_keys (id, name, role, prefix, key_hash) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(role.as_str())
    .bind(prefix)
    .bind(digest)
    .fetch_one(pool)
    .await
}

/// The unrevoked key with this digest, if any.
pub async fn find_active(pool: &PgPool, digest: &[u8]) -> Result<Option<Principal>, sqlx::Error> {
    let row: Option<(Uuid, String, String)> = sqlx::query_as(
        "SELECT id, name, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(digest)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(key_id, name, role)| {
        Some(Principal {
            key_id,
            name,
            role: role.parse().ok()?,
        })
    }))
}

/// Whether the key with this id exists and is not revoked.
pub async fn is_active(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1 AND revoked_at IS NULL)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
}

/// Records that keys were used; coarse, so that a busy key is not written on every request.
pub async fn touch(pool: &PgPool, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn list(
    pool: &PgPool,
    sort: Sort,
    page: Page,
) -> Result<(Vec<ApiKeyRecord>, i64), sqlx::Error> {
    let mut query = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM api_keys"));
    sort.push_order_and_page(&mut query, "id", page);
    let rows = query.build_query_as().fetch_all(pool).await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}

/// Revokes a key; `None` when there is no such key. Revoking twice keeps the first time.
pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<Option<ApiKeyRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Revokes every active key with this name; returns how many.
pub async fn revoke_named(pool: &PgPool, name: &str) -> Result<u64, sqlx::Error> {
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL")
        .bind(name)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}
