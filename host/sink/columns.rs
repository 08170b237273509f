//! The tables' columns, defined once: the reference library's 16-column row and the
//! dead-letter row. Each format is made from these lists: the JSON line, the protobuf
//! message Zerobus takes (`proto/sfzb_row.proto`, checked against them by a test), the
//! Arrow batches of the Delta sink, and the `CREATE TABLE` of the SQL warehouse.

use std::borrow::Cow;

/// A column's type; every column is nullable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Text,
    Long,
    TextList,
    Bytes,
}

impl Type {
    /// As Databricks SQL spells it.
    pub fn sql(self) -> &'static str {
        match self {
            Type::Text => "STRING",
            Type::Long => "BIGINT",
            Type::TextList => "ARRAY<STRING>",
            Type::Bytes => "BINARY",
        }
    }

    /// As a proto2 field: its label and type.
    pub fn proto(self) -> (&'static str, &'static str) {
        match self {
            Type::Text => ("optional", "string"),
            Type::Long => ("optional", "int64"),
            Type::TextList => ("repeated", "string"),
            Type::Bytes => ("optional", "bytes"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: Type,
    /// The column's comment in the table.
    pub comment: &'static str,
}

const fn column(name: &'static str, ty: Type, comment: &'static str) -> Column {
    Column { name, ty, comment }
}

/// The row, in the reference's DDL order; a column's protobuf tag is its position + 1.
pub const ROW: [Column; 16] = [
    column("event_id", Type::Text, "Unique Salesforce event identifier"),
    column(
        "schema_id",
        Type::Text,
        "Event schema version from Salesforce",
    ),
    column(
        "replay_id",
        Type::Text,
        "Event position for replay functionality (hex)",
    ),
    column(
        "timestamp",
        Type::Long,
        "Event commit timestamp in milliseconds",
    ),
    column(
        "change_type",
        Type::Text,
        "Type of change: CREATE, UPDATE, DELETE, UNDELETE, GAP_*",
    ),
    column(
        "entity_name",
        Type::Text,
        "Salesforce object name (Account, Contact, etc.)",
    ),
    column(
        "change_origin",
        Type::Text,
        "Source of the change (API, UI, etc.)",
    ),
    column(
        "record_ids",
        Type::TextList,
        "List of affected Salesforce record IDs",
    ),
    column(
        "changed_fields",
        Type::TextList,
        "List of field names that were modified",
    ),
    column(
        "nulled_fields",
        Type::TextList,
        "List of field names that were set to null",
    ),
    column(
        "diff_fields",
        Type::TextList,
        "List of field names with differences",
    ),
    column(
        "record_data_json",
        Type::Text,
        "Complete record data serialized as JSON",
    ),
    column(
        "payload_binary",
        Type::Bytes,
        "Raw Avro binary payload for schema-based parsing",
    ),
    column(
        "schema_json",
        Type::Text,
        "Avro schema JSON string for parsing binary payload",
    ),
    column("org_id", Type::Text, "Salesforce organization ID"),
    column(
        "processed_timestamp",
        Type::Long,
        "When this event was processed by our pipeline",
    ),
];

/// The dead-letter row.
pub const DEAD_LETTER: [Column; 9] = [
    column(
        "stage",
        Type::Text,
        "Where it failed: decode, transform:<name> or write",
    ),
    column("error", Type::Text, "Why it could not be written"),
    column("org_id", Type::Text, "Salesforce organization ID"),
    column("channel", Type::Text, "The channel it was read from"),
    column("replay_id", Type::Text, "Its position (hex)"),
    column("event_id", Type::Text, "Unique Salesforce event identifier"),
    column(
        "schema_id",
        Type::Text,
        "Event schema version from Salesforce",
    ),
    column(
        "payload",
        Type::Bytes,
        "The Avro payload as received (or as last transformed)",
    ),
    column(
        "dead_lettered_at",
        Type::Long,
        "When it was dead-lettered, milliseconds",
    ),
];

/// One value of a row, borrowed where it can be.
#[derive(Debug)]
pub enum Cell<'a> {
    Text(Cow<'a, str>),
    Long(i64),
    TextList(&'a [String]),
    /// A list of field names (the header's changed, nulled and diff fields), in a
    /// `TextList` column.
    Names(&'a [crate::event::Name]),
    Bytes(&'a [u8]),
}

/// A row of one of the tables: its value in each of its columns.
pub trait Cells {
    const COLUMNS: &'static [Column];

    /// The value in column `i` of [`Cells::COLUMNS`]; its type is that column's.
    fn cell(&self, i: usize) -> Cell<'_>;
}

/// The row as its protobuf message (`CdcEventRow`, `DeadLetterRow`), written straight from
/// the cells: building the generated struct first would copy every column once more.
pub fn encode_proto<T: Cells>(row: &T, buf: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint, int64, string};
    let text = |tag: u32, value: &str, buf: &mut Vec<u8>| {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value.as_bytes());
    };
    for i in 0..T::COLUMNS.len() {
        let tag = i as u32 + 1;
        match row.cell(i) {
            Cell::Text(value) => text(tag, &value, buf),
            Cell::Long(value) => int64::encode(tag, &value, buf),
            Cell::TextList(values) => string::encode_repeated(tag, values, buf),
            Cell::Names(values) => values.iter().for_each(|v| text(tag, v, buf)),
            Cell::Bytes(value) => {
                encode_key(tag, WireType::LengthDelimited, buf);
                encode_varint(value.len() as u64, buf);
                buf.extend_from_slice(value);
            }
        }
    }
}

/// `CREATE TABLE IF NOT EXISTS` for `columns`, with their comments.
pub fn create_table(
    ident: &str,
    columns: &[Column],
    properties: &[(&str, &str)],
    comment: &str,
) -> String {
    let columns = columns
        .iter()
        .map(|c| {
            format!(
                "  {} {} COMMENT '{}'",
                c.name,
                c.ty.sql(),
                c.comment.replace('\'', "\\'")
            )
        })
        .collect::<Vec<_>>()
        .join(",\n");
    let properties = properties
        .iter()
        .map(|(k, v)| format!("  '{k}' = '{v}'"))
        .collect::<Vec<_>>()
        .join(",\n");
    format!(
        "CREATE TABLE IF NOT EXISTS {ident} (\n{columns}\n) USING DELTA\nTBLPROPERTIES (\n{properties}\n) COMMENT '{comment}'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `message NAME { … }` of the proto file as (label, type, name, tag) per field.
    fn proto_fields(message: &str) -> Vec<(String, String, String, u32)> {
        let text = include_str!("../../proto/sfzb_row.proto");
        let start = text
            .find(&format!("message {message} {{"))
            .unwrap_or_else(|| panic!("message {message} is in the proto"));
        let body = &text[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
        body.lines()
            .filter_map(|line| {
                let line = line.split("//").next()?.trim().trim_end_matches(';');
                let (decl, tag) = line.split_once('=')?;
                let parts: Vec<&str> = decl.split_whitespace().collect();
                let [label, ty, name] = parts[..] else {
                    return None;
                };
                Some((
                    label.into(),
                    ty.into(),
                    name.into(),
                    tag.trim().parse().ok()?,
                ))
            })
            .collect()
    }

    fn expected(columns: &[Column]) -> Vec<(String, String, String, u32)> {
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (label, ty) = c.ty.proto();
                (label.into(), ty.into(), c.name.into(), i as u32 + 1)
            })
            .collect()
    }

    #[test]
    fn the_proto_file_declares_exactly_these_columns() {
        assert_eq!(proto_fields("CdcEventRow"), expected(&ROW));
        assert_eq!(proto_fields("DeadLetterRow"), expected(&DEAD_LETTER));
    }
}
