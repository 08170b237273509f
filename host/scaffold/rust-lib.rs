//! `__NAME__`: redacts the fields named in `fields=` (default `Email`) and keeps every event.
//! Change `process` to filter (`Outcome::Drop`), route (`Outcome::Route("other_table".into())`)
//! or fan out (`Outcome::Many` with `event.duplicate()`); `sfzb_transform::host` has logging,
//! counters and keyed hashing. `cargo test` runs the tests below natively, without Wasm.

use sfzb_transform::{Config, Event, Outcome, Transform, Value};

struct Redact {
    fields: Vec<String>,
}

impl Transform for Redact {
    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["fields"])?;
        let mut fields = config.list("fields");
        if fields.is_empty() {
            fields.push("Email".into());
        }
        Ok(Redact { fields })
    }

    fn process(&mut self, event: &Event) -> Result<Outcome, String> {
        for name in &self.fields {
            if let Some(Value::Text(_)) = event.get(name) {
                event.set(name, Value::Text("REDACTED".into()))?;
                sfzb_transform::host::counter_add("redacted", 1);
            }
        }
        Ok(Outcome::Keep)
    }
}

sfzb_transform::export_transform!(Redact);

#[cfg(test)]
mod tests {
    use super::*;
    use sfzb_transform::ChangeType;
    use sfzb_transform::testing::{self, event};

    #[test]
    fn redacts_the_fields_and_keeps_the_event() {
        let input = event("Account", ChangeType::Update)
            .field("Email", Value::Text("ada@example.com".into()))
            .field("Phone", Value::Text("+1 415 555 0100".into()))
            .build();
        let outputs = testing::run::<Redact>(&[("fields", "Email")], input).unwrap();
        assert_eq!(outputs.len(), 1);
        let (table, event) = &outputs[0];
        assert_eq!(*table, None, "to the subscription's own table");
        assert_eq!(event.get("Email"), Some(Value::Text("REDACTED".into())));
        assert_eq!(event.get("Phone"), Some(Value::Text("+1 415 555 0100".into())));
        assert_eq!(testing::counter("redacted"), 1);
    }

    #[test]
    fn a_typo_in_the_settings_is_refused() {
        let input = event("Account", ChangeType::Update).build();
        let error = testing::run::<Redact>(&[("field", "Email")], input).unwrap_err();
        assert!(error.contains("unknown setting field"), "{error}");
    }
}
