//! Notification fan-out, in two durable consumers.
//!
//! - `notify` reads incident transitions and people's status changes from INCIDENTS, routes each
//!   to the channels of the departments that hear about it, applies severity filters and
//!   silences, and records what each channel is to be told (a delivery) in Postgres. In-app
//!   notifications are written right there; webhook and Slack deliveries become jobs on the
//!   DELIVERIES stream.
//! - `deliver` sends those jobs, concurrently and with bounded timeouts, so one slow or failing
//!   target never holds up another. Failures are retried with delayed NAKs; after the last
//!   attempt the job is dead-lettered and the delivery recorded as failed.

use std::time::Duration;

use store::targets::TargetPolicy;

/// How notifications are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Which URLs channels may call.
    pub targets: TargetPolicy,
    /// Longest a webhook or Slack request may take, connecting included.
    pub timeout: Duration,
    /// Attempts per delivery before it is dead-lettered and recorded as failed.
    pub max_attempts: u32,
}

impl Default for NotifyConfig {
    fn default() -> NotifyConfig {
        NotifyConfig {
            targets: TargetPolicy::default(),
            timeout: Duration::from_secs(10),
            max_attempts: 10,
        }
    }
}

pub mod deliver;
pub mod fanout;
pub mod payload;
pub mod send;
pub mod timeline;
