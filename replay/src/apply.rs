//! Writing a replay's incidents: published to INCIDENTS like live transitions, with the same
//! deterministic ids and message ids, and written to Postgres by `record`.
//!
//! Before publishing, the incidents are compared with those already stored for the same rules:
//! - one stored under the same id in the same state is left alone, so re-running a backfill
//!   changes nothing;
//! - one stored under the same id in another state is published again; `record` merges it, and
//!   merging only moves counts, peaks and times forward;
//! - one still firing at the end of the stream, of a rule enabled live, is left to the live
//!   evaluator, which would otherwise open an incident of its own for the same episode;
//! - one that overlaps in time an incident stored under another id for the same rule and
//!   series is skipped: that episode is already known (the live pipeline saw it start later, or
//!   an earlier backfill began at another point), and a second incident would duplicate it.
//!
//! Backfilled transitions carry message ids of their own (see
//! [`IncidentTransition::message_id`]), so they never make the stream drop a live one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use schemas::IncidentTransition;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::run::WouldBe;

/// The consumer that writes incidents to Postgres.
pub const RECORD: &str = "record";
/// How long `record` may make no progress before the wait gives up.
const RECORD_STALL: Duration = Duration::from_secs(60);
/// Publishes in flight at once.
const PUBLISH_WINDOW: usize = 256;

/// What applying did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Incidents published to be written or brought up to date.
    pub written: u64,
    /// Incidents already stored in the same state.
    pub unchanged: u64,
    /// Incidents skipped because another stored incident covers the same episode.
    pub overlapping: u64,
    /// Incidents of rules enabled live that were still firing at the end of the stream, left
    /// to the live evaluator.
    pub left_to_live: u64,
    /// Transitions published.
    pub transitions: u64,
}

/// How far `record` has got with what was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recording {
    pub recorded_through: u64,
    pub published_through: u64,
}

/// Sorts the incidents into what to publish, and publishes it. `live_rules` are the rules
/// enabled live; `notify` marks the transitions for `notify`, which skips backfills otherwise.
/// Returns what was done, the last INCIDENTS sequence published, and the incidents published.
pub async fn publish(
    js: &jetstream::Context,
    pool: &PgPool,
    incidents: &[WouldBe],
    live_rules: &HashSet<Uuid>,
    notify: bool,
) -> anyhow::Result<(Applied, u64, Vec<Uuid>)> {
    let mut applied = Applied::default();
    let stored = stored_episodes(pool, incidents).await?;
    let mut headers = HeaderMap::new();
    if notify {
        headers.insert(schemas::headers::NOTIFY_BACKFILL, "true");
    }
    let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(PUBLISH_WINDOW);
    let mut last_seq = 0;
    let mut published = Vec::new();
    let ours: HashSet<Uuid> = incidents.iter().map(|w| w.latest.id).collect();
    for w in incidents {
        match verdict(w, &stored, &ours, live_rules) {
            Verdict::Unchanged => {
                applied.unchanged += 1;
                continue;
            }
            Verdict::Overlapping(other) => {
                tracing::debug!(incident = %w.latest.id, %other, "skipping an episode already stored");
                applied.overlapping += 1;
                continue;
            }
            Verdict::LeftToLive => {
                applied.left_to_live += 1;
                continue;
            }
            Verdict::Write => {
                applied.written += 1;
                published.push(w.latest.id);
            }
        }
        for t in w.transitions() {
            acks.push(send(js, &t, &headers).await?);
            applied.transitions += 1;
            if acks.len() >= PUBLISH_WINDOW {
                last_seq = last_seq.max(settle(&mut acks).await?);
            }
        }
    }
    last_seq = last_seq.max(settle(&mut acks).await?);
    Ok((applied, last_seq, published))
}

/// Checks that every published incident is in Postgres: `record` acks what it dead-letters too.
pub async fn confirm_written(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<()> {
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM incidents WHERE id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
        .context("checking the written incidents")?;
    let missing = ids.len() as i64 - written;
    anyhow::ensure!(
        missing == 0,
        "{missing} of {} published incidents were not written; `record` dead-lettered them \
         (see the DEADLETTER stream)",
        ids.len()
    );
    Ok(())
}

/// Waits until `record` has written everything up to `through`, reporting as it goes.
pub async fn wait_for_record(
    js: &jetstream::Context,
    through: u64,
    cancel: &CancellationToken,
    mut report: impl FnMut(Recording),
) -> anyhow::Result<()> {
    if through == 0 {
        return Ok(());
    }
    let mut last = (0, Instant::now());
    loop {
        let stream = js
            .get_stream(schemas::subject::INCIDENTS_STREAM)
            .await
            .context("looking up INCIDENTS")?;
        let floor = match stream.consumer_info(RECORD).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(e) => anyhow::bail!(
                "the incidents are published, but there is no `record` consumer to write them \
                 ({e}); run `tracely run` (role record) and they will be written"
            ),
        };
        report(Recording {
            recorded_through: floor.min(through),
            published_through: through,
        });
        if floor >= through {
            return Ok(());
        }
        if floor > last.0 {
            last = (floor, Instant::now());
        } else if last.1.elapsed() >= RECORD_STALL {
            anyhow::bail!(
                "the incidents are published, but `record` has written nothing for {}s \
                 (it is at INCIDENTS sequence {floor} of {through}); they will be written when \
                 it catches up",
                RECORD_STALL.as_secs()
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => anyhow::bail!("stopped while waiting for `record`"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn send(
    js: &jetstream::Context,
    t: &IncidentTransition,
    headers: &HeaderMap,
) -> anyhow::Result<PublishAckFuture> {
    let message = PublishMessage::build()
        .payload(t.to_msgpack().into())
        .message_id(t.message_id())
        .headers(headers.clone());
    js.send_publish(t.subject(), message)
        .await
        .context("publishing a backfilled transition")
}

/// Waits for every ack in flight; returns the highest stream sequence.
async fn settle(acks: &mut Vec<PublishAckFuture>) -> anyhow::Result<u64> {
    let mut last = 0;
    for ack in acks.drain(..) {
        let ack = ack
            .await
            .context("INCIDENTS did not confirm a backfilled transition")?;
        last = last.max(ack.sequence);
    }
    Ok(last)
}

type Stored = HashMap<(Uuid, String), Vec<store::incidents::Episode>>;

async fn stored_episodes(pool: &PgPool, incidents: &[WouldBe]) -> anyhow::Result<Stored> {
    if incidents.is_empty() {
        return Ok(Stored::new());
    }
    let mut rule_ids: Vec<Uuid> = incidents.iter().map(|w| w.latest.rule_id).collect();
    rule_ids.sort_unstable();
    rule_ids.dedup();
    let from = incidents.iter().map(|w| w.latest.opened_at).min();
    let to = incidents
        .iter()
        .map(|w| w.latest.resolved_at)
        .try_fold(DateTime::<Utc>::MIN_UTC, |acc, r| r.map(|r| acc.max(r)));
    let episodes = store::incidents::episodes_between(pool, &rule_ids, from, to)
        .await
        .context("reading the incidents already stored for these rules")?;
    let mut stored = Stored::new();
    for e in episodes {
        stored
            .entry((e.rule_id, e.series_key.clone()))
            .or_default()
            .push(e);
    }
    Ok(stored)
}

enum Verdict {
    Write,
    Unchanged,
    Overlapping(Uuid),
    LeftToLive,
}

/// `ours` are the ids this replay found: a stored copy of one of them (say, left open by an
/// interrupted backfill) is brought up to date by this replay, so it overlaps nothing.
fn verdict(
    w: &WouldBe,
    stored: &Stored,
    ours: &HashSet<Uuid>,
    live_rules: &HashSet<Uuid>,
) -> Verdict {
    let i = &w.latest;
    let episodes = stored
        .get(&(i.rule_id, i.series_key.clone()))
        .map_or(&[][..], Vec::as_slice);
    if let Some(same) = episodes.iter().find(|e| e.id == i.id) {
        // A row that has seen this incident's last sample, or a later one, knows at least as
        // much: a live row still firing past our resolution stays open.
        return if same.last_sample_seq >= i64::try_from(i.last_sample_seq).unwrap_or(i64::MAX) {
            Verdict::Unchanged
        } else {
            Verdict::Write
        };
    }
    if i.resolved_at.is_none() && live_rules.contains(&i.rule_id) {
        return Verdict::LeftToLive;
    }
    let overlaps = |e: &&store::incidents::Episode| {
        if ours.contains(&e.id) {
            return false;
        }
        let ends_after_we_open = e.resolved_at.is_none_or(|r| r >= i.opened_at);
        let opens_before_we_end = i.resolved_at.is_none_or(|r| e.opened_at <= r);
        ends_after_we_open && opens_before_we_end
    };
    match episodes.iter().find(overlaps) {
        Some(e) => Verdict::Overlapping(e.id),
        None => Verdict::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use schemas::{IncidentSnapshot, Operator, Severity, Source, TransitionKind};
    use store::incidents::Episode;

    fn at(minute: i64) -> DateTime<Utc> {
        "2026-11-20T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(minute)
    }

    const RULE: Uuid = Uuid::from_u128(1);

    fn found(id: u128, opened: i64, resolved: Option<i64>, seq: u64) -> WouldBe {
        let snapshot = IncidentSnapshot {
            id: Uuid::from_u128(id),
            rule_id: RULE,
            rule_name: "r".into(),
            service_id: "S1".into(),
            metric_type: "LATENCY_MS".into(),
            series_key: "S1|LATENCY_MS".into(),
            labels: Default::default(),
            department_id: None,
            severity: Severity::High,
            operator: Operator::Gt,
            threshold: 1.0,
            message: "m".into(),
            value: 2.0,
            peak_value: 2.0,
            last_value: 2.0,
            violation_count: seq,
            opened_at: at(opened),
            last_violation_at: at(opened),
            resolved_at: resolved.map(at),
            source: Source::Backfill,
            last_sample_seq: seq,
            auto_resolve: false,
        };
        WouldBe {
            opened: IncidentTransition {
                kind: TransitionKind::Opened,
                at: at(opened),
                incident: snapshot.clone(),
            },
            latest: snapshot,
            resolved: None,
        }
    }

    fn stored(id: u128, opened: i64, resolved: Option<i64>, seq: i64) -> Stored {
        let episode = Episode {
            id: Uuid::from_u128(id),
            rule_id: RULE,
            series_key: "S1|LATENCY_MS".into(),
            opened_at: at(opened),
            resolved_at: resolved.map(at),
            peak_value: 2.0,
            violation_count: seq,
            last_sample_seq: seq,
        };
        Stored::from([((RULE, episode.series_key.clone()), vec![episode])])
    }

    fn judge(w: &WouldBe, stored: &Stored, live: bool) -> &'static str {
        let ours = HashSet::from([w.latest.id]);
        let live_rules = if live {
            HashSet::from([RULE])
        } else {
            HashSet::new()
        };
        match verdict(w, stored, &ours, &live_rules) {
            Verdict::Write => "write",
            Verdict::Unchanged => "unchanged",
            Verdict::Overlapping(_) => "overlapping",
            Verdict::LeftToLive => "left to live",
        }
    }

    #[test]
    fn verdicts() {
        let none = Stored::new();
        assert_eq!(judge(&found(7, 10, Some(20), 50), &none, false), "write");
        // The same incident, stored as far along or further: a live row still firing past our
        // resolution stays open.
        assert_eq!(
            judge(
                &found(7, 10, Some(20), 50),
                &stored(7, 10, Some(20), 50),
                true
            ),
            "unchanged"
        );
        assert_eq!(
            judge(&found(7, 10, Some(20), 50), &stored(7, 10, None, 60), true),
            "unchanged"
        );
        // Stored behind (an interrupted backfill left it open): brought forward.
        assert_eq!(
            judge(&found(7, 10, Some(20), 50), &stored(7, 10, None, 30), false),
            "write"
        );
        // Another incident covering the episode, open or resolved: skipped.
        assert_eq!(
            judge(&found(7, 10, Some(20), 50), &stored(8, 15, None, 60), false),
            "overlapping"
        );
        assert_eq!(
            judge(
                &found(7, 10, Some(20), 50),
                &stored(8, 5, Some(12), 20),
                false
            ),
            "overlapping"
        );
        // Episodes that do not meet are both kept.
        assert_eq!(
            judge(
                &found(7, 10, Some(20), 50),
                &stored(8, 21, Some(30), 60),
                false
            ),
            "write"
        );
        assert_eq!(
            judge(
                &found(7, 10, Some(20), 50),
                &stored(8, 0, Some(9), 20),
                false
            ),
            "write"
        );
        // A stale copy of another incident this replay found is brought up to date by it.
        let ours = HashSet::from([Uuid::from_u128(7), Uuid::from_u128(8)]);
        let w = found(7, 10, Some(20), 50);
        assert!(matches!(
            verdict(&w, &stored(8, 5, None, 20), &ours, &HashSet::new()),
            Verdict::Write
        ));
        // Still firing at the end of the stream: the live evaluator's, when the rule runs live.
        assert_eq!(judge(&found(7, 10, None, 50), &none, true), "left to live");
        assert_eq!(judge(&found(7, 10, None, 50), &none, false), "write");
    }
}
