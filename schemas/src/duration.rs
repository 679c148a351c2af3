//! Durations as people write them in rules: `250ms`, `30s`, `5m`, `1h30m`, `2d`, or `0`.

use std::fmt;

/// A non-negative span of event time in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub i64);

/// The longest span a rule may use: a week, the default replay horizon.
pub const MAX: Span = Span(7 * 24 * 3_600_000);

impl Span {
    pub const ZERO: Span = Span(0);

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses `0` or a sequence of `<integer><unit>` with units `ms`, `s`, `m`, `h`, `d`.
    /// Fails with a sentence saying what is wrong.
    pub fn parse(text: &str) -> Result<Span, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Span::ZERO);
        }
        if text.is_empty() {
            return Err("is empty; write a duration such as 30s, 5m or 1h30m".into());
        }
        let mut total: i64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(format!(
                    "{text:?} is not a duration such as 30s, 5m or 1h30m"
                ));
            }
            let number: i64 = rest[..digits]
                .parse()
                .map_err(|_| format!("{text:?} is too long a duration"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(format!("{text:?} lacks a unit (ms, s, m, h or d)")),
                other => {
                    return Err(format!(
                        "{text:?} has an unknown unit {other:?}; use ms, s, m, h or d"
                    ))
                }
            };
            rest = &rest[unit_len..];
            total = number
                .checked_mul(unit)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        }
        let span = Span(total);
        if span > MAX {
            return Err(format!("{text:?} is longer than the maximum of 7d"));
        }
        Ok(span)
    }
}

/// Documented as text such as `5m`, the form it is read and written in.
impl utoipa::PartialSchema for Span {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .pattern(Some("^(0|([0-9]{1,9}(ms|s|m|h|d))+)$"))
            .description(Some(
                "A duration such as 250ms, 30s, 5m, 1h30m or 2d; at most 7d.",
            ))
            .examples([serde_json::json!("5m")])
            .into()
    }
}

impl utoipa::ToSchema for Span {}

impl fmt::Display for Span {
    /// The shortest canonical spelling: `0`, `1h30m`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        let mut rest = self.0;
        for (unit, ms) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if rest >= ms {
                write!(f, "{}{unit}", rest / ms)?;
                rest %= ms;
            }
        }
        Ok(())
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    /// From the text form, such as `"5m"`; the error says what is wrong with it.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_people_write() {
        assert_eq!(Span::parse("0"), Ok(Span(0)));
        assert_eq!(Span::parse("250ms"), Ok(Span(250)));
        assert_eq!(Span::parse("30s"), Ok(Span(30_000)));
        assert_eq!(Span::parse("5m"), Ok(Span(300_000)));
        assert_eq!(Span::parse("1h30m"), Ok(Span(5_400_000)));
        assert_eq!(Span::parse("2d"), Ok(Span(172_800_000)));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "",
            "5",
            "m",
            "5 m",
            "-5m",
            "5x",
            "1.5m",
            "8d",
            "99999999999999999999s",
        ] {
            assert!(Span::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(ms in 0i64..=MAX.0) {
            let span = Span(ms);
            prop_assert_eq!(Span::parse(&span.to_string()), Ok(span));
        }
    }
}
