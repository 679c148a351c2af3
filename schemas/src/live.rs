//! Live announcements: core NATS messages, kept in no stream, that tell dashboards something
//! changed once the change is in Postgres. They are JSON on `tracely.live.…` subjects.
//!
//! They are best effort by design. A missed announcement only delays a refresh, because every
//! dashboard refetches what it shows whenever its event stream (re)connects. Nothing that must
//! not be lost travels this way.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every live subject starts with this.
pub const PREFIX: &str = "tracely.live";
/// `tracely.live.incidents.<service_id>`: an incident's row changed.
pub const INCIDENTS: &str = "tracely.live.incidents";
/// `tracely.live.notifications`: an in-app notification was created.
pub const NOTIFICATIONS: &str = "tracely.live.notifications";
/// `tracely.live.rules`: a rule was created, changed or deleted.
pub const RULES: &str = "tracely.live.rules";
/// `tracely.live.services`: a service was registered, on first sight of a sample.
pub const SERVICES: &str = "tracely.live.services";

/// An incident's row changed. `kind` is a transition (`opened`, `updated`, `resolved`) or an
/// activity (`status_changed`, `commented`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentChanged {
    pub id: Uuid,
    pub service_id: String,
    pub kind: String,
}

impl IncidentChanged {
    pub fn subject(&self) -> String {
        format!("{INCIDENTS}.{}", self.service_id)
    }
}

/// An in-app notification was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotificationCreated {
    pub id: Uuid,
    pub department_id: Option<Uuid>,
    pub incident_id: Option<Uuid>,
}

/// A service was registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceRegistered {
    pub id: String,
}

/// What happened to a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleChange {
    Created,
    Updated,
    Deleted,
}

/// A rule was created, changed or deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleChanged {
    pub id: Uuid,
    pub change: RuleChange,
}

/// The announcement as its JSON body.
pub fn encode<T: Serialize>(announcement: &T) -> Vec<u8> {
    serde_json::to_vec(announcement).expect("announcements are plain data")
}
