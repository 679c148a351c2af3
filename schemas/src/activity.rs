//! Incident activity: what people change on an incident through the API (status, severity,
//! assignee, comments), as carried on `incidents.<service_id>.<kind>` next to the pipeline's
//! transitions. Each message mirrors one timeline event and carries that event's id, which is
//! also its `Nats-Msg-Id`, so a relayed message is stored once however often it is sent.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::incident::{string_enum, ParseEnumError};

string_enum!(
    /// What a person did to an incident; also the last token of the subject.
    ActivityKind {
        StatusChanged = "status_changed",
        SeverityChanged = "severity_changed",
        Assigned = "assigned",
        Commented = "commented",
        CommentDeleted = "comment_deleted",
    }
);

impl ActivityKind {
    /// The kind of the timeline event that records this activity in Postgres.
    pub fn event_kind(self) -> &'static str {
        match self {
            ActivityKind::StatusChanged => "STATUS_CHANGED",
            ActivityKind::SeverityChanged => "SEVERITY_CHANGED",
            ActivityKind::Assigned => "ASSIGNED",
            ActivityKind::Commented => "COMMENTED",
            ActivityKind::CommentDeleted => "COMMENT_DELETED",
        }
    }
}

/// One message on `incidents.<service_id>.<kind>` for a change made by a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentActivity {
    /// The id of the timeline event this message mirrors; also its `Nats-Msg-Id`.
    pub id: Uuid,
    pub incident_id: Uuid,
    pub service_id: String,
    pub kind: ActivityKind,
    /// Who made the change, such as `key:ops-laptop`.
    pub actor: String,
    /// When the change was committed.
    pub at: DateTime<Utc>,
    /// The value before a status, severity or assignee change; `None` for no assignee.
    #[serde(default)]
    pub from: Option<String>,
    /// The value after a status, severity or assignee change; `None` when unassigned.
    #[serde(default)]
    pub to: Option<String>,
    /// The comment added or deleted.
    #[serde(default)]
    pub comment_id: Option<Uuid>,
    /// The text of an added comment.
    #[serde(default)]
    pub body: Option<String>,
}

/// Why an activity message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed incident activity: {0}")]
pub struct ActivityDecodeError(pub String);

impl IncidentActivity {
    pub fn subject(&self) -> String {
        crate::subject::incidents_subject(&self.service_id, self.kind.as_str())
    }

    /// The `Nats-Msg-Id`: the timeline event's id.
    pub fn message_id(&self) -> String {
        self.id.to_string()
    }

    /// A MessagePack map keyed by field names, with ids as UUID text so that a reader in any
    /// language needs no binary conversion.
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut serializer = rmp_serde::Serializer::new(&mut bytes)
            .with_struct_map()
            .with_human_readable();
        self.serialize(&mut serializer)
            .expect("activities always serialize");
        bytes
    }

    /// Decodes a message; ids may be UUID text or 16-byte binary.
    pub fn from_msgpack(bytes: &[u8]) -> Result<IncidentActivity, ActivityDecodeError> {
        let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
        IncidentActivity::deserialize(&mut deserializer)
            .map_err(|e| ActivityDecodeError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(kind: ActivityKind) -> IncidentActivity {
        IncidentActivity {
            id: Uuid::from_u128(1),
            incident_id: Uuid::from_u128(2),
            service_id: "S1".into(),
            kind,
            actor: "key:ops".into(),
            at: "2026-03-12T09:00:00Z".parse().unwrap(),
            from: Some("OPEN".into()),
            to: Some("IN_PROGRESS".into()),
            comment_id: None,
            body: None,
        }
    }

    #[test]
    fn round_trips_as_a_named_map_on_its_kinds_subject() {
        for kind in ActivityKind::ALL {
            let a = activity(*kind);
            let bytes = a.to_msgpack();
            assert_eq!(IncidentActivity::from_msgpack(&bytes).unwrap(), a);
            assert_eq!(a.subject(), format!("incidents.S1.{kind}"));
        }
        // A map keyed by names, readable without this struct.
        let value: serde_json::Value =
            rmp_serde::from_slice(&activity(ActivityKind::Assigned).to_msgpack()).unwrap();
        assert_eq!(value["kind"], "assigned");
        assert_eq!(value["actor"], "key:ops");
        assert_eq!(value["to"], "IN_PROGRESS");
        assert_eq!(value["id"], "00000000-0000-0000-0000-000000000001");
    }

    #[test]
    fn absent_optional_fields_decode_as_none() {
        let bytes = rmp_serde::to_vec_named(&serde_json::json!({
            "id": Uuid::from_u128(1), "incident_id": Uuid::from_u128(2), "service_id": "S1",
            "kind": "commented", "actor": "key:ops", "at": "2026-03-12T09:00:00Z",
        }))
        .unwrap();
        let a = IncidentActivity::from_msgpack(&bytes).unwrap();
        assert_eq!(
            (a.from, a.to, a.comment_id, a.body),
            (None, None, None, None)
        );
    }

    #[test]
    fn a_transition_is_not_an_activity() {
        assert!(IncidentActivity::from_msgpack(&[0x81, 0xa1, b'x', 0x01]).is_err());
    }
}
