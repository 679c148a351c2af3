//! The pipeline's health as the dashboard shows it: how fast samples arrive, how far each
//! durable consumer is behind, and how quickly incidents are detected.

use std::time::Instant;

use async_nats::jetstream;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::PgPool;
use store::overview::DetectionLatency;

use super::WatchedConsumer;

/// How far back detection latency is summed up.
pub const LATENCY_WINDOW: TimeDelta = TimeDelta::minutes(15);

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Pipeline {
    /// When this was measured.
    pub at: DateTime<Utc>,
    /// Samples stored in METRICS per second since the previous measurement; `null` until there
    /// are two, or when the stream cannot be read.
    pub ingest_per_second: Option<f64>,
    /// Each durable consumer's backlog, the partitions of `evaluate` summed; a consumer that
    /// cannot be read now is left out.
    pub consumers: Vec<ConsumerLag>,
    /// `null` when Postgres cannot be read now.
    pub detection_latency: Option<DetectionLatency>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConsumerLag {
    pub name: String,
    pub stream: String,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Messages delivered but not yet acknowledged.
    pub ack_pending: u64,
}

/// Measures the pipeline, remembering the last METRICS sequence to tell a rate.
pub struct Meter {
    js: jetstream::Context,
    pool: PgPool,
    consumers: Vec<WatchedConsumer>,
    last: Option<(u64, Instant)>,
}

impl Meter {
    pub fn new(js: jetstream::Context, pool: PgPool, consumers: Vec<WatchedConsumer>) -> Meter {
        Meter {
            js,
            pool,
            consumers,
            last: None,
        }
    }

    pub async fn measure(&mut self) -> Pipeline {
        let ingest_per_second = match self.metrics_sequence().await {
            Some(sequence) => {
                let now = Instant::now();
                let rate = self.last.and_then(|(before, then)| {
                    let seconds = now.duration_since(then).as_secs_f64();
                    (seconds > 0.0).then(|| sequence.saturating_sub(before) as f64 / seconds)
                });
                self.last = Some((sequence, now));
                rate
            }
            None => None,
        };
        let mut consumers: Vec<ConsumerLag> = Vec::with_capacity(self.consumers.len());
        for watched in &self.consumers {
            let Some(mut lag) = self.lag(watched).await else {
                continue;
            };
            // The partitions' consumers, `evaluate-<n>`, are shown as one `evaluate`.
            if schemas::subject::evaluate_partition(&lag.name).is_some() {
                lag.name = schemas::subject::EVALUATE.to_owned();
                if let Some(sum) = consumers.iter_mut().find(|c| c.name == lag.name) {
                    sum.pending += lag.pending;
                    sum.ack_pending += lag.ack_pending;
                    continue;
                }
            }
            consumers.push(lag);
        }
        let detection_latency =
            match store::overview::detection_latency(&self.pool, LATENCY_WINDOW).await {
                Ok(latency) => Some(latency),
                Err(e) => {
                    tracing::debug!(error = %e, "could not read detection latency");
                    None
                }
            };
        Pipeline {
            at: Utc::now(),
            ingest_per_second,
            consumers,
            detection_latency,
        }
    }

    async fn metrics_sequence(&self) -> Option<u64> {
        let stream = self
            .js
            .get_stream(schemas::subject::METRICS_STREAM)
            .await
            .ok()?;
        Some(stream.cached_info().state.last_sequence)
    }

    async fn lag(&self, watched: &WatchedConsumer) -> Option<ConsumerLag> {
        let stream = self.js.get_stream(&watched.stream).await.ok()?;
        let info = stream.consumer_info(&watched.name).await.ok()?;
        Some(ConsumerLag {
            name: watched.name.clone(),
            stream: watched.stream.clone(),
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
        })
    }
}
