//! The metric sample: one measurement of one series at one event time.
//!
//! On the wire a sample is a MessagePack map with field names, or JSON when the message carries
//! `Content-Type: application/json`. Decoding is strict: unknown fields, wrong types, non-finite
//! values and malformed identifiers are refused with an error naming the field, so a bad
//! publisher learns what to fix instead of having data silently dropped.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::raw::RawValue;
use crate::series;

/// Largest number of labels one sample may carry.
pub const MAX_LABELS: usize = 16;
/// Longest accepted `id` and label value, in bytes.
pub const MAX_ID_LEN: usize = 128;
pub const MAX_LABEL_VALUE_LEN: usize = 256;

const FIELDS: &[&str] = &[
    "service_id",
    "metric_type",
    "value",
    "recorded_at",
    "id",
    "labels",
];

/// A validated metric sample. Constructing one through [`MetricSample::from_raw`] (or any of the
/// decoders) guarantees every invariant of the wire format holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricSample {
    /// `[A-Za-z0-9_-]{1,64}`; also the second subject token.
    pub service_id: String,
    /// `[A-Z0-9_]{1,64}`; also the third subject token.
    pub metric_type: String,
    /// Always finite.
    pub value: f64,
    /// Event time with millisecond precision; windows and incident identity use it.
    #[serde(serialize_with = "serialize_unix_ms")]
    pub recorded_at: DateTime<Utc>,
    /// Publisher's idempotency key, also sent as `Nats-Msg-Id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Extra dimensions; part of the series key.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Which body encoding a message uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    MessagePack,
    Json,
}

impl Encoding {
    /// The encoding named by a `Content-Type` header value; absent means MessagePack.
    pub fn from_content_type(content_type: Option<&str>) -> Encoding {
        match content_type {
            Some(ct) if is_json_content_type(ct) => Encoding::Json,
            _ => Encoding::MessagePack,
        }
    }
}

fn is_json_content_type(ct: &str) -> bool {
    ct.split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// A field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why a METRICS message is not a sample: a small fixed `kind` (`subject`, `decode`,
/// `invalid`, `subject_mismatch`) and the reason in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct MessageError {
    pub kind: &'static str,
    pub reason: String,
}

impl MetricSample {
    /// Reads a METRICS message: its subject, `Content-Type` header and body must agree.
    pub fn from_message(
        subject: &str,
        content_type: Option<&str>,
        payload: &[u8],
    ) -> Result<MetricSample, MessageError> {
        let (service_id, metric_type) =
            crate::subject::parse_metrics_subject(subject).map_err(|e| MessageError {
                kind: "subject",
                reason: e.to_string(),
            })?;
        let sample = MetricSample::decode(payload, Encoding::from_content_type(content_type))
            .map_err(|e| MessageError {
                kind: match e {
                    DecodeError::Field(_) => "invalid",
                    _ => "decode",
                },
                reason: e.to_string(),
            })?;
        if sample.service_id != service_id || sample.metric_type != metric_type {
            return Err(MessageError {
                kind: "subject_mismatch",
                reason: format!(
                    "body is for {}.{} but was published on {subject}",
                    sample.service_id, sample.metric_type
                ),
            });
        }
        Ok(sample)
    }
}

/// Why a message body could not become a [`MetricSample`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not well-formed in the declared encoding.
    #[error("malformed {encoding} body: {reason}")]
    Malformed {
        encoding: &'static str,
        reason: String,
    },
    /// Well-formed, but not a map with named fields.
    #[error("body must be a map with named fields, got {found}")]
    NotAMap { found: &'static str },
    /// A field is missing, unknown, of the wrong type or out of range.
    #[error(transparent)]
    Field(#[from] FieldError),
}

impl DecodeError {
    /// The field the error is about, when it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            DecodeError::Field(e) => Some(&e.field),
            _ => None,
        }
    }
}

impl MetricSample {
    /// Decodes and validates a message body.
    ///
    /// Fails with [`DecodeError::Malformed`] when the bytes are not valid in `encoding`,
    /// [`DecodeError::NotAMap`] for positional or scalar bodies, and [`DecodeError::Field`] when a
    /// field is missing, unknown or invalid.
    pub fn decode(payload: &[u8], encoding: Encoding) -> Result<MetricSample, DecodeError> {
        let raw: RawValue = match encoding {
            Encoding::MessagePack => {
                rmp_serde::from_slice(payload).map_err(|e| DecodeError::Malformed {
                    encoding: "MessagePack",
                    reason: e.to_string(),
                })?
            }
            Encoding::Json => {
                serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed {
                    encoding: "JSON",
                    reason: e.to_string(),
                })?
            }
        };
        MetricSample::from_raw(raw)
    }

    /// Validates a format-neutral value; every decoder ends here.
    pub fn from_raw(raw: RawValue) -> Result<MetricSample, DecodeError> {
        let RawValue::Map(mut fields) = raw else {
            return Err(DecodeError::NotAMap {
                found: raw.type_name(),
            });
        };
        if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(FieldError::new(
                unknown.clone(),
                format!("unknown field; expected one of {}", FIELDS.join(", ")),
            )
            .into());
        }
        let service_id = required_string(&mut fields, "service_id")?;
        validate_service_id(&service_id).map_err(|r| FieldError::new("service_id", r))?;
        let metric_type = required_string(&mut fields, "metric_type")?;
        validate_metric_type(&metric_type).map_err(|r| FieldError::new("metric_type", r))?;
        let value = parse_value(fields.remove("value"))?;
        let recorded_at = parse_recorded_at(fields.remove("recorded_at"))?;
        let id = parse_id(fields.remove("id"))?;
        let labels = parse_labels(fields.remove("labels"))?;
        Ok(MetricSample {
            service_id,
            metric_type,
            value,
            recorded_at,
            id,
            labels,
        })
    }

    /// MessagePack map with field names; `recorded_at` as integer unix milliseconds.
    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a validated sample always serializes")
    }

    /// JSON object with the same fields as [`MetricSample::to_msgpack`].
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a validated sample always serializes")
    }

    /// Canonical key of the series this sample belongs to.
    pub fn series_key(&self) -> String {
        series::series_key(&self.service_id, &self.metric_type, &self.labels)
    }

    /// The subject this sample is published on.
    pub fn subject(&self) -> String {
        crate::subject::metrics_subject(&self.service_id, &self.metric_type)
    }
}

fn serialize_unix_ms<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(at.timestamp_millis())
}

fn required_string(
    fields: &mut BTreeMap<String, RawValue>,
    name: &'static str,
) -> Result<String, FieldError> {
    match fields.remove(name) {
        Some(RawValue::Str(s)) => Ok(s),
        None | Some(RawValue::Nil) => Err(FieldError::new(name, "is required")),
        Some(other) => Err(FieldError::new(
            name,
            format!("must be a string, got {}", other.type_name()),
        )),
    }
}

/// `[A-Za-z0-9_-]{1,64}`: safe as a subject token and in URLs.
pub fn validate_service_id(s: &str) -> Result<(), String> {
    validate_token(s, |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        .map_err(|()| "must match [A-Za-z0-9_-]{1,64}".to_owned())
}

/// `[A-Z0-9_]{1,64}`, such as `LATENCY_MS`.
pub fn validate_metric_type(s: &str) -> Result<(), String> {
    validate_token(s, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
    })
    .map_err(|()| "must match [A-Z0-9_]{1,64}".to_owned())
}

fn validate_token(s: &str, allowed: impl Fn(u8) -> bool) -> Result<(), ()> {
    if (1..=64).contains(&s.len()) && s.bytes().all(allowed) {
        Ok(())
    } else {
        Err(())
    }
}

fn parse_value(raw: Option<RawValue>) -> Result<f64, FieldError> {
    let v = match raw {
        Some(RawValue::Float(f)) => f,
        Some(RawValue::Int(i)) => i as f64,
        Some(RawValue::UInt(u)) => u as f64,
        None | Some(RawValue::Nil) => return Err(FieldError::new("value", "is required")),
        Some(other) => {
            return Err(FieldError::new(
                "value",
                format!("must be a number, got {}", other.type_name()),
            ))
        }
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(FieldError::new("value", format!("must be finite, got {v}")))
    }
}

/// Accepts RFC 3339 text or integer unix milliseconds.
pub fn parse_recorded_at(raw: Option<RawValue>) -> Result<DateTime<Utc>, FieldError> {
    const FIELD: &str = "recorded_at";
    let millis = match raw {
        Some(RawValue::Str(s)) => DateTime::parse_from_rfc3339(s.trim())
            .map_err(|e| FieldError::new(FIELD, format!("{s:?} is not an RFC 3339 time ({e})")))?
            .timestamp_millis(),
        Some(RawValue::Int(i)) => i,
        Some(RawValue::UInt(u)) => i64::try_from(u)
            .map_err(|_| FieldError::new(FIELD, "unix milliseconds out of range"))?,
        None | Some(RawValue::Nil) => return Err(FieldError::new(FIELD, "is required")),
        Some(other) => {
            return Err(FieldError::new(
                FIELD,
                format!(
                    "must be an RFC 3339 string or integer unix milliseconds, got {}",
                    other.type_name()
                ),
            ))
        }
    };
    if millis < 0 {
        return Err(FieldError::new(FIELD, "must not be before 1970-01-01"));
    }
    Utc.timestamp_millis_opt(millis)
        .single()
        .ok_or_else(|| FieldError::new(FIELD, "unix milliseconds out of range"))
}

fn parse_id(raw: Option<RawValue>) -> Result<Option<String>, FieldError> {
    match raw {
        None | Some(RawValue::Nil) => Ok(None),
        Some(RawValue::Str(s)) => {
            if s.is_empty() || s.len() > MAX_ID_LEN {
                Err(FieldError::new(
                    "id",
                    format!("must be 1 to {MAX_ID_LEN} bytes"),
                ))
            } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
                Err(FieldError::new(
                    "id",
                    "must be printable ASCII without spaces",
                ))
            } else {
                Ok(Some(s))
            }
        }
        Some(other) => Err(FieldError::new(
            "id",
            format!("must be a string, got {}", other.type_name()),
        )),
    }
}

fn parse_labels(raw: Option<RawValue>) -> Result<BTreeMap<String, String>, FieldError> {
    let map = match raw {
        None | Some(RawValue::Nil) => return Ok(BTreeMap::new()),
        Some(RawValue::Map(m)) => m,
        Some(other) => {
            return Err(FieldError::new(
                "labels",
                format!("must be a map of strings, got {}", other.type_name()),
            ))
        }
    };
    if map.len() > MAX_LABELS {
        return Err(FieldError::new(
            "labels",
            format!("at most {MAX_LABELS} labels are allowed"),
        ));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in map {
        let field = format!("labels.{key}");
        series::validate_label_name(&key).map_err(|r| FieldError::new(&field, r))?;
        let RawValue::Str(value) = value else {
            return Err(FieldError::new(
                field,
                format!("must be a string, got {}", value.type_name()),
            ));
        };
        if value.len() > MAX_LABEL_VALUE_LEN || value.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_LABEL_VALUE_LEN} bytes without control characters"),
            ));
        }
        labels.insert(key, value);
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> MetricSample {
        MetricSample {
            service_id: "S1".into(),
            metric_type: "LATENCY_MS".into(),
            value: 180.0,
            recorded_at: "2026-03-12T09:00:00Z".parse().unwrap(),
            id: Some("s1-0900".into()),
            labels: BTreeMap::from([("region".into(), "eu".into())]),
        }
    }

    fn json(body: &str) -> Result<MetricSample, DecodeError> {
        MetricSample::decode(body.as_bytes(), Encoding::Json)
    }

    #[test]
    fn msgpack_round_trip_uses_named_fields() {
        let bytes = sample().to_msgpack();
        // fixmap marker: a map, never a positional array
        assert_eq!(bytes[0] & 0xf0, 0x80);
        assert_eq!(
            MetricSample::decode(&bytes, Encoding::MessagePack).unwrap(),
            sample()
        );
    }

    #[test]
    fn json_accepts_rfc3339_and_unix_millis() {
        let a = json(r#"{"service_id":"S1","metric_type":"LATENCY_MS","value":180,"recorded_at":"2026-03-12T09:00:00Z"}"#).unwrap();
        let b = json(r#"{"service_id":"S1","metric_type":"LATENCY_MS","value":180.0,"recorded_at":1773306000000}"#).unwrap();
        assert_eq!(a.recorded_at, b.recorded_at);
        assert_eq!(a.value, 180.0);
    }

    #[test]
    fn positional_msgpack_is_refused() {
        let bytes = rmp_serde::to_vec(&("S1", "LATENCY_MS", 1.0, 0i64)).unwrap();
        assert_eq!(
            MetricSample::decode(&bytes, Encoding::MessagePack),
            Err(DecodeError::NotAMap { found: "an array" })
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let err = MetricSample::decode(&[0xc1, 0x00], Encoding::MessagePack).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
        let err = json("{not json").unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn nan_and_infinity_are_refused() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut s = sample();
            s.value = v;
            let bytes = rmp_serde::to_vec_named(&s).unwrap();
            let err = MetricSample::decode(&bytes, Encoding::MessagePack).unwrap_err();
            assert_eq!(err.field(), Some("value"));
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"metric_type":"X","value":1,"recorded_at":0}"#,
                "service_id",
            ),
            (
                r#"{"service_id":"a.b","metric_type":"X","value":1,"recorded_at":0}"#,
                "service_id",
            ),
            (
                r#"{"service_id":"S","metric_type":"lat","value":1,"recorded_at":0}"#,
                "metric_type",
            ),
            (
                r#"{"service_id":"S","metric_type":"X","value":"1","recorded_at":0}"#,
                "value",
            ),
            (
                r#"{"service_id":"S","metric_type":"X","value":1,"recorded_at":"yesterday"}"#,
                "recorded_at",
            ),
            (
                r#"{"service_id":"S","metric_type":"X","value":1,"recorded_at":-5}"#,
                "recorded_at",
            ),
            (
                r#"{"service_id":"S","metric_type":"X","value":1,"recorded_at":1.5}"#,
                "recorded_at",
            ),
            (
                r#"{"service_id":"S","metric_type":"X","value":1,"recorded_at":0,"id":""}"#,
                "id",
            ),
            (
                r#"{"service_id":"S","metric_type":"X","value":1,"recorded_at":0,"labels":{"a":1}}"#,
                "labels.a",
            ),
            (
                r#"{"service_id":"S","metric_type":"X","value":1,"recorded_at":0,"labels":{"9x":"v"}}"#,
                "labels.9x",
            ),
            (
                r#"{"service_id":"S","metric_type":"X","value":1,"recorded_at":0,"colour":"red"}"#,
                "colour",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(json(body).unwrap_err().field(), Some(field), "{body}");
        }
    }

    #[test]
    fn content_type_selects_encoding() {
        assert_eq!(
            Encoding::from_content_type(Some("application/json; charset=utf-8")),
            Encoding::Json
        );
        assert_eq!(Encoding::from_content_type(None), Encoding::MessagePack);
        assert_eq!(
            Encoding::from_content_type(Some("application/msgpack")),
            Encoding::MessagePack
        );
    }

    fn arb_sample() -> impl Strategy<Value = MetricSample> {
        (
            "[A-Za-z0-9_-]{1,64}",
            "[A-Z0-9_]{1,64}",
            any::<f64>().prop_filter("finite", |v| v.is_finite()),
            0i64..=253_402_300_799_000,
            proptest::option::of("[!-~]{1,128}"),
            proptest::collection::btree_map("[a-z_][a-z0-9_]{0,10}", "[ -~]{0,40}", 0..4),
        )
            .prop_map(
                |(service_id, metric_type, value, ms, id, labels)| MetricSample {
                    service_id,
                    metric_type,
                    value,
                    recorded_at: Utc.timestamp_millis_opt(ms).unwrap(),
                    id,
                    labels,
                },
            )
    }

    proptest! {
        #[test]
        fn any_valid_sample_round_trips(s in arb_sample()) {
            prop_assert_eq!(&MetricSample::decode(&s.to_msgpack(), Encoding::MessagePack).unwrap(), &s);
            prop_assert_eq!(&MetricSample::decode(&s.to_json(), Encoding::Json).unwrap(), &s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = MetricSample::decode(&bytes, Encoding::MessagePack);
            let _ = MetricSample::decode(&bytes, Encoding::Json);
        }
    }
}
