//! `/api/rules/{id}/backtest` and `/api/rules/backtest`: what a rule (saved, edited or never
//! saved) would have found over a past range of METRICS. The engine runs as in a backfill and
//! nothing is written: no incident, no stream message, no rule.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use pipeline::Rule;
use replay::run::Event;
use replay::scan::Ended;
use replay::{Bound, RangeError, Replay, WouldBe};
use schemas::subject::METRICS_STREAM;
use schemas::{Aggregation, MetricSample, Operator, RuleKind, Severity, Span};
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::rules::NewRule;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Caller, Operator as OperatorRole};
use crate::envelope::{self, Data};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::routes::parse_id;
use crate::routes::rules::{self, RuleBody};
use crate::AppState;

/// The range when `from` is omitted: this long before `to`.
pub const DEFAULT_RANGE: Duration = Duration::hours(24);
/// A backtest stops reading after this many samples of its rule's metric in the range.
pub const MAX_SAMPLES: u64 = 2_000_000;
/// A backtest stops after reading this many messages in all, counting those outside the range
/// (METRICS is read to its end for late samples, which after a range far back is most of it).
pub const MAX_READ: u64 = 5_000_000;
/// Series whose points are collected for the chart; others are only counted.
pub const MAX_COLLECTED_SERIES: usize = 200;
/// Series in the answer.
pub const MAX_SHOWN_SERIES: usize = 20;
/// Time buckets over the range; each keeps its lowest and highest point.
pub const BUCKETS: i64 = 300;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(backtest_saved))
        .routes(routes!(backtest_draft))
}

/// A backtest of a saved rule.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BacktestBody {
    /// Start of the range, RFC 3339; 24 h before `to` when omitted.
    #[serde(default)]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub from: Option<Bound>,
    /// End of the range, RFC 3339 or `now`; now when omitted.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "now")]
    pub to: Option<Bound>,
    /// A full rule body, as `POST /api/rules` takes, to try instead of the saved rule (an edit
    /// before saving it). The saved rule's id is kept, so incident ids are those the edit would
    /// give once saved.
    #[serde(default)]
    pub rule: Option<RuleBody>,
}

/// A backtest of a rule that was never saved.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftBacktestBody {
    /// Start of the range, RFC 3339; 24 h before `to` when omitted.
    #[serde(default)]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub from: Option<Bound>,
    /// End of the range, RFC 3339 or `now`; now when omitted.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "now")]
    pub to: Option<Bound>,
    /// The rule, as `POST /api/rules` takes it.
    pub rule: RuleBody,
}

/// What a backtest found.
#[derive(Debug, Serialize, ToSchema)]
pub struct Backtest {
    /// The rule as it was evaluated.
    pub rule: EvaluatedRule,
    /// The range, as times.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The incidents that would have opened, by opening time: those open at some point in the
    /// range. Nothing is stored.
    pub incidents: Vec<BacktestIncident>,
    /// Raw sample values of the series the rule selects, for a chart: series with incidents
    /// first, at most 20.
    pub series: Vec<BacktestSeries>,
    pub stats: BacktestStats,
    /// Said about the range or the answer: history that is gone, a read cut short.
    pub warnings: Vec<String>,
}

/// The rule a backtest ran.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluatedRule {
    /// The saved rule's id; a random one for a rule never saved.
    pub id: Uuid,
    /// False when the rule is the saved one; true for an edit or a rule never saved.
    pub draft: bool,
    pub name: String,
    pub kind: RuleKind,
    pub metric_type: String,
    pub service_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub aggregation: Aggregation,
    pub window: Span,
    pub operator: Operator,
    pub threshold: f64,
    #[serde(rename = "for")]
    pub pending_for: Span,
    pub clear_threshold: Option<f64>,
    pub clear_for: Span,
    pub auto_resolve: bool,
    pub severity: Severity,
    pub department_id: Option<Uuid>,
    /// Whether the saved rule runs live; a backtest runs it either way.
    pub enabled: bool,
}

impl EvaluatedRule {
    fn of(rule: &Rule, draft: bool) -> EvaluatedRule {
        EvaluatedRule {
            id: rule.id,
            draft,
            name: rule.name.clone(),
            kind: rule.kind,
            metric_type: rule.metric_type.clone(),
            service_id: rule.service_id.clone(),
            labels: rule.labels.clone(),
            aggregation: rule.aggregation,
            window: rule.window,
            operator: rule.operator,
            threshold: rule.threshold,
            pending_for: rule.pending_for,
            clear_threshold: rule.clear_threshold,
            clear_for: rule.clear_for,
            auto_resolve: rule.auto_resolve,
            severity: rule.severity,
            department_id: rule.department_id,
            enabled: rule.enabled,
        }
    }
}

/// An incident the rule would have opened.
#[derive(Debug, Serialize, ToSchema)]
pub struct BacktestIncident {
    /// The id the live pipeline or a backfill would give it (illustrative only for a rule never
    /// saved, whose id is random).
    pub id: Uuid,
    pub service_id: String,
    pub series_key: String,
    pub labels: BTreeMap<String, String>,
    pub severity: Severity,
    /// Event time of the first violating point.
    pub opened_at: DateTime<Utc>,
    /// Event time at which the condition stopped holding; null if it still held at the end.
    pub resolved_at: Option<DateTime<Utc>>,
    /// The value that opened it.
    pub value: f64,
    pub peak_value: f64,
    pub last_value: f64,
    pub violation_count: u64,
    pub message: String,
}

impl From<&WouldBe> for BacktestIncident {
    fn from(w: &WouldBe) -> BacktestIncident {
        let i = &w.latest;
        BacktestIncident {
            id: i.id,
            service_id: i.service_id.clone(),
            series_key: i.series_key.clone(),
            labels: i.labels.clone(),
            severity: i.severity,
            opened_at: i.opened_at,
            resolved_at: i.resolved_at,
            value: i.value,
            peak_value: i.peak_value,
            last_value: i.last_value,
            violation_count: i.violation_count,
            message: i.message.clone(),
        }
    }
}

/// One series' samples, thinned for a chart: in each of about 300 equal time buckets over the
/// range, the lowest and the highest sample (so peaks survive).
#[derive(Debug, Serialize, ToSchema)]
pub struct BacktestSeries {
    pub series_key: String,
    pub service_id: String,
    pub labels: BTreeMap<String, String>,
    /// `[unix_ms, value]` pairs, oldest first.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub points: Vec<(i64, f64)>,
}

/// How much was read.
#[derive(Debug, Serialize, ToSchema)]
pub struct BacktestStats {
    /// Samples evaluated.
    pub samples: u64,
    /// Samples read but outside the range (or its warm-up) in event time.
    pub skipped: u64,
    /// Samples dropped as later than the allowed lateness, as live.
    pub late: u64,
    /// Messages that are not valid samples.
    pub rejected: u64,
    /// First METRICS sequence read; 0 when none was.
    pub first_seq: u64,
    /// The METRICS sequence reading was to end at.
    pub end_seq: u64,
    /// Series the rule selects that have samples in the range (counted up to the read's end).
    pub series_total: u64,
    /// Series in `series`.
    pub series_shown: u64,
    /// Whether reading stopped before the end, at the limit of 2,000,000 samples in the range
    /// or 5,000,000 messages read in all.
    pub truncated: bool,
}

/// Backtests a saved rule, or an edit of it (`rule`), over a past range. Writes nothing.
///
/// Runs the rule (enabled or not) through the engine over the range's samples as a backfill
/// would, with the live allowed lateness. `from` before the oldest sample still held is not an
/// error: the range starts there, and `warnings` says so. Reading stops after 2,000,000
/// samples in the range, or 5,000,000 messages in all (`stats.truncated`).
#[utoipa::path(post, path = "/rules/{id}/backtest", tag = "rules", request_body = BacktestBody,
    params(("id" = Uuid, Path, description = "The rule's id.")),
    responses(
        (status = 200, description = "What the rule would have found.", body = Data<Backtest>),
        (status = 404, description = "No such rule.", body = crate::error::ErrorBody),
        (status = 422, description = "The body is invalid, or the range is (`from` not before `to`, in the future, or ending before the oldest sample held); `details` names the field.", body = crate::error::ErrorBody),
    ))]
pub async fn backtest_saved(
    _: Caller<OperatorRole>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<BacktestBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let edit = match body.rule {
        Some(edit) => Some(checked_rule(&state, edit).await?),
        None => None,
    };
    let saved = rules::find(&state, id).await?;
    let (rule, draft) = match edit {
        Some(edit) => (replay::rules::draft_rule(id, &edit), true),
        None => (replay::rules::engine_rule(&saved), false),
    };
    let answer = backtest(&state, rule, draft, body.from, body.to).await?;
    Ok(envelope::data(answer))
}

/// Backtests a rule that was never saved, over a past range. Writes nothing.
///
/// The rule gets a random id, so the incident ids in the answer are only illustrative: saved,
/// the rule would give other ids. Otherwise as `POST /api/rules/{id}/backtest`.
#[utoipa::path(post, path = "/rules/backtest", tag = "rules", request_body = DraftBacktestBody,
    responses(
        (status = 200, description = "What the rule would have found.", body = Data<Backtest>),
        (status = 422, description = "The body is invalid, or the range is (`from` not before `to`, in the future, or ending before the oldest sample held); `details` names the field.", body = crate::error::ErrorBody),
    ))]
pub async fn backtest_draft(
    _: Caller<OperatorRole>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<DraftBacktestBody>,
) -> Result<Response, ApiError> {
    let new = checked_rule(&state, body.rule).await?;
    let rule = replay::rules::draft_rule(Uuid::new_v4(), &new);
    let answer = backtest(&state, rule, true, body.from, body.to).await?;
    Ok(envelope::data(answer))
}

/// The rule body checked as `POST /api/rules` checks it, errors naming `rule.<field>`.
async fn checked_rule(state: &AppState, body: RuleBody) -> Result<NewRule, ApiError> {
    let in_rule = |e: ApiError| match e {
        ApiError::Validation { details, .. } if details[0]["field"].is_string() => {
            let field = details[0]["field"].as_str().unwrap_or_default();
            let reason = details[0]["message"].as_str().unwrap_or_default();
            ApiError::invalid_field(format!("rule.{field}"), reason)
        }
        e => e,
    };
    let new = body.into_new_rule().map_err(in_rule)?;
    rules::checked(state, new).await.map_err(in_rule)
}

/// A bound that must be a time (or, for `to`, `now`).
fn time_bound(field: &str, bound: Bound) -> Result<Bound, ApiError> {
    match bound {
        Bound::Sequence(_) => Err(ApiError::invalid_field(
            field,
            "must be an RFC 3339 time such as 2026-11-20T00:00:00Z; backtests take times, not \
             stream sequences",
        )),
        Bound::Now if field == "from" => Err(range_error(RangeError::FromNow)),
        bound => Ok(bound),
    }
}

/// A range the replay refused, as a 422 naming the field; a NATS failure as a 503.
pub fn range_error(e: RangeError) -> ApiError {
    let field = match &e {
        RangeError::Inverted { .. } | RangeError::FromNow | RangeError::PastEnd { .. } => {
            Some("from")
        }
        RangeError::Future { which, .. } => Some(*which),
        RangeError::EndsBeforeRetained { .. } => Some("to"),
        RangeError::Nats(_) => None,
    };
    match field {
        Some(field) => {
            let message = e.to_string();
            ApiError::Validation {
                details: json!([{ "field": field, "message": message }]),
                message,
            }
        }
        None => {
            tracing::warn!(error = %e, "backtest or backfill could not read METRICS");
            ApiError::Unavailable {
                message: format!("{e}; retry later"),
                details: serde_json::Value::Null,
            }
        }
    }
}

async fn backtest(
    state: &AppState,
    rule: Rule,
    draft: bool,
    from: Option<Bound>,
    to: Option<Bound>,
) -> Result<Backtest, ApiError> {
    let now = Utc::now();
    let to = time_bound("to", to.unwrap_or(Bound::Now))?;
    let to_time = match to {
        Bound::Time(t) => t,
        _ => now,
    };
    let from = match from {
        Some(from) => time_bound("from", from)?,
        None => Bound::Time(to_time - DEFAULT_RANGE),
    };
    let Bound::Time(from_time) = from else {
        unreachable!("time_bound lets only times through for `from`")
    };
    let replay = Replay {
        rules: vec![rule.clone()],
        services: Vec::new(),
        allowed_lateness: state.settings.allowed_lateness,
    };
    let plan = replay::plan::plan(&state.js, METRICS_STREAM, from, to, replay.lookback())
        .await
        .map_err(range_error)?;
    let mut chart = Chart::new(&rule, from_time, to_time);
    let mut budget = Budget::new(MAX_SAMPLES, MAX_READ);
    // Dropping the request drops the read; nothing else needs stopping.
    let cancel = CancellationToken::new();
    let outcome = replay
        .run(&state.js, METRICS_STREAM, &plan, &cancel, |event| {
            if !budget.allows(&event) {
                return ControlFlow::Break(());
            }
            if let Event::Sample(sample) = event {
                chart.add(sample);
            }
            ControlFlow::Continue(())
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %format!("{e:#}"), "backtest could not read METRICS");
            ApiError::Unavailable {
                message: format!("reading METRICS failed: {e:#}; retry later"),
                details: serde_json::Value::Null,
            }
        })?;
    let mut warnings = plan.warnings.clone();
    let truncated = outcome.ended == Ended::Stopped;
    if let (true, Some(limit)) = (truncated, budget.spent) {
        warnings.push(format!(
            "stopped after reading {limit}, before the end: the incidents and series may miss \
             the rest of the range. Backtest a narrower range, or run a backfill job \
             (POST /api/backfills), which has no such limit."
        ));
    }
    let (series, series_total) = chart.finish(&outcome.incidents);
    let p = &outcome.progress;
    let stats = BacktestStats {
        samples: p.samples,
        skipped: p.skipped,
        late: p.late,
        rejected: p.rejected,
        first_seq: p.first_seq,
        end_seq: p.end_seq,
        series_total,
        series_shown: series.len() as u64,
        truncated,
    };
    Ok(Backtest {
        rule: EvaluatedRule::of(&rule, draft),
        from: from_time,
        to: to_time,
        incidents: outcome
            .incidents
            .iter()
            .map(BacktestIncident::from)
            .collect(),
        series,
        stats,
        warnings,
    })
}

/// How much one backtest may read.
struct Budget {
    max_samples: u64,
    max_read: u64,
    samples: u64,
    /// Which limit was reached, once one is.
    spent: Option<String>,
}

impl Budget {
    fn new(max_samples: u64, max_read: u64) -> Budget {
        Budget {
            max_samples,
            max_read,
            samples: 0,
            spent: None,
        }
    }

    /// Whether reading may go on past this event.
    fn allows(&mut self, event: &Event<'_>) -> bool {
        let spent = match event {
            Event::Sample(_) if self.samples >= self.max_samples => {
                format!("{} samples of the rule's metric", self.max_samples)
            }
            Event::Sample(_) => {
                self.samples += 1;
                return true;
            }
            Event::Progress(p) if p.samples + p.skipped + p.rejected >= self.max_read => format!(
                "{} messages, most outside the range (METRICS is read to its end for late \
                 samples)",
                self.max_read
            ),
            Event::Progress(_) => return true,
        };
        self.spent.get_or_insert(spent);
        false
    }
}

/// The selected series' samples, thinned as they are read. Points are kept for at most
/// [`MAX_COLLECTED_SERIES`] series: the first seen, except that once that many are kept, a new
/// series whose raw value breaks the threshold takes the place of one whose values never have,
/// so that series likely to have incidents are charted. Other series are only counted.
struct Chart<'a> {
    rule: &'a Rule,
    from_ms: i64,
    to_ms: i64,
    bucket_ms: i64,
    kept: HashMap<String, Kept>,
    /// Hashes of the keys of series seen but not kept.
    others: HashSet<u64>,
}

struct Kept {
    service_id: String,
    labels: BTreeMap<String, String>,
    /// Whether a raw value broke the threshold.
    violated: bool,
    /// Lowest and highest point of each bucket that has any.
    buckets: BTreeMap<i64, (Point, Point)>,
}

/// Unix milliseconds and a value.
type Point = (i64, f64);

impl<'a> Chart<'a> {
    fn new(rule: &'a Rule, from: DateTime<Utc>, to: DateTime<Utc>) -> Chart<'a> {
        let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
        let span = to_ms.saturating_sub(from_ms).max(1);
        Chart {
            rule,
            from_ms,
            to_ms,
            bucket_ms: (span + BUCKETS - 1) / BUCKETS,
            kept: HashMap::new(),
            others: HashSet::new(),
        }
    }

    fn add(&mut self, s: &MetricSample) {
        let t = s.recorded_at.timestamp_millis();
        if t < self.from_ms
            || t > self.to_ms
            || !self.rule.selects(&s.service_id, &s.metric_type, &s.labels)
        {
            return;
        }
        let violates = self.rule.kind == RuleKind::Threshold && self.rule.violated_by(s.value);
        let key = s.series_key();
        if !self.kept.contains_key(&key) && !self.make_room(&key, violates) {
            self.others.insert(hash(&key));
            return;
        }
        let kept = self.kept.entry(key).or_insert_with(|| Kept {
            service_id: s.service_id.clone(),
            labels: s.labels.clone(),
            violated: false,
            buckets: BTreeMap::new(),
        });
        kept.violated |= violates;
        let bucket = (t - self.from_ms) / self.bucket_ms;
        let point = (t, s.value);
        kept.buckets
            .entry(bucket)
            .and_modify(|(low, high)| {
                if point.1 < low.1 {
                    *low = point;
                }
                if point.1 > high.1 {
                    *high = point;
                }
            })
            .or_insert((point, point));
    }

    /// Whether a new series may be kept, evicting a calm one for a violating one when full.
    fn make_room(&mut self, key: &str, violates: bool) -> bool {
        if self.kept.len() < MAX_COLLECTED_SERIES {
            self.others.remove(&hash(key));
            return true;
        }
        if !violates {
            return false;
        }
        let Some(calm) = self
            .kept
            .iter()
            .find(|(_, k)| !k.violated)
            .map(|(key, _)| key.clone())
        else {
            return false;
        };
        self.kept.remove(&calm);
        self.others.insert(hash(&calm));
        self.others.remove(&hash(key));
        true
    }

    /// The series to show, with incidents first (most incidents first), then by key; and how
    /// many series were seen.
    fn finish(self, incidents: &[WouldBe]) -> (Vec<BacktestSeries>, u64) {
        let total = (self.kept.len() + self.others.len()) as u64;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for w in incidents {
            *counts.entry(w.latest.series_key.as_str()).or_default() += 1;
        }
        let mut kept: Vec<(String, Kept)> = self.kept.into_iter().collect();
        kept.sort_by(|(a, _), (b, _)| {
            let (ca, cb) = (
                counts.get(a.as_str()).copied().unwrap_or(0),
                counts.get(b.as_str()).copied().unwrap_or(0),
            );
            cb.cmp(&ca).then_with(|| a.cmp(b))
        });
        let series = kept
            .into_iter()
            .take(MAX_SHOWN_SERIES)
            .map(|(series_key, k)| BacktestSeries {
                series_key,
                service_id: k.service_id,
                labels: k.labels,
                points: k
                    .buckets
                    .into_values()
                    .flat_map(|(low, high)| match low.0.cmp(&high.0) {
                        std::cmp::Ordering::Equal => vec![low],
                        std::cmp::Ordering::Less => vec![low, high],
                        std::cmp::Ordering::Greater => vec![high, low],
                    })
                    .collect(),
            })
            .collect();
        (series, total)
    }
}

fn hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(service: &str, value: f64, at: DateTime<Utc>) -> MetricSample {
        MetricSample {
            service_id: service.into(),
            metric_type: "LATENCY_MS".into(),
            value,
            recorded_at: at,
            id: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn the_budget_stops_at_either_limit_and_names_it() {
        let from: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
        let s = sample("S1", 1.0, from);
        let mut budget = Budget::new(3, 100);
        assert!((0..3).all(|_| budget.allows(&Event::Sample(&s))));
        assert!(!budget.allows(&Event::Sample(&s)));
        assert!(budget.spent.as_deref().unwrap().starts_with("3 samples"));

        let mut budget = Budget::new(3, 100);
        let mut progress = replay::Progress {
            samples: 2,
            skipped: 97,
            ..Default::default()
        };
        assert!(budget.allows(&Event::Progress(&progress)));
        progress.rejected = 1;
        assert!(!budget.allows(&Event::Progress(&progress)));
        assert!(budget.spent.as_deref().unwrap().starts_with("100 messages"));
        // The first limit reached is the one named.
        assert!(!budget.allows(&Event::Progress(&progress)));
        assert!(budget.spent.as_deref().unwrap().starts_with("100 messages"));
    }

    #[test]
    fn thinning_keeps_each_buckets_extremes_and_the_peak() {
        let rule = Rule::threshold("r", "LATENCY_MS", Operator::Gt, 150.0, Severity::High);
        let from: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
        let to = from + Duration::hours(1);
        let mut chart = Chart::new(&rule, from, to);
        // One sample a second: 12 s per bucket, so each bucket has a dozen samples.
        for i in 0..3600 {
            let value = if i == 1234 {
                999.0
            } else {
                100.0 + (i % 7) as f64
            };
            chart.add(&sample("S1", value, from + Duration::seconds(i)));
        }
        chart.add(&sample("S1", 5000.0, to + Duration::seconds(1)));
        let (series, total) = chart.finish(&[]);
        assert_eq!(total, 1);
        let points = &series[0].points;
        assert!(points.len() <= 2 * BUCKETS as usize, "{}", points.len());
        assert!(points.len() > BUCKETS as usize, "{}", points.len());
        let peak = (from + Duration::seconds(1234)).timestamp_millis();
        assert!(points.contains(&(peak, 999.0)));
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "oldest first");
        assert!(points.iter().all(|p| p.1 < 1000.0), "outside the range");
    }

    #[test]
    fn memory_is_bounded_and_violating_series_take_calm_ones_places() {
        let rule = Rule::threshold("r", "LATENCY_MS", Operator::Gt, 150.0, Severity::High);
        let from: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
        let mut chart = Chart::new(&rule, from, from + Duration::hours(1));
        for i in 0..1000 {
            chart.add(&sample(&format!("calm-{i:04}"), 10.0, from));
        }
        chart.add(&sample("hot", 500.0, from + Duration::minutes(1)));
        chart.add(&sample("calm-0999", 10.0, from + Duration::minutes(2)));
        assert_eq!(chart.kept.len(), MAX_COLLECTED_SERIES);
        assert!(chart.kept.contains_key("hot:LATENCY_MS"));
        let (series, total) = chart.finish(&[]);
        assert_eq!(total, 1001);
        assert_eq!(series.len(), MAX_SHOWN_SERIES);
    }
}
