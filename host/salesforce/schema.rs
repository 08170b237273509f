//! Writer schemas and Avro decoding: schemas parsed once and cached by schema id, and every
//! event decoded with the schema its own `schema_id` names (so mixed-entity channels and a
//! schema change mid-stream need nothing special). No transport here: fetching a missing
//! schema is the subscriber's job. A run's cache also keeps a copy of each schema in the
//! state directory, for what reads dead letters (which carry only the schema id) without
//! asking the org: `transform test`, `dead-letter replay`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema};
use bytes::Bytes;

use crate::event::{
    ChangeEvent, ChangeEventHeader, ChangeType, EventSchema, FieldNames, Fields, ReplayId, Value,
};
use crate::salesforce::avro::{AvroError, Plan, Reader};
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

/// Where a run keeps its schemas, under its state directory.
pub fn kept_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("schemas")
}

/// Parsed writer schemas by schema id.
#[derive(Default)]
pub struct SchemaCache {
    schemas: RwLock<HashMap<String, Arc<EventSchema>>>,
    /// Schemas that could not be parsed, with the reason: fetched once, not per event.
    failures: RwLock<HashMap<String, String>>,
    /// Where each schema parsed is also written as `<id>.json`; none: memory only.
    keep: Option<PathBuf>,
}

impl SchemaCache {
    /// A cache that also writes each schema it parses to `dir` (made when first needed).
    pub fn keeping_in(dir: PathBuf) -> SchemaCache {
        SchemaCache {
            keep: Some(dir),
            ..SchemaCache::default()
        }
    }

    /// The JSON of schema `id` as a run kept it in `dir`, if it did.
    pub fn kept(dir: &Path, id: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(format!("{}.json", file_name(id)?))).ok()
    }

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
        let schema = match parse_schema(id, json) {
            Ok(schema) => Arc::new(schema),
            Err(error) => {
                self.failures
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string(), error.to_string());
                return Err(error);
            }
        };
        let mut map = self.schemas.write().unwrap_or_else(|e| e.into_inner());
        let schema = map.entry(id.to_string()).or_insert(schema).clone();
        drop(map);
        if let Some(dir) = &self.keep {
            keep(dir, id, json);
        }
        Ok(schema)
    }

    /// Why the schema `id` cannot be used, if it was fetched and failed to parse.
    pub fn failure(&self, id: &str) -> Option<String> {
        self.failures
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.schemas.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A schema id as a file name: Salesforce's are URL-safe base64; anything else is not
/// written (nor looked for) rather than escaped.
fn file_name(id: &str) -> Option<&str> {
    let safe = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    safe.then_some(id)
}

/// Writes `json` as `<dir>/<id>.json` unless there: through a temporary file renamed into
/// place, so that another process sharing the directory never reads half a schema. A
/// failure costs only the copy, so it is logged, not returned.
fn keep(dir: &Path, id: &str, json: &str) {
    let Some(name) = file_name(id) else {
        return;
    };
    let path = dir.join(format!("{name}.json"));
    if path.exists() {
        return;
    }
    // Unique per write: two subscriptions of a process may keep the same schema at once.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&temporary, json))
        .and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        tracing::warn!(schema_id = %id, dir = %dir.display(), %error, "Cannot keep a copy of the schema; `transform test` will not find it there.");
    }
}

/// Parses a change event writer schema, indexes its field names for bitmap decoding, and
/// compiles its decoder.
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
    if root.fields.len() > Fields::MAX {
        return Err(not_cdc(&format!(
            "it has {} fields, more than the {} an event may hold",
            root.fields.len(),
            Fields::MAX
        )));
    }
    let named = named_records(&avro);
    let top: Vec<_> = root
        .fields
        .iter()
        .map(|f| crate::event::name(&f.name))
        .collect();
    let children = root
        .fields
        .iter()
        .map(|f| {
            compound_record(&f.schema, &named).map(|r| {
                r.fields
                    .iter()
                    .map(|c| crate::event::name(&c.name))
                    .collect()
            })
        })
        .collect::<Vec<_>>();
    let Plan::Record(fields) = Plan::compile(&avro).map_err(|e| not_cdc(&e.to_string()))? else {
        return Err(not_cdc("the top-level type is not a record"));
    };
    let nulls = fields
        .iter()
        .skip(1)
        .map(|(_, plan)| plan.null_byte())
        .collect();
    Ok(EventSchema {
        id: id.to_string(),
        json: json.to_string(),
        json_literal: serde_json::value::to_raw_value(json).expect("a string always serializes"),
        avro: avro.clone(),
        names: FieldNames::new(top, children),
        plans: fields,
        nulls,
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
/// The type of a `["null", T]` field: its first branch that is not null (null if none).
pub(crate) fn non_null(schema: &Schema) -> &Schema {
    match schema {
        Schema::Union(u) => u
            .variants()
            .iter()
            .find(|v| !matches!(v, Schema::Null))
            .unwrap_or(&Schema::Null),
        other => other,
    }
}

/// The record a field's (non-union) type is: itself, or the named record of `root` it
/// refers to (`"type": "Address"` after the first use).
pub(crate) fn record_of<'a>(schema: &'a Schema, root: &'a Schema) -> Option<&'a RecordSchema> {
    fn find<'a>(s: &'a Schema, name: &Name) -> Option<&'a RecordSchema> {
        match s {
            Schema::Record(r) if &r.name == name => Some(r),
            Schema::Record(r) => r.fields.iter().find_map(|f| find(&f.schema, name)),
            Schema::Union(u) => u.variants().iter().find_map(|v| find(v, name)),
            _ => None,
        }
    }
    match schema {
        Schema::Record(r) => Some(r),
        Schema::Ref { name } => find(root, name),
        _ => None,
    }
}

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
    let avro_error = |e: AvroError| DecodeError::Avro {
        schema_id: schema.id.clone(),
        reason: e.to_string(),
    };
    let mut reader = Reader::new(&payload);
    let (header_plan, data_plans) = schema
        .plans
        .split_first()
        .ok_or_else(|| DecodeError::Header("the schema has no fields".into()))?;
    let header =
        decode_header(&mut reader, &header_plan.1, &schema.names).map_err(|e| match e {
            HeaderError::Avro(e) => avro_error(e),
            HeaderError::Invalid(reason) => DecodeError::Header(reason),
        })?;
    let header_len = reader.position();
    let mut fields = Fields::default();
    for (at, ((_, plan), null)) in data_plans.iter().zip(&schema.nulls).enumerate() {
        if !reader.skip(*null) {
            fields.push(at, reader.value(plan).map_err(avro_error)?);
        }
    }
    reader.finish().map_err(avro_error)?;
    Ok(ChangeEvent {
        org_id: meta.org_id,
        channel: meta.channel,
        replay_id: meta.replay_id,
        event_id: meta.event_id,
        schema: schema.clone(),
        payload,
        header_len,
        modified_by: None,
        header,
        fields,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct EncodeError {
    pub field: String,
    pub reason: String,
}

impl ChangeEvent {
    /// The payload re-encoded against the event's writer schema after transforms changed
    /// fields: the original header bytes, then every field from the event.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        let header = self
            .payload
            .get(..self.header_len)
            .ok_or_else(|| EncodeError {
                field: "ChangeEventHeader".into(),
                reason: "the original header is missing".into(),
            })?;
        let mut out = Vec::with_capacity(self.payload.len() + 64);
        out.extend_from_slice(header);
        encode_fields(&self.schema, &self.fields, &mut out)?;
        Ok(Bytes::from(out))
    }

    /// The payload brought up to date after the transforms: re-encoded if one changed a
    /// field. The error names that transform, and why its value does not fit the schema.
    pub fn reencode(&mut self) -> Result<(), (Arc<str>, String)> {
        let Some(by) = self.modified_by.clone() else {
            return Ok(());
        };
        self.payload = self.encode().map_err(|e| {
            let why = format!("transform {by} set a value that does not fit the schema: {e}");
            (by, why)
        })?;
        Ok(())
    }
}

/// `fields` encoded as `schema`'s data fields (what follows the header), nulls included.
pub fn encode_fields(
    schema: &EventSchema,
    fields: &Fields,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let plans = schema.plans.get(1..).unwrap_or_default();
    for ((name, plan), value) in plans.iter().zip(fields.dense(plans.len())) {
        crate::salesforce::avro::write(plan, value, out).map_err(|reason| EncodeError {
            field: name.to_string(),
            reason,
        })?;
    }
    Ok(())
}

/// `header` encoded as `schema`'s ChangeEventHeader, for events made here rather than
/// received (a snapshot's records): with the original header bytes, such an event's
/// payload is re-encoded like any other. A snapshot record is written as a CREATE.
pub fn encode_header(
    schema: &EventSchema,
    header: &ChangeEventHeader,
) -> Result<Vec<u8>, EncodeError> {
    use crate::salesforce::avro::{write_long, write_str};
    let fields = match schema.plans.first() {
        Some((_, Plan::Record(fields))) => fields,
        _ => {
            return Err(EncodeError {
                field: "ChangeEventHeader".into(),
                reason: "the schema's first field is not the header record".into(),
            });
        }
    };
    let change_type = match header.change_type {
        ChangeType::Snapshot => ChangeType::Create,
        other => other,
    };
    let mut out = Vec::with_capacity(256);
    for (name, plan) in fields {
        let mut plan = plan;
        // A nullable header field holds its value in the union's other branch.
        if let Plan::Union(branches) = plan {
            let Some(at) = branches.iter().position(|b| !matches!(b, Plan::Null)) else {
                write_long(0, &mut out);
                continue;
            };
            write_long(at as i64, &mut out);
            plan = &branches[at];
        }
        let strings = |items: &[String], out: &mut Vec<u8>| {
            if !items.is_empty() {
                write_long(items.len() as i64, out);
                items.iter().for_each(|s| write_str(s, out));
            }
            write_long(0, out);
        };
        match (name.as_ref(), plan) {
            ("changeType", Plan::Enum(symbols)) => {
                let at = symbols
                    .iter()
                    .position(|s| **s == *change_type.as_str())
                    .ok_or_else(|| EncodeError {
                        field: "changeType".into(),
                        reason: format!("{} is not a symbol of the schema", change_type.as_str()),
                    })?;
                write_long(at as i64, &mut out);
            }
            ("entityName", _) => write_str(&header.entity_name, &mut out),
            ("changeOrigin", _) => write_str(&header.change_origin, &mut out),
            ("transactionKey", _) => write_str(&header.transaction_key, &mut out),
            ("commitUser", _) => write_str(&header.commit_user, &mut out),
            ("sequenceNumber", _) => write_long(i64::from(header.sequence_number), &mut out),
            ("commitTimestamp", _) => write_long(header.commit_timestamp, &mut out),
            ("commitNumber", _) => write_long(header.commit_number, &mut out),
            ("recordIds", _) => strings(&header.record_ids, &mut out),
            // Field lists are bitmaps on the wire; a made event changed nothing.
            (_, Plan::Array(_)) => strings(&[], &mut out),
            (_, Plan::String) => write_str("", &mut out),
            (_, Plan::Int | Plan::Long) => write_long(0, &mut out),
            (other, _) => {
                return Err(EncodeError {
                    field: format!("ChangeEventHeader.{other}"),
                    reason: "a header field of a type sfzb-host does not write".into(),
                });
            }
        }
    }
    Ok(out)
}

enum HeaderError {
    Avro(AvroError),
    Invalid(String),
}

impl From<AvroError> for HeaderError {
    fn from(e: AvroError) -> Self {
        HeaderError::Avro(e)
    }
}

fn decode_header(
    reader: &mut Reader<'_>,
    plan: &Plan,
    names: &FieldNames,
) -> Result<ChangeEventHeader, HeaderError> {
    let plan = match plan {
        Plan::Record(fields) => fields,
        _ => {
            return Err(HeaderError::Invalid(
                "ChangeEventHeader is not a record".into(),
            ));
        }
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
    for (name, plan) in plan {
        match &**name {
            "recordIds" => header.record_ids = reader.strings(plan)?,
            "changedFields" => {
                header.changed_fields = bitmap::decode(&reader.strings(plan)?, names)
            }
            "nulledFields" => header.nulled_fields = bitmap::decode(&reader.strings(plan)?, names),
            "diffFields" => header.diff_fields = bitmap::decode(&reader.strings(plan)?, names),
            other => {
                let value = reader.value(plan)?;
                match other {
                    "entityName" => header.entity_name = text(value),
                    "changeType" => change_type = ChangeType::parse(&text(value)),
                    "changeOrigin" => header.change_origin = text(value),
                    "transactionKey" => header.transaction_key = text(value),
                    "sequenceNumber" => header.sequence_number = int(value) as i32,
                    "commitTimestamp" => header.commit_timestamp = int(value),
                    "commitNumber" => header.commit_number = int(value),
                    "commitUser" => header.commit_user = text(value),
                    _ => {}
                }
            }
        }
    }
    header.change_type = change_type
        .ok_or_else(|| HeaderError::Invalid("changeType is missing or unknown".into()))?;
    if header.entity_name.is_empty() {
        return Err(HeaderError::Invalid("entityName is empty".into()));
    }
    Ok(header)
}

fn text(value: Value) -> String {
    match value {
        Value::Text(s) => s.into(),
        _ => String::new(),
    }
}

fn int(value: Value) -> i64 {
    match value {
        Value::Int(i) => i,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Field;

    const ACCOUNT: &str = include_str!("../sim/schemas/AccountChangeEvent.avsc");

    #[test]
    fn an_unusable_schema_is_remembered_with_its_reason() {
        let cache = SchemaCache::default();
        assert!(cache.insert("bad", "{ not json").is_err());
        assert!(cache.get("bad").is_none());
        let reason = cache.failure("bad").expect("the failure is kept");
        assert!(!reason.is_empty());
        assert!(cache.insert("acct", ACCOUNT).is_ok());
        assert_eq!(cache.failure("acct"), None);
    }
    #[test]
    fn a_kept_schema_is_written_once_and_read_back_and_only_usable_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("schemas");
        let cache = SchemaCache::keeping_in(kept.clone());
        cache.insert("acct-1_A", ACCOUNT).unwrap();
        assert_eq!(
            SchemaCache::kept(&kept, "acct-1_A").as_deref(),
            Some(ACCOUNT)
        );
        assert!(cache.insert("bad", "{ not json").is_err());
        assert_eq!(SchemaCache::kept(&kept, "bad"), None);
        cache.insert("../escape", ACCOUNT).unwrap();
        assert_eq!(
            std::fs::read_dir(&kept).unwrap().count(),
            1,
            "an id that is not a file name is kept in memory only"
        );
        assert!(!dir.path().join("escape.json").exists());
    }

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

    /// The event `apache-avro` decodes from the same payload, in our model.
    fn reference_fields(schema: &EventSchema, payload: &[u8]) -> Option<Fields> {
        use apache_avro::types::Value as Avro;
        fn convert(value: Avro) -> Value {
            match value {
                Avro::Union(_, inner) => convert(*inner),
                Avro::Null => Value::Null,
                Avro::Boolean(b) => Value::Bool(b),
                Avro::Int(i) => Value::Int(i64::from(i)),
                Avro::Long(l) => Value::Int(l),
                Avro::Float(f) => Value::Float(f64::from(f)),
                Avro::Double(d) => Value::Float(d),
                Avro::String(s) | Avro::Enum(_, s) => Value::Text(s.into()),
                Avro::Bytes(b) | Avro::Fixed(_, b) => Value::Bytes(b),
                Avro::Record(fields) => Value::Record(
                    fields
                        .into_iter()
                        .map(|(n, v)| Field {
                            name: crate::event::name(&n),
                            value: convert(v),
                        })
                        .collect(),
                ),
                other => panic!("unexpected {other:?}"),
            }
        }
        let Avro::Record(fields) =
            apache_avro::from_avro_datum(&schema.avro, &mut &payload[..], None).ok()?
        else {
            return None;
        };
        let mut out = Fields::default();
        for (at, (_, v)) in fields.into_iter().skip(1).enumerate() {
            out.push(at, convert(v));
        }
        Some(out)
    }

    fn meta() -> EventMeta {
        EventMeta {
            org_id: "00D".into(),
            channel: "/data/ChangeEvents".into(),
            replay_id: ReplayId::new(Bytes::from_static(&[1])),
            event_id: "e".into(),
        }
    }

    #[test]
    fn decoder_agrees_with_apache_avro_on_every_simulated_event() {
        use crate::sim::catalog::{Entity, entity_names};
        use crate::sim::generator::{Position, generate};
        for name in entity_names() {
            let entity = Entity::load(name).unwrap().unwrap();
            for schema in [&entity.schema, &entity.changed_schema] {
                for seq in 0..200 {
                    let g = generate(
                        &entity,
                        schema,
                        3,
                        Position { index: seq, seq },
                        seq % 50 == 49,
                    );
                    let ours = decode_event(schema, meta(), g.payload.clone()).unwrap();
                    assert_eq!(
                        Some(ours.fields),
                        reference_fields(schema, &g.payload),
                        "{name} #{seq}"
                    );
                }
            }
        }
    }

    #[test]
    fn corrupted_payloads_never_panic_and_never_decode_differently() {
        use crate::sim::catalog::Entity;
        use crate::sim::generator::{Position, generate};
        use rand::{Rng, SeedableRng};
        let entity = Entity::load("Contact").unwrap().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut flipped_and_decoded = 0;
        for seq in 0..300 {
            let g = generate(
                &entity,
                &entity.schema,
                5,
                Position { index: seq, seq },
                false,
            );
            // The untouched payload decodes, to what apache-avro reads: a decoder that
            // refused everything would fail here.
            let whole = decode_event(&entity.schema, meta(), g.payload.clone())
                .expect("an intact payload decodes");
            assert_eq!(
                Some(whole.fields),
                reference_fields(&entity.schema, &g.payload)
            );
            let mut bytes = g.payload.to_vec();
            match seq % 3 {
                0 => bytes.truncate(rng.random_range(0..bytes.len())),
                1 => {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] ^= 1 << rng.random_range(0..8);
                }
                _ => bytes.extend_from_slice(&[0x7f, 0x00]),
            }
            match decode_event(&entity.schema, meta(), Bytes::from(bytes.clone())) {
                Ok(ours) => {
                    flipped_and_decoded += 1;
                    assert_eq!(Some(ours.fields), reference_fields(&entity.schema, &bytes));
                }
                // Refused: never a panic, never a different reading.
                Err(_) => {}
            }
            if seq % 3 == 2 {
                assert!(
                    decode_event(&entity.schema, meta(), Bytes::from(bytes)).is_err(),
                    "trailing bytes are refused"
                );
            }
        }
        // A flipped bit inside a string's bytes still decodes (differently, but as the
        // reference reads it): some of the 100 flips must have.
        assert!(
            flipped_and_decoded > 0,
            "no corrupted payload decoded at all"
        );
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
            // Each is cut short or malformed inside the header, the first field.
            assert!(
                matches!(&err, DecodeError::Avro { schema_id, .. } if schema_id == "a")
                    || matches!(err, DecodeError::Header(_)),
                "{err}"
            );
        }
        // The same decoder reads a real Account event: the errors above are about the bytes.
        let entity = crate::sim::catalog::Entity::load("Account")
            .unwrap()
            .unwrap();
        let g = crate::sim::generator::generate(
            &entity,
            &entity.schema,
            5,
            crate::sim::generator::Position { index: 0, seq: 1 },
            false,
        );
        assert!(decode_event(&entity.schema, meta, g.payload).is_ok());
    }
}
