//! `tenant-filter`: keeps only the events of one tenant and drops the rest. Written with the
//! Rust SDK (`guest-transforms/sdk/rust`): a plain type, tested natively below.
//!
//! Config (every rule given must match):
//! - `entities=Account,Contact`: allowed objects.
//! - `change-types=CREATE,UPDATE`: allowed change types.
//! - `field.<Name>=v1|v2`: the field's value (as text) is one of these, e.g.
//!   `field.OwnerId=005000000000001AAA|005000000000002AAA` or `field.RecordTypeId=012...`.
//! - `missing=drop` (default) or `keep`: what to do when a rule's field is null in the
//!   event (CDC updates carry only changed fields).

use sfzb_transform::{Config, Event, Outcome, Transform, Value};

struct TenantFilter {
    entities: Option<Vec<String>>,
    change_types: Option<Vec<String>>,
    fields: Vec<(String, Vec<String>)>,
    keep_missing: bool,
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null | Value::Bytes(_) => None,
        Value::Boolean(b) => Some(b.to_string()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Text(t) => Some(t.clone()),
    }
}

impl Transform for TenantFilter {
    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["entities", "change-types", "field.*", "missing"])?;
        let some = |key: &str| config.get(key).map(|_| config.list(key));
        let filter = TenantFilter {
            entities: some("entities"),
            change_types: some("change-types").map(|types| types.iter().map(|s| s.to_uppercase()).collect()),
            fields: config
                .iter()
                .filter_map(|(key, value)| {
                    let allowed = value.split('|').map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
                    key.strip_prefix("field.").map(|field| (field.to_string(), allowed.collect()))
                })
                .collect(),
            keep_missing: match config.get("missing").unwrap_or("drop") {
                "keep" => true,
                "drop" => false,
                other => return Err(format!("missing={other} is not keep or drop")),
            },
        };
        if filter.entities.is_none() && filter.change_types.is_none() && filter.fields.is_empty() {
            return Err("no rule given: set entities=, change-types= or field.<Name>=".into());
        }
        Ok(filter)
    }

    fn process(&mut self, event: &Event) -> Result<Outcome, String> {
        if let Some(entities) = &self.entities
            && !entities.contains(&event.entity_name())
        {
            return Ok(Outcome::Drop);
        }
        if let Some(types) = &self.change_types
            && !types.iter().any(|t| t == event.change_type().as_str())
        {
            return Ok(Outcome::Drop);
        }
        let keep = self.fields.iter().all(|(field, allowed)| match event.get(field).as_ref().and_then(as_text) {
            Some(text) => allowed.contains(&text),
            None => self.keep_missing,
        });
        Ok(if keep { Outcome::Keep } else { Outcome::Drop })
    }
}

sfzb_transform::export_transform!(TenantFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use sfzb_transform::ChangeType;
    use sfzb_transform::testing::{event, run};

    fn owned_by(owner: Option<&str>) -> Event {
        let value = owner.map_or(Value::Null, |o| Value::Text(o.into()));
        event("Account", ChangeType::Update).field("OwnerId", value).build()
    }

    #[test]
    fn keeps_the_tenants_events_and_drops_the_rest() {
        let config = [("entities", "Account"), ("field.OwnerId", "005A|005B")];
        assert_eq!(run::<TenantFilter>(&config, owned_by(Some("005B"))).unwrap().len(), 1);
        assert!(run::<TenantFilter>(&config, owned_by(Some("005C"))).unwrap().is_empty());
        assert!(run::<TenantFilter>(&config, owned_by(None)).unwrap().is_empty());
        let keep_missing = [("field.OwnerId", "005A"), ("missing", "keep")];
        assert_eq!(run::<TenantFilter>(&keep_missing, owned_by(None)).unwrap().len(), 1);
        let contacts = [("entities", "Contact")];
        assert!(run::<TenantFilter>(&contacts, owned_by(Some("005A"))).unwrap().is_empty());
    }

    #[test]
    fn refuses_no_rule_and_unknown_settings() {
        assert!(run::<TenantFilter>(&[], owned_by(None)).unwrap_err().contains("no rule"));
        let err = run::<TenantFilter>(&[("entity", "Account")], owned_by(None)).unwrap_err();
        assert!(err.contains("unknown setting entity"), "{err}");
    }
}
