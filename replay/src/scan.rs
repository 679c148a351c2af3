//! Reading a planned range of METRICS, in stream order, with an ordered consumer of our own.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use schemas::{MessageError, MetricSample};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::plan::{Plan, Start};

/// How long the server may go without delivering before the read counts as stalled.
const STALL: Duration = Duration::from_secs(30);

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Everything up to the planned end was read.
    Complete,
    /// The receiver stopped reading (a backtest at its budget, for example).
    Stopped,
    Cancelled,
}

/// Where a message sits in METRICS: its sequence, and when it was stored (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub stored_ms: i64,
}

/// Messages handed over at once.
const BATCH: usize = 512;

/// One message read: where it sits, and its sample or why it is not one.
pub type Scanned = (Position, Result<MetricSample, MessageError>);

/// Sends the position and sample (or why it is not one) of every message on `filters`, in
/// stream order and in batches, until the plan's end. Reading and decoding run here while the
/// receiver evaluates, so the two overlap; a receiver that goes away stops the scan.
///
/// Filters are in the published form (`metrics.<service>.<metric>`, wildcards allowed); they
/// match the stored form with its partition too. One filter is applied by the server. Several
/// are matched here instead, on an unfiltered read: a consumer with several filters makes the
/// server search every filter for each next message, which on a stream of many subjects is
/// orders of magnitude slower than reading all. So is one filter on a stream still holding
/// samples stored before it was partitioned.
pub async fn scan(
    js: &jetstream::Context,
    stream_name: &str,
    plan: &Plan,
    filters: &[String],
    cancel: &CancellationToken,
    out: mpsc::Sender<Vec<Scanned>>,
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
    let unpartitioned = stream
        .get_last_raw_message_by_subject(&format!("{}.*.*", schemas::subject::METRICS_PREFIX))
        .await
        .is_ok();
    let server_filter = match filters {
        [one] if !unpartitioned => Some(format!("{one}.*")),
        _ => None,
    };
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: server_filter.clone().unwrap_or_default(),
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
    let mut batch = Vec::with_capacity(BATCH);
    // One timer, pushed back at each batch handed over: a timer per message costs more than
    // reading it, and time spent waiting for the receiver is not a stall.
    let stall = tokio::time::sleep(STALL);
    tokio::pin!(stall);
    let ended = loop {
        let next = tokio::select! {
            biased;
            next = messages.next() => next,
            _ = cancel.cancelled() => break Ended::Cancelled,
            _ = &mut stall => {
                anyhow::bail!("METRICS delivered nothing for {STALL:?}; is nats-server up?")
            }
        };
        let msg = match next {
            None => break Ended::Complete,
            Some(msg) => msg.context("reading METRICS for the replay")?,
        };
        let info = msg
            .info()
            .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let stored_ms =
            i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        if seq > plan.end_seq {
            break Ended::Complete;
        }
        let at_end = seq >= plan.end_seq || pending == 0;
        // A re-driven copy is for one live consumer; its original is in the stream too.
        let redriven = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get(schemas::headers::REDRIVE_FOR).is_some());
        if redriven
            || (server_filter.is_none()
                && !filters.iter().any(|f| subject_matches(f, &msg.subject)))
        {
            if at_end {
                break Ended::Complete;
            }
            continue;
        }
        let content_type = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(schemas::headers::CONTENT_TYPE))
            .map(|v| v.as_str());
        let sample = MetricSample::from_message(msg.subject.as_str(), content_type, &msg.payload);
        batch.push((Position { seq, stored_ms }, sample));
        if batch.len() >= BATCH {
            if out.send(std::mem::take(&mut batch)).await.is_err() {
                return Ok(Ended::Stopped);
            }
            stall.as_mut().reset(tokio::time::Instant::now() + STALL);
        }
        if at_end {
            break Ended::Complete;
        }
    };
    if !batch.is_empty() && out.send(batch).await.is_err() {
        return Ok(Ended::Stopped);
    }
    Ok(ended)
}

/// Whether `subject`, published or stored, matches `filter`, whose `*` tokens match any one
/// token.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let published = match schemas::subject::parse_stored_metrics_subject(subject) {
        Ok((_, _, Some(_))) => subject.rsplit_once('.').map_or(subject, |(s, _)| s),
        _ => subject,
    };
    let mut tokens = published.split('.');
    filter
        .split('.')
        .all(|f| tokens.next().is_some_and(|t| f == "*" || f == t))
        && tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn wildcards_match_one_token() {
        assert!(subject_matches(
            "metrics.*.LATENCY_MS",
            "metrics.S1.LATENCY_MS"
        ));
        assert!(subject_matches(
            "metrics.S1.LATENCY_MS",
            "metrics.S1.LATENCY_MS"
        ));
        assert!(!subject_matches(
            "metrics.*.LATENCY_MS",
            "metrics.S1.ERRORS"
        ));
        assert!(!subject_matches(
            "metrics.*.LATENCY_MS",
            "metrics.S1.LATENCY_MS.x"
        ));
        assert!(!subject_matches(
            "metrics.*.LATENCY_MS",
            "metrics.LATENCY_MS"
        ));
        assert!(subject_matches(
            "metrics.*.LATENCY_MS",
            "metrics.S1.LATENCY_MS.5"
        ));
        assert!(!subject_matches(
            "metrics.S2.LATENCY_MS",
            "metrics.S1.LATENCY_MS.5"
        ));
    }
}
