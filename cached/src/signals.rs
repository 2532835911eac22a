//! Signals: SIGINT and SIGTERM shut down (the order of the shutdown itself lives in
//! `crate::shutdown`: stop accepting, drain in-flight streams for the grace period, stop
//! housekeeping, flush RocksDB); SIGHUP reloads what can change without a restart (TLS
//! identity, tokens).

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown() {
    let (mut interrupt, mut terminate) =
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
            (Err(err), _) | (_, Err(err)) => {
                tracing::error!(error = %err, "cannot listen for shutdown signals; stop cached with SIGKILL");
                return std::future::pending().await;
            }
        };
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal = name, "shutting down");
}

/// Calls `reload` on every SIGHUP until `stop` turns true. `what` names it in the log if
/// SIGHUP cannot be listened for.
pub async fn on_hangup(what: &str, mut stop: watch::Receiver<bool>, mut reload: impl FnMut()) {
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; {what} will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hangups.recv() => reload(),
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
