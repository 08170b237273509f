//! The component side: the WIT bindings, and the SDK's types to and from theirs.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "__export_wit",
    });
}

use bindings::sfzb::transform::{host, types as wit};
pub use bindings::Guest;
pub type WitEvent = bindings::Event;
pub type WitOutput = bindings::Output;

use crate::{ChangeType, FieldType, Header, Level, Transform, Value, ValueKind};

pub struct Event(WitEvent);

impl Event {
    pub fn org_id(&self) -> String {
        self.0.org_id()
    }
    pub fn channel(&self) -> String {
        self.0.channel()
    }
    pub fn event_id(&self) -> String {
        self.0.event_id()
    }
    pub fn replay_id(&self) -> String {
        self.0.replay_id()
    }
    pub fn schema_id(&self) -> String {
        self.0.schema_id()
    }
    pub fn entity_name(&self) -> String {
        self.0.entity_name()
    }
    pub fn change_type(&self) -> ChangeType {
        change_type(self.0.change_type())
    }
    pub fn header(&self) -> Header {
        let h = self.0.header();
        Header {
            entity_name: h.entity_name,
            change_type: change_type(h.change_type),
            record_ids: h.record_ids,
            changed_fields: h.changed_fields,
            nulled_fields: h.nulled_fields,
            diff_fields: h.diff_fields,
            commit_timestamp: h.commit_timestamp,
            commit_number: h.commit_number,
            commit_user: h.commit_user,
            change_origin: h.change_origin,
            transaction_key: h.transaction_key,
            sequence_number: h.sequence_number,
        }
    }
    pub fn get(&self, name: &str) -> Option<Value> {
        self.0.get(name).map(|v| match v {
            wit::Value::Null => Value::Null,
            wit::Value::Boolean(b) => Value::Boolean(b),
            wit::Value::Integer(i) => Value::Integer(i),
            wit::Value::Float(f) => Value::Float(f),
            wit::Value::Text(t) => Value::Text(t),
            wit::Value::Bytes(b) => Value::Bytes(b),
        })
    }
    pub fn set(&self, name: &str, value: Value) -> Result<(), String> {
        let value = match value {
            Value::Null => wit::Value::Null,
            Value::Boolean(b) => wit::Value::Boolean(b),
            Value::Integer(i) => wit::Value::Integer(i),
            Value::Float(f) => wit::Value::Float(f),
            Value::Text(t) => wit::Value::Text(t),
            Value::Bytes(b) => wit::Value::Bytes(b),
        };
        self.0.set(name, &value)
    }
    pub fn remove(&self, name: &str) -> bool {
        self.0.remove(name)
    }
    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        self.0.field_type(name).map(|t| FieldType {
            kind: match t.kind {
                wit::ValueKind::Boolean => ValueKind::Boolean,
                wit::ValueKind::Integer => ValueKind::Integer,
                wit::ValueKind::Float => ValueKind::Float,
                wit::ValueKind::Text => ValueKind::Text,
                wit::ValueKind::Bytes => ValueKind::Bytes,
                wit::ValueKind::Compound => ValueKind::Compound,
            },
            salesforce_type: t.salesforce_type,
        })
    }
    pub fn hash_field(&self, name: &str, key_name: &str) -> Result<bool, String> {
        self.0.hash_field(name, key_name)
    }
    pub fn field_names(&self) -> Vec<String> {
        self.0.field_names()
    }
    pub fn duplicate(&self) -> Event {
        Event(self.0.duplicate())
    }
}

fn change_type(t: wit::ChangeType) -> ChangeType {
    match t {
        wit::ChangeType::Create => ChangeType::Create,
        wit::ChangeType::Update => ChangeType::Update,
        wit::ChangeType::Delete => ChangeType::Delete,
        wit::ChangeType::Undelete => ChangeType::Undelete,
        wit::ChangeType::GapCreate => ChangeType::GapCreate,
        wit::ChangeType::GapUpdate => ChangeType::GapUpdate,
        wit::ChangeType::GapDelete => ChangeType::GapDelete,
        wit::ChangeType::GapUndelete => ChangeType::GapUndelete,
        wit::ChangeType::GapOverflow => ChangeType::GapOverflow,
    }
}

fn level(level: Level) -> host::Level {
    match level {
        Level::Debug => host::Level::Debug,
        Level::Info => host::Level::Info,
        Level::Warn => host::Level::Warn,
        Level::Error => host::Level::Error,
    }
}

pub fn log(at: Level, message: &str, fields: &[(&str, &str)]) {
    match fields.is_empty() {
        true => host::log(level(at), message),
        false => {
            let fields: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            host::log_with(level(at), message, &fields)
        }
    }
}

pub fn log_enabled(at: Level) -> bool {
    host::log_enabled(level(at))
}

pub fn hmac_sha256(key_name: &str, data: &str) -> Result<String, String> {
    host::hmac_sha256(key_name, data)
}

pub fn counter_add(name: &str, delta: u64) {
    host::counter_add(name, delta)
}

pub fn gauge_set(name: &str, value: f64) {
    host::gauge_set(name, value)
}

/// `t` on the host's `event`, its outcome as the host's outputs.
pub fn process<T: Transform>(t: &mut T, event: WitEvent) -> Result<Vec<WitOutput>, String> {
    let event = crate::Event(Event(event));
    let outcome = t.process(&event)?;
    Ok(crate::__outputs(event, outcome)
        .into_iter()
        .map(|(event, table)| WitOutput {
            event: event.0.0,
            table,
        })
        .collect())
}
