//! Postgres access shared by the consumers and the API: one module per table ([`rules`],
//! [`incidents`], [`events`], [`comments`], [`outbox`], [`services`], [`departments`],
//! [`notifications`], [`channels`], [`silences`], [`deliveries`], [`api_keys`], [`samples`],
//! [`rollups`], [`backfills`]), what the dashboard's overview sums up ([`overview`]), plus
//! connecting and migrating; [`targets`], the policy on which
//! URLs notification channels may call; and [`search`], incident search in Postgres and the
//! documents the Meilisearch index holds.
//!
//! Queries are plain SQL, one small function each, taking a pool or a transaction. Writes made
//! on behalf of the pipeline are idempotent, keyed on deterministic ids.

pub mod api_keys;
pub mod backfills;
pub mod channels;
pub mod comments;
pub mod deliveries;
pub mod departments;
pub mod events;
pub mod incidents;
pub mod notifications;
pub mod outbox;
pub mod overview;
pub mod page;
pub mod rollups;
pub mod rules;
pub mod samples;
pub mod search;
pub mod services;
pub mod silences;
pub mod targets;

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use page::{Page, Sort, SortField};

/// Severity as a number, most urgent highest, for sorting and comparing in SQL.
pub(crate) const SEVERITY_RANK: &str =
    "CASE severity WHEN 'CRITICAL' THEN 4 WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2 ELSE 1 END";

/// The schema migrations, embedded at build time from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Opens a pool; fails when the URL is malformed. Connections are made lazily, so an
/// unreachable server shows up on first use (and in `/ready`), not here.
pub fn connect_lazy(database_url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = database_url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name("tracely")))
}

/// Applies every pending migration. Safe to run concurrently from several processes: sqlx
/// serialises them with an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
