//! The internal event model every stage shares: a decoded Change Data Capture event,
//! its opaque replay id, and the writer schema it was decoded with.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// A Pub/Sub API replay id. Opaque bytes: stored and sent back exactly as received,
/// shown as lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayId(Bytes);

impl ReplayId {
    pub fn new(bytes: Bytes) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// Parses the hex form written by [`ReplayId::to_hex`] (an optional `0x` prefix is accepted).
    ///
    /// ```
    /// use sfzb_host::event::ReplayId;
    /// let id = ReplayId::from_hex("0x00000000000408760000").unwrap();
    /// assert_eq!(id.as_bytes().len(), 10);
    /// assert_eq!(id.to_string(), "00000000000408760000");
    /// ```
    pub fn from_hex(text: &str) -> Result<Self, hex::FromHexError> {
        let digits = text.strip_prefix("0x").unwrap_or(text);
        if digits.is_empty() {
            return Err(hex::FromHexError::InvalidStringLength);
        }
        Ok(Self(Bytes::from(hex::decode(digits)?)))
    }
}

impl fmt::Display for ReplayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ReplayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplayId({})", self.to_hex())
    }
}

/// `ChangeEventHeader.changeType`, including the gap events Salesforce sends when it could
/// not generate a full change event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeType {
    Create,
    Update,
    Delete,
    Undelete,
    GapCreate,
    GapUpdate,
    GapDelete,
    GapUndelete,
    GapOverflow,
    /// Not a change: a record as the initial snapshot read it (`snapshot = true`). Its
    /// row's change type is `SNAPSHOT`; transforms see it as a create, and it is not one
    /// of the schema's symbols.
    Snapshot,
}

impl ChangeType {
    pub const ALL: [ChangeType; 9] = [
        ChangeType::Create,
        ChangeType::Update,
        ChangeType::Delete,
        ChangeType::Undelete,
        ChangeType::GapCreate,
        ChangeType::GapUpdate,
        ChangeType::GapDelete,
        ChangeType::GapUndelete,
        ChangeType::GapOverflow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Create => "CREATE",
            ChangeType::Update => "UPDATE",
            ChangeType::Delete => "DELETE",
            ChangeType::Undelete => "UNDELETE",
            ChangeType::GapCreate => "GAP_CREATE",
            ChangeType::GapUpdate => "GAP_UPDATE",
            ChangeType::GapDelete => "GAP_DELETE",
            ChangeType::GapUndelete => "GAP_UNDELETE",
            ChangeType::GapOverflow => "GAP_OVERFLOW",
            ChangeType::Snapshot => "SNAPSHOT",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Gap events carry only a header: the record's data must be re-read from Salesforce.
    pub fn is_gap(self) -> bool {
        !matches!(
            self,
            ChangeType::Create
                | ChangeType::Update
                | ChangeType::Delete
                | ChangeType::Undelete
                | ChangeType::Snapshot
        )
    }
}

impl fmt::Display for ChangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decoded `ChangeEventHeader`. The three field lists hold field names (compound
/// fields' children as `Parent.Child`), already decoded from Salesforce's bitmaps, as
/// interned [`Name`]s: an update names a few fields, and a `String` for each was most of
/// the header's allocations.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeEventHeader {
    pub entity_name: String,
    pub record_ids: Vec<String>,
    pub change_type: ChangeType,
    pub change_origin: String,
    pub transaction_key: String,
    pub sequence_number: i32,
    pub commit_timestamp: i64,
    pub commit_number: i64,
    pub commit_user: String,
    pub changed_fields: Vec<Name>,
    pub nulled_fields: Vec<Name>,
    pub diff_fields: Vec<Name>,
}

/// A record field's value. Salesforce CDC schemas carry no Avro logical types: dates and
/// times are `Int` epoch values whose meaning is only in the schema's field `doc`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Held inline up to 24 bytes, as most of a record's texts are (ids, names, phones,
    /// picklist values): decoding them allocates nothing, and the thread that frees
    /// written events has nothing to free.
    Text(compact_str::CompactString),
    Bytes(Vec<u8>),
    /// A compound field (Address, Name, Location): its children in schema order.
    Record(Vec<Field>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: Name,
    pub value: Value,
}

/// The data fields of an event (or of a simulated record) that hold a value, each by its
/// position among its schema's data fields, in that order; a null field is absent. Most
/// fields of a change event are null (an update names a few of a hundred): holding only
/// the others keeps an event a few hundred bytes, where a slot per field made decoding,
/// each writer and the thread freeing written events go through the whole width.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields(Vec<(u16, Value)>);

impl Fields {
    /// The most data fields a schema may have: positions are `u16`.
    pub const MAX: usize = u16::MAX as usize + 1;

    pub fn with_capacity(capacity: usize) -> Self {
        Fields(Vec::with_capacity(capacity))
    }

    fn find(&self, at: usize) -> Result<usize, usize> {
        self.0.binary_search_by_key(&at, |(i, _)| usize::from(*i))
    }

    /// Field `at`'s value; `None` when it is null.
    pub fn get(&self, at: usize) -> Option<&Value> {
        self.find(at).ok().map(|k| &self.0[k].1)
    }

    /// Field `at`'s value, first set to `make()` when null.
    pub fn get_or_insert_with(&mut self, at: usize, make: impl FnOnce() -> Value) -> &mut Value {
        let k = match self.find(at) {
            Ok(k) => k,
            Err(k) => {
                self.0.insert(k, (position(at), make()));
                k
            }
        };
        &mut self.0[k].1
    }

    /// Sets field `at`; a null takes it out.
    pub fn set(&mut self, at: usize, value: Value) {
        match (self.find(at), value) {
            (Ok(k), Value::Null) => {
                self.0.remove(k);
            }
            (Ok(k), value) => self.0[k].1 = value,
            (Err(_), Value::Null) => {}
            (Err(k), value) => self.0.insert(k, (position(at), value)),
        }
    }

    /// Appends field `at`, which comes after every field held (decoding reads them in
    /// order); a null is left out.
    pub fn push(&mut self, at: usize, value: Value) {
        debug_assert!(self.0.last().is_none_or(|(i, _)| usize::from(*i) < at));
        if !matches!(value, Value::Null) {
            self.0.push((position(at), value));
        }
    }

    /// The fields that hold a value: position and value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Value)> {
        self.0.iter().map(|(i, v)| (usize::from(*i), v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Value)> {
        self.0.iter_mut().map(|(i, v)| (usize::from(*i), v))
    }

    /// How many fields hold a value.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every one of `count` fields in order, null where absent: what Avro and the
    /// reference layout's JSON write.
    pub fn dense(&self, count: usize) -> impl Iterator<Item = &Value> {
        let mut held = self.0.iter().peekable();
        (0..count).map(move |at| match held.peek() {
            Some((i, value)) if usize::from(*i) == at => {
                held.next();
                value
            }
            _ => &Value::Null,
        })
    }
}

fn position(at: usize) -> u16 {
    u16::try_from(at).expect("schemas of more than Fields::MAX fields are refused when parsed")
}

/// A field's name, interned for the life of the process (see [`name`]).
pub type Name = &'static str;

/// `text` as a [`Name`]: one copy per distinct name in the process, kept until it ends.
/// Every decoded event holds a name per field (~90 for Account). As reference-counted
/// strings, the thread decoding events and the one dropping them once written moved the
/// counts' cache lines between cores for each field: a third of a typed event's CPU.
/// Names are few (the fields of the objects streamed), so keeping them costs little.
pub fn name(text: &str) -> Name {
    static NAMES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<Name>>> =
        std::sync::LazyLock::new(Default::default);
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(name) = names.get(text) {
        return name;
    }
    let name: Name = Box::leak(text.into());
    names.insert(name);
    name
}

/// Field names of a schema by position, as Salesforce's bitmaps address them.
#[derive(Clone, Debug, Default)]
pub struct FieldNames {
    /// Top-level fields; position 0 is `ChangeEventHeader`.
    pub top: Vec<Name>,
    /// For each top-level field that is a compound record, its children's names.
    pub children: Vec<Option<Vec<Name>>>,
    /// Position of each top-level field by name.
    pub index: foldhash::HashMap<Name, usize>,
    /// For each compound field, its children's names as the bitmaps' field lists name them:
    /// `Parent.Child`.
    pub dotted: Vec<Option<Vec<Name>>>,
}

/// Where a field name (`Email`, `BillingAddress.City`) points in an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldPath {
    /// A top-level field, by its position in `ChangeEvent::fields`.
    Top(usize),
    /// A compound field's child: the parent's position in `fields`, the child's in the record.
    Child(usize, usize),
}

impl FieldNames {
    pub fn new(top: Vec<Name>, children: Vec<Option<Vec<Name>>>) -> Self {
        let index = top.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let dotted = top
            .iter()
            .zip(&children)
            .map(|(parent, children)| {
                let children = children.as_ref()?;
                Some(
                    children
                        .iter()
                        .map(|child| name(&format!("{parent}.{child}")))
                        .collect(),
                )
            })
            .collect();
        FieldNames {
            top,
            children,
            index,
            dotted,
        }
    }

    /// Resolves a data field name; `ChangeEventHeader` is not a data field.
    pub fn resolve(&self, name: &str) -> Option<FieldPath> {
        if let Some(&i) = self.index.get(name) {
            return (i > 0).then(|| FieldPath::Top(i - 1));
        }
        let (parent, child) = name.split_once('.')?;
        let &i = self.index.get(parent)?;
        let j = self
            .children
            .get(i)?
            .as_ref()?
            .iter()
            .position(|c| &**c == child)?;
        (i > 0).then_some(FieldPath::Child(i - 1, j))
    }

    /// Every data field name, each compound field followed by its children as `Parent.Child`.
    pub fn data_field_names(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.top.len());
        for (i, name) in self.top.iter().enumerate().skip(1) {
            out.push(name.to_string());
            if let Some(children) = &self.children[i] {
                out.extend(children.iter().map(|c| format!("{name}.{c}")));
            }
        }
        out
    }
}

/// A writer schema as returned by `GetSchema`, parsed once and shared by every event
/// decoded with it.
#[derive(Debug)]
pub struct EventSchema {
    pub id: String,
    pub json: String,
    /// `json` as a JSON string literal, escaped once so rows need not escape it per event.
    pub json_literal: Box<serde_json::value::RawValue>,
    pub avro: apache_avro::Schema,
    pub names: FieldNames,
    /// The compiled decoder (and encoder): a plan per field in schema order, the first
    /// `ChangeEventHeader`. An event carries its schema, so it can always be re-encoded.
    pub(crate) plans: Vec<(Name, crate::salesforce::avro::Plan)>,
    /// For each data field, the byte that encodes its null (see [`Plan::null_byte`]).
    ///
    /// [`Plan::null_byte`]: crate::salesforce::avro::Plan::null_byte
    pub(crate) nulls: Vec<Option<u8>>,
}

/// A decoded change event.
#[derive(Clone, Debug)]
pub struct ChangeEvent {
    pub org_id: Arc<str>,
    pub channel: Arc<str>,
    pub replay_id: ReplayId,
    pub event_id: String,
    pub schema: Arc<EventSchema>,
    /// The Avro payload exactly as received (until a transform changes a field, after which
    /// the pipeline re-encodes it with [`ChangeEvent::encode`]).
    pub payload: Bytes,
    /// How many leading bytes of `payload` encode `ChangeEventHeader`.
    pub header_len: usize,
    /// The transform that last changed a field, if any: the payload must be re-encoded.
    pub modified_by: Option<Arc<str>>,
    pub header: ChangeEventHeader,
    /// The record's data fields that hold a value (`ChangeEventHeader` is position 0 of
    /// the schema, not a data field: data field `i` is the schema's field `i + 1`).
    pub fields: Fields,
}

impl ChangeEvent {
    /// A field's value: `None` when the schema has no such data field or it names a whole
    /// compound field that holds a record (ask for its children).
    pub fn get(&self, name: &str) -> Option<Value> {
        match self.schema.names.resolve(name)? {
            FieldPath::Top(i) => match self.fields.get(i) {
                Some(Value::Record(_)) => None,
                v => Some(v.cloned().unwrap_or(Value::Null)),
            },
            FieldPath::Child(i, j) => match self.fields.get(i) {
                Some(Value::Record(children)) => children.get(j).map(|c| c.value.clone()),
                _ => Some(Value::Null),
            },
        }
    }

    /// Sets a field; false when the schema has no such data field. Setting a child of a
    /// null compound field creates the record with its other children null. The header's
    /// `nulled_fields` follows, as Salesforce lists the fields an update nulled: a null
    /// lists the field (a whole compound field as its children), a value takes it off.
    pub fn set(&mut self, name: &str, value: Value, by: &Arc<str>) -> bool {
        let Some(path) = self.schema.names.resolve(name) else {
            return false;
        };
        let names = &self.schema.names;
        // The schema's own (interned) name of the field, as `resolve` found it.
        let interned = match path {
            FieldPath::Top(i) => names.top[i + 1],
            FieldPath::Child(i, j) => names.dotted[i + 1].as_ref().expect("resolved")[j],
        };
        let nulled = &mut self.header.nulled_fields;
        match (&value, path) {
            (Value::Null, FieldPath::Top(i)) => match &names.dotted[i + 1] {
                Some(children) => {
                    for child in children {
                        if !nulled.contains(child) {
                            nulled.push(child);
                        }
                    }
                }
                None if !nulled.contains(&interned) => nulled.push(interned),
                None => {}
            },
            (Value::Null, FieldPath::Child(..)) => {
                if !nulled.contains(&interned) {
                    nulled.push(interned);
                }
            }
            (_, FieldPath::Top(_)) => nulled.retain(|n| {
                *n != name
                    && !n
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('.'))
            }),
            (_, FieldPath::Child(..)) => nulled.retain(|n| *n != name),
        }
        match path {
            FieldPath::Top(i) => self.fields.set(i, value),
            FieldPath::Child(i, j) => {
                let Some(names) = self
                    .schema
                    .names
                    .children
                    .get(i + 1)
                    .and_then(Option::as_ref)
                else {
                    return false;
                };
                let null_record = || {
                    Value::Record(
                        names
                            .iter()
                            .map(|n| Field {
                                name: *n,
                                value: Value::Null,
                            })
                            .collect(),
                    )
                };
                let field = self.fields.get_or_insert_with(i, null_record);
                if !matches!(field, Value::Record(_)) {
                    *field = null_record();
                }
                if let Value::Record(children) = field {
                    match children.get_mut(j) {
                        Some(child) => child.value = value,
                        None => return false,
                    }
                }
            }
        }
        self.modified_by = Some(by.clone());
        true
    }

    /// The first record id, the one Salesforce log lines name.
    pub fn first_record_id(&self) -> &str {
        self.header.record_ids.first().map_or("", String::as_str)
    }

    /// The record as the reference library writes `record_data_json`: every data field in
    /// schema order, nulls included (so a JSON schema inferred from any row has every
    /// column), `ChangeEventHeader` excluded: the header has its own columns.
    pub fn record_json(&self) -> String {
        serde_json::to_string(&RecordJson(self))
            .expect("serializing an in-memory event cannot fail")
    }
}

struct RecordJson<'a>(&'a ChangeEvent);

impl Serialize for RecordJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let event = self.0;
        let names = event.schema.names.top.get(1..).unwrap_or_default();
        let mut map = s.serialize_map(Some(names.len()))?;
        for (name, value) in names.iter().zip(event.fields.dense(names.len())) {
            map.serialize_entry(*name, value)?;
        }
        map.end()
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => {
                use base64::Engine;
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
            }
            Value::Record(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for field in fields {
                    map.serialize_entry(&*field.name, &field.value)?;
                }
                map.end()
            }
        }
    }
}

/// The object whose changes a channel carries: `/data/AccountChangeEvent` → `Account`,
/// `/data/Invoice__ChangeEvent` → `Invoice__c`; `None` for `/data/ChangeEvents` and custom
/// channels.
pub fn object_of(channel: &str) -> Option<String> {
    let name = channel.strip_prefix("/data/")?;
    if let Some(base) = name.strip_suffix("__ChangeEvent") {
        return Some(format!("{base}__c"));
    }
    let base = name.strip_suffix("ChangeEvent")?;
    (!base.is_empty() && !base.ends_with("__")).then(|| base.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_id_round_trips_through_hex() {
        let id = ReplayId::new(Bytes::from_static(&[0, 0, 0, 0, 0, 0x40, 0x87, 0x60]));
        assert_eq!(id.to_hex(), "0000000000408760");
        assert_eq!(ReplayId::from_hex("0000000000408760").unwrap(), id);
        assert_eq!(ReplayId::from_hex("0x0000000000408760").unwrap(), id);
        assert!(ReplayId::from_hex("").is_err());
        assert!(ReplayId::from_hex("xyz").is_err());
    }

    #[test]
    fn change_types_parse_and_mark_gaps() {
        for t in ChangeType::ALL {
            assert_eq!(ChangeType::parse(t.as_str()), Some(t));
        }
        assert!(ChangeType::GapOverflow.is_gap());
        assert!(!ChangeType::Update.is_gap());
        assert_eq!(ChangeType::parse("update"), None);
    }

    #[test]
    fn channels_name_their_object() {
        assert_eq!(
            object_of("/data/AccountChangeEvent").as_deref(),
            Some("Account")
        );
        assert_eq!(
            object_of("/data/Invoice__ChangeEvent").as_deref(),
            Some("Invoice__c")
        );
        assert_eq!(object_of("/data/ChangeEvents"), None);
        assert_eq!(object_of("/data/Custom__chn"), None);
    }
}
