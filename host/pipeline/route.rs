//! Each output of the chain to its table (the sink's own, a sibling, or refused), its
//! payload re-encoded when a transform changed a field, as a row grouped by table.

use super::flow::Flow;
use crate::sink::{DeadLetter, Layout, Row, Stage};
use crate::transform::Routed;

/// Rows by table (`None`: the sink's own), in the order they came.
pub(super) type Tables = Vec<(Option<String>, Vec<Row>)>;

impl Flow<'_> {
    pub(super) fn route(
        &mut self,
        routed: Vec<Routed>,
        letters: &mut Vec<DeadLetter>,
        processed: i64,
    ) -> Tables {
        let mut tables: Tables = Vec::new();
        for routed in routed {
            let mut event = routed.event;
            let table = match self.sink.route(routed.table, &event.header.entity_name) {
                Ok(table) => table,
                Err(error) => {
                    tracing::error!(replay_id = %event.replay_id, %error, "Event routed where it cannot go; dead-lettered.");
                    letters.push(DeadLetter::of_event(
                        Stage::Transform("route".into()),
                        error,
                        &event,
                        processed,
                    ));
                    continue;
                }
            };
            if let Err((by, error)) = event.reencode() {
                tracing::error!(replay_id = %event.replay_id, %error, "Transformed event does not fit its schema; dead-lettered.");
                letters.push(DeadLetter::of_event(
                    Stage::Transform(by.to_string()),
                    error,
                    &event,
                    processed,
                ));
                continue;
            }
            self.health
                .event_committed_at(event.header.commit_timestamp);
            let layout = self.sink.layout();
            let row = Row::with_layout(event, processed, layout);
            // What a sink may hold of the row until the flush: typed rows carry no schema.
            let schema = match layout {
                Layout::Reference => row.schema().json.len(),
                Layout::Typed => 0,
            };
            self.unflushed_bytes += row.event.payload.len() + row.record_data_json.len() + schema;
            match tables.iter_mut().find(|(t, _)| *t == table) {
                Some((_, rows)) => rows.push(row),
                None => tables.push((table, vec![row])),
            }
        }
        tables
    }
}
