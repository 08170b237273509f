//! A flush: the dead-letter sink, then the sink, made durable up to a position; only then
//! the checkpoint moves (with the sink's own commit, or staged for the process's store),
//! and a managed subscription hears the durable position.

use std::time::Instant;

use super::PipelineError;
use super::flow::Flow;

impl Flow<'_> {
    pub(super) async fn flush(&mut self) -> Result<(), PipelineError> {
        self.last_flush = Instant::now();
        self.unflushed_bytes = 0;
        let Some(position) = self.unflushed.take() else {
            return Ok(());
        };
        // Dead letters first: the main sink's flush may carry the checkpoint with it.
        if let Some(dead) = self.dead.as_mut() {
            dead.flush(&position).await?;
        }
        self.sink.flush(&position).await?;
        if let Some(place) = &self.place {
            self.store.stage(self.key, place, &position)?;
        }
        if self.written_since_flush > 0 {
            tracing::info!(
                replay_id = %position,
                "Written to {}: {} events, last {}",
                self.health.target,
                self.written_since_flush,
                self.last_written
            );
            self.written_since_flush = 0;
        }
        tracing::debug!(replay_id = %position, written = self.stats.written, "Checkpoint committed.");
        if let Some(durable) = &self.durable {
            durable.send_replace(Some(position.clone()));
        }
        let hex = position.to_hex();
        self.health.checkpointed(&hex);
        self.stats.checkpoint = Some(hex);
        if let Some(chain) = &self.chain {
            self.health.set_transforms(chain.stats());
        }
        if let Some(current) = self.current.as_mut() {
            Box::pin(current.apply_due(false)).await?;
        }
        Ok(())
    }
}
