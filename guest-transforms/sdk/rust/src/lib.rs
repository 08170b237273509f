//! Write an sfzb-host transform as a plain Rust type, and test it with `cargo test`.
//!
//! ```ignore
//! use sfzb_transform::{Config, Event, Outcome, Transform, Value};
//!
//! struct Redact {
//!     fields: Vec<String>,
//! }
//!
//! impl Transform for Redact {
//!     fn init(config: &Config) -> Result<Self, String> {
//!         config.only(&["fields"])?;
//!         Ok(Redact { fields: config.list("fields") })
//!     }
//!
//!     fn process(&mut self, event: &Event) -> Result<Outcome, String> {
//!         for name in &self.fields {
//!             if let Some(Value::Text(_)) = event.get(name) {
//!                 event.set(name, Value::Text("REDACTED".into()))?;
//!             }
//!         }
//!         Ok(Outcome::Keep)
//!     }
//! }
//!
//! sfzb_transform::export_transform!(Redact);
//! ```
//!
//! Built for `wasm32-wasip2` it is a component of the `sfzb:transform@0.1.1` world
//! (`wit/transform.wit`, the author's manual for what each call does and costs). Built for
//! the machine itself, [`testing`] is a stub host: events made field by field, keys,
//! captured logs and counters, so a transform's tests need neither Wasm nor sfzb-host (the
//! idea of Redpanda's transform SDK).
//!
//! The host calls `init` for every new instance (at start, after a trap, after
//! `recycle-after` events, on reload): a `Transform` is rebuilt from its configuration then,
//! and what it kept between events is gone.

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __wasm;
#[cfg(target_arch = "wasm32")]
use __wasm as imp;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
#[cfg(not(target_arch = "wasm32"))]
use testing as imp;

/// A field's value. Dates and times are `Integer` (epoch days, milliseconds); compound
/// fields (Address, Name) are read and written through their children
/// (`BillingAddress.City`).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// What kind of value a field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Boolean,
    Integer,
    Float,
    Text,
    Bytes,
    Compound,
}

/// A field's type: its value kind, and its Salesforce type (`email`, `phone`, `currency`,
/// `reference`, …; empty when the schema does not say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldType {
    pub kind: ValueKind,
    pub salesforce_type: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

impl ChangeType {
    /// As Salesforce writes it: `CREATE`, `GAP_UPDATE`, …
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
        }
    }
}

/// The event's ChangeEventHeader.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub entity_name: String,
    pub change_type: ChangeType,
    pub record_ids: Vec<String>,
    pub changed_fields: Vec<String>,
    pub nulled_fields: Vec<String>,
    pub diff_fields: Vec<String>,
    pub commit_timestamp: i64,
    pub commit_number: i64,
    pub commit_user: String,
    pub change_origin: String,
    pub transaction_key: String,
    pub sequence_number: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// A change event, owned by the host; each call reads or changes it there.
pub struct Event(pub(crate) imp::Event);

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
    /// Hex.
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
        self.0.change_type()
    }
    pub fn header(&self) -> Header {
        self.0.header()
    }
    /// The field's value; `None` when the schema has no such field.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.0.get(name)
    }
    /// Sets a field; an error names a field the schema lacks. A value of the wrong kind
    /// (text in a number field) is taken, and the event dead-lettered naming the field once
    /// `process` returns, when the host re-encodes it.
    pub fn set(&self, name: &str, value: Value) -> Result<(), String> {
        self.0.set(name, value)
    }
    /// Sets the field to null and lists it in `nulled_fields`; false when there is no such
    /// field.
    pub fn remove(&self, name: &str) -> bool {
        self.0.remove(name)
    }
    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        self.0.field_type(name)
    }
    /// Replaces a text field by the HMAC-SHA256 (hex) of its value under the transform's key
    /// `key_name`, in the host: the key never reaches the transform. False when the field
    /// holds no text (null, a number).
    pub fn hash_field(&self, name: &str, key_name: &str) -> Result<bool, String> {
        self.0.hash_field(name, key_name)
    }
    /// The names of its data fields (compound fields through their children), in schema
    /// order.
    pub fn field_names(&self) -> Vec<String> {
        self.0.field_names()
    }
    /// A copy, for a fan-out.
    pub fn duplicate(&self) -> Event {
        Event(self.0.duplicate())
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("entity_name", &self.entity_name())
            .field("change_type", &self.change_type())
            .field("replay_id", &self.replay_id())
            .finish_non_exhaustive()
    }
}

/// One event to write, and where.
pub struct Output {
    /// `None`: the event `process` was given.
    pub event: Option<Event>,
    /// `None`: the subscription's own table.
    pub table: Option<String>,
}

impl Output {
    /// The event `process` was given, to `table` (`None`: the subscription's own).
    pub fn original(table: Option<String>) -> Output {
        Output { event: None, table }
    }

    /// Another event (a [`Event::duplicate`]), to `table`.
    pub fn new(event: Event, table: Option<String>) -> Output {
        Output {
            event: Some(event),
            table,
        }
    }
}

/// What becomes of an event.
pub enum Outcome {
    /// Written (as changed) to the subscription's own table.
    Keep,
    /// Written to another table: `accounts_vip`, or `catalog.schema.table` where allowed.
    Route(String),
    /// Not written; the checkpoint passes it.
    Drop,
    /// These instead: a fan-out, or the event to several tables.
    Many(Vec<Output>),
}

/// The transform's settings (`config = { … }`, `--transform-config NAME.KEY=VALUE`).
#[derive(Clone, Debug, Default)]
pub struct Config {
    items: Vec<(String, String)>,
}

impl Config {
    pub fn new(items: Vec<(String, String)>) -> Config {
        Config { items }
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key`'s value as a comma-separated list, trimmed, without empty items.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every setting, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.items.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Refuses a setting that is not one of `known` (a `prefix.*` entry allows every key
    /// of that prefix), naming them all: a typo fails at start, not silently.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        let allowed = |key: &str| {
            known.iter().any(|k| match k.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix) && key.len() > prefix.len(),
                None => *k == key,
            })
        };
        match self.items.iter().find(|(k, _)| !allowed(k)) {
            Some((key, _)) => Err(format!(
                "unknown setting {key}; this transform takes {}",
                known.join(", ")
            )),
            None => Ok(()),
        }
    }
}

/// A transform: made from its settings by `init`, then given each event.
pub trait Transform: Sized + 'static {
    fn init(config: &Config) -> Result<Self, String>;

    /// An error dead-letters the event with the message (or skips or stops, per the
    /// transform's `on-error`).
    fn process(&mut self, event: &Event) -> Result<Outcome, String>;
}

/// The host's functions.
pub mod host {
    pub use super::Level;
    use super::imp;

    /// A line of the host's log, tagged with the transform's name (and in a run, the
    /// subscription's); rate-limited (`max-log-lines-per-sec`).
    pub fn log(level: Level, message: &str) {
        imp::log(level, message, &[]);
    }

    /// A log line with fields of its own.
    pub fn log_with(level: Level, message: &str, fields: &[(&str, &str)]) {
        imp::log(level, message, fields);
    }

    /// Whether a line at `level` would be logged: skip building one that would not.
    pub fn log_enabled(level: Level) -> bool {
        imp::log_enabled(level)
    }

    /// HMAC-SHA256 (hex) of `data` under the transform's key `key_name`.
    pub fn hmac_sha256(key_name: &str, data: &str) -> Result<String, String> {
        imp::hmac_sha256(key_name, data)
    }

    /// Adds to the transform's counter `name` (at `/metrics` as
    /// `sfzb_transform_counter_total`).
    pub fn counter_add(name: &str, delta: u64) {
        imp::counter_add(name, delta);
    }

    /// Sets the transform's gauge `name` (`sfzb_transform_gauge`).
    pub fn gauge_set(name: &str, value: f64) {
        imp::gauge_set(name, value);
    }
}

/// What the host gets back for `event`.
#[doc(hidden)]
pub fn __outputs(event: Event, outcome: Outcome) -> Vec<(Event, Option<String>)> {
    match outcome {
        Outcome::Keep => vec![(event, None)],
        Outcome::Route(table) => vec![(event, Some(table))],
        Outcome::Drop => Vec::new(),
        Outcome::Many(outputs) => {
            // The original is handed out once; named more than once, the earlier ones get
            // copies of it.
            let mut originals = outputs.iter().filter(|o| o.event.is_none()).count();
            let mut event = Some(event);
            outputs
                .into_iter()
                .filter_map(|o| match o.event {
                    Some(other) => Some((other, o.table)),
                    None => {
                        originals -= 1;
                        let original = match originals {
                            0 => event.take()?,
                            _ => event.as_ref()?.duplicate(),
                        };
                        Some((original, o.table))
                    }
                })
                .collect()
        }
    }
}

/// Makes `$t` (a [`Transform`]) the component's transform.
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct Export;
            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$t>> =
                    const { ::core::cell::RefCell::new(None) };
            }
            impl $crate::__wasm::Guest for Export {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    let made = <$t as $crate::Transform>::init(&$crate::Config::new(config))?;
                    STATE.with(|s| *s.borrow_mut() = Some(made));
                    Ok(())
                }
                fn process(
                    event: $crate::__wasm::WitEvent,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::__wasm::WitOutput>,
                    ::std::string::String,
                > {
                    STATE.with(|s| match s.borrow_mut().as_mut() {
                        Some(t) => $crate::__wasm::process(t, event),
                        None => Err("process was called before init".into()),
                    })
                }
            }
            $crate::__wasm::bindings::__export_wit!(Export with_types_in $crate::__wasm::bindings);
        };
    };
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn only_names_every_known_setting_and_allows_prefixes() {
        let config = Config::new(vec![("field.OwnerId".into(), "005".into())]);
        assert!(config.only(&["entities", "field.*"]).is_ok());
        let err = config.only(&["entities"]).unwrap_err();
        assert!(err.contains("field.OwnerId") && err.contains("entities"), "{err}");
        assert_eq!(Config::new(vec![("fields".into(), " a, ,b".into())]).list("fields"), ["a", "b"]);
    }
}
