//! Handling one METRICS message: decode and validate it against its subject.

use async_nats::jetstream;
use schemas::{headers, MetricSample};

use crate::jetstream::Rejection;

/// Decodes a message into a sample, or says why it is poison.
pub fn decode(msg: &jetstream::Message) -> Result<MetricSample, Rejection> {
    let content_type = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::CONTENT_TYPE))
        .map(|v| v.as_str());
    decode_parts(msg.subject.as_str(), content_type, &msg.payload)
}

pub fn decode_parts(
    subject: &str,
    content_type: Option<&str>,
    payload: &[u8],
) -> Result<MetricSample, Rejection> {
    MetricSample::from_message(subject, content_type, payload).map_err(|e| Rejection {
        kind: e.kind,
        reason: e.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str =
        r#"{"service_id":"S1","metric_type":"LATENCY_MS","value":1,"recorded_at":0}"#;

    #[test]
    fn subject_and_body_must_agree() {
        let json = Some("application/json");
        assert!(decode_parts("metrics.S1.LATENCY_MS", json, BODY.as_bytes()).is_ok());
        let err = decode_parts("metrics.S2.LATENCY_MS", json, BODY.as_bytes()).unwrap_err();
        assert_eq!(err.kind, "subject_mismatch");
        let err = decode_parts("metrics.S1", json, BODY.as_bytes()).unwrap_err();
        assert_eq!(err.kind, "subject");
    }

    #[test]
    fn rejections_are_classified() {
        let err = decode_parts("metrics.S1.X", None, b"\xc1").unwrap_err();
        assert_eq!(err.kind, "decode");
        let body = BODY.replace("\"value\":1", "\"value\":\"x\"");
        let err = decode_parts(
            "metrics.S1.LATENCY_MS",
            Some("application/json"),
            body.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err.kind, "invalid");
        assert!(err.reason.contains("value"), "{}", err.reason);
    }
}
