//! People's workflow on an incident. [`plan`] decides what a patch changes (status moves OPEN →
//! IN_PROGRESS → CLOSED, OPEN → CLOSED, and CLOSED → OPEN to reopen) and which timestamps
//! follow; [`record`] writes one change as a timeline event plus the outbox message that
//! announces it on INCIDENTS, in the caller's transaction, so the change, its history and its
//! announcement commit together or not at all.

use chrono::{DateTime, Utc};
use schemas::{ActivityKind, IncidentActivity, IncidentStatus, Severity};
use serde_json::json;
use sqlx::PgConnection;
use store::events::NewEvent;
use store::incidents::{IncidentRecord, Work};
use uuid::Uuid;

use crate::error::ApiError;

/// A validated patch: `None` leaves a field as it is; `Some(None)` unassigns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub status: Option<IncidentStatus>,
    pub severity: Option<Severity>,
    pub assignee: Option<Option<String>>,
}

/// One field that actually changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    pub kind: ActivityKind,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The incident's fields after `change` at `now`, and what changed. Setting a field to its
/// current value changes nothing. Fails with a conflict naming both statuses when the status
/// cannot move that way; then nothing changes at all.
pub fn plan(
    current: &IncidentRecord,
    change: &Change,
    now: DateTime<Utc>,
) -> Result<(Work, Vec<Changed>), ApiError> {
    let mut work = Work::of(current);
    let mut changed = Vec::new();
    if let Some(to) = change.status.filter(|s| *s != current.status) {
        let from = current.status;
        if !from.can_become(to) {
            return Err(ApiError::Conflict(format!(
                "the status cannot change from {from} to {to}; allowed moves are OPEN → \
                 IN_PROGRESS → CLOSED, OPEN → CLOSED and CLOSED → OPEN"
            )));
        }
        work.status = to;
        if from == IncidentStatus::Open {
            work.acknowledged_at.get_or_insert(now);
        }
        match to {
            IncidentStatus::InProgress => {
                work.in_progress_at.get_or_insert(now);
            }
            IncidentStatus::Closed => work.closed_at = Some(now),
            IncidentStatus::Open => work.closed_at = None,
        }
        changed.push(Changed {
            kind: ActivityKind::StatusChanged,
            from: Some(from.to_string()),
            to: Some(to.to_string()),
        });
    }
    if let Some(to) = change.severity.filter(|s| *s != current.severity) {
        work.severity = to;
        changed.push(Changed {
            kind: ActivityKind::SeverityChanged,
            from: Some(current.severity.to_string()),
            to: Some(to.to_string()),
        });
    }
    if let Some(to) = change.assignee.as_ref().filter(|a| **a != current.assignee) {
        work.assignee = to.clone();
        changed.push(Changed {
            kind: ActivityKind::Assigned,
            from: current.assignee.clone(),
            to: to.clone(),
        });
    }
    Ok((work, changed))
}

/// A comment added or deleted, for [`record`].
#[derive(Debug, Clone, Copy)]
pub struct CommentRef<'a> {
    pub id: Uuid,
    /// The text of an added comment; `None` for a deletion.
    pub body: Option<&'a str>,
}

/// What one activity records, besides the incident it happened to.
pub struct Activity<'a> {
    pub kind: ActivityKind,
    pub actor: &'a str,
    pub at: DateTime<Utc>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub comment: Option<CommentRef<'a>>,
}

/// Adds the timeline event and its outbox message in `tx`. Fails when the database does.
pub async fn record(
    tx: &mut PgConnection,
    incident: &IncidentRecord,
    activity: Activity<'_>,
) -> Result<(), sqlx::Error> {
    let message = IncidentActivity {
        id: Uuid::new_v4(),
        incident_id: incident.id,
        service_id: incident.service_id.clone(),
        kind: activity.kind,
        actor: activity.actor.to_owned(),
        at: activity.at,
        from: activity.from,
        to: activity.to,
        comment_id: activity.comment.map(|c| c.id),
        body: activity.comment.and_then(|c| c.body).map(str::to_owned),
    };
    let data = match activity.comment {
        Some(CommentRef {
            id,
            body: Some(body),
        }) => json!({ "comment_id": id, "body": body }),
        Some(CommentRef { id, body: None }) => json!({ "comment_id": id }),
        None => json!({ "from": message.from, "to": message.to }),
    };
    let event = NewEvent {
        id: message.id,
        incident_id: incident.id,
        kind: activity.kind.event_kind(),
        at: message.at,
        actor: &message.actor,
        data,
    };
    store::events::insert(&mut *tx, &event).await?;
    store::outbox::insert(tx, message.id, &message.subject(), &message.to_msgpack()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Operator, Source};

    fn incident(status: IncidentStatus) -> IncidentRecord {
        let t: DateTime<Utc> = "2026-03-12T09:00:00Z".parse().unwrap();
        IncidentRecord {
            id: Uuid::from_u128(1),
            rule_id: Uuid::from_u128(2),
            rule_name: "LATENCY_MS > 150".into(),
            service_id: "S1".into(),
            metric_type: "LATENCY_MS".into(),
            series_key: "S1:LATENCY_MS".into(),
            labels: Default::default(),
            department_id: None,
            severity: Severity::High,
            status,
            operator: Operator::Gt,
            threshold: 150.0,
            message: "m".into(),
            value: 180.0,
            peak_value: 180.0,
            last_value: 180.0,
            violation_count: 1,
            opened_at: t,
            last_violation_at: t,
            acknowledged_at: None,
            in_progress_at: None,
            closed_at: None,
            resolved_at: None,
            source: Source::Live,
            last_sample_seq: 1,
            auto_resolve: false,
            assignee: None,
            created_at: t,
            updated_at: t,
        }
    }

    fn status(to: IncidentStatus) -> Change {
        Change {
            status: Some(to),
            ..Change::default()
        }
    }

    #[test]
    fn leaving_open_acknowledges_once_and_closing_stamps_closed_at() {
        let now: DateTime<Utc> = "2026-03-12T10:00:00Z".parse().unwrap();
        let later = now + chrono::Duration::hours(1);
        let mut current = incident(IncidentStatus::Open);
        let (work, changed) = plan(&current, &status(IncidentStatus::InProgress), now).unwrap();
        assert_eq!(work.acknowledged_at, Some(now));
        assert_eq!(work.in_progress_at, Some(now));
        assert_eq!(work.closed_at, None);
        assert_eq!(changed.len(), 1);

        current.status = IncidentStatus::Closed;
        current.acknowledged_at = Some(now);
        current.closed_at = Some(now);
        let (work, _) = plan(&current, &status(IncidentStatus::Open), later).unwrap();
        assert_eq!(work.closed_at, None, "reopening clears closed_at");
        assert_eq!(
            work.acknowledged_at,
            Some(now),
            "the first acknowledgement stays"
        );

        current.status = IncidentStatus::Open;
        let (work, _) = plan(&current, &status(IncidentStatus::Closed), later).unwrap();
        assert_eq!(work.closed_at, Some(later));
        assert_eq!(work.acknowledged_at, Some(now));
        assert_eq!(work.in_progress_at, None, "closing directly skips progress");
    }

    #[test]
    fn an_illegal_move_changes_nothing_even_with_other_fields() {
        let current = incident(IncidentStatus::InProgress);
        let change = Change {
            status: Some(IncidentStatus::Open),
            severity: Some(Severity::Low),
            assignee: Some(Some("ana".into())),
        };
        assert!(matches!(
            plan(&current, &change, Utc::now()),
            Err(ApiError::Conflict(m)) if m.contains("from IN_PROGRESS to OPEN")
        ));
    }

    #[test]
    fn setting_current_values_is_no_change() {
        let mut current = incident(IncidentStatus::Open);
        current.assignee = Some("ana".into());
        let change = Change {
            status: Some(IncidentStatus::Open),
            severity: Some(Severity::High),
            assignee: Some(Some("ana".into())),
        };
        let (work, changed) = plan(&current, &change, Utc::now()).unwrap();
        assert!(changed.is_empty());
        assert_eq!(work, Work::of(&current));
    }

    #[test]
    fn unassigning_records_from_and_to() {
        let mut current = incident(IncidentStatus::Open);
        current.assignee = Some("ana".into());
        let change = Change {
            assignee: Some(None),
            ..Change::default()
        };
        let (work, changed) = plan(&current, &change, Utc::now()).unwrap();
        assert_eq!(work.assignee, None);
        assert_eq!(
            changed,
            [Changed {
                kind: ActivityKind::Assigned,
                from: Some("ana".into()),
                to: None
            }]
        );
    }
}
