//! Raw events to decoded ones with their writer schemas; an event that cannot be decoded
//! (no schema, an unusable schema, a corrupt payload, no event at all) becomes a dead letter.

use std::sync::Arc;

use super::flow::Flow;
use crate::event::ChangeEvent;
use crate::salesforce::pubsub::RawEvent;
use crate::salesforce::schema::{EventMeta, decode_event};
use crate::sink::{DeadLetter, Stage};

impl Flow<'_> {
    pub(super) fn decode(
        &self,
        events: Vec<RawEvent>,
        org_id: &Arc<str>,
        processed: i64,
    ) -> (Vec<ChangeEvent>, Vec<DeadLetter>) {
        let mut decoded = Vec::with_capacity(events.len());
        let mut letters = Vec::new();
        for raw in events {
            match self.decode_one(&raw, org_id) {
                Ok(event) => {
                    tracing::debug!(
                        replay_id = %event.replay_id,
                        "Received {} {} {}",
                        event.header.entity_name,
                        event.header.change_type,
                        event.first_record_id()
                    );
                    decoded.push(event);
                }
                Err(error) => {
                    tracing::error!(replay_id = %raw.replay_id, event_id = %raw.event_id, schema_id = %raw.schema_id, %error, "Event could not be decoded; dead-lettered.");
                    letters.push(DeadLetter {
                        stage: Stage::Decode,
                        error,
                        org_id: org_id.to_string(),
                        channel: self.channel.to_string(),
                        replay_id: raw.replay_id.to_hex(),
                        event_id: raw.event_id,
                        schema_id: raw.schema_id,
                        payload: raw.payload.to_vec(),
                        dead_lettered_at: processed,
                    });
                }
            }
        }
        (decoded, letters)
    }

    fn decode_one(&self, raw: &RawEvent, org_id: &Arc<str>) -> Result<ChangeEvent, String> {
        let meta = EventMeta {
            org_id: org_id.clone(),
            channel: self.channel.clone(),
            replay_id: raw.replay_id.clone(),
            event_id: raw.event_id.clone(),
        };
        match self.schemas.get(&raw.schema_id) {
            Some(schema) => {
                decode_event(&schema, meta, raw.payload.clone()).map_err(|e| e.to_string())
            }
            None if raw.schema_id.is_empty() && raw.payload.is_empty() => Err(
                "the Pub/Sub API delivered this position without an event (no schema, no payload)"
                    .to_string(),
            ),
            None => Err(match self.schemas.failure(&raw.schema_id) {
                Some(reason) => format!("schema {} cannot be used: {reason}", raw.schema_id),
                None => format!("schema {} could not be fetched", raw.schema_id),
            }),
        }
    }
}
