//! Which partitions of METRICS this process evaluates, shared with the other evaluate processes
//! through leases ([`lease`]).
//!
//! Every quarter of the lease time the process says it is alive and renews the leases it holds;
//! every eighth it reads who holds the rest, so that a dead holder's expired leases are taken
//! soon after they expire. Each partition has a preferred owner among the live processes
//! (highest random weight within an even share, [`lease::assign`]), so the partitions spread
//! evenly and a process joining or leaving moves little more than its share:
//! - a free partition is taken by its preferred owner, or by anyone once it has stayed free for
//!   a whole lease time (its preferred owner is alive but not taking it);
//! - a partition whose preferred owner is another live process is handed over: stopped after
//!   its current batch, then released;
//! - a partition whose lease was taken elsewhere, or could not be renewed for half the lease
//!   time, is stopped at once.
//!
//! A process that dies stops renewing; its leases expire three quarters of the lease time after
//! their last renewal and the others take its partitions, each rebuilt from Postgres and the stream as after a restart. A
//! partition whose evaluator fails (NATS or Postgres unreachable while it restores, say) is
//! released the same way and taken again on a later round, here or elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use pipeline::Rule;
use schemas::Span;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::lease::{self, Leases, RenewError};
use super::Evaluator;
use crate::telemetry;
use crate::topology::{self, Topology};

/// The evaluate role of one process: the partitions it holds, each evaluated by its own task.
pub struct Evaluators {
    js: jetstream::Context,
    pool: PgPool,
    topology: Topology,
    rules: watch::Receiver<Arc<Vec<Rule>>>,
    allowed_lateness: Span,
}

/// A partition this process evaluates.
struct Held {
    revision: u64,
    renewed: Instant,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Evaluators {
    pub fn new(
        js: jetstream::Context,
        pool: PgPool,
        topology: Topology,
        rules: watch::Receiver<Arc<Vec<Rule>>>,
        allowed_lateness: Span,
    ) -> Evaluators {
        Evaluators {
            js,
            pool,
            topology,
            rules,
            allowed_lateness,
        }
    }

    /// Takes part in evaluation until `shutdown` fires, then hands its partitions over. Fails
    /// when the lease bucket cannot be opened, or when a partition's evaluator panics.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let kv = topology::ensure_leases_bucket(&self.js, &self.topology.evaluate_leases)
            .await
            .context("opening the lease bucket")?;
        let owner = format!(
            "{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let leases = Leases::new(kv, owner);
        let ttl = Duration::from_secs(self.topology.evaluate_leases.ttl_secs);
        tracing::info!(
            owner = leases.owner(),
            partitions = self.topology.partitions(),
            lease_secs = ttl.as_secs(),
            "joining the evaluators"
        );
        let mut round = Round {
            held: BTreeMap::new(),
            free_since: HashMap::new(),
            ttl,
        };
        // Say hello first and look one round later, so processes starting together see each
        // other before taking partitions.
        if let Err(e) = leases.heartbeat().await {
            tracing::warn!(error = %e, "could not join the lease bucket yet; retrying");
        }
        let mut renewing = false;
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = tokio::time::sleep(ttl / 8) => {}
            }
            if let Err(e) = round.reap(&leases).await {
                break Err(e);
            }
            // Renewals every other round: every quarter of the lease time.
            renewing = !renewing;
            round.run(&self, &leases, &shutdown, renewing).await;
            telemetry::partitions_owned(round.held.len());
        };
        for (partition, held) in std::mem::take(&mut round.held) {
            held.stop.cancel();
            let _ = held.task.await;
            leases.release(partition, held.revision).await;
        }
        leases.leave().await;
        telemetry::partitions_owned(0);
        tracing::info!(owner = leases.owner(), "left the evaluators");
        result
    }

    fn start(
        &self,
        partition: u32,
        shutdown: &CancellationToken,
    ) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let evaluator = Evaluator::new(
            self.js.clone(),
            self.pool.clone(),
            &self.topology,
            self.rules.clone(),
            self.allowed_lateness,
            partition,
        );
        let stop = shutdown.child_token();
        let task = tokio::spawn(evaluator.evaluate_until(stop.clone()));
        (stop, task)
    }
}

struct Round {
    held: BTreeMap<u32, Held>,
    /// When each partition was first seen free, while it stays free.
    free_since: HashMap<u32, Instant>,
    ttl: Duration,
}

impl Round {
    /// Lets go of partitions whose evaluator ended by itself, so that they are taken again on a
    /// later round; fails if one panicked.
    async fn reap(&mut self, leases: &Leases) -> anyhow::Result<()> {
        let finished: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for partition in finished {
            let held = self.held.remove(&partition).expect("listed above");
            match held.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(
                    partition,
                    error = %format!("{e:#}"),
                    "the partition's evaluator failed; releasing it to be taken again"
                ),
                Err(e) => anyhow::bail!("the evaluator of partition {partition} panicked: {e}"),
            }
            leases.release(partition, held.revision).await;
        }
        Ok(())
    }

    async fn run(
        &mut self,
        evaluators: &Evaluators,
        leases: &Leases,
        shutdown: &CancellationToken,
        renewing: bool,
    ) {
        if renewing {
            if let Err(e) = leases.heartbeat().await {
                tracing::warn!(error = %e, "could not say this evaluator is alive");
            }
            self.renew(leases).await;
        }
        let partitions = evaluators.topology.partitions();
        let view = match leases.view(partitions).await {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the partition leases");
                return;
            }
        };
        let mut members = view.members;
        if !members.iter().any(|m| m == leases.owner()) {
            members.push(leases.owner().to_owned());
        }
        let assigned = lease::assign(&members, partitions);
        for partition in 0..partitions {
            let preferred = assigned[partition as usize].unwrap_or_default();
            let mine = preferred == leases.owner();
            let owner = view.owners.get(&partition);
            if owner.is_some() {
                self.free_since.remove(&partition);
            }
            if let Some(held) = self.held.get(&partition) {
                if !mine {
                    tracing::info!(partition, to = preferred, "handing the partition over");
                    held.stop.cancel();
                    let held = self.held.remove(&partition).expect("just read");
                    let _ = held.task.await;
                    leases.release(partition, held.revision).await;
                }
                continue;
            }
            if owner.is_some() {
                continue;
            }
            let waited = self
                .free_since
                .entry(partition)
                .or_insert_with(Instant::now);
            if !mine && waited.elapsed() < self.ttl {
                continue;
            }
            match leases.take(partition).await {
                Ok(Some(revision)) => {
                    self.free_since.remove(&partition);
                    tracing::info!(partition, "took the partition");
                    let (stop, task) = evaluators.start(partition, shutdown);
                    self.held.insert(
                        partition,
                        Held {
                            revision,
                            renewed: Instant::now(),
                            stop,
                            task,
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(partition, error = %e, "could not take the partition"),
            }
        }
    }

    /// Renews every lease held; stops the partitions whose lease is gone or may be.
    async fn renew(&mut self, leases: &Leases) {
        let renewals = self.held.iter().map(|(partition, held)| async move {
            (*partition, leases.renew(*partition, held.revision).await)
        });
        let renewed = futures::future::join_all(renewals).await;
        let mut lost = Vec::new();
        for (partition, result) in renewed {
            let held = self.held.get_mut(&partition).expect("renewed above");
            match result {
                Ok(revision) => {
                    held.revision = revision;
                    held.renewed = Instant::now();
                }
                Err(RenewError::Lost) => {
                    tracing::error!(
                        partition,
                        "the partition's lease was taken by another process; stopping it"
                    );
                    lost.push(partition);
                }
                Err(RenewError::Unreachable(e)) if held.renewed.elapsed() >= self.ttl / 2 => {
                    tracing::error!(partition, error = %e, "could not renew the partition's lease in time; stopping it");
                    lost.push(partition);
                }
                Err(RenewError::Unreachable(e)) => {
                    tracing::warn!(partition, error = %e, "could not renew the partition's lease; retrying");
                }
            }
        }
        for partition in lost {
            if let Some(held) = self.held.remove(&partition) {
                held.stop.cancel();
                let _ = held.task.await;
            }
        }
    }
}
