//! The `evaluate` role: METRICS samples through the rules engine, incident transitions out
//! to INCIDENTS.
//!
//! METRICS is split into partitions by series ([`schemas::subject::partition_of`]), each read
//! by its own durable consumer, `evaluate-<partition>`. [`partitions`] decides which partitions
//! this process evaluates, by leases shared with the other evaluate processes; an [`Evaluator`]
//! evaluates one partition.
//!
//! An evaluator keeps stream order, which the engine's per-series state depends on. Before it
//! starts pulling it restores the partition's open episodes ([`recovery`]) and, if a previous
//! owner died holding messages, re-creates the durable consumer at the ack floor so those
//! messages come back in order rather than after `ack_wait`, behind newer ones. Samples a
//! restored episode already counted are recognised by stream sequence and skipped.

pub mod handler;
pub mod lease;
pub mod partitions;
pub mod recovery;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy, message::PublishMessage};
use chrono::Utc;
use pipeline::{Engine, Rule};
use schemas::{IncidentTransition, Span};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::jetstream::{
    ack_all, extend_ack_wait, retry_until_stopped, run_pull_loop, BatchHandler, DeadLetters,
    Rejection,
};
use crate::telemetry;
use crate::topology::{self, ConsumerSpec, Topology, METRICS};

pub use partitions::Evaluators;

/// The name of a partition's consumer, kept for the life of the process: metric labels and
/// dead letters take `&'static str`.
pub fn consumer_name(partition: u32) -> &'static str {
    static NAMES: Mutex<BTreeMap<u32, &'static str>> = Mutex::new(BTreeMap::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    names
        .entry(partition)
        .or_insert_with(|| Box::leak(topology::evaluate_consumer(partition).into_boxed_str()))
}

/// Evaluates one partition of METRICS.
pub struct Evaluator {
    js: jetstream::Context,
    pool: PgPool,
    partition: u32,
    partitions: u32,
    consumer: &'static str,
    spec: ConsumerSpec,
    rules: watch::Receiver<Arc<Vec<Rule>>>,
    engine: Engine,
    dead_letters: DeadLetters,
    known_services: HashSet<String>,
    /// Highest METRICS sequence whose effects are durable. Samples at or below it that come
    /// back (a lost ack, an expired `ack_wait`, a rebuilt pull stream) are acked and skipped.
    applied_through: u64,
    /// Origin of the processing-time clock the engine uses to advance idle series; reset when
    /// recovery ends, so time spent waiting or re-reading does not count as idleness.
    started: Instant,
    /// Whether the consumer has delivered everything pending: idle series are advanced only
    /// then, never while a backlog could still hold their samples.
    caught_up: bool,
    /// Samples evaluated since `updated` transitions were last published: acked only once
    /// they are, so that a crash loses no update.
    unacked: Vec<jetstream::Message>,
    /// Transitions whose publishing has not succeeded yet, kept for the next attempt.
    unpublished: Vec<IncidentTransition>,
    /// Set when a batch was cut short by `stop`: its openings are lost with this process, so
    /// nothing more is acked and the next owner evaluates everything unacked again.
    interrupted: bool,
}

fn fresh_engine(allowed_lateness: Span) -> Engine {
    let mut engine = Engine::default();
    engine.set_allowed_lateness(allowed_lateness);
    engine
}

impl Evaluator {
    pub fn new(
        js: jetstream::Context,
        pool: PgPool,
        topology: &Topology,
        rules: watch::Receiver<Arc<Vec<Rule>>>,
        allowed_lateness: Span,
        partition: u32,
    ) -> Evaluator {
        let consumer = consumer_name(partition);
        Evaluator {
            dead_letters: DeadLetters::new(js.clone(), consumer),
            spec: topology.evaluate_spec(partition),
            partition,
            partitions: topology.partitions(),
            consumer,
            engine: fresh_engine(allowed_lateness),
            known_services: HashSet::new(),
            applied_through: 0,
            started: Instant::now(),
            caught_up: false,
            unacked: Vec::new(),
            unpublished: Vec::new(),
            interrupted: false,
            js,
            pool,
            rules,
        }
    }

    /// Recovers the partition's state, then evaluates until `stop` fires. Fails only on errors
    /// that a restart of the component would not fix by itself.
    pub async fn evaluate_until(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        if !self.recover(&stop).await? {
            return Ok(());
        }
        let (js, spec, name) = (self.js.clone(), self.spec.clone(), self.consumer);
        run_pull_loop(&js, METRICS, name, &spec, &stop, &mut self).await?;
        // One attempt, as `stop` has fired: what is not acked comes back to the next owner.
        self.publish_and_ack(Vec::new(), &stop).await;
        Ok(())
    }

    /// A sample stored in another partition than its series belongs to (published straight to
    /// a stored subject) would be evaluated by two processes: it is refused instead.
    fn misplaced(&self, sample: &schemas::MetricSample) -> Option<Rejection> {
        let home = schemas::subject::partition_of(
            &sample.service_id,
            &sample.metric_type,
            self.partitions,
        );
        (home != self.partition).then(|| Rejection {
            kind: "subject",
            reason: format!(
                "stored in partition {} but series {}:{} belongs to partition {home}; publish to \
                 metrics.<service_id>.<metric_type>",
                self.partition, sample.service_id, sample.metric_type
            ),
        })
    }

    /// Applies rule changes made since the last batch.
    fn refresh_rules(&mut self) {
        if self.rules.has_changed().unwrap_or(false) {
            let rules = self.rules.borrow_and_update().as_ref().clone();
            self.engine.set_rules(rules);
        }
    }

    async fn handle_batch(&mut self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        self.refresh_rules();
        let mut held = Vec::with_capacity(batch.len());
        let mut transitions = Vec::new();
        let mut new_services = Vec::new();
        let mut last_seq = self.applied_through;
        for msg in batch {
            let Ok((seq, pending)) = msg.info().map(|i| (i.stream_sequence, i.pending)) else {
                tracing::warn!(subject = %msg.subject, "message without JetStream metadata");
                continue;
            };
            self.caught_up = pending == 0;
            // Decode even what was applied before, so poison whose dead-lettering failed is
            // tried again (the copy is deduplicated).
            match handler::decode(&msg).and_then(|sample| match self.misplaced(&sample) {
                Some(rejection) => Err(rejection),
                None => Ok(sample),
            }) {
                Ok(sample) => {
                    if seq > self.applied_through {
                        if !self.known_services.contains(&sample.service_id) {
                            new_services.push(sample.service_id.clone());
                        }
                        let now = self.clock_ms();
                        self.engine.evaluate_at(&sample, seq, now, &mut transitions);
                    }
                    held.push(msg);
                }
                Err(rejection) => self.dead_letters.reject(&msg, &rejection).await,
            }
            last_seq = last_seq.max(seq);
        }
        let evaluated = held.len();
        if !new_services.is_empty() {
            new_services.sort_unstable();
            new_services.dedup();
            let pool = &self.pool;
            let services = &new_services;
            let registered = retry_until_stopped(
                self.consumer,
                "register_services",
                shutdown,
                || store::services::register_many(pool, services),
                || extend_ack_wait(&held),
            )
            .await;
            let Some(registered) = registered else {
                self.interrupted = true;
                return;
            };
            crate::announce::services_registered(&self.js.client(), &registered).await;
            self.known_services.extend(new_services);
        }
        // Openings and resolutions go out now, after any a failed tick left behind, so that each
        // series' transitions stay in order; updates wait for the next tick.
        self.unacked.extend(held);
        self.unpublished.extend(transitions);
        if !self.publish(&self.unpublished, shutdown).await {
            self.interrupted = true;
            return;
        }
        self.unpublished.clear();
        self.applied_through = last_seq;
        telemetry::late_samples(self.engine.take_late());
        telemetry::samples_evaluated(evaluated);
        if self.unacked.len() >= self.most_unacked() {
            self.publish_and_ack(Vec::new(), shutdown).await;
        }
    }

    /// How many samples may wait for their updates: half of what the server lets the consumer
    /// hold unacked, so that delivery never stalls on it.
    fn most_unacked(&self) -> usize {
        usize::try_from(self.spec.max_ack_pending / 2)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(10_000)
    }

    /// Publishes `transitions` and then an `updated` transition for each open incident that
    /// changed since the last call, and acks the samples evaluated meanwhile. `false` if shut
    /// down first.
    async fn publish_and_ack(
        &mut self,
        transitions: Vec<IncidentTransition>,
        shutdown: &CancellationToken,
    ) -> bool {
        if self.interrupted {
            return false;
        }
        self.unpublished.extend(transitions);
        self.engine.flush(&mut self.unpublished);
        if !self.publish(&self.unpublished, shutdown).await {
            return false;
        }
        self.unpublished.clear();
        let unacked = std::mem::take(&mut self.unacked);
        ack_all(self.consumer, &unacked).await;
        true
    }

    /// Publishes transitions, retrying until done; `false` if shut down first.
    async fn publish(
        &self,
        transitions: &[IncidentTransition],
        shutdown: &CancellationToken,
    ) -> bool {
        if transitions.is_empty() {
            return true;
        }
        let js = &self.js;
        retry_until_stopped(
            self.consumer,
            "publish",
            shutdown,
            || publish_transitions(js, transitions),
            || extend_ack_wait(&self.unacked),
        )
        .await
        .is_some()
    }

    /// Milliseconds of a monotonic processing-time clock.
    fn clock_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Prepares the engine and the consumer position. Returns `false` if stopped meanwhile.
    async fn recover(&mut self, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let rules = self.rules.borrow_and_update().as_ref().clone();
        self.engine.set_rules(rules);
        let stream = self
            .js
            .get_stream(METRICS)
            .await
            .context("looking up METRICS")?;
        let position = stream.consumer_info(self.consumer).await.ok();
        let floor = position.as_ref().map_or(0, |p| p.ack_floor.stream_sequence);
        let (js, pool) = (&self.js, &self.pool);
        let lookback = self.engine.rebuild_lookback();
        let plan = recovery::plan_reread(js, floor, lookback).await?;
        let since = plan.map_or_else(Utc::now, |p| p.since);
        let (partition, partitions) = (self.partition, self.partitions);
        let owns = move |series_key: &str| {
            schemas::series::series_parts(series_key)
                .is_some_and(|(s, m)| schemas::subject::partition_of(s, m, partitions) == partition)
        };
        let restored = retry_until_stopped(
            self.consumer,
            "restore",
            shutdown,
            || async {
                recovery::restore(js, pool, floor, since, &owns)
                    .await
                    .map_err(|e| format!("{e:#}"))
            },
            || async {},
        )
        .await;
        let Some(restored) = restored else {
            return Ok(false);
        };
        let (incidents, watermarks) = (restored.incidents.len(), restored.watermarks.len());
        self.engine.restore(restored.incidents);
        for ((rule_id, series_key), seq) in restored.watermarks {
            self.engine.restore_watermark(rule_id, series_key, seq);
        }
        for ((rule_id, series_key), at) in restored.resolutions {
            self.engine.restore_resolution(rule_id, series_key, at);
        }
        let reread = match plan {
            Some(plan) => recovery::reread(js, &mut self.engine, plan, partition)
                .await
                .context("re-reading METRICS to rebuild windows")?,
            None => 0,
        };
        self.started = Instant::now();
        self.caught_up = false;
        self.applied_through = floor;
        tracing::info!(
            partition,
            rules = self.engine.rule_count(),
            open_episodes = self.engine.open_episodes(),
            incidents,
            watermarks,
            reread,
            ack_floor = floor,
            "evaluator state restored"
        );
        Ok(true)
    }
}

impl BatchHandler for Evaluator {
    async fn handle(&mut self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        self.handle_batch(batch, shutdown).await;
    }

    async fn before_pull(&mut self) -> anyhow::Result<()> {
        // Samples this process still holds would otherwise look held by a dead one.
        let stop = CancellationToken::new();
        stop.cancel();
        self.publish_and_ack(Vec::new(), &stop).await;
        position_consumer(&self.js, self.consumer, &self.spec, self.applied_through).await
    }

    /// The engine's per-series state depends on stream order.
    fn in_stream_order(&self) -> bool {
        true
    }

    /// Partitions tick in turn: a tick closes the windows of every idle series, a burst of work
    /// that would otherwise land on all partitions in the same instant.
    fn tick_phase(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            1000 * u64::from(self.partition) / u64::from(self.partitions.max(1)),
        )
    }

    /// Publishes the updates of open incidents, once a second at most, and lets windows of
    /// idle series close and silent series fire `absent` rules.
    async fn tick(&mut self, shutdown: &CancellationToken) {
        if !self.caught_up {
            self.caught_up = consumer_caught_up(&self.js, self.consumer).await;
        }
        let mut transitions = Vec::new();
        if self.caught_up {
            let now = self.clock_ms();
            self.engine.tick(now, &mut transitions);
        }
        self.publish_and_ack(transitions, shutdown).await;
    }
}

/// Puts the durable consumer where evaluation must continue, before every pull.
///
/// Messages a dead process (or a dropped pull stream) still holds would come back only after
/// `ack_wait`, behind newer ones; the consumer is re-created at its ack floor instead so they
/// come back at once and in order. A missing consumer (deleted by hand) is re-created after the
/// last sample this process applied, or at the start of the stream if it has applied none.
async fn position_consumer(
    js: &jetstream::Context,
    name: &str,
    spec: &ConsumerSpec,
    applied_through: u64,
) -> anyhow::Result<()> {
    let stream = js.get_stream(METRICS).await.context("looking up METRICS")?;
    let start = match stream.consumer_info(name).await {
        Ok(info) if info.num_ack_pending == 0 => return Ok(()),
        Ok(info) => {
            let start = info.ack_floor.stream_sequence + 1;
            tracing::warn!(
                consumer = name,
                held = info.num_ack_pending,
                start_sequence = start,
                "unacked samples are held elsewhere; rewinding the consumer to its ack floor"
            );
            stream
                .delete_consumer(name)
                .await
                .with_context(|| format!("deleting consumer {name} to rewind it"))?;
            start
        }
        Err(_) if applied_through == 0 => {
            topology::ensure_consumer(js, name, spec).await?;
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                consumer = name,
                start_sequence = applied_through + 1,
                "the consumer is gone; re-creating it after the last applied sample"
            );
            applied_through + 1
        }
    };
    let mut config = spec.to_config(name);
    config.deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: start,
    };
    stream
        .create_consumer(config)
        .await
        .with_context(|| format!("re-creating consumer {name}"))?;
    Ok(())
}

/// Whether the consumer has nothing left to deliver.
async fn consumer_caught_up(js: &jetstream::Context, name: &str) -> bool {
    let Ok(stream) = js.get_stream(METRICS).await else {
        return false;
    };
    stream
        .consumer_info(name)
        .await
        .is_ok_and(|info| info.num_pending == 0)
}

/// Publishes every transition and waits for all acks; any failure fails the whole call, and
/// the deterministic message ids make publishing them again harmless.
///
/// A restarted evaluator trusts the last transition stored for a (rule, series) to cover all
/// before it, so those must be stored in order with none missing. Messages in flight when the
/// connection drops are lost, while those queued behind them go out after the reconnect. So a
/// (rule, series)'s next transition is sent only once its previous one is acknowledged: the
/// transitions go out in waves, each holding at most one per (rule, series).
async fn publish_transitions(
    js: &jetstream::Context,
    transitions: &[IncidentTransition],
) -> Result<(), async_nats::Error> {
    let waves = waves(transitions);
    let count = waves.iter().max().map_or(0, |last| last + 1);
    for wave in 0..count {
        let mut acks = Vec::new();
        for (t, _) in transitions.iter().zip(&waves).filter(|(_, w)| **w == wave) {
            let publish = PublishMessage::build()
                .payload(t.to_msgpack().into())
                .message_id(t.message_id());
            acks.push(js.send_publish(t.subject(), publish).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    for t in transitions {
        telemetry::transitions_published(t.kind.as_str(), 1);
    }
    Ok(())
}

/// The wave of each transition: how many transitions of its (rule, series) come before it.
fn waves(transitions: &[IncidentTransition]) -> Vec<usize> {
    waves_of(
        transitions
            .iter()
            .map(|t| (t.incident.rule_id, t.incident.series_key.as_str())),
    )
}

fn waves_of<'a>(keys: impl Iterator<Item = (Uuid, &'a str)>) -> Vec<usize> {
    let mut before: HashMap<(Uuid, &str), usize> = HashMap::new();
    keys.map(|key| {
        let seen = before.entry(key).or_default();
        *seen += 1;
        *seen - 1
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_transitions_go_out_one_wave_apart() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let keys = [
            (a, "s1"),
            (a, "s2"),
            (a, "s1"),
            (b, "s1"),
            (a, "s1"),
            (a, "s2"),
        ];
        assert_eq!(waves_of(keys.into_iter()), [0, 0, 1, 0, 2, 1]);
        assert!(waves_of(std::iter::empty()).is_empty());
    }
}
