//! Turning a requested range into where to read METRICS and which samples and incidents count.
//!
//! `from` and `to` as times are event times. Reading starts at the stream position of
//! `from` less the rules' lookback (a window to fill, then a window and the pending and
//! clearing periods), so an episode already under way at `from` is found with its true start;
//! points whose window reaches before that only fill. Samples are stored after their event
//! time, so the stream's own timestamps find that position, less [`CLOCK_SKEW`] for publishers
//! whose clocks run ahead. Reading always goes on to the end of the stream as it was when the
//! replay started: a late publisher may have stored a sample for the range long after it, and
//! an incident that opened in the range is followed to its resolution. `to` only bounds which
//! incidents are reported: those that opened by then.

use async_nats::jetstream;
use chrono::{DateTime, Duration, Utc};
use schemas::{MetricSample, Span};

use crate::Bound;

/// How far ahead of the server a publisher's clock may run.
pub const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Where a replay reads and what it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub start: Start,
    /// The last stream sequence to read: the end of the stream when the replay started.
    pub end_seq: u64,
    /// Samples with an earlier event time are skipped.
    pub samples_from: Option<DateTime<Utc>>,
    /// Set when older samples exist: points whose window reaches before it only fill.
    pub warm_up_since: Option<DateTime<Utc>>,
    /// Set when older samples exist but the start is a sequence: the warm-up starts at the
    /// first sample read.
    pub warm_up_at_first_sample: bool,
    /// Incidents resolved before it are not reported.
    pub report_from: Option<DateTime<Utc>>,
    /// Incidents that open (their episode starts) after this event time are not reported.
    pub report_to: Option<DateTime<Utc>>,
    /// Incidents opened by a later sample than this sequence are not reported.
    pub report_to_seq: Option<u64>,
    /// Said once, before reading: history that is gone, for example.
    pub warnings: Vec<String>,
    /// Nothing to read.
    pub empty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Sequence(u64),
    /// The first message stored at or after this time.
    Stored(DateTime<Utc>),
}

#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("`from` ({from}) must be before `to` ({to})")]
    Inverted { from: Bound, to: Bound },
    #[error("`from` cannot be `now`: give a time or a stream sequence")]
    FromNow,
    #[error("`{which}` ({at}) is in the future")]
    Future { which: &'static str, at: Bound },
    #[error("`from` sequence {from} is past the end of METRICS (its last sequence is {last})")]
    PastEnd { from: u64, last: u64 },
    #[error(
        "the range ends at {to}, before the oldest sample METRICS still holds ({oldest}); \
         older history is gone (the stream's max_age is the replay horizon)"
    )]
    EndsBeforeRetained { to: Bound, oldest: String },
    #[error("reading METRICS: {0:#}")]
    Nats(anyhow::Error),
}

/// Plans a replay of `from..=to` for rules that look back `lookback` in event time.
pub async fn plan(
    js: &jetstream::Context,
    stream_name: &str,
    from: Bound,
    to: Bound,
    lookback: Span,
) -> Result<Plan, RangeError> {
    let now = Utc::now();
    check_order(from, to, now)?;
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| RangeError::Nats(e.into()))?;
    let state = stream.cached_info().state.clone();
    let mut plan = Plan {
        start: Start::Sequence(state.first_sequence.max(1)),
        end_seq: state.last_sequence,
        samples_from: None,
        warm_up_since: None,
        warm_up_at_first_sample: false,
        report_from: None,
        report_to: None,
        report_to_seq: None,
        warnings: Vec::new(),
        empty: state.messages == 0,
    };
    if plan.empty {
        plan.warnings
            .push("METRICS holds no samples: there is nothing to replay".into());
        return Ok(plan);
    }
    let first_seq = state.first_sequence;
    // Messages before the oldest were stored and are gone (max_age, or purged).
    let history_lost = first_seq > 1;
    let oldest = event_time(&stream, first_seq).await;
    let oldest_text = || {
        oldest.map_or_else(
            || format!("sequence {first_seq}"),
            |t| format!("{}, sequence {first_seq}", t.to_rfc3339()),
        )
    };

    match to {
        Bound::Now => {}
        Bound::Sequence(seq) if seq < first_seq => {
            return Err(RangeError::EndsBeforeRetained {
                to,
                oldest: oldest_text(),
            })
        }
        Bound::Sequence(seq) => plan.report_to_seq = Some(seq),
        Bound::Time(t) if oldest.is_some_and(|o| t < o) => {
            return Err(RangeError::EndsBeforeRetained {
                to,
                oldest: oldest_text(),
            })
        }
        Bound::Time(t) => plan.report_to = Some(t),
    }

    // A sequence `from` is compared with a time `to` through the event time of its sample.
    // (A time `from` with a sequence `to` is not refused: a backfill job fixes `to: now` as the
    // stream's last sequence, and a range with nothing in it simply finds nothing.)
    if let (Bound::Sequence(seq), Bound::Time(t)) = (from, to) {
        if event_time(&stream, seq.max(first_seq))
            .await
            .is_some_and(|at| at > t)
        {
            return Err(RangeError::Inverted { from, to });
        }
    }

    match from {
        Bound::Now => unreachable!("rejected by check_order"),
        Bound::Sequence(seq) if seq > state.last_sequence => {
            return Err(RangeError::PastEnd {
                from: seq,
                last: state.last_sequence,
            })
        }
        Bound::Sequence(seq) if seq < first_seq => {
            plan.warnings.push(gone(from, &oldest_text()));
            plan.warm_up_since = oldest.filter(|_| history_lost);
        }
        Bound::Sequence(seq) => {
            plan.start = Start::Sequence(seq);
            plan.warm_up_at_first_sample = seq > first_seq || history_lost;
        }
        Bound::Time(t) => {
            plan.report_from = Some(t);
            let since = t - Duration::milliseconds(lookback.millis());
            match oldest {
                Some(o) if t < o => {
                    plan.warnings.push(gone(from, &oldest_text()));
                    plan.warm_up_since = oldest.filter(|_| history_lost);
                }
                Some(o) if since <= o => {
                    if history_lost {
                        plan.warnings.push(format!(
                            "the rules look back to {}, before the oldest sample METRICS still \
                             holds ({}): incidents already under way then may be found with a \
                             later start",
                            since.to_rfc3339(),
                            oldest_text()
                        ));
                        plan.warm_up_since = Some(o);
                    }
                }
                _ => {
                    plan.start = Start::Stored(since - CLOCK_SKEW);
                    plan.samples_from = Some(since);
                    plan.warm_up_since = Some(since);
                }
            }
        }
    }
    if let Start::Sequence(seq) = plan.start {
        plan.empty = seq > plan.end_seq;
    }
    Ok(plan)
}

fn gone(from: Bound, oldest: &str) -> String {
    format!(
        "`from` ({from}) is before the oldest sample METRICS still holds ({oldest}): older \
         history is gone (the stream's max_age is the replay horizon). Replaying from the \
         oldest retained sample."
    )
}

/// Refuses ranges that run backwards or into the future, before anything is looked up.
pub fn check_order(from: Bound, to: Bound, now: DateTime<Utc>) -> Result<(), RangeError> {
    for (which, bound) in [("from", from), ("to", to)] {
        if let Bound::Time(t) = bound {
            if t > now + CLOCK_SKEW {
                return Err(RangeError::Future { which, at: bound });
            }
        }
    }
    let inverted = match (from, to) {
        (Bound::Now, _) => return Err(RangeError::FromNow),
        (Bound::Time(f), Bound::Time(t)) => f >= t,
        (Bound::Sequence(f), Bound::Sequence(t)) => f > t,
        _ => false,
    };
    if inverted {
        return Err(RangeError::Inverted { from, to });
    }
    Ok(())
}

/// Event time of the message at `seq` (its stored time if it is not a sample), if it exists.
async fn event_time(stream: &jetstream::stream::Stream, seq: u64) -> Option<DateTime<Utc>> {
    let msg = stream.get_raw_message(seq).await.ok()?;
    let content_type = msg
        .headers
        .get(schemas::headers::CONTENT_TYPE)
        .map(|v| v.as_str().to_owned());
    let stored = DateTime::from_timestamp(msg.time.unix_timestamp(), msg.time.nanosecond());
    match MetricSample::from_message(&msg.subject, content_type.as_deref(), &msg.payload) {
        Ok(sample) => Some(sample.recorded_at),
        Err(_) => stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Bound {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_must_run_forward_and_not_into_the_future() {
        let now: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let err = check_order(t("2026-11-22T00:00:00Z"), t("2026-11-21T00:00:00Z"), now);
        assert!(matches!(err, Err(RangeError::Inverted { .. })), "{err:?}");
        let err = check_order(t("2026-11-22T00:00:00Z"), t("2026-11-22T00:00:00Z"), now);
        assert!(matches!(err, Err(RangeError::Inverted { .. })), "{err:?}");
        let err = check_order(Bound::Sequence(9), Bound::Sequence(3), now);
        assert!(matches!(err, Err(RangeError::Inverted { .. })), "{err:?}");
        let err = check_order(t("2026-11-24T00:00:00Z"), Bound::Now, now);
        assert!(
            matches!(err, Err(RangeError::Future { which: "from", .. })),
            "{err:?}"
        );
        let err = check_order(Bound::Now, Bound::Now, now);
        assert!(matches!(err, Err(RangeError::FromNow)), "{err:?}");
        assert!(check_order(t("2026-11-22T00:00:00Z"), Bound::Now, now).is_ok());
        assert!(check_order(Bound::Sequence(3), Bound::Sequence(3), now).is_ok());
        let msg = check_order(t("2026-11-22T00:00:00Z"), t("2026-11-21T00:00:00Z"), now)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("must be before"), "{msg}");
    }
}
