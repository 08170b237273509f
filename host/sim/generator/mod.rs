//! Deterministic change events: the event for (seed, entity, index) is always the same, so a
//! simulator restarted with more events begins with the same ones. Bitmaps in the header
//! match the fields each event sets, as Salesforce builds them.

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::event::{ChangeType, EventSchema};
use crate::sim::catalog::{ADDED_FIELD, Entity};
use draft::build;

mod draft;
mod values;

/// An encoded event as the bus stores and serves it.
#[derive(Clone, Debug)]
pub struct Generated {
    pub event_id: String,
    pub schema_id: String,
    pub payload: Bytes,
}

/// Where an event sits: `index` among its entity's events, `seq` on the whole bus.
#[derive(Clone, Copy, Debug)]
pub struct Position {
    pub index: u64,
    pub seq: u64,
}

/// The replay id of bus position `seq`.
pub fn replay_id(seq: u64) -> Bytes {
    Bytes::copy_from_slice(&seq.to_be_bytes())
}

/// The bus position in a replay id, if it is one the bus could have issued.
pub fn parse_replay_id(id: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(id).ok().map(u64::from_be_bytes)
}

/// Commit timestamps start here (2026-01-01T00:00:00Z) and advance 1 s per bus position.
const EPOCH_MS: i64 = 1_767_225_600_000;

/// Fields Salesforce sets on every create/update; never picked as "changed" at random.
const SYSTEM_FIELDS: [&str; 4] = [
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
    "LastModifiedById",
];

/// Distinct event bodies per entity and schema. An event's body (its change type, changed
/// and nulled fields, and data) is one of these, picked by its position; its header (record
/// id, transaction key, commit timestamp and number) is its own. A long run encodes each body
/// once and only assembles headers, so the simulator serves well over 100,000 events/s.
pub const BODY_VARIANTS: u64 = 1024;

/// An encoded event body and the header fields that must agree with it.
#[derive(Debug)]
pub struct Body {
    change_type: ChangeType,
    changed: Vec<String>,
    nulled: Vec<String>,
    user: String,
    data: Vec<u8>,
}

/// Which body the event at `seq` uses.
pub fn variant(seed: u64, seq: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.random_range(0..BODY_VARIANTS)
}

fn body_rng(seed: u64, variant: u64) -> StdRng {
    StdRng::seed_from_u64(seed.rotate_left(17) ^ variant.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// The change type of body `variant`'s first draw: 15% creates, 77% updates, 6% deletes,
/// 2% undeletes.
fn change_type_drawn(rng: &mut StdRng) -> ChangeType {
    match rng.random_range(0..100) {
        0..15 => ChangeType::Create,
        15..92 => ChangeType::Update,
        92..98 => ChangeType::Delete,
        _ => ChangeType::Undelete,
    }
}

/// The change type body `variant` has (not a gap), without building it.
pub fn change_type_of(seed: u64, variant: u64) -> ChangeType {
    change_type_drawn(&mut body_rng(seed, variant))
}

/// Builds body `variant`; `gap` makes it a gap event (a header with no data).
pub fn body(entity: &Entity, schema: &EventSchema, seed: u64, variant: u64, gap: bool) -> Body {
    let mut rng = body_rng(seed, variant);
    let drawn = change_type_drawn(&mut rng);
    let change_type = if gap { ChangeType::GapUpdate } else { drawn };
    let at = Position {
        index: variant,
        seq: variant,
    };
    let Avro::Record(mut record) = build(entity, schema, &mut rng, at, change_type, "") else {
        unreachable!("build returns a record")
    };
    let header = record.remove(0).1;
    let strings_of = |name: &str| match &header {
        Avro::Record(fields) => match fields.iter().find(|(n, _)| n == name).map(|(_, v)| v) {
            Some(Avro::Array(items)) => items
                .iter()
                .filter_map(|v| {
                    if let Avro::String(s) = v {
                        Some(s.clone())
                    } else {
                        None
                    }
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let user = match &header {
        Avro::Record(fields) => fields.iter().find_map(|(n, v)| match (n.as_str(), v) {
            ("commitUser", Avro::String(s)) => Some(s.clone()),
            _ => None,
        }),
        _ => None,
    }
    .unwrap_or_default();
    let Schema::Record(root) = &schema.avro else {
        unreachable!("parse_schema accepts only records")
    };
    let mut data = Vec::new();
    for ((_, value), field) in record.into_iter().zip(root.fields.iter().skip(1)) {
        let encoded = apache_avro::to_avro_datum_schemata(&field.schema, vec![&schema.avro], value)
            .expect("generated fields fit their schema");
        data.extend_from_slice(&encoded);
    }
    Body {
        change_type,
        changed: strings_of("changedFields"),
        nulled: strings_of("nulledFields"),
        user,
        data,
    }
}

/// The body of a GAP_OVERFLOW: `gap`'s (a gap body: header only) with that change type.
pub fn overflowing(gap: &Body) -> Body {
    Body {
        change_type: ChangeType::GapOverflow,
        changed: Vec::new(),
        nulled: Vec::new(),
        user: gap.user.clone(),
        data: gap.data.clone(),
    }
}

/// Salesforce's empty record id, the one an overflow event names.
const EMPTY_RECORD_ID: &str = "000000000000000AAA";

/// The body of an UNDELETE that restores a record: every field it holds, as Salesforce
/// sends them, by position in `schema`'s data fields.
pub fn restoring(schema: &EventSchema, fields: &crate::event::Fields, user: &str) -> Body {
    let mut data = Vec::new();
    crate::salesforce::schema::encode_fields(schema, fields, &mut data)
        .expect("a record's values came from events of its schema");
    Body {
        change_type: ChangeType::Undelete,
        changed: Vec::new(),
        nulled: Vec::new(),
        user: user.to_string(),
        data,
    }
}

/// The event at `at` with `body`, about record number `record`: its own header, then the
/// body's data.
pub fn assemble(
    entity: &Entity,
    schema: &EventSchema,
    seed: u64,
    at: Position,
    record: u64,
    body: &Body,
) -> Generated {
    use crate::salesforce::avro::{write_long, write_str};
    let mut rng = StdRng::seed_from_u64(seed ^ at.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5);
    let Schema::Record(root) = &schema.avro else {
        unreachable!("parse_schema accepts only records")
    };
    let Some(Schema::Record(header)) = root.fields.first().map(|f| &f.schema) else {
        unreachable!("parse_schema checks the header comes first")
    };
    let strings = |items: &[String], out: &mut Vec<u8>| {
        if !items.is_empty() {
            write_long(items.len() as i64, out);
            items.iter().for_each(|s| write_str(s, out));
        }
        write_long(0, out);
    };
    let mut out = Vec::with_capacity(body.data.len() + 160);
    for field in &header.fields {
        match field.name.as_str() {
            "entityName" => write_str(entity.name, &mut out),
            "recordIds" if body.change_type == ChangeType::GapOverflow => {
                strings(&[EMPTY_RECORD_ID.to_string()], &mut out)
            }
            "recordIds" => strings(&[record_id(entity.key_prefix, record)], &mut out),
            "changeType" => write_long(
                ChangeType::ALL
                    .iter()
                    .position(|t| *t == body.change_type)
                    .unwrap_or(0) as i64,
                &mut out,
            ),
            "changeOrigin" => write_str("com/salesforce/api/soap/62.0;client=sfzb-sim", &mut out),
            "transactionKey" => write_str(
                &format!("{:016x}-{:08x}", rng.random::<u64>(), at.seq),
                &mut out,
            ),
            "sequenceNumber" => write_long(1, &mut out),
            "commitTimestamp" => write_long(EPOCH_MS + at.seq as i64 * 1000, &mut out),
            "commitNumber" => write_long(11_000_000_000 + at.seq as i64, &mut out),
            "commitUser" => write_str(&body.user, &mut out),
            "nulledFields" => strings(&body.nulled, &mut out),
            "changedFields" => strings(&body.changed, &mut out),
            _ => strings(&[], &mut out),
        }
    }
    out.extend_from_slice(&body.data);
    Generated {
        event_id: uuid::Builder::from_random_bytes(rng.random())
            .into_uuid()
            .to_string(),
        schema_id: schema.id.clone(),
        payload: Bytes::from(out),
    }
}

/// The event at `at`; `gap` forces a gap event. The same as the bus serves, uncached.
pub fn generate(
    entity: &Entity,
    schema: &EventSchema,
    seed: u64,
    at: Position,
    gap: bool,
) -> Generated {
    let body = body(entity, schema, seed, variant(seed, at.seq), gap);
    assemble(entity, schema, seed, at, at.index / 3, &body)
}

/// The benchmarks' standard event: an Account UPDATE with 30 data fields set (names,
/// addresses, phones, emails, numbers, dates, flags), encoded against the real schema.
pub fn standard_account_event(entity: &Entity) -> crate::event::ChangeEvent {
    use crate::event::{ReplayId, Value};
    use crate::salesforce::schema::{EventMeta, decode_event};
    let schema = &entity.schema;
    let mut seq = 1;
    let mut event = loop {
        let g = generate(entity, schema, 42, Position { index: seq, seq }, false);
        let meta = EventMeta {
            org_id: "00DSIM0000000001AAA".into(),
            channel: entity.channel.as_str().into(),
            replay_id: ReplayId::new(replay_id(seq)),
            event_id: g.event_id,
        };
        let event = decode_event(schema, meta, g.payload).expect("generated events decode");
        if event.header.change_type == ChangeType::Update {
            break event;
        }
        seq += 1;
    };
    let text = |s: &str| Value::Text(s.into());
    let fields: [(&str, Value); 30] = [
        ("Name", text("Hopper Systems 1906")),
        ("Type", text("Customer - Direct")),
        ("BillingAddress.Street", text("1 Market St")),
        ("BillingAddress.City", text("San Francisco")),
        ("BillingAddress.State", text("CA")),
        ("BillingAddress.PostalCode", text("94105")),
        ("BillingAddress.Country", text("USA")),
        ("Phone", text("+1-415-555-0100")),
        ("Fax", text("+1-415-555-0101")),
        ("AccountNumber", text("CD451796")),
        ("Website", text("https://www.hopper.example.com")),
        ("Industry", text("Electronics")),
        ("AnnualRevenue", Value::Float(139_000_000.0)),
        ("NumberOfEmployees", Value::Int(9_000)),
        ("Ownership", text("Public")),
        ("TickerSymbol", text("HOPR")),
        (
            "Description",
            text("Commercial account with a long and friendly description."),
        ),
        ("Rating", text("Hot")),
        ("OwnerId", text("005000000000001AAA")),
        ("LastModifiedDate", Value::Int(1_767_225_600_000)),
        ("LastModifiedById", text("005000000000002AAA")),
        ("PersonMobilePhone", text("+1-415-555-0102")),
        ("PersonEmail", text("grace.hopper@example.com")),
        ("PersonTitle", text("Rear Admiral")),
        ("PersonHasOptedOutOfEmail", Value::Bool(false)),
        ("AccountSource", text("Web")),
        ("CustomerPriority__c", text("High")),
        ("SLA__c", text("Gold")),
        ("Some_Email__c", text("billing@hopper.example.com")),
        ("Amount_Owed__c", Value::Float(1234.5)),
    ];
    event.fields = crate::event::Fields::default();
    let by: std::sync::Arc<str> = "standard".into();
    for (name, value) in fields {
        assert!(
            event.set(name, value, &by),
            "{name} is in the Account schema"
        );
    }
    event.payload = event.encode().expect("the standard event fits its schema");
    event.modified_by = None;
    event
}

pub fn record_id(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:012}AAA")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ReplayId;
    use crate::salesforce::schema::{EventMeta, decode_event};
    use crate::sim::catalog::entity_names;
    use draft::bitmap;

    fn decode(
        entity: &Entity,
        schema: &std::sync::Arc<EventSchema>,
        g: &Generated,
    ) -> crate::event::ChangeEvent {
        let meta = EventMeta {
            org_id: "00D".into(),
            channel: entity.channel.as_str().into(),
            replay_id: ReplayId::new(Bytes::from_static(&[1])),
            event_id: g.event_id.clone(),
        };
        decode_event(schema, meta, g.payload.clone()).unwrap()
    }

    #[test]
    fn generated_events_decode_and_bitmaps_match_the_values() {
        for name in entity_names() {
            let entity = Entity::load(name).unwrap().unwrap();
            for seq in 0..300 {
                let g = generate(
                    &entity,
                    &entity.schema,
                    7,
                    Position { index: seq, seq },
                    false,
                );
                let e = decode(&entity, &entity.schema, &g);
                assert_eq!(e.header.entity_name, entity.name);
                if e.header.change_type == ChangeType::Update {
                    assert!(e.header.changed_fields.contains(&"LastModifiedDate"));
                    for changed in &e.header.changed_fields {
                        let top = changed.split('.').next().unwrap();
                        let at = e.schema.names.index[top] - 1;
                        assert!(e.fields.get(at).is_some(), "{name} {changed}");
                    }
                    for nulled in &e.header.nulled_fields {
                        assert_eq!(
                            e.get(nulled),
                            Some(crate::event::Value::Null),
                            "{name} {nulled}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn same_seed_same_event_other_seed_other_event() {
        let entity = Entity::load("Account").unwrap().unwrap();
        let at = Position { index: 5, seq: 26 };
        let a = generate(&entity, &entity.schema, 7, at, false);
        let b = generate(&entity, &entity.schema, 7, at, false);
        let c = generate(&entity, &entity.schema, 8, at, false);
        assert_eq!(
            (a.event_id.clone(), a.payload.clone()),
            (b.event_id, b.payload)
        );
        assert_ne!(a.event_id, c.event_id);
    }

    #[test]
    fn gap_events_are_header_only() {
        let entity = Entity::load("Contact").unwrap().unwrap();
        let g = generate(
            &entity,
            &entity.schema,
            1,
            Position { index: 0, seq: 1 },
            true,
        );
        let e = decode(&entity, &entity.schema, &g);
        assert!(e.header.change_type.is_gap());
        assert!(e.fields.is_empty(), "{:?}", e.fields);
    }

    #[test]
    fn the_standard_event_has_thirty_fields_and_round_trips() {
        let entity = Entity::load("Account").unwrap().unwrap();
        let event = standard_account_event(&entity);
        let leaves = |v: &crate::event::Value| match v {
            crate::event::Value::Record(children) => children
                .iter()
                .filter(|c| c.value != crate::event::Value::Null)
                .count(),
            crate::event::Value::Null => 0,
            _ => 1,
        };
        assert_eq!(
            event.fields.iter().map(|(_, v)| leaves(v)).sum::<usize>(),
            30
        );
        let meta = EventMeta {
            org_id: "00D".into(),
            channel: "c".into(),
            replay_id: ReplayId::new(Bytes::from_static(&[1])),
            event_id: "e".into(),
        };
        let again = decode_event(&entity.schema, meta, event.payload.clone()).unwrap();
        assert_eq!(again.fields, event.fields);
    }

    #[test]
    fn bitmaps_are_hex_over_positions() {
        assert_eq!(bitmap(&[5, 6, 7, 10, 24, 26, 29, 30]), "0x650004E0");
        assert_eq!(bitmap(&[0]), "0x1");
    }
}
