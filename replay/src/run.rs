//! Running the engine in backfill mode over a planned range.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use pipeline::{Engine, Rule};
use schemas::{IncidentSnapshot, IncidentTransition, MetricSample, Source, Span, TransitionKind};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::plan::Plan;
use crate::scan::{scan, Ended};

/// How often progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Samples between flushes of the engine's incident updates.
const FLUSH_EVERY: u64 = 8192;

/// What to replay.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The rules to run; each runs whether or not it is enabled live.
    pub rules: Vec<Rule>,
    /// Only these services, when any are given.
    pub services: Vec<String>,
    /// The live pipeline's allowed lateness, so windows close as they do live.
    pub allowed_lateness: Span,
}

/// How far a replay has got.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// First stream sequence read (0 before any).
    pub first_seq: u64,
    /// Stream sequence the replay ends at.
    pub end_seq: u64,
    /// Last stream sequence read.
    pub position: u64,
    /// Samples evaluated.
    pub samples: u64,
    /// Samples read but outside the range's event times.
    pub skipped: u64,
    /// Messages that are not valid samples (live, they are dead-lettered).
    pub rejected: u64,
    /// Samples dropped as later than the allowed lateness.
    pub late: u64,
    /// Incidents that would open, and resolve, so far.
    pub opened: u64,
    pub resolved: u64,
}

impl Progress {
    /// The share of the range read, from 0 to 1.
    pub fn fraction(&self) -> f64 {
        if self.first_seq == 0 || self.end_seq <= self.first_seq {
            return if self.position >= self.end_seq && self.position > 0 {
                1.0
            } else {
                0.0
            };
        }
        let done = self.position.saturating_sub(self.first_seq) + 1;
        (done as f64 / (self.end_seq - self.first_seq + 1) as f64).min(1.0)
    }
}

/// An incident the replay found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WouldBe {
    /// The transition that opened it, as the live pipeline would have published it.
    pub opened: IncidentTransition,
    /// Its state at the end of the replay.
    pub latest: IncidentSnapshot,
    /// The transition that resolved it, if it resolved within the range.
    pub resolved: Option<IncidentTransition>,
}

impl WouldBe {
    /// The transitions that write this incident as the replay ends: opened, its final state,
    /// resolved. Deterministic for a given range, whatever the batching.
    pub fn transitions(&self) -> Vec<IncidentTransition> {
        let mut out = vec![self.opened.clone()];
        if self.latest != self.opened.incident {
            out.push(IncidentTransition {
                kind: TransitionKind::Updated,
                at: self.latest.last_violation_at,
                incident: self.latest.clone(),
            });
        }
        out.extend(self.resolved.clone());
        out
    }
}

/// What a replay found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// By opening time, then id.
    pub incidents: Vec<WouldBe>,
    pub progress: Progress,
    pub ended: Ended,
}

/// What a replay tells its observer as it goes.
pub enum Event<'a> {
    /// A sample of the range, before the engine sees it.
    Sample(&'a MetricSample),
    Progress(&'a Progress),
}

impl Replay {
    fn engine(&self) -> Engine {
        let rules = self
            .rules
            .iter()
            .cloned()
            .map(|mut r| {
                r.enabled = true;
                r
            })
            .collect();
        let mut engine = Engine::with_source(rules, Source::Backfill);
        engine.set_allowed_lateness(self.allowed_lateness);
        engine
    }

    /// How far before `from` reading must start for the rules' windows and periods.
    pub fn lookback(&self) -> Span {
        self.engine().rebuild_lookback()
    }

    /// The METRICS subjects this replay reads.
    pub fn filter_subjects(&self) -> Vec<String> {
        crate::rules::filter_subjects(&self.rules, &self.services)
    }

    /// Reads the planned range through the engine. `observe` sees every sample in range and
    /// the progress; breaking from it ends the replay early ([`Ended::Stopped`]).
    pub async fn run(
        &self,
        js: &jetstream::Context,
        stream_name: &str,
        plan: &Plan,
        cancel: &CancellationToken,
        mut observe: impl FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> anyhow::Result<Outcome> {
        let mut engine = self.engine();
        if let Some(since) = plan.warm_up_since {
            engine.set_warm_up(since);
        }
        let mut found = Found::default();
        let mut progress = Progress {
            end_seq: plan.end_seq,
            ..Progress::default()
        };
        let mut newest: Option<DateTime<Utc>> = None;
        let mut out = Vec::new();
        let mut last_report = Instant::now();
        let filters = self.filter_subjects();
        let (tx, mut rx) = mpsc::channel(8);
        let reader = tokio::spawn({
            let (js, stream_name) = (js.clone(), stream_name.to_owned());
            let (plan, cancel) = (plan.clone(), cancel.clone());
            async move { scan(&js, &stream_name, &plan, &filters, &cancel, tx).await }
        });
        let mut stopped = false;
        'batches: while let Some(batch) = rx.recv().await {
            for (at, sample) in batch {
                let seq = at.seq;
                if progress.first_seq == 0 {
                    progress.first_seq = seq;
                }
                progress.position = seq;
                let in_range = match &sample {
                    Ok(s) => plan.samples_from.is_none_or(|from| s.recorded_at >= from),
                    Err(_) => false,
                };
                match sample {
                    Err(_) => progress.rejected += 1,
                    Ok(_) if !in_range => progress.skipped += 1,
                    Ok(sample) => {
                        if plan.warm_up_at_first_sample && progress.samples == 0 {
                            engine.set_warm_up(sample.recorded_at);
                        }
                        if observe(Event::Sample(&sample)).is_break() {
                            stopped = true;
                            break 'batches;
                        }
                        // The processing clock is when each sample was stored: the live
                        // evaluator saw it then, and idle series advance by it at the end.
                        engine.evaluate_at(&sample, seq, at.stored_ms, &mut out);
                        newest = newest.max(Some(sample.recorded_at));
                        progress.samples += 1;
                        if progress.samples % FLUSH_EVERY == 0 {
                            engine.flush(&mut out);
                        }
                        found.take(&mut out, &mut progress);
                    }
                }
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                progress.late += engine.take_late();
                if observe(Event::Progress(&progress)).is_break() {
                    stopped = true;
                    break;
                }
            }
        }
        drop(rx);
        let ended = match reader.await.context("the METRICS reader panicked")?? {
            _ if stopped => Ended::Stopped,
            ended => ended,
        };
        match ended {
            // At the end of the stream: what the live evaluator has made final by now, as
            // idle series advance by processing time, and no more.
            Ended::Complete => engine.tick(Utc::now().timestamp_millis(), &mut out),
            // Cut short: judge what was read.
            Ended::Stopped | Ended::Cancelled => {
                if let Some(newest) = newest {
                    engine.close_through(newest, &mut out);
                }
            }
        }
        engine.flush(&mut out);
        found.take(&mut out, &mut progress);
        progress.late += engine.take_late();
        if ended == Ended::Complete {
            progress.position = progress.position.max(plan.end_seq);
        }
        let _ = observe(Event::Progress(&progress));
        let mut incidents: Vec<WouldBe> = found
            .incidents
            .into_values()
            .filter(|w| {
                let (opened, resolved) = (w.latest.opened_at, w.latest.resolved_at);
                plan.report_from
                    .is_none_or(|from| resolved.is_none_or(|r| r >= from))
                    && plan.report_to.is_none_or(|to| opened <= to)
                    && plan
                        .report_to_seq
                        .is_none_or(|to| w.opened.incident.last_sample_seq <= to)
            })
            .collect();
        incidents.sort_by(|a, b| {
            (a.latest.opened_at, a.latest.id).cmp(&(b.latest.opened_at, b.latest.id))
        });
        Ok(Outcome {
            incidents,
            progress,
            ended,
        })
    }
}

#[derive(Default)]
struct Found {
    incidents: HashMap<Uuid, WouldBe>,
}

impl Found {
    fn take(&mut self, out: &mut Vec<IncidentTransition>, progress: &mut Progress) {
        for t in out.drain(..) {
            let id = t.incident.id;
            match t.kind {
                TransitionKind::Opened => {
                    progress.opened += 1;
                    self.incidents.insert(
                        id,
                        WouldBe {
                            latest: t.incident.clone(),
                            opened: t,
                            resolved: None,
                        },
                    );
                }
                TransitionKind::Updated => {
                    if let Some(w) = self.incidents.get_mut(&id) {
                        w.latest = t.incident;
                    }
                }
                TransitionKind::Resolved => {
                    if let Some(w) = self.incidents.get_mut(&id) {
                        progress.resolved += 1;
                        w.latest = t.incident.clone();
                        w.resolved = Some(t);
                    }
                }
            }
        }
    }
}
