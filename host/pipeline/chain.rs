//! The transform chain, run on a blocking thread (a guest may take its whole timeout), and
//! swapped for a freshly loaded one when a component file of it changed (the process's
//! watcher says when to look; SIGHUP reads the files again).

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

    /// Swaps in a freshly loaded chain between batches if a component of it changed; if any
    /// fails to load or to init, the running chain stays and the log says why.
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
            Ok(Some(fresh)) => {
                tracing::info!("Transforms reloaded.");
                self.chain = Some(fresh);
            }
            Ok(None) => self.chain = Some(chain),
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
