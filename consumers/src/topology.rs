//! The declarative JetStream topology (`nats/topology.toml`): streams and durable consumers,
//! applied idempotently at start-up. Missing pieces are created and changed settings updated
//! in place; nothing is ever deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use serde::Deserialize;

/// The topology shipped with this build; used when no file is configured.
pub const BUILT_IN: &str = include_str!("../../nats/topology.toml");

/// The oldest nats-server with the features Tracely uses.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

pub const METRICS: &str = schemas::subject::METRICS_STREAM;
pub const INCIDENTS: &str = schemas::subject::INCIDENTS_STREAM;
pub const DEADLETTER: &str = "DEADLETTER";
pub const DELIVERIES: &str = "DELIVERIES";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub streams: BTreeMap<String, StreamSpec>,
    pub consumers: BTreeMap<String, ConsumerSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    #[serde(default)]
    pub description: Option<String>,
    pub subjects: Vec<String>,
    /// `file` or `memory`.
    #[serde(default = "default_storage")]
    pub storage: String,
    pub max_age_secs: u64,
    pub duplicate_window_secs: u64,
    #[serde(default = "one")]
    pub replicas: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    pub stream: String,
    pub ack_wait_secs: u64,
    pub max_deliver: i64,
    /// Delay before redelivering a failed message, indexed by delivery count.
    pub nak_backoff_secs: Vec<u64>,
    pub max_ack_pending: i64,
    /// Most messages handled as one batch.
    pub max_batch: usize,
    /// Only messages on these subjects are delivered; empty means every subject of the stream.
    #[serde(default)]
    pub filter_subjects: Vec<String>,
}

fn default_storage() -> String {
    "file".to_owned()
}

fn one() -> usize {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid topology: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid topology: {0}")]
    Invalid(String),
    #[error(
        "nats-server {found} is too old: Tracely needs {}.{} or newer with JetStream enabled",
        MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
    )]
    ServerTooOld { found: String },
    #[error("applying stream {name}: {message}")]
    Stream { name: String, message: String },
    #[error("applying consumer {name}: {message}")]
    Consumer { name: String, message: String },
}

impl Topology {
    pub fn built_in() -> Topology {
        Topology::parse(BUILT_IN).expect("the built-in topology is valid")
    }

    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Topology::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let topology: Topology = toml::from_str(text)?;
        topology.validate()?;
        Ok(topology)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let invalid = |m: String| Err(TopologyError::Invalid(m));
        for required in [METRICS, INCIDENTS, DELIVERIES, DEADLETTER] {
            if !self.streams.contains_key(required) {
                return invalid(format!("stream {required} is missing"));
            }
        }
        for required in ["evaluate", "archive", "record", "notify", "deliver"] {
            if !self.consumers.contains_key(required) {
                return invalid(format!("consumer {required} is missing"));
            }
        }
        for (name, s) in &self.streams {
            if s.subjects.is_empty() {
                return invalid(format!("stream {name}: subjects must not be empty"));
            }
            if !matches!(s.storage.as_str(), "file" | "memory") {
                return invalid(format!("stream {name}: storage must be `file` or `memory`"));
            }
            if s.duplicate_window_secs > s.max_age_secs && s.max_age_secs > 0 {
                return invalid(format!(
                    "stream {name}: duplicate_window_secs exceeds max_age_secs"
                ));
            }
        }
        for (name, c) in &self.consumers {
            if !self.streams.contains_key(&c.stream) {
                return invalid(format!("consumer {name}: unknown stream {}", c.stream));
            }
            if c.max_deliver == 0 || c.max_deliver < -1 {
                return invalid(format!(
                    "consumer {name}: max_deliver must be positive, or -1 for unlimited"
                ));
            }
            if c.max_ack_pending < 1 || c.max_batch < 1 {
                return invalid(format!(
                    "consumer {name}: max_ack_pending and max_batch must be positive"
                ));
            }
            if c.ack_wait_secs == 0 || c.nak_backoff_secs.is_empty() {
                return invalid(format!(
                    "consumer {name}: ack_wait_secs and nak_backoff_secs must be set"
                ));
            }
            if let Some(bad) = c
                .filter_subjects
                .iter()
                .find(|f| f.is_empty() || f.split('.').any(str::is_empty) || f.contains(' '))
            {
                return invalid(format!(
                    "consumer {name}: filter subject {bad:?} is not a valid subject"
                ));
            }
        }
        Ok(())
    }

    pub fn consumer(&self, name: &str) -> &ConsumerSpec {
        &self.consumers[name]
    }
}

impl StreamSpec {
    pub fn to_config(&self, name: &str) -> stream::Config {
        stream::Config {
            name: name.to_owned(),
            description: self.description.clone(),
            subjects: self.subjects.clone(),
            storage: if self.storage == "memory" {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            max_age: Duration::from_secs(self.max_age_secs),
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

impl ConsumerSpec {
    pub fn to_config(&self, name: &str) -> pull::Config {
        pull::Config {
            durable_name: Some(name.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(self.ack_wait_secs),
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            filter_subjects: self.filter_subjects.clone(),
            ..Default::default()
        }
    }

    /// NAK delay for a message that has been delivered `delivered` times.
    pub fn nak_delay(&self, delivered: i64) -> Duration {
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(0);
        let secs = self
            .nak_backoff_secs
            .get(index)
            .or(self.nak_backoff_secs.last())
            .copied()
            .unwrap_or(1);
        Duration::from_secs(secs)
    }
}

/// Parses `major.minor[.patch][-suffix]` and checks it against [`MIN_SERVER_VERSION`].
pub fn check_server_version(version: &str) -> Result<(), TopologyError> {
    let mut parts = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found >= MIN_SERVER_VERSION {
        Ok(())
    } else {
        Err(TopologyError::ServerTooOld {
            found: version.to_owned(),
        })
    }
}

/// Creates or updates every stream and consumer. Safe to run from several processes at once.
pub async fn apply(
    js: &jetstream::Context,
    server_version: &str,
    topology: &Topology,
) -> Result<(), TopologyError> {
    check_server_version(server_version)?;
    for (name, spec) in &topology.streams {
        apply_stream(js, name, spec).await?;
    }
    for (name, spec) in &topology.consumers {
        ensure_consumer(js, name, spec).await?;
    }
    Ok(())
}

async fn apply_stream(
    js: &jetstream::Context,
    name: &str,
    spec: &StreamSpec,
) -> Result<(), TopologyError> {
    let desired = spec.to_config(name);
    let err = |e: &dyn std::fmt::Display| TopologyError::Stream {
        name: name.to_owned(),
        message: e.to_string(),
    };
    match js.get_stream(name).await {
        Ok(mut stream) => {
            let current = stream.info().await.map_err(|e| err(&e))?.config.clone();
            if stream_differs(&current, &desired) {
                js.update_stream(desired).await.map_err(|e| err(&e))?;
                tracing::info!(stream = name, "updated stream settings");
            } else {
                tracing::debug!(stream = name, "stream up to date");
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js_err)
                    if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(desired).await.map_err(|e| err(&e))?;
            tracing::info!(stream = name, "created stream");
        }
        Err(e) => return Err(err(&e)),
    }
    Ok(())
}

fn stream_differs(current: &stream::Config, desired: &stream::Config) -> bool {
    current.subjects != desired.subjects
        || current.max_age != desired.max_age
        || current.duplicate_window != desired.duplicate_window
        || current.num_replicas != desired.num_replicas
        || current.description != desired.description
        || current.storage != desired.storage
}

/// Creates the durable consumer, or updates its settings if they changed.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    name: &str,
    spec: &ConsumerSpec,
) -> Result<(), TopologyError> {
    let err = |e: &dyn std::fmt::Display| TopologyError::Consumer {
        name: name.to_owned(),
        message: e.to_string(),
    };
    let stream = js.get_stream(&spec.stream).await.map_err(|e| err(&e))?;
    let desired = spec.to_config(name);
    match stream.consumer_info(name).await {
        Ok(info) => {
            let c = &info.config;
            // The server refuses to change where a consumer starts, and a rewound consumer
            // starts at a sequence: keep whatever it has.
            let mut desired = desired;
            desired.deliver_policy = c.deliver_policy;
            if c.ack_wait != desired.ack_wait
                || c.max_deliver != desired.max_deliver
                || c.max_ack_pending != desired.max_ack_pending
                || filters(&c.filter_subject, &c.filter_subjects) != desired.filter_subjects
            {
                stream.update_consumer(desired).await.map_err(|e| err(&e))?;
                tracing::info!(consumer = name, "updated consumer settings");
            }
        }
        Err(_) => {
            stream.create_consumer(desired).await.map_err(|e| err(&e))?;
            tracing::info!(consumer = name, stream = spec.stream, "created consumer");
        }
    }
    Ok(())
}

/// A consumer's filters as one list: the server reports a single filter as `filter_subject`.
fn filters(single: &str, many: &[String]) -> Vec<String> {
    if many.is_empty() && !single.is_empty() {
        vec![single.to_owned()]
    } else {
        many.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_topology_is_valid() {
        let t = Topology::built_in();
        assert_eq!(t.consumer("evaluate").stream, METRICS);
        assert!(t.streams[METRICS].duplicate_window_secs >= 120);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = BUILT_IN.replace(
            "max_age_secs = 604800",
            "max_age_secs = 604800\nmax_agee = 1",
        );
        assert!(matches!(
            Topology::parse(&text),
            Err(TopologyError::Parse(_))
        ));
    }

    #[test]
    fn consumers_must_name_a_known_stream() {
        let text = BUILT_IN.replace("stream = \"INCIDENTS\"", "stream = \"NOPE\"");
        assert!(matches!(
            Topology::parse(&text),
            Err(TopologyError::Invalid(_))
        ));
    }

    #[test]
    fn record_reads_only_transitions() {
        let t = Topology::built_in();
        assert_eq!(
            t.consumer("record").filter_subjects,
            [
                "incidents.*.opened",
                "incidents.*.updated",
                "incidents.*.resolved"
            ]
        );
        assert!(t.consumer("evaluate").filter_subjects.is_empty());
        let text = BUILT_IN.replace("\"incidents.*.opened\"", "\"incidents..opened\"");
        assert!(matches!(
            Topology::parse(&text),
            Err(TopologyError::Invalid(_))
        ));
    }

    #[test]
    fn server_version_gate() {
        assert!(check_server_version("2.10.0").is_ok());
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("3.0.0-beta").is_ok());
        assert!(matches!(
            check_server_version("2.9.25"),
            Err(TopologyError::ServerTooOld { .. })
        ));
    }

    #[test]
    fn nak_delay_grows_then_repeats() {
        let spec = Topology::built_in().consumer("record").clone();
        assert_eq!(spec.nak_delay(1), Duration::from_secs(1));
        assert_eq!(spec.nak_delay(2), Duration::from_secs(5));
        assert_eq!(spec.nak_delay(99), Duration::from_secs(60));
    }
}
