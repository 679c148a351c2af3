//! The `archive` consumer: METRICS samples into Postgres, raw and rolled up per minute, for the
//! metrics list and charts.
//!
//! A batch is written in one transaction and acked only after it commits. Raw rows are keyed by
//! stream sequence and rollups grow only by the rows actually inserted, so a redelivered or
//! replayed sample is neither stored nor counted twice. Samples that cannot be decoded are
//! dead-lettered with the same strict decoder `evaluate` uses; a batch that hits a permanent
//! database error is written one by one so only the offending samples are dead-lettered.
//! Alongside, raw samples older than the retention period are pruned in bounded batches every
//! minute, but only once the METRICS stream no longer holds them: a sample that can still be
//! redelivered keeps its row, which is what makes its redelivery harmless. Rollups are kept.

pub mod handler;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::error::is_transient_db_error;
use crate::evaluate;
use crate::jetstream::{
    ack_all, extend_ack_wait, retry_until_stopped, run_pull_loop, settle, BatchHandler, DeadLetters,
};
use crate::telemetry;
use crate::topology::{ConsumerSpec, Topology, METRICS};

pub const CONSUMER: &str = "archive";

/// How often pruning runs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most rows one pruning statement deletes.
const PRUNE_BATCH: i64 = 5_000;

pub struct Archiver {
    js: jetstream::Context,
    pool: PgPool,
    spec: ConsumerSpec,
    dead_letters: DeadLetters,
    /// How long raw samples are kept, by event time.
    retention: Duration,
}

impl Archiver {
    pub fn new(
        js: jetstream::Context,
        pool: PgPool,
        topology: &Topology,
        retention: Duration,
    ) -> Archiver {
        Archiver {
            dead_letters: DeadLetters::new(js.clone(), CONSUMER),
            spec: topology.consumer(CONSUMER).clone(),
            js,
            pool,
            retention,
        }
    }

    /// Archives and prunes until `shutdown` fires. Fails only when the METRICS stream cannot be
    /// found.
    /// Archives until `shutdown`. Fails at once if the archive holds stream sequences beyond
    /// the end of METRICS, as after the stream was deleted and created again: new samples
    /// would then be taken for ones already stored and silently skipped.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.check_same_stream(&shutdown).await?;
        let (js, spec) = (self.js.clone(), self.spec.clone());
        let prune = prune_until_stopped(
            js.clone(),
            self.pool.clone(),
            self.retention,
            shutdown.clone(),
        );
        let pull = run_pull_loop(&js, METRICS, CONSUMER, &spec, &shutdown, &mut self);
        let (pulled, ()) = tokio::join!(pull, prune);
        pulled
    }

    /// Fails on a mismatch; waits out an unreachable Postgres or NATS like the rest of the
    /// consumer does. Returns early, without an error, on shutdown.
    async fn check_same_stream(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut logged = false;
        loop {
            match self.sequences().await {
                Ok((Some(archived), last)) if u64::try_from(archived).unwrap_or(0) > last => {
                    anyhow::bail!(
                        "the archive holds METRICS sequence {archived} but the stream ends at \
                         {last}: METRICS was created again, and its new samples would be \
                         mistaken for archived ones. Move the old raw samples aside (for \
                         example `DELETE FROM metric_samples`; rollups and charts are kept) and \
                         start again"
                    )
                }
                Ok(_) => return Ok(()),
                Err(e) => {
                    if !logged {
                        tracing::warn!(error = %format!("{e:#}"), "cannot compare the archive with METRICS yet; retrying");
                        logged = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// The highest archived sequence, and the last in METRICS.
    async fn sequences(&self) -> anyhow::Result<(Option<i64>, u64)> {
        let archived = store::samples::highest_sequence(&self.pool)
            .await
            .context("reading the archive's highest stream sequence")?;
        let mut stream = self
            .js
            .get_stream(METRICS)
            .await
            .context("looking up METRICS")?;
        let last = stream
            .info()
            .await
            .context("reading METRICS")?
            .state
            .last_sequence;
        Ok((archived, last))
    }

    async fn handle_batch(&self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        let mut held = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        for msg in batch {
            let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
                tracing::warn!(subject = %msg.subject, "message without JetStream metadata");
                continue;
            };
            match evaluate::handler::decode(&msg) {
                Ok(sample) => {
                    rows.push(handler::to_row(sample, seq));
                    held.push(msg);
                }
                Err(rejection) => self.dead_letters.reject(&msg, &rejection).await,
            }
        }
        if held.is_empty() {
            return;
        }
        let pool = &self.pool;
        let archived = retry_until_stopped(
            CONSUMER,
            "archive_batch",
            shutdown,
            || async {
                match handler::archive_batch(pool, &rows).await {
                    Err(e) if is_transient_db_error(&e) => Err(e),
                    other => Ok(other),
                }
            },
            || extend_ack_wait(&held),
        )
        .await;
        match archived {
            None => {}
            Some(Ok((archived, registered))) => {
                telemetry::samples_archived(archived.inserted);
                ack_all(CONSUMER, &held).await;
                crate::announce::services_registered(&self.js.client(), &registered).await;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "batch failed permanently; archiving one by one");
                for (msg, row) in held.iter().zip(&rows) {
                    let (outcome, inserted) = handler::archive_one(pool, row).await;
                    telemetry::samples_archived(inserted);
                    settle(msg, outcome, &self.spec, &self.dead_letters).await;
                }
            }
        }
    }
}

impl BatchHandler for Archiver {
    async fn handle(&mut self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        self.handle_batch(batch, shutdown).await;
    }
}

/// Every minute, deletes raw samples recorded longer than `retention` ago that the METRICS
/// stream no longer holds, in statements of at most [`PRUNE_BATCH`] rows, until none are left
/// or `shutdown` fires. Failures are logged and retried on the next round.
async fn prune_until_stopped(
    js: jetstream::Context,
    pool: PgPool,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let Ok(retention) = chrono::Duration::from_std(retention) else {
        tracing::warn!("the sample retention is too long to compute; not pruning");
        return;
    };
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let first_seq = match first_sequence(&js).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the METRICS stream; pruning later");
                continue;
            }
        };
        let before = Utc::now() - retention;
        let mut total = 0;
        while !shutdown.is_cancelled() {
            match store::samples::prune(&pool, before, first_seq, PRUNE_BATCH).await {
                Ok(deleted) => {
                    total += deleted;
                    telemetry::samples_pruned(deleted);
                    if deleted < PRUNE_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning archived samples failed; will retry");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, before = %before, "pruned archived samples");
        }
    }
}

/// The oldest sequence the METRICS stream still holds (one past the last when it is empty).
async fn first_sequence(js: &jetstream::Context) -> Result<u64, async_nats::Error> {
    let mut stream = js.get_stream(METRICS).await?;
    Ok(stream.info().await?.state.first_sequence)
}
