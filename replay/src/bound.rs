//! The ends of a replay range: a time, a METRICS stream sequence, or `now`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// An event time.
    Time(DateTime<Utc>),
    /// A METRICS stream sequence.
    Sequence(u64),
    /// The end of the stream when the replay starts.
    Now,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an RFC 3339 time (such as 2026-11-20T00:00:00Z), a stream sequence or `now`, got `{0}`")]
pub struct BoundError(String);

impl FromStr for Bound {
    type Err = BoundError;

    fn from_str(s: &str) -> Result<Bound, BoundError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("now") {
            return Ok(Bound::Now);
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u64>() {
                Ok(seq) if seq > 0 => Ok(Bound::Sequence(seq)),
                _ => Err(BoundError(s.to_owned())),
            };
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Bound::Time(t.with_timezone(&Utc)))
            .map_err(|_| BoundError(s.to_owned()))
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Time(t) => write!(
                f,
                "{}",
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
            Bound::Sequence(seq) => write!(f, "{seq}"),
            Bound::Now => f.write_str("now"),
        }
    }
}

impl Serialize for Bound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bound, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(0) => Err(serde::de::Error::custom(BoundError("0".into()))),
            Raw::Number(n) => Ok(Bound::Sequence(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times_sequences_and_now() {
        assert_eq!("now".parse::<Bound>().unwrap(), Bound::Now);
        assert_eq!("42".parse::<Bound>().unwrap(), Bound::Sequence(42));
        let t = "2026-11-20T10:00:00+01:00".parse::<Bound>().unwrap();
        assert_eq!(t.to_string(), "2026-11-20T09:00:00Z");
        for bad in ["0", "", "yesterday", "2026-11-20", "-5"] {
            let err = bad.parse::<Bound>().unwrap_err().to_string();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn json_takes_strings_and_numbers() {
        let b: Bound = serde_json::from_str("7").unwrap();
        assert_eq!(b, Bound::Sequence(7));
        let b: Bound = serde_json::from_str("\"2026-11-20T09:00:00Z\"").unwrap();
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            "\"2026-11-20T09:00:00Z\""
        );
        assert!(serde_json::from_str::<Bound>("\"soon\"").is_err());
    }
}
