//! `mask`: redacts or pseudonymises sensitive fields.
//!
//! Config:
//! - `fields=Email,Phone,*Phone,Name.LastName`: field names; `*` at the start or end matches
//!   any prefix or suffix (`*Phone` = `Phone`, `MobilePhone`, `PersonHomePhone`, …).
//! - `types=Email,Phone`: also every field of these Salesforce types (`event.field-type`).
//! - `mode=redact` (default): text becomes `REDACTED`, other values null.
//! - `mode=hash`: text becomes the HMAC-SHA256 (hex) of the value under the key named by
//!   `key`, computed in place by the host (`event.hash-field`), so masked ids still join
//!   and the key never enters the transform; other values are nulled.
//! - `key=NAME`: required with `mode=hash`; the transform's `keys` must hold NAME.
//!
//! It counts what it masks in the counter `masked_values` and sets the gauge
//! `masked_fields` to how many fields it masks in the last schema it saw (at `/metrics`).
//! In hash mode its "mask ready" line carries `key_check`, the first 8 hex digits of the
//! key's HMAC of the empty text: replicas (and the Rust, Python and JavaScript masks) show
//! the same check exactly when they hash with the same key, which the check does not reveal.

use std::cell::RefCell;
use std::collections::HashMap;

wit_bindgen::generate!({ path: "../../wit", world: "transform" });

use sfzb::transform::host::{self, Level};
use sfzb::transform::types::Value;

struct Mask;

#[derive(Default)]
struct Config {
    patterns: Vec<String>,
    types: Vec<String>,
    /// The key name, in hash mode.
    key: Option<String>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    /// Field names to mask, per schema id: listing a schema's fields is costly.
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

fn list(value: &str) -> Vec<String> {
    value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

impl Guest for Mask {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut c = Config::default();
        let mut hash = false;
        for (key, value) in config {
            match key.as_str() {
                "fields" => c.patterns = list(&value),
                "types" => c.types = list(&value),
                "mode" => match value.as_str() {
                    "redact" => hash = false,
                    "hash" => hash = true,
                    other => return Err(format!("mode={other} is not redact or hash")),
                },
                "key" => c.key = Some(value),
                other => return Err(format!("unknown setting {other}; mask takes fields, types, mode, key")),
            }
        }
        if c.patterns.is_empty() && c.types.is_empty() {
            return Err("fields or types is required, e.g. fields=Email,Phone".into());
        }
        let mut ready = vec![
            ("mode".to_string(), if hash { "hash" } else { "redact" }.to_string()),
            ("fields".into(), c.patterns.join(",")),
            ("types".into(), c.types.join(",")),
        ];
        match (hash, &c.key) {
            (true, None) => return Err("mode=hash needs key=NAME, naming one of the transform's keys".into()),
            (false, Some(_)) => return Err("key is for mode=hash".into()),
            (true, Some(key)) => {
                // Refuses a missing key now, not on the first event.
                let check = host::hmac_sha256(key, "")?;
                ready.push(("key_check".into(), check[..8].to_string()));
            }
            (false, None) => {}
        }
        host::log_with(Level::Info, "mask ready", &ready);
        if c.types.is_empty() && c.patterns.iter().all(|p| !p.contains('*')) {
            host::gauge_set("masked_fields", c.patterns.len() as f64);
        }
        CONFIG.with(|cell| *cell.borrow_mut() = c);
        MATCHED.with(|cache| cache.borrow_mut().clear());
        Ok(())
    }

    fn process(event: Event) -> Result<Vec<Output>, String> {
        let masked_values = CONFIG.with(|cell| {
            let config = cell.borrow();
            if config.types.is_empty() && config.patterns.iter().all(|p| !p.contains('*')) {
                return mask(&event, &config.patterns, config.key.as_deref());
            }
            MATCHED.with(|cache| {
                let mut cache = cache.borrow_mut();
                let names = cache.entry(event.schema_id()).or_insert_with(|| {
                    let names: Vec<String> = event
                        .field_names()
                        .into_iter()
                        .filter(|n| {
                            config.patterns.iter().any(|p| matches(p, n))
                                || event.field_type(n).is_some_and(|t| config.types.contains(&t.salesforce_type))
                        })
                        .collect();
                    if host::log_enabled(Level::Debug) {
                        host::log_with(Level::Debug, "mask matched", &[("schema".into(), event.schema_id()), ("fields".into(), names.join(","))]);
                    }
                    host::gauge_set("masked_fields", names.len() as f64);
                    names
                });
                mask(&event, names, config.key.as_deref())
            })
        })?;
        if masked_values > 0 {
            host::counter_add("masked_values", masked_values);
        }
        Ok(vec![Output { event, table: None }])
    }
}

/// Masks the fields `names` of `event` that have a value; how many it masked.
fn mask(event: &Event, names: &[String], key: Option<&str>) -> Result<u64, String> {
    let mut masked_values = 0;
    for name in names {
        // The host hashes a text field in place; other values are nulled as in redact mode.
        if let Some(key) = key
            && event.hash_field(name, key)?
        {
            masked_values += 1;
            continue;
        }
        let masked = match event.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::Text(_)) => Value::Text("REDACTED".into()),
            Some(_) => Value::Null,
        };
        event.set(name, &masked)?;
        masked_values += 1;
    }
    Ok(masked_values)
}

export!(Mask);
