//! Rows to their tables and dead letters to the dead-letter place (opened on the first, so
//! a clean run leaves no empty file behind).

use super::PipelineError;
use super::flow::Flow;
use super::route::Tables;
use crate::sink::{DeadLetter, Sink};

impl Flow<'_> {
    pub(super) async fn write(
        &mut self,
        tables: &Tables,
        letters: &[DeadLetter],
    ) -> Result<(), PipelineError> {
        for (table, rows) in tables {
            self.sink.write(table.as_deref(), rows).await?;
            self.stats.written += rows.len() as u64;
            self.written_since_flush += rows.len() as u64;
        }
        if let Some(row) = tables.last().and_then(|(_, rows)| rows.last()) {
            let h = &row.event.header;
            self.last_written = format!(
                "{} {} {}",
                h.entity_name,
                h.change_type,
                row.event.first_record_id()
            );
        }
        if letters.is_empty() {
            return Ok(());
        }
        match self.dead_spec {
            None => self.sink.write_dead_letters(letters).await?,
            Some(spec) => {
                if self.dead.is_none() {
                    self.dead = Some(Sink::open(spec, self.app_id, self.zerobus).await?);
                }
                if let Some(dead) = self.dead.as_mut() {
                    dead.write_dead_letters(letters).await?;
                }
            }
        }
        Ok(())
    }
}
