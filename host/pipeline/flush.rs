//! A flush: the dead-letter sink, then the sink, made durable up to a position; only then
//! the checkpoint moves (the sink's own, the SQL checkpoint table, or the file), and a
//! managed subscription hears the durable position.

use std::time::Instant;

use super::PipelineError;
use super::flow::Flow;
use crate::checkpoint::CheckpointKey;
use crate::clock::now_ms;
use crate::event::ReplayId;

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
        match &mut self.databricks {
            Some(databricks) => databricks.commit(self.key, &position).await?,
            None if self.sink.keeps_checkpoint() => {}
            None => self.store.stage(self.key, &position)?,
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
        Ok(())
    }
}

/// A Zerobus target's table and its checkpoint table, through the SQL warehouse.
pub(super) struct Databricks {
    client: crate::sql::SqlClient,
    checkpoints: String,
    /// The checkpoint found at start.
    pub(super) stored: Option<ReplayId>,
}

impl Databricks {
    /// Creates the target table if missing (and allowed), the checkpoint table if missing,
    /// and finds where to resume: the checkpoint table, else (a table the reference library
    /// wrote) its newest row. Any SQL failure or timeout stops the run: it is never read as
    /// "missing" or "empty", so a slow warehouse cannot send the subscription to LATEST.
    pub(super) async fn prepare(
        settings: &crate::sql::SqlSettings,
        table: &str,
        key: &CheckpointKey,
        auto_create: bool,
    ) -> Result<Databricks, PipelineError> {
        use crate::sql::{SqlClient, SqlError, checkpoint_table, create_table_sql, ident, quote};
        let mut client = SqlClient::new(settings.clone());
        let existed = client.table_exists(table).await?;
        if !existed {
            if !auto_create {
                return Err(SqlError::Failed {
                    statement: format!("DESCRIBE TABLE {}", ident(table)),
                    message: format!("table {table} does not exist and auto-create is off; create it (see the README's DDL) or set auto-create-table = true"),
                }
                .into());
            }
            tracing::info!(table, "Table {table} doesn't exist - creating it.");
            client.run(&create_table_sql(table)).await?;
            tracing::info!(table, "Successfully created table: {table}");
        }
        let checkpoints = ident(&checkpoint_table(table));
        client
            .run(&format!(
                "CREATE TABLE IF NOT EXISTS {checkpoints} (org_id STRING, channel STRING, target STRING, replay_id STRING, updated_at BIGINT) USING DELTA COMMENT 'sfzb-host replay checkpoints'"
            ))
            .await?;
        let rows = client
            .run(&format!(
                "SELECT replay_id FROM {checkpoints} WHERE org_id = {} AND channel = {} AND target = {}",
                quote(&key.org_id),
                quote(&key.channel),
                quote(&key.target)
            ))
            .await?;
        let mut stored = first_replay(&rows);
        if stored.is_none() && existed {
            let rows = client
                .run(&format!(
                    "SELECT replay_id FROM {} WHERE org_id = {} ORDER BY timestamp DESC, replay_id DESC LIMIT 1",
                    ident(table),
                    quote(&key.org_id)
                ))
                .await?;
            stored = first_replay(&rows);
            if let Some(id) = &stored {
                tracing::info!(replay_id = %id, "Found latest replay_id: {id} (from the table's rows; no checkpoint yet)");
            }
        }
        Ok(Databricks {
            client,
            checkpoints,
            stored,
        })
    }

    async fn commit(
        &mut self,
        key: &CheckpointKey,
        position: &ReplayId,
    ) -> Result<(), PipelineError> {
        use crate::sql::quote;
        let statement = format!(
            "MERGE INTO {cp} AS t USING (SELECT {org} AS org_id, {channel} AS channel, {target} AS target, {replay} AS replay_id, {now} AS updated_at) AS s \
             ON t.org_id = s.org_id AND t.channel = s.channel AND t.target = s.target \
             WHEN MATCHED THEN UPDATE SET t.replay_id = s.replay_id, t.updated_at = s.updated_at WHEN NOT MATCHED THEN INSERT *",
            cp = self.checkpoints,
            org = quote(&key.org_id),
            channel = quote(&key.channel),
            target = quote(&key.target),
            replay = quote(&position.to_hex()),
            now = now_ms(),
        );
        self.client.run(&statement).await?;
        Ok(())
    }
}

fn first_replay(rows: &[Vec<Option<String>>]) -> Option<ReplayId> {
    rows.first()
        .and_then(|row| row.first())
        .and_then(|v| v.as_deref())
        .and_then(|hex| ReplayId::from_hex(hex).ok())
}
