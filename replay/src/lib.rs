//! Replaying METRICS through the engine in backfill mode.
//!
//! A replay reads a range of METRICS with its own ordered consumer (never the live durable
//! one), feeds the samples of the chosen rules' series to an engine that marks its incidents
//! `source = backfill` and takes each sample's stored time as its processing clock, as the live
//! evaluator saw it, and collects the incidents that would have opened. A backtest stops there; a backfill ([`apply`]) publishes them to INCIDENTS like
//! live transitions, with the same deterministic ids, so `record`, `index` and (when asked)
//! `notify` treat them like any other.

pub mod apply;
pub mod backfill;
pub mod bound;
pub mod plan;
pub mod rules;
pub mod run;
pub mod scan;

pub use bound::Bound;
pub use plan::{Plan, RangeError};
pub use run::{Outcome, Progress, Replay, WouldBe};
