//! The transform chain, run on a blocking thread (a guest may take its whole timeout), and
//! swapped for a freshly loaded one on SIGHUP or when a component file changes.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::flow::Flow;
use super::{PipelineError, panic_message};
use crate::event::ChangeEvent;
use crate::sink::{DeadLetter, Stage};
use crate::transform::{ChainOutput, Failed, Routed};

impl Flow<'_> {
    /// The chain's outputs for `decoded`; without a chain, each event as it is.
    pub(super) async fn transform(
        &mut self,
        decoded: Vec<ChangeEvent>,
    ) -> Result<ChainOutput, PipelineError> {
        let Some(mut chain) = self.chain.take() else {
            return Ok(ChainOutput {
                routed: decoded
                    .into_iter()
                    .map(|event| Routed { table: None, event })
                    .collect(),
                ..Default::default()
            });
        };
        let (chain, output) = tokio::task::spawn_blocking(move || {
            let output = chain.run(decoded);
            (chain, output)
        })
        .await
        .map_err(|e| PipelineError::Panicked {
            channel: self.channel.to_string(),
            task: "transform chain",
            message: panic_message(e),
        })?;
        self.chain = Some(chain);
        Ok(output)
    }

    /// Swaps in a freshly loaded chain between batches; if any component fails to load or
    /// to init, the running chain stays and the log says why.
    pub(super) async fn reload(&mut self) {
        let Some(chain) = self.chain.take() else {
            return;
        };
        let (chain, fresh) = tokio::task::spawn_blocking(move || {
            let fresh = chain.reload();
            (chain, fresh)
        })
        .await
        .expect("reloading transforms does not panic");
        match fresh {
            Ok(fresh) => {
                tracing::info!("Transforms reloaded.");
                self.chain = Some(fresh);
            }
            Err(error) => {
                tracing::error!(%error, "Transform reload failed; the running chain stays.");
                self.chain = Some(chain);
            }
        }
    }
}

pub(super) fn transform_letter(failed: Failed, at: i64) -> DeadLetter {
    DeadLetter {
        stage: Stage::Transform(failed.transform),
        error: failed.error,
        org_id: failed.org_id.to_string(),
        channel: failed.channel.to_string(),
        replay_id: failed.replay_id.to_hex(),
        event_id: failed.event_id,
        schema_id: failed.schema_id,
        payload: failed.payload.to_vec(),
        dead_lettered_at: at,
    }
}

/// Signals a reload on SIGHUP or when a component file changes (checked every second).
pub(super) fn spawn_reload_watcher(
    paths: Vec<PathBuf>,
    cancel: CancellationToken,
) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    let stamps = |paths: &[PathBuf]| -> Vec<Option<(std::time::SystemTime, u64)>> {
        paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = stamps(&paths);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = hup => {
                    tracing::info!("SIGHUP: reloading transforms.");
                    let _ = tx.try_send(());
                }
                _ = tick.tick() => {
                    let now = stamps(&paths);
                    if now != seen {
                        seen = now;
                        tracing::info!("A transform file changed: reloading.");
                        let _ = tx.try_send(());
                    }
                }
            }
        }
    });
    rx
}
