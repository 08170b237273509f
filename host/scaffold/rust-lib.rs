//! `__NAME__`: redacts the fields named in `fields=` (default `Email`) and keeps every event.
//! Change `process` to filter (return `vec![]`), fan out (`event.duplicate()`), or route
//! (`table: Some("other_table".into())`). The contract is `wit/transform.wit`.

use std::cell::RefCell;

wit_bindgen::generate!({ path: "wit", world: "transform" });

use sfzb::transform::types::Value;

struct Transform;

thread_local! {
    static FIELDS: RefCell<Vec<String>> = RefCell::new(vec!["Email".into()]);
}

impl Guest for Transform {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in config {
            match key.as_str() {
                "fields" => FIELDS.with(|f| *f.borrow_mut() = value.split(',').map(|s| s.trim().to_string()).collect()),
                other => return Err(format!("unknown setting {other}; __NAME__ takes fields")),
            }
        }
        Ok(())
    }

    fn process(event: Event) -> Result<Vec<Output>, String> {
        FIELDS.with(|fields| {
            for name in fields.borrow().iter() {
                if let Some(Value::Text(_)) = event.get(name) {
                    event.set(name, &Value::Text("REDACTED".into()))?;
                }
            }
            Ok::<(), String>(())
        })?;
        Ok(vec![Output { event, table: None }])
    }
}

export!(Transform);
