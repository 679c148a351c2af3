//! The durable JetStream consumers and their plumbing.
//!
//! - [`topology`]: the declarative stream and consumer layout from `nats/topology.toml`,
//!   applied idempotently at start-up.
//! - [`jetstream`]: what every consumer shares: the [`jetstream::Outcome`] of handling a
//!   message, mapping it to an ack, dead-lettering and batching.
//! - [`evaluate`]: METRICS → rules engine → INCIDENTS.
//! - [`record`]: INCIDENTS → Postgres incidents and timeline.
//! - [`rules`]: keeps the evaluator's rule set current by listening to Postgres.
//! - [`outbox`]: relays changes made over the API from the Postgres outbox to INCIDENTS.

pub mod error;
pub mod evaluate;
pub mod jetstream;
pub mod outbox;
pub mod record;
pub mod rules;
pub mod telemetry;
pub mod topology;

pub use topology::Topology;
