//! Shared integration-test harness: each test gets its own nats-server and Postgres cluster
//! (on free ports, in temp directories, stopped on drop) and runs Tracely in-process or as a
//! child process.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use consumers::notify::NotifyConfig;
use schemas::MetricSample;
use serde_json::{json, Value};
use sqlx::PgPool;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracely::config::{HttpConfig, Role};
use tracely::devstack::{NatsServer, Postgres};
use tracely::startup::{Application, Settings};

/// A private nats-server and Postgres for one test.
pub struct Stack {
    pub nats: NatsServer,
    pub postgres: Postgres,
    pub database_url: String,
    pub dir: TempDir,
}

impl Stack {
    pub async fn start() -> Stack {
        let mut dir = tempfile::Builder::new()
            .prefix("tracely-test-")
            .tempdir()
            .expect("creating a temp dir");
        // For a post-mortem: the servers' data and Tracely's logs stay behind.
        if std::env::var_os("KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let nats = NatsServer::start(&dir.path().join("nats"))
            .await
            .expect("starting nats-server");
        let postgres = Postgres::start_from_template(&dir.path().join("postgres"))
            .await
            .expect("starting Postgres");
        let database_url = postgres
            .create_database("tracely")
            .await
            .expect("creating the database");
        Stack {
            nats,
            postgres,
            database_url,
            dir,
        }
    }

    pub fn settings(&self, roles: &[Role]) -> Settings {
        Settings {
            nats_url: self.nats.url(),
            database_url: self.database_url.clone(),
            roles: roles.to_vec(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            topology: test_topology(),
            db_max_connections: 5,
            shutdown_timeout: Duration::from_secs(10),
            allowed_lateness: Duration::from_secs(30),
            sample_retention: Duration::from_secs(7 * 24 * 3600),
            http: HttpConfig::default(),
            notify: NotifyConfig {
                // Receivers in tests listen on loopback.
                targets: store::targets::TargetPolicy {
                    allow_private: true,
                },
                ..NotifyConfig::default()
            },
            meili: None,
        }
    }

    pub async fn js(&self) -> jetstream::Context {
        let client = async_nats::connect(self.nats.url())
            .await
            .expect("connecting to nats");
        jetstream::new(client)
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.database_url)
            .await
            .expect("connecting to Postgres")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Tracely running in this process.
pub struct App {
    pub addr: SocketAddr,
    /// Sends the admin key with every request.
    pub http: reqwest::Client,
    /// An admin key created for the test.
    pub admin_key: String,
    pub pool: PgPool,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl App {
    pub async fn start(stack: &Stack) -> App {
        App::start_with(stack.settings(&Role::ALL)).await
    }

    pub async fn start_with(settings: Settings) -> App {
        let app = Application::build(settings)
            .await
            .expect("building the application");
        let addr = app
            .http_addr()
            .unwrap_or_else(|| "127.0.0.1:9".parse().unwrap());
        let pool = app.pool().clone();
        let admin_key = key(&pool, KeyRole::Admin).await;
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        App {
            addr,
            http: client_with_key(&admin_key),
            admin_key,
            pool,
            shutdown,
            handle,
        }
    }

    /// A client that sends a new key of `role`.
    pub async fn client(&self, role: KeyRole) -> reqwest::Client {
        client_with_key(&key(&self.pool, role).await)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        decode(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        decode(response).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .patch(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PATCH");
        decode(response).await
    }

    /// Creates a rule and returns its id.
    pub async fn rule(&self, body: Value) -> String {
        let (status, created) = self.post("/api/rules", &body).await;
        assert_eq!(status, 201, "creating rule {body}: {created}");
        created["data"]["id"].as_str().unwrap().to_owned()
    }

    /// All incidents, newest first.
    pub async fn incidents(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/incidents?limit=1000{query}")).await;
        assert_eq!(status, 200, "{body}");
        body["data"].as_array().unwrap().clone()
    }

    /// (service, metric, severity) of every incident, sorted: what the seed cases compare.
    pub async fn incident_kinds(&self) -> Vec<(String, String, String)> {
        let field = |i: &Value, name: &str| i[name].as_str().unwrap().to_owned();
        let mut kinds: Vec<_> = self
            .incidents("")
            .await
            .iter()
            .map(|i| {
                (
                    field(i, "service_id"),
                    field(i, "metric_type"),
                    field(i, "severity"),
                )
            })
            .collect();
        kinds.sort();
        kinds
    }

    /// The seed's three rules: latency > 150 (HIGH), packet loss > 1.5 (MEDIUM, disabled) and
    /// buffer ratio > 6 (MEDIUM). Waits the second that rule changes take to reach the
    /// evaluator, so samples published next are judged by them.
    pub async fn seed_rules(&self) {
        self.rule(json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH"}))
            .await;
        self.rule(json!({"metric_type": "PACKET_LOSS", "operator": ">", "threshold": 1.5, "severity": "MEDIUM", "enabled": false}))
            .await;
        self.rule(json!({"metric_type": "BUFFER_RATIO", "operator": ">", "threshold": 6, "severity": "MEDIUM"}))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("the application task panicked")
            .expect("the application failed");
    }
}

pub use store::api_keys::Role as KeyRole;

/// Creates a key of `role` directly in the database.
pub async fn key(pool: &PgPool, role: KeyRole) -> String {
    api::auth::create_key(pool, &format!("test-{role}"), role)
        .await
        .expect("creating an API key")
        .key
}

pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {key}").parse().expect("a header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("building an HTTP client")
}

pub async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("reading the body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }))
    };
    (status, body)
}

pub fn sample(service: &str, metric: &str, value: f64, at: &str) -> MetricSample {
    MetricSample {
        service_id: service.into(),
        metric_type: metric.into(),
        value,
        recorded_at: at.parse().expect("an RFC 3339 time"),
        id: None,
        labels: Default::default(),
    }
}

/// Publishes samples in order and waits for every PubAck.
pub async fn publish(js: &jetstream::Context, samples: &[MetricSample]) {
    api::publish::publish_samples(js, samples)
        .await
        .expect("publishing samples");
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last sequence of the INCIDENTS stream: whether anything was published there.
pub async fn incidents_stream_last(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("INCIDENTS").await.expect("INCIDENTS");
    stream
        .info()
        .await
        .expect("INCIDENTS info")
        .state
        .last_sequence
}

/// The built-in topology with short partition leases, so that evaluation starts within a
/// second and a dead evaluator's partitions move within seconds.
pub fn test_topology() -> consumers::Topology {
    let mut topology = consumers::Topology::built_in();
    topology.evaluate_leases.ttl_secs = 4;
    topology
}

/// The evaluate consumer of the partition holding the series of `service` and `metric`.
pub fn evaluate_consumer_of(service: &str, metric: &str) -> String {
    let partitions = consumers::Topology::built_in().partitions();
    consumers::topology::evaluate_consumer(schemas::subject::partition_of(
        service, metric, partitions,
    ))
}

/// Waits until every partition's `evaluate`, `archive` and `record` have handled everything in
/// their streams.
pub async fn drained(js: &jetstream::Context, timeout: Duration) {
    let names: Vec<(String, String)> = consumers::Topology::built_in()
        .durable_consumers()
        .into_iter()
        .filter(|(name, _)| name.starts_with("evaluate-") || name == "archive" || name == "record")
        .map(|(name, spec)| (spec.stream, name))
        .collect();
    let names: Vec<(&str, &str)> = names
        .iter()
        .map(|(s, n)| (s.as_str(), n.as_str()))
        .collect();
    drained_consumers(js, &names, timeout).await
}

/// Waits until each (stream, consumer) has handled everything in its stream.
pub async fn drained_consumers(
    js: &jetstream::Context,
    consumers: &[(&str, &str)],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut busy = Vec::new();
        for &(stream, consumer) in consumers {
            let info = match js.get_stream(stream).await {
                Ok(stream) => stream
                    .consumer_info(consumer)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match info {
                Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
                Ok(info) => busy.push(format!(
                    "{consumer}: {} pending, {} unacked",
                    info.num_pending, info.num_ack_pending
                )),
                Err(e) => busy.push(format!("{consumer}: {e}")),
            }
        }
        if busy.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the consumers to drain: {}",
            busy.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
