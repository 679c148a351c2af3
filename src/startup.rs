//! Wires the parts together: connects to NATS and Postgres, migrates, applies the JetStream
//! topology, binds the HTTP listener, and runs the chosen roles until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use consumers::archive::Archiver;
use consumers::evaluate::Evaluators;
use consumers::index::Indexer;
use consumers::notify::deliver::Deliverer;
use consumers::notify::fanout::Notifier;
use consumers::notify::NotifyConfig;
use consumers::record::Recorder;
use consumers::Topology;
use sqlx::PgPool;
use store::search::meili::{Meili, MeiliConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{HttpConfig, Role};

/// How long start-up waits for NATS and Postgres to answer before giving up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);
/// How long requests still in flight may run once shutdown begins.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// Everything needed to start a process, already parsed and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub nats_url: String,
    pub database_url: String,
    pub roles: Vec<Role>,
    pub http_addr: SocketAddr,
    pub topology: Topology,
    pub db_max_connections: u32,
    pub shutdown_timeout: Duration,
    /// How late a sample may arrive and still count in windowed rules.
    pub allowed_lateness: Duration,
    /// How long archived raw samples are kept before they are pruned.
    pub sample_retention: Duration,
    /// Rate limits, CORS and body size of the HTTP API.
    pub http: HttpConfig,
    /// How notifications are sent, and which targets channels may call.
    pub notify: NotifyConfig,
    /// Where Meilisearch is; `None` serves search from Postgres.
    pub meili: Option<MeiliConfig>,
}

/// A connected, migrated process ready to run its roles.
pub struct Application {
    settings: Settings,
    nats: async_nats::Client,
    js: jetstream::Context,
    pool: PgPool,
    listener: TcpListener,
}

impl Application {
    /// Connects, migrates, applies the topology and binds the listener. Fails when a
    /// dependency stays unreachable for 30 seconds, when the server is too old, or when the
    /// address cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        if settings.roles.contains(&Role::Notify) {
            check_delivery_timeout(&settings)?;
        }
        let nats = connect_nats(&settings.nats_url).await?;
        let js = jetstream::new(nats.clone());
        let pool = store::connect_lazy(&settings.database_url, settings.db_max_connections)
            .context("invalid DATABASE_URL")?;
        migrate_when_reachable(&pool).await?;
        let server = nats.server_info();
        if !server.jetstream {
            bail!(
                "nats-server {} at {} has JetStream disabled; start it with -js",
                server.version,
                settings.nats_url
            );
        }
        consumers::topology::apply(&js, &server.version, &settings.topology)
            .await
            .context("applying the JetStream topology")?;
        // Every process listens: without the API role it serves health, readiness and metrics.
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("binding the HTTP listener to {}", settings.http_addr))?;
        Ok(Application {
            settings,
            nats,
            js,
            pool,
            listener,
        })
    }

    /// The bound HTTP address (with the real port when configured with port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs every role until `shutdown` fires or one of them fails; then stops the others
    /// and waits for them to finish what they hold.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            settings,
            nats,
            js,
            pool,
            listener,
        } = self;
        // Installed before any component runs, so no early measurement is lost.
        let metrics = api::telemetry::prometheus();
        let stop = shutdown.child_token();
        let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
        if settings.roles.contains(&Role::Evaluate) {
            let rules = consumers::rules::watch(pool.clone(), stop.clone())
                .await
                .context("loading rules")?;
            let lateness = schemas::Span(
                i64::try_from(settings.allowed_lateness.as_millis()).unwrap_or(i64::MAX),
            );
            let evaluator = Evaluators::new(
                js.clone(),
                pool.clone(),
                settings.topology.clone(),
                rules,
                lateness,
            );
            let token = stop.clone();
            tasks.spawn(async move { ("evaluate", evaluator.run_until_stopped(token).await) });
        }
        if settings.roles.contains(&Role::Record) {
            let recorder = Recorder::new(js.clone(), pool.clone(), &settings.topology);
            let token = stop.clone();
            tasks.spawn(async move { ("record", recorder.run_until_stopped(token).await) });
        }
        if settings.roles.contains(&Role::Archive) {
            let archiver = Archiver::new(
                js.clone(),
                pool.clone(),
                &settings.topology,
                settings.sample_retention,
            );
            let token = stop.clone();
            tasks.spawn(async move { ("archive", archiver.run_until_stopped(token).await) });
        }
        if settings.roles.contains(&Role::Notify) {
            let notifier = Notifier::new(js.clone(), pool.clone(), &settings.topology);
            let token = stop.clone();
            tasks.spawn(async move { ("notify", notifier.run_until_stopped(token).await) });
            let deliverer = Deliverer::new(
                js.clone(),
                pool.clone(),
                &settings.topology,
                settings.notify,
            );
            let token = stop.clone();
            tasks.spawn(async move { ("deliver", deliverer.run_until_stopped(token).await) });
        }
        let meili = match &settings.meili {
            Some(config) => Some(Meili::from_config(config).context("invalid MEILI_URL")?),
            None => {
                tracing::info!(
                    "Meilisearch is not configured (MEILI_URL; `tracely dev` also looks for a \
                     meilisearch binary on PATH or MEILI_BIN): search is served by Postgres \
                     full-text search, without typo tolerance"
                );
                None
            }
        };
        if let (true, Some(meili)) = (settings.roles.contains(&Role::Index), &meili) {
            let indexer = Indexer::new(js.clone(), pool.clone(), meili.clone(), &settings.topology);
            let token = stop.clone();
            tasks.spawn(async move { ("index", indexer.run_until_stopped(token).await) });
        }
        {
            let (js, pool, topology) = (js.clone(), pool.clone(), settings.topology.clone());
            let token = stop.clone();
            tasks.spawn(async move {
                consumers::lag::run_until_stopped(js, pool, topology, token).await;
                ("lag gauges", Ok(()))
            });
        }
        let jobs = Arc::new(api::jobs::Jobs::new(stop.clone()));
        {
            let jobs = jobs.clone();
            tasks.spawn(async move {
                // Ends once the process stops and its backfill jobs have let go; they are left
                // to be reported interrupted, and may be resumed.
                jobs.run_until_stopped().await;
                ("backfill jobs", Ok(()))
            });
        }
        let live = api::live::Hub::new(
            nats.clone(),
            settings
                .topology
                .durable_consumers()
                .into_iter()
                // Without Meilisearch nobody reads `index`; its backlog waits by design.
                .filter(|(name, _)| {
                    settings.meili.is_some() || name.as_str() != consumers::index::CONSUMER
                })
                .map(|(name, spec)| api::live::WatchedConsumer {
                    stream: spec.stream,
                    name,
                })
                .collect(),
            stop.clone(),
        );
        let http = &settings.http;
        let state = api::AppState {
            pool: pool.clone(),
            nats: nats.clone(),
            js: js.clone(),
            metrics,
            meili,
            auth: Arc::new(api::auth::Auth::new(http.rate_limit)),
            settings: Arc::new(api::HttpSettings {
                ready_timeout: Duration::from_secs(2),
                max_body_bytes: http.max_body_bytes,
                cors_origins: http.cors_origins.clone(),
                targets: settings.notify.targets,
                allowed_lateness: schemas::Span(
                    i64::try_from(settings.allowed_lateness.as_millis()).unwrap_or(i64::MAX),
                ),
            }),
            jobs,
            live: live.clone(),
        };
        let app = if settings.roles.contains(&Role::Api) {
            let (auth, auth_pool, token) = (state.auth.clone(), pool.clone(), stop.clone());
            tasks.spawn(async move {
                record_key_use(&auth, &auth_pool, &token).await;
                ("key usage", Ok(()))
            });
            let (live_js, live_pool) = (js.clone(), pool.clone());
            tasks.spawn(async move {
                let fed = live.run_until_stopped(live_js, live_pool).await;
                ("live updates", fed)
            });
            // Every API process runs a relay; one at a time holds the turn to publish.
            let (relay_js, relay_pool, token) = (js.clone(), pool.clone(), stop.clone());
            tasks.spawn(async move {
                let relayed =
                    consumers::outbox::run_until_stopped(relay_js, relay_pool, token).await;
                ("outbox relay", relayed)
            });
            api::app(state)
        } else {
            api::operations_app(state)
        };
        let token = stop.clone();
        tasks.spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let serve = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
            // Requests in flight get a moment to finish; a browser that stopped reading an
            // event stream must not hold up the rest of shutdown.
            let served = tokio::select! {
                served = std::future::IntoFuture::into_future(serve) => served.context("serving HTTP"),
                () = async {
                    token.cancelled().await;
                    tokio::time::sleep(HTTP_GRACE).await;
                } => {
                    tracing::warn!(grace = ?HTTP_GRACE, "HTTP connections still open after the grace period; closing them");
                    Ok(())
                }
            };
            ("http", served)
        });
        tracing::info!(roles = ?settings.roles, "running");

        let mut failure = None;
        if let Some(first) = tasks.join_next().await {
            let (name, result) = first.context("a component panicked")?;
            if stop.is_cancelled() {
                tracing::info!(component = name, "stopped");
            } else {
                let reason = match &result {
                    Ok(()) => "it returned".to_owned(),
                    Err(e) => format!("{e:#}"),
                };
                tracing::error!(component = name, reason, "component stopped unexpectedly");
                failure = Some(anyhow::anyhow!("{name} stopped unexpectedly: {reason}"));
            }
            stop.cancel();
        }
        let deadline = Instant::now() + settings.shutdown_timeout;
        while let Ok(Some(joined)) =
            tokio::time::timeout_at(deadline.into(), tasks.join_next()).await
        {
            match joined {
                Ok((name, Err(e))) => {
                    tracing::warn!(component = name, error = %format!("{e:#}"), "component failed while stopping")
                }
                Ok((name, Ok(()))) => tracing::info!(component = name, "stopped"),
                Err(e) => tracing::warn!(error = %e, "component panicked while stopping"),
            }
        }
        if !tasks.is_empty() {
            tracing::warn!(
                left = tasks.len(),
                "shutdown timed out; abandoning components"
            );
            tasks.abort_all();
        }
        // Acks and publishes still buffered in the client.
        let _ = tokio::time::timeout(Duration::from_secs(5), nats.flush()).await;
        pool.close().await;
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Every few seconds, writes down which keys were used, until stopped.
async fn record_key_use(auth: &api::auth::Auth, pool: &PgPool, stop: &CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => break,
        }
        if let Err(e) = auth.flush(pool).await {
            tracing::debug!(error = %e, "could not record key use; will retry");
        }
    }
    let _ = auth.flush(pool).await;
}

/// Connects to NATS, retrying for a while so a server that is still starting is waited for.
/// `url` may list several servers of a cluster, comma-separated; the client also learns the
/// rest of the cluster from the first server it reaches, and fails over among them.
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers = url
        .split(',')
        .map(|one| one.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid NATS URL {url:?} (TRACELY_NATS_URL or --nats-url)"))?;
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut logged = false;
    loop {
        let options = async_nats::ConnectOptions::new()
            .name("tracely")
            .connection_timeout(Duration::from_secs(5));
        match options.connect(servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() < deadline => {
                if !logged {
                    tracing::warn!(url, error = %e, "NATS not reachable yet; retrying");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("connecting to NATS at {url} (set TRACELY_NATS_URL or --nats-url)")
                })
            }
        }
    }
}

/// Applies migrations, waiting for the database to accept connections.
async fn migrate_when_reachable(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut logged = false;
    loop {
        match store::ping(pool).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                if !logged {
                    tracing::warn!(error = %e, "Postgres not reachable yet; retrying");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(e)
                    .context("connecting to Postgres (set DATABASE_URL or --database-url)")
            }
        }
    }
    store::migrate(pool)
        .await
        .context("applying database migrations")
}

/// Migrates and exits (`tracely migrate`).
pub async fn migrate_only(database_url: &str) -> anyhow::Result<()> {
    let pool = store::connect_lazy(database_url, 2).context("invalid DATABASE_URL")?;
    migrate_when_reachable(&pool).await?;
    pool.close().await;
    Ok(())
}

/// A job must not be handed to another sender while its request may still be under way.
fn check_delivery_timeout(settings: &Settings) -> anyhow::Result<()> {
    let ack_wait = settings
        .topology
        .consumer(consumers::notify::deliver::CONSUMER)
        .ack_wait_secs;
    let timeout = settings.notify.timeout.as_secs();
    if ack_wait <= timeout + 5 {
        bail!(
            "the deliver consumer's ack_wait_secs ({ack_wait}) must exceed the webhook timeout \
             ({timeout} s, TRACELY_WEBHOOK_TIMEOUT_SECS) by more than 5 s"
        );
    }
    Ok(())
}

/// Checks that roles were chosen at all.
pub fn validate_roles(roles: &[Role]) -> anyhow::Result<()> {
    if roles.is_empty() {
        bail!("no roles chosen; use --roles with some of evaluate, record, archive, api");
    }
    Ok(())
}
