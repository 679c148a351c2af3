//! Keeps the evaluator's rule set current. Rules live in Postgres; a statement trigger announces
//! every change on a notification channel, and this task reloads on each announcement, after a
//! reconnect, and every 30 seconds as a safety net. Changes reach the engine well within a
//! second.

use std::sync::Arc;
use std::time::Duration;

use pipeline::Rule;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use store::rules::CHANGED_CHANNEL;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SAFETY_NET: Duration = Duration::from_secs(30);

pub async fn load(pool: &PgPool) -> Result<Vec<Rule>, sqlx::Error> {
    Ok(store::rules::list_all(pool)
        .await?
        .iter()
        .map(replay::rules::engine_rule)
        .collect())
}

/// Loads the rules and starts watching them. Fails when the first load fails.
pub async fn watch(
    pool: PgPool,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<Vec<Rule>>>, sqlx::Error> {
    let (tx, rx) = watch::channel(Arc::new(load(&pool).await?));
    tokio::spawn(async move {
        loop {
            match listen(&pool, &tx, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "rule listener failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    });
    Ok(rx)
}

async fn listen(
    pool: &PgPool,
    tx: &watch::Sender<Arc<Vec<Rule>>>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANGED_CHANNEL).await?;
    // Anything that changed before LISTEN took effect.
    reload(pool, tx).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            notification = listener.try_recv() => {
                // `None` means the connection dropped and was re-established: changes may
                // have been missed, so reload either way.
                notification?;
                reload(pool, tx).await?;
            }
            _ = tokio::time::sleep(SAFETY_NET) => reload(pool, tx).await?,
        }
    }
}

async fn reload(pool: &PgPool, tx: &watch::Sender<Arc<Vec<Rule>>>) -> Result<(), sqlx::Error> {
    let rules = load(pool).await?;
    tx.send_if_modified(|current| {
        if **current == rules {
            false
        } else {
            tracing::info!(rules = rules.len(), "rules changed; reloaded");
            *current = Arc::new(rules);
            true
        }
    });
    Ok(())
}
