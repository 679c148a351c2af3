//! The outbox relay: publishes the messages that API changes committed to the Postgres outbox
//! onto the INCIDENTS stream. Each round takes the one relay turn (an advisory lock, so every
//! API process can run a relay and order is kept), locks up to [`BATCH`] unpublished rows in
//! order, publishes them with the row id as `Nats-Msg-Id`, waits for every PubAck, and only
//! then marks them published and commits. A failed round rolls back and is retried with backoff (1 s doubling to 30 s),
//! logged once per outage. The relay wakes on the outbox's notification channel, and every
//! second in case a notification was missed; published rows are forgotten after a day.
//!
//! A row is published at least once: if the commit after publishing fails, the next round sends
//! it again, and the stream's duplicate window stores it once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use schemas::headers;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use store::outbox::{OutboxRow, CHANNEL};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::telemetry;

/// Most rows published in one round.
pub const BATCH: i64 = 500;
/// How often the relay looks without being woken.
const FALLBACK: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one round may wait for its PubAcks before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Published rows older than this are deleted.
const RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(24);
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Why a round published nothing.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox query failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("not connected to NATS")]
    Disconnected,
    #[error("publishing {subject} failed: {source}")]
    Publish {
        subject: String,
        source: async_nats::Error,
    },
    #[error("no PubAck within {} s", PUBLISH_TIMEOUT.as_secs())]
    Timeout,
}

/// Relays until `shutdown` fires; a round under way is finished first.
pub async fn run_until_stopped(
    js: jetstream::Context,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(pool.clone(), wake.clone(), shutdown.clone()));
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    let mut pruned_at: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let wait = match relay_once(&js, &pool).await {
            Ok(sent) => {
                if failing {
                    tracing::info!("outbox relay publishing again");
                    failing = false;
                }
                backoff = MIN_BACKOFF;
                if sent as i64 == BATCH {
                    Duration::ZERO
                } else {
                    FALLBACK
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, cause = ?e, "outbox relay cannot publish; retrying with backoff");
                    failing = true;
                } else {
                    tracing::debug!(error = %e, "outbox relay still failing");
                }
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        if let Ok(pending) = store::outbox::count_unpublished(&pool).await {
            telemetry::outbox_pending(pending);
        }
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            prune(&pool).await;
            pruned_at = Some(Instant::now());
        }
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified(), if !failing => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = listener.await;
    Ok(())
}

/// One round: publishes up to [`BATCH`] rows and marks them published. Returns how many.
/// Fails, leaving every row unpublished, when Postgres or NATS fails or a PubAck is late.
pub async fn relay_once(js: &jetstream::Context, pool: &PgPool) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    let rows = store::outbox::lock_unpublished(&mut tx, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Publishing into a disconnected client only queues messages in it.
    if js.client().connection_state() != State::Connected {
        return Err(RelayError::Disconnected);
    }
    tokio::time::timeout(PUBLISH_TIMEOUT, publish_all(js, &rows))
        .await
        .map_err(|_| RelayError::Timeout)??;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    store::outbox::mark_published(&mut tx, &ids).await?;
    tx.commit().await?;
    telemetry::outbox_published(rows.len());
    Ok(rows.len())
}

/// Sends every row in order, then waits for all PubAcks.
async fn publish_all(js: &jetstream::Context, rows: &[OutboxRow]) -> Result<(), RelayError> {
    let failed = |row: &OutboxRow, source: async_nats::Error| RelayError::Publish {
        subject: row.subject.clone(),
        source,
    };
    let mut acks = Vec::with_capacity(rows.len());
    for row in rows {
        let mut headers = HeaderMap::new();
        headers.insert(headers::CONTENT_TYPE, headers::MSGPACK_CONTENT_TYPE);
        let message = PublishMessage::build()
            .headers(headers)
            .payload(row.payload.clone().into())
            .message_id(row.id.to_string());
        let ack = js
            .send_publish(row.subject.clone(), message)
            .await
            .map_err(|e| failed(row, e.into()))?;
        acks.push(ack);
    }
    for (row, ack) in rows.iter().zip(acks) {
        ack.await.map_err(|e| failed(row, e.into()))?;
    }
    Ok(())
}

async fn prune(pool: &PgPool) {
    match store::outbox::delete_published_before(pool, chrono::Utc::now() - RETENTION).await {
        Ok(0) => {}
        Ok(deleted) => tracing::debug!(deleted, "forgot published outbox rows"),
        Err(e) => tracing::debug!(error = %e, "could not prune the outbox; will retry"),
    }
}

/// Wakes the relay on every outbox notification, reconnecting after errors, until stopped.
async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut logged = false;
    loop {
        match listen_until_error(&pool, &wake, &shutdown, &mut logged).await {
            Ok(()) => return,
            Err(e) if !logged => {
                tracing::warn!(error = %e, "outbox listener failed; reconnecting");
                logged = true;
            }
            Err(e) => tracing::debug!(error = %e, "outbox listener still failing"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(FALLBACK) => {}
        }
    }
}

async fn listen_until_error(
    pool: &PgPool,
    wake: &Notify,
    shutdown: &CancellationToken,
    logged: &mut bool,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    *logged = false;
    // Rows added before LISTEN took effect.
    wake.notify_one();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            received = listener.recv() => {
                received?;
                wake.notify_one();
            }
        }
    }
}
