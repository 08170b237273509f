//! The host half of the WIT contract (`wit/transform.wit`): the `host` interface (logging,
//! rate-limited; keyed hashing; the transform's own metrics) and the `types` interface (the
//! event resource: read, set, type, copy, drop), with every host-side bound a guest could
//! push against. WASI is linked with nothing granted (see [`super::engine`]).

use apache_avro::Schema;
use wasmtime::component::Resource;
use wasmtime_wasi::{WasiCtxView, WasiView};

use super::engine::State;
use super::engine::sfzb;
use crate::event::{self, ChangeEvent, EventSchema, FieldPath};
use crate::salesforce::schema::record_of;
use crate::transform::metrics::GuestMetrics;
use sfzb::transform::host::Level;
use sfzb::transform::types::{
    ChangeType as WitChangeType, FieldType, Header, Value as WitValue, ValueKind,
};

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Longest log line a guest may write.
pub(super) const MAX_LOG_BYTES: usize = 1024;
/// Fields of one `log-with` line, and the longest value of one.
const MAX_LOG_FIELDS: usize = 16;
const MAX_LOG_FIELD_BYTES: usize = 256;

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push('…');
    }
}

fn tracing_level(level: Level) -> tracing::Level {
    match level {
        Level::Debug => tracing::Level::DEBUG,
        Level::Info => tracing::Level::INFO,
        Level::Warn => tracing::Level::WARN,
        Level::Error => tracing::Level::ERROR,
    }
}

impl super::engine::Shared {
    /// One guest log line (from `host.log` or its stdout and stderr), under the
    /// transform's line budget; `fields` already rendered.
    pub(super) fn log(&self, level: Level, mut message: String, fields: Option<String>) {
        let (admitted, held_back, per_sec) = {
            let mut budget = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let (admitted, held_back) = budget.admit();
            (admitted, held_back, budget.per_sec())
        };
        if let Some(n) = held_back {
            let transform = &*self.name;
            tracing::warn!(
                transform,
                suppressed = n,
                "Transform {transform}: {n} log lines held back in the last second (max-log-lines-per-sec = {per_sec})."
            );
        }
        if !admitted {
            return;
        }
        cut(&mut message, MAX_LOG_BYTES);
        let transform = &*self.name;
        // tracing's levels are static per call site, hence one line per level.
        match (level, fields) {
            (Level::Debug, None) => tracing::debug!(transform, "{message}"),
            (Level::Info, None) => tracing::info!(transform, "{message}"),
            (Level::Warn, None) => tracing::warn!(transform, "{message}"),
            (Level::Error, None) => tracing::error!(transform, "{message}"),
            (Level::Debug, Some(fields)) => tracing::debug!(transform, fields, "{message}"),
            (Level::Info, Some(fields)) => tracing::info!(transform, fields, "{message}"),
            (Level::Warn, Some(fields)) => tracing::warn!(transform, fields, "{message}"),
            (Level::Error, Some(fields)) => tracing::error!(transform, fields, "{message}"),
        }
    }
}

impl State {
    /// Counts `size` bytes a guest puts into event `rep` (`set`, `hash-field`) against
    /// `max-added-bytes` and its memory limit.
    fn add_bytes(&mut self, rep: u32, size: usize) -> wasmtime::Result<()> {
        self.added_bytes += size;
        if self.added_bytes > self.limits.max_added_bytes {
            let message = format!(
                "exceeded max-added-bytes: its set values on one event passed {} bytes",
                self.limits.max_added_bytes
            );
            return Err(self.exceeded(message));
        }
        self.hold(rep, size)
    }

    /// Updates the transform's metrics; a refused one is said once per transform.
    fn record_metric(
        &self,
        update: impl FnOnce(&mut GuestMetrics) -> Result<(), crate::transform::metrics::Refused>,
    ) {
        let mut metrics = self
            .shared
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Err(refused) = update(&mut metrics) else {
            return;
        };
        if metrics.first_refusal() {
            drop(metrics);
            let transform = &*self.shared.name;
            tracing::warn!(
                transform,
                "Transform {transform}: {refused}; ignored (said once)."
            );
        }
    }
}

impl sfzb::transform::host::Host for State {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.shared.log(level, message, None);
        Ok(())
    }

    fn log_with(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        if !<Self as sfzb::transform::host::Host>::log_enabled(self, level)? {
            return Ok(());
        }
        // logfmt: `key=value`, quoted when the value has spaces, quotes or `=`.
        let mut rendered = String::new();
        for (mut key, mut value) in fields.into_iter().take(MAX_LOG_FIELDS) {
            cut(&mut key, 64);
            cut(&mut value, MAX_LOG_FIELD_BYTES);
            if !rendered.is_empty() {
                rendered.push(' ');
            }
            rendered.push_str(&key);
            rendered.push('=');
            if value.is_empty() || value.contains([' ', '"', '=']) {
                rendered.push_str(&format!("{value:?}"));
            } else {
                rendered.push_str(&value);
            }
        }
        self.shared.log(level, message, Some(rendered));
        Ok(())
    }

    fn log_enabled(&mut self, level: Level) -> wasmtime::Result<bool> {
        Ok(match tracing_level(level) {
            tracing::Level::DEBUG => tracing::enabled!(tracing::Level::DEBUG),
            tracing::Level::INFO => tracing::enabled!(tracing::Level::INFO),
            tracing::Level::WARN => tracing::enabled!(tracing::Level::WARN),
            _ => tracing::enabled!(tracing::Level::ERROR),
        })
    }

    fn hmac_sha256(
        &mut self,
        key_name: String,
        data: String,
    ) -> wasmtime::Result<Result<String, String>> {
        Ok(self.shared.keys.hmac_sha256_hex(&key_name, data.as_bytes()))
    }

    fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        self.record_metric(|m| m.add(&name, delta));
        Ok(())
    }

    fn gauge_set(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
        self.record_metric(|m| m.set(&name, value));
        Ok(())
    }
}

/// The `value` case a field's (non-null) values take in an Avro type.
fn value_kind(schema: &Schema) -> ValueKind {
    match schema {
        Schema::Boolean => ValueKind::Boolean,
        Schema::Int
        | Schema::Long
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros => ValueKind::Integer,
        Schema::Float | Schema::Double => ValueKind::Float,
        Schema::Bytes | Schema::Fixed(_) => ValueKind::Bytes,
        Schema::Record(_) | Schema::Ref { .. } => ValueKind::Compound,
        _ => ValueKind::Text,
    }
}

/// A data field's type from the writer schema: the Avro type of its non-null branch (text
/// for a switchable field such as Account's `Name`) and the Salesforce type in its `doc`.
fn field_type(schema: &EventSchema, name: &str) -> Option<FieldType> {
    let Schema::Record(root) = &schema.avro else {
        return None;
    };
    let branches = |s: &'_ Schema| -> Vec<Schema> {
        match s {
            Schema::Union(u) => u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Schema::Null))
                .cloned()
                .collect(),
            other => vec![other.clone()],
        }
    };
    let (ty, doc) = match schema.names.resolve(name)? {
        FieldPath::Top(i) => {
            let field = root.fields.get(i + 1)?;
            let branches = branches(&field.schema);
            let kinds: Vec<ValueKind> = branches.iter().map(value_kind).collect();
            let kind = if kinds.contains(&ValueKind::Text) {
                ValueKind::Text
            } else {
                *kinds.first()?
            };
            (kind, field.doc.clone())
        }
        FieldPath::Child(i, j) => {
            let field = root.fields.get(i + 1)?;
            let child = branches(&field.schema)
                .iter()
                .find_map(|b| record_of(b, &schema.avro).and_then(|r| r.fields.get(j).cloned()))?;
            let kind = branches(&child.schema)
                .first()
                .map_or(ValueKind::Text, value_kind);
            (kind, child.doc.clone())
        }
    };
    Some(FieldType {
        kind: ty,
        salesforce_type: crate::sink::typed::salesforce_type(doc.as_deref()).to_string(),
    })
}

impl sfzb::transform::types::Host for State {}

fn to_wit(value: event::Value) -> WitValue {
    match value {
        event::Value::Null | event::Value::Record(_) => WitValue::Null,
        event::Value::Bool(b) => WitValue::Boolean(b),
        event::Value::Int(i) => WitValue::Integer(i),
        event::Value::Float(f) => WitValue::Float(f),
        event::Value::Text(t) => WitValue::Text(t.into()),
        event::Value::Bytes(b) => WitValue::Bytes(b),
    }
}

fn from_wit(value: WitValue) -> event::Value {
    match value {
        WitValue::Null => event::Value::Null,
        WitValue::Boolean(b) => event::Value::Bool(b),
        WitValue::Integer(i) => event::Value::Int(i),
        WitValue::Float(f) => event::Value::Float(f),
        WitValue::Text(t) => event::Value::Text(t.into()),
        WitValue::Bytes(b) => event::Value::Bytes(b),
    }
}

fn change_type(t: event::ChangeType) -> WitChangeType {
    match t {
        event::ChangeType::Create | event::ChangeType::Snapshot => WitChangeType::Create,
        event::ChangeType::Update => WitChangeType::Update,
        event::ChangeType::Delete => WitChangeType::Delete,
        event::ChangeType::Undelete => WitChangeType::Undelete,
        event::ChangeType::GapCreate => WitChangeType::GapCreate,
        event::ChangeType::GapUpdate => WitChangeType::GapUpdate,
        event::ChangeType::GapDelete => WitChangeType::GapDelete,
        event::ChangeType::GapUndelete => WitChangeType::GapUndelete,
        event::ChangeType::GapOverflow => WitChangeType::GapOverflow,
    }
}

impl sfzb::transform::types::HostEvent for State {
    fn org_id(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.org_id.to_string())
    }

    fn channel(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.channel.to_string())
    }

    fn event_id(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.event_id.clone())
    }

    fn replay_id(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.replay_id.to_hex())
    }

    fn schema_id(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.schema.id.clone())
    }

    fn entity_name(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.header.entity_name.clone())
    }

    fn change_type(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<WitChangeType> {
        Ok(change_type(self.table.get(&this)?.header.change_type))
    }

    fn header(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<Header> {
        let h = &self.table.get(&this)?.header;
        Ok(Header {
            entity_name: h.entity_name.clone(),
            change_type: change_type(h.change_type),
            record_ids: h.record_ids.clone(),
            changed_fields: h.changed_fields.iter().map(|n| n.to_string()).collect(),
            nulled_fields: h.nulled_fields.iter().map(|n| n.to_string()).collect(),
            diff_fields: h.diff_fields.iter().map(|n| n.to_string()).collect(),
            commit_timestamp: h.commit_timestamp,
            commit_number: h.commit_number,
            commit_user: h.commit_user.clone(),
            change_origin: h.change_origin.clone(),
            transaction_key: h.transaction_key.clone(),
            sequence_number: h.sequence_number,
        })
    }

    fn get(
        &mut self,
        this: Resource<ChangeEvent>,
        name: String,
    ) -> wasmtime::Result<Option<WitValue>> {
        Ok(self.table.get(&this)?.get(&name).map(to_wit))
    }

    fn set(
        &mut self,
        this: Resource<ChangeEvent>,
        name: String,
        value: WitValue,
    ) -> wasmtime::Result<Result<(), String>> {
        let size = match &value {
            WitValue::Text(t) => t.len(),
            WitValue::Bytes(b) => b.len(),
            _ => 8,
        };
        self.add_bytes(this.rep(), size)?;
        let by = self.shared.name.clone();
        let event = self.table.get_mut(&this)?;
        Ok(if event.set(&name, from_wit(value), &by) {
            Ok(())
        } else {
            Err(format!("{} has no field {name}", event.header.entity_name))
        })
    }

    fn remove(&mut self, this: Resource<ChangeEvent>, name: String) -> wasmtime::Result<bool> {
        let by = self.shared.name.clone();
        Ok(self
            .table
            .get_mut(&this)?
            .set(&name, event::Value::Null, &by))
    }

    fn field_names(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.schema.names.data_field_names())
    }

    fn hash_field(
        &mut self,
        this: Resource<ChangeEvent>,
        name: String,
        key_name: String,
    ) -> wasmtime::Result<Result<bool, String>> {
        let event = self.table.get(&this)?;
        let text = match event.get(&name) {
            None if event.schema.names.resolve(&name).is_none() => {
                return Ok(Err(format!(
                    "{} has no field {name}",
                    event.header.entity_name
                )));
            }
            Some(event::Value::Text(text)) => text,
            _ => return Ok(Ok(false)),
        };
        let hashed = match self.shared.keys.hmac_sha256_hex(&key_name, text.as_bytes()) {
            Ok(hashed) => hashed,
            Err(message) => return Ok(Err(message)),
        };
        self.add_bytes(this.rep(), hashed.len())?;
        let by = self.shared.name.clone();
        self.table
            .get_mut(&this)?
            .set(&name, event::Value::Text(hashed.into()), &by);
        Ok(Ok(true))
    }

    fn field_type(
        &mut self,
        this: Resource<ChangeEvent>,
        name: String,
    ) -> wasmtime::Result<Option<FieldType>> {
        Ok(field_type(&self.table.get(&this)?.schema, &name))
    }

    fn duplicate(
        &mut self,
        this: Resource<ChangeEvent>,
    ) -> wasmtime::Result<Resource<ChangeEvent>> {
        if self.held.len() >= self.limits.max_outputs {
            let message = format!(
                "exceeded max-outputs: more than {} outputs of one event",
                self.limits.max_outputs
            );
            return Err(self.exceeded(message));
        }
        let copy = self.table.get(&this)?.clone();
        let bytes = self.held.get(&this.rep()).copied().unwrap_or_default();
        let handle = self.table.push(copy)?;
        self.hold(handle.rep(), bytes)?;
        Ok(handle)
    }

    fn drop(&mut self, rep: Resource<ChangeEvent>) -> wasmtime::Result<()> {
        let handle = rep.rep();
        self.table.delete(rep)?;
        self.release(handle);
        Ok(())
    }
}
