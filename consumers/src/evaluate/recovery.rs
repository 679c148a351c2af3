//! Rebuilding the evaluator's state at start-up, without waiting for anyone.
//!
//! Postgres holds every transition `record` has applied; the INCIDENTS stream after `record`'s
//! ack floor holds the ones it may not have applied yet. Merging the two gives every episode the
//! evaluator had open when it stopped. Merging is by incident id: the snapshot with the highest
//! sample sequence wins, and a resolution (in either place) is final.
//!
//! Samples after the evaluator's own ack floor are read again after a restart. For each
//! (rule, series) touched since then, the highest sample sequence already applied becomes a
//! watermark, so re-reading an episode that has since resolved cannot open a phantom one.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use schemas::{IncidentSnapshot, IncidentTransition, Source, TransitionKind};
use sqlx::PgPool;
use uuid::Uuid;

use crate::topology::INCIDENTS;

const RECORD: &str = "record";

/// What the engine needs to continue where the previous process stopped.
#[derive(Debug, Default)]
pub struct Restored {
    pub open: Vec<IncidentSnapshot>,
    /// (rule id, series key) → highest sample sequence already applied.
    pub watermarks: HashMap<(Uuid, String), u64>,
    /// (rule id, series key) → event time of the last resolution.
    pub resolutions: HashMap<(Uuid, String), DateTime<Utc>>,
}

/// Reads the state as of the last transition published. `evaluate_floor` is the evaluator's
/// ack floor: samples after it will be read again.
pub async fn restore(
    js: &jetstream::Context,
    pool: &PgPool,
    evaluate_floor: u64,
) -> anyhow::Result<Restored> {
    // Read record's floor before querying Postgres: every transition at or below it was
    // committed before the query, every one above it is in the tail.
    let mut incidents = js
        .get_stream(INCIDENTS)
        .await
        .context("looking up INCIDENTS")?;
    let last = incidents
        .info()
        .await
        .context("reading INCIDENTS")?
        .state
        .last_sequence;
    let record_floor = match incidents.consumer_info(RECORD).await {
        Ok(info) => info.ack_floor.stream_sequence,
        Err(_) => 0,
    };

    let mut open: HashMap<Uuid, IncidentSnapshot> = store::incidents::unresolved_live(pool)
        .await
        .context("loading unresolved incidents")?
        .iter()
        .map(|r| (r.id, r.to_snapshot()))
        .collect();
    let mut watermarks: HashMap<(Uuid, String), u64> = HashMap::new();
    for (rule_id, series_key, seq) in store::incidents::live_watermarks_after(pool, evaluate_floor)
        .await
        .context("loading sequence watermarks")?
    {
        raise(&mut watermarks, rule_id, series_key, seq.max(0) as u64);
    }

    let mut resolutions: HashMap<(Uuid, String), DateTime<Utc>> =
        store::incidents::live_last_resolutions(pool)
            .await
            .context("loading the last resolution of each series")?
            .into_iter()
            .map(|(rule_id, series_key, at)| ((rule_id, series_key), at))
            .collect();

    let tail = read_tail(&incidents, record_floor, last).await?;
    let mut resolved: HashSet<Uuid> = tail
        .iter()
        .filter(|t| t.kind == TransitionKind::Resolved || t.incident.resolved_at.is_some())
        .map(|t| t.incident.id)
        .collect();
    let ids: Vec<Uuid> = tail.iter().map(|t| t.incident.id).collect();
    resolved.extend(
        store::incidents::resolved_among(pool, &ids)
            .await
            .context("checking which incidents are resolved")?,
    );
    for t in tail {
        let i = t.incident;
        if i.source != Source::Live {
            continue;
        }
        raise(
            &mut watermarks,
            i.rule_id,
            i.series_key.clone(),
            i.last_sample_seq,
        );
        if let Some(at) = i.resolved_at {
            let last = resolutions
                .entry((i.rule_id, i.series_key.clone()))
                .or_insert(at);
            *last = (*last).max(at);
        }
        if open
            .get(&i.id)
            .is_none_or(|known| known.last_sample_seq <= i.last_sample_seq)
        {
            open.insert(i.id, i);
        }
    }
    open.retain(|id, _| !resolved.contains(id));
    Ok(Restored {
        open: open.into_values().collect(),
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
