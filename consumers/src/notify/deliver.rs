//! The `deliver` consumer: sends webhook and Slack deliveries, each job on its own task.
//!
//! A job names a delivery. Its handling:
//! - finished deliveries are acked without sending, so a redelivered job never sends twice;
//! - a delivery still collecting its group is NAKed until its `due_at`;
//! - otherwise the next attempt is claimed in Postgres (a lease, so one sender at a time), the
//!   request is sent within the timeout, and the attempt's outcome is recorded with a timeline
//!   event on each incident it tells about;
//! - a failed attempt is NAKed with the consumer's exponential backoff, or, after the last
//!   attempt or on a failure retrying cannot fix, dead-lettered with the reason and the delivery
//!   recorded as failed.
//!
//! Up to [`CONCURRENCY`] jobs run at once and at most [`PER_CHANNEL`] per channel, so a target
//! that hangs holds only its own jobs; further jobs for it wait in the stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use store::channels::{Channel, ChannelKind};
use store::deliveries::{self, AttemptResult, DeliveryRecord};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fanout::kind_phrase;
use super::payload::{self, Body, ChannelRef, Event, Named};
use super::send::{self, Sender};
use super::{timeline, NotifyConfig};
use crate::error::is_transient_db_error;
use crate::jetstream::{run_pull_loop, BatchHandler, DeadLetters, Rejection};
use crate::telemetry::{self, Failure};
use crate::topology::{ConsumerSpec, Topology, DELIVERIES};

pub const CONSUMER: &str = "deliver";

/// Jobs handled at once.
pub const CONCURRENCY: usize = 64;
/// Jobs of one channel handled at once.
pub const PER_CHANNEL: usize = 4;
/// How long a job waits when its channel is busy or another sender holds its delivery.
const BUSY_DELAY: Duration = Duration::from_secs(1);

pub struct Deliverer {
    js: jetstream::Context,
    spec: ConsumerSpec,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    running: JoinSet<()>,
}

struct Shared {
    pool: PgPool,
    config: NotifyConfig,
    sender: Sender,
    spec: ConsumerSpec,
    dead_letters: DeadLetters,
    busy: Mutex<HashMap<Uuid, usize>>,
}

impl Deliverer {
    pub fn new(
        js: jetstream::Context,
        pool: PgPool,
        topology: &Topology,
        config: NotifyConfig,
    ) -> Deliverer {
        let spec = topology.consumer(CONSUMER).clone();
        Deliverer {
            shared: Arc::new(Shared {
                pool,
                config,
                sender: Sender::new(&config),
                spec: spec.clone(),
                dead_letters: DeadLetters::new(js.clone(), CONSUMER),
                busy: Mutex::new(HashMap::new()),
            }),
            js,
            spec,
            slots: Arc::new(Semaphore::new(CONCURRENCY)),
            running: JoinSet::new(),
        }
    }

    /// Sends until `shutdown` fires, then waits (up to the request timeout) for the requests
    /// under way, so their outcome is recorded rather than sent again.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (js, spec) = (self.js.clone(), self.spec.clone());
        let result = run_pull_loop(&js, DELIVERIES, CONSUMER, &spec, &shutdown, &mut self).await;
        let grace = self.shared.config.timeout + Duration::from_secs(2);
        let drained = tokio::time::timeout(grace, async {
            while self.running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = self.running.len(),
                "stopping with deliveries under way; they will be retried"
            );
        }
        result
    }
}

impl BatchHandler for Deliverer {
    async fn handle(&mut self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        let mut batch = batch.into_iter();
        while let Some(msg) = batch.next() {
            let permit = tokio::select! {
                permit = self.slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = shutdown.cancelled() => {
                    // Hand back what was not started, so another process takes it at once.
                    for msg in std::iter::once(msg).chain(batch) {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                    }
                    return;
                }
            };
            let shared = self.shared.clone();
            self.running.spawn(async move {
                shared.handle(msg).await;
                drop(permit);
            });
            while self.running.try_join_next().is_some() {}
        }
    }
}

/// Counts a channel's jobs under way; released on drop.
struct Busy<'a> {
    shared: &'a Shared,
    channel: Uuid,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut busy = self.shared.busy.lock().expect("not poisoned");
        if let Some(n) = busy.get_mut(&self.channel) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.channel);
            }
        }
    }
}

impl Shared {
    fn enter(&self, channel: Uuid) -> Option<Busy<'_>> {
        let mut busy = self.busy.lock().expect("not poisoned");
        let n = busy.entry(channel).or_insert(0);
        if *n >= PER_CHANNEL {
            return None;
        }
        *n += 1;
        Some(Busy {
            shared: self,
            channel,
        })
    }

    async fn handle(&self, msg: jetstream::Message) {
        let id = match std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|s| s.trim().parse::<Uuid>().ok())
        {
            Some(id) => id,
            None => {
                let rejection = Rejection {
                    kind: "decode",
                    reason: "a delivery job must be a delivery id".to_owned(),
                };
                self.dead_letters.reject(&msg, &rejection).await;
                return;
            }
        };
        match self.deliver(&msg, id).await {
            Ok(Step::Ack) => ack(&msg, AckKind::Ack).await,
            Ok(Step::Wait(delay)) => ack(&msg, AckKind::Nak(Some(delay))).await,
            Ok(Step::Retry(delay)) => {
                telemetry::message_failed(CONSUMER, Failure::Retried);
                ack(&msg, AckKind::Nak(Some(delay))).await
            }
            Ok(Step::GiveUp(reason)) => {
                let rejection = Rejection {
                    kind: "delivery_failed",
                    reason,
                };
                self.dead_letters.reject(&msg, &rejection).await;
            }
            Err(e) if is_transient_db_error(&e) => {
                telemetry::retried(CONSUMER, "database");
                tracing::warn!(delivery = %id, error = %e, "database unavailable; will retry");
                ack(&msg, AckKind::Nak(Some(BUSY_DELAY * 2))).await
            }
            Err(e) => {
                let rejection = Rejection {
                    kind: "database",
                    reason: e.to_string(),
                };
                self.dead_letters.reject(&msg, &rejection).await;
            }
        }
    }

    async fn deliver(&self, msg: &jetstream::Message, id: Uuid) -> Result<Step, sqlx::Error> {
        let Some(delivery) = deliveries::get(&self.pool, id).await? else {
            tracing::warn!(delivery = %id, "a job names an unknown delivery; dropping it");
            return Ok(Step::Ack);
        };
        if delivery.state().is_finished() {
            return Ok(Step::Ack);
        }
        let channel = match delivery.channel_id {
            Some(channel_id) => store::channels::get(&self.pool, channel_id).await?,
            None => None,
        };
        let Some(channel) = channel.filter(|c| c.enabled) else {
            deliveries::cancel(&self.pool, id, "the channel was deleted or disabled").await?;
            let kind = delivery.channel_kind.parse().map(ChannelKind::as_str);
            telemetry::notification(kind.unwrap_or("other"), "cancelled");
            return Ok(Step::Ack);
        };
        let wait = delivery.due_at - Utc::now();
        if wait > chrono::TimeDelta::zero() {
            return Ok(Step::Wait(
                wait.to_std().unwrap_or_default() + Duration::from_millis(20),
            ));
        }
        let Some(_busy) = self.enter(channel.id) else {
            return Ok(Step::Wait(BUSY_DELAY));
        };
        let department = match delivery.department_id {
            Some(id) => store::departments::get(&self.pool, id)
                .await?
                .map(|d| d.name),
            None => None,
        }
        .unwrap_or_default();
        let target = send::target_of(channel.url.as_deref());
        let lease = self.config.timeout + Duration::from_secs(5);
        let claimed = {
            let mut tx = self.pool.begin().await?;
            let claim = deliveries::claim(&mut tx, id, lease, &target, |items| {
                body(&delivery, &channel, &department, items)
            })
            .await?;
            tx.commit().await?;
            claim
        };
        let Some(claim) = claimed else {
            // Another sender holds it, or it finished meanwhile: look again shortly.
            return Ok(Step::Wait(BUSY_DELAY));
        };
        // Keep the job while the request is under way, however long the ack wait.
        let _ = msg.ack_with(AckKind::Progress).await;
        let attempt = self
            .sender
            .send(&channel, id, claim.attempt, &claim.body)
            .await;
        telemetry::delivery_attempt(
            channel.kind.as_str(),
            attempt.outcome.as_str(),
            attempt.latency.as_secs_f64(),
        );
        let attempts_left = u32::try_from(claim.attempt)
            .map(|n| n < self.config.max_attempts)
            .unwrap_or(false);
        let ok = attempt.outcome == send::Outcome::Ok;
        let last = !ok && (!attempt.outcome.is_retryable() || !attempts_left);
        let backoff = self.spec.nak_delay(i64::from(claim.attempt));
        let outcome = Recorded {
            attempt: claim.attempt,
            result: &attempt,
            last,
            backoff,
        };
        // The request went out: its outcome must be recorded, or it would be sent again.
        let mut delay = Duration::from_millis(200);
        let recorded = loop {
            match self
                .record(&delivery, &channel, &department, &outcome)
                .await
            {
                Ok(recorded) => break recorded,
                Err(e) if is_transient_db_error(&e) => {
                    telemetry::retried(CONSUMER, "record_attempt");
                    tracing::warn!(delivery = %id, error = %e, "recording an attempt failed; retrying");
                    tokio::time::sleep(delay).await;
                    let _ = msg.ack_with(AckKind::Progress).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        };
        if !recorded {
            tracing::warn!(delivery = %id, attempt = claim.attempt, "another sender took the delivery over while this attempt ran");
            return Ok(Step::Ack);
        }
        if ok {
            telemetry::notification(channel.kind.as_str(), "delivered");
            Ok(Step::Ack)
        } else if last {
            telemetry::notification(channel.kind.as_str(), "failed");
            let reason = format!(
                "gave up on delivery {id} to {target} after attempt {}: {}",
                claim.attempt,
                attempt.error.as_deref().unwrap_or("failed")
            );
            Ok(Step::GiveUp(reason))
        } else {
            Ok(Step::Retry(backoff))
        }
    }

    /// Records the attempt and puts it on the timeline of every incident the delivery tells
    /// about; false when the attempt was superseded by another sender's.
    async fn record(
        &self,
        delivery: &DeliveryRecord,
        channel: &Channel,
        department: &str,
        recorded: &Recorded<'_>,
    ) -> Result<bool, sqlx::Error> {
        let Recorded {
            attempt,
            result,
            last,
            backoff,
        } = *recorded;
        let department = if department.is_empty() {
            "a department"
        } else {
            department
        };
        let ok = result.outcome == send::Outcome::Ok;
        let via = kind_phrase(channel.kind);
        let failure = || {
            result
                .error
                .clone()
                .unwrap_or_else(|| result.outcome.as_str().to_owned())
        };
        let summary = if ok {
            format!("notified {department} via {via}")
        } else if last {
            format!(
                "gave up notifying {department} via {via} after attempt {attempt}: {}",
                failure()
            )
        } else {
            format!(
                "notifying {department} via {via} failed (attempt {attempt}): {}",
                failure()
            )
        };
        let mut tx = self.pool.begin().await?;
        let moved = deliveries::finish_attempt(
            &mut tx,
            delivery.id,
            attempt,
            &AttemptResult {
                outcome: result.outcome.as_str(),
                status_code: result.status_code,
                latency: result.latency,
                error: result.error.as_deref(),
            },
            last,
            backoff,
        )
        .await?;
        if !moved {
            return Ok(false);
        }
        let mut incidents: Vec<Uuid> = deliveries::items(&mut *tx, delivery.id)
            .await?
            .into_iter()
            .map(|i| i.incident_id)
            .collect();
        incidents.sort_unstable();
        incidents.dedup();
        for incident_id in incidents {
            timeline::write(
                &mut *tx,
                timeline::Entry {
                    kind: if ok {
                        timeline::NOTIFIED
                    } else {
                        timeline::FAILED
                    },
                    delivery_id: delivery.id,
                    incident_id,
                    attempt,
                    channel,
                    department,
                    data: json!({
                        "outcome": result.outcome.as_str(),
                        "status_code": result.status_code,
                        "latency_ms": u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX),
                        "target": send::target_of(channel.url.as_deref()),
                        "error": result.error,
                        "final": ok || last,
                        "summary": summary,
                    }),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// How an attempt went, to record.
#[derive(Clone, Copy)]
struct Recorded<'a> {
    attempt: i32,
    result: &'a send::Attempt,
    last: bool,
    /// When it failed and is not the last: how long until the next attempt.
    backoff: Duration,
}

/// What to do with a job.
enum Step {
    Ack,
    /// Not yet (grouping, or busy): NAK with this delay; not a failure.
    Wait(Duration),
    /// The attempt failed: NAK with backoff.
    Retry(Duration),
    /// The last attempt failed: dead-letter with the reason.
    GiveUp(String),
}

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    let processed = matches!(kind, AckKind::Ack);
    match msg.ack_with(kind).await {
        Ok(()) if processed => telemetry::messages_processed(CONSUMER, 1),
        Ok(()) => {}
        Err(e) => {
            tracing::debug!(consumer = CONSUMER, error = %e, "ack failed; the job will be redelivered")
        }
    }
}

/// The body a delivery sends, built from its items when it is first attempted.
fn body(
    delivery: &DeliveryRecord,
    channel: &Channel,
    department: &str,
    items: &[deliveries::ItemRecord],
) -> String {
    let events: Vec<Event> = items
        .iter()
        .filter_map(|item| serde_json::from_value(item.event.clone()).ok())
        .collect();
    let body = Body {
        version: payload::VERSION,
        id: delivery.id,
        channel: ChannelRef {
            id: channel.id,
            name: channel.name.clone(),
            kind: channel.kind.as_str().to_owned(),
        },
        department: Named {
            id: delivery.department_id,
            name: department.to_owned(),
        },
        service_id: delivery.service_id.clone(),
        events,
    };
    serde_json::to_string(&body).expect("bodies serialize")
}
