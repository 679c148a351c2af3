//! The pure evaluation engine. [`rule`] is the rule model and its validation, [`identity`]
//! derives deterministic incident ids, and [`engine`] holds per-(rule, series) episode state and
//! turns samples into incident transitions.
//!
//! Nothing here does IO or awaits: callers hand in a sample with its stream sequence and get
//! decisions back, so the same engine serves the live consumer, replays and benchmarks.

pub mod engine;
pub mod identity;
pub mod rule;
pub mod window;

pub use engine::Engine;
pub use rule::Rule;
