//! Rows to their tables and dead letters to the dead-letter place (opened on the first, so
//! a clean run leaves no empty file behind).

use super::PipelineError;
use super::flow::Flow;
use super::route::Tables;
use crate::sink::{DeadLetter, Layout, Sink, Stage};

impl Flow<'_> {
    /// Rows that do not fit their typed table join `letters`.
    pub(super) async fn write(
        &mut self,
        tables: &Tables,
        letters: &mut Vec<DeadLetter>,
    ) -> Result<(), PipelineError> {
        for (table, rows) in tables {
            let misfits = self.sink.write(table.as_deref(), rows).await?;
            let written = (rows.len() - misfits.len()) as u64;
            self.stats.written += written;
            self.written_since_flush += written;
            for (i, misfit) in misfits {
                let row = &rows[i];
                tracing::error!(replay_id = %row.replay_id, error = %misfit, "Event does not fit its typed table; dead-lettered.");
                letters.push(DeadLetter::of_event(
                    Stage::Write,
                    misfit.to_string(),
                    &row.event,
                    row.processed_timestamp,
                ));
            }
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
        self.dead_letter(letters).await
    }

    /// `letters` to the dead-letter place: the sink's own, or `dead-letter`'s.
    async fn dead_letter(&mut self, letters: &[DeadLetter]) -> Result<(), PipelineError> {
        if letters.is_empty() {
            return Ok(());
        }
        match self.dead_spec {
            None => self.sink.write_dead_letters(letters).await?,
            Some(spec) => {
                if self.dead.is_none() {
                    self.dead =
                        Some(Sink::open(spec, Layout::Reference, self.app_id, self.zerobus).await?);
                }
                if let Some(dead) = self.dead.as_mut() {
                    dead.write_dead_letters(letters).await?;
                }
            }
        }
        Ok(())
    }

    /// After the sink's flush: rows the server refused are dead letters (not written),
    /// durable before the checkpoint passes them.
    pub(super) async fn dead_letter_refused(
        &mut self,
        position: &crate::event::ReplayId,
    ) -> Result<(), PipelineError> {
        let refused = self.sink.take_refused();
        if refused.is_empty() {
            return Ok(());
        }
        let count = refused.len() as u64;
        self.stats.written = self.stats.written.saturating_sub(count);
        self.stats.dead_lettered += count;
        self.dead_letter(&refused).await?;
        match self.dead.as_mut() {
            Some(dead) => dead.flush(position).await?,
            None => self.sink.flush(position).await?,
        }
        self.count(0);
        Ok(())
    }
}
