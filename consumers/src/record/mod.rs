//! The `record` consumer: incident transitions from INCIDENTS into Postgres.
//!
//! A batch is applied in one transaction. Writes merge monotonically and are keyed on
//! deterministic ids, so a redelivered, duplicated or reordered transition changes nothing.
//! If a batch hits a permanent database error, its messages are applied one by one so only the
//! offending ones are dead-lettered.
//!
//! Up to [`IN_FLIGHT`] batches are applied at once, each in its own transaction, as separate
//! `record` processes would: an opening pulled while a burst of updates is being committed does
//! not wait for that commit. Rows are locked in id order, so concurrent batches never deadlock.

pub mod handler;

use async_nats::jetstream;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use schemas::{live, IncidentTransition, TransitionKind};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::is_transient_db_error;
use crate::jetstream::{
    ack_all, extend_ack_wait, retry_until_stopped, run_pull_loop, settle, BatchHandler,
    DeadLetters, Outcome, Rejection,
};
use crate::telemetry;
use crate::topology::{ConsumerSpec, Topology, INCIDENTS};

pub const CONSUMER: &str = "record";

/// Batches applied at once, each holding a database connection.
pub const IN_FLIGHT: usize = 2;

pub struct Recorder {
    batches: Arc<Batches>,
    in_flight: JoinSet<()>,
}

/// What applying a batch needs, shared by the batches in flight.
struct Batches {
    js: jetstream::Context,
    pool: PgPool,
    spec: ConsumerSpec,
    dead_letters: DeadLetters,
}

impl Recorder {
    pub fn new(js: jetstream::Context, pool: PgPool, topology: &Topology) -> Recorder {
        Recorder {
            batches: Arc::new(Batches {
                dead_letters: DeadLetters::new(js.clone(), CONSUMER),
                spec: topology.consumer(CONSUMER).clone(),
                js,
                pool,
            }),
            in_flight: JoinSet::new(),
        }
    }

    /// Records until `shutdown` fires, then finishes the batches in flight.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (js, spec) = (self.batches.js.clone(), self.batches.spec.clone());
        let pulled = run_pull_loop(&js, INCIDENTS, CONSUMER, &spec, &shutdown, &mut self).await;
        while let Some(done) = self.in_flight.join_next().await {
            finished(done);
        }
        pulled
    }
}

/// Lets a batch's panic stop the consumer, as it would have without the task around it.
fn finished(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

impl Batches {
    async fn handle_batch(&self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        let mut held = Vec::with_capacity(batch.len());
        let mut transitions = Vec::with_capacity(batch.len());
        let mut others = Vec::new();
        for msg in batch {
            if !is_transition(&msg.subject) {
                others.push(msg);
                continue;
            }
            match IncidentTransition::from_msgpack(&msg.payload) {
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
            }
        }
        ack_all(CONSUMER, &others).await;
        if held.is_empty() {
            return;
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
            None => return,
            Some(Ok(opened)) => {
                observe_detection(&opened);
                ack_all(CONSUMER, &held).await;
                announce(&self.js.client(), transitions.iter()).await;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "batch failed permanently; applying one by one");
                let mut applied = Vec::new();
                for (msg, t) in held.iter().zip(&transitions) {
                    let (outcome, opened) = handler::apply_one(pool, t).await;
                    observe_detection(&opened);
                    if matches!(outcome, Outcome::Done) {
                        applied.push(t);
                    }
                    settle(msg, outcome, &self.spec, &self.dead_letters).await;
                }
                announce(&self.js.client(), applied.into_iter()).await;
            }
        }
        telemetry::transitions_recorded(transitions.len());
    }
}

/// Whether a message on INCIDENTS is one of the pipeline's transitions. The stream also carries
/// the changes people make over the API, which are in Postgres already. They are skipped here
/// rather than by server-side subject filters: with one subject per service, a consumer with
/// several filters costs the server far more than delivering the few changes.
fn is_transition(subject: &str) -> bool {
    let kind = subject.rsplit('.').next().unwrap_or_default();
    [
        TransitionKind::Opened,
        TransitionKind::Updated,
        TransitionKind::Resolved,
    ]
    .iter()
    .any(|k| k.as_str() == kind)
}

/// Whether `record` has handled (acked or dead-lettered) every INCIDENTS message up to
/// `stream_sequence`; `None` when that cannot be told now. Consumers that need an incident's
/// row use this to tell "not written yet" from "never will be".
pub async fn has_handled(js: &jetstream::Context, stream_sequence: u64) -> Option<bool> {
    let stream = js.get_stream(INCIDENTS).await.ok()?;
    let info = stream.consumer_info(CONSUMER).await.ok()?;
    Some(info.ack_floor.stream_sequence >= stream_sequence)
}

/// Tells dashboards which incidents just changed in Postgres, once per incident per batch.
async fn announce<'a>(
    client: &async_nats::Client,
    transitions: impl Iterator<Item = &'a IncidentTransition>,
) {
    // The most telling kind per incident: an opening outranks a resolution, which outranks an
    // update.
    let rank = |kind: TransitionKind| match kind {
        TransitionKind::Opened => 2,
        TransitionKind::Resolved => 1,
        TransitionKind::Updated => 0,
    };
    let mut latest: HashMap<uuid::Uuid, &IncidentTransition> = HashMap::new();
    for t in transitions {
        let entry = latest.entry(t.incident.id).or_insert(t);
        if rank(t.kind) > rank(entry.kind) {
            *entry = t;
        }
    }
    for t in latest.into_values() {
        let changed = live::IncidentChanged {
            id: t.incident.id,
            service_id: t.incident.service_id.clone(),
            kind: t.kind.as_str().to_owned(),
        };
        crate::announce::announce(client, changed.subject(), &changed).await;
    }
}

/// Reports, for each live incident whose row was just committed, how long after its opening
/// sample's event time that happened.
fn observe_detection(opened: &[chrono::DateTime<chrono::Utc>]) {
    let now = chrono::Utc::now();
    for at in opened {
        let seconds = (now - *at).num_milliseconds() as f64 / 1000.0;
        telemetry::detection_latency(seconds);
    }
}

impl BatchHandler for Recorder {
    /// Starts applying the batch once fewer than [`IN_FLIGHT`] are, and returns.
    async fn handle(&mut self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        while self.in_flight.len() >= IN_FLIGHT {
            if let Some(done) = self.in_flight.join_next().await {
                finished(done);
            }
        }
        while let Some(done) = self.in_flight.try_join_next() {
            finished(done);
        }
        let (batches, shutdown) = (self.batches.clone(), shutdown.clone());
        self.in_flight.spawn(async move {
            let started = Instant::now();
            batches.handle_batch(batch, &shutdown).await;
            telemetry::batch_duration(CONSUMER, started.elapsed().as_secs_f64());
        });
    }

    fn times_batches(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pipelines_transitions_are_recorded() {
        for kind in ["opened", "updated", "resolved"] {
            assert!(is_transition(&format!("incidents.svc-1.{kind}")), "{kind}");
        }
        for kind in ["status_changed", "commented", "assigned", "opened_x"] {
            assert!(!is_transition(&format!("incidents.svc-1.{kind}")), "{kind}");
        }
    }
}
