//! Subject building and parsing: `metrics.<service_id>.<metric_type>` for samples,
//! `incidents.<service_id>.<kind>` for incident transitions, `deadletter.<stream>.<consumer>`
//! for poison messages.

use crate::sample::{validate_metric_type, validate_service_id};

/// The streams Tracely's subjects live in.
pub const METRICS_STREAM: &str = "METRICS";
pub const INCIDENTS_STREAM: &str = "INCIDENTS";

pub const METRICS_PREFIX: &str = "metrics";
pub const INCIDENTS_PREFIX: &str = "incidents";
pub const DELIVERIES_PREFIX: &str = "deliveries";
pub const DEADLETTER_PREFIX: &str = "deadletter";

/// Why a subject is not a valid metrics subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject {0:?} is not of the form metrics.<service_id>.<metric_type>")]
    Shape(String),
    #[error("subject {subject:?}: service_id {reason}")]
    ServiceId { subject: String, reason: String },
    #[error("subject {subject:?}: metric_type {reason}")]
    MetricType { subject: String, reason: String },
}

pub fn metrics_subject(service_id: &str, metric_type: &str) -> String {
    format!("{METRICS_PREFIX}.{service_id}.{metric_type}")
}

/// Splits a metrics subject into (service_id, metric_type), validating both tokens.
pub fn parse_metrics_subject(subject: &str) -> Result<(&str, &str), SubjectError> {
    let mut parts = subject.split('.');
    let (Some(METRICS_PREFIX), Some(service_id), Some(metric_type), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SubjectError::Shape(subject.to_owned()));
    };
    validate_service_id(service_id).map_err(|reason| SubjectError::ServiceId {
        subject: subject.to_owned(),
        reason,
    })?;
    validate_metric_type(metric_type).map_err(|reason| SubjectError::MetricType {
        subject: subject.to_owned(),
        reason,
    })?;
    Ok((service_id, metric_type))
}

pub fn incidents_subject(service_id: &str, kind: &str) -> String {
    format!("{INCIDENTS_PREFIX}.{service_id}.{kind}")
}

/// The job to send delivery work for one channel.
pub fn deliveries_subject(channel_id: &uuid::Uuid) -> String {
    format!("{DELIVERIES_PREFIX}.{channel_id}")
}

pub fn deadletter_subject(stream: &str, consumer: &str) -> String {
    format!("{DEADLETTER_PREFIX}.{stream}.{consumer}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_malformed_subjects() {
        assert!(matches!(
            parse_metrics_subject("metrics.S1"),
            Err(SubjectError::Shape(_))
        ));
        assert!(matches!(
            parse_metrics_subject("metrics.S1.LATENCY_MS.extra"),
            Err(SubjectError::Shape(_))
        ));
        assert!(matches!(
            parse_metrics_subject("other.S1.X"),
            Err(SubjectError::Shape(_))
        ));
        assert!(matches!(
            parse_metrics_subject("metrics.S1.latency"),
            Err(SubjectError::MetricType { .. })
        ));
        assert!(matches!(
            parse_metrics_subject("metrics.S$1.X"),
            Err(SubjectError::ServiceId { .. })
        ));
    }

    proptest! {
        #[test]
        fn build_then_parse_round_trips(s in "[A-Za-z0-9_-]{1,64}", m in "[A-Z0-9_]{1,64}") {
            let subject = metrics_subject(&s, &m);
            prop_assert_eq!(parse_metrics_subject(&subject).unwrap(), (s.as_str(), m.as_str()));
        }
    }
}
