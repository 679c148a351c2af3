//! What notifications say: the versioned JSON body of webhooks, Slack's message format, in-app
//! titles, and the signature. The webhook body is a public contract, documented in the README;
//! fields may be added within a version but never renamed, retyped or removed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use store::incidents::IncidentRecord;
use uuid::Uuid;

/// The version of the webhook body; bumped only for changes that could break a receiver.
pub const VERSION: u32 = 1;

/// The header carrying `sha256=<hex>`: HMAC-SHA256 of the exact body with the channel secret.
pub const SIGNATURE_HEADER: &str = "X-Tracely-Signature";
/// The same on every attempt to send one delivery.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Which attempt this is, from 1.
pub const ATTEMPT_HEADER: &str = "X-Tracely-Attempt";

/// What happened, as a notification tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The pipeline opened the incident.
    Opened,
    /// The condition stopped holding.
    Resolved,
    /// A person changed the status.
    StatusChanged,
    /// The incident is still open after the channel's repeat interval.
    Reminder,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Resolved => "resolved",
            EventKind::StatusChanged => "status_changed",
            EventKind::Reminder => "reminder",
        }
    }
}

/// One transition of one incident: an entry of the body's `events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// When it happened: event time for the pipeline's transitions, commit time for people's.
    pub at: DateTime<Utc>,
    /// `pipeline`, `notifier` for reminders, or the API key that made the change.
    pub actor: String,
    /// For `status_changed`: the status before and after.
    pub from: Option<String>,
    pub to: Option<String>,
    pub incident: Incident,
}

/// The incident as a notification shows it, at the moment of the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: Uuid,
    pub service_id: String,
    pub rule_id: Uuid,
    pub rule_name: String,
    pub metric_type: String,
    pub labels: BTreeMap<String, String>,
    pub department_id: Option<Uuid>,
    pub severity: String,
    pub status: String,
    pub message: String,
    pub operator: String,
    pub threshold: f64,
    /// The value that opened it.
    pub value: f64,
    pub peak_value: f64,
    pub last_value: f64,
    pub violation_count: i64,
    pub opened_at: DateTime<Utc>,
    pub last_violation_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub assignee: Option<String>,
    /// `live` or `backfill`.
    pub source: String,
}

impl Incident {
    pub fn from_record(r: &IncidentRecord) -> Incident {
        Incident {
            id: r.id,
            service_id: r.service_id.clone(),
            rule_id: r.rule_id,
            rule_name: r.rule_name.clone(),
            metric_type: r.metric_type.clone(),
            labels: r.labels.0.clone(),
            department_id: r.department_id,
            severity: r.severity.to_string(),
            status: r.status.to_string(),
            message: r.message.clone(),
            operator: r.operator.to_string(),
            threshold: r.threshold,
            value: r.value,
            peak_value: r.peak_value,
            last_value: r.last_value,
            violation_count: r.violation_count,
            opened_at: r.opened_at,
            last_violation_at: r.last_violation_at,
            resolved_at: r.resolved_at,
            closed_at: r.closed_at,
            assignee: r.assignee.clone(),
            source: r.source.to_string(),
        }
    }

    /// Takes the engine's figures from a transition, which may be newer than the row read.
    pub fn merge_snapshot(&mut self, s: &schemas::IncidentSnapshot) {
        self.peak_value = s.peak_value;
        self.last_value = s.last_value;
        self.violation_count = self
            .violation_count
            .max(i64::try_from(s.violation_count).unwrap_or(i64::MAX));
        self.last_violation_at = self.last_violation_at.max(s.last_violation_at);
        self.resolved_at = self.resolved_at.or(s.resolved_at);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Named {
    pub id: Option<Uuid>,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRef {
    pub id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The webhook body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    pub version: u32,
    /// The delivery id; also the `Idempotency-Key` header.
    pub id: Uuid,
    pub channel: ChannelRef,
    pub department: Named,
    pub service_id: String,
    /// One entry, or several when the channel groups transitions, oldest first.
    pub events: Vec<Event>,
}

/// A one-line summary, as in-app titles and Slack lines show it.
pub fn headline(event: &Event) -> String {
    let i = &event.incident;
    let what = match event.kind {
        EventKind::Opened => "opened".to_owned(),
        EventKind::Resolved => "resolved".to_owned(),
        EventKind::Reminder => "still open".to_owned(),
        EventKind::StatusChanged => format!(
            "{} → {}",
            event.from.as_deref().unwrap_or("?"),
            event.to.as_deref().unwrap_or("?")
        ),
    };
    format!(
        "[{}] {} {}: {} {} {}",
        i.severity, i.service_id, what, i.metric_type, i.operator, i.threshold
    )
}

/// The longer text under a headline.
pub fn detail(event: &Event) -> String {
    let i = &event.incident;
    let mut text = format!(
        "{} (rule {}; value {}, peak {})",
        i.message, i.rule_name, i.value, i.peak_value
    );
    if event.kind == EventKind::StatusChanged {
        text.push_str(&format!("; changed by {}", event.actor));
    }
    text
}

/// Slack's incoming-webhook message: `text` for notifications, plus one section per event.
pub fn slack_message(body: &Body) -> serde_json::Value {
    let text = match body.events.as_slice() {
        [one] => headline(one),
        many => format!("{} updates for {}", many.len(), body.service_id),
    };
    let section = |text: String| {
        serde_json::json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": text.chars().take(SLACK_TEXT_MAX).collect::<String>() },
        })
    };
    let mut blocks: Vec<serde_json::Value> = body
        .events
        .iter()
        .take(SLACK_BLOCKS_MAX - 1)
        .map(|e| {
            section(format!(
                "*{}*\n{}",
                escape_slack(&headline(e)),
                escape_slack(&detail(e))
            ))
        })
        .collect();
    let left = body.events.len().saturating_sub(SLACK_BLOCKS_MAX - 1);
    if left > 0 {
        blocks.push(section(format!("…and {left} more")));
    }
    serde_json::json!({ "text": text, "blocks": blocks })
}

/// Slack refuses messages with more blocks than this, or section text longer than that.
const SLACK_BLOCKS_MAX: usize = 50;
const SLACK_TEXT_MAX: usize = 3000;

/// Slack treats `&`, `<` and `>` as control characters in message text.
fn escape_slack(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `sha256=<hex>` of the body with the secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + digest.len() * 2);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
