//! The `tracely` command line: parses the settings and runs one subcommand.

pub mod apikey;
pub mod bench;
pub mod deadletter;
pub mod dev;
pub mod publish;
pub mod reindex;
pub mod replay;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{self, Cli, Command, RunArgs, DEFAULT_DATA_DIR};
use crate::startup::{self, Application, Settings};
use crate::{shutdown, telemetry};

pub async fn main() -> ExitCode {
    let dev_env = load_dev_env();
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    if let Some(path) = dev_env {
        tracing::info!(path = %path.display(), "using connection settings of the local stack");
    }
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    config::reject_unknown_env()?;
    match command {
        Command::Dev(args) => dev::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Run(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => {
            startup::migrate_only(&args.database_url).await?;
            eprintln!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish(args) => publish::run(args).await,
        Command::Reindex(args) => reindex::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Openapi => {
            println!("{}", api::openapi().to_pretty_json()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Deadletter(command) => deadletter::run(command).await,
        Command::Apikey(command) => apikey::run(command).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    startup::validate_roles(&args.roles)?;
    let settings = Settings {
        topology: args.serve.load_topology()?,
        nats_url: args.nats_url,
        database_url: args.database_url,
        roles: args.roles,
        http_addr: args.serve.http_addr,
        db_max_connections: args.serve.db_max_connections,
        shutdown_timeout: Duration::from_secs(args.serve.shutdown_timeout_secs),
        allowed_lateness: Duration::from_secs(args.serve.allowed_lateness_secs),
        sample_retention: Duration::from_secs(args.serve.sample_retention_secs),
        http: args.serve.http(),
        notify: args.serve.notify(false),
        meili: args.serve.meili.config(),
    };
    let app = Application::build(settings).await?;
    if let Some(addr) = app.http_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    app.run_until_stopped(shutdown::on_signal()).await
}

/// For every command but `dev` itself: when the connection variables are unset and a local
/// stack has written `<data dir>/dev.env`, use its settings. Variables already set win.
fn load_dev_env() -> Option<PathBuf> {
    if std::env::args().nth(1).as_deref() == Some("dev") {
        return None;
    }
    if std::env::var_os("TRACELY_NATS_URL").is_some() && std::env::var_os("DATABASE_URL").is_some()
    {
        return None;
    }
    let dir = std::env::var_os("TRACELY_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let path = dir.join(dev::DEV_ENV_FILE);
    dotenvy::from_path(&path).ok().map(|()| path)
}
