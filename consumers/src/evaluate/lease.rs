//! Only one evaluator may run against the METRICS consumer at a time: it keeps stream order and
//! re-positions the durable consumer. The evaluator therefore holds a Postgres advisory lock on
//! a dedicated connection. Another process waits on standby and takes over when the holder
//! stops or dies (Postgres releases the lock with the connection). If the lock's connection is
//! lost, the holder stops evaluating.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;

/// Advisory lock key: "tracely" and a 1 for the evaluate role.
const LOCK_KEY: i64 = 0x0074_7261_6365_6c79;
const RETRY: Duration = Duration::from_secs(2);
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Proof that this process is the evaluator.
pub struct Lease {
    conn: PgConnection,
}

/// Waits until this process holds the lease. Returns `None` if shut down first.
pub async fn acquire(pool: &PgPool, shutdown: &CancellationToken) -> Option<Lease> {
    let mut last_log: Option<Instant> = None;
    loop {
        match try_acquire(pool).await {
            Ok(Some(lease)) => {
                if last_log.is_some() {
                    tracing::info!("took over the evaluator lease");
                }
                return Some(lease);
            }
            Ok(None) => {
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    tracing::info!("another process is the evaluator; standing by");
                    last_log = Some(Instant::now());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not ask for the evaluator lease; retrying");
                last_log.get_or_insert_with(Instant::now);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn try_acquire(pool: &PgPool) -> Result<Option<Lease>, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    if held {
        Ok(Some(Lease { conn }))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

impl Lease {
    /// Whether the lock is still held, i.e. its connection still answers.
    pub async fn still_held(&mut self) -> bool {
        matches!(
            tokio::time::timeout(CHECK_EVERY, self.conn.ping()).await,
            Ok(Ok(()))
        )
    }

    /// Watches the lease until `shutdown`; cancels `lost` if it goes away. Releases the lock on
    /// return.
    pub async fn watch(mut self, shutdown: CancellationToken, lost: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(CHECK_EVERY) => {
                    if !self.still_held().await {
                        tracing::error!("lost the evaluator lease; stopping evaluation");
                        lost.cancel();
                        return;
                    }
                }
            }
        }
        let _ = self.conn.close().await;
    }
}
