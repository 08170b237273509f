//! A Bulk API 2.0 CSV record as an event of the object's writer schema: each column's text
//! read by the kind of its typed column (the README's mapping, read backwards), compound
//! fields put back together from their children's columns.

use std::sync::Arc;

use crate::event::{
    ChangeEvent, ChangeEventHeader, ChangeType, EventSchema, Field, Fields, ReplayId, Value,
};
use crate::sink::typed::{FieldColumn, Kind};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "the snapshot of {object} read {text:?} for {field} of record {id}, which is not a {kind:?} value as the change events' schema has it; the subscription stops: compare the field's type in Setup → Object Manager with its CDC schema, and report it with this message"
    )]
    Value {
        object: String,
        id: String,
        field: String,
        text: String,
        kind: Kind,
    },
    #[error("a snapshot record of {object} has no {column} column")]
    Missing {
        object: String,
        column: &'static str,
    },
    #[error("snapshot record {id} of {object} does not encode with its schema: {reason}")]
    Encode {
        object: String,
        id: String,
        reason: String,
    },
}

/// What every snapshot event of one subscription shares.
pub(super) struct Meta {
    pub org_id: Arc<str>,
    pub channel: Arc<str>,
    /// The stream position the snapshot was captured at; its rows carry it.
    pub position: ReplayId,
    pub object: String,
}

/// The writer schema and its typed columns.
pub(super) struct Shape {
    schema: Arc<EventSchema>,
    columns: Vec<FieldColumn>,
}

/// Where each column of a result page goes: the CSV column of `Id`, of `SystemModstamp`,
/// of `IsDeleted` (a `queryAll`'s), and of each typed column (by position in
/// `Shape::columns`).
pub(super) struct Places {
    id: Option<usize>,
    modstamp: Option<usize>,
    deleted: Option<usize>,
    columns: Vec<Option<usize>>,
}

impl Shape {
    pub(super) fn new(schema: Arc<EventSchema>, columns: Vec<FieldColumn>) -> Shape {
        Shape { schema, columns }
    }

    pub(super) fn places(&self, header: &csv::StringRecord) -> Places {
        let find = |name: &str| header.iter().position(|h| h == name);
        Places {
            id: find("Id"),
            modstamp: find("SystemModstamp"),
            deleted: find("IsDeleted"),
            columns: self.columns.iter().map(|c| find(&c.name)).collect(),
        }
    }

    /// The record as a snapshot event; a deleted one (`IsDeleted`, read by `queryAll`) as a
    /// DELETE with no field, its `SystemModstamp` when it was deleted.
    pub(super) fn event(
        &self,
        places: &Places,
        row: &csv::StringRecord,
        meta: &Meta,
    ) -> Result<ChangeEvent, RecordError> {
        let missing = |column| RecordError::Missing {
            object: meta.object.clone(),
            column,
        };
        let cell = |at: Option<usize>| at.and_then(|i| row.get(i)).filter(|t| !t.is_empty());
        let id = cell(places.id).ok_or_else(|| missing("Id"))?.to_string();
        let modstamp_text = cell(places.modstamp).ok_or_else(|| missing("SystemModstamp"))?;
        let bad = |field: &str, text: &str, kind| RecordError::Value {
            object: meta.object.clone(),
            id: id.clone(),
            field: field.to_string(),
            text: text.to_string(),
            kind,
        };
        let modstamp = timestamp_micros(modstamp_text)
            .ok_or_else(|| bad("SystemModstamp", modstamp_text, Kind::TimestampMillis))?
            / 1000;
        let names = &self.schema.names;
        let mut fields = Fields::default();
        let deleted = cell(places.deleted).is_some_and(|t| t.eq_ignore_ascii_case("true"));
        let columns = match deleted {
            true => &[][..],
            false => &self.columns[..],
        };
        for (column, place) in columns.iter().zip(&places.columns) {
            let Some(text) = cell(*place) else {
                continue;
            };
            let value =
                parse(text, column.kind).ok_or_else(|| bad(&column.name, text, column.kind))?;
            match column.child {
                None => fields.set(column.top, value),
                Some(j) => {
                    let children = names.children[column.top + 1].as_deref().unwrap_or(&[]);
                    let slot = fields.get_or_insert_with(column.top, || {
                        Value::Record(
                            children
                                .iter()
                                .map(|name| Field {
                                    name: *name,
                                    value: Value::Null,
                                })
                                .collect(),
                        )
                    });
                    // A switchable field's text wins over its children (Account's Name of
                    // a business account), as the events hold it.
                    if let Value::Record(children) = slot
                        && let Some(child) = children.get_mut(j)
                    {
                        child.value = value;
                    }
                }
            }
        }
        let header = ChangeEventHeader {
            entity_name: meta.object.clone(),
            record_ids: vec![id.clone()],
            change_type: match deleted {
                true => ChangeType::Delete,
                false => ChangeType::Snapshot,
            },
            change_origin: "sfzb-host/snapshot".into(),
            transaction_key: String::new(),
            sequence_number: 0,
            commit_timestamp: modstamp,
            commit_number: 0,
            commit_user: String::new(),
            changed_fields: Vec::new(),
            nulled_fields: Vec::new(),
            diff_fields: Vec::new(),
        };
        let encode_error = |reason: String| RecordError::Encode {
            object: meta.object.clone(),
            id: id.clone(),
            reason,
        };
        let head = crate::salesforce::schema::encode_header(&self.schema, &header)
            .map_err(|e| encode_error(e.to_string()))?;
        let mut event = ChangeEvent {
            org_id: meta.org_id.clone(),
            channel: meta.channel.clone(),
            replay_id: meta.position.clone(),
            event_id: String::new(),
            schema: self.schema.clone(),
            header_len: head.len(),
            payload: bytes::Bytes::from(head),
            modified_by: None,
            header,
            fields,
        };
        event.payload = event.encode().map_err(|e| encode_error(e.to_string()))?;
        Ok(event)
    }
}

/// A CSV cell as the value of a field of `kind`.
fn parse(text: &str, kind: Kind) -> Option<Value> {
    const DAY_MS: i64 = 86_400_000;
    Some(match kind {
        Kind::Text => Value::Text(text.into()),
        Kind::Int | Kind::Long => Value::Int(text.parse().ok()?),
        Kind::Double => Value::Float(text.parse().ok()?),
        Kind::Bool => Value::Bool(match text {
            "true" | "TRUE" | "True" => true,
            "false" | "FALSE" | "False" => false,
            _ => return None,
        }),
        Kind::Bytes => {
            use base64::Engine;
            Value::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()?,
            )
        }
        Kind::DateMillis | Kind::DateDays => {
            let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            let days = date
                .signed_duration_since(chrono::NaiveDate::default())
                .num_days();
            match kind {
                Kind::DateDays => Value::Int(days),
                _ => Value::Int(days * DAY_MS),
            }
        }
        Kind::TimestampMillis => Value::Int(timestamp_micros(text)? / 1000),
        Kind::TimestampMicros => Value::Int(timestamp_micros(text)?),
        Kind::TimeMillis => {
            let time = chrono::NaiveTime::parse_from_str(text.trim_end_matches('Z'), "%H:%M:%S%.f")
                .ok()?;
            Value::Int(
                time.signed_duration_since(chrono::NaiveTime::MIN)
                    .num_milliseconds(),
            )
        }
    })
}

/// `2026-01-01T00:00:00.000Z` or `…+0000`, as Salesforce writes datetimes, in microseconds.
pub(crate) fn timestamp_micros(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_read_back_as_the_typed_layout_writes_them() {
        assert_eq!(
            parse("2026-01-02", Kind::DateMillis),
            Some(Value::Int(20_455 * 86_400_000))
        );
        assert_eq!(
            parse("2026-01-02", Kind::DateDays),
            Some(Value::Int(20_455))
        );
        assert_eq!(
            parse("2026-01-01T00:00:01.500Z", Kind::TimestampMillis),
            Some(Value::Int(1_767_225_601_500))
        );
        assert_eq!(
            parse("2026-01-01T00:00:01.500+0000", Kind::TimestampMillis),
            Some(Value::Int(1_767_225_601_500))
        );
        assert_eq!(
            parse("13:30:05.007Z", Kind::TimeMillis),
            Some(Value::Int(48_605_007))
        );
        assert_eq!(parse("12.5", Kind::Double), Some(Value::Float(12.5)));
        assert_eq!(parse("x", Kind::Int), None);
        assert_eq!(parse("yes", Kind::Bool), None);
    }
}
