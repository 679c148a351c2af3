//! Rebuilding the evaluator's state at start-up, without waiting for anyone.
//!
//! Postgres holds every transition `record` has applied; the INCIDENTS stream after `record`'s
//! ack floor holds the ones it may not have applied yet. Merging the two gives every recent
//! incident as the evaluator last published it: the truth of when each (rule, series) was
//! firing, which the engine follows while it re-reads METRICS to rebuild its windows ([`reread`]).
//! Merging is by incident id: the snapshot with the highest sample sequence wins, and a
//! resolution (in either place) is final.
//!
//! Samples after the evaluator's own ack floor are read again after a restart. For each
//! (rule, series) touched since then, the highest sample sequence already applied becomes a
//! watermark, so re-reading an episode that has since resolved cannot open a phantom one.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use schemas::{IncidentSnapshot, IncidentTransition, Source, TransitionKind};
use sqlx::PgPool;
use uuid::Uuid;

use crate::topology::{INCIDENTS, METRICS};

const RECORD: &str = "record";

/// What the engine needs to continue where the previous process stopped.
#[derive(Debug, Default)]
pub struct Restored {
    /// Unresolved incidents, and those resolved since the re-read starts.
    pub incidents: Vec<IncidentSnapshot>,
    /// (rule id, series key) → highest sample sequence already applied.
    pub watermarks: HashMap<(Uuid, String), u64>,
    /// (rule id, series key) → event time of the last resolution.
    pub resolutions: HashMap<(Uuid, String), DateTime<Utc>>,
}

/// Reads the state as of the last transition published, for the series `owns` accepts (by
/// series key). `evaluate_floor` is the evaluator's ack floor: samples after it will be read
/// again. `since` is the event time the re-read of METRICS starts at: incidents resolved before
/// it no longer matter.
pub async fn restore(
    js: &jetstream::Context,
    pool: &PgPool,
    evaluate_floor: u64,
    since: DateTime<Utc>,
    owns: &(dyn Fn(&str) -> bool + Sync),
) -> anyhow::Result<Restored> {
    // Read record's floor before querying Postgres: every transition at or below it was
    // committed before the query, every one above it is in the tail.
    let mut stream = js
        .get_stream(INCIDENTS)
        .await
        .context("looking up INCIDENTS")?;
    let last = stream
        .info()
        .await
        .context("reading INCIDENTS")?
        .state
        .last_sequence;
    let record_floor = match stream.consumer_info(RECORD).await {
        Ok(info) => info.ack_floor.stream_sequence,
        Err(_) => 0,
    };

    let mut incidents: HashMap<Uuid, IncidentSnapshot> = store::incidents::live_recent(pool, since)
        .await
        .context("loading recent incidents")?
        .iter()
        .filter(|r| owns(&r.series_key))
        .map(|r| (r.id, r.to_snapshot()))
        .collect();
    let mut watermarks: HashMap<(Uuid, String), u64> = HashMap::new();
    for (rule_id, series_key, seq) in store::incidents::live_watermarks_after(pool, evaluate_floor)
        .await
        .context("loading sequence watermarks")?
    {
        if owns(&series_key) {
            raise(&mut watermarks, rule_id, series_key, seq.max(0) as u64);
        }
    }
    let mut resolutions: HashMap<(Uuid, String), DateTime<Utc>> =
        store::incidents::live_last_resolutions(pool)
            .await
            .context("loading the last resolution of each series")?
            .into_iter()
            .filter(|(_, series_key, _)| owns(series_key))
            .map(|(rule_id, series_key, at)| ((rule_id, series_key), at))
            .collect();

    let mut tail = read_tail(&stream, record_floor, last).await?;
    tail.retain(|t| owns(&t.incident.series_key));
    let ids: Vec<Uuid> = tail.iter().map(|t| t.incident.id).collect();
    let resolved_in_db: HashMap<Uuid, DateTime<Utc>> = store::incidents::resolved_among(pool, &ids)
        .await
        .context("checking which incidents are resolved")?
        .into_iter()
        .collect();
    for t in tail {
        let mut i = t.incident;
        if i.source != Source::Live {
            continue;
        }
        raise(
            &mut watermarks,
            i.rule_id,
            i.series_key.clone(),
            i.last_sample_seq,
        );
        if t.kind == TransitionKind::Resolved && i.resolved_at.is_none() {
            i.resolved_at = Some(t.at);
        }
        i.resolved_at = i.resolved_at.or(resolved_in_db.get(&i.id).copied());
        if let Some(at) = i.resolved_at {
            let last = resolutions
                .entry((i.rule_id, i.series_key.clone()))
                .or_insert(at);
            *last = (*last).max(at);
        }
        match incidents.get_mut(&i.id) {
            Some(known) if known.last_sample_seq > i.last_sample_seq => {
                known.resolved_at = known.resolved_at.or(i.resolved_at);
            }
            Some(known) => {
                i.resolved_at = i.resolved_at.or(known.resolved_at);
                *known = i;
            }
            None => {
                incidents.insert(i.id, i);
            }
        }
    }
    Ok(Restored {
        incidents: incidents.into_values().collect(),
        watermarks,
        resolutions,
    })
}

fn raise(marks: &mut HashMap<(Uuid, String), u64>, rule_id: Uuid, series_key: String, seq: u64) {
    let mark = marks.entry((rule_id, series_key)).or_insert(0);
    *mark = (*mark).max(seq);
}

/// Transitions on INCIDENTS in `(floor, last]`, in stream order.
async fn read_tail(
    stream: &jetstream::stream::Stream,
    floor: u64,
    last: u64,
) -> anyhow::Result<Vec<IncidentTransition>> {
    if floor >= last {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            },
            ..Default::default()
        })
        .await
        .context("reading the unrecorded INCIDENTS tail")?;
    let mut messages = consumer.messages().await?;
    let mut tail = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("timed out reading the INCIDENTS tail")?;
        let Some(msg) = next else { break };
        let msg = msg.context("reading the INCIDENTS tail")?;
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(last);
        // Messages record cannot decode are dead-lettered by record; skip them here.
        if let Ok(t) = IncidentTransition::from_msgpack(&msg.payload) {
            tail.push(t);
        }
        if seq >= last {
            break;
        }
    }
    tracing::info!(
        from = floor + 1,
        to = last,
        transitions = tail.len(),
        "read the unrecorded INCIDENTS tail"
    );
    Ok(tail)
}

/// Where the re-read of METRICS after a restart starts.
#[derive(Debug, Clone, Copy)]
pub struct Reread {
    /// The evaluator's ack floor: the re-read ends there.
    pub floor: u64,
    /// Event time the windows need samples from.
    pub since: DateTime<Utc>,
}

/// Plans the re-read: from the event time of the sample at the ack floor (or its publish time,
/// if earlier), back by `lookback` and a minute's margin. `None` when nothing was applied yet.
pub async fn plan_reread(
    js: &jetstream::Context,
    floor: u64,
    lookback: schemas::Span,
) -> anyhow::Result<Option<Reread>> {
    if floor == 0 {
        return Ok(None);
    }
    let stream = js.get_stream(METRICS).await.context("looking up METRICS")?;
    let anchor = match stream.get_raw_message(floor).await {
        Ok(msg) => {
            let published =
                DateTime::<Utc>::from_timestamp(msg.time.unix_timestamp(), msg.time.nanosecond())
                    .unwrap_or_else(Utc::now);
            let content_type = msg
                .headers
                .get(schemas::headers::CONTENT_TYPE)
                .map(|v| v.as_str().to_owned());
            match super::handler::decode_parts(&msg.subject, content_type.as_deref(), &msg.payload)
            {
                Ok(sample) => sample.recorded_at.min(published),
                Err(_) => published,
            }
        }
        // Aged out of the stream: everything left is newer than the horizon anyway.
        Err(_) => Utc::now(),
    };
    let since = anchor - chrono::Duration::milliseconds(lookback.millis() + 60_000);
    Ok(Some(Reread { floor, since }))
}

/// Re-reads `partition` of METRICS from the plan's start up to its floor through the engine,
/// whose samples there are all guided: it rebuilds windows and emits nothing. Returns how many
/// samples it read.
pub async fn reread(
    js: &jetstream::Context,
    engine: &mut pipeline::Engine,
    plan: Reread,
    partition: u32,
) -> anyhow::Result<u64> {
    let mut stream = js.get_stream(METRICS).await.context("looking up METRICS")?;
    let first_stored = stream
        .info()
        .await
        .context("reading METRICS")?
        .state
        .first_timestamp;
    let start_time = time::OffsetDateTime::from_unix_timestamp(plan.since.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Starting after the oldest sample in the stream, windows reaching before the start of the
    // re-read are not full.
    let partial_before = (start_time > first_stored).then_some(plan.since);
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            filter_subject: schemas::subject::metrics_partition_filter(partition),
            ..Default::default()
        })
        .await
        .context("re-reading METRICS")?;
    // The floor need not be in this partition: stop after what was there when the read began.
    let mut left = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    let mut read = 0u64;
    let mut discarded = Vec::new();
    let mut prepared = false;
    while left > 0 {
        left -= 1;
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("timed out re-reading METRICS")?;
        let Some(msg) = next else { break };
        let msg = msg.context("re-reading METRICS")?;
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(u64::MAX);
        if seq > plan.floor {
            break;
        }
        if !prepared {
            engine.prepare_rebuild(plan.floor, partial_before);
            prepared = true;
        }
        if let Ok(sample) = super::handler::decode(&msg) {
            engine.evaluate(&sample, seq, &mut discarded);
            read += 1;
        }
        if seq == plan.floor {
            break;
        }
    }
    if !discarded.is_empty() {
        tracing::warn!(
            transitions = discarded.len(),
            "the re-read produced transitions; they were dropped"
        );
    }
    Ok(read)
}
