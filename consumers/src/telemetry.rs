//! The consumers' metrics, one function per event, so call sites never spell metric names.
//! Labels come from small fixed sets.

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
