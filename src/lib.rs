//! The `tracely` binary's library: [`config`] (the settings tree), [`startup`] (wiring the
//! components together), [`shutdown`] and [`telemetry`], the subcommands in [`cli`], and
//! [`devstack`], which runs nats-server and Postgres as child processes for `tracely dev` and
//! for the integration tests.

pub mod cli;
pub mod config;
pub mod devstack;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
