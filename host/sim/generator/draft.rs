//! One generated event's record: the values of the fields a change sets, its header
//! and its field bitmaps.

use super::values::{value_for, wrap};
use super::*;

/// The values of one generated event, and which fields it changed or nulled.
struct Draft<'a> {
    root: &'a apache_avro::schema::RecordSchema,
    schema: &'a EventSchema,
    values: Vec<Avro>,
    changed: Vec<usize>,
    /// Compound fields changed, with the children that changed.
    nested: Vec<(usize, Vec<usize>)>,
    nulled: Vec<usize>,
}

impl<'a> Draft<'a> {
    fn new(schema: &'a EventSchema) -> Draft<'a> {
        let Schema::Record(root) = &schema.avro else {
            unreachable!("parse_schema accepts only records")
        };
        Draft {
            root,
            schema,
            values: vec![Avro::Null; root.fields.len()],
            changed: Vec::new(),
            nested: Vec::new(),
            nulled: Vec::new(),
        }
    }

    /// The fields a generator may set: every field but the header and the system ones.
    fn data_fields(&self) -> Vec<usize> {
        (1..self.root.fields.len())
            .filter(|&i| !SYSTEM_FIELDS.contains(&self.root.fields[i].name.as_str()))
            .collect()
    }

    /// The audit fields Salesforce sets on every change (and on creation, the created ones).
    fn system(&mut self, commit_ts: i64, user: &str, create: bool) {
        for (i, f) in self.root.fields.iter().enumerate() {
            let v = match f.name.as_str() {
                "LastModifiedDate" => Avro::Long(commit_ts),
                "LastModifiedById" => Avro::String(user.to_string()),
                "CreatedDate" if create => Avro::Long(commit_ts),
                "CreatedById" if create => Avro::String(user.to_string()),
                _ => continue,
            };
            self.values[i] = v;
            if !create {
                self.changed.push(i);
            }
        }
    }

    /// A new record: some fields set, always its name. Creates carry no changed fields.
    fn create(&mut self, rng: &mut StdRng) {
        let data = self.data_fields();
        let count = rng.random_range(6..14).min(data.len());
        for &i in pick(rng, &data, count).iter() {
            let f = &self.root.fields[i];
            self.values[i] = value_for(rng, &f.name, &f.schema, self.schema, None);
        }
        if let Some(i) = self.root.fields.iter().position(|f| f.name == "Name") {
            let f = &self.root.fields[i];
            self.values[i] = value_for(rng, "Name", &f.schema, self.schema, None);
        }
    }

    /// A few fields changed, about one in ten of them to null.
    fn update(&mut self, rng: &mut StdRng) {
        let data = self.data_fields();
        let count = rng.random_range(1..6).min(data.len());
        for &i in pick(rng, &data, count).iter() {
            let field = &self.root.fields[i];
            if rng.random_range(0..10) == 0 && field.name != ADDED_FIELD {
                self.nulled.push(i);
                continue;
            }
            let mut children = Vec::new();
            self.values[i] = value_for(
                rng,
                &field.name,
                &field.schema,
                self.schema,
                Some(&mut children),
            );
            self.changed.push(i);
            if !children.is_empty() {
                self.nested.push((i, children));
            }
        }
    }

    /// The header's `changedFields` and `nulledFields` bitmaps.
    fn bitmaps(&self) -> (Vec<String>, Vec<String>) {
        let mut changed = Vec::new();
        if !self.changed.is_empty() {
            changed.push(bitmap(&self.changed));
            changed.extend(
                self.nested
                    .iter()
                    .map(|(p, c)| format!("{p}-{}", bitmap(c))),
            );
        }
        let nulled = if self.nulled.is_empty() {
            Vec::new()
        } else {
            vec![bitmap(&self.nulled)]
        };
        (changed, nulled)
    }

    /// The record, with `header` first and every other value wrapped in its union.
    fn finish(self, header: Avro) -> Avro {
        let mut values = self.values;
        values[0] = header;
        let record = self
            .root
            .fields
            .iter()
            .zip(values)
            .map(|(f, v)| {
                let v = if f.name == "ChangeEventHeader" {
                    v
                } else {
                    wrap(&f.schema, v)
                };
                (f.name.clone(), v)
            })
            .collect();
        Avro::Record(record)
    }
}

pub(super) fn build(
    entity: &Entity,
    schema: &EventSchema,
    rng: &mut StdRng,
    at: Position,
    change_type: ChangeType,
    record_id: &str,
) -> Avro {
    let commit_ts = EPOCH_MS + at.seq as i64 * 1000;
    let user = record_id_for_user(rng);
    let mut draft = Draft::new(schema);
    match change_type {
        ChangeType::Create | ChangeType::Undelete => {
            draft.system(commit_ts, &user, true);
            draft.create(rng);
        }
        ChangeType::Update => {
            draft.system(commit_ts, &user, false);
            draft.update(rng);
        }
        _ => {}
    }
    let (changed, nulled) = draft.bitmaps();
    let header = header(
        entity,
        at,
        change_type,
        record_id,
        &user,
        commit_ts,
        rng,
        changed,
        nulled,
    );
    draft.finish(header)
}

#[allow(clippy::too_many_arguments)]
fn header(
    entity: &Entity,
    at: Position,
    change_type: ChangeType,
    record_id: &str,
    user: &str,
    commit_ts: i64,
    rng: &mut StdRng,
    changed: Vec<String>,
    nulled: Vec<String>,
) -> Avro {
    let strings = |v: Vec<String>| Avro::Array(v.into_iter().map(Avro::String).collect());
    let type_index = ChangeType::ALL
        .iter()
        .position(|t| *t == change_type)
        .unwrap_or(0) as u32;
    Avro::Record(vec![
        ("entityName".into(), Avro::String(entity.name.into())),
        ("recordIds".into(), strings(vec![record_id.to_string()])),
        (
            "changeType".into(),
            Avro::Enum(type_index, change_type.as_str().into()),
        ),
        (
            "changeOrigin".into(),
            Avro::String("com/salesforce/api/soap/62.0;client=sfzb-sim".into()),
        ),
        (
            "transactionKey".into(),
            Avro::String(format!("{:016x}-{:08x}", rng.random::<u64>(), at.seq)),
        ),
        ("sequenceNumber".into(), Avro::Int(1)),
        ("commitTimestamp".into(), Avro::Long(commit_ts)),
        (
            "commitNumber".into(),
            Avro::Long(11_000_000_000 + at.seq as i64),
        ),
        ("commitUser".into(), Avro::String(user.into())),
        ("nulledFields".into(), strings(nulled)),
        ("diffFields".into(), strings(Vec::new())),
        ("changedFields".into(), strings(changed)),
    ])
}

fn record_id_for_user(rng: &mut StdRng) -> String {
    record_id("005", rng.random_range(1..20))
}

/// `0x…` with bit N set for each position N, as Salesforce writes them.
pub(super) fn bitmap(positions: &[usize]) -> String {
    let top = positions.iter().copied().max().unwrap_or(0);
    let mut nibbles = vec![0u8; top / 4 + 1];
    for &p in positions {
        nibbles[p / 4] |= 1 << (p % 4);
    }
    let digits: String = nibbles
        .iter()
        .rev()
        .map(|n| char::from_digit(u32::from(*n), 16).unwrap_or('0'))
        .collect();
    format!("0x{}", digits.to_uppercase())
}

fn pick(rng: &mut StdRng, from: &[usize], count: usize) -> Vec<usize> {
    let mut chosen: Vec<usize> = rand::seq::index::sample(rng, from.len(), count)
        .into_iter()
        .map(|i| from[i])
        .collect();
    chosen.sort_unstable();
    chosen
}
