//! The simulated org's objects: each entity with its CDC channel and writer schemas.
//! Account and Contact use schemas dumped from a real org; the others are written in the
//! same shape (header first, `["null", T]` unions with null defaults, compound records).

use std::sync::Arc;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::event::EventSchema;
use crate::salesforce::schema::{SchemaError, parse_schema};

/// The name of the field a schema change adds (see `--schema-change-at`).
pub const ADDED_FIELD: &str = "Sim_Tier__c";

const SOURCES: [(&str, &str, &str); 5] = [
    (
        "Account",
        "001",
        include_str!("schemas/AccountChangeEvent.avsc"),
    ),
    (
        "Contact",
        "003",
        include_str!("schemas/ContactChangeEvent.avsc"),
    ),
    ("Lead", "00Q", include_str!("schemas/LeadChangeEvent.avsc")),
    (
        "Opportunity",
        "006",
        include_str!("schemas/OpportunityChangeEvent.avsc"),
    ),
    (
        "Invoice__c",
        "a01",
        include_str!("schemas/Invoice__ChangeEvent.avsc"),
    ),
];

/// Entities the simulator knows, in the order `--entities` accepts them.
pub fn entity_names() -> Vec<&'static str> {
    SOURCES.iter().map(|(name, _, _)| *name).collect()
}

#[derive(Debug)]
pub struct Entity {
    pub name: &'static str,
    /// The 3-character key prefix of the object's record ids.
    pub key_prefix: &'static str,
    pub channel: String,
    /// The schema events use before a schema change.
    pub schema: Arc<EventSchema>,
    /// The schema after a schema change: the same plus one field at the end.
    pub changed_schema: Arc<EventSchema>,
}

impl Entity {
    pub fn load(name: &str) -> Option<Result<Entity, SchemaError>> {
        let (name, prefix, json) = SOURCES
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))?;
        Some(Self::build(name, prefix, json))
    }

    fn build(
        name: &'static str,
        key_prefix: &'static str,
        json: &str,
    ) -> Result<Entity, SchemaError> {
        let compact = serde_json::from_str::<serde_json::Value>(json)
            .expect("bundled schemas are valid JSON");
        let mut changed = compact.clone();
        changed["fields"]
            .as_array_mut()
            .expect("bundled schemas have fields")
            .push(serde_json::json!({
                "name": ADDED_FIELD, "type": ["null", "string"], "doc": "Data:DynamicEnum", "default": null
            }));
        let parse = |value: &serde_json::Value| {
            let text = value.to_string();
            parse_schema(&schema_id(&text), &text).map(Arc::new)
        };
        Ok(Entity {
            name,
            key_prefix,
            channel: channel_for(name),
            schema: parse(&compact)?,
            changed_schema: parse(&changed)?,
        })
    }
}

/// `/data/AccountChangeEvent` for standard objects, `/data/Invoice__ChangeEvent` for `Invoice__c`.
pub fn channel_for(entity: &str) -> String {
    match entity.strip_suffix("__c") {
        Some(base) => format!("/data/{base}__ChangeEvent"),
        None => format!("/data/{entity}ChangeEvent"),
    }
}

/// A schema id shaped like Salesforce's (22 URL-safe base64 characters), stable for a schema.
fn schema_id(json: &str) -> String {
    let digest = Sha256::digest(json.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_loads_with_distinct_schema_ids() {
        let mut ids = std::collections::HashSet::new();
        for name in entity_names() {
            let e = Entity::load(name).unwrap().unwrap();
            assert!(ids.insert(e.schema.id.clone()));
            assert!(ids.insert(e.changed_schema.id.clone()));
            assert_eq!(e.schema.id.len(), 22);
            assert_eq!(
                e.changed_schema.names.top.len(),
                e.schema.names.top.len() + 1
            );
        }
        assert_eq!(channel_for("Invoice__c"), "/data/Invoice__ChangeEvent");
        assert!(Entity::load("account").is_some());
        assert!(Entity::load("Nope").is_none());
    }
}
