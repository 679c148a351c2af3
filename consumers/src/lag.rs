//! Pipeline backlog and database pool gauges, refreshed every few seconds: for every durable
//! consumer in the topology, messages not yet delivered and delivered but unacked; and the
//! Postgres pool's open, idle and maximum connections. Runs in every process, whatever its
//! roles, so any `/metrics` shows how far behind the whole pipeline is.

use std::time::Duration;

use async_nats::jetstream;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::telemetry;
use crate::topology::Topology;

/// How often the gauges are refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Refreshes the gauges every [`REFRESH_EVERY`] until `shutdown` fires. A consumer whose info
/// cannot be read keeps its last values until the next round.
pub async fn run_until_stopped(
    js: jetstream::Context,
    pool: PgPool,
    topology: Topology,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(REFRESH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        refresh(&js, &pool, &topology).await;
    }
}

/// Reads every consumer's info and the pool's state once.
pub async fn refresh(js: &jetstream::Context, pool: &PgPool, topology: &Topology) {
    for (name, spec) in topology.durable_consumers() {
        let info = match js.get_stream(&spec.stream).await {
            Ok(stream) => stream.consumer_info(&name).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match info {
            Ok(info) => telemetry::consumer_lag(&name, info.num_pending, info.num_ack_pending),
            Err(e) => tracing::debug!(consumer = %name, error = %e, "cannot read consumer info"),
        }
    }
    telemetry::db_pool(
        pool.size(),
        pool.num_idle(),
        pool.options().get_max_connections(),
    );
}
