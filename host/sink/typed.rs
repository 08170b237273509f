//! The typed layout (`layout = "typed"`): a table per Salesforce object with the change
//! header as columns and one column per field, named by its Salesforce API name, typed from
//! the writer schema and the field's Salesforce type (the schema's field `doc`,
//! `Data:DateTime`).
//!
//! A table's columns only grow. Each writer schema gets a [`Plan`] against the table: where
//! each column's value comes from in its events. A schema with fields the table lacks adds
//! them (nullable, at the end) and reports them once through [`TypedTable::take_added`], so
//! the sink widens the stored table before it writes a row that has them; a field the
//! table has with another storage type is a [`Misfit`], and its events are dead-lettered.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;

use crate::event::{EventSchema, Value};
use crate::salesforce::schema::{non_null, record_of};
use crate::sink::Row;

/// How rows are laid out in their tables.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// The reference library's 16 columns: the record as JSON, the Avro payload and schema.
    #[default]
    Reference,
    /// A column per field of the object, typed; a table per object with `{object}`.
    Typed,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Reference => "reference",
            Layout::Typed => "typed",
        })
    }
}

/// How a column is stored; every column is nullable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Text,
    Int,
    Long,
    Double,
    Bool,
    Bytes,
    /// Days since the epoch.
    Date,
    /// Microseconds since the epoch, UTC.
    Timestamp,
    TextList,
}

impl Storage {
    pub const ALL: [Storage; 9] = [
        Storage::Text,
        Storage::Int,
        Storage::Long,
        Storage::Double,
        Storage::Bool,
        Storage::Bytes,
        Storage::Date,
        Storage::Timestamp,
        Storage::TextList,
    ];

    /// As Databricks SQL spells it.
    pub fn sql(self) -> &'static str {
        match self {
            Storage::Text => "STRING",
            Storage::Int => "INT",
            Storage::Long => "BIGINT",
            Storage::Double => "DOUBLE",
            Storage::Bool => "BOOLEAN",
            Storage::Bytes => "BINARY",
            Storage::Date => "DATE",
            Storage::Timestamp => "TIMESTAMP",
            Storage::TextList => "ARRAY<STRING>",
        }
    }
}

/// What a field's value means, which decides its storage and its conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Long,
    Double,
    Bool,
    Bytes,
    /// Salesforce `Date`, `DateOnly`, `Birthday`: epoch milliseconds at midnight UTC.
    DateMillis,
    /// Avro's `date`: days since the epoch.
    DateDays,
    /// Salesforce `DateTime`, Avro `timestamp-millis`: epoch milliseconds.
    TimestampMillis,
    /// Avro `timestamp-micros`.
    TimestampMicros,
    /// Salesforce `TimeOnly`, Avro `time-millis`: milliseconds since midnight, stored as
    /// text the way the REST API shows it (`13:30:00.000Z`).
    TimeMillis,
}

impl Kind {
    pub fn storage(self) -> Storage {
        match self {
            Kind::Text | Kind::TimeMillis => Storage::Text,
            Kind::Int => Storage::Int,
            Kind::Long => Storage::Long,
            Kind::Double => Storage::Double,
            Kind::Bool => Storage::Bool,
            Kind::Bytes => Storage::Bytes,
            Kind::DateMillis | Kind::DateDays => Storage::Date,
            Kind::TimestampMillis | Kind::TimestampMicros => Storage::Timestamp,
        }
    }
}

/// A change header column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    ChangeType,
    CommitTimestamp,
    CommitNumber,
    CommitUser,
    TransactionKey,
    SequenceNumber,
    ChangeOrigin,
    RecordIds,
    ChangedFields,
    NulledFields,
    DiffFields,
    OrgId,
    ReplayId,
    EventId,
    SchemaId,
    ProcessedTimestamp,
}

/// The header columns, first in every typed table. Salesforce API names start with a
/// capital letter or end in `__c`, so these lower-case names cannot be a field's.
pub const HEADER: [(&str, Storage, Header); 16] = [
    ("change_type", Storage::Text, Header::ChangeType),
    (
        "commit_timestamp",
        Storage::Timestamp,
        Header::CommitTimestamp,
    ),
    ("commit_number", Storage::Long, Header::CommitNumber),
    ("commit_user", Storage::Text, Header::CommitUser),
    ("transaction_key", Storage::Text, Header::TransactionKey),
    ("sequence_number", Storage::Int, Header::SequenceNumber),
    ("change_origin", Storage::Text, Header::ChangeOrigin),
    ("record_ids", Storage::TextList, Header::RecordIds),
    ("changed_fields", Storage::TextList, Header::ChangedFields),
    ("nulled_fields", Storage::TextList, Header::NulledFields),
    ("diff_fields", Storage::TextList, Header::DiffFields),
    ("org_id", Storage::Text, Header::OrgId),
    ("replay_id", Storage::Text, Header::ReplayId),
    ("event_id", Storage::Text, Header::EventId),
    ("schema_id", Storage::Text, Header::SchemaId),
    (
        "processed_timestamp",
        Storage::Timestamp,
        Header::ProcessedTimestamp,
    ),
];

/// A column of a typed table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedColumn {
    pub name: Arc<str>,
    pub storage: Storage,
}

/// A field of a writer schema as a column: its API name, kind and place in the event.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldColumn {
    pub name: String,
    pub kind: Kind,
    /// Position in `ChangeEvent::fields`.
    pub top: usize,
    /// Position in the compound field's record, for a child.
    pub child: Option<usize>,
}

/// The Salesforce type in a field's doc: `Data:DateTime` → `DateTime`.
pub(crate) fn salesforce_type(doc: Option<&str>) -> &str {
    doc.and_then(|d| d.split(':').nth(1)).unwrap_or("")
}

/// A compound field's child as its API name: `BillingAddress` + `City` → `BillingCity`,
/// `Name` + `FirstName` → `FirstName`, `Place__c` + `Latitude` → `Place__Latitude__s`.
pub fn child_name(parent: &str, salesforce_type: &str, child: &str) -> String {
    match salesforce_type {
        "Address" => format!(
            "{}{child}",
            parent.strip_suffix("Address").unwrap_or(parent)
        ),
        "Location" => match parent.strip_suffix("__c") {
            Some(base) => format!("{base}__{child}__s"),
            None => format!("{parent}{child}"),
        },
        t if t.ends_with("PersonName") => child.to_string(),
        _ => format!("{parent}_{child}"),
    }
}

fn kind_of(schema: &Schema, salesforce_type: &str) -> Option<Kind> {
    Some(match schema {
        Schema::Boolean => Kind::Bool,
        Schema::Int => Kind::Int,
        Schema::Long => match salesforce_type {
            "DateTime" => Kind::TimestampMillis,
            "Date" | "DateOnly" | "Birthday" => Kind::DateMillis,
            "TimeOnly" | "Time" => Kind::TimeMillis,
            _ => Kind::Long,
        },
        Schema::Float | Schema::Double => Kind::Double,
        Schema::Bytes | Schema::Fixed(_) => Kind::Bytes,
        Schema::String | Schema::Uuid | Schema::Enum(_) => Kind::Text,
        Schema::Date => Kind::DateDays,
        Schema::TimeMillis => Kind::TimeMillis,
        Schema::TimestampMillis | Schema::LocalTimestampMillis => Kind::TimestampMillis,
        Schema::TimestampMicros | Schema::LocalTimestampMicros => Kind::TimestampMicros,
        _ => return None,
    })
}

/// Why a schema's events do not fit a typed table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    #[error(
        "field {field} is {} in schema {schema_id}, but the table's column is {}: a column's type cannot change in place; write this object to a new table or migrate the column",
        new.sql(),
        old.sql()
    )]
    TypeChange {
        field: String,
        schema_id: String,
        old: Storage,
        new: Storage,
    },
    #[error(
        "field {field} of schema {schema_id} has Avro type {avro}, which has no typed column; use layout = \"reference\""
    )]
    Unsupported {
        field: String,
        schema_id: String,
        avro: String,
    },
    #[error(
        "field {field} of schema {schema_id} is {wanted} for sfzb-host, but the table's column {field} is {column}, a type sfzb-host does not write: change the column back to {wanted} (ALTER TABLE … ALTER COLUMN, or a new table), or write this object to a new table",
        wanted = wanted.sql()
    )]
    ForeignColumn {
        field: String,
        schema_id: String,
        column: String,
        wanted: Storage,
    },
    #[error(
        "the row is {bytes} bytes as protobuf, over the {limit} bytes Zerobus takes in one call (at most 10 MiB per record); make the transform's output smaller, or write this object to a Delta table"
    )]
    TooLarge { bytes: usize, limit: usize },
}

/// A writer schema's data fields as columns, compound fields flattened into their
/// children's API names: the documented rule (README, "Typed tables").
pub fn field_columns(schema: &EventSchema) -> Result<Vec<FieldColumn>, Misfit> {
    let Schema::Record(root) = &schema.avro else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(root.fields.len());
    for (i, field) in root.fields.iter().enumerate().skip(1) {
        let sf = salesforce_type(field.doc.as_deref());
        let variants: Vec<&Schema> = match &field.schema {
            Schema::Union(u) => u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Schema::Null))
                .collect(),
            other => vec![other],
        };
        let top = i - 1;
        let mut placed = false;
        for variant in variants {
            if let Some(compound) = record_of(variant, &schema.avro) {
                for (j, child) in compound.fields.iter().enumerate() {
                    let inner = non_null(&child.schema);
                    let kind =
                        kind_of(inner, salesforce_type(child.doc.as_deref())).ok_or_else(|| {
                            Misfit::Unsupported {
                                field: format!("{}.{}", field.name, child.name),
                                schema_id: schema.id.clone(),
                                avro: format!("{inner:?}"),
                            }
                        })?;
                    out.push(FieldColumn {
                        name: child_name(&field.name, sf, &child.name),
                        kind,
                        top,
                        child: Some(j),
                    });
                }
            } else if !placed {
                // A switchable field (Account's Name: text, or a person's name record) has
                // its text column and its children's columns.
                let kind = kind_of(variant, sf).ok_or_else(|| Misfit::Unsupported {
                    field: field.name.clone(),
                    schema_id: schema.id.clone(),
                    avro: format!("{variant:?}"),
                })?;
                out.push(FieldColumn {
                    name: field.name.clone(),
                    kind,
                    top,
                    child: None,
                });
                placed = true;
            }
        }
    }
    Ok(out)
}

/// A column a value goes to, and the form it takes there.
#[derive(Clone, Copy, Debug)]
struct Target {
    column: usize,
    kind: Kind,
}

/// Where one data field of a writer schema goes in a table.
#[derive(Clone, Debug, Default)]
struct FieldTargets {
    /// The column of the field's value when it is not a record: every plain field, and a
    /// switchable field's text (Account's `Name` of a business account).
    value: Option<Target>,
    /// A compound field's children's columns, by position in its record.
    children: Vec<Option<Target>>,
}

/// One writer schema's events in one table: the column of each header value and of each
/// data field, as the table was when the plan was made (columns added since read as null).
/// Writers walk an event's fields that hold a value, not the table's columns: an update
/// names a few fields of a table of a hundred and fifty columns.
#[derive(Debug)]
pub struct Plan {
    header: Vec<(usize, Header)>,
    /// By data field position in the writer schema.
    fields: Vec<FieldTargets>,
    /// Header field lists name compound children as `BillingAddress.City`, and a whole
    /// compound field as `BillingAddress`; the table names columns: `BillingCity`, and
    /// every child's column for the whole field (with its own text column first, for a
    /// switchable field such as Account's Name).
    renames: foldhash::HashMap<String, Vec<String>>,
}

/// One value of a typed row.
#[derive(Debug, PartialEq)]
pub enum TypedCell<'a> {
    Null,
    Text(Cow<'a, str>),
    Int(i32),
    Long(i64),
    Double(f64),
    Bool(bool),
    Bytes(&'a [u8]),
    /// Days since the epoch.
    Date(i32),
    /// Microseconds since the epoch.
    Timestamp(i64),
    /// Borrowed when it can be: the header's field lists are the schema's names, renamed
    /// only where they name compound fields' children.
    TextList(Cow<'a, [&'a str]>),
}

const DAY_MS: i64 = 86_400_000;

/// A date (`2026-12-02`) or UTC timestamp (`2026-12-02T10:30:00.123Z`, with as many
/// fraction digits as it needs: 0, 3 or 6) as text, written digit by digit into a stack
/// buffer: chrono's formatter, general over its format items, costs more than the rest of
/// a row's cell, and a row has several. Years outside 0–9999 (which chrono writes with a
/// sign) are `None`, for the caller to write through chrono.
fn iso_text(buf: &mut [u8; 27], days: i64, micros_of_day: Option<i64>) -> Option<&str> {
    use chrono::{Datelike, NaiveDate};
    // `value`'s last `width` digits at `at`.
    fn put(buf: &mut [u8], at: usize, value: u32, width: usize) {
        let mut v = value;
        for slot in buf[at..at + width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let date = NaiveDate::from_epoch_days(i32::try_from(days).ok()?)?;
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    put(buf, 0, year, 4);
    buf[4] = b'-';
    put(buf, 5, date.month(), 2);
    buf[7] = b'-';
    put(buf, 8, date.day(), 2);
    let mut len = 10;
    if let Some(us) = micros_of_day {
        let (seconds, fraction) = ((us / 1_000_000) as u32, (us % 1_000_000) as u32);
        buf[10] = b'T';
        put(buf, 11, seconds / 3600, 2);
        buf[13] = b':';
        put(buf, 14, seconds / 60 % 60, 2);
        buf[16] = b':';
        put(buf, 17, seconds % 60, 2);
        len = 19;
        if fraction != 0 {
            buf[19] = b'.';
            len = match fraction % 1000 {
                0 => {
                    put(buf, 20, fraction / 1000, 3);
                    23
                }
                _ => {
                    put(buf, 20, fraction, 6);
                    26
                }
            };
        }
        buf[len] = b'Z';
        len += 1;
    }
    std::str::from_utf8(&buf[..len]).ok()
}

/// Whether `text` has a byte JSON must escape (a quote, a backslash, a control character).
/// Most values have none and are copied as they are: serde_json's escaping loop, a table
/// lookup and a branch per byte, was a sixth of a typed JSON line. This check has no early
/// exit, so it compiles to vector instructions.
fn needs_json_escape(text: &str) -> bool {
    text.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// A typed cell in JSON: dates as `2026-12-02`, timestamps as RFC 3339 in UTC, bytes as
/// base64.
impl serde::Serialize for TypedCell<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use chrono::DateTime;
        match self {
            TypedCell::Null => s.serialize_unit(),
            TypedCell::Text(t) => s.serialize_str(t),
            TypedCell::Int(v) => s.serialize_i32(*v),
            TypedCell::Long(v) => s.serialize_i64(*v),
            TypedCell::Double(v) => s.serialize_f64(*v),
            TypedCell::Bool(v) => s.serialize_bool(*v),
            TypedCell::Bytes(v) => crate::sink::row::base64_bytes(v, s),
            TypedCell::Date(days) => match iso_text(&mut [0; 27], i64::from(*days), None) {
                Some(text) => s.serialize_str(text),
                None => match DateTime::from_timestamp(i64::from(*days) * 86_400, 0) {
                    Some(t) => s.collect_str(&t.date_naive()),
                    None => s.serialize_unit(),
                },
            },
            TypedCell::Timestamp(us) => {
                let (days, of_day) = (us.div_euclid(86_400_000_000), us.rem_euclid(86_400_000_000));
                match iso_text(&mut [0; 27], days, Some(of_day)) {
                    Some(text) => s.serialize_str(text),
                    None => match DateTime::from_timestamp_micros(*us) {
                        Some(t) => s.collect_str(&t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.fZ")),
                        None => s.serialize_unit(),
                    },
                }
            }
            TypedCell::TextList(v) => v.serialize(s),
        }
    }
}

impl Plan {
    /// Calls `each` with every column that has a value for `row` (null values left out):
    /// the header's, then the fields' in schema order. What a writer of rows (a JSON line,
    /// a protobuf message) or of columns (an Arrow batch) takes.
    #[inline]
    pub fn cells<'a>(&'a self, row: &'a Row, mut each: impl FnMut(usize, TypedCell<'a>)) {
        let e = &row.event;
        for &(column, header) in &self.header {
            let cell = self.header_cell(row, header);
            if !matches!(cell, TypedCell::Null) {
                each(column, cell);
            }
        }
        for (at, value) in e.fields.iter() {
            let Some(targets) = self.fields.get(at) else {
                continue;
            };
            match value {
                Value::Record(children) => {
                    for (target, child) in targets.children.iter().zip(children) {
                        if let Some(target) = target {
                            let cell = convert(&child.value, target.kind);
                            if !matches!(cell, TypedCell::Null) {
                                each(target.column, cell);
                            }
                        }
                    }
                }
                value => {
                    if let Some(target) = targets.value {
                        let cell = convert(value, target.kind);
                        if !matches!(cell, TypedCell::Null) {
                            each(target.column, cell);
                        }
                    }
                }
            }
        }
    }

    fn header_cell<'a>(&'a self, row: &'a Row, header: Header) -> TypedCell<'a> {
        let e = &row.event;
        let h = &e.header;
        let list = |names: &'a [crate::event::Name]| {
            if !names.iter().any(|name| self.renames.contains_key(*name)) {
                return TypedCell::TextList(Cow::Borrowed(names));
            }
            let mut columns = Vec::with_capacity(names.len());
            for &name in names {
                match self.renames.get(name) {
                    Some(renamed) => columns.extend(renamed.iter().map(String::as_str)),
                    None => columns.push(name),
                }
            }
            TypedCell::TextList(Cow::Owned(columns))
        };
        match header {
            Header::ChangeType => TypedCell::Text(Cow::Borrowed(h.change_type.as_str())),
            Header::CommitTimestamp => TypedCell::Timestamp(h.commit_timestamp * 1000),
            Header::CommitNumber => TypedCell::Long(h.commit_number),
            Header::CommitUser => TypedCell::Text(Cow::Borrowed(&h.commit_user)),
            Header::TransactionKey => TypedCell::Text(Cow::Borrowed(&h.transaction_key)),
            Header::SequenceNumber => TypedCell::Int(h.sequence_number),
            Header::ChangeOrigin => TypedCell::Text(Cow::Borrowed(&h.change_origin)),
            Header::RecordIds => {
                TypedCell::TextList(h.record_ids.iter().map(String::as_str).collect())
            }
            Header::ChangedFields => list(&h.changed_fields),
            Header::NulledFields => list(&h.nulled_fields),
            Header::DiffFields => list(&h.diff_fields),
            Header::OrgId => TypedCell::Text(Cow::Borrowed(&e.org_id)),
            Header::ReplayId => TypedCell::Text(Cow::Borrowed(&row.replay_id)),
            Header::EventId => TypedCell::Text(Cow::Borrowed(&e.event_id)),
            Header::SchemaId => TypedCell::Text(Cow::Borrowed(&e.schema.id)),
            Header::ProcessedTimestamp => TypedCell::Timestamp(row.processed_timestamp * 1000),
        }
    }
}

/// A field's value in its column's form; a value the schema does not allow for the field
/// (never produced: events are checked against their schema) reads as null.
#[inline]
pub(crate) fn convert(value: &Value, kind: Kind) -> TypedCell<'_> {
    match (kind, value) {
        (_, Value::Null) => TypedCell::Null,
        (Kind::Text, Value::Text(t)) => TypedCell::Text(Cow::Borrowed(t)),
        (Kind::Int, Value::Int(v)) => TypedCell::Int(*v as i32),
        (Kind::Long, Value::Int(v)) => TypedCell::Long(*v),
        (Kind::Double, Value::Float(v)) => TypedCell::Double(*v),
        (Kind::Bool, Value::Bool(v)) => TypedCell::Bool(*v),
        (Kind::Bytes, Value::Bytes(v)) => TypedCell::Bytes(v),
        (Kind::DateMillis, Value::Int(ms)) => TypedCell::Date(ms.div_euclid(DAY_MS) as i32),
        (Kind::DateDays, Value::Int(days)) => TypedCell::Date(*days as i32),
        (Kind::TimestampMillis, Value::Int(ms)) => TypedCell::Timestamp(ms * 1000),
        (Kind::TimestampMicros, Value::Int(us)) => TypedCell::Timestamp(*us),
        (Kind::TimeMillis, Value::Int(ms)) => {
            let ms = ms.rem_euclid(DAY_MS);
            TypedCell::Text(Cow::Owned(format!(
                "{:02}:{:02}:{:02}.{:03}Z",
                ms / 3_600_000,
                ms / 60_000 % 60,
                ms / 1000 % 60,
                ms % 1000
            )))
        }
        _ => TypedCell::Null,
    }
}

/// A typed table's columns and the plans of the writer schemas seen so far.
#[derive(Debug)]
pub struct TypedTable {
    columns: Vec<TypedColumn>,
    /// Column position by lower-cased name: Delta and Databricks match names ignoring case.
    index: HashMap<String, usize>,
    plans: HashMap<String, Result<Arc<Plan>, Misfit>>,
    /// Columns added by plans since the last `take_added`.
    added: Vec<TypedColumn>,
    /// Each column's name as a JSON object key (`"BillingCity":`), escaped once rather
    /// than in every JSON line.
    json_keys: Vec<Box<[u8]>>,
    /// Columns of types sfzb-host does not write (retyped by hand: DECIMAL, FLOAT,
    /// TIMESTAMP_NTZ, …), by lower-cased name, with their type: a field of that name is a
    /// misfit, never a column to add again.
    foreign: HashMap<String, String>,
}

impl Default for TypedTable {
    fn default() -> Self {
        Self::with_columns(Vec::new())
    }
}

impl TypedTable {
    /// A table that has `columns` (read back from storage); the header columns are added
    /// where missing, so a new table starts with them.
    pub fn with_columns(columns: Vec<TypedColumn>) -> TypedTable {
        let mut table = TypedTable {
            columns: Vec::new(),
            index: HashMap::new(),
            plans: HashMap::new(),
            added: Vec::new(),
            json_keys: Vec::new(),
            foreign: HashMap::new(),
        };
        for column in columns {
            table.push(column);
        }
        for (name, storage, _) in HEADER {
            if !table.index.contains_key(name) {
                table.push(TypedColumn {
                    name: name.into(),
                    storage,
                });
            }
        }
        table.added.clear();
        table
    }

    fn push(&mut self, column: TypedColumn) {
        self.index
            .insert(column.name.to_lowercase(), self.columns.len());
        let mut key = serde_json::to_vec(&*column.name).expect("a string serializes");
        key.push(b':');
        self.json_keys.push(key.into());
        self.added.push(column.clone());
        self.columns.push(column);
    }

    pub fn columns(&self) -> &[TypedColumn] {
        &self.columns
    }

    /// Appends `row`, planned against this table, to `buf` as a JSON object: the header
    /// and the fields of its writer schema by column name, dates as `2026-12-02`,
    /// timestamps as RFC 3339 in UTC, bytes as base64. Null values are left out, as they
    /// are absent from a Zerobus row: a change event's unchanged fields are null, and
    /// `nulled_fields` names the fields the change set to null.
    pub fn write_json(&self, plan: &Plan, row: &Row, buf: &mut Vec<u8>) {
        buf.push(b'{');
        let mut first = true;
        plan.cells(row, |i, cell| {
            if !first {
                buf.push(b',');
            }
            first = false;
            buf.extend_from_slice(&self.json_keys[i]);
            // Text that needs no escaping, and dates and timestamps (which never do), are
            // copied between quotes; the rest goes through serde_json.
            let mut iso = [0; 27];
            let plain = match &cell {
                TypedCell::Text(text) if !needs_json_escape(text) => Some(&**text),
                TypedCell::Date(days) => iso_text(&mut iso, i64::from(*days), None),
                TypedCell::Timestamp(us) => iso_text(
                    &mut iso,
                    us.div_euclid(86_400_000_000),
                    Some(us.rem_euclid(86_400_000_000)),
                ),
                _ => None,
            };
            let quoted = |buf: &mut Vec<u8>, text: &str| {
                buf.push(b'"');
                buf.extend_from_slice(text.as_bytes());
                buf.push(b'"');
            };
            match (plain, &cell) {
                (Some(text), _) => quoted(buf, text),
                (None, TypedCell::TextList(items))
                    if !items.iter().any(|item| needs_json_escape(item)) =>
                {
                    buf.push(b'[');
                    for (k, item) in items.iter().enumerate() {
                        if k > 0 {
                            buf.push(b',');
                        }
                        quoted(buf, item);
                    }
                    buf.push(b']');
                }
                _ => serde_json::to_writer(&mut *buf, &cell)
                    .expect("a typed cell serializes into memory"),
            }
        });
        buf.push(b'}');
    }

    /// The columns added since the last call: the stored table must get them before a row
    /// planned with them is written.
    pub fn take_added(&mut self) -> Vec<TypedColumn> {
        std::mem::take(&mut self.added)
    }

    /// The plan of `schema`'s events, adding the columns of fields the table lacks.
    pub fn plan(&mut self, schema: &EventSchema) -> Result<Arc<Plan>, Misfit> {
        if let Some(plan) = self.plans.get(&schema.id) {
            return plan.clone();
        }
        let plan = self.make_plan(schema);
        self.plans.insert(schema.id.clone(), plan.clone());
        plan
    }

    /// The table also has these columns `(name, type)`, of types sfzb-host does not write.
    pub fn with_foreign(mut self, foreign: Vec<(String, String)>) -> TypedTable {
        self.foreign = foreign
            .into_iter()
            .map(|(name, sql)| (name.to_lowercase(), sql))
            .collect();
        self
    }

    fn make_plan(&mut self, schema: &EventSchema) -> Result<Arc<Plan>, Misfit> {
        let fields = field_columns(schema)?;
        let headers: HashMap<&str, Header> = HEADER.iter().map(|(n, _, h)| (*n, *h)).collect();
        // Check every field before adding any, so a misfit schema leaves the table as it was.
        let mut new = Vec::new();
        for field in &fields {
            let storage = field.kind.storage();
            let key = field.name.to_lowercase();
            if let Some(column) = self.foreign.get(&key) {
                return Err(Misfit::ForeignColumn {
                    field: field.name.clone(),
                    schema_id: schema.id.clone(),
                    column: column.clone(),
                    wanted: storage,
                });
            }
            match self.index.get(&key) {
                Some(&i) if headers.contains_key(self.columns[i].name.as_ref()) => {
                    return Err(Misfit::Unsupported {
                        field: field.name.clone(),
                        schema_id: schema.id.clone(),
                        avro: "a name of a header column".into(),
                    });
                }
                Some(&i) if self.columns[i].storage != storage => {
                    return Err(Misfit::TypeChange {
                        field: field.name.clone(),
                        schema_id: schema.id.clone(),
                        old: self.columns[i].storage,
                        new: storage,
                    });
                }
                Some(_) => {}
                None if new
                    .iter()
                    .any(|c: &TypedColumn| c.name.to_lowercase() == key) => {}
                None => new.push(TypedColumn {
                    name: field.name.as_str().into(),
                    storage,
                }),
            }
        }
        for column in new {
            self.push(column);
        }
        let header = self
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, column)| Some((i, *headers.get(column.name.as_ref())?)))
            .collect();
        let mut renames: foldhash::HashMap<String, Vec<String>> = Default::default();
        for field in &fields {
            let Some(j) = field.child else { continue };
            let names = &schema.names;
            let parent = &names.top[field.top + 1];
            if let Some(child) = names.children[field.top + 1]
                .as_ref()
                .and_then(|c| c.get(j))
            {
                renames.insert(format!("{parent}.{child}"), vec![field.name.clone()]);
            }
            let whole = renames.entry(parent.to_string()).or_insert_with(|| {
                // A switchable field's text column is the field itself.
                fields
                    .iter()
                    .filter(|f| f.top == field.top && f.child.is_none())
                    .map(|f| f.name.clone())
                    .collect()
            });
            whole.push(field.name.clone());
        }
        let mut targets = vec![FieldTargets::default(); schema.names.top.len().saturating_sub(1)];
        // Two fields whose names differ only in case share a column: the first fills it.
        let mut taken = vec![false; self.columns.len()];
        for field in fields {
            let column = self.index[&field.name.to_lowercase()];
            if std::mem::replace(&mut taken[column], true) {
                continue;
            }
            let target = Some(Target {
                column,
                kind: field.kind,
            });
            let Some(place) = targets.get_mut(field.top) else {
                continue;
            };
            match field.child {
                None => place.value = target,
                Some(j) => {
                    if place.children.len() <= j {
                        place.children.resize(j + 1, None);
                    }
                    place.children[j] = target;
                }
            }
        }
        Ok(Arc::new(Plan {
            header,
            fields: targets,
            renames,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::catalog::Entity;

    #[test]
    fn compound_fields_flatten_into_their_api_names() {
        assert_eq!(
            child_name("BillingAddress", "Address", "City"),
            "BillingCity"
        );
        assert_eq!(child_name("Address", "Address", "Street"), "Street");
        assert_eq!(
            child_name("Name", "Switchable_PersonName", "FirstName"),
            "FirstName"
        );
        assert_eq!(
            child_name("Some_Geolocation__c", "Location", "Latitude"),
            "Some_Geolocation__Latitude__s"
        );
        let entity = Entity::load("Account").unwrap().unwrap();
        let columns = field_columns(&entity.schema).unwrap();
        let find = |n: &str| columns.iter().find(|c| c.name == n).cloned();
        assert_eq!(find("BillingCity").unwrap().kind, Kind::Text);
        assert_eq!(find("BillingLatitude").unwrap().kind, Kind::Double);
        assert_eq!(find("CreatedDate").unwrap().kind, Kind::TimestampMillis);
        assert_eq!(find("PersonBirthdate").unwrap().kind, Kind::DateMillis);
        assert_eq!(find("NumberOfEmployees").unwrap().kind, Kind::Int);
        // Account's Name is text or a person's name: both have columns.
        assert_eq!(find("Name").unwrap().kind, Kind::Text);
        assert!(find("FirstName").is_some());
        assert!(
            find("BillingAddress").is_none(),
            "a compound field is its children"
        );
    }

    #[test]
    fn a_wider_schema_adds_its_columns_once_and_a_type_change_is_a_misfit() {
        let entity = Entity::load("Account").unwrap().unwrap();
        let mut table = TypedTable::default();
        assert_eq!(table.take_added(), Vec::new(), "a new table has the header");
        let old = table.plan(&entity.schema).unwrap();
        let first = table.take_added();
        assert!(first.iter().any(|c| &*c.name == "BillingCity"));
        table.plan(&entity.changed_schema).unwrap();
        let added = table.take_added();
        assert_eq!(
            added.iter().map(|c| &*c.name).collect::<Vec<_>>(),
            [crate::sim::catalog::ADDED_FIELD]
        );
        table.plan(&entity.schema).unwrap();
        assert!(table.take_added().is_empty());
        let filled_by_old = old
            .fields
            .iter()
            .flat_map(|f| f.value.iter().chain(f.children.iter().flatten()))
            .map(|t| t.column)
            .max()
            .unwrap();
        assert!(
            filled_by_old < table.columns().len() - 1,
            "the old schema's plan leaves the added column out"
        );

        let mut narrow = TypedTable::with_columns(vec![TypedColumn {
            name: "billingcity".into(),
            storage: Storage::Long,
        }]);
        let err = narrow.plan(&entity.schema).unwrap_err();
        assert!(
            matches!(err, Misfit::TypeChange { ref field, .. } if field == "BillingCity"),
            "{err}"
        );
        assert_eq!(
            narrow.columns().len(),
            1 + HEADER.len(),
            "a misfit adds nothing"
        );
    }

    /// The simulator's Account event number `seq`, decoded (org `00Dorg`, replay id `002a`).
    fn account_event(entity: &Entity, seq: u64) -> crate::event::ChangeEvent {
        use crate::salesforce::schema::{EventMeta, decode_event};
        use crate::sim::generator::{Position, generate};
        let generated = generate(
            entity,
            &entity.schema,
            7,
            Position { index: seq, seq },
            false,
        );
        let meta = EventMeta {
            org_id: "00Dorg".into(),
            channel: "/data/AccountChangeEvent".into(),
            replay_id: crate::event::ReplayId::new(bytes::Bytes::from_static(&[0, 42])),
            event_id: generated.event_id.clone(),
        };
        decode_event(&entity.schema, meta, generated.payload).unwrap()
    }

    #[test]
    fn a_json_line_has_the_header_and_the_fields_that_have_values() {
        let entity = Entity::load("Account").unwrap().unwrap();
        let mut table = TypedTable::default();
        let mut checked_date = false;
        for seq in 0..40 {
            let event = account_event(&entity, seq);
            let row = Row::with_layout(event, 1_700_000_000_123, Layout::Typed);
            let plan = table.plan(&row.event.schema).unwrap();
            let mut line = Vec::new();
            table.write_json(&plan, &row, &mut line);
            let json: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&line).unwrap();
            let e = &row.event;
            assert_eq!(json["change_type"], e.header.change_type.as_str());
            assert_eq!(json["replay_id"], "002a");
            assert_eq!(json["org_id"], "00Dorg");
            assert_eq!(json["processed_timestamp"], "2023-11-14T22:13:20.123Z");
            for changed in &e.header.changed_fields {
                let columns = plan
                    .renames
                    .get(*changed)
                    .cloned()
                    .unwrap_or_else(|| vec![changed.to_string()]);
                for column in columns {
                    assert!(
                        json["changed_fields"]
                            .as_array()
                            .unwrap()
                            .contains(&column.as_str().into()),
                        "{changed} is listed by its column {column}"
                    );
                }
            }
            let names = &e.schema.names.top[1..];
            for (name, value) in names.iter().zip(e.fields.dense(names.len())) {
                let column = name;
                match value {
                    Value::Null => {
                        assert!(!json.contains_key(&**column), "{column} is null: left out")
                    }
                    Value::Text(t) => assert_eq!(json[&**column], t.as_str(), "{column}"),
                    Value::Bool(b) => assert_eq!(json[&**column], *b, "{column}"),
                    Value::Int(ms) if &**column == "CreatedDate" => {
                        let expected = chrono::DateTime::from_timestamp_millis(*ms).unwrap();
                        let text = json[&**column].as_str().unwrap();
                        assert_eq!(
                            chrono::DateTime::parse_from_rfc3339(text).unwrap(),
                            expected
                        );
                        checked_date = true;
                    }
                    // A compound field is its children's columns.
                    Value::Record(_) => assert!(!json.contains_key(&**column)),
                    _ => assert!(json.contains_key(&**column), "{column} has a value"),
                }
            }
        }
        assert!(checked_date, "some event has a CreatedDate");
    }

    #[test]
    fn text_that_needs_escaping_reads_back_as_it_was() {
        let entity = Entity::load("Account").unwrap().unwrap();
        let mut event = account_event(&entity, 0);
        let texts = [
            "plain",
            "a \"quote\"",
            "back\\slash",
            "line\nbreak\ttab\u{1}",
            "Zoë – 東京 🚀",
            "a string longer than thirty-two bytes, with a \" at its end: \"",
            "",
        ];
        let names = event.schema.names.top[1..].to_vec();
        let mut set = Vec::new();
        for (at, name) in names.iter().enumerate() {
            let text = |p: &crate::salesforce::avro::Plan| {
                matches!(p, crate::salesforce::avro::Plan::String)
            };
            let is_text = match &event.schema.plans[at + 1].1 {
                crate::salesforce::avro::Plan::Union(branches) => branches.iter().any(text),
                plan => text(plan),
            };
            if is_text && set.len() < texts.len() {
                event.fields.set(at, Value::Text(texts[set.len()].into()));
                set.push((*name, texts[set.len()]));
            }
        }
        assert_eq!(set.len(), texts.len(), "Account has enough text fields");
        let row = Row::with_layout(event, 1_700_000_000_123, Layout::Typed);
        let mut table = TypedTable::default();
        let plan = table.plan(&row.event.schema).unwrap();
        let mut line = Vec::new();
        table.write_json(&plan, &row, &mut line);
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&line).unwrap();
        for (column, text) in set {
            assert_eq!(json[column], text, "{column}");
        }
    }

    #[test]
    fn dates_and_timestamps_read_as_chrono_writes_them() {
        let json = |cell: TypedCell<'_>| serde_json::to_value(cell).unwrap();
        for days in [-719_528, -1, 0, 1, 19_000, 20_424, 2_932_896, 2_932_897] {
            let expected = chrono::DateTime::from_timestamp(days * 86_400, 0)
                .unwrap()
                .date_naive()
                .to_string();
            assert_eq!(json(TypedCell::Date(days as i32)), expected, "day {days}");
        }
        let day = 86_400_000_000i64;
        for us in [
            0,
            1,
            999,
            1_000,
            123_456,
            1_500_000,
            day - 1,
            day * 20_424 + 37_800_123_000,
            -1,
            -day - 1_000,
            -day * 719_528,
            day * 2_932_896 + 1,
            day * 2_932_897,
        ] {
            let expected = chrono::DateTime::from_timestamp_micros(us)
                .unwrap()
                .naive_utc()
                .format("%Y-%m-%dT%H:%M:%S%.fZ")
                .to_string();
            assert_eq!(json(TypedCell::Timestamp(us)), expected, "{us} µs");
        }
    }

    #[test]
    fn values_take_their_column_form() {
        assert_eq!(
            convert(&Value::Int(86_400_000 * 3 + 5), Kind::DateMillis),
            TypedCell::Date(3)
        );
        assert_eq!(
            convert(&Value::Int(-1), Kind::DateMillis),
            TypedCell::Date(-1)
        );
        assert_eq!(
            convert(&Value::Int(1500), Kind::TimestampMillis),
            TypedCell::Timestamp(1_500_000)
        );
        assert_eq!(
            convert(
                &Value::Int(13 * 3_600_000 + 30 * 60_000 + 5_007),
                Kind::TimeMillis
            ),
            TypedCell::Text(Cow::Owned("13:30:05.007Z".into()))
        );
        assert_eq!(convert(&Value::Null, Kind::Long), TypedCell::Null);
    }
}
