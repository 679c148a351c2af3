//! Notification events on incident timelines: one per attempt, suppression or in-app
//! notification, each with a readable `summary` such as "notified Network via webhook".

use serde_json::{json, Value};
use store::channels::Channel;
use store::events::{NewEvent, NOTIFIER_ACTOR};
use uuid::Uuid;

pub const NOTIFIED: &str = "NOTIFIED";
pub const FAILED: &str = "NOTIFICATION_FAILED";
pub const SUPPRESSED: &str = "NOTIFICATION_SUPPRESSED";

pub struct Entry<'a> {
    pub kind: &'static str,
    pub delivery_id: Uuid,
    pub incident_id: Uuid,
    /// The attempt number; 0 for a suppression.
    pub attempt: i32,
    pub channel: &'a Channel,
    pub department: &'a str,
    /// Kind-specific fields, merged with the channel's.
    pub data: Value,
}

/// Writes the entry once (its id is derived from the delivery, incident, attempt and kind),
/// and not at all for an incident that no longer exists.
pub async fn write<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    entry: Entry<'_>,
) -> Result<(), sqlx::Error> {
    let mut data = json!({
        "delivery_id": entry.delivery_id,
        "channel_id": entry.channel.id,
        "channel": entry.channel.name,
        "channel_type": entry.channel.kind.as_str(),
        "department_id": entry.channel.department_id,
        "department": entry.department,
        "attempt": entry.attempt,
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut data, entry.data) {
        base.extend(extra);
    }
    let id = Uuid::new_v5(
        &entry.delivery_id,
        format!("{}:{}:{}", entry.incident_id, entry.attempt, entry.kind).as_bytes(),
    );
    store::events::insert_if_incident_exists(
        executor,
        &NewEvent {
            id,
            incident_id: entry.incident_id,
            kind: entry.kind,
            at: chrono::Utc::now(),
            actor: NOTIFIER_ACTOR,
            data,
        },
    )
    .await
}
