//! `mask`: redacts or hashes sensitive fields.
//!
//! Config:
//! - `fields=Email,Phone,*Phone,Name.LastName`: field names; `*` at the start or end matches
//!   any prefix or suffix (`*Phone` = `Phone`, `MobilePhone`, `PersonHomePhone`, …).
//! - `mode=redact` (default): text becomes `REDACTED`, other values null.
//! - `mode=hash`: text becomes the hex SHA-256 of `salt` + value, so masked ids still join.
//! - `salt=...`: required with `mode=hash`.

use std::cell::RefCell;
use std::collections::HashMap;

use sha2::{Digest, Sha256};

wit_bindgen::generate!({ path: "../../wit", world: "transform" });

use sfzb::transform::types::Value;

struct Mask;

#[derive(Default)]
struct Config {
    patterns: Vec<String>,
    hash: bool,
    salt: String,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    /// Field names matching the patterns, per schema id: listing a schema's fields is costly.
    static MATCHED: RefCell<HashMap<String, Vec<String>>> = RefCell::new(HashMap::new());
}

fn matches(pattern: &str, name: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('*') {
        name.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        name.starts_with(prefix)
    } else {
        pattern == name
    }
}

impl Guest for Mask {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut c = Config::default();
        for (key, value) in config {
            match key.as_str() {
                "fields" => c.patterns = value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
                "mode" => match value.as_str() {
                    "redact" => c.hash = false,
                    "hash" => c.hash = true,
                    other => return Err(format!("mode={other} is not redact or hash")),
                },
                "salt" => c.salt = value,
                other => return Err(format!("unknown setting {other}; mask takes fields, mode, salt")),
            }
        }
        if c.patterns.is_empty() {
            return Err("fields is required, e.g. fields=Email,Phone".into());
        }
        if c.hash && c.salt.is_empty() {
            return Err("mode=hash needs a salt, e.g. salt=some-secret".into());
        }
        CONFIG.with(|cell| *cell.borrow_mut() = c);
        Ok(())
    }

    fn process(event: Event) -> Result<Vec<Output>, String> {
        CONFIG.with(|cell| {
            let config = cell.borrow();
            let names = if config.patterns.iter().all(|p| !p.contains('*')) {
                config.patterns.clone()
            } else {
                MATCHED.with(|cache| {
                    cache
                        .borrow_mut()
                        .entry(event.schema_id())
                        .or_insert_with(|| event.field_names().into_iter().filter(|n| config.patterns.iter().any(|p| matches(p, n))).collect())
                        .clone()
                })
            };
            for name in &names {
                let masked = match event.get(name) {
                    None | Some(Value::Null) => continue,
                    Some(Value::Text(text)) if config.hash => {
                        let digest = Sha256::digest(format!("{}{text}", config.salt).as_bytes());
                        Value::Text(digest.iter().map(|b| format!("{b:02x}")).collect())
                    }
                    Some(Value::Text(_)) => Value::Text("REDACTED".into()),
                    Some(_) => Value::Null,
                };
                event.set(name, &masked)?;
            }
            Ok::<(), String>(())
        })?;
        Ok(vec![Output { event, table: None }])
    }
}

export!(Mask);
