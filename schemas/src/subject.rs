//! Subject building and parsing: `metrics.<service_id>.<metric_type>` for samples,
//! `incidents.<service_id>.<kind>` for incident transitions, `deadletter.<stream>.<consumer>`
//! for poison messages.
//!
//! Publishers use `metrics.<service_id>.<metric_type>`. The METRICS stream stores each sample
//! as `metrics.<service_id>.<metric_type>.<partition>` (a subject transform), which is how
//! several evaluators split the series between them: see [`partition_of`].

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

/// Splits a metrics subject into (service_id, metric_type), validating both tokens. The
/// stored form with a trailing partition number is accepted too.
pub fn parse_metrics_subject(subject: &str) -> Result<(&str, &str), SubjectError> {
    parse_stored_metrics_subject(subject).map(|(s, m, _)| (s, m))
}

/// Splits a metrics subject into (service_id, metric_type, partition), the partition being
/// there only in the stored form.
pub fn parse_stored_metrics_subject(
    subject: &str,
) -> Result<(&str, &str, Option<u32>), SubjectError> {
    let mut parts = subject.split('.');
    let (Some(METRICS_PREFIX), Some(service_id), Some(metric_type)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(SubjectError::Shape(subject.to_owned()));
    };
    let partition = match (parts.next(), parts.next()) {
        (None, _) => None,
        (Some(p), None)
            if !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(
                p.parse()
                    .map_err(|_| SubjectError::Shape(subject.to_owned()))?,
            )
        }
        _ => return Err(SubjectError::Shape(subject.to_owned())),
    };
    validate_service_id(service_id).map_err(|reason| SubjectError::ServiceId {
        subject: subject.to_owned(),
        reason,
    })?;
    validate_metric_type(metric_type).map_err(|reason| SubjectError::MetricType {
        subject: subject.to_owned(),
        reason,
    })?;
    Ok((service_id, metric_type, partition))
}

/// The partition of a series among `partitions`, exactly as nats-server's `partition()`
/// transform computes it: FNV-1a (32 bit) over the service id and metric type, concatenated,
/// modulo the count. A series is always in one partition, whatever its labels.
pub fn partition_of(service_id: &str, metric_type: &str, partitions: u32) -> u32 {
    fnv1a(&[service_id, metric_type]) % partitions.max(1)
}

/// 32-bit FNV-1a over `parts`, concatenated: stable across processes, versions and platforms.
pub fn fnv1a(parts: &[&str]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in parts.iter().flat_map(|p| p.bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The METRICS stream's subject transform, as (source, destination).
pub fn metrics_partition_transform(partitions: u32) -> (String, String) {
    (
        format!("{METRICS_PREFIX}.*.*"),
        format!(
            "{METRICS_PREFIX}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({partitions},1,2)}}}}"
        ),
    )
}

/// The stored subjects of one partition.
pub fn metrics_partition_filter(partition: u32) -> String {
    format!("{METRICS_PREFIX}.*.*.{partition}")
}

/// The evaluate consumers, one per partition, are named after it; dashboards and dead letters
/// show them as one `evaluate`.
pub const EVALUATE: &str = "evaluate";

/// The name of partition `partition`'s evaluate consumer: `evaluate-<partition>`.
pub fn evaluate_consumer(partition: u32) -> String {
    format!("{EVALUATE}-{partition}")
}

/// The partition an evaluate consumer's name stands for.
pub fn evaluate_partition(consumer: &str) -> Option<u32> {
    consumer
        .strip_prefix(EVALUATE)?
        .strip_prefix('-')?
        .parse()
        .ok()
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
            parse_metrics_subject("metrics.S1.LATENCY_MS.3.4"),
            Err(SubjectError::Shape(_))
        ));
        assert!(matches!(
            parse_metrics_subject("metrics.S1.LATENCY_MS."),
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

    #[test]
    fn stored_subjects_carry_their_partition() {
        assert_eq!(
            parse_stored_metrics_subject("metrics.S1.LATENCY_MS.7").unwrap(),
            ("S1", "LATENCY_MS", Some(7))
        );
        assert_eq!(
            parse_stored_metrics_subject("metrics.S1.LATENCY_MS").unwrap(),
            ("S1", "LATENCY_MS", None)
        );
        let (src, dest) = metrics_partition_transform(8);
        assert_eq!(src, "metrics.*.*");
        assert_eq!(
            dest,
            "metrics.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(8,1,2)}}"
        );
        assert_eq!(metrics_partition_filter(3), "metrics.*.*.3");
    }

    #[test]
    fn partitions_follow_fnv1a_of_the_series_tokens() {
        // FNV-1a 32 of "" is its offset basis, of "a" 0xe40c292c.
        assert_eq!(partition_of("", "", u32::MAX), 0x811c_9dc5);
        assert_eq!(partition_of("a", "", u32::MAX), 0xe40c_292c);
        assert_eq!(partition_of("", "a", u32::MAX), 0xe40c_292c);
        assert!((0..500).all(|i| partition_of(&format!("S{i}"), "X", 8) < 8));
        assert_eq!(partition_of("S1", "X", 1), 0);
    }

    proptest! {
        #[test]
        fn build_then_parse_round_trips(s in "[A-Za-z0-9_-]{1,64}", m in "[A-Z0-9_]{1,64}") {
            let subject = metrics_subject(&s, &m);
            prop_assert_eq!(parse_metrics_subject(&subject).unwrap(), (s.as_str(), m.as_str()));
        }
    }
}
