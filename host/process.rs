//! What the binary sets up around a command: its log (format, filter, and the noise of
//! dependencies held back) and its signals (the first stops gracefully, a second at once).

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The first SIGINT/SIGTERM stops gracefully; a second exits at once (nothing past the
/// last committed checkpoint is lost: the checkpoint only ever trails durable writes).
pub async fn cancel_on_signal(cancel: CancellationToken) {
    let mut signals = 0;
    loop {
        wait_for_signal().await;
        signals += 1;
        if signals == 1 {
            tracing::info!("Stopping: finishing in-flight work (signal again to exit at once).");
            cancel.cancel();
        } else {
            eprintln!("Exiting at once on second signal.");
            std::process::exit(130);
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
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

pub fn init_log(format: LogFormat, filter: Option<&str>) {
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        // delta-kernel logs an ERROR when probing a table that does not exist yet, which
        // sfzb-host then creates: not an error for us. delta-rs warns on every flush that it
        // keeps no statistics for `payload_binary` (a binary column has none to keep), and on
        // every MERGE that a scan metric it derives instead is missing.
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(
                "info,buoyant_kernel=off,deltalake_core=warn,deltalake_core::writer::stats=error,deltalake_core::operations::merge=error",
            )
        }),
    };
    // Escape codes only for a person at a terminal, not for files and log collectors.
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
