//! The consumers' metrics, one function per event, so call sites never spell metric names.
//! Labels come from small fixed sets: consumer names from the topology, outcomes and kinds
//! from the constants passed here.

use metrics::{counter, gauge, histogram};

/// Samples that went through the engine, counted per batch.
pub fn samples_evaluated(count: usize) {
    counter!("tracely_samples_evaluated_total").increment(count as u64);
}

/// Samples dropped because they arrived too late to count, counted per batch.
pub fn late_samples(count: u64) {
    if count > 0 {
        counter!("tracely_late_samples_total").increment(count);
    }
}

pub fn transitions_published(kind: &'static str, count: u64) {
    counter!("tracely_transitions_published_total", "kind" => kind).increment(count);
}

pub fn transitions_recorded(count: usize) {
    counter!("tracely_transitions_recorded_total").increment(count as u64);
}

/// Samples the archive stored for the first time (redeliveries excluded), counted per batch.
pub fn samples_archived(count: u64) {
    counter!("tracely_samples_archived_total").increment(count);
}

/// Archived samples deleted after the retention period.
pub fn samples_pruned(count: u64) {
    if count > 0 {
        counter!("tracely_samples_pruned_total").increment(count);
    }
}

pub fn dead_lettered(consumer: &'static str, kind: &'static str) {
    counter!("tracely_deadletter_total", "consumer" => consumer, "kind" => kind).increment(1);
}

/// A transient failure that will be retried.
pub fn retried(consumer: &'static str, stage: &'static str) {
    counter!("tracely_consumer_retries_total", "consumer" => consumer, "stage" => stage)
        .increment(1);
}

pub fn stream_errors(consumer: &'static str, kind: &'static str) {
    counter!("tracely_consumer_stream_errors_total", "consumer" => consumer, "kind" => kind)
        .increment(1);
}

/// How long the consumer took to handle one pulled batch, from receipt to the last ack.
pub fn batch_duration(consumer: &'static str, seconds: f64) {
    histogram!("tracely_consumer_batch_duration_seconds", "consumer" => consumer).record(seconds);
}

/// Outbox messages stored in JetStream, counted per round.
pub fn outbox_published(count: usize) {
    if count > 0 {
        counter!("tracely_outbox_published_total").increment(count as u64);
    }
}

/// Outbox messages not yet published, as last counted.
pub fn outbox_pending(count: i64) {
    gauge!("tracely_outbox_pending").set(count as f64);
}

/// Messages acked because their effect is durable (or was already).
pub fn messages_processed(consumer: &'static str, count: usize) {
    if count > 0 {
        counter!("tracely_consumer_messages_processed_total", "consumer" => consumer)
            .increment(count as u64);
    }
}

/// How a message failed: handed back for a later retry (NAK), or dead-lettered and terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Retried,
    DeadLettered,
}

pub fn message_failed(consumer: &'static str, failure: Failure) {
    let outcome = match failure {
        Failure::Retried => "retried",
        Failure::DeadLettered => "dead_lettered",
    };
    counter!("tracely_consumer_messages_failed_total", "consumer" => consumer, "outcome" => outcome)
        .increment(1);
}

/// Messages delivered more than once (a lost ack, a NAK, an expired ack wait, a crash).
pub fn messages_redelivered(consumer: &'static str, count: usize) {
    if count > 0 {
        counter!("tracely_consumer_messages_redelivered_total", "consumer" => consumer)
            .increment(count as u64);
    }
}

/// A durable consumer's backlog: messages not yet delivered, and delivered but not yet acked.
pub fn consumer_lag(consumer: &str, pending: u64, ack_pending: usize) {
    let consumer = consumer.to_owned();
    gauge!("tracely_consumer_pending_messages", "consumer" => consumer.clone()).set(pending as f64);
    gauge!("tracely_consumer_ack_pending_messages", "consumer" => consumer).set(ack_pending as f64);
}

/// How many partitions of METRICS this process evaluates.
pub fn partitions_owned(count: usize) {
    gauge!("tracely_evaluate_partitions_owned").set(count as f64);
}

/// The Postgres pool: connections open, of those idle, and the most it may open.
pub fn db_pool(size: u32, idle: usize, max: u32) {
    gauge!("tracely_db_pool_connections").set(f64::from(size));
    gauge!("tracely_db_pool_idle_connections").set(idle as f64);
    gauge!("tracely_db_pool_max_connections").set(f64::from(max));
}

/// From the event time of the sample that opened a live incident to the incident's row being
/// committed.
pub fn detection_latency(seconds: f64) {
    histogram!("tracely_detection_latency_seconds").record(seconds.max(0.0));
}

/// A notification reached an end: `delivered`, `failed`, `suppressed` or `cancelled`, per
/// channel type.
pub fn notification(channel_type: &'static str, outcome: &'static str) {
    counter!("tracely_notifications_total", "channel_type" => channel_type, "outcome" => outcome)
        .increment(1);
}

/// One attempt to send a webhook or Slack message, by outcome (`ok`, `http_error`, `timeout`,
/// `network`, `refused`), with its duration.
pub fn delivery_attempt(channel_type: &'static str, outcome: &'static str, seconds: f64) {
    counter!("tracely_delivery_attempts_total", "channel_type" => channel_type, "outcome" => outcome)
        .increment(1);
    histogram!("tracely_delivery_attempt_duration_seconds", "channel_type" => channel_type)
        .record(seconds);
}

/// An incident event whose incident belongs to no department, so nobody was notified.
pub fn unrouted() {
    counter!("tracely_notifications_unrouted_total").increment(1);
}

/// Incidents whose current state was written to the search index, counted per batch.
pub fn documents_indexed(count: usize) {
    counter!("tracely_documents_indexed_total").increment(count as u64);
}
