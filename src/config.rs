//! The typed settings tree: command-line flags, each with an environment variable of the same
//! meaning. Unknown `TRACELY_*` variables are refused so a typo never silently falls back to a
//! default.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use consumers::notify::NotifyConfig;
use consumers::Topology;
use store::search::meili::MeiliConfig;
use store::targets::TargetPolicy;

/// Every environment variable Tracely reads.
pub const ENV_VARS: &[&str] = &[
    "TRACELY_NATS_URL",
    "DATABASE_URL",
    "TRACELY_HTTP_ADDR",
    "TRACELY_TOPOLOGY",
    "TRACELY_ROLES",
    "TRACELY_DB_MAX_CONNECTIONS",
    "TRACELY_SHUTDOWN_TIMEOUT_SECS",
    "TRACELY_ALLOWED_LATENESS_SECS",
    "TRACELY_SAMPLE_RETENTION_SECS",
    "TRACELY_RATE_LIMIT_PER_SEC",
    "TRACELY_RATE_LIMIT_BURST",
    "TRACELY_CORS_ORIGINS",
    "TRACELY_MAX_BODY_BYTES",
    "TRACELY_WEBHOOK_ALLOW_PRIVATE",
    "TRACELY_WEBHOOK_TIMEOUT_SECS",
    "TRACELY_WEBHOOK_MAX_ATTEMPTS",
    "MEILI_URL",
    "MEILI_MASTER_KEY",
    "MEILI_BIN",
    "TRACELY_MEILI_INDEX",
    "TRACELY_API_KEY",
    "TRACELY_API_URL",
    "TRACELY_DATA_DIR",
    "TRACELY_LOG_FORMAT",
    "TRACELY_NATS_SERVER_BIN",
    "TRACELY_PG_BIN_DIR",
    "RUST_LOG",
];

/// Where `tracely dev` keeps its data when not told otherwise.
pub const DEFAULT_DATA_DIR: &str = ".tracely";
/// The topology file used when it exists and none is configured.
pub const DEFAULT_TOPOLOGY: &str = "nats/topology.toml";

#[derive(Debug, Parser)]
#[command(name = "tracely", version, about = "Streaming service-quality monitor")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log output format.
    #[arg(
        long,
        global = true,
        env = "TRACELY_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local stack: private nats-server and Postgres as child processes, every role,
    /// and the HTTP API.
    Dev(DevArgs),
    /// Run the chosen roles against externally configured NATS and Postgres.
    Run(RunArgs),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Publish samples from a CSV or NDJSON file to the METRICS stream.
    Publish(PublishArgs),
    /// Rebuild the Meilisearch index of incidents from Postgres (safe while the pipeline runs).
    Reindex(ReindexArgs),
    /// Replay METRICS through rules to backfill incidents, or with --dry-run to see what the
    /// rules would have caught.
    Replay(ReplayArgs),
    /// Measure the whole pipeline on this machine against raw JetStream: sustained throughput,
    /// and detection latency at 25%, 50% and 80% of it. Starts its own nats-server and
    /// Postgres.
    Bench(BenchArgs),
    /// List, inspect and re-drive dead-lettered messages.
    #[command(subcommand)]
    Deadletter(DeadletterCommand),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Apikey(ApikeyCommand),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Directory for the benchmark's nats-server and Postgres data; emptied first, removed after.
    #[arg(long, default_value = ".tracely/bench")]
    pub data_dir: PathBuf,
    /// Samples published for each throughput measurement.
    #[arg(long, default_value_t = 300_000)]
    pub samples: usize,
    /// Series the samples spread over, each judged by every one of the 10 rules.
    #[arg(long, default_value_t = 10_000)]
    pub series: usize,
    /// Seconds each latency load level runs.
    #[arg(long, default_value_t = 20)]
    pub level_secs: u64,
    /// Probe samples per second at each level; each opens one incident whose detection
    /// latency is measured.
    #[arg(long, default_value_t = 100)]
    pub probes_per_sec: u64,
    /// Where to write the results (a section of the file is replaced); `-` writes nothing.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub write: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum DeadletterCommand {
    /// List dead letters, newest last.
    List {
        #[command(flatten)]
        filter: DeadletterFilter,
        /// Most to list: the newest that match.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Show one dead letter: where it came from, why, every header and the payload.
    Show {
        /// Its sequence in the DEADLETTER stream, as `list` prints it.
        seq: u64,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Publish dead letters again on their original subjects, for the consumer that gave up
    /// on them only, then delete them from DEADLETTER. Run it after fixing the cause.
    Replay {
        /// DEADLETTER sequences to re-drive; without any, every dead letter that matches the
        /// filters (which then needs a filter or --all).
        seqs: Vec<u64>,
        #[command(flatten)]
        filter: DeadletterFilter,
        /// Re-drive every dead letter.
        #[arg(long)]
        all: bool,
        /// Show what would be re-driven, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep the dead letters after re-driving them.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

/// Which dead letters a command looks at; every given filter must match.
#[derive(Debug, Clone, Default, Args)]
pub struct DeadletterFilter {
    /// Only those a consumer gave up on: evaluate (or one partition's, evaluate-3), archive,
    /// record, notify, index, deliver.
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only those from a stream: METRICS, INCIDENTS or DELIVERIES.
    #[arg(long)]
    pub stream: Option<String>,
    /// Only those of a reason kind, such as decode, invalid or max_deliver.
    #[arg(long)]
    pub kind: Option<String>,
}

#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS server URL; a cluster's servers comma-separated.
    #[arg(long, env = "TRACELY_NATS_URL")]
    pub nats_url: String,
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key and print it. It is shown only this once.
    Create {
        /// What the key may do: viewer (reads), operator (also works incidents) or admin (also
        /// rules, departments, services and keys).
        #[arg(long)]
        role: store::api_keys::Role,
        /// A name to recognise the key by; it appears as the actor in incident timelines.
        #[arg(long, default_value = "cli")]
        name: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke a key by id; requests with it get 401 from then on.
    Revoke {
        id: uuid::Uuid,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for the local stack's data (NATS store, Postgres cluster, dev.env).
    #[arg(long, env = "TRACELY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// NATS server URL, e.g. nats://127.0.0.1:4222; a cluster's servers comma-separated.
    #[arg(long, env = "TRACELY_NATS_URL")]
    pub nats_url: String,

    /// Postgres URL, e.g. postgres://user:pass@host:5432/tracely.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Roles to run in this process, comma-separated.
    #[arg(
        long,
        env = "TRACELY_ROLES",
        value_delimiter = ',',
        default_value = "evaluate,record,archive,notify,index,api"
    )]
    pub roles: Vec<Role>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Settings shared by `dev` and `run`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on; port 0 picks a free port.
    #[arg(long, env = "TRACELY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// JetStream topology file. Defaults to nats/topology.toml when it exists, else the copy
    /// built into the binary.
    #[arg(long, env = "TRACELY_TOPOLOGY")]
    pub topology: Option<PathBuf>,

    /// Most Postgres connections this process opens.
    #[arg(long, env = "TRACELY_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// How long shutdown waits for components to finish what they hold.
    #[arg(long, env = "TRACELY_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// How far behind the newest sample of its series a sample may arrive and still count in
    /// windowed rules. Windows wait this long (in event time) before evaluating.
    #[arg(long, env = "TRACELY_ALLOWED_LATENESS_SECS", default_value_t = 30)]
    pub allowed_lateness_secs: u64,

    /// How long archived raw samples are kept, by event time, before they are pruned (every
    /// minute). Per-minute rollups, which charts read, are kept. The default, 7 days, matches
    /// the METRICS stream's replay horizon.
    #[arg(long, env = "TRACELY_SAMPLE_RETENTION_SECS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(60..=100 * 365 * 24 * 3600))]
    pub sample_retention_secs: u64,

    /// Sustained API requests per second allowed per key (or per client address without a
    /// valid key). Beyond it requests get 429 with Retry-After.
    #[arg(long, env = "TRACELY_RATE_LIMIT_PER_SEC", default_value_t = NonZeroU32::new(50).unwrap())]
    pub rate_limit_per_sec: NonZeroU32,

    /// Requests a caller may send at once above the sustained rate.
    #[arg(long, env = "TRACELY_RATE_LIMIT_BURST", default_value_t = NonZeroU32::new(100).unwrap())]
    pub rate_limit_burst: NonZeroU32,

    /// Origins allowed to call the API from a browser, comma-separated (`*` for any). Empty
    /// allows none, which is right when the dashboard is served by Tracely itself.
    #[arg(long, env = "TRACELY_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// Largest request body accepted, in bytes; larger ones get 413. `POST /api/metrics`
    /// takes up to 16 MiB regardless, for batches of samples.
    #[arg(long, env = "TRACELY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Let webhook and Slack channels call loopback, link-local and private addresses. Off by
    /// default, since such URLs could probe the internal network; `tracely dev` turns it on
    /// unless set to false.
    #[arg(long, env = "TRACELY_WEBHOOK_ALLOW_PRIVATE", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub webhook_allow_private: Option<bool>,

    /// Longest a webhook or Slack request may take, connecting included, in seconds.
    #[arg(long, env = "TRACELY_WEBHOOK_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub webhook_timeout_secs: u64,

    /// Attempts per webhook or Slack notification before it is dead-lettered and recorded as
    /// failed. Retries back off exponentially (see `deliver` in the topology).
    #[arg(long, env = "TRACELY_WEBHOOK_MAX_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_max_attempts: u32,

    #[command(flatten)]
    pub meili: MeiliArgs,
}

/// Where Meilisearch is; without a URL, search is served by Postgres.
#[derive(Debug, Args)]
pub struct MeiliArgs {
    /// Meilisearch URL, e.g. http://127.0.0.1:7700. Unset: search is served by Postgres full-text
    /// search (no typo tolerance) and the index role does nothing.
    #[arg(long, env = "MEILI_URL")]
    pub meili_url: Option<String>,

    /// Meilisearch's master key (or an API key allowed to manage the index).
    #[arg(long, env = "MEILI_MASTER_KEY", hide_env_values = true)]
    pub meili_master_key: Option<String>,

    /// The Meilisearch index incidents are kept in.
    #[arg(long, env = "TRACELY_MEILI_INDEX", default_value = store::search::meili::DEFAULT_INDEX)]
    pub meili_index: String,
}

impl MeiliArgs {
    pub fn config(&self) -> Option<MeiliConfig> {
        let url = self.meili_url.as_deref()?.trim();
        (!url.is_empty()).then(|| MeiliConfig {
            url: url.trim_end_matches('/').to_owned(),
            key: self.meili_master_key.clone().filter(|k| !k.is_empty()),
            index: self.meili_index.clone(),
        })
    }
}

/// An origin such as `https://ops.example.com`, or `*`.
fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(text.to_owned());
    }
    let valid = (text.starts_with("http://") || text.starts_with("https://"))
        && !text
            .trim_end_matches('/')
            .contains(|c: char| c.is_whitespace())
        && text.matches('/').count() == 2
        && axum::http::HeaderValue::from_str(text).is_ok();
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an origin such as https://ops.example.com (scheme and host, no path), or *"
        ))
    }
}

impl ServeArgs {
    /// How notifications are sent; `private_by_default` is what an unset
    /// `TRACELY_WEBHOOK_ALLOW_PRIVATE` means.
    pub fn notify(&self, private_by_default: bool) -> NotifyConfig {
        NotifyConfig {
            targets: TargetPolicy {
                allow_private: self.webhook_allow_private.unwrap_or(private_by_default),
            },
            timeout: std::time::Duration::from_secs(self.webhook_timeout_secs),
            max_attempts: self.webhook_max_attempts,
        }
    }

    /// The HTTP settings these flags describe.
    pub fn http(&self) -> HttpConfig {
        HttpConfig {
            rate_limit: api::auth::RateLimit {
                per_second: self.rate_limit_per_sec,
                burst: self.rate_limit_burst,
            },
            cors_origins: self.cors_origins.clone(),
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// How the HTTP API treats callers.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub rate_limit: api::auth::RateLimit,
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            rate_limit: api::auth::RateLimit {
                per_second: NonZeroU32::new(50).unwrap(),
                burst: NonZeroU32::new(100).unwrap(),
            },
            cors_origins: Vec::new(),
            max_body_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub meili: MeiliArgs,

    /// Incidents sent to Meilisearch per request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub batch_size: i64,

    /// Empty the index first, so documents of incidents no longer in Postgres go too.
    #[arg(long)]
    pub clear: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Where to start: an RFC 3339 event time (2026-11-20T00:00:00Z) or a METRICS stream
    /// sequence. Reading starts early enough for the rules' windows to fill.
    #[arg(long)]
    pub from: replay::Bound,

    /// Where to end: an RFC 3339 event time, a stream sequence, or `now`.
    #[arg(long, default_value = "now")]
    pub to: replay::Bound,

    /// A rule to run (repeatable); disabled rules run too. Without it, every enabled rule.
    #[arg(long = "rule", value_name = "ID")]
    pub rules: Vec<uuid::Uuid>,

    /// Only this service (repeatable). Without it, every service.
    #[arg(long = "service", value_name = "ID")]
    pub services: Vec<String>,

    /// Print the incidents that would open and resolve, and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Notify the owning teams of backfilled incidents, as for live ones. Without it
    /// backfilled incidents notify nobody.
    #[arg(long, conflicts_with = "dry_run")]
    pub notify: bool,

    /// NATS server URL; a cluster's servers comma-separated.
    #[arg(long, env = "TRACELY_NATS_URL")]
    pub nats_url: String,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The live pipeline's allowed lateness; windows close as they do live only with the same.
    #[arg(long, env = "TRACELY_ALLOWED_LATENESS_SECS", default_value_t = 30)]
    pub allowed_lateness_secs: u64,
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Postgres URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// CSV (header service_id,metric_type,value,recorded_at[,id]) or NDJSON file; `-` reads
    /// standard input.
    #[arg(long, short)]
    pub file: PathBuf,

    /// File format; guessed from the extension when omitted (.csv, .ndjson, .jsonl).
    #[arg(long)]
    pub format: Option<FileFormat>,

    /// NATS server URL; a cluster's servers comma-separated.
    #[arg(long, env = "TRACELY_NATS_URL")]
    pub nats_url: String,

    /// Samples published per round of acknowledgements.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    Csv,
    Ndjson,
}

/// A part of the system that a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Role {
    /// The evaluate consumer (METRICS → INCIDENTS).
    Evaluate,
    /// The record consumer (INCIDENTS → Postgres).
    Record,
    /// The archive consumer (METRICS → Postgres raw samples and rollups), and pruning.
    Archive,
    /// The notify and deliver consumers (INCIDENTS → in-app notifications, webhooks, Slack).
    Notify,
    /// The index consumer (INCIDENTS → the Meilisearch index); idle without MEILI_URL.
    Index,
    /// The HTTP API.
    Api,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Evaluate,
        Role::Record,
        Role::Archive,
        Role::Notify,
        Role::Index,
        Role::Api,
    ];
}

impl ServeArgs {
    /// Reads the topology file, or falls back to the built-in copy when none is configured and
    /// the default file does not exist. Fails on an unreadable or invalid file.
    pub fn load_topology(&self) -> anyhow::Result<Topology> {
        let (path, explicit) = match &self.topology {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_TOPOLOGY), false),
        };
        if !explicit && !path.exists() {
            tracing::info!("using the built-in JetStream topology");
            return Ok(Topology::built_in());
        }
        tracing::info!(path = %path.display(), "using JetStream topology file");
        Topology::load(&path).context("loading the JetStream topology")
    }
}

/// Refuses `TRACELY_*` variables this version does not know.
pub fn reject_unknown_env() -> anyhow::Result<()> {
    let unknown: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("TRACELY_") && !ENV_VARS.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "unknown environment variable(s): {}; known ones are {}",
            unknown.join(", "),
            ENV_VARS.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_env_var_the_cli_reads_is_listed() {
        fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let Some(env) = arg.get_env() {
                    out.push(env.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut names = Vec::new();
        walk(&Cli::command(), &mut names);
        for name in names {
            assert!(
                ENV_VARS.contains(&name.as_str()),
                "{name} missing from ENV_VARS"
            );
        }
    }

    #[test]
    fn roles_parse_from_a_list() {
        let cli = Cli::try_parse_from([
            "tracely",
            "run",
            "--nats-url",
            "nats://x",
            "--database-url",
            "postgres://x",
            "--roles",
            "evaluate,api",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.roles, [Role::Evaluate, Role::Api]);
    }

    #[test]
    fn private_webhook_targets_are_allowed_only_on_the_local_stack_unless_set() {
        let dev = |extra: &[&str]| {
            let mut args = vec!["tracely", "dev"];
            args.extend_from_slice(extra);
            let Command::Dev(dev) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not dev")
            };
            dev.serve
        };
        // `tracely dev` passes true, `tracely run` false, when the setting is absent.
        assert!(dev(&[]).notify(true).targets.allow_private);
        assert!(!dev(&[]).notify(false).targets.allow_private);
        let off = dev(&["--webhook-allow-private=false"]);
        assert!(!off.notify(true).targets.allow_private);
        let on = dev(&["--webhook-allow-private"]);
        assert!(on.notify(false).targets.allow_private);
        assert!(Cli::try_parse_from(["tracely", "dev", "--webhook-timeout-secs", "0"]).is_err());
    }
}
