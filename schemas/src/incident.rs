//! Incident transitions, the messages on the INCIDENTS stream, and the enums incidents and rules
//! share.
//!
//! Every transition carries a full snapshot of the incident's engine-owned fields, so a consumer
//! can apply transitions idempotently and in any order: creation is keyed on the deterministic
//! id, and counters, peaks and times merge monotonically.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A text value that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{found:?} is not one of {}", expected.join(", "))]
pub struct ParseEnumError {
    pub found: String,
    pub expected: &'static [&'static str],
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseEnumError;
            fn from_str(s: &str) -> Result<Self, ParseEnumError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ParseEnumError {
                        found: s.to_owned(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseEnumError;
            fn try_from(s: String) -> Result<Self, ParseEnumError> {
                s.parse()
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(stringify!($name))
            }
        }
    };
}

pub(crate) use string_enum;

string_enum!(
    /// How urgent an incident is.
    Severity { Critical = "CRITICAL", High = "HIGH", Medium = "MEDIUM", Low = "LOW" }
);

string_enum!(
    /// Where a person is in working an incident.
    IncidentStatus { Open = "OPEN", InProgress = "IN_PROGRESS", Closed = "CLOSED" }
);

impl IncidentStatus {
    /// Whether people may move an incident from `self` to `to`: OPEN → IN_PROGRESS → CLOSED,
    /// OPEN → CLOSED directly, and CLOSED → OPEN to reopen. Staying put is not a move.
    pub fn can_become(self, to: IncidentStatus) -> bool {
        use IncidentStatus::*;
        matches!(
            (self, to),
            (Open, InProgress) | (Open, Closed) | (InProgress, Closed) | (Closed, Open)
        )
    }
}

string_enum!(
    /// Whether an incident came from the live pipeline or a backfill.
    Source { Live = "live", Backfill = "backfill" }
);

string_enum!(
    /// Comparison between the observed value and a rule's threshold.
    Operator { Gt = ">", Ge = ">=", Lt = "<", Le = "<=", Eq = "==", Ne = "!=" }
);

string_enum!(
    /// How a rule reduces the samples in its window to one value.
    Aggregation {
        Last = "last", Avg = "avg", Min = "min", Max = "max", Sum = "sum", Count = "count",
        P50 = "p50", P90 = "p90", P95 = "p95", P99 = "p99", Rate = "rate",
    }
);

string_enum!(
    /// What a rule watches for: a value against a threshold, or samples going missing.
    RuleKind { Threshold = "threshold", Absent = "absent" }
);

impl Aggregation {
    /// The quantile of a percentile aggregation (0.95 for `p95`); 0 for the others.
    pub fn quantile(self) -> f64 {
        match self {
            Aggregation::P50 => 0.50,
            Aggregation::P90 => 0.90,
            Aggregation::P95 => 0.95,
            Aggregation::P99 => 0.99,
            _ => 0.0,
        }
    }

    /// Whether the window must keep its values sorted (min, max and percentiles).
    pub fn needs_sorted(self) -> bool {
        !matches!(
            self,
            Aggregation::Last
                | Aggregation::Avg
                | Aggregation::Sum
                | Aggregation::Count
                | Aggregation::Rate
        )
    }
}

string_enum!(
    /// What happened to an incident.
    TransitionKind { Opened = "opened", Updated = "updated", Resolved = "resolved" }
);

impl Operator {
    /// Whether `value <op> threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Operator::Gt => value > threshold,
            Operator::Ge => value >= threshold,
            Operator::Lt => value < threshold,
            Operator::Le => value <= threshold,
            Operator::Eq => value == threshold,
            Operator::Ne => value != threshold,
        }
    }
}

/// The engine-owned state of one incident at the moment of a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentSnapshot {
    /// UUIDv5 over (rule id, series key, episode start).
    pub id: Uuid,
    pub rule_id: Uuid,
    pub rule_name: String,
    pub service_id: String,
    pub metric_type: String,
    pub series_key: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub department_id: Option<Uuid>,
    pub severity: Severity,
    pub operator: Operator,
    pub threshold: f64,
    pub message: String,
    /// The value of the sample that opened the incident.
    pub value: f64,
    pub peak_value: f64,
    pub last_value: f64,
    pub violation_count: u64,
    /// Event time of the first violating sample of the episode.
    pub opened_at: DateTime<Utc>,
    pub last_violation_at: DateTime<Utc>,
    /// Event time at which the condition stopped holding, once it has.
    pub resolved_at: Option<DateTime<Utc>>,
    pub source: Source,
    /// METRICS stream sequence of the last sample applied to this incident; lets the
    /// evaluator skip samples it already applied when they are delivered again.
    pub last_sample_seq: u64,
    /// Whether resolving also closes the incident (the rule's `auto_resolve`).
    #[serde(default)]
    pub auto_resolve: bool,
}

/// One message on `incidents.<service_id>.<kind>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentTransition {
    pub kind: TransitionKind,
    /// Event time at which the transition happened.
    pub at: DateTime<Utc>,
    pub incident: IncidentSnapshot,
}

/// Why an INCIDENTS message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed incident transition: {0}")]
pub struct TransitionDecodeError(pub String);

impl IncidentTransition {
    pub fn subject(&self) -> String {
        crate::subject::incidents_subject(&self.incident.service_id, self.kind.as_str())
    }

    /// Deterministic `Nats-Msg-Id`: the same transition published twice is stored once.
    /// Backfilled transitions have ids of their own, so a backfill can never make the stream
    /// drop the live evaluator's transition of the same incident as a duplicate.
    pub fn message_id(&self) -> String {
        let id = match self.kind {
            TransitionKind::Updated => {
                format!(
                    "{}:updated:{}",
                    self.incident.id, self.incident.violation_count
                )
            }
            kind => format!("{}:{}", self.incident.id, kind),
        };
        match self.incident.source {
            Source::Live => id,
            Source::Backfill => format!("{id}:backfill"),
        }
    }

    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("transitions always serialize")
    }

    pub fn from_msgpack(bytes: &[u8]) -> Result<IncidentTransition, TransitionDecodeError> {
        rmp_serde::from_slice(bytes).map_err(|e| TransitionDecodeError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_text() {
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>().unwrap(), *s);
        }
        for o in Operator::ALL {
            assert_eq!(o.as_str().parse::<Operator>().unwrap(), *o);
        }
        assert!("SEVERE".parse::<Severity>().is_err());
    }

    #[test]
    fn the_lifecycle_allows_exactly_its_moves() {
        use IncidentStatus::*;
        let allowed = [
            (Open, InProgress),
            (Open, Closed),
            (InProgress, Closed),
            (Closed, Open),
        ];
        for from in IncidentStatus::ALL {
            for to in IncidentStatus::ALL {
                assert_eq!(
                    from.can_become(*to),
                    allowed.contains(&(*from, *to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn operators_compare() {
        assert!(Operator::Gt.holds(2.0, 1.0));
        assert!(!Operator::Gt.holds(1.0, 1.0));
        assert!(Operator::Ge.holds(1.0, 1.0));
        assert!(Operator::Lt.holds(0.5, 1.0));
        assert!(Operator::Le.holds(1.0, 1.0));
        assert!(Operator::Eq.holds(1.0, 1.0));
        assert!(Operator::Ne.holds(1.5, 1.0));
    }
}
