//! The `record` consumer: incident transitions from INCIDENTS into Postgres.
//!
//! A batch is applied in one transaction. Writes merge monotonically and are keyed on
//! deterministic ids, so a redelivered, duplicated or reordered transition changes nothing.
//! If a batch hits a permanent database error, its messages are applied one by one so only the
//! offending ones are dead-lettered.

pub mod handler;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use schemas::IncidentTransition;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::error::is_transient_db_error;
use crate::jetstream::{
    ack_all, error_kind_label, extend_ack_wait, is_terminal, next_batch, retry_until_stopped,
    DeadLetters, Outcome, Rejection,
};
use crate::telemetry;
use crate::topology::{self, ConsumerSpec, Topology, INCIDENTS};

pub const CONSUMER: &str = "record";

pub struct Recorder {
    js: jetstream::Context,
    pool: PgPool,
    spec: ConsumerSpec,
    dead_letters: DeadLetters,
}

impl Recorder {
    pub fn new(js: jetstream::Context, pool: PgPool, topology: &Topology) -> Recorder {
        Recorder {
            dead_letters: DeadLetters::new(js.clone(), CONSUMER),
            spec: topology.consumer(CONSUMER).clone(),
            js,
            pool,
        }
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stream = self
            .js
            .get_stream(INCIDENTS)
            .await
            .context("looking up the INCIDENTS stream")?;
        while !shutdown.is_cancelled() {
            let consumer = match stream.get_consumer::<pull::Config>(CONSUMER).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "record consumer missing; re-creating it");
                    topology::ensure_consumer(&self.js, CONSUMER, &self.spec)
                        .await
                        .ok();
                    sleep_unless(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(self.spec.max_batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "could not start pulling; retrying");
                    sleep_unless(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    batch = next_batch(&mut messages, self.spec.max_batch) => {
                        let Some(batch) = batch else { break };
                        if !self.handle_batch(batch, &shutdown).await {
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Returns `false` when the pull stream must be rebuilt.
    async fn handle_batch(
        &self,
        batch: Vec<Result<jetstream::Message, pull::MessagesError>>,
        shutdown: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
        let mut healthy = true;
        let mut held = Vec::with_capacity(batch.len());
        let mut transitions = Vec::with_capacity(batch.len());
        for item in batch {
            match item {
                Ok(msg) => match IncidentTransition::from_msgpack(&msg.payload) {
                    Ok(t) => {
                        transitions.push(t);
                        held.push(msg);
                    }
                    Err(e) => {
                        let rejection = Rejection {
                            kind: "decode",
                            reason: e.to_string(),
                        };
                        self.dead_letters.reject(&msg, &rejection).await;
                    }
                },
                Err(e) => {
                    telemetry::stream_errors(CONSUMER, error_kind_label(&e));
                    healthy &= !is_terminal(&e);
                }
            }
        }
        if held.is_empty() {
            return healthy;
        }
        let pool = &self.pool;
        let applied = retry_until_stopped(
            CONSUMER,
            "apply_batch",
            shutdown,
            || async {
                match handler::apply_batch(pool, &transitions).await {
                    Err(e) if is_transient_db_error(&e) => Err(e),
                    other => Ok(other),
                }
            },
            || extend_ack_wait(&held),
        )
        .await;
        match applied {
            None => return false,
            Some(Ok(())) => ack_all(CONSUMER, &held).await,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "batch failed permanently; applying one by one");
                for (msg, t) in held.iter().zip(&transitions) {
                    let outcome = handler::apply_one(pool, t).await;
                    self.settle(msg, outcome).await;
                }
            }
        }
        telemetry::transitions_recorded(transitions.len());
        telemetry::batch_duration(CONSUMER, started.elapsed().as_secs_f64());
        healthy
    }

    async fn settle(&self, msg: &jetstream::Message, outcome: Outcome) {
        let result = match outcome {
            Outcome::Done => msg.ack().await,
            Outcome::Retry => {
                let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
                if delivered >= self.spec.max_deliver {
                    let rejection = Rejection {
                        kind: "max_deliver",
                        reason: format!("still failing after {delivered} deliveries"),
                    };
                    self.dead_letters.reject(msg, &rejection).await;
                    return;
                }
                msg.ack_with(AckKind::Nak(Some(self.spec.nak_delay(delivered))))
                    .await
            }
            Outcome::Poison(rejection) => {
                self.dead_letters.reject(msg, &rejection).await;
                return;
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "ack failed; the message will be redelivered");
        }
    }
}

async fn sleep_unless(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}
