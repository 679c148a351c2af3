//! Publishing validated samples to METRICS, waiting for every PubAck. Shared by
//! `POST /api/metrics` and `tracely publish`.

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use schemas::{headers, MetricSample};

/// What happened to a batch that was stored completely.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Samples stored by this call.
    pub stored: usize,
    /// Samples whose `id` the stream had already seen within its duplicate window.
    pub duplicates: usize,
}

/// A batch that was not stored completely: the first `published` samples are durable, the rest
/// may not be. Publishing the batch again within the stream's duplicate window (2 minutes by
/// default) stores each sample once.
#[derive(Debug, thiserror::Error)]
#[error("{published} of {total} samples were stored before publishing failed: {source}")]
pub struct PublishFailed {
    pub published: usize,
    pub total: usize,
    pub source: async_nats::Error,
}

/// Publishes each sample on its subject as MessagePack, with its `id` as `Nats-Msg-Id`, and
/// waits for all acknowledgements.
pub async fn publish_samples(
    js: &jetstream::Context,
    samples: &[MetricSample],
) -> Result<Published, PublishFailed> {
    let fail = |published, source| PublishFailed {
        published,
        total: samples.len(),
        source,
    };
    let mut result = Published::default();
    // The client holds back publishes while too many acks are outstanding, so acks are
    // awaited a window at a time.
    for (window, chunk) in samples.chunks(ACK_WINDOW).enumerate() {
        let done = window * ACK_WINDOW;
        let mut acks = Vec::with_capacity(chunk.len());
        for sample in chunk {
            let ack = js
                .send_publish(sample.subject(), message(sample))
                .await
                .map_err(|e| fail(done, e.into()))?;
            acks.push(ack);
        }
        for (i, ack) in acks.into_iter().enumerate() {
            let ack = ack.await.map_err(|e| fail(done + i, e.into()))?;
            if ack.duplicate {
                result.duplicates += 1;
            } else {
                result.stored += 1;
            }
        }
    }
    Ok(result)
}

/// Publishes awaiting their acks at once.
const ACK_WINDOW: usize = 1000;

fn message(sample: &MetricSample) -> PublishMessage {
    let mut headers = HeaderMap::new();
    headers.insert(headers::CONTENT_TYPE, headers::MSGPACK_CONTENT_TYPE);
    let publish = PublishMessage::build()
        .headers(headers)
        .payload(sample.to_msgpack().into());
    match &sample.id {
        Some(id) => publish.message_id(id),
        None => publish.message_id(derived_id(sample)),
    }
}

/// A deduplication id for a sample without one: the same series at the same millisecond.
fn derived_id(sample: &MetricSample) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3b1e_72a4_5c60_4d2e_8f0b_96d4_1a7c_e5b2);
    let name = format!(
        "{}|{}",
        sample.series_key(),
        sample.recorded_at.timestamp_millis()
    );
    format!("auto-{}", uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()))
}
