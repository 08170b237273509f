//! The row every sink writes: the reference library's 16-column table schema, column for
//! column, so tables it wrote and tables we write are read the same way.

use base64::Engine;
use serde::Serialize;

use std::borrow::Cow;

use crate::event::{ChangeEvent, EventSchema};
use crate::sink::Layout;
use crate::sink::columns::{self, Cell, Cells, Column, ROW};

/// One row: the event it comes from, moved in rather than copied (a row is ~15 KB, most of
/// it the schema JSON and the record JSON, and every sink reads the columns in place).
#[derive(Debug)]
pub struct Row {
    pub event: ChangeEvent,
    /// The `record_data_json` column; empty in the typed layout, which has a column per
    /// field instead.
    pub record_data_json: String,
    /// The replay id as lowercase hex.
    pub replay_id: String,
    /// When the pipeline produced this row, milliseconds since the epoch.
    pub processed_timestamp: i64,
}

pub(crate) fn base64_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The bytes [`base64_bytes`] wrote.
pub(crate) fn from_base64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
}

impl Row {
    /// A row of the reference layout.
    pub fn from_event(event: ChangeEvent, processed_timestamp: i64) -> Row {
        Row::with_layout(event, processed_timestamp, Layout::Reference)
    }

    pub fn with_layout(event: ChangeEvent, processed_timestamp: i64, layout: Layout) -> Row {
        Row {
            record_data_json: match layout {
                Layout::Reference => event.record_json(),
                Layout::Typed => String::new(),
            },
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

    /// The `CdcEventRow` protobuf message of `proto/sfzb_row.proto`.
    pub fn encode_proto(&self, buf: &mut Vec<u8>) {
        let e = &self.event;
        buf.reserve(e.schema.json.len() + self.record_data_json.len() + e.payload.len() + 512);
        columns::encode_proto(self, buf);
    }
}

/// The `schema_json` column: in JSON, written from the schema's literal escaped once.
const SCHEMA_JSON: usize = 13;

impl Cells for Row {
    const COLUMNS: &'static [Column] = &ROW;

    fn cell(&self, i: usize) -> Cell<'_> {
        let e = &self.event;
        let h = &e.header;
        match i {
            0 => Cell::Text(Cow::Borrowed(&e.event_id)),
            1 => Cell::Text(Cow::Borrowed(&e.schema.id)),
            2 => Cell::Text(Cow::Borrowed(&self.replay_id)),
            3 => Cell::Long(h.commit_timestamp),
            4 => Cell::Text(Cow::Borrowed(self.change_type())),
            5 => Cell::Text(Cow::Borrowed(&h.entity_name)),
            6 => Cell::Text(Cow::Borrowed(&h.change_origin)),
            7 => Cell::TextList(&h.record_ids),
            8 => Cell::Names(&h.changed_fields),
            9 => Cell::Names(&h.nulled_fields),
            10 => Cell::Names(&h.diff_fields),
            11 => Cell::Text(Cow::Borrowed(&self.record_data_json)),
            12 => Cell::Bytes(&e.payload),
            SCHEMA_JSON => Cell::Text(Cow::Borrowed(&e.schema.json)),
            14 => Cell::Text(Cow::Borrowed(&e.org_id)),
            15 => Cell::Long(self.processed_timestamp),
            _ => unreachable!("a row has {} columns", ROW.len()),
        }
    }
}

/// The JSON line of a row: the 16 columns by name, in the reference's order.
impl Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(ROW.len()))?;
        for (i, column) in ROW.iter().enumerate() {
            if i == SCHEMA_JSON {
                map.serialize_entry(column.name, &self.event.schema.json_literal)?;
                continue;
            }
            match self.cell(i) {
                Cell::Text(v) => map.serialize_entry(column.name, &*v)?,
                Cell::Long(v) => map.serialize_entry(column.name, &v)?,
                Cell::TextList(v) => map.serialize_entry(column.name, v)?,
                Cell::Names(v) => map.serialize_entry(column.name, v)?,
                Cell::Bytes(v) => map.serialize_entry(column.name, &Base64(v))?,
            }
        }
        map.end()
    }
}

/// Bytes as base64 text in JSON.
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        base64_bytes(self.0, s)
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
        let names: Vec<&str> = ROW.iter().map(|c| c.name).collect();
        let mut at: Vec<(usize, &str)> = names
            .iter()
            .map(|c| (line.find(&format!("\"{c}\":")).unwrap(), *c))
            .collect();
        at.sort_unstable();
        assert_eq!(at.iter().map(|(_, c)| *c).collect::<Vec<_>>(), names);
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
            row.event.schema.names.top.len() - 1,
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
            changed_fields: h.changed_fields.iter().map(|n| n.to_string()).collect(),
            nulled_fields: h.nulled_fields.iter().map(|n| n.to_string()).collect(),
            diff_fields: h.diff_fields.iter().map(|n| n.to_string()).collect(),
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
