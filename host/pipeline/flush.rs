//! A flush: the dead-letter sink, then the sink, made durable up to a position; only then
//! the checkpoint moves (with the sink's own commit, or staged for the process's store),
//! and a managed subscription hears the durable position.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::flow::Flow;
use super::{MAX_UNFLUSHED_BYTES, PipelineError};
use crate::health::State;

impl Flow<'_> {
    pub(super) async fn flush(&mut self) -> Result<(), PipelineError> {
        self.last_flush = Instant::now();
        let bytes = std::mem::take(&mut self.unflushed_bytes);
        let Some(position) = self.unflushed.take() else {
            return Ok(());
        };
        // Dead letters first: the main sink's flush may carry the checkpoint with it.
        if let Some(dead) = self.dead.as_mut() {
            dead.flush(&position).await?;
        }
        self.sink.flush(&position).await?;
        Box::pin(self.dead_letter_refused(&position)).await?;
        if let Some(place) = &self.place {
            // A failing store holds the position back; the stream goes on.
            self.store.stage(self.key, place, &position);
            self.held_back_bytes = match self.store.failing(place) {
                Some(_) => self.held_back_bytes.saturating_add(bytes),
                None => 0,
            };
        }
        if self.written_since_flush > 0 {
            // Per flush and subscription: debug. The process's summary (health) says it at
            // INFO once per interval, whatever the number of subscriptions.
            tracing::debug!(
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
        self.apply_current_state(false).await
    }

    /// The current-state table catches up with the change table, when due (`finish`:
    /// now). The org's API limit used up is a state, not a failure: the apply waits and the
    /// change table goes on; nothing is lost, the next apply takes every change since.
    pub(super) async fn apply_current_state(&mut self, finish: bool) -> Result<(), PipelineError> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        match Box::pin(current.apply_due(finish)).await {
            Ok(Some(_)) => {
                if matches!(self.health.state(), State::Limited(_)) {
                    tracing::info!(
                        "API requests available again: the current-state table caught up."
                    );
                    self.health.set_state(State::Running);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) if error.is_limited() => {
                let wait = current.hold_off();
                if let Some(held_back) = crate::throttle::admit("api-limit") {
                    tracing::warn!(%error, wait_secs = wait.as_secs(), held_back, "The org's API requests are used up: the current-state table waits, the change table goes on.");
                }
                self.health.set_state(State::Limited(format!(
                    "{error}; the change table goes on, the current-state table tries again within {} s",
                    wait.as_secs()
                )));
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Once as much has been written past the last committed checkpoint as one flush may
    /// hold ([`MAX_UNFLUSHED_BYTES`]) while the checkpoint store fails, the subscription
    /// waits for the store: Salesforce's flow control holds the stream meanwhile, so a
    /// crash during a long outage replays a bounded amount. It is paused, not restarted:
    /// no login, no resubscribe. Cancelled meanwhile: the loop sees the cancel next.
    pub(super) async fn wait_for_store(&mut self, cancel: &CancellationToken) {
        let Some(place) = self.place.clone() else {
            return;
        };
        if self.held_back_bytes < MAX_UNFLUSHED_BYTES {
            return;
        }
        let detail = self.store.failing(&place).unwrap_or_default();
        if let Some(held_back) = crate::throttle::admit("paused") {
            tracing::warn!(store = %place.label(), held_back_bytes = self.held_back_bytes, held_back, "Paused: the checkpoint store has been failing for as much written data as a restart may replay; streaming goes on once it answers.");
        }
        let previous = self.health.state();
        self.health.set_state(State::Paused(format!(
            "the {} checkpoint store has been failing while {} MiB were written ({detail}); streaming goes on once it answers",
            place.label(),
            self.held_back_bytes >> 20
        )));
        // The committer tries the store every interval; a paused subscription only
        // watches for its answer (ten thousand of them do not queue commits of their own).
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        while self.store.failing(&place).is_some() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
        }
        self.held_back_bytes = 0;
        self.health.set_state(previous);
    }
}
