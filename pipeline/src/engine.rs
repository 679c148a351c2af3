//! Per-(rule, series) state: windows over event time, pending periods, hysteresis and absence.
//!
//! Each (rule, series) moves OK → PENDING → FIRING → OK:
//! - Samples are placed in the rule's window by event time. A sample may arrive up to the
//!   allowed lateness behind the newest sample of its series; the window only evaluates a point
//!   once the series' watermark (its newest sample time, advanced by idle processing time in
//!   live operation) is past it by that much. Evaluation points are the sample times, in order.
//!   A sample at or before the last evaluated point is late: counted and dropped. Rules without
//!   a window have no lateness and judge each sample as it arrives.
//! - At each point the window's aggregate is compared with the threshold. A violation starts a
//!   PENDING period; once it has held for `pending_for` the rule FIRES and opens one incident,
//!   whose id is derived from the rule, the series and the pending period's start.
//! - While FIRING, violations update the incident. It resolves once the value has been back past
//!   the clear threshold for `clear_for`; a violation in between keeps it open.
//! - `absent` rules fire at `last sample + window` when a series falls silent, and resolve at
//!   the sample that ends the silence.
//!
//! Samples carry their METRICS stream sequence. After a restart the engine is given the recent
//! incidents (the truth of when each (rule, series) was firing), each (rule, series)'s highest
//! applied sequence and last resolution, and the evaluator reads METRICS again from as far back
//! as the longest window, pending and clearing periods need. Samples at or below a
//! (rule, series)'s applied sequence are *guided*: they rebuild its window and its pending and
//! clearing progress, while whether it was firing comes from the incidents, and nothing is
//! emitted. Points whose window starts before the re-read range only fill it.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use rustc_hash::{FxHashMap, FxHasher};
use schemas::{
    IncidentSnapshot, IncidentTransition, MetricSample, Operator, RuleKind, Source, Span,
    TransitionKind,
};
use std::hash::{Hash, Hasher};
use uuid::Uuid;

use crate::identity::incident_id;
use crate::rule::Rule;
use crate::window::Window;

/// The default allowed lateness for windows.
pub const DEFAULT_LATENESS: Span = Span(30_000);

#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    slots: FxHashMap<Uuid, usize>,
    /// Rule slots per metric type: the rules a sample can meet.
    by_metric: FxHashMap<String, Vec<usize>>,
    series: Vec<Series>,
    /// Series hash → indexes into `series` with that hash.
    index: FxHashMap<u64, Vec<u32>>,
    /// Restored state waiting for its series to be seen, by (rule id, series key).
    restores: FxHashMap<(Uuid, String), Restore>,
    /// Firing states with unpublished updates: (series, state) indexes.
    dirty: Vec<(u32, u32)>,
    allowed_lateness: Span,
    idle_advance: bool,
    source: Source,
    late: u64,
    /// Samples up to this sequence were applied by a previous process (guided for every key).
    guided_floor: u64,
    /// Event time a partial re-read after a restart starts at: points whose window reaches
    /// before it only fill.
    rebuild_since: Option<i64>,
    /// Event time a replay's reading starts at when older samples exist: points whose window
    /// reaches before it only fill, so a partial window cannot fire.
    warm_up_since: Option<i64>,
}

#[derive(Debug)]
struct Series {
    key: String,
    service_id: String,
    metric_type: String,
    labels: BTreeMap<String, String>,
    states: Vec<RuleState>,
}

#[derive(Debug)]
struct RuleState {
    rule: Uuid,
    slot: usize,
    phase: Phase,
    window: Window,
    /// The last evaluation point; samples at or before it are late.
    last_point: Option<i64>,
    /// Newest sample time of the series, and the processing time when it was seen.
    watermark: Option<i64>,
    seen_at: i64,
    /// Highest sample sequence seen; incidents record it.
    applied_seq: u64,
    /// Restart bookkeeping, dropped once the series is past what was applied before.
    guided: Option<Box<Guided>>,
    last_resolved_at: Option<i64>,
    dirty: bool,
}

/// What a (rule, series) needs while samples a previous process applied are re-read.
#[derive(Debug)]
struct Guided {
    /// Samples at or below this sequence are guided.
    until: u64,
    /// When this (rule, series) was firing, from the incidents.
    episodes: Vec<Episode>,
    /// Points at or before this were evaluated before the restart (the restored incidents'
    /// last violation or resolution), by a sample or by the passing of time.
    through: Option<i64>,
}

impl Guided {
    fn covers(&self, point: i64) -> bool {
        self.through.is_some_and(|t| point <= t)
    }
}

#[derive(Debug)]
struct Episode {
    opened: i64,
    resolved: Option<i64>,
    incident: Box<IncidentSnapshot>,
}

#[derive(Debug)]
enum Phase {
    Ok,
    Pending {
        since: i64,
    },
    Firing {
        incident: Box<IncidentSnapshot>,
        clear_since: Option<i64>,
    },
}

#[derive(Debug, Default)]
struct Restore {
    applied_seq: u64,
    resolved_at: Option<i64>,
    /// Recent incidents of this (rule, series), open or resolved, by id.
    incidents: Vec<IncidentSnapshot>,
}

/// What one evaluation needs to know about the series.
struct SeriesInfo<'a> {
    key: &'a str,
    service_id: &'a str,
    metric_type: &'a str,
    labels: &'a BTreeMap<String, String>,
}

impl Default for Engine {
    fn default() -> Engine {
        Engine::with_source(Vec::new(), Source::Live)
    }
}

impl Engine {
    /// An engine for the live pipeline.
    pub fn new(rules: Vec<Rule>) -> Engine {
        Engine::with_source(rules, Source::Live)
    }

    /// An engine whose incidents are marked with `source` (live or backfill).
    pub fn with_source(rules: Vec<Rule>, source: Source) -> Engine {
        let mut engine = Engine {
            rules: Vec::new(),
            slots: FxHashMap::default(),
            by_metric: FxHashMap::default(),
            series: Vec::new(),
            index: FxHashMap::default(),
            restores: FxHashMap::default(),
            dirty: Vec::new(),
            allowed_lateness: DEFAULT_LATENESS,
            idle_advance: true,
            source,
            late: 0,
            guided_floor: 0,
            rebuild_since: None,
            warm_up_since: None,
        };
        engine.set_rules(rules);
        engine
    }

    /// How far behind its series' newest sample a sample may arrive and still count in windows.
    pub fn set_allowed_lateness(&mut self, lateness: Span) {
        self.allowed_lateness = lateness;
    }

    /// Whether [`Engine::tick`] advances idle series by processing time (live operation), or
    /// time moves only with samples (replays, for results that do not depend on speed).
    pub fn set_idle_advance(&mut self, on: bool) {
        self.idle_advance = on;
    }

    /// Replaces the rule set. State of rules that no longer exist is dropped; state of disabled
    /// rules is kept so that re-enabling continues it.
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        let reshaped: Vec<Uuid> = rules
            .iter()
            .filter(|new| {
                self.slots.get(&new.id).is_some_and(|&slot| {
                    let old = &self.rules[slot];
                    old.window != new.window || old.aggregation != new.aggregation
                })
            })
            .map(|r| r.id)
            .collect();
        self.rules = rules;
        self.slots = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i))
            .collect();
        self.by_metric.clear();
        for (slot, rule) in self.rules.iter().enumerate() {
            self.by_metric
                .entry(rule.metric_type.clone())
                .or_default()
                .push(slot);
        }
        let (rules, slots) = (&self.rules, &self.slots);
        for series in &mut self.series {
            series
                .states
                .retain_mut(|state| match slots.get(&state.rule) {
                    Some(&slot) => {
                        state.slot = slot;
                        if reshaped.contains(&state.rule) {
                            // A window of another width or aggregation starts afresh.
                            state.window = Window::default();
                        }
                        true
                    }
                    None => false,
                });
            for (slot, rule) in rules.iter().enumerate() {
                let known = series.states.iter().any(|s| s.rule == rule.id);
                if !known && rule.selects(&series.service_id, &series.metric_type, &series.labels) {
                    series.states.push(new_state(
                        rule,
                        slot,
                        &series.key,
                        &mut self.restores,
                        self.guided_floor,
                    ));
                }
            }
        }
        self.dirty = self
            .series
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.states
                    .iter()
                    .enumerate()
                    .filter(|(_, st)| st.dirty)
                    .map(move |(j, _)| (i as u32, j as u32))
            })
            .collect();
    }

    /// Restores recent incidents, open or resolved, after a restart: open ones continue, and
    /// all of them say when their (rule, series) was firing while guided samples are re-read.
    /// Of two snapshots of one incident, the one with the later sample wins.
    pub fn restore(&mut self, incidents: impl IntoIterator<Item = IncidentSnapshot>) {
        for incident in incidents {
            let key = (incident.rule_id, incident.series_key.clone());
            let restore = self.restores.entry(key).or_default();
            if let Some(resolved) = incident.resolved_at {
                let at = resolved.timestamp_millis();
                restore.resolved_at = Some(restore.resolved_at.map_or(at, |r| r.max(at)));
            }
            restore.applied_seq = restore.applied_seq.max(incident.last_sample_seq);
            match restore
                .incidents
                .iter_mut()
                .find(|known| known.id == incident.id)
            {
                Some(known) if known.last_sample_seq <= incident.last_sample_seq => {
                    let resolved = known.resolved_at.or(incident.resolved_at);
                    *known = incident;
                    known.resolved_at = resolved;
                }
                Some(_) => {}
                None => restore.incidents.push(incident),
            }
        }
    }

    /// Prepares re-reading METRICS after a restart: samples up to `floor_seq` were applied by
    /// the previous process. `since` is where a partial re-read starts in event time (`None`
    /// when it covers the whole stream): points whose window reaches before it only fill.
    pub fn prepare_rebuild(&mut self, floor_seq: u64, since: Option<DateTime<Utc>>) {
        self.guided_floor = floor_seq;
        self.rebuild_since = since.map(|s| s.timestamp_millis());
    }

    /// Starts a replay that reads from `since` while older samples exist: points whose window
    /// reaches before `since` only fill the window.
    pub fn set_warm_up(&mut self, since: DateTime<Utc>) {
        self.warm_up_since = Some(since.timestamp_millis());
    }

    /// How far back in event time a restart must re-read for every window, pending and
    /// clearing period of the current rules to be rebuilt: a window to fill, then a window and
    /// the pending and clearing periods to evaluate.
    pub fn rebuild_lookback(&self) -> Span {
        let longest = self
            .rules
            .iter()
            .map(|r| 2 * r.window.millis() + r.pending_for.millis() + r.clear_for.millis())
            .max()
            .unwrap_or(0);
        Span(longest + self.allowed_lateness.millis())
    }

    /// Marks samples of a (rule, series) up to `seq` as already applied.
    pub fn restore_watermark(&mut self, rule_id: Uuid, series_key: String, seq: u64) {
        let restore = self.restores.entry((rule_id, series_key)).or_default();
        restore.applied_seq = restore.applied_seq.max(seq);
    }

    /// Restores the event time of the last resolution of a (rule, series).
    pub fn restore_resolution(&mut self, rule_id: Uuid, series_key: String, at: DateTime<Utc>) {
        let restore = self.restores.entry((rule_id, series_key)).or_default();
        let at = at.timestamp_millis();
        restore.resolved_at = Some(restore.resolved_at.map_or(at, |r| r.max(at)));
    }

    /// How many samples were dropped as late since the last call.
    pub fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    /// Open incidents, including restored ones whose series has not been seen yet.
    pub fn open_episodes(&self) -> usize {
        let live = self
            .series
            .iter()
            .flat_map(|s| &s.states)
            .filter(|st| matches!(st.phase, Phase::Firing { .. }))
            .count();
        let restored = self
            .restores
            .values()
            .filter(|r| r.incidents.iter().any(|i| i.resolved_at.is_none()))
            .count();
        live + restored
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Number of (rule, series) states held.
    pub fn state_count(&self) -> usize {
        self.series.iter().map(|s| s.states.len()).sum()
    }

    /// Approximate bytes held by the engine's series and (rule, series) states.
    pub fn state_bytes(&self) -> usize {
        let per_series = std::mem::size_of::<Series>() + std::mem::size_of::<u64>() * 2;
        self.series
            .iter()
            .map(|s| {
                per_series
                    + s.key.capacity()
                    + s.service_id.capacity()
                    + s.metric_type.capacity()
                    + s.states.capacity() * std::mem::size_of::<RuleState>()
                    + s.states
                        .iter()
                        .map(|st| {
                            st.window.heap_bytes()
                                + match &st.phase {
                                    Phase::Firing { .. } => std::mem::size_of::<IncidentSnapshot>(),
                                    _ => 0,
                                }
                        })
                        .sum::<usize>()
            })
            .sum()
    }

    /// Evaluates one sample, with no processing time (as in replays and tests).
    pub fn evaluate(&mut self, sample: &MetricSample, seq: u64, out: &mut Vec<IncidentTransition>) {
        self.evaluate_at(sample, seq, 0, out);
    }

    /// Evaluates one sample against every enabled rule that selects its series and appends the
    /// resulting opened and resolved transitions to `out`; updates to open incidents are
    /// collected and emitted by [`Engine::flush`]. `seq` is the sample's stream sequence (0 when
    /// unknown) and `now_ms` the processing time, used to advance idle series in
    /// [`Engine::tick`].
    pub fn evaluate_at(
        &mut self,
        sample: &MetricSample,
        seq: u64,
        now_ms: i64,
        out: &mut Vec<IncidentTransition>,
    ) {
        if !self.by_metric.contains_key(sample.metric_type.as_str()) {
            return;
        }
        let sid = self.intern(sample);
        let t = sample.recorded_at.timestamp_millis();
        let Engine {
            rules,
            series,
            dirty,
            allowed_lateness,
            source,
            late,
            rebuild_since,
            warm_up_since,
            ..
        } = self;
        let series = &mut series[sid as usize];
        let info = SeriesInfo {
            key: &series.key,
            service_id: &series.service_id,
            metric_type: &series.metric_type,
            labels: &series.labels,
        };
        let mut was_late = false;
        for (i, state) in series.states.iter_mut().enumerate() {
            let rule = &rules[state.slot];
            if !rule.enabled {
                continue;
            }
            let guided = match &state.guided {
                Some(g) if seq != 0 && seq <= g.until => true,
                // Past the re-read and past anything evaluated before: no longer needed.
                Some(g) if state.last_point.is_some_and(|p| !g.covers(p + 1)) => {
                    state.guided = None;
                    false
                }
                _ => false,
            };
            state.applied_seq = state.applied_seq.max(seq);
            let mut ctx = Step {
                rule,
                info: &info,
                source: *source,
                out: &mut *out,
                guided,
                rebuild_from: *rebuild_since,
                warm_up_since: *warm_up_since,
            };
            let was_dirty = state.dirty;
            match rule.kind {
                RuleKind::Absent if state.last_point.is_some_and(|e| t <= e) => {}
                RuleKind::Absent => {
                    state.window.push(t, 0.0);
                    let watermark = state.watermark.map_or(t, |w| w.max(t));
                    if Some(watermark) != state.watermark {
                        state.watermark = Some(watermark);
                        state.seen_at = now_ms;
                    }
                    let frontier = watermark - rule.lateness(*allowed_lateness);
                    drain_absent(state, frontier, &mut ctx);
                }
                RuleKind::Threshold if state.last_point.is_some_and(|e| t <= e) => {
                    // Re-read samples the restored state already covers are not late.
                    was_late |= !guided;
                }
                RuleKind::Threshold if rule.judges_single_samples() => {
                    state.last_point = Some(t);
                    state.watermark = Some(state.watermark.map_or(t, |w| w.max(t)));
                    step(state, t, Some(sample.value), &mut ctx);
                }
                RuleKind::Threshold => {
                    state.window.push(t, sample.value);
                    let watermark = state.watermark.map_or(t, |w| w.max(t));
                    if Some(watermark) != state.watermark {
                        state.watermark = Some(watermark);
                        state.seen_at = now_ms;
                    }
                    drain(
                        state,
                        watermark - rule.lateness(*allowed_lateness),
                        &mut ctx,
                    );
                }
            }
            if state.dirty && !was_dirty {
                dirty.push((sid, i as u32));
            }
        }
        // Once per sample, however many rules it missed.
        *late += u64::from(was_late);
    }

    /// Advances every idle series by the processing time since its newest sample, evaluating
    /// what that makes final and firing `absent` rules whose silence has lasted. Call it
    /// periodically in live operation; it does nothing when idle advance is off.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<IncidentTransition>) {
        if self.idle_advance {
            self.advance(
                |state, _| state.watermark.map(|w| w + (now_ms - state.seen_at).max(0)),
                out,
            );
        }
    }

    /// Treats event time as having reached `at` for every series (the end of a replay).
    pub fn finish(&mut self, at: DateTime<Utc>, out: &mut Vec<IncidentTransition>) {
        let at = at.timestamp_millis();
        self.advance(
            |state, _| Some(state.watermark.map_or(at, |w| w.max(at))),
            out,
        );
    }

    /// Makes every point at or before `at` final, as if each series' samples had gone on for
    /// its rule's lateness (the end of a replay whose samples end at `at`).
    pub fn close_through(&mut self, at: DateTime<Utc>, out: &mut Vec<IncidentTransition>) {
        let at = at.timestamp_millis();
        self.advance(
            |state, lateness| {
                let through = at.saturating_add(lateness);
                Some(state.watermark.map_or(through, |w| w.max(through)))
            },
            out,
        );
    }

    fn advance(
        &mut self,
        watermark: impl Fn(&RuleState, i64) -> Option<i64>,
        out: &mut Vec<IncidentTransition>,
    ) {
        let Engine {
            rules,
            series,
            dirty,
            allowed_lateness,
            source,
            warm_up_since,
            ..
        } = self;
        for (sid, series) in series.iter_mut().enumerate() {
            let info = SeriesInfo {
                key: &series.key,
                service_id: &series.service_id,
                metric_type: &series.metric_type,
                labels: &series.labels,
            };
            for (i, state) in series.states.iter_mut().enumerate() {
                let rule = &rules[state.slot];
                let lateness = rule.lateness(*allowed_lateness);
                let Some(watermark) = watermark(state, lateness) else {
                    continue;
                };
                if !rule.enabled || rule.judges_single_samples() {
                    continue;
                }
                let mut ctx = Step {
                    rule,
                    info: &info,
                    source: *source,
                    out: &mut *out,
                    guided: false,
                    rebuild_from: None,
                    warm_up_since: *warm_up_since,
                };
                let frontier = watermark - lateness;
                let was_dirty = state.dirty;
                match rule.kind {
                    RuleKind::Absent => drain_absent(state, frontier, &mut ctx),
                    RuleKind::Threshold => drain(state, frontier, &mut ctx),
                }
                if state.dirty && !was_dirty {
                    dirty.push((sid as u32, i as u32));
                }
            }
        }
    }

    /// Emits one `updated` transition for every open incident that changed since the last
    /// flush. Call it after each batch.
    pub fn flush(&mut self, out: &mut Vec<IncidentTransition>) {
        for (sid, i) in self.dirty.drain(..) {
            let Some(state) = self
                .series
                .get_mut(sid as usize)
                .and_then(|s| s.states.get_mut(i as usize))
            else {
                continue;
            };
            if !std::mem::take(&mut state.dirty) {
                continue;
            }
            if let Phase::Firing { incident, .. } = &state.phase {
                out.push(IncidentTransition {
                    kind: TransitionKind::Updated,
                    at: incident.last_violation_at,
                    incident: (**incident).clone(),
                });
            }
        }
    }

    /// The series index of a sample, creating the series (and its rule states) on first sight.
    fn intern(&mut self, sample: &MetricSample) -> u32 {
        let mut hasher = FxHasher::default();
        sample.metric_type.hash(&mut hasher);
        sample.service_id.hash(&mut hasher);
        sample.labels.hash(&mut hasher);
        let hash = hasher.finish();
        if let Some(candidates) = self.index.get(&hash) {
            for &sid in candidates {
                let s = &self.series[sid as usize];
                if s.metric_type == sample.metric_type
                    && s.service_id == sample.service_id
                    && s.labels == sample.labels
                {
                    return sid;
                }
            }
        }
        let key = sample.series_key();
        let mut states = Vec::new();
        for (slot, rule) in self.rules.iter().enumerate() {
            if rule.selects(&sample.service_id, &sample.metric_type, &sample.labels) {
                states.push(new_state(
                    rule,
                    slot,
                    &key,
                    &mut self.restores,
                    self.guided_floor,
                ));
            }
        }
        let sid = self.series.len() as u32;
        self.series.push(Series {
            key,
            service_id: sample.service_id.clone(),
            metric_type: sample.metric_type.clone(),
            labels: sample.labels.clone(),
            states,
        });
        self.index.entry(hash).or_default().push(sid);
        sid
    }
}

fn new_state(
    rule: &Rule,
    slot: usize,
    series_key: &str,
    restores: &mut FxHashMap<(Uuid, String), Restore>,
    guided_floor: u64,
) -> RuleState {
    let mut state = RuleState {
        rule: rule.id,
        slot,
        phase: Phase::Ok,
        window: Window::default(),
        last_point: None,
        watermark: None,
        seen_at: 0,
        applied_seq: 0,
        guided: (guided_floor > 0).then(|| {
            Box::new(Guided {
                until: guided_floor,
                episodes: Vec::new(),
                through: None,
            })
        }),
        last_resolved_at: None,
        dirty: false,
    };
    let Some(restore) = restores.remove(&(rule.id, series_key.to_owned())) else {
        return state;
    };
    let guided = state.guided.get_or_insert_with(|| {
        Box::new(Guided {
            until: 0,
            episodes: Vec::new(),
            through: None,
        })
    });
    guided.until = guided.until.max(restore.applied_seq);
    state.applied_seq = restore.applied_seq;
    state.last_resolved_at = restore.resolved_at;
    state.last_point = restore.resolved_at;
    let mut incidents = restore.incidents;
    incidents.sort_by_key(|i| i.opened_at);
    for mut incident in incidents {
        incident.auto_resolve = rule.auto_resolve;
        let episode = Episode {
            opened: incident.opened_at.timestamp_millis(),
            resolved: incident.resolved_at.map(|r| r.timestamp_millis()),
            incident: Box::new(incident),
        };
        if episode.resolved.is_none() {
            // Open: it continues, and its violations so far are counted.
            let last = episode.incident.last_violation_at.timestamp_millis();
            state.last_point = Some(state.last_point.map_or(last, |p| p.max(last)));
            state.phase = Phase::Firing {
                incident: episode.incident.clone(),
                clear_since: None,
            };
        }
        let evaluated = episode
            .resolved
            .unwrap_or(episode.incident.last_violation_at.timestamp_millis());
        guided.through = Some(guided.through.map_or(evaluated, |t| t.max(evaluated)));
        guided.episodes.push(episode);
    }
    // With a re-read ahead, points are evaluated again (guided) from the start.
    if guided.until > 0 {
        state.last_point = None;
    }
    state
}

/// Everything a state transition needs besides the state.
struct Step<'a> {
    rule: &'a Rule,
    info: &'a SeriesInfo<'a>,
    source: Source,
    out: &'a mut Vec<IncidentTransition>,
    /// Re-reading samples a previous process applied: rebuild, emit nothing.
    guided: bool,
    rebuild_from: Option<i64>,
    warm_up_since: Option<i64>,
}

/// Evaluates every point of the window up to `frontier`.
fn drain(state: &mut RuleState, frontier: i64, ctx: &mut Step) {
    let (width, aggregation) = (ctx.rule.window.millis(), ctx.rule.aggregation);
    while let Some(point) = state.window.next_point(frontier) {
        state.window.slide_to(point, width, aggregation);
        state.last_point = Some(point);
        let value = state.window.value(aggregation);
        step(state, point, value, ctx);
    }
}

/// One evaluation of a threshold rule at `point`.
fn step(state: &mut RuleState, point: i64, value: Option<f64>, ctx: &mut Step) {
    if ctx.guided || state.guided.as_ref().is_some_and(|g| g.covers(point)) {
        guided_step(state, point, value, ctx);
        return;
    }
    let rule = ctx.rule;
    if ctx
        .warm_up_since
        .is_some_and(|since| point < since + rule.window.millis())
    {
        return; // a replay's window is not full yet
    }
    let violating = value.is_some_and(|v| rule.violated_by(v));
    match &mut state.phase {
        Phase::Ok | Phase::Pending { .. } if !violating => state.phase = Phase::Ok,
        Phase::Ok if rule.pending_for.is_zero() => open(state, point, point, value, ctx),
        Phase::Ok => state.phase = Phase::Pending { since: point },
        Phase::Pending { since } => {
            let since = *since;
            if point - since >= rule.pending_for.millis() {
                open(state, since, point, value, ctx);
            }
        }
        Phase::Firing {
            incident,
            clear_since,
        } => {
            if violating {
                let v = value.expect("a violation has a value");
                incident.last_value = v;
                incident.peak_value = worse(incident.operator, incident.peak_value, v);
                incident.violation_count += 1;
                incident.last_violation_at = at(point);
                incident.last_sample_seq = state.applied_seq;
                *clear_since = None;
                state.dirty = true;
            } else if value.is_none_or(|v| rule.cleared_by(v)) {
                let since = *clear_since.get_or_insert(point);
                if point - since >= rule.clear_for.millis() {
                    resolve(state, point, value, ctx);
                }
            } else {
                *clear_since = None;
            }
        }
    }
}

/// The restored incident that was open at `point`, if any.
#[cold]
fn firing_episode(state: &RuleState, point: i64) -> Option<Box<IncidentSnapshot>> {
    let guided = state.guided.as_ref()?;
    guided
        .episodes
        .iter()
        .find(|e| e.opened <= point && e.resolved.is_none_or(|r| point < r))
        .map(|e| e.incident.clone())
}

/// An evaluation of a point a previous process already evaluated: whether the rule was firing
/// comes from its incidents; pending and clearing progress are rebuilt; nothing is emitted.
#[cold]
fn guided_step(state: &mut RuleState, point: i64, value: Option<f64>, ctx: &Step) {
    let rule = ctx.rule;
    if ctx
        .rebuild_from
        .is_some_and(|from| point < from + rule.window.millis())
    {
        return; // the window is not full yet
    }
    let violating = value.is_some_and(|v| rule.violated_by(v));
    let firing = firing_episode(state, point);
    match firing {
        Some(episode) => {
            let clearing = !violating && value.is_none_or(|v| rule.cleared_by(v));
            match &mut state.phase {
                Phase::Firing {
                    incident,
                    clear_since,
                } if incident.id == episode.id => {
                    *clear_since = if clearing {
                        Some(clear_since.unwrap_or(point))
                    } else {
                        None
                    };
                }
                _ => {
                    state.phase = Phase::Firing {
                        incident: episode,
                        clear_since: clearing.then_some(point),
                    }
                }
            }
        }
        None => match state.phase {
            Phase::Pending { .. } if violating => {}
            _ if violating => state.phase = Phase::Pending { since: point },
            _ => state.phase = Phase::Ok,
        },
    }
}

#[cold]
fn open(state: &mut RuleState, episode_start: i64, point: i64, value: Option<f64>, ctx: &mut Step) {
    // A new episode cannot start at or before the last resolution: it would reuse its id.
    if state.last_resolved_at.is_some_and(|r| episode_start <= r) {
        state.phase = Phase::Ok;
        return;
    }
    let rule = ctx.rule;
    let value = value.unwrap_or_default();
    let incident = IncidentSnapshot {
        id: incident_id(rule.id, ctx.info.key, at(episode_start)),
        rule_id: rule.id,
        rule_name: rule.name.clone(),
        service_id: ctx.info.service_id.to_owned(),
        metric_type: ctx.info.metric_type.to_owned(),
        series_key: ctx.info.key.to_owned(),
        labels: ctx.info.labels.clone(),
        department_id: rule.department_id,
        severity: rule.severity,
        operator: rule.operator,
        threshold: rule.threshold,
        message: message(rule, ctx.info, value),
        value,
        peak_value: value,
        last_value: value,
        violation_count: 1,
        opened_at: at(point),
        last_violation_at: at(point),
        resolved_at: None,
        source: ctx.source,
        last_sample_seq: state.applied_seq,
        auto_resolve: rule.auto_resolve,
    };
    ctx.out.push(IncidentTransition {
        kind: TransitionKind::Opened,
        at: at(point),
        incident: incident.clone(),
    });
    state.phase = Phase::Firing {
        incident: Box::new(incident),
        clear_since: None,
    };
    state.dirty = false;
}

#[cold]
fn resolve(state: &mut RuleState, point: i64, value: Option<f64>, ctx: &mut Step) {
    let Phase::Firing { mut incident, .. } = std::mem::replace(&mut state.phase, Phase::Ok) else {
        return;
    };
    if let Some(v) = value {
        incident.last_value = v;
    }
    incident.resolved_at = Some(at(point));
    incident.last_sample_seq = state.applied_seq;
    state.last_resolved_at = Some(point);
    state.dirty = false;
    ctx.out.push(IncidentTransition {
        kind: TransitionKind::Resolved,
        at: at(point),
        incident: *incident,
    });
}

/// Judges an `absent` rule's series up to `frontier`: each final sample ends any silence before
/// it (opening and resolving an incident for a gap longer than the window), and a silence still
/// running at the frontier fires once it has lasted the window.
fn drain_absent(state: &mut RuleState, frontier: i64, ctx: &mut Step) {
    let width = ctx.rule.window.millis();
    while let Some(point) = state.window.next_point(frontier) {
        state.window.slide_to(point, 0, schemas::Aggregation::Last);
        if ctx.guided || state.guided.as_ref().is_some_and(|g| g.covers(point)) {
            // Whether it was firing comes from the incidents.
            state.phase = match firing_episode(state, point) {
                Some(incident) => Phase::Firing {
                    incident,
                    clear_since: None,
                },
                None => Phase::Ok,
            };
        } else {
            if let (Some(last), Phase::Ok) = (state.last_point, &state.phase) {
                if point - last > width {
                    open_silence(state, last, ctx);
                }
            }
            if let Phase::Firing { incident, .. } = &state.phase {
                if point > incident.opened_at.timestamp_millis() {
                    let silence = state
                        .last_point
                        .map_or(0.0, |l| (point - l) as f64 / 1000.0);
                    resolve(state, point, Some(silence), ctx);
                }
            }
        }
        state.last_point = Some(point);
    }
    if let (Some(last), Phase::Ok, false) = (state.last_point, &state.phase, ctx.guided) {
        if frontier >= last + width {
            open_silence(state, last, ctx);
        }
    }
}

#[cold]
fn open_silence(state: &mut RuleState, last: i64, ctx: &mut Step) {
    let width = ctx.rule.window.millis();
    let at = last + width;
    if state.guided.as_ref().is_some_and(|g| g.covers(at)) {
        // Fired before the restart: continue the restored incident.
        if let Some(incident) = firing_episode(state, at) {
            state.phase = Phase::Firing {
                incident,
                clear_since: None,
            };
        }
        return;
    }
    open(state, at, at, Some(width as f64 / 1000.0), ctx);
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .expect("event times are within chrono's range")
}

/// The peak is the value furthest past the threshold: the lowest for `<` rules, else the highest.
fn worse(operator: Operator, a: f64, b: f64) -> f64 {
    match operator {
        Operator::Lt | Operator::Le => a.min(b),
        _ => a.max(b),
    }
}

fn message(rule: &Rule, series: &SeriesInfo, value: f64) -> String {
    let subject = match (rule.kind, rule.window.is_zero(), rule.aggregation) {
        (RuleKind::Absent, ..) => {
            format!(
                "no {} samples for {} on {}",
                series.metric_type, rule.window, series.service_id
            )
        }
        (_, true, schemas::Aggregation::Last) => format!(
            "{} {} {} {} on {}",
            series.metric_type, value, rule.operator, rule.threshold, series.service_id
        ),
        (_, _, aggregation) => format!(
            "{aggregation}({} over {}) {} {} {} on {}",
            series.metric_type,
            rule.window,
            value,
            rule.operator,
            rule.threshold,
            series.service_id
        ),
    };
    if series.labels.is_empty() {
        return subject;
    }
    let labels: Vec<String> = series
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{subject} ({})", labels.join(", "))
}

#[cfg(test)]
mod tests;
