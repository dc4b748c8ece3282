//! Shutdown: the signal that starts it and the flag every long-running task watches.
//!
//! `run` sets one `watch` flag on Ctrl-C or SIGTERM; every link, applier and engine task waits
//! on it with [`stop_requested`] and finishes the target transaction it is writing before it
//! stops.

use tokio::sync::watch;

/// Resolves once the shutdown flag is set.
pub async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is dropped at once, never held across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
