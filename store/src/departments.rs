//! The `departments` table: the teams that own rules and incidents.

use sqlx::PgPool;
use uuid::Uuid;

pub async fn exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM departments WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}
