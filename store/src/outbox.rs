//! The `outbox` table: messages for the INCIDENTS stream, committed in the same transaction as
//! the change they announce and relayed to JetStream afterwards, so an outage of NATS delays
//! them but loses none. Inserting announces itself on [`CHANNEL`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The notification channel a statement trigger signals after every insert.
pub const CHANNEL: &str = "tracely_outbox";

/// A message waiting to be published.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxRow {
    /// Also the message's `Nats-Msg-Id`, so publishing it twice stores it once.
    pub id: Uuid,
    pub subject: String,
    pub payload: Vec<u8>,
}

pub async fn insert(
    tx: &mut PgConnection,
    id: Uuid,
    subject: &str,
    payload: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (id, subject, payload) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(subject)
        .bind(payload)
        .execute(tx)
        .await
        .map(|_| ())
}

/// Advisory lock key held by the one relay publishing at a time.
const RELAY_LOCK: i64 = 0x7472_6163_656c_7901;

/// Up to `limit` unpublished messages, oldest first, locked until the transaction ends. Only
/// one relay publishes at a time, so messages reach the stream in the order they were made:
/// while another relay holds the turn, this returns nothing.
pub async fn lock_unpublished(
    tx: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let turn: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !turn {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT id, subject, payload FROM outbox WHERE published_at IS NULL
         ORDER BY created_at, id LIMIT $1 FOR UPDATE",
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

pub async fn mark_published(tx: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(tx)
        .await
        .map(|_| ())
}

/// How many messages wait to be published.
pub async fn count_unpublished(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
}

/// Forgets messages published before `before`; returns how many.
pub async fn delete_published_before(
    pool: &PgPool,
    before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM outbox WHERE published_at < $1")
        .bind(before)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}
