//! The durable JetStream consumers and their plumbing.
//!
//! - [`topology`]: the declarative stream and consumer layout from `nats/topology.toml`,
//!   applied idempotently at start-up.
//! - [`jetstream`]: what every consumer shares: the [`jetstream::Outcome`] of handling a
//!   message, mapping it to an ack, dead-lettering and batching.
//! - [`evaluate`]: METRICS → rules engine → INCIDENTS.
//! - [`archive`]: METRICS → Postgres raw samples and per-minute rollups.
//! - [`record`]: INCIDENTS → Postgres incidents and timeline.
//! - [`index`]: INCIDENTS → the Meilisearch index of incidents, from their current rows.
//! - [`notify`]: INCIDENTS → in-app notifications, webhooks and Slack, with silences and a
//!   delivery log.
//! - [`lag`]: consumer backlog and database pool gauges.
//! - [`rules`]: keeps the evaluator's rule set current by listening to Postgres.
//! - [`outbox`]: relays changes made over the API from the Postgres outbox to INCIDENTS.
//! - [`announce`]: tells dashboards what just changed, over core NATS.

pub mod announce;
pub mod archive;
pub mod error;
pub mod evaluate;
pub mod index;
pub mod jetstream;
pub mod lag;
pub mod notify;
pub mod outbox;
pub mod record;
pub mod rules;
pub mod telemetry;
pub mod topology;

pub use topology::Topology;
