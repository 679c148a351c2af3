//! Incident identity. An incident id is a UUIDv5 over (rule id, series key, episode start in
//! event time), so replaying the same samples always yields the same ids.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Namespace for incident ids. Changing it would change every id: never do.
const INCIDENT_NAMESPACE: Uuid = Uuid::from_u128(0x6a0f_3c1e_8d4b_4f57_9e2a_1b7c_5d3e_9f01);

pub fn incident_id(rule_id: Uuid, series_key: &str, episode_start: DateTime<Utc>) -> Uuid {
    let name = format!(
        "{rule_id}|{series_key}|{}",
        episode_start.timestamp_millis()
    );
    Uuid::new_v5(&INCIDENT_NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let rule = Uuid::from_u128(7);
        let t: DateTime<Utc> = "2026-03-12T09:00:00Z".parse().unwrap();
        let a = incident_id(rule, "S1:LATENCY_MS", t);
        assert_eq!(a, incident_id(rule, "S1:LATENCY_MS", t));
        assert_ne!(a, incident_id(rule, "S2:LATENCY_MS", t));
        assert_ne!(
            a,
            incident_id(rule, "S1:LATENCY_MS", t + chrono::Duration::milliseconds(1))
        );
        assert_ne!(a, incident_id(Uuid::from_u128(8), "S1:LATENCY_MS", t));
        assert_eq!(a.get_version_num(), 5);
    }
}
