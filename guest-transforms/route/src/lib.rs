//! `route`: sends each event to a table chosen by its object or by a field's value.
//!
//! Config:
//! - `by=entity` (default) or `by=field:<Name>`.
//! - `table.<key>=<table>`: the table for an entity name (`table.Account=account_events`) or a
//!   field value (`table.EMEA=emea_events`).
//! - `default=<table>`: for everything else; without it, unmatched events stay in the
//!   subscription's own table.

use std::cell::RefCell;
use std::collections::HashMap;

wit_bindgen::generate!({ path: "../../wit", world: "transform" });

use sfzb::transform::types::Value;

struct Route;

#[derive(Default)]
struct Config {
    field: Option<String>,
    tables: HashMap<String, String>,
    default: Option<String>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

impl Guest for Route {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut c = Config::default();
        for (key, value) in config {
            if let Some(k) = key.strip_prefix("table.") {
                c.tables.insert(k.to_string(), value);
                continue;
            }
            match key.as_str() {
                "by" if value == "entity" => c.field = None,
                "by" => match value.strip_prefix("field:") {
                    Some(f) if !f.is_empty() => c.field = Some(f.to_string()),
                    _ => return Err(format!("by={value} is not entity or field:<Name>")),
                },
                "default" => c.default = Some(value),
                other => return Err(format!("unknown setting {other}; route takes by, table.<key>, default")),
            }
        }
        if c.tables.is_empty() && c.default.is_none() {
            return Err("no table given: set table.<key>=<table> or default=<table>".into());
        }
        CONFIG.with(|cell| *cell.borrow_mut() = c);
        Ok(())
    }

    fn process(event: Event) -> Result<Vec<Output>, String> {
        let table = CONFIG.with(|cell| {
            let c = cell.borrow();
            let key = match &c.field {
                None => Some(event.entity_name()),
                Some(field) => match event.get(field) {
                    Some(Value::Text(t)) => Some(t),
                    Some(Value::Integer(i)) => Some(i.to_string()),
                    Some(Value::Boolean(b)) => Some(b.to_string()),
                    _ => None,
                },
            };
            key.and_then(|k| c.tables.get(&k).cloned()).or_else(|| c.default.clone())
        });
        Ok(vec![Output { event, table }])
    }
}

export!(Route);
