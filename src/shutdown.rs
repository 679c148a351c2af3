//! Turns SIGINT, SIGTERM and SIGHUP into a cancellation token that every component watches.
//! SIGHUP counts too: a closed terminal must not kill `tracely dev` before it has stopped its
//! child processes.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first Ctrl-C, SIGTERM or SIGHUP.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            _ = term.recv() => tracing::info!("terminated; shutting down"),
            _ = hangup.recv() => tracing::info!("hung up; shutting down"),
        }
        cancel.cancel();
    });
    token
}
