//! A stub host for native tests: events made field by field, the transform run on them as
//! the host would (outputs with their tables), keys for `hash_field` and `hmac_sha256`, and
//! the log lines, counters and gauges it made. State is per thread, as `cargo test` runs
//! each test on its own.
//!
//! ```
//! use sfzb_transform::testing::{self, event};
//! use sfzb_transform::{ChangeType, Config, Event, Outcome, Transform, Value};
//!
//! struct Pseudonymise;
//! impl Transform for Pseudonymise {
//!     fn init(_: &Config) -> Result<Self, String> { Ok(Pseudonymise) }
//!     fn process(&mut self, event: &Event) -> Result<Outcome, String> {
//!         event.hash_field("Email", "pii")?;
//!         Ok(Outcome::Keep)
//!     }
//! }
//!
//! testing::set_key("pii", "secret");
//! let input = event("Contact", ChangeType::Update).field("Email", Value::Text("a@b.c".into())).build();
//! let outputs = testing::run::<Pseudonymise>(&[], input).unwrap();
//! let (table, out) = &outputs[0];
//! assert_eq!(*table, None);
//! assert_eq!(out.get("Email"), Some(Value::Text(testing::hmac("secret", "a@b.c"))));
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use hmac::Mac;

use crate::{ChangeType, Config, FieldType, Header, Level, Transform, Value, ValueKind};

/// An event of the stub host.
#[derive(Clone)]
pub struct Event(Rc<RefCell<Data>>);

#[derive(Clone)]
struct Data {
    ids: [String; 5],
    header: Header,
    /// In schema order, with each field's type.
    fields: Vec<(String, Value, Option<FieldType>)>,
}

/// Builds an event of the stub host: `event("Account", ChangeType::Update).field(…).build()`.
pub fn event(entity: &str, change_type: ChangeType) -> EventBuilder {
    EventBuilder(Data {
        ids: [
            "00DSTUB000000000000".into(),
            format!("/data/{entity}ChangeEvent"),
            "stub-event".into(),
            "0000000000000001".into(),
            "stub-schema".into(),
        ],
        header: Header {
            entity_name: entity.to_string(),
            change_type,
            record_ids: vec!["001STUB00000000000".into()],
            changed_fields: Vec::new(),
            nulled_fields: Vec::new(),
            diff_fields: Vec::new(),
            commit_timestamp: 0,
            commit_number: 0,
            commit_user: "005STUB00000000000".into(),
            change_origin: String::new(),
            transaction_key: String::new(),
            sequence_number: 1,
        },
        fields: Vec::new(),
    })
}

pub struct EventBuilder(Data);

impl EventBuilder {
    /// A field of the event's schema and its value, its kind taken from the value.
    pub fn field(self, name: &str, value: Value) -> EventBuilder {
        let kind = match &value {
            Value::Boolean(_) => Some(ValueKind::Boolean),
            Value::Integer(_) => Some(ValueKind::Integer),
            Value::Float(_) => Some(ValueKind::Float),
            Value::Text(_) => Some(ValueKind::Text),
            Value::Bytes(_) => Some(ValueKind::Bytes),
            Value::Null => None,
        };
        let field_type = kind.map(|kind| FieldType {
            kind,
            salesforce_type: String::new(),
        });
        self.typed_field(name, value, field_type)
    }

    /// A field with its type given: `FieldType { kind: ValueKind::Text, salesforce_type:
    /// "email".into() }`.
    pub fn typed_field(
        mut self,
        name: &str,
        value: Value,
        field_type: Option<FieldType>,
    ) -> EventBuilder {
        if value != Value::Null {
            self.0.header.changed_fields.push(name.to_string());
        }
        self.0.fields.push((name.to_string(), value, field_type));
        self
    }

    pub fn replay_id(mut self, hex: &str) -> EventBuilder {
        self.0.ids[3] = hex.to_string();
        self
    }

    pub fn org_id(mut self, id: &str) -> EventBuilder {
        self.0.ids[0] = id.to_string();
        self
    }

    pub fn record_ids(mut self, ids: &[&str]) -> EventBuilder {
        self.0.header.record_ids = ids.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn build(self) -> crate::Event {
        crate::Event(Event(Rc::new(RefCell::new(self.0))))
    }
}

impl Event {
    fn with<R>(&self, f: impl FnOnce(&Data) -> R) -> R {
        f(&self.0.borrow())
    }
    pub fn org_id(&self) -> String {
        self.with(|d| d.ids[0].clone())
    }
    pub fn channel(&self) -> String {
        self.with(|d| d.ids[1].clone())
    }
    pub fn event_id(&self) -> String {
        self.with(|d| d.ids[2].clone())
    }
    pub fn replay_id(&self) -> String {
        self.with(|d| d.ids[3].clone())
    }
    pub fn schema_id(&self) -> String {
        self.with(|d| d.ids[4].clone())
    }
    pub fn entity_name(&self) -> String {
        self.with(|d| d.header.entity_name.clone())
    }
    pub fn change_type(&self) -> ChangeType {
        self.with(|d| d.header.change_type)
    }
    pub fn header(&self) -> Header {
        self.with(|d| d.header.clone())
    }
    pub fn get(&self, name: &str) -> Option<Value> {
        self.with(|d| d.fields.iter().find(|f| f.0 == name).map(|f| f.1.clone()))
    }
    pub fn set(&self, name: &str, value: Value) -> Result<(), String> {
        let mut d = self.0.borrow_mut();
        let entity = d.header.entity_name.clone();
        let Some(field) = d.fields.iter_mut().find(|f| f.0 == name) else {
            return Err(format!("{entity} has no field {name}"));
        };
        let nulled = value == Value::Null;
        field.1 = value;
        let nulled_fields = &mut d.header.nulled_fields;
        match (nulled, nulled_fields.iter().position(|n| n == name)) {
            (true, None) => nulled_fields.push(name.to_string()),
            (false, Some(i)) => {
                nulled_fields.remove(i);
            }
            _ => {}
        }
        Ok(())
    }
    pub fn remove(&self, name: &str) -> bool {
        self.set(name, Value::Null).is_ok()
    }
    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        self.with(|d| d.fields.iter().find(|f| f.0 == name).and_then(|f| f.2.clone()))
    }
    /// What the host's re-encoding refuses: a field set to a value of another kind.
    fn misfit(&self) -> Option<String> {
        self.with(|d| {
            d.fields.iter().find_map(|(name, value, field_type)| {
                let kind = field_type.as_ref()?.kind;
                let fits = match value {
                    Value::Null => true,
                    Value::Boolean(_) => kind == ValueKind::Boolean,
                    Value::Integer(_) => kind == ValueKind::Integer,
                    Value::Float(_) => matches!(kind, ValueKind::Float | ValueKind::Integer),
                    Value::Text(_) => kind == ValueKind::Text,
                    Value::Bytes(_) => kind == ValueKind::Bytes,
                };
                (!fits).then(|| format!("{value:?} does not fit {name}, a {kind:?} field"))
            })
        })
    }
    pub fn hash_field(&self, name: &str, key_name: &str) -> Result<bool, String> {
        let text = match self.get(name) {
            None => return Err(format!("{} has no field {name}", self.entity_name())),
            Some(Value::Text(text)) => text,
            Some(_) => return Ok(false),
        };
        self.set(name, Value::Text(hmac_sha256(key_name, &text)?))?;
        Ok(true)
    }
    pub fn field_names(&self) -> Vec<String> {
        self.with(|d| d.fields.iter().map(|f| f.0.clone()).collect())
    }
    pub fn duplicate(&self) -> Event {
        Event(Rc::new(RefCell::new(self.0.borrow().clone())))
    }
}

/// A log line the transform wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Default)]
struct Host {
    keys: BTreeMap<String, Vec<u8>>,
    lines: Vec<Line>,
    counters: BTreeMap<String, u64>,
    gauges: BTreeMap<String, f64>,
    level: Option<Level>,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

/// Gives the transform a key named `name`, as `keys = { NAME = … }` does.
pub fn set_key(name: &str, key: &str) {
    HOST.with(|h| h.borrow_mut().keys.insert(name.to_string(), key.as_bytes().to_vec()));
}

/// The lowest level `log_enabled` says yes to (default: Info, as the host's default log).
pub fn set_log_level(level: Level) {
    HOST.with(|h| h.borrow_mut().level = Some(level));
}

/// The log lines written so far on this thread.
pub fn lines() -> Vec<Line> {
    HOST.with(|h| h.borrow().lines.clone())
}

pub fn counter(name: &str) -> u64 {
    HOST.with(|h| h.borrow().counters.get(name).copied().unwrap_or(0))
}

pub fn gauge(name: &str) -> Option<f64> {
    HOST.with(|h| h.borrow().gauges.get(name).copied())
}

/// HMAC-SHA256 of `data` under `key`, hex: what `hash_field` writes.
pub fn hmac(key: &str, data: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `T` made from `config`, then run on `event`: the events it outputs with their tables
/// (`None`: the subscription's own), or why the host would dead-letter the event (its
/// error, or an output with a field set to a value of another kind).
pub fn run<T: Transform>(
    config: &[(&str, &str)],
    event: crate::Event,
) -> Result<Vec<(Option<String>, crate::Event)>, String> {
    let config = Config::new(config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let mut transform = T::init(&config)?;
    let outcome = transform.process(&event)?;
    let outputs: Vec<_> = crate::__outputs(event, outcome)
        .into_iter()
        .map(|(event, table)| (table, event))
        .collect();
    match outputs.iter().find_map(|(_, event)| event.0.misfit()) {
        Some(misfit) => Err(misfit),
        None => Ok(outputs),
    }
}

pub(crate) fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let line = Line {
        level,
        message: message.to_string(),
        fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    HOST.with(|h| h.borrow_mut().lines.push(line));
}

pub(crate) fn log_enabled(level: Level) -> bool {
    HOST.with(|h| level >= h.borrow().level.unwrap_or(Level::Info))
}

pub(crate) fn hmac_sha256(key_name: &str, data: &str) -> Result<String, String> {
    let key = HOST.with(|h| h.borrow().keys.get(key_name).cloned());
    match key {
        Some(key) => Ok(hmac(&String::from_utf8_lossy(&key), data)),
        None => Err(format!(
            "no key {key_name}: testing::set_key(\"{key_name}\", …) gives one, as the transform's keys do in a run"
        )),
    }
}

pub(crate) fn counter_add(name: &str, delta: u64) {
    HOST.with(|h| *h.borrow_mut().counters.entry(name.to_string()).or_default() += delta);
}

pub(crate) fn gauge_set(name: &str, value: f64) {
    HOST.with(|h| h.borrow_mut().gauges.insert(name.to_string(), value));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Outcome, Output};

    struct Split;

    impl Transform for Split {
        fn init(config: &Config) -> Result<Self, String> {
            config.only(&[])?;
            Ok(Split)
        }
        fn process(&mut self, event: &crate::Event) -> Result<Outcome, String> {
            let copy = event.duplicate();
            copy.remove("Phone");
            crate::host::counter_add("split", 1);
            crate::host::log_with(Level::Info, "split", &[("entity", &event.entity_name())]);
            Ok(Outcome::Many(vec![
                Output::original(None),
                Output::new(copy, Some("no_phones".into())),
            ]))
        }
    }

    #[test]
    fn a_fan_out_runs_natively_with_its_tables_logs_and_counters() {
        let input = event("Account", ChangeType::Create)
            .field("Phone", Value::Text("+1 555".into()))
            .build();
        let outputs = run::<Split>(&[], input).unwrap();
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0].0, None);
        assert_eq!(outputs[0].1.get("Phone"), Some(Value::Text("+1 555".into())));
        assert_eq!(outputs[1].0.as_deref(), Some("no_phones"));
        assert_eq!(outputs[1].1.get("Phone"), Some(Value::Null));
        assert_eq!(outputs[1].1.header().nulled_fields, ["Phone"]);
        assert_eq!(counter("split"), 1);
        assert_eq!(lines()[0].fields, [("entity".to_string(), "Account".to_string())]);
        assert!(run::<Split>(&[("x", "1")], event("Account", ChangeType::Create).build()).is_err());
    }

    struct Both;

    impl Transform for Both {
        fn init(_: &Config) -> Result<Self, String> {
            Ok(Both)
        }
        fn process(&mut self, _: &crate::Event) -> Result<Outcome, String> {
            let to = |t: &str| Output::original(Some(t.into()));
            Ok(Outcome::Many(vec![to("a"), to("b")]))
        }
    }

    #[test]
    fn the_original_named_twice_goes_to_both_tables() {
        let input = event("Account", ChangeType::Create).field("Phone", Value::Text("1".into())).build();
        let outputs = run::<Both>(&[], input).unwrap();
        let tables: Vec<_> = outputs.iter().map(|(t, _)| t.as_deref()).collect();
        assert_eq!(tables, [Some("a"), Some("b")]);
        assert!(outputs.iter().all(|(_, e)| e.get("Phone") == Some(Value::Text("1".into()))));
    }

    struct Misset;

    impl Transform for Misset {
        fn init(_: &Config) -> Result<Self, String> {
            Ok(Misset)
        }
        fn process(&mut self, event: &crate::Event) -> Result<Outcome, String> {
            event.set("AnnualRevenue", Value::Text("lots".into()))?;
            Ok(Outcome::Keep)
        }
    }

    #[test]
    fn set_refuses_an_unknown_field_and_a_misfit_dead_letters_as_in_the_host() {
        let e = event("Lead", ChangeType::Update)
            .field("AnnualRevenue", Value::Float(1.0))
            .field("Email", Value::Text("a@b.c".into()))
            .build();
        assert!(e.set("Nope", Value::Null).unwrap_err().contains("no field Nope"));
        let error = run::<Misset>(&[], e.duplicate()).unwrap_err();
        assert!(error.contains("does not fit AnnualRevenue"), "{error}");
        assert!(e.hash_field("Email", "pii").unwrap_err().contains("set_key"));
        set_key("pii", "k");
        assert_eq!(e.hash_field("AnnualRevenue", "pii"), Ok(false));
        assert_eq!(e.hash_field("Email", "pii"), Ok(true));
        assert_eq!(e.get("Email"), Some(Value::Text(hmac("k", "a@b.c"))));
    }
}
