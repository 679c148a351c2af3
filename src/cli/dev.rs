//! `tracely dev`: the whole system on one machine with nothing installed but the binaries.
//! Starts nats-server and Postgres as child processes with data under the data directory,
//! runs every role, writes `dev.env` for other programs, and stops everything on Ctrl-C.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{DevArgs, Role};
use crate::devstack::{MeiliServer, NatsServer, Postgres};
use crate::shutdown;
use crate::startup::{Application, Settings};
use store::search::meili::MeiliConfig;

pub const DEV_ENV_FILE: &str = "dev.env";
const DATABASE: &str = "tracely";
/// The name of the admin key each run of the local stack creates.
const DEV_KEY_NAME: &str = "local-stack";

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let data_dir = &args.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .context("resolving the data directory")?;
    let topology = args.serve.load_topology()?;

    tracing::info!(dir = %data_dir.display(), "starting nats-server");
    let nats = NatsServer::start(&data_dir.join("nats")).await?;
    tracing::info!(dir = %data_dir.display(), "starting Postgres");
    let postgres = Postgres::start(&data_dir.join("postgres"), false).await?;
    let database_url = postgres.create_database(DATABASE).await?;
    // Meilisearch, when configured outside or its binary is here; else Postgres serves search.
    let mut meili_server = None;
    let meili = match args.serve.meili.config() {
        Some(config) => Some(config),
        None => match MeiliServer::binary() {
            Some(bin) => {
                tracing::info!(bin = %bin.display(), "starting meilisearch");
                let server = MeiliServer::start(&bin, &data_dir.join("meilisearch")).await?;
                let config = server.config(&args.serve.meili.meili_index);
                meili_server = Some(server);
                Some(config)
            }
            // Start-up says that search is served by Postgres.
            None => None,
        },
    };

    let settings = Settings {
        nats_url: nats.url(),
        database_url: database_url.clone(),
        roles: Role::ALL.to_vec(),
        http_addr: args.serve.http_addr,
        topology,
        db_max_connections: args.serve.db_max_connections,
        shutdown_timeout: Duration::from_secs(args.serve.shutdown_timeout_secs),
        allowed_lateness: Duration::from_secs(args.serve.allowed_lateness_secs),
        sample_retention: Duration::from_secs(args.serve.sample_retention_secs),
        http: args.serve.http(),
        // A local stack calls local receivers.
        notify: args.serve.notify(true),
        meili: meili.clone(),
    };
    let result = async {
        let app = Application::build(settings).await?;
        let addr = app.http_addr().context("the API role has no listener")?;
        let api_key = admin_key(app.pool()).await?;
        let env_file = data_dir.join(DEV_ENV_FILE);
        write_dev_env(
            &env_file,
            &nats.url(),
            &database_url,
            &api_key,
            meili.as_ref(),
        )?;
        print_banner(
            &addr.to_string(),
            &env_file,
            &nats.url(),
            &database_url,
            &api_key,
            meili.as_ref(),
        );
        app.run_until_stopped(shutdown::on_signal()).await
    }
    .await;

    tracing::info!("stopping the local stack");
    // Other commands must not find a stack that is gone.
    let _ = std::fs::remove_file(data_dir.join(DEV_ENV_FILE));
    if let Some(server) = meili_server {
        if let Err(e) = server.stop().await {
            tracing::warn!(error = %format!("{e:#}"), "meilisearch did not stop cleanly");
        }
    }
    let stopped = tokio::join!(postgres.stop(), nats.stop());
    if let Err(e) = stopped.0 {
        tracing::warn!(error = %format!("{e:#}"), "Postgres did not stop cleanly");
    }
    if let Err(e) = stopped.1 {
        tracing::warn!(error = %format!("{e:#}"), "nats-server did not stop cleanly");
    }
    tracing::info!("local stack stopped");
    result
}

/// A fresh admin key for this run of the local stack; the previous run's is revoked.
async fn admin_key(pool: &sqlx::PgPool) -> anyhow::Result<String> {
    store::api_keys::revoke_named(pool, DEV_KEY_NAME).await?;
    let created = api::auth::create_key(pool, DEV_KEY_NAME, store::api_keys::Role::Admin)
        .await
        .context("creating the local stack's admin key")?;
    Ok(created.key)
}

fn write_dev_env(
    path: &Path,
    nats_url: &str,
    database_url: &str,
    api_key: &str,
    meili: Option<&MeiliConfig>,
) -> anyhow::Result<()> {
    let mut text = format!(
        "# Written by `tracely dev`: how to reach the local stack.\n\
         TRACELY_NATS_URL={nats_url}\nDATABASE_URL={database_url}\nTRACELY_API_KEY={api_key}\n"
    );
    if let Some(meili) = meili {
        text.push_str(&format!("MEILI_URL={}\n", meili.url));
        if let Some(key) = &meili.key {
            text.push_str(&format!("MEILI_MASTER_KEY={key}\n"));
        }
    }
    // It holds an admin key: readable by its owner only.
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

fn print_banner(
    addr: &str,
    env_file: &Path,
    nats_url: &str,
    database_url: &str,
    api_key: &str,
    meili: Option<&MeiliConfig>,
) {
    let search = match meili {
        Some(meili) => format!("Meilisearch at {}", meili.url),
        None => "Postgres full-text search (no meilisearch binary)".to_owned(),
    };
    println!(
        "\nTracely is running.\n\
         \n  Dashboard   http://{addr}/?key={api_key}\
         \n  REST API    http://{addr}/api/incidents\
         \n  Health      http://{addr}/ready\
         \n  Metrics     http://{addr}/metrics\
         \n  NATS        {nats_url}\
         \n  Postgres    {database_url}\
         \n  Search      {search}\
         \n  API key     {api_key}  (admin; send as Authorization: Bearer)\
         \n\nConnection settings are in {} (other tracely commands read it).\
         \nPress Ctrl-C to stop.\n",
        env_file.display()
    );
}
