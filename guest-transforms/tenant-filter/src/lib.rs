//! `tenant-filter`: keeps only the events of one tenant and drops the rest.
//!
//! Config (every rule given must match):
//! - `entities=Account,Contact`: allowed objects.
//! - `change-types=CREATE,UPDATE`: allowed change types.
//! - `field.<Name>=v1|v2`: the field's value (as text) is one of these, e.g.
//!   `field.OwnerId=005000000000001AAA|005000000000002AAA` or `field.RecordTypeId=012...`.
//! - `missing=drop` (default) or `keep`: what to do when a rule's field is null in the
//!   event (CDC updates carry only changed fields).

use std::cell::RefCell;

wit_bindgen::generate!({ path: "../../wit", world: "transform" });

use sfzb::transform::types::{ChangeType, Value};

struct TenantFilter;

#[derive(Default)]
struct Config {
    entities: Option<Vec<String>>,
    change_types: Option<Vec<String>>,
    fields: Vec<(String, Vec<String>)>,
    keep_missing: bool,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

fn list(value: &str, sep: char) -> Vec<String> {
    value.split(sep).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn change_type_name(t: ChangeType) -> &'static str {
    match t {
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

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Boolean(b) => Some(b.to_string()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Text(t) => Some(t.clone()),
        Value::Bytes(_) => None,
    }
}

impl Guest for TenantFilter {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut c = Config::default();
        for (key, value) in config {
            match key.as_str() {
                "entities" => c.entities = Some(list(&value, ',')),
                "change-types" => c.change_types = Some(list(&value, ',').into_iter().map(|s| s.to_uppercase()).collect()),
                "missing" => c.keep_missing = match value.as_str() {
                    "keep" => true,
                    "drop" => false,
                    other => return Err(format!("missing={other} is not keep or drop")),
                },
                other => match other.strip_prefix("field.") {
                    Some(field) if !field.is_empty() => c.fields.push((field.to_string(), list(&value, '|'))),
                    _ => return Err(format!("unknown setting {other}; tenant-filter takes entities, change-types, field.<Name>, missing")),
                },
            }
        }
        if c.entities.is_none() && c.change_types.is_none() && c.fields.is_empty() {
            return Err("no rule given: set entities=, change-types= or field.<Name>=".into());
        }
        CONFIG.with(|cell| *cell.borrow_mut() = c);
        Ok(())
    }

    fn process(event: Event) -> Result<Vec<Output>, String> {
        let keep = CONFIG.with(|cell| {
            let c = cell.borrow();
            if let Some(entities) = &c.entities {
                let entity = event.entity_name();
                if !entities.iter().any(|e| *e == entity) {
                    return false;
                }
            }
            if let Some(types) = &c.change_types {
                let t = change_type_name(event.change_type());
                if !types.iter().any(|e| e == t) {
                    return false;
                }
            }
            c.fields.iter().all(|(field, allowed)| match event.get(field).as_ref().and_then(as_text) {
                Some(text) => allowed.contains(&text),
                None => c.keep_missing,
            })
        });
        Ok(if keep { vec![Output { event, table: None }] } else { Vec::new() })
    }
}

export!(TenantFilter);
