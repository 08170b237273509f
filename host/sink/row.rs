//! The row every sink writes: the reference library's 16-column table schema, column for
//! column, so tables it wrote and tables we write are read the same way.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::Serialize;

use crate::event::{ChangeEvent, EventSchema};

/// The columns, in the reference's DDL order.
pub const COLUMNS: [&str; 16] = [
    "event_id",
    "schema_id",
    "replay_id",
    "timestamp",
    "change_type",
    "entity_name",
    "change_origin",
    "record_ids",
    "changed_fields",
    "nulled_fields",
    "diff_fields",
    "record_data_json",
    "payload_binary",
    "schema_json",
    "org_id",
    "processed_timestamp",
];

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub event_id: String,
    pub schema_id: String,
    /// The replay id as lowercase hex.
    pub replay_id: String,
    /// The event's commit timestamp, milliseconds since the epoch.
    pub timestamp: i64,
    pub change_type: String,
    pub entity_name: String,
    pub change_origin: String,
    pub record_ids: Vec<String>,
    pub changed_fields: Vec<String>,
    pub nulled_fields: Vec<String>,
    pub diff_fields: Vec<String>,
    pub record_data_json: String,
    /// The Avro payload; base64 in JSON.
    #[serde(serialize_with = "base64_bytes")]
    pub payload_binary: Vec<u8>,
    /// The writer schema; its JSON text is the `schema_json` column.
    #[serde(rename = "schema_json", serialize_with = "schema_json")]
    pub schema: Arc<EventSchema>,
    pub org_id: String,
    /// When the pipeline produced this row, milliseconds since the epoch.
    pub processed_timestamp: i64,
}

pub(crate) fn base64_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn schema_json<S: serde::Serializer>(schema: &Arc<EventSchema>, s: S) -> Result<S::Ok, S::Error> {
    schema.json_literal.serialize(s)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Row {
    pub fn from_event(event: &ChangeEvent, processed_timestamp: i64) -> Row {
        let h = &event.header;
        Row {
            event_id: event.event_id.clone(),
            schema_id: event.schema.id.clone(),
            replay_id: event.replay_id.to_hex(),
            timestamp: h.commit_timestamp,
            change_type: h.change_type.as_str().to_string(),
            entity_name: h.entity_name.clone(),
            change_origin: h.change_origin.clone(),
            record_ids: h.record_ids.clone(),
            changed_fields: h.changed_fields.clone(),
            nulled_fields: h.nulled_fields.clone(),
            diff_fields: h.diff_fields.clone(),
            record_data_json: event.record_json(),
            payload_binary: event.payload.to_vec(),
            schema: event.schema.clone(),
            org_id: event.org_id.to_string(),
            processed_timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_sixteen_columns_in_order() {
        let row = Row {
            event_id: "e".into(),
            schema_id: "s".into(),
            replay_id: "00".into(),
            timestamp: 1,
            change_type: "UPDATE".into(),
            entity_name: "Account".into(),
            change_origin: "o".into(),
            record_ids: vec!["001".into()],
            changed_fields: vec!["Name".into()],
            nulled_fields: vec![],
            diff_fields: vec![],
            record_data_json: "{}".into(),
            payload_binary: vec![1, 2, 3],
            schema: crate::salesforce::schema::parse_schema(
                "s",
                include_str!("../sim/schemas/LeadChangeEvent.avsc"),
            )
            .unwrap()
            .event,
            org_id: "00D".into(),
            processed_timestamp: 2,
        };
        let json = serde_json::to_value(&row).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = COLUMNS.to_vec();
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(json["payload_binary"], "AQID");
        assert_eq!(json["schema_json"].as_str().unwrap(), row.schema.json);
    }
}
