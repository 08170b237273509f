//! The loop of one subscription: batches from the source in, a flush at least every flush
//! interval (and past a size), transform reloads between batches, and the end: cancelled,
//! idle (`until-idle`), failed, or the object to be read again (a GAP_OVERFLOW, a snapshot
//! asked for), after which the pipeline starts the loop again.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{MAX_UNFLUSHED_BYTES, PipelineError, SubscriptionStats};
use crate::checkpoint::{CheckpointKey, Checkpoints, Place};
use crate::clock::now_ms;
use crate::config::RunOptions;
use crate::event::{ChangeType, ReplayId};
use crate::health::{Health, State};
use crate::salesforce::pubsub::{RawEvent, SourceBox, SourceMsg};
use crate::salesforce::schema::SchemaCache;
use crate::sink::{Sink, SinkSpec};
use crate::transform::Chain;

/// The decode → transform → route → write → flush steps of one subscription, and their
/// state between batches.
pub(super) struct Flow<'a> {
    pub(super) channel: Arc<str>,
    pub(super) schemas: Arc<SchemaCache>,
    pub(super) sink: &'a mut Sink,
    pub(super) dead_spec: Option<&'a SinkSpec>,
    pub(super) app_id: &'a str,
    pub(super) zerobus: &'a Arc<crate::sink::zerobus::ZerobusPool>,
    /// Opened on the first dead letter, so a clean run leaves no empty file behind.
    pub(super) dead: Option<Sink>,
    pub(super) chain: Option<Chain>,
    pub(super) store: &'a Checkpoints,
    pub(super) key: &'a CheckpointKey,
    /// Where the checkpoint is staged; none for a sink that keeps its own.
    pub(super) place: Option<Place>,
    pub(super) stats: SubscriptionStats,
    /// The position written but not yet flushed and checkpointed.
    pub(super) unflushed: Option<ReplayId>,
    pub(super) last_flush: Instant,
    pub(super) first_batch: Option<Instant>,
    pub(super) health: Arc<Health>,
    /// The last event written, as the reference logs it: `Account UPDATE 001…`.
    pub(super) last_written: String,
    pub(super) written_since_flush: u64,
    /// Bytes of the rows written since the last flush, which a sink may hold in memory.
    pub(super) unflushed_bytes: usize,
    /// Bytes flushed since the checkpoint store began failing: what a restart now would
    /// write again. Past [`MAX_UNFLUSHED_BYTES`] the subscription waits for the store.
    pub(super) held_back_bytes: usize,
    /// Each durable position, for a managed subscription to commit to Salesforce; dropped
    /// once the last flush is done.
    pub(super) durable: Option<tokio::sync::watch::Sender<Option<ReplayId>>>,
    /// The current-state table following the sink's table, applied after flushes (boxed:
    /// few subscriptions keep one, and every flow would hold its room).
    pub(super) current: Option<Box<crate::current_state::CurrentState>>,
    /// Whether a GAP_OVERFLOW reads the object again (`snapshot = true`).
    pub(super) resnapshot: bool,
    /// The last position of a batch that held a GAP_OVERFLOW, to read the object again at.
    pub(super) overflow: Option<ReplayId>,
    /// The stream's last position heard of (a batch's last event, a keepalive's latest):
    /// where a snapshot asked for over HTTP is read at.
    pub(super) position: Option<ReplayId>,
    /// The position of the last snapshot this run read: one asked for waits until the
    /// stream moves past it (until then the table holds what a new one would read).
    pub(super) read_at: Option<ReplayId>,
}

/// Why [`Flow::drive`] returned.
pub(super) enum End {
    /// Cancelled, idle, or the source ended.
    Stopped,
    /// The object is to be read again at this position, the last one received (a batch
    /// that held a GAP_OVERFLOW, or a snapshot asked for). Rows are written, not flushed.
    Again(ReplayId),
}

impl Flow<'_> {
    /// The steps of a batch, a flush and a reload run boxed: inline they would make the
    /// future of every idle subscription as large as a Delta commit's (12 KB; 66 KB for
    /// the whole supervised task), kept for as long as it runs.
    pub(super) async fn drive(
        &mut self,
        rx: &mut mpsc::Receiver<SourceBox>,
        options: &RunOptions,
        cancel: &CancellationToken,
    ) -> Result<End, PipelineError> {
        let far = Duration::from_secs(100 * 365 * 86_400);
        let idle = options.until_idle.unwrap_or(far);
        let mut idle_deadline = tokio::time::Instant::now() + idle;
        let mut flush_tick = tokio::time::interval(options.flush_interval);
        let mut reload = self.chain.as_ref().map(|chain| chain.changes());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(End::Stopped),
                _ = tokio::time::sleep_until(idle_deadline) => {
                    // Idle time counts only once the stream is up: a run that never
                    // subscribed (an unreachable endpoint) has not succeeded.
                    if !self.health.has_subscribed() {
                        let reason = match self.health.state() {
                            State::Reconnecting(detail) | State::Failed(detail) => detail,
                            _ => "the Pub/Sub API sent nothing".to_string(),
                        };
                        return Err(PipelineError::NeverSubscribed {
                            channel: self.channel.to_string(),
                            idle_secs: idle.as_secs_f64(),
                            reason,
                        });
                    }
                    tracing::info!(idle_secs = idle.as_secs_f64(), "No event for the idle limit; stopping (--until-idle).");
                    return Ok(End::Stopped);
                }
                _ = flush_tick.tick() => {
                    if self.unflushed.is_some() && self.last_flush.elapsed() >= options.flush_interval {
                        Box::pin(self.flush()).await?;
                        Box::pin(self.wait_for_store(cancel)).await;
                    } else if self.current.as_ref().is_some_and(|c| c.held()) {
                        // Held off by the API limit: it catches up even when no event comes.
                        Box::pin(self.apply_current_state(false)).await?;
                    }
                }
                Ok(()) = async { match reload.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } } => {
                    Box::pin(self.reload()).await;
                }
                // Only once the stream has named a position past the last snapshot's: the
                // snapshot is read at it.
                _ = self.health.snapshot_asked(), if self.resnapshot && self.position.is_some() && self.position != self.read_at => {
                    let at = self.position.clone().expect("guarded by the branch condition");
                    tracing::info!(replay_id = %at, "Snapshot asked for: reading the object again at the stream's last position.");
                    return Ok(End::Again(at));
                }
                msg = rx.recv() => match msg.map(|m| *m) {
                    None => return Ok(End::Stopped),
                    Some(SourceMsg::Keepalive { latest }) => {
                        self.health.message();
                        self.stats.keepalives += 1;
                        self.health.keepalives.store(self.stats.keepalives, Relaxed);
                        // Everything received is already written: the keepalive position is safe.
                        if self.stats.checkpoint.as_deref() != Some(&latest.to_hex()) {
                            self.unflushed = Some(latest.clone());
                        }
                        self.position = Some(latest);
                    }
                    Some(SourceMsg::Events { events, org_id, credit }) => {
                        self.health.message();
                        Box::pin(self.handle(events, org_id)).await?;
                        drop(credit);
                        if let Some(at) = self.overflow.take() {
                            return Ok(End::Again(at));
                        }
                        // Idle time counts from the end of the batch: one that took long
                        // to write (a table created first) must not leave the next batch,
                        // waiting meanwhile, looking late.
                        idle_deadline = tokio::time::Instant::now() + idle;
                        if self.last_flush.elapsed() >= options.flush_interval
                            || self.unflushed_bytes >= MAX_UNFLUSHED_BYTES
                        {
                            Box::pin(self.flush()).await?;
                            Box::pin(self.wait_for_store(cancel)).await;
                        }
                    }
                }
            }
        }
    }

    /// One batch: decode → transform → route → write; the checkpoint may then pass it.
    async fn handle(
        &mut self,
        events: Vec<RawEvent>,
        org_id: Arc<str>,
    ) -> Result<(), PipelineError> {
        let processed = now_ms();
        let last = events.last().map(|e| e.replay_id.clone());
        // Only a Delta sink (main or dead-letter) may hold rows from before a crash, and
        // needs to hear which events came again.
        let holding =
            self.sink.keeps_checkpoint() || matches!(self.dead_spec, Some(SinkSpec::Delta(_)));
        let batch: Vec<ReplayId> = match holding {
            true => events.iter().map(|e| e.replay_id.clone()).collect(),
            false => Vec::new(),
        };
        self.stats.received += events.len() as u64;
        self.health.events_received(events.len() as u64);
        let (decoded, letters) = self.decode(events, &org_id, processed);
        if let Some(overflow) = decoded
            .iter()
            .find(|e| e.header.change_type == ChangeType::GapOverflow)
        {
            // Salesforce changed more records in one transaction than it describes: only
            // reading the object again brings the table up to date.
            let entity = &overflow.header.entity_name;
            match self.resnapshot {
                true => {
                    tracing::warn!(replay_id = %overflow.replay_id, entity = %entity, "GAP_OVERFLOW: changes too many for Salesforce to describe; reading the object again once this batch is written (snapshot = true).");
                    self.overflow = last.clone();
                }
                false => {
                    tracing::warn!(replay_id = %overflow.replay_id, entity = %entity, "GAP_OVERFLOW: changes too many for Salesforce to describe; the table misses them. With snapshot = true, sfzb-host reads the object again after an overflow.");
                }
            }
        }
        let dead_lettered = self.process(decoded, letters, processed).await?;
        if holding {
            self.sink.processed(&batch);
            if let Some(dead) = self.dead.as_mut() {
                dead.processed(&batch);
            }
        }
        self.count(dead_lettered);
        if let Some(last) = last {
            self.position = Some(last.clone());
            self.unflushed = Some(last);
        }
        Ok(())
    }

    /// Decoded events (and the dead letters of those that did not decode) through
    /// transform → route → write. Returns how many were dead-lettered.
    pub(super) async fn process(
        &mut self,
        decoded: Vec<crate::event::ChangeEvent>,
        mut letters: Vec<crate::sink::DeadLetter>,
        processed: i64,
    ) -> Result<u64, PipelineError> {
        let inputs = decoded.len() as u64;
        let output = self.transform(decoded).await?;
        if let Some(stop) = output.stop {
            return Err(PipelineError::TransformStop(
                stop.error,
                stop.replay_id.to_hex(),
            ));
        }
        let chain_failures = output.failed.len() as u64;
        letters.extend(
            output
                .failed
                .into_iter()
                .map(|f| super::chain::transform_letter(f, processed)),
        );
        let routed_count = output.routed.len() as u64;
        if routed_count + chain_failures < inputs {
            self.stats.dropped += inputs - routed_count - chain_failures;
        }
        let tables = self.route(output.routed, &mut letters, processed);
        self.write(&tables, &mut letters).await?;
        Ok(letters.len() as u64)
    }

    /// The batch's figures, in the stats and in health.
    pub(super) fn count(&mut self, dead_lettered: u64) {
        let first = *self.first_batch.get_or_insert_with(Instant::now);
        self.stats.active_ms = first.elapsed().as_millis() as u64;
        self.stats.dead_lettered += dead_lettered;
        self.health.received.store(self.stats.received, Relaxed);
        self.health.written.store(self.stats.written, Relaxed);
        self.health.dropped.store(self.stats.dropped, Relaxed);
        self.health
            .dead_lettered
            .store(self.stats.dead_lettered, Relaxed);
    }
}
