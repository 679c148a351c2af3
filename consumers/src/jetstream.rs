//! Plumbing every durable consumer shares: the [`Outcome`] of handling a message and how it maps
//! to an ack, dead-lettering, batching the pull stream, and retrying with backoff. The pull loop
//! and the ack helpers here also count what every consumer processed, failed and got
//! redelivered, and time its batches.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, message::PublishMessage, AckKind};
use async_nats::HeaderMap;
use futures::{FutureExt, StreamExt};
use schemas::headers;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{self, Failure};
use crate::topology::{self, ConsumerSpec};

/// A message that can never be handled: why, in words and as a small fixed kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of a small fixed set, used as a metric label.
    pub kind: &'static str,
    pub reason: String,
}

/// What became of one message.
#[derive(Debug)]
pub enum Outcome {
    /// The effect is durable: ack.
    Done,
    /// A transient failure: NAK with a delay that grows with the delivery count.
    Retry,
    /// It will never succeed: copy to DEADLETTER, then terminate.
    Poison(Rejection),
}

/// Copies poison messages to the DEADLETTER stream with the reason in headers.
#[derive(Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    consumer: &'static str,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context, consumer: &'static str) -> DeadLetters {
        DeadLetters { js, consumer }
    }

    /// Stores a copy of `msg` in DEADLETTER; fails when the copy could not be stored, in which
    /// case the original must not be terminated.
    pub async fn publish(
        &self,
        msg: &jetstream::Message,
        rejection: &Rejection,
    ) -> Result<(), async_nats::Error> {
        let info = msg.info()?;
        let mut headers = HeaderMap::new();
        if let Some(original) = &msg.headers {
            for (name, values) in original.iter() {
                if AsRef::<str>::as_ref(name) == "Nats-Msg-Id" {
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert(
            headers::DEADLETTER_REASON,
            one_line(&rejection.reason).as_str(),
        );
        headers.insert(headers::DEADLETTER_KIND, rejection.kind);
        headers.insert(headers::DEADLETTER_SUBJECT, msg.subject.as_str());
        headers.insert(headers::DEADLETTER_STREAM, info.stream);
        headers.insert(
            headers::DEADLETTER_SEQUENCE,
            info.stream_sequence.to_string().as_str(),
        );
        headers.insert(headers::DEADLETTER_CONSUMER, self.consumer);
        headers.insert(
            headers::DEADLETTER_DELIVERED,
            info.delivered.to_string().as_str(),
        );
        let subject = schemas::subject::deadletter_subject(info.stream, self.consumer);
        let publish = PublishMessage::build()
            .headers(headers)
            .payload(msg.payload.clone())
            .message_id(format!(
                "{}:{}:{}",
                info.stream, info.stream_sequence, self.consumer
            ));
        self.js.send_publish(subject, publish).await?.await?;
        telemetry::dead_lettered(self.consumer, rejection.kind);
        tracing::warn!(
            consumer = self.consumer,
            subject = %msg.subject,
            stream_seq = info.stream_sequence,
            kind = rejection.kind,
            reason = %rejection.reason,
            "dead-lettered a message"
        );
        Ok(())
    }

    /// Dead-letters and terminates. When the copy cannot be stored the message is left
    /// unacked, so it is delivered again rather than lost.
    pub async fn reject(&self, msg: &jetstream::Message, rejection: &Rejection) {
        match self.publish(msg, rejection).await {
            Ok(()) => {
                telemetry::message_failed(self.consumer, Failure::DeadLettered);
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "could not terminate a dead-lettered message");
                }
            }
            Err(e) => {
                telemetry::retried(self.consumer, "deadletter");
                tracing::error!(error = %e, "could not dead-letter a message; it will be redelivered");
            }
        }
    }
}

/// Header values must be one line.
fn one_line(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.chars().take(1024).collect()
}

/// Handles one batch of messages pulled from a durable consumer, in stream order. It acks,
/// retries or dead-letters each message itself, and leaves messages unacked if `shutdown` fires
/// before their effect is durable.
pub trait BatchHandler {
    fn handle(
        &mut self,
        batch: Vec<jetstream::Message>,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = ()> + Send;

    /// Runs before every (re)build of the pull stream, for example to put the consumer back
    /// at a known position.
    fn before_pull(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Runs about once a second between batches, for work driven by the passing of time.
    fn tick(&mut self, _shutdown: &CancellationToken) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Where in each second [`tick`](BatchHandler::tick) runs, so that handlers in one process
    /// with heavy ticks take turns rather than all stalling the process at once.
    fn tick_phase(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether the handler reports how long each batch took itself, because
    /// [`handle`](BatchHandler::handle) returns before the batch is done.
    fn times_batches(&self) -> bool {
        false
    }

    /// Whether the handler needs every message in stream order, none skipped. A message the
    /// server delivered but the connection lost (NATS restarted, a pull request gone stale)
    /// comes back only after `ack_wait`, behind newer ones. For such a handler the loop
    /// watches the consumer's delivery sequence: at a gap it hands over only the messages
    /// before it and rebuilds the pull stream, so that
    /// [`before_pull`](BatchHandler::before_pull) can put the consumer back at its ack floor.
    fn in_stream_order(&self) -> bool {
        false
    }
}

/// Pulls batches from the durable consumer `name` on `stream` and hands them to `handler` until
/// `shutdown` fires. Transient pull errors are counted and logged; when the pull stream ends or
/// fails terminally it is rebuilt, re-creating the consumer if someone deleted it. Fails only
/// when the stream itself cannot be found.
pub async fn run_pull_loop(
    js: &jetstream::Context,
    stream: &str,
    name: &'static str,
    spec: &ConsumerSpec,
    shutdown: &CancellationToken,
    handler: &mut impl BatchHandler,
) -> anyhow::Result<()> {
    let stream = js
        .get_stream(stream)
        .await
        .with_context(|| format!("looking up the {stream} stream"))?;
    while !shutdown.is_cancelled() {
        if let Err(e) = handler.before_pull().await {
            tracing::warn!(consumer = name, error = %format!("{e:#}"), "preparing to pull failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let (mut messages, delivered) = match pull_stream(&stream, name, spec).await {
            Ok(pulled) => pulled,
            Err(e) => {
                tracing::warn!(consumer = name, error = %e, "cannot pull; re-creating the consumer and retrying");
                if let Err(e) = topology::ensure_consumer(js, name, spec).await {
                    tracing::warn!(consumer = name, error = %e, "re-creating the consumer failed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        // The delivery sequence the next message must carry, for handlers that need order.
        let mut next_delivery = delivered + 1;
        let first_tick = tokio::time::Instant::now() + handler.tick_phase();
        let mut ticks = tokio::time::interval_at(first_tick, Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = ticks.tick() => {
                    handler.tick(shutdown).await;
                    continue;
                }
                batch = next_batch(&mut messages, spec.max_batch) => batch,
            };
            let Some(batch) = batch else { break };
            let mut healthy = true;
            let mut gap = false;
            let mut received = Vec::with_capacity(batch.len());
            for item in batch {
                match item {
                    // Past a gap nothing is handed over: it comes back in order after the rebuild.
                    Ok(_) if gap => {}
                    Ok(msg) if handler.in_stream_order() => {
                        if in_sequence(name, &msg, &mut next_delivery) {
                            received.push(msg);
                        } else {
                            gap = true;
                        }
                    }
                    Ok(msg) => received.push(msg),
                    Err(e) => {
                        telemetry::stream_errors(name, error_kind_label(&e));
                        if is_terminal(&e) {
                            tracing::warn!(consumer = name, error = %e, "pull stream failed; rebuilding it");
                            healthy = false;
                        } else {
                            tracing::debug!(consumer = name, error = %e, "transient pull error");
                        }
                    }
                }
            }
            let received = skip_redrives_for_others(name, received).await;
            if !received.is_empty() {
                let redelivered = received
                    .iter()
                    .filter(|m| m.info().is_ok_and(|i| i.delivered > 1))
                    .count();
                telemetry::messages_redelivered(name, redelivered);
                let started = Instant::now();
                handler.handle(received, shutdown).await;
                if !handler.times_batches() {
                    telemetry::batch_duration(name, started.elapsed().as_secs_f64());
                }
            }
            if !healthy || gap {
                break;
            }
        }
    }
    Ok(())
}

/// Acks, unread, the messages `tracely deadletter replay` published again for another
/// consumer of the stream: this one handled their originals.
async fn skip_redrives_for_others(
    name: &str,
    received: Vec<jetstream::Message>,
) -> Vec<jetstream::Message> {
    let mut mine = Vec::with_capacity(received.len());
    for msg in received {
        let target = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(schemas::headers::REDRIVE_FOR))
            .map(|v| v.as_str().to_owned());
        match target {
            Some(target) if !redrive_is_for(&target, name) => {
                if let Err(e) = msg.ack().await {
                    tracing::debug!(consumer = name, error = %e, "could not ack another consumer's re-driven message");
                }
            }
            _ => mine.push(msg),
        }
    }
    mine
}

/// Whether a copy re-driven for `target` is for consumer `name`. Letters written before METRICS
/// was partitioned name the single `evaluate`, which every partition's consumer answers to: the
/// copy is stored in one partition only.
fn redrive_is_for(target: &str, name: &str) -> bool {
    target == name || (target == topology::EVALUATE && topology::evaluate_partition(name).is_some())
}

/// A pull stream on the consumer, and how many deliveries the consumer had made before it.
async fn pull_stream(
    stream: &jetstream::stream::Stream,
    name: &str,
    spec: &ConsumerSpec,
) -> Result<(pull::Stream, u64), async_nats::Error> {
    let consumer = stream.get_consumer::<pull::Config>(name).await?;
    let delivered = consumer.cached_info().delivered.consumer_sequence;
    let messages = consumer
        .stream()
        .max_messages_per_batch(spec.max_batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    Ok((messages, delivered))
}

/// Whether `msg` is the delivery that was due, with none lost before it; advances `next`. A
/// delivery sequence lower than due means the server counts again from an older state (it
/// restarted from its store), which loses nothing.
fn in_sequence(name: &'static str, msg: &jetstream::Message, next: &mut u64) -> bool {
    let Ok(info) = msg.info() else {
        return true;
    };
    if info.consumer_sequence > *next {
        tracing::warn!(
            consumer = name,
            expected = *next,
            delivered = info.consumer_sequence,
            stream_sequence = info.stream_sequence,
            "deliveries were lost on the way; rebuilding the pull stream to receive them in order"
        );
        telemetry::stream_errors(name, "delivery_gap");
        return false;
    }
    *next = info.consumer_sequence + 1;
    true
}

/// Waits for at least one item, then takes whatever else is ready, up to `max`. Returns `None`
/// when the stream has ended.
async fn next_batch(
    messages: &mut pull::Stream,
    max: usize,
) -> Option<Vec<Result<jetstream::Message, pull::MessagesError>>> {
    let first = messages.next().await?;
    let mut batch = vec![first];
    // Outside tokio's cooperative budget, which would otherwise report the stream empty after
    // 128 polls and cut every batch there, however much is waiting.
    tokio::task::unconstrained(async {
        while batch.len() < max {
            match messages.next().now_or_never() {
                Some(Some(item)) => batch.push(item),
                _ => break,
            }
        }
    })
    .await;
    Some(batch)
}

/// Whether the pull stream must be rebuilt after this error (it will not recover by itself).
fn is_terminal(err: &pull::MessagesError) -> bool {
    use pull::MessagesErrorKind::*;
    // A stream that missed heartbeats may be talking to a consumer that is gone: rebuilding
    // it checks, and re-creates the consumer if needed.
    matches!(
        err.kind(),
        ConsumerDeleted
            | PushBasedConsumer
            | RequestLimitExceeded
            | NoResponders
            | MissingHeartbeat
    )
}

fn error_kind_label(err: &pull::MessagesError) -> &'static str {
    use pull::MessagesErrorKind::*;
    match err.kind() {
        MissingHeartbeat => "missing_heartbeat",
        ConsumerDeleted => "consumer_deleted",
        Pull => "pull",
        PushBasedConsumer => "push_based",
        NoResponders => "no_responders",
        RequestLimitExceeded => "request_limit",
        _ => "other",
    }
}

/// Retries `attempt` with exponential backoff (100 ms doubling to 10 s) until it succeeds or
/// `shutdown` fires. Between attempts `keep_alive` runs, for example to send `Progress` acks.
/// Returns `None` on shutdown.
pub async fn retry_until_stopped<T, E, F, Fut, K, KFut>(
    consumer: &'static str,
    stage: &'static str,
    shutdown: &CancellationToken,
    mut attempt: F,
    mut keep_alive: K,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    K: FnMut() -> KFut,
    KFut: Future<Output = ()>,
{
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(consumer, stage, failures, "recovered after retries");
                }
                return Some(value);
            }
            Err(e) => {
                failures += 1;
                telemetry::retried(consumer, stage);
                // Log the first failure and then every tenth, not every retry.
                if failures == 1 || failures % 10 == 0 {
                    tracing::warn!(consumer, stage, failures, error = %e, "transient failure; retrying");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        keep_alive().await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Sends `Progress` for each held message so the server does not redeliver them while a
/// retry is under way.
pub async fn extend_ack_wait(messages: &[jetstream::Message]) {
    for msg in messages {
        let _ = msg.ack_with(AckKind::Progress).await;
    }
}

/// Acks each message; a lost ack only means a harmless redelivery.
pub async fn ack_all(consumer: &'static str, messages: &[jetstream::Message]) {
    let mut acked = 0;
    for msg in messages {
        match msg.ack().await {
            Ok(()) => acked += 1,
            Err(e) => {
                telemetry::retried(consumer, "ack");
                tracing::debug!(consumer, error = %e, "ack failed; the message will be redelivered");
            }
        }
    }
    telemetry::messages_processed(consumer, acked);
}

/// Maps one message's [`Outcome`] to its ack: Done acks; Retry NAKs with a delay that grows
/// with the delivery count, or dead-letters once `max_deliver` deliveries are used up; Poison
/// dead-letters.
pub async fn settle(
    msg: &jetstream::Message,
    outcome: Outcome,
    spec: &ConsumerSpec,
    dead_letters: &DeadLetters,
) {
    let consumer = dead_letters.consumer;
    let result = match outcome {
        Outcome::Done => {
            let acked = msg.ack().await;
            if acked.is_ok() {
                telemetry::messages_processed(consumer, 1);
            }
            acked
        }
        Outcome::Retry => {
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            if spec.max_deliver > 0 && delivered >= spec.max_deliver {
                let rejection = Rejection {
                    kind: "max_deliver",
                    reason: format!("still failing after {delivered} deliveries"),
                };
                dead_letters.reject(msg, &rejection).await;
                return;
            }
            telemetry::message_failed(consumer, Failure::Retried);
            msg.ack_with(AckKind::Nak(Some(spec.nak_delay(delivered))))
                .await
        }
        Outcome::Poison(rejection) => {
            dead_letters.reject(msg, &rejection).await;
            return;
        }
    };
    if let Err(e) = result {
        tracing::debug!(consumer, error = %e, "ack failed; the message will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::redrive_is_for;

    #[test]
    fn a_redrive_is_for_its_consumer_or_any_partition_of_evaluate() {
        assert!(redrive_is_for("archive", "archive"));
        assert!(!redrive_is_for("archive", "evaluate-3"));
        assert!(redrive_is_for("evaluate-3", "evaluate-3"));
        assert!(!redrive_is_for("evaluate-3", "evaluate-4"));
        assert!(redrive_is_for("evaluate", "evaluate-4"));
        assert!(!redrive_is_for("evaluate", "archive"));
    }
}
