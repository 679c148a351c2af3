//! Series identity: a series is one (service, metric type, labels) combination. Its key is a
//! canonical string, stable across processes and versions, because incident ids are derived
//! from it.

use std::collections::BTreeMap;
use std::fmt::Write;

/// `S1:LATENCY_MS` or, with labels, `S1:LATENCY_MS{host="a",region="eu"}` (labels sorted).
pub fn series_key(
    service_id: &str,
    metric_type: &str,
    labels: &BTreeMap<String, String>,
) -> String {
    let mut key = format!("{service_id}:{metric_type}");
    if !labels.is_empty() {
        key.push('{');
        for (i, (name, value)) in labels.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            let _ = write!(key, "{name}=\"");
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    key.push('\\');
                }
                key.push(c);
            }
            key.push('"');
        }
        key.push('}');
    }
    key
}

/// The (service id, metric type) a series key was built from.
pub fn series_parts(key: &str) -> Option<(&str, &str)> {
    let (service_id, rest) = key.split_once(':')?;
    let metric_type = rest.split_once('{').map_or(rest, |(m, _)| m);
    Some((service_id, metric_type))
}

/// Label names are `[A-Za-z_][A-Za-z0-9_]{0,63}`.
pub fn validate_label_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("label names must match [A-Za-z_][A-Za-z0-9_]{0,63}".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_into_service_and_metric() {
        let labels = BTreeMap::from([("host".to_owned(), "a:b{".to_owned())]);
        for l in [BTreeMap::new(), labels] {
            let key = series_key("S-1", "LATENCY_MS", &l);
            assert_eq!(series_parts(&key), Some(("S-1", "LATENCY_MS")));
        }
        assert_eq!(series_parts("nokey"), None);
    }

    #[test]
    fn key_is_canonical_and_escaped() {
        assert_eq!(
            series_key("S1", "LATENCY_MS", &BTreeMap::new()),
            "S1:LATENCY_MS"
        );
        let labels = BTreeMap::from([
            ("region".to_owned(), "eu".to_owned()),
            ("host".to_owned(), "a\"b".to_owned()),
        ]);
        assert_eq!(
            series_key("S1", "X", &labels),
            r#"S1:X{host="a\"b",region="eu"}"#
        );
    }
}
