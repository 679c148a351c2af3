//! The integration tests, one module per area, in one binary: it is built and linked once,
//! and its tests run side by side instead of one file after another. Each test starts its own
//! nats-server and Postgres (`support`).
//!
//! Three suites stay binaries of their own: `faults` (run apart, `make test-faults`),
//! `prometheus` (it reads the process-wide metrics recorder, which other tests here would
//! write to) and `search_meili` (its own `main`, to report a skip).

#[path = "../fixtures/seed.rs"]
mod seed;
#[path = "../support/mod.rs"]
mod support;

mod api_access;
mod api_contract;
mod api_errors;
mod api_resources;
mod backfills_api;
mod backtest_api;
mod channels_api;
mod cli;
mod cluster;
mod compose;
mod dashboard_api;
mod dashboard_e2e;
mod deadletter;
mod devstack;
mod incident_lists;
mod incidents_api;
mod metrics_api;
mod notify;
mod python_publisher;
mod record_batches;
mod recovery;
mod replay;
mod search_fallback;
mod search_postgres;
mod silences_api;
mod spine;
mod topology;
mod windowed_rules;
