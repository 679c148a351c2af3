//! The declarative JetStream topology (`nats/topology.toml`): streams and durable consumers,
//! applied idempotently at start-up. Missing pieces are created and changed settings updated
//! in place. Nothing is deleted, except the single `evaluate` consumer of a stream created before
//! METRICS was partitioned, once it has nothing left to evaluate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, stream};
use serde::Deserialize;

/// The topology shipped with this build; used when no file is configured.
pub const BUILT_IN: &str = include_str!("../../nats/topology.toml");

/// The oldest nats-server with the features Tracely uses.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

pub const METRICS: &str = schemas::subject::METRICS_STREAM;
pub const INCIDENTS: &str = schemas::subject::INCIDENTS_STREAM;
pub const DEADLETTER: &str = "DEADLETTER";
pub const DELIVERIES: &str = "DELIVERIES";
/// The KV bucket holding the evaluators' partition leases.
pub const LEASES_BUCKET: &str = "tracely_evaluate_leases";
/// The consumer spec that each partition's evaluate consumer is made from, and how a
/// partition's consumer is named.
pub use schemas::subject::{evaluate_consumer, evaluate_partition, EVALUATE};
/// The most partitions METRICS may be split into.
pub const MAX_PARTITIONS: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub streams: BTreeMap<String, StreamSpec>,
    pub consumers: BTreeMap<String, ConsumerSpec>,
    #[serde(default)]
    pub evaluate_leases: LeaseSpec,
}

/// The KV bucket of partition leases: a dead evaluator's partitions pass to the others within
/// `ttl_secs`. Leases are renewed every quarter of it and expire three quarters of it after
/// their last renewal; the others look every eighth.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSpec {
    pub ttl_secs: u64,
    #[serde(default = "one")]
    pub replicas: usize,
}

impl LeaseSpec {
    /// How long a lease lives after its last renewal.
    pub fn expiry(&self) -> Duration {
        Duration::from_millis(self.ttl_secs.saturating_mul(750))
    }
}

impl Default for LeaseSpec {
    fn default() -> LeaseSpec {
        LeaseSpec {
            ttl_secs: 10,
            replicas: 1,
        }
    }
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
    /// METRICS only: how many partitions the series are split into, so that several
    /// evaluators can share them. Fixed once the stream exists.
    #[serde(default)]
    pub partitions: Option<u32>,
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
    #[error("creating the lease bucket {LEASES_BUCKET}: {0}")]
    Leases(String),
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
        match self.streams[METRICS].partitions {
            Some(1..=MAX_PARTITIONS) => {}
            Some(_) => {
                return invalid(format!(
                    "stream {METRICS}: partitions must be between 1 and {MAX_PARTITIONS}"
                ))
            }
            None => return invalid(format!("stream {METRICS}: partitions must be set")),
        }
        if self.evaluate_leases.ttl_secs < 2 {
            return invalid("evaluate_leases: ttl_secs must be at least 2".to_owned());
        }
        if !self.consumers[EVALUATE].filter_subjects.is_empty() {
            return invalid(format!(
                "consumer {EVALUATE}: filter_subjects are set per partition and cannot be given"
            ));
        }
        for (name, s) in &self.streams {
            if name != METRICS && s.partitions.is_some() {
                return invalid(format!("stream {name}: only {METRICS} is partitioned"));
            }
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

    /// How many partitions METRICS is split into.
    pub fn partitions(&self) -> u32 {
        self.streams[METRICS].partitions.unwrap_or(1)
    }

    /// Every durable consumer by name, with the `evaluate` spec made into one consumer per
    /// partition.
    pub fn durable_consumers(&self) -> Vec<(String, ConsumerSpec)> {
        let mut all = Vec::with_capacity(self.consumers.len() + self.partitions() as usize);
        for (name, spec) in &self.consumers {
            if name == EVALUATE {
                all.extend(
                    (0..self.partitions()).map(|p| (evaluate_consumer(p), self.evaluate_spec(p))),
                );
            } else {
                all.push((name.clone(), spec.clone()));
            }
        }
        all
    }

    /// The spec of partition `partition`'s evaluate consumer.
    pub fn evaluate_spec(&self, partition: u32) -> ConsumerSpec {
        let mut spec = self.consumers[EVALUATE].clone();
        spec.filter_subjects = vec![schemas::subject::metrics_partition_filter(partition)];
        spec
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
            subject_transform: self.partitions.map(|p| {
                let (source, destination) = schemas::subject::metrics_partition_transform(p);
                stream::SubjectTransform {
                    source,
                    destination,
                }
            }),
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
    for (name, spec) in topology.durable_consumers() {
        ensure_consumer(js, &name, &spec).await?;
    }
    ensure_leases_bucket(js, &topology.evaluate_leases).await?;
    Ok(())
}

/// Creates the lease bucket, or updates its TTL and replicas if they changed.
pub async fn ensure_leases_bucket(
    js: &jetstream::Context,
    spec: &LeaseSpec,
) -> Result<kv::Store, TopologyError> {
    let err = |e: &dyn std::fmt::Display| TopologyError::Leases(e.to_string());
    let config = kv::Config {
        bucket: LEASES_BUCKET.to_owned(),
        description: "Which evaluator owns each METRICS partition".to_owned(),
        history: 1,
        max_age: spec.expiry(),
        storage: stream::StorageType::File,
        num_replicas: spec.replicas,
        ..Default::default()
    };
    match js.get_key_value(LEASES_BUCKET).await {
        Ok(store) => {
            let current = store.status().await.map_err(|e| err(&e))?;
            let info = current.info.config;
            if info.max_age != config.max_age || info.num_replicas != config.num_replicas {
                tracing::info!(bucket = LEASES_BUCKET, "updated lease bucket settings");
                return js.update_key_value(config).await.map_err(|e| err(&e));
            }
            Ok(store)
        }
        Err(_) => js.create_key_value(config).await.map_err(|e| err(&e)),
    }
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
            if current.subject_transform != desired.subject_transform {
                partition_existing(&stream, &current, &desired).await?;
            }
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

/// Checks that METRICS may take its partitioning: a stream created before partitions existed may
/// once its single `evaluate` consumer has evaluated everything, which is then removed; a
/// partitioned stream never changes its partition count, since that would move series between
/// evaluators in the middle of their episodes.
async fn partition_existing(
    stream: &jetstream::stream::Stream,
    current: &stream::Config,
    desired: &stream::Config,
) -> Result<(), TopologyError> {
    let err = |message: String| TopologyError::Stream {
        name: current.name.clone(),
        message,
    };
    let dest = |c: &stream::Config| {
        c.subject_transform
            .as_ref()
            .map_or_else(|| "none".to_owned(), |t| t.destination.clone())
    };
    if current.subject_transform.is_some() {
        return Err(err(format!(
            "its partitioning is {} and cannot change to {}; keep `partitions` as the stream was \
             created, or create a new stream",
            dest(current),
            dest(desired)
        )));
    }
    if let Ok(legacy) = stream.consumer_info(EVALUATE).await {
        let left = legacy.num_pending + legacy.num_ack_pending as u64;
        if left > 0 {
            return Err(err(format!(
                "the unpartitioned consumer {EVALUATE} still has {left} samples to evaluate; \
                 let the previous version catch up before upgrading"
            )));
        }
        stream
            .delete_consumer(EVALUATE)
            .await
            .map_err(|e| err(e.to_string()))?;
        tracing::info!(
            "removed the unpartitioned {EVALUATE} consumer; its partitions take over from here"
        );
    }
    Ok(())
}

fn stream_differs(current: &stream::Config, desired: &stream::Config) -> bool {
    current.subject_transform != desired.subject_transform
        || current.subjects != desired.subjects
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
    fn filters_are_per_consumer() {
        let t = Topology::built_in();
        // record skips people's changes itself; see `record::is_transition`.
        assert!(t.consumer("record").filter_subjects.is_empty());
        assert_eq!(
            t.consumer("notify").filter_subjects,
            [
                "incidents.*.opened",
                "incidents.*.resolved",
                "incidents.*.status_changed"
            ]
        );
        assert!(t.consumer("evaluate").filter_subjects.is_empty());
        assert_eq!(
            t.evaluate_spec(3).filter_subjects,
            ["metrics.*.*.3"],
            "each partition's consumer reads only its stored subjects"
        );
        let text = BUILT_IN.replace("\"incidents.*.opened\"", "\"incidents..opened\"");
        assert!(matches!(
            Topology::parse(&text),
            Err(TopologyError::Invalid(_))
        ));
    }

    #[test]
    fn evaluate_is_one_consumer_per_partition() {
        let t = Topology::built_in();
        let names: Vec<String> = t.durable_consumers().into_iter().map(|(n, _)| n).collect();
        let evaluators = names.iter().filter(|n| n.starts_with("evaluate-")).count();
        assert_eq!(evaluators, t.partitions() as usize);
        assert!(!names.contains(&"evaluate".to_owned()));
        assert_eq!(evaluate_partition(&evaluate_consumer(7)), Some(7));
        assert_eq!(evaluate_partition("evaluate"), None);
        for bad in ["partitions = 0", "partitions = 2000"] {
            let err = Topology::parse(&BUILT_IN.replace("partitions = 8", bad)).unwrap_err();
            assert!(
                err.to_string().contains("between 1 and 1024"),
                "{bad}: {err}"
            );
        }
        let unset = BUILT_IN.replace("partitions = 8", "");
        assert!(Topology::parse(&unset)
            .unwrap_err()
            .to_string()
            .contains("partitions must be set"));
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
