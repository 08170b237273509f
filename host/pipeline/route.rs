//! Each output of the chain to its table (the sink's own, a sibling, or refused), its
//! payload re-encoded when a transform changed a field, as a row grouped by table.

use super::flow::Flow;
use crate::sink::{DeadLetter, Layout, Row, Sink, Stage};
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
            let (table, row) = match to_row(self.sink, routed, processed) {
                Ok(routed) => routed,
                Err(letter) => {
                    letters.push(*letter);
                    continue;
                }
            };
            self.health
                .event_committed_at(row.event.header.commit_timestamp);
            // What a sink may hold of the row until the flush: typed rows carry no schema.
            let schema = match self.sink.layout() {
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

/// An output of the chain as a row of its table (`None`: the sink's own), re-encoded if a
/// transform changed it; or, when it cannot go where it was routed or no longer fits its
/// schema, its dead letter.
pub(crate) fn to_row(
    sink: &Sink,
    routed: Routed,
    processed: i64,
) -> Result<(Option<String>, Row), Box<DeadLetter>> {
    let mut event = routed.event;
    let table = match sink.route(routed.table, &event.header.entity_name) {
        Ok(table) => table,
        Err(error) => {
            tracing::error!(replay_id = %event.replay_id, %error, "Event routed where it cannot go; dead-lettered.");
            let stage = Stage::Transform("route".into());
            return Err(Box::new(DeadLetter::of_event(
                stage, error, &event, processed,
            )));
        }
    };
    if let Err((by, error)) = event.reencode() {
        tracing::error!(replay_id = %event.replay_id, %error, "Transformed event does not fit its schema; dead-lettered.");
        let stage = Stage::Transform(by.to_string());
        return Err(Box::new(DeadLetter::of_event(
            stage, error, &event, processed,
        )));
    }
    Ok((table, Row::with_layout(event, processed, sink.layout())))
}
