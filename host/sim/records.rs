//! The simulated org's records (`sim --records N`): each object's records, seeded before
//! any event and changed by the events the bus generates, so that the change stream, the
//! REST API's record reads and Bulk API 2.0 query results tell the same story.
//!
//! Events pick their record as Salesforce's would have one: a create makes a new record,
//! an update or a delete picks a live one, an undelete a deleted one and restores it with
//! the values it had. The choice depends only on the seed and on the records so far, so
//! the same seed with more events extends the same history over the same records.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::event::{ChangeEvent, ChangeType, EventSchema, FieldPath, Fields, Value};
use crate::sim::catalog::Entity;
use crate::sink::typed::{FieldColumn, TypedCell, convert, field_columns};

/// One record. Its id is the object's key prefix and its number (see
/// [`crate::sim::generator::record_id`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub number: u64,
    /// The fields that hold a value, by position among the widest schema's data fields.
    pub fields: Fields,
    pub deleted: bool,
    /// `SystemModstamp`: when it last changed, epoch milliseconds.
    pub modstamp: i64,
}

impl Record {
    pub fn get(&self, top: usize) -> Option<&Value> {
        self.fields.get(top)
    }

    fn set(&mut self, top: usize, value: Value) {
        self.fields.set(top, value);
    }

    /// Sets child `j` of compound field `top` (of `width` children).
    fn set_child(
        &mut self,
        top: usize,
        j: usize,
        width: usize,
        value: Value,
        names: &[crate::event::Name],
    ) {
        let mut children = match self.get(top) {
            Some(Value::Record(children)) => children.clone(),
            _ => names
                .iter()
                .take(width)
                .map(|&name| crate::event::Field {
                    name,
                    value: Value::Null,
                })
                .collect(),
        };
        if let Some(child) = children.get_mut(j) {
            child.value = value;
        }
        if children.iter().all(|c| c.value == Value::Null) {
            self.set(top, Value::Null);
        } else {
            self.set(top, Value::Record(children));
        }
    }
}

/// One object's records by number, and the numbers of its deleted ones.
#[derive(Debug, Default)]
struct Object {
    records: Vec<Record>,
    deleted: Vec<u64>,
}

/// What the next event of an object does, chosen before it is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub change_type: ChangeType,
    pub record: u64,
}

/// Every object's records.
#[derive(Debug)]
pub struct Records {
    objects: Vec<Object>,
}

/// Seeded records' timestamps: a year before the first event.
const SEEDED_MS: i64 = 1_767_225_600_000 - 365 * 86_400_000;

impl Records {
    /// `count` records of each entity, their fields those of a created record (with a name
    /// of their own), as if they were made long before the first event.
    pub fn seeded(entities: &[Arc<Entity>], seed: u64, count: u64) -> Records {
        use crate::sim::generator::{BODY_VARIANTS, Position, assemble, body, change_type_of};
        let creates: Vec<u64> = (0..BODY_VARIANTS)
            .filter(|&v| change_type_of(seed, v) == ChangeType::Create)
            .collect();
        let objects = entities
            .iter()
            .map(|entity| {
                let schema = &entity.schema;
                let bodies: Vec<_> = creates
                    .iter()
                    .map(|&v| body(entity, schema, seed, v, false))
                    .collect();
                let name = schema.names.resolve("Name");
                let records = (0..count)
                    .map(|n| {
                        let at = Position { index: n, seq: n };
                        let body = &bodies[(n as usize * 7919) % bodies.len()];
                        let generated = assemble(entity, schema, seed, at, n, body);
                        let event = decode(entity, schema, &generated);
                        let mut record = Record {
                            number: n,
                            fields: Fields::default(),
                            deleted: false,
                            modstamp: SEEDED_MS + n as i64 * 1000,
                        };
                        record.take_all(&event);
                        if let Some(FieldPath::Top(i)) = name
                            && matches!(record.get(i), Some(Value::Text(_)))
                        {
                            record.set(
                                i,
                                Value::Text(compact_str::format_compact!("{} {n}", entity.name)),
                            );
                        }
                        record
                    })
                    .collect();
                Object {
                    records,
                    deleted: Vec::new(),
                }
            })
            .collect();
        Records { objects }
    }

    /// What the event at bus position `seq` of entity `entity` does: `gap` events hide an
    /// update. Creates make a new record; the others fall back to a create when the object
    /// has no record they could change.
    pub fn choose(&self, entity: usize, seed: u64, seq: u64, gap: bool) -> Choice {
        let object = &self.objects[entity];
        let mut rng =
            StdRng::seed_from_u64(seed ^ seq.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
        let wanted = match rng.random_range(0..100) {
            _ if gap => ChangeType::Update,
            0..15 => ChangeType::Create,
            15..92 => ChangeType::Update,
            92..98 => ChangeType::Delete,
            _ => ChangeType::Undelete,
        };
        let create = Choice {
            change_type: ChangeType::Create,
            record: object.records.len() as u64,
        };
        match wanted {
            ChangeType::Undelete if !object.deleted.is_empty() => Choice {
                change_type: ChangeType::Undelete,
                record: object.deleted[rng.random_range(0..object.deleted.len())],
            },
            ChangeType::Update | ChangeType::Delete | ChangeType::Undelete => {
                let live = object.live_from(rng.random_range(0..object.records.len().max(1)));
                match live {
                    Some(record) => Choice {
                        change_type: if wanted == ChangeType::Delete {
                            ChangeType::Delete
                        } else {
                            ChangeType::Update
                        },
                        record,
                    },
                    None => create,
                }
            }
            _ => create,
        }
    }

    /// The record a restoring UNDELETE brings back.
    pub fn record(&self, entity: usize, number: u64) -> Option<&Record> {
        self.objects.get(entity)?.records.get(number as usize)
    }

    /// Applies a change to its record: `event` is the change as served, except that a gap
    /// event is applied as the update it hides (`event` is then that update).
    pub fn apply(&mut self, entity: usize, choice: Choice, event: &ChangeEvent) {
        let object = &mut self.objects[entity];
        let modstamp = event.header.commit_timestamp;
        let n = choice.record as usize;
        match choice.change_type {
            ChangeType::Create => {
                let mut record = Record {
                    number: choice.record,
                    fields: Fields::default(),
                    deleted: false,
                    modstamp,
                };
                record.take_all(event);
                debug_assert_eq!(n, object.records.len());
                object.records.push(record);
            }
            ChangeType::Update => {
                let record = &mut object.records[n];
                record.take_changes(event);
                record.modstamp = modstamp;
            }
            ChangeType::Delete => {
                let record = &mut object.records[n];
                record.deleted = true;
                record.modstamp = modstamp;
                object.deleted.push(choice.record);
            }
            ChangeType::Undelete => {
                let record = &mut object.records[n];
                record.deleted = false;
                record.modstamp = modstamp;
                object.deleted.retain(|&d| d != choice.record);
            }
            _ => {}
        }
    }

    /// Every record of entity `entity`, deleted ones too.
    pub fn all(&self, entity: usize) -> &[Record] {
        self.objects
            .get(entity)
            .map_or(&[][..], |o| o.records.as_slice())
    }
}

impl Object {
    /// The first live record at or after `start`, wrapping around.
    fn live_from(&self, start: usize) -> Option<u64> {
        let len = self.records.len();
        (0..len)
            .map(|k| (start + k) % len)
            .find(|&i| !self.records[i].deleted)
            .map(|i| i as u64)
    }
}

impl Record {
    /// Every field the event holds (a create, an undelete, a seeded record).
    fn take_all(&mut self, event: &ChangeEvent) {
        for (i, value) in event.fields.iter() {
            self.set(i, value.clone());
        }
    }

    /// The fields an update changed, and those it set to null; the rest keep their value.
    fn take_changes(&mut self, event: &ChangeEvent) {
        let names = &event.schema.names;
        let changed = event.header.changed_fields.iter().map(|n| (n, false));
        let nulled = event.header.nulled_fields.iter().map(|n| (n, true));
        for (name, null) in changed.chain(nulled) {
            match names.resolve(name) {
                Some(FieldPath::Top(i)) => {
                    let value = if null {
                        Value::Null
                    } else {
                        event.fields.get(i).cloned().unwrap_or(Value::Null)
                    };
                    self.set(i, value);
                }
                Some(FieldPath::Child(i, j)) => {
                    let (value, width, children) = match event.fields.get(i) {
                        Some(Value::Record(children)) => (
                            if null {
                                Value::Null
                            } else {
                                children[j].value.clone()
                            },
                            children.len(),
                            children.iter().map(|c| c.name).collect::<Vec<_>>(),
                        ),
                        _ => continue,
                    };
                    self.set_child(i, j, width, value, &children);
                }
                None => {}
            }
        }
    }
}

/// Decodes an event the generator made (it always decodes).
pub fn decode(
    entity: &Entity,
    schema: &Arc<EventSchema>,
    generated: &crate::sim::generator::Generated,
) -> ChangeEvent {
    let meta = crate::salesforce::schema::EventMeta {
        org_id: "".into(),
        channel: entity.channel.as_str().into(),
        replay_id: crate::event::ReplayId::new(bytes::Bytes::new()),
        event_id: generated.event_id.clone(),
    };
    crate::salesforce::schema::decode_event(schema, meta, generated.payload.clone())
        .expect("generated events decode")
}

/// A record's fields as the REST and Bulk APIs name and show them: `Id`, `IsDeleted`,
/// `SystemModstamp`, then one per column of the typed layout (compound fields flattened).
pub struct Shape {
    pub entity: Arc<Entity>,
    pub columns: Vec<FieldColumn>,
}

impl Shape {
    pub fn new(entity: Arc<Entity>, schema: &EventSchema) -> Shape {
        let columns = field_columns(schema).expect("the bundled schemas have typed columns");
        Shape { entity, columns }
    }

    /// Field names in query order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        ["Id", "IsDeleted", "SystemModstamp"]
            .into_iter()
            .chain(self.columns.iter().map(|c| c.name.as_str()))
    }

    /// The value of field `name` of `record` as text, the way Bulk API 2.0 CSV writes it
    /// (`None`: null, an empty cell).
    pub fn text(&self, record: &Record, name: &str) -> Option<String> {
        match name {
            "Id" => Some(crate::sim::generator::record_id(
                self.entity.key_prefix,
                record.number,
            )),
            "IsDeleted" => Some(record.deleted.to_string()),
            "SystemModstamp" => Some(datetime_text(record.modstamp * 1000)),
            _ => {
                let column = self.columns.iter().find(|c| c.name == name)?;
                let value = match (record.get(column.top), column.child) {
                    (Some(Value::Record(children)), Some(j)) => &children.get(j)?.value,
                    (Some(Value::Record(_)), None) | (_, Some(_)) | (None, None) => return None,
                    (Some(value), None) => value,
                };
                cell_text(&convert(value, column.kind))
            }
        }
    }
}

/// `2026-01-01T00:00:00.000Z`, as Salesforce writes a datetime.
pub fn datetime_text(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

fn cell_text(cell: &TypedCell<'_>) -> Option<String> {
    Some(match cell {
        TypedCell::Null => return None,
        TypedCell::Text(t) => t.to_string(),
        TypedCell::Int(v) => v.to_string(),
        TypedCell::Long(v) => v.to_string(),
        TypedCell::Double(v) => v.to_string(),
        TypedCell::Bool(v) => v.to_string(),
        TypedCell::Bytes(v) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(v)
        }
        TypedCell::Date(days) => chrono::DateTime::from_timestamp(i64::from(*days) * 86_400, 0)?
            .date_naive()
            .to_string(),
        TypedCell::Timestamp(us) => datetime_text(*us),
        TypedCell::TextList(items) => items.join(";"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_records_are_distinct_and_repeatable() {
        let entities = vec![Arc::new(Entity::load("Account").unwrap().unwrap())];
        let a = Records::seeded(&entities, 3, 50);
        let b = Records::seeded(&entities, 3, 50);
        assert_eq!(a.all(0), b.all(0));
        let shape = Shape::new(entities[0].clone(), &entities[0].schema);
        let names: std::collections::HashSet<_> = a
            .all(0)
            .iter()
            .map(|r| shape.text(r, "Name").unwrap())
            .collect();
        assert_eq!(names.len(), 50, "each seeded record has a name of its own");
        assert_eq!(
            shape.text(&a.all(0)[7], "Id").unwrap(),
            "001000000000007AAA"
        );
    }
}
