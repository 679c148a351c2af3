//! Writing one batch of METRICS samples to Postgres: the raw rows, their minute rollups and the
//! services they name, in one transaction.

use schemas::MetricSample;
use sqlx::PgPool;
use store::samples::{Archived, NewSample};

use crate::error::is_transient_db_error;
use crate::jetstream::{Outcome, Rejection};

/// A decoded sample with its METRICS stream sequence, ready to archive.
pub fn to_row(sample: MetricSample, stream_seq: u64) -> NewSample {
    NewSample {
        stream_seq,
        service_id: sample.service_id,
        metric_type: sample.metric_type,
        labels: sample.labels,
        value: sample.value,
        recorded_at: sample.recorded_at,
        sample_id: sample.id,
    }
}

/// Registers the services and archives the samples in one transaction. Samples archived before
/// (same stream sequence) change nothing. Returns also the services newly registered.
pub async fn archive_batch(
    pool: &PgPool,
    rows: &[NewSample],
) -> Result<(Archived, Vec<String>), sqlx::Error> {
    let mut services: Vec<String> = rows.iter().map(|r| r.service_id.clone()).collect();
    services.sort_unstable();
    services.dedup();
    let mut tx = pool.begin().await?;
    let registered = store::services::register_many(&mut *tx, &services).await?;
    let archived = store::samples::archive(&mut *tx, rows).await?;
    tx.commit().await?;
    Ok((archived, registered))
}

/// Archives a single sample in its own transaction and classifies the result.
pub async fn archive_one(pool: &PgPool, row: &NewSample) -> (Outcome, u64) {
    match archive_batch(pool, std::slice::from_ref(row)).await {
        Ok((archived, _)) => (Outcome::Done, archived.inserted),
        Err(e) if is_transient_db_error(&e) => (Outcome::Retry, 0),
        Err(e) => (
            Outcome::Poison(Rejection {
                kind: "database",
                reason: e.to_string(),
            }),
            0,
        ),
    }
}
