//! The SQL warehouse store, for Zerobus targets: `sfzb_checkpoints` next to the target
//! table (`catalog.schema.sfzb_checkpoints`), created once per process, written by one
//! `MERGE` of every changed key per commit. A warehouse runs a statement in about a
//! second, so this is the fallback for a workspace without Lakebase: the PostgreSQL store
//! takes far more subscriptions. Any SQL failure or timeout is an error, never read as
//! "no checkpoint": a slow warehouse cannot send a subscription to LATEST.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{CheckpointError, CheckpointKey, Rows, Stored};
use crate::event::ReplayId;
use crate::sql::{SqlClient, SqlSettings, checkpoint_table, ident, quote};

pub(super) struct WarehouseStore {
    client: tokio::sync::Mutex<SqlClient>,
    /// Per checkpoint table, its rows as last read.
    rows: std::sync::Mutex<HashMap<String, Arc<Rows>>>,
    /// Checkpoint tables this process made sure exist.
    created: tokio::sync::Mutex<HashSet<String>>,
}

impl WarehouseStore {
    pub(super) fn new(settings: SqlSettings) -> WarehouseStore {
        WarehouseStore {
            client: tokio::sync::Mutex::new(SqlClient::new(settings)),
            rows: Default::default(),
            created: Default::default(),
        }
    }

    /// `key`'s checkpoint next to Zerobus table `table`; without one, for a table of the
    /// `reference` layout (one the reference library wrote), the replay id of the org's
    /// newest row of the channel's object in the table. Replay ids are positions of one
    /// org's channel, not comparable across channels; the rows do not name their channel,
    /// so only a one-object channel can tell its rows (by `entity_name`) and resume
    /// there. For any other channel the host does not guess (see [`no_guess`]).
    pub(super) async fn load(
        &self,
        key: &CheckpointKey,
        table: &str,
        reference: bool,
    ) -> Result<Option<ReplayId>, CheckpointError> {
        let checkpoints = ident(&checkpoint_table(table));
        self.create(&checkpoints).await?;
        let rows = self
            .rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(checkpoints.clone())
            .or_insert_with(|| Arc::new(Rows::new()))
            .clone();
        let stored = rows.get(&key.id(), || self.read_all(&checkpoints)).await?;
        if let Some(hex) = stored {
            return ReplayId::from_hex(&hex)
                .map(Some)
                .map_err(|e| CheckpointError::Corrupt {
                    path: format!("{checkpoints} (channel {})", key.channel).into(),
                    detail: format!("replay_id: {e}"),
                });
        }
        if !reference {
            return Ok(None);
        }
        let Some(object) = crate::event::object_of(&key.channel) else {
            no_guess(key, table);
            return Ok(None);
        };
        let newest = self
            .run(&format!(
                "SELECT replay_id FROM {} WHERE org_id = {} AND entity_name = {} ORDER BY timestamp DESC, replay_id DESC LIMIT 1",
                ident(table),
                quote(&key.org_id),
                quote(&object)
            ))
            .await?;
        let newest = first_replay(&newest);
        if let Some(id) = &newest {
            tracing::info!(replay_id = %id, "Found latest replay_id: {id} (from the table's rows; no checkpoint yet)");
        }
        Ok(newest)
    }

    async fn create(&self, checkpoints: &str) -> Result<(), CheckpointError> {
        let mut created = self.created.lock().await;
        if created.contains(checkpoints) {
            return Ok(());
        }
        self.run(&format!(
            "CREATE TABLE IF NOT EXISTS {checkpoints} (org_id STRING, channel STRING, target STRING, replay_id STRING, updated_at BIGINT) USING DELTA COMMENT 'sfzb-host replay checkpoints'"
        ))
        .await?;
        created.insert(checkpoints.to_string());
        Ok(())
    }

    async fn read_all(
        &self,
        checkpoints: &str,
    ) -> Result<HashMap<String, String>, CheckpointError> {
        let rows = self
            .run(&format!(
                "SELECT org_id, channel, target, replay_id FROM {checkpoints}"
            ))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| match row.as_slice() {
                [Some(org), Some(channel), Some(target), Some(replay)] => {
                    Some((super::id(org, channel, target), replay.clone()))
                }
                _ => None,
            })
            .collect())
    }

    /// Every changed checkpoint next to `table` in one `MERGE`.
    pub(super) async fn write(
        &self,
        table: &str,
        changed: &[Stored],
    ) -> Result<(), CheckpointError> {
        let checkpoints = ident(&checkpoint_table(table));
        self.create(&checkpoints).await?;
        let values: Vec<String> = changed
            .iter()
            .map(|s| {
                format!(
                    "({}, {}, {}, {}, {})",
                    quote(&s.org_id),
                    quote(&s.channel),
                    quote(&s.target),
                    quote(&s.replay_id),
                    s.updated_at_ms
                )
            })
            .collect();
        let statement = format!(
            "MERGE INTO {checkpoints} AS t USING (SELECT * FROM VALUES {} AS v(org_id, channel, target, replay_id, updated_at)) AS s \
             ON t.org_id = s.org_id AND t.channel = s.channel AND t.target = s.target \
             WHEN MATCHED THEN UPDATE SET t.replay_id = s.replay_id, t.updated_at = s.updated_at WHEN NOT MATCHED THEN INSERT *",
            values.join(", ")
        );
        self.run(&statement).await?;
        // Read again at the next load (see the PostgreSQL store).
        let rows = self
            .rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&checkpoints)
            .cloned();
        if let Some(rows) = rows {
            rows.forget().await;
        }
        Ok(())
    }

    async fn run(&self, statement: &str) -> Result<Vec<Vec<Option<String>>>, CheckpointError> {
        Ok(self.client.lock().await.run(statement).await?)
    }
}

/// A channel of several objects, with no checkpoint, on a table of the reference
/// layout: its rows cannot be told from another channel's, so it starts as configured.
fn no_guess(key: &CheckpointKey, table: &str) {
    tracing::warn!(
        channel = %key.channel,
        table,
        "No checkpoint for this channel, and its rows in the table cannot be told from another channel's (replay ids are per channel): not resuming from the table's rows. It starts from replay-preset; to resume where the reference library stopped, give --replay <hex replay id> once."
    );
}

fn first_replay(rows: &[Vec<Option<String>>]) -> Option<ReplayId> {
    rows.first()
        .and_then(|row| row.first())
        .and_then(|v| v.as_deref())
        .and_then(|hex| ReplayId::from_hex(hex).ok())
}
