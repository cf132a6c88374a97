//! Shutdown on SIGTERM (the kubelet) or SIGINT (a terminal).

use tokio_util::sync::CancellationToken;

/// Resolves when SIGTERM or SIGINT arrives; says which.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// A token cancelled by the first SIGTERM or SIGINT. A second one ends
/// the process at once, drain or not (status 128 + the signal's number, as
/// a shell reports it): someone at a terminal pressing Ctrl-C again means
/// now, as does a second `kubectl delete` with a shorter grace period.
pub fn cancel_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let signal = shutdown_signal().await;
        tracing::info!(signal, "shutting down");
        trigger.cancel();
        let again = shutdown_signal().await;
        tracing::warn!(
            signal = again,
            "second signal: exiting without waiting for the drain"
        );
        std::process::exit(match again {
            "SIGTERM" => 143,
            _ => 130,
        });
    });
    shutdown
}
