//! Writer schemas and Avro decoding: schemas parsed once and cached by schema id, and every
//! event decoded with the schema its own `schema_id` names (so mixed-entity channels and a
//! schema change mid-stream need nothing special). No transport here: fetching a missing
//! schema is the subscriber's job.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema};
use apache_avro::types::Value as Avro;
use bytes::Bytes;

use crate::event::{
    ChangeEvent, ChangeEventHeader, ChangeType, EventSchema, Field, FieldNames, ReplayId, Value,
};
use crate::salesforce::bitmap;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema {id} is not valid Avro: {source}")]
    Parse {
        id: String,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("schema {id} is not a change event schema: {reason}")]
    NotChangeEvent { id: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload does not match schema {schema_id}: {reason}")]
    Avro { schema_id: String, reason: String },
    #[error("event has no valid ChangeEventHeader: {0}")]
    Header(String),
}

/// Parsed writer schemas by schema id.
#[derive(Default)]
pub struct SchemaCache {
    schemas: RwLock<HashMap<String, Arc<EventSchema>>>,
}

impl SchemaCache {
    pub fn get(&self, id: &str) -> Option<Arc<EventSchema>> {
        self.schemas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Parses `json` and caches it under `id`; a schema already cached is returned as is.
    pub fn insert(&self, id: &str, json: &str) -> Result<Arc<EventSchema>, SchemaError> {
        if let Some(schema) = self.get(id) {
            return Ok(schema);
        }
        let schema = Arc::new(parse_schema(id, json)?);
        let mut map = self.schemas.write().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(id.to_string()).or_insert(schema).clone())
    }

    pub fn len(&self) -> usize {
        self.schemas.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses a change event writer schema and indexes its field names for bitmap decoding.
pub fn parse_schema(id: &str, json: &str) -> Result<EventSchema, SchemaError> {
    let avro = Schema::parse_str(json).map_err(|e| SchemaError::Parse {
        id: id.to_string(),
        source: Box::new(e),
    })?;
    let not_cdc = |reason: &str| SchemaError::NotChangeEvent {
        id: id.to_string(),
        reason: reason.to_string(),
    };
    let Schema::Record(root) = &avro else {
        return Err(not_cdc("the top-level type is not a record"));
    };
    if root.fields.first().map(|f| f.name.as_str()) != Some("ChangeEventHeader") {
        return Err(not_cdc("the first field is not ChangeEventHeader"));
    }
    let named = named_records(&avro);
    let top = root
        .fields
        .iter()
        .map(|f| Arc::<str>::from(f.name.as_str()))
        .collect();
    let children = root
        .fields
        .iter()
        .map(|f| {
            compound_record(&f.schema, &named).map(|r| {
                r.fields
                    .iter()
                    .map(|c| Arc::<str>::from(c.name.as_str()))
                    .collect()
            })
        })
        .collect();
    Ok(EventSchema {
        id: id.to_string(),
        json: json.to_string(),
        avro: avro.clone(),
        names: FieldNames { top, children },
    })
}

/// Every named record in the schema, so that later bare references (`"Address"`) resolve.
fn named_records(schema: &Schema) -> HashMap<Name, RecordSchema> {
    fn walk(schema: &Schema, out: &mut HashMap<Name, RecordSchema>) {
        match schema {
            Schema::Record(r) => {
                out.insert(r.name.clone(), r.clone());
                for f in &r.fields {
                    walk(&f.schema, out);
                }
            }
            Schema::Union(u) => u.variants().iter().for_each(|v| walk(v, out)),
            Schema::Array(a) => walk(&a.items, out),
            Schema::Map(m) => walk(&m.types, out),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(schema, &mut out);
    out
}

/// The record a field holds, whether bare, in a `["null", T]` union, in the 3-way
/// `["null", "string", T]` Name union, or as a reference to a record named earlier.
fn compound_record<'a>(
    schema: &'a Schema,
    named: &'a HashMap<Name, RecordSchema>,
) -> Option<&'a RecordSchema> {
    match schema {
        Schema::Record(r) => Some(r),
        Schema::Ref { name } => named.get(name),
        Schema::Union(u) => u.variants().iter().find_map(|v| compound_record(v, named)),
        _ => None,
    }
}

/// What the transport knows of an event besides its payload.
#[derive(Clone, Debug)]
pub struct EventMeta {
    pub org_id: Arc<str>,
    pub channel: Arc<str>,
    pub replay_id: ReplayId,
    pub event_id: String,
}

/// Decodes one payload with its writer schema.
pub fn decode_event(
    schema: &Arc<EventSchema>,
    meta: EventMeta,
    payload: Bytes,
) -> Result<ChangeEvent, DecodeError> {
    let avro =
        apache_avro::from_avro_datum(&schema.avro, &mut &payload[..], None).map_err(|e| {
            DecodeError::Avro {
                schema_id: schema.id.clone(),
                reason: e.to_string(),
            }
        })?;
    let Avro::Record(values) = avro else {
        return Err(DecodeError::Avro {
            schema_id: schema.id.clone(),
            reason: "payload is not a record".into(),
        });
    };
    let mut values = values.into_iter();
    let header = match values.next() {
        Some((name, value)) if name == "ChangeEventHeader" => decode_header(value, &schema.names)?,
        _ => {
            return Err(DecodeError::Header(
                "ChangeEventHeader is not the first field".into(),
            ));
        }
    };
    let fields = values
        .zip(schema.names.top.iter().skip(1))
        .map(|((_, value), name)| Field {
            name: name.clone(),
            value: convert(value),
        })
        .collect();
    Ok(ChangeEvent {
        org_id: meta.org_id,
        channel: meta.channel,
        replay_id: meta.replay_id,
        event_id: meta.event_id,
        schema: schema.clone(),
        payload,
        header,
        fields,
    })
}

fn decode_header(value: Avro, names: &FieldNames) -> Result<ChangeEventHeader, DecodeError> {
    let Avro::Record(parts) = unwrap_union(value) else {
        return Err(DecodeError::Header(
            "ChangeEventHeader is not a record".into(),
        ));
    };
    let mut header = ChangeEventHeader {
        entity_name: String::new(),
        record_ids: Vec::new(),
        change_type: ChangeType::Update,
        change_origin: String::new(),
        transaction_key: String::new(),
        sequence_number: 0,
        commit_timestamp: 0,
        commit_number: 0,
        commit_user: String::new(),
        changed_fields: Vec::new(),
        nulled_fields: Vec::new(),
        diff_fields: Vec::new(),
    };
    let mut change_type = None;
    for (name, value) in parts {
        let value = unwrap_union(value);
        match name.as_str() {
            "entityName" => header.entity_name = text(value),
            "recordIds" => header.record_ids = strings(value),
            "changeType" => change_type = ChangeType::parse(&text(value)),
            "changeOrigin" => header.change_origin = text(value),
            "transactionKey" => header.transaction_key = text(value),
            "sequenceNumber" => header.sequence_number = int(value) as i32,
            "commitTimestamp" => header.commit_timestamp = int(value),
            "commitNumber" => header.commit_number = int(value),
            "commitUser" => header.commit_user = text(value),
            "changedFields" => header.changed_fields = bitmap::decode(&strings(value), names),
            "nulledFields" => header.nulled_fields = bitmap::decode(&strings(value), names),
            "diffFields" => header.diff_fields = bitmap::decode(&strings(value), names),
            _ => {}
        }
    }
    header.change_type = change_type
        .ok_or_else(|| DecodeError::Header("changeType is missing or unknown".into()))?;
    if header.entity_name.is_empty() {
        return Err(DecodeError::Header("entityName is empty".into()));
    }
    Ok(header)
}

fn unwrap_union(value: Avro) -> Avro {
    match value {
        Avro::Union(_, inner) => unwrap_union(*inner),
        other => other,
    }
}

fn text(value: Avro) -> String {
    match value {
        Avro::String(s) | Avro::Enum(_, s) => s,
        _ => String::new(),
    }
}

fn int(value: Avro) -> i64 {
    match value {
        Avro::Int(i) => i64::from(i),
        Avro::Long(l) => l,
        _ => 0,
    }
}

fn strings(value: Avro) -> Vec<String> {
    match value {
        Avro::Array(items) => items.into_iter().map(|v| text(unwrap_union(v))).collect(),
        _ => Vec::new(),
    }
}

fn convert(value: Avro) -> Value {
    match unwrap_union(value) {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Value::Int(i64::from(i)),
        Avro::Long(l)
        | Avro::TimeMicros(l)
        | Avro::TimestampMillis(l)
        | Avro::TimestampMicros(l)
        | Avro::LocalTimestampMillis(l)
        | Avro::LocalTimestampMicros(l) => Value::Int(l),
        Avro::Float(f) => Value::Float(f64::from(f)),
        Avro::Double(d) => Value::Float(d),
        Avro::String(s) | Avro::Enum(_, s) => Value::Text(s),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Value::Bytes(b),
        Avro::Record(fields) => Value::Record(
            fields
                .into_iter()
                .map(|(name, v)| Field {
                    name: Arc::from(name),
                    value: convert(v),
                })
                .collect(),
        ),
        // Salesforce data fields are never arrays or maps; keep whatever arrives as JSON text.
        other => Value::Text(
            serde_json::Value::try_from(other)
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = include_str!("../sim/schemas/AccountChangeEvent.avsc");
    const CONTACT: &str = include_str!("../sim/schemas/ContactChangeEvent.avsc");

    #[test]
    fn real_schemas_parse_with_compound_children() {
        let account = parse_schema("a", ACCOUNT).unwrap();
        assert_eq!(&*account.names.top[0], "ChangeEventHeader");
        assert_eq!(&*account.names.top[5], "BillingAddress");
        // ShippingAddress is a bare reference to the Address record named by BillingAddress.
        let shipping = account.names.children[6].as_ref().unwrap();
        assert_eq!(shipping.len(), 11);
        assert_eq!(&*shipping[9], "Xyz");
        assert!(account.names.children[7].is_none());
        let contact = parse_schema("c", CONTACT).unwrap();
        assert_eq!(&*contact.names.top[3], "Name");
        assert!(contact.names.children[3].is_some());
    }

    #[test]
    fn non_cdc_schemas_are_rejected() {
        let err = parse_schema(
            "x",
            r#"{"type":"record","name":"X","fields":[{"name":"a","type":"int"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ChangeEventHeader"), "{err}");
        assert!(parse_schema("x", "{").is_err());
    }

    #[test]
    fn cache_parses_once() {
        let cache = SchemaCache::default();
        let a = cache.insert("a", ACCOUNT).unwrap();
        let b = cache.insert("a", "not even json").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn corrupt_payload_is_an_error_not_a_panic() {
        let schema = Arc::new(parse_schema("a", ACCOUNT).unwrap());
        let meta = EventMeta {
            org_id: "00D".into(),
            channel: "/data/AccountChangeEvent".into(),
            replay_id: ReplayId::new(Bytes::from_static(&[1])),
            event_id: "e".into(),
        };
        for payload in [&b""[..], &b"\xff\xff\xff\xff\xff\xff"[..], &[7u8; 3][..]] {
            let err =
                decode_event(&schema, meta.clone(), Bytes::copy_from_slice(payload)).unwrap_err();
            assert!(
                err.to_string().contains("schema a") || err.to_string().contains("Header"),
                "{err}"
            );
        }
    }
}
