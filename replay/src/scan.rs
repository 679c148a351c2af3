//! Reading a planned range of METRICS, in stream order, with an ordered consumer of our own.

use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use schemas::{MessageError, MetricSample};
use tokio_util::sync::CancellationToken;

use crate::plan::{Plan, Start};

/// How long the server may go without delivering before the read counts as stalled.
const STALL: Duration = Duration::from_secs(30);

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Everything up to the planned end was read.
    Complete,
    /// The callback asked to stop.
    Stopped,
    Cancelled,
}

/// Calls `each` with every message's stream sequence and sample (or why it is not one), in
/// stream order, until the plan's end.
pub async fn scan(
    js: &jetstream::Context,
    stream_name: &str,
    plan: &Plan,
    filters: &[String],
    cancel: &CancellationToken,
    mut each: impl FnMut(u64, Result<MetricSample, MessageError>) -> ControlFlow<()>,
) -> anyhow::Result<Ended> {
    if plan.empty || filters.is_empty() {
        return Ok(Ended::Complete);
    }
    let deliver_policy = match plan.start {
        Start::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        Start::Stored(t) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                t.timestamp_nanos_opt().unwrap_or(0),
            ))
            .context("start time out of range")?,
        },
    };
    let stream = js
        .get_stream(stream_name)
        .await
        .context("looking up METRICS")?;
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: filters.to_vec(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("creating the replay's consumer on METRICS")?;
    let info = consumer
        .info()
        .await
        .context("reading the replay's consumer")?;
    if info.num_pending == 0 {
        return Ok(Ended::Complete);
    }
    let mut messages = consumer
        .messages()
        .await
        .context("reading METRICS for the replay")?;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Ok(Ended::Cancelled),
            next = tokio::time::timeout(STALL, messages.next()) => next,
        };
        let msg = match next {
            Err(_) => anyhow::bail!("METRICS delivered nothing for {STALL:?}; is nats-server up?"),
            Ok(None) => return Ok(Ended::Complete),
            Ok(Some(msg)) => msg.context("reading METRICS for the replay")?,
        };
        let info = msg
            .info()
            .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > plan.end_seq {
            return Ok(Ended::Complete);
        }
        let content_type = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(schemas::headers::CONTENT_TYPE))
            .map(|v| v.as_str());
        let sample = MetricSample::from_message(msg.subject.as_str(), content_type, &msg.payload);
        if each(seq, sample).is_break() {
            return Ok(Ended::Stopped);
        }
        if seq >= plan.end_seq || pending == 0 {
            return Ok(Ended::Complete);
        }
    }
}
