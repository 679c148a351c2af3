//! The vocabulary every Tracely component shares: the metric sample as it travels on
//! `metrics.<service_id>.<metric_type>` ([`sample`]), the subjects themselves ([`subject`]),
//! series identity ([`series`]), the incident transitions carried on the INCIDENTS stream and
//! the enums they use ([`incident`]), the changes people make to incidents, carried on the same
//! stream ([`activity`]), the header names both sides agree on ([`headers`]), and the
//! announcements that keep dashboards live ([`live`]).
//!
//! Everything here is plain data and pure functions, so publishers, consumers and the API decode
//! and validate exactly the same way.

pub mod activity;
pub mod duration;
pub mod headers;
pub mod incident;
pub mod live;
pub mod raw;
pub mod sample;
pub mod series;
pub mod subject;

pub use activity::{ActivityKind, IncidentActivity};
pub use duration::Span;
pub use incident::{
    Aggregation, IncidentSnapshot, IncidentStatus, IncidentTransition, Operator, ParseEnumError,
    RuleKind, Severity, Source, TransitionKind,
};
pub use sample::{DecodeError, Encoding, FieldError, MessageError, MetricSample};
pub use subject::SubjectError;
