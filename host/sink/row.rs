//! The row every sink writes: the reference library's 16-column table schema, column for
//! column, so tables it wrote and tables we write are read the same way.

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

/// One row: the event it comes from, moved in rather than copied (a row is ~15 KB, most of
/// it the schema JSON and the record JSON, and every sink reads the columns in place).
#[derive(Debug)]
pub struct Row {
    pub event: ChangeEvent,
    /// The `record_data_json` column.
    pub record_data_json: String,
    /// The replay id as lowercase hex.
    pub replay_id: String,
    /// When the pipeline produced this row, milliseconds since the epoch.
    pub processed_timestamp: i64,
}

pub(crate) fn base64_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

impl Row {
    pub fn from_event(event: ChangeEvent, processed_timestamp: i64) -> Row {
        Row {
            record_data_json: event.record_json(),
            replay_id: event.replay_id.to_hex(),
            event,
            processed_timestamp,
        }
    }

    /// The event's commit timestamp, milliseconds since the epoch (the `timestamp` column).
    pub fn timestamp(&self) -> i64 {
        self.event.header.commit_timestamp
    }

    pub fn change_type(&self) -> &'static str {
        self.event.header.change_type.as_str()
    }

    /// The writer schema; its JSON text is the `schema_json` column.
    pub fn schema(&self) -> &EventSchema {
        &self.event.schema
    }

    /// The `CdcEventRow` protobuf message of `proto/sfzb_row.proto`, written straight from
    /// the row: building the generated struct first would copy every column once more.
    pub fn encode_proto(&self, buf: &mut Vec<u8>) {
        use prost::encoding::{int64, string};
        let e = &self.event;
        let h = &e.header;
        buf.reserve(e.schema.json.len() + self.record_data_json.len() + e.payload.len() + 512);
        string::encode(1, &e.event_id, buf);
        string::encode(2, &e.schema.id, buf);
        string::encode(3, &self.replay_id, buf);
        int64::encode(4, &h.commit_timestamp, buf);
        put_str(5, self.change_type(), buf);
        string::encode(6, &h.entity_name, buf);
        string::encode(7, &h.change_origin, buf);
        string::encode_repeated(8, &h.record_ids, buf);
        string::encode_repeated(9, &h.changed_fields, buf);
        string::encode_repeated(10, &h.nulled_fields, buf);
        string::encode_repeated(11, &h.diff_fields, buf);
        string::encode(12, &self.record_data_json, buf);
        prost::encoding::bytes::encode(13, &e.payload, buf);
        string::encode(14, &e.schema.json, buf);
        put_str(15, &e.org_id, buf);
        int64::encode(16, &self.processed_timestamp, buf);
    }
}

fn put_str(tag: u32, value: &str, buf: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value.as_bytes());
}

/// The JSON line of a row: the 16 columns by name, in the reference's order.
#[derive(Serialize)]
struct RowJson<'a> {
    event_id: &'a str,
    schema_id: &'a str,
    replay_id: &'a str,
    timestamp: i64,
    change_type: &'a str,
    entity_name: &'a str,
    change_origin: &'a str,
    record_ids: &'a [String],
    changed_fields: &'a [String],
    nulled_fields: &'a [String],
    diff_fields: &'a [String],
    record_data_json: &'a str,
    #[serde(serialize_with = "base64_bytes")]
    payload_binary: &'a [u8],
    schema_json: &'a serde_json::value::RawValue,
    org_id: &'a str,
    processed_timestamp: i64,
}

impl Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = &self.event;
        let h = &e.header;
        RowJson {
            event_id: &e.event_id,
            schema_id: &e.schema.id,
            replay_id: &self.replay_id,
            timestamp: h.commit_timestamp,
            change_type: self.change_type(),
            entity_name: &h.entity_name,
            change_origin: &h.change_origin,
            record_ids: &h.record_ids,
            changed_fields: &h.changed_fields,
            nulled_fields: &h.nulled_fields,
            diff_fields: &h.diff_fields,
            record_data_json: &self.record_data_json,
            payload_binary: &e.payload,
            schema_json: &e.schema.json_literal,
            org_id: &e.org_id,
            processed_timestamp: self.processed_timestamp,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::row::CdcEventRow;
    use crate::sim::catalog::Entity;
    use crate::sim::generator::standard_account_event;

    fn row() -> Row {
        let entity = Entity::load("Account").unwrap().unwrap();
        Row::from_event(standard_account_event(&entity), 2)
    }

    #[test]
    fn json_has_the_sixteen_columns_in_order() {
        let row = row();
        let line = serde_json::to_string(&row).unwrap();
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut at: Vec<(usize, &str)> = COLUMNS
            .iter()
            .map(|c| (line.find(&format!("\"{c}\":")).unwrap(), *c))
            .collect();
        at.sort_unstable();
        assert_eq!(at.iter().map(|(_, c)| *c).collect::<Vec<_>>(), COLUMNS);
        assert_eq!(json.as_object().unwrap().len(), 16);
        let payload = base64::engine::general_purpose::STANDARD
            .decode(json["payload_binary"].as_str().unwrap())
            .unwrap();
        assert_eq!(payload, row.event.payload);
        assert_eq!(json["schema_json"].as_str().unwrap(), row.schema().json);
        assert_eq!(json["change_type"], "UPDATE");
        assert_eq!(json["replay_id"], row.event.replay_id.to_hex());
        let record: serde_json::Value =
            serde_json::from_str(json["record_data_json"].as_str().unwrap()).unwrap();
        // As the reference writes it: the data fields, not the header (it has its columns).
        assert!(record.get("ChangeEventHeader").is_none(), "{record}");
        assert_eq!(
            record.as_object().unwrap().len(),
            row.event.fields.len(),
            "every data field, nulls included"
        );
    }

    #[test]
    fn protobuf_row_reads_back_as_the_generated_message() {
        let row = row();
        let mut buf = Vec::new();
        row.encode_proto(&mut buf);
        let got = CdcEventRow::decode(&buf[..]).unwrap();
        let e = &row.event;
        let h = &e.header;
        let want = CdcEventRow {
            event_id: Some(e.event_id.clone()),
            schema_id: Some(e.schema.id.clone()),
            replay_id: Some(row.replay_id.clone()),
            timestamp: Some(h.commit_timestamp),
            change_type: Some("UPDATE".into()),
            entity_name: Some("Account".into()),
            change_origin: Some(h.change_origin.clone()),
            record_ids: h.record_ids.clone(),
            changed_fields: h.changed_fields.clone(),
            nulled_fields: h.nulled_fields.clone(),
            diff_fields: h.diff_fields.clone(),
            record_data_json: Some(row.record_data_json.clone()),
            payload_binary: Some(e.payload.to_vec()),
            schema_json: Some(e.schema.json.clone()),
            org_id: Some(e.org_id.to_string()),
            processed_timestamp: Some(2),
        };
        assert_eq!(got, want);
        assert_eq!(buf, want.encode_to_vec());
    }
}
