//! The initial snapshot step (`snapshot = true`): capture the stream position, read every
//! record of the object into the table, then let the change stream go on from that
//! position. Two marks in the checkpoint store make it safe to crash anywhere: "begun at
//! P" before the first record is read, "done at P" after the last is durable. A start that
//! finds "begun" at a position "done" is not at reads the snapshot again from the same P.
//!
//! A GAP_OVERFLOW on the stream (changes Salesforce could not describe) begins a snapshot
//! again at the overflow's position, deleted records included, by the same two marks.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::flow::Flow;
use super::{PipelineError, Shared, start_source};
use crate::checkpoint::{CheckpointKey, Checkpoints};
use crate::clock::now_ms;
use crate::config::{RunOptions, SubscriptionConfig};
use crate::event::ReplayId;
use crate::health::Health;
use crate::salesforce::pubsub::{PubSubConnection, SourceMsg, StartPosition};
use crate::salesforce::rest::RestClient;
use crate::snapshot::{Reader, SnapshotError};

/// What a start does about the snapshot.
pub(super) enum Start {
    /// No snapshot: not configured, done, or the table has history already.
    Skip,
    /// A new table: capture the position, then read the snapshot.
    Capture,
    /// A snapshot begun at this position and not done: read it again; with deleted
    /// records (`true`) when it follows a GAP_OVERFLOW rather than starts the table.
    Resume(ReplayId, bool),
}

/// The marks' keys: the subscription's own, with the mark's name after its target.
fn mark(key: &CheckpointKey, name: &str) -> CheckpointKey {
    CheckpointKey {
        target: format!("{} (snapshot {name})", key.target),
        ..key.clone()
    }
}

/// What this start does, from the marks and the table's checkpoint.
pub(super) async fn plan(
    config: &SubscriptionConfig,
    store: &Checkpoints,
    key: &CheckpointKey,
    checkpoint: Option<&ReplayId>,
) -> Result<Start, PipelineError> {
    if !config.snapshot {
        return Ok(Start::Skip);
    }
    let place = store.place(&config.sink, config.layout);
    let done = store.load(&mark(key, "done"), &place).await?;
    let begun = store.load(&mark(key, "begun"), &place).await?;
    // Where the last snapshot begun after the table's start was (see `begin_again`).
    let again = store.load(&mark(key, "again"), &place).await?;
    match (begun, done) {
        (Some(begun), done) if done.as_ref() != Some(&begun) => {
            tracing::info!(replay_id = %begun, "Snapshot begun earlier and not finished: reading it again from the same stream position.");
            let with_deleted = done.is_some() || again.as_ref() == Some(&begun);
            return Ok(Start::Resume(begun, with_deleted));
        }
        (_, Some(_)) => return Ok(Start::Skip),
        (_, None) => {}
    }
    if let Some(at) = checkpoint {
        // The marks live in the checkpoint store even when the table keeps its own
        // checkpoint: a store lost mid-snapshot cannot be told from a table with history.
        tracing::warn!(replay_id = %at, "snapshot = true, but the table already follows the stream and the checkpoint store has no snapshot marks: no snapshot (it is for a new table). If a snapshot was under way and the checkpoint store (state-dir) was lost since, the table holds part of it: start a new table.");
        return Ok(Start::Skip);
    }
    Ok(Start::Capture)
}

/// Records a mark at `position`, durably, before the step it guards goes on: a failing
/// checkpoint store is waited out (see [`Checkpoints::commit_durably`]).
async fn set_mark(
    config: &SubscriptionConfig,
    store: &Checkpoints,
    key: &CheckpointKey,
    name: &str,
    position: &ReplayId,
    cancel: &CancellationToken,
) -> Result<(), PipelineError> {
    let place = store.place(&config.sink, config.layout);
    store.stage(&mark(key, name), &place, position);
    store.commit_durably(&place, cancel).await?;
    Ok(())
}

/// Begins a snapshot again at `position`, the last event of a batch that held a
/// GAP_OVERFLOW: "begun" is staged now, so that it is committed with (or before) the
/// checkpoint that passes the overflow, never after. A sink that keeps its own checkpoint
/// commits that with its rows, so the mark is committed first: a crash before the sink's
/// flush then reads the snapshot again, and the change rows since the sink's last flush
/// are missing from the history table (the snapshot holds their effect).
pub(super) async fn begin_again(
    config: &SubscriptionConfig,
    store: &Checkpoints,
    key: &CheckpointKey,
    position: &ReplayId,
    sink_keeps_checkpoint: bool,
    cancel: &CancellationToken,
) -> Result<(), PipelineError> {
    let place = store.place(&config.sink, config.layout);
    // "again" tells a resumed read it reads deleted records too, also for a table that
    // started without a snapshot (no "done").
    store.stage(&mark(key, "again"), &place, position);
    store.stage(&mark(key, "begun"), &place, position);
    if sink_keeps_checkpoint {
        store.commit_durably(&place, cancel).await?;
    }
    Ok(())
}

/// The stream position to follow changes from once the snapshot is read: the replay id of
/// the first event of a stream opened at LATEST (a change the snapshot then includes), or
/// the latest one a keepalive names. `None` if cancelled first.
pub(super) async fn capture(
    connection: PubSubConnection,
    config: &SubscriptionConfig,
    shared: &Shared,
    options: &RunOptions,
    health: &Arc<Health>,
    store: &Checkpoints,
    key: &CheckpointKey,
    cancel: &CancellationToken,
) -> Result<Option<ReplayId>, PipelineError> {
    tracing::info!(
        "Snapshot: capturing the stream position (the first event, or a keepalive, of a stream at LATEST)."
    );
    let mut one = config.clone();
    one.batch_size = 1;
    let source_cancel = cancel.child_token();
    let (source, mut rx, _durable) = start_source(
        connection,
        &one,
        StartPosition::Latest,
        shared,
        options,
        health,
        source_cancel.clone(),
    );
    let position = loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break None,
            message = rx.recv() => message,
        };
        match message.map(|m| *m) {
            Some(SourceMsg::Events { events, .. }) => match events.first() {
                Some(first) => break Some(first.replay_id.clone()),
                None => continue,
            },
            Some(SourceMsg::Keepalive { latest }) => break Some(latest),
            None => break None,
        }
    };
    source_cancel.cancel();
    drop(rx);
    let ended = super::source_end(source, &config.channel).await;
    let Some(position) = position else {
        // The source's own error says why nothing came.
        ended?;
        return Ok(None);
    };
    tracing::info!(replay_id = %position, "Snapshot: stream position captured.");
    set_mark(config, store, key, "begun", &position, cancel).await?;
    Ok(Some(position))
}

impl Flow<'_> {
    /// Reads the snapshot of `config`'s object into the table, each page through the chain
    /// and flushed, its rows at `position` (`with_deleted`: deleted records too, as DELETE
    /// rows); then marks it done. False if cancelled first.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn snapshot(
        &mut self,
        connection: &PubSubConnection,
        config: &SubscriptionConfig,
        org_id: &Arc<str>,
        position: ReplayId,
        with_deleted: bool,
        cancel: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        let object = crate::event::object_of(&config.channel).ok_or_else(|| {
            SnapshotError::NotOneObject {
                channel: config.channel.clone(),
            }
        })?;
        let schemas = self.schemas.clone();
        let schema = topic_schema(connection, &schemas, &config.channel).await?;
        let reader = Reader::start(
            RestClient::new(connection.clone()),
            &object,
            schema,
            org_id.clone(),
            self.channel.clone(),
            position.clone(),
            // A new table starts from the live records; after an overflow, deletes it
            // did not describe are in the recycle bin.
            with_deleted,
            cancel,
        );
        let Some(mut reader) = reader.await? else {
            return Ok(false);
        };
        self.health.set_snapshot_progress(Some(reader.progress()));
        loop {
            let page = tokio::select! {
                _ = cancel.cancelled() => return Ok(false),
                page = reader.next_page() => page?,
            };
            let Some(events) = page else { break };
            // A result page is word from Salesforce too: a long read is not a stuck stream.
            self.health.message();
            let count = events.len() as u64;
            let dead = self.process(events, Vec::new(), now_ms()).await?;
            self.stats.snapshot_records += count;
            self.count(dead);
            self.unflushed = Some(position.clone());
            Box::pin(self.flush()).await?;
            let progress = reader.progress();
            tracing::info!(
                object = %progress.object,
                records = progress.records,
                total = progress.total,
                records_per_sec = progress.records_per_sec.round(),
                eta_secs = progress.eta_secs.map(f64::round),
                "Snapshot progress."
            );
            self.health.set_snapshot_progress(Some(progress));
        }
        set_mark(config, self.store, self.key, "done", &position, cancel).await?;
        self.read_at = Some(position.clone());
        let progress = reader.progress();
        self.health.set_snapshot_progress(None);
        // Asked for while this one was read: the changes since its position follow it.
        self.health.snapshot_read();
        tracing::info!(object = %progress.object, records = progress.records, records_per_sec = progress.records_per_sec.round(), replay_id = %position, "Snapshot written; following changes from the captured position.");
        Ok(true)
    }
}

/// The writer schema `channel`'s events use now.
async fn topic_schema(
    connection: &PubSubConnection,
    schemas: &crate::salesforce::schema::SchemaCache,
    channel: &str,
) -> Result<Arc<crate::event::EventSchema>, PipelineError> {
    let failed = |detail: String| SnapshotError::Topic {
        channel: channel.to_string(),
        detail,
    };
    let id = connection
        .topic_schema_id(channel)
        .await
        .map_err(|status| failed(status.message().to_string()))?;
    if let Some(schema) = schemas.get(&id) {
        return Ok(schema);
    }
    let json = connection
        .schema_json(&id)
        .await
        .map_err(|status| failed(status.message().to_string()))?;
    let schema = schemas
        .insert(&id, &json)
        .map_err(|e| failed(e.to_string()))?;
    Ok(schema)
}
