//! The simulated event bus: one ordered log of change events with 8-byte replay ids and a
//! bounded retention window. Generated events are stored as positions and encoded on
//! read, so a million-event backlog costs a few bytes per event.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::event::ChangeType;
use crate::sim::catalog::Entity;
use crate::sim::generator::{self, Generated, Position};
use crate::sim::records::{self, Records};

/// Faults the bus applies to the events it serves.
#[derive(Clone, Debug, Default)]
pub struct EventFaults {
    /// Bus positions (1-based, = replay id) whose payload is served corrupted.
    pub corrupt_at: Vec<u64>,
    /// From this bus position on, events use their entity's changed schema.
    pub schema_change_at: Option<u64>,
    /// Every Nth event of each entity is a gap event.
    pub gap_every: Option<u64>,
    /// Bus positions served as a `ConsumerEvent` that holds a replay id and no event.
    pub empty_at: Vec<u64>,
    /// The bus position of a GAP_OVERFLOW event (with records only): the records change
    /// (see [`OVERFLOW_CHANGES`]) and no event describes how.
    pub overflow_at: Option<u64>,
}

/// Records an overflow changes without an event: updates, and every fifth a delete.
pub const OVERFLOW_CHANGES: u64 = 30;

#[derive(Clone, Debug)]
enum Slot {
    Generated {
        entity: u16,
        index: u64,
    },
    /// A change of the org's records (`--records`): its body and its record.
    Change {
        entity: u16,
        index: u64,
        variant: u64,
        record: u64,
    },
    Published {
        entity: u16,
        event: Arc<Generated>,
    },
}

impl Slot {
    fn entity(&self) -> u16 {
        match self {
            Slot::Generated { entity, .. }
            | Slot::Change { entity, .. }
            | Slot::Published { entity, .. } => *entity,
        }
    }
}

struct Log {
    /// Bus position of `slots[0]`; positions start at 1.
    first: u64,
    slots: VecDeque<Slot>,
    next_index: Vec<u64>,
    /// The org's records, when its events change them.
    records: Option<Records>,
}

/// An event read from the bus, ready to serve.
#[derive(Clone, Debug)]
pub struct BusEvent {
    pub seq: u64,
    pub event_id: String,
    pub schema_id: String,
    pub payload: Bytes,
    /// Served without its event (a fault).
    pub empty: bool,
}

pub struct Bus {
    pub entities: Vec<Arc<Entity>>,
    seed: u64,
    retention: usize,
    faults: EventFaults,
    log: std::sync::Mutex<Log>,
    head: watch::Sender<u64>,
    bodies: Arc<Bodies>,
}

type BodyKey = (&'static str, String, u64, bool);

/// Encoded event bodies by entity, schema, variant and gap (see `generator::Body`), built
/// from one seed and shared by every org's bus: ten thousand orgs cost no more bodies
/// than one. Each bus picks among them by its own seed and assembles its own headers.
pub struct Bodies {
    seed: u64,
    cache: std::sync::Mutex<HashMap<BodyKey, Arc<generator::Body>>>,
}

impl Bodies {
    pub fn new(seed: u64) -> Arc<Bodies> {
        Arc::new(Bodies {
            seed,
            cache: Default::default(),
        })
    }

    fn get(
        &self,
        entity: &Entity,
        schema: &crate::event::EventSchema,
        variant: u64,
        gap: bool,
    ) -> Arc<generator::Body> {
        let key = (entity.name, schema.id.clone(), variant, gap);
        let lock = || self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(body) = lock().get(&key) {
            return body.clone();
        }
        // Built outside the lock: another stream may build the same body meanwhile, and
        // both are the same.
        let body = Arc::new(generator::body(entity, schema, self.seed, variant, gap));
        lock().insert(key, body.clone());
        body
    }
}

impl Bus {
    /// A bus holding `events_per_entity` events of each entity, interleaved round-robin so
    /// that a larger count extends the same sequence. `seed` picks its events' bodies and
    /// makes their ids and transaction keys. With `records`, the org starts with that many
    /// records of each entity, and its events change them.
    pub fn new(
        entities: Vec<Arc<Entity>>,
        seed: u64,
        events_per_entity: u64,
        retention: usize,
        faults: EventFaults,
        bodies: Arc<Bodies>,
        records: Option<u64>,
    ) -> Self {
        let records = records.map(|count| Records::seeded(&entities, seed, count));
        let bus = Bus {
            seed,
            retention: retention.max(1),
            faults,
            log: std::sync::Mutex::new(Log {
                first: 1,
                slots: VecDeque::new(),
                next_index: vec![0; entities.len()],
                records,
            }),
            head: watch::channel(0).0,
            bodies,
            entities,
        };
        bus.generate_rounds(events_per_entity);
        bus
    }

    /// Appends `rounds` events for every entity.
    pub fn generate_rounds(&self, rounds: u64) {
        let mut log = self.lock();
        for _ in 0..rounds {
            for entity in 0..self.entities.len() {
                let index = log.next_index[entity];
                log.next_index[entity] += 1;
                let slot = match log.records.is_some() {
                    true => {
                        let seq = log.first + log.slots.len() as u64;
                        self.change(&mut log, entity, index, seq)
                    }
                    false => Slot::Generated {
                        entity: entity as u16,
                        index,
                    },
                };
                log.slots.push_back(slot);
            }
        }
        self.trim_and_announce(log);
    }

    /// The next change of `entity`'s records, at bus position `seq`, applied to them.
    fn change(&self, log: &mut Log, entity: usize, index: u64, seq: u64) -> Slot {
        if self.faults.overflow_at == Some(seq) {
            return self.overflow(log, entity, index, seq);
        }
        let records = log.records.as_mut().expect("called with records");
        let gap = self.is_gap(index);
        let choice = records.choose(entity, self.seed, seq, gap);
        let object = &self.entities[entity];
        let schema = self.schema_at(object, seq);
        let at = Position { index, seq };
        if choice.change_type == ChangeType::Undelete {
            let record = records
                .record(entity, choice.record)
                .expect("undeletes choose a record");
            let body =
                generator::restoring(schema, &record.fields, &generator::record_id("005", 1));
            let event = generator::assemble(object, schema, self.seed, at, choice.record, &body);
            records.apply(entity, choice, &records::decode(object, schema, &event));
            return Slot::Published {
                entity: entity as u16,
                event: Arc::new(event),
            };
        }
        let variant = self.variant_of(seq, choice.change_type);
        // A gap event hides the update it stands for: the records take that update.
        let body = self.bodies.get(object, schema, variant, false);
        let event = generator::assemble(object, schema, self.seed, at, choice.record, &body);
        records.apply(entity, choice, &records::decode(object, schema, &event));
        Slot::Change {
            entity: entity as u16,
            index,
            variant,
            record: choice.record,
        }
    }

    /// A GAP_OVERFLOW at `seq`: [`OVERFLOW_CHANGES`] changes of `entity`'s records (each an
    /// update as the bus makes them, every fifth a delete instead) that no event describes,
    /// and the overflow event, which names no record.
    fn overflow(&self, log: &mut Log, entity: usize, index: u64, seq: u64) -> Slot {
        let records = log.records.as_mut().expect("called with records");
        let object = &self.entities[entity];
        let schema = self.schema_at(object, seq);
        let at = Position { index, seq };
        for k in 0..OVERFLOW_CHANGES {
            // Positions of their own for the choice and the body, past any the bus serves.
            let hidden = seq.wrapping_mul(1_000_003).wrapping_add(k) | 1 << 63;
            let mut choice = records.choose(entity, self.seed, hidden, true);
            if choice.change_type != ChangeType::Update {
                continue;
            }
            if k % 5 == 4 {
                choice.change_type = ChangeType::Delete;
            }
            let variant = self.variant_of(hidden, ChangeType::Update);
            let body = self.bodies.get(object, schema, variant, false);
            let event = generator::assemble(object, schema, self.seed, at, choice.record, &body);
            records.apply(entity, choice, &records::decode(object, schema, &event));
        }
        let gap = self.bodies.get(object, schema, 0, true);
        let event = generator::assemble(
            object,
            schema,
            self.seed,
            at,
            0,
            &generator::overflowing(&gap),
        );
        Slot::Published {
            entity: entity as u16,
            event: Arc::new(event),
        }
    }

    /// The body for the event at `seq` that makes a change of type `wanted`: the first
    /// such variant from the one `seq` picks.
    fn variant_of(&self, seq: u64, wanted: ChangeType) -> u64 {
        let start = generator::variant(self.seed, seq);
        (0..generator::BODY_VARIANTS)
            .map(|k| (start + k) % generator::BODY_VARIANTS)
            .find(|&v| generator::change_type_of(self.bodies.seed, v) == wanted)
            .unwrap_or(start)
    }

    fn is_gap(&self, index: u64) -> bool {
        self.faults
            .gap_every
            .is_some_and(|n| n > 0 && (index + 1) % n == 0)
    }

    fn schema_at<'e>(&self, entity: &'e Entity, seq: u64) -> &'e Arc<crate::event::EventSchema> {
        match self.faults.schema_change_at {
            Some(at) if seq >= at => &entity.changed_schema,
            _ => &entity.schema,
        }
    }

    /// The schema `entity`'s events use now.
    pub fn current_schema(&self, entity: &Entity) -> Arc<crate::event::EventSchema> {
        self.schema_at(entity, self.head().max(1)).clone()
    }

    /// Runs `f` on the org's records, when its events change them (`--records`), with the
    /// newest bus position they reflect.
    pub fn with_records<T>(&self, f: impl FnOnce(&Records, u64) -> T) -> Option<T> {
        let log = self.lock();
        let head = log.first + log.slots.len() as u64 - 1;
        log.records.as_ref().map(|records| f(records, head))
    }

    /// Appends a published event and returns its bus position.
    pub fn publish(&self, entity: u16, event: Generated) -> u64 {
        let mut log = self.lock();
        log.slots.push_back(Slot::Published {
            entity,
            event: Arc::new(event),
        });
        let seq = log.first + log.slots.len() as u64 - 1;
        self.trim_and_announce(log);
        seq
    }

    fn trim_and_announce(&self, mut log: std::sync::MutexGuard<'_, Log>) {
        while log.slots.len() > self.retention {
            log.slots.pop_front();
            log.first += 1;
        }
        let head = log.first + log.slots.len() as u64 - 1;
        drop(log);
        self.head.send_replace(head);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest bus position (0 when empty).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// The oldest retained position.
    pub fn first(&self) -> u64 {
        self.lock().first
    }

    /// Up to `max` events at positions ≥ `from` of the given entity (all when `None`), and
    /// the position after the last one examined.
    pub fn read(&self, from: u64, entity: Option<u16>, max: usize) -> (Vec<BusEvent>, u64) {
        let mut picked = Vec::new();
        let next = {
            let log = self.lock();
            let mut seq = from.max(log.first);
            let end = log.first + log.slots.len() as u64;
            while seq < end && picked.len() < max {
                let slot = &log.slots[(seq - log.first) as usize];
                if entity.is_none_or(|e| e == slot.entity()) {
                    picked.push((seq, slot.clone()));
                }
                seq += 1;
            }
            seq
        };
        let events = picked
            .into_iter()
            .map(|(seq, slot)| self.materialize(seq, slot))
            .collect();
        (events, next)
    }

    fn materialize(&self, seq: u64, slot: Slot) -> BusEvent {
        let mut generated = match slot {
            Slot::Published { event, .. } => (*event).clone(),
            Slot::Generated { entity, index } => {
                let entity = &self.entities[entity as usize];
                let schema = self.schema_at(entity, seq);
                let variant = generator::variant(self.seed, seq);
                let body = self.bodies.get(entity, schema, variant, self.is_gap(index));
                let at = Position { index, seq };
                generator::assemble(entity, schema, self.seed, at, index / 3, &body)
            }
            Slot::Change {
                entity,
                index,
                variant,
                record,
            } => {
                let entity = &self.entities[entity as usize];
                let schema = self.schema_at(entity, seq);
                let body = self.bodies.get(entity, schema, variant, self.is_gap(index));
                let at = Position { index, seq };
                generator::assemble(entity, schema, self.seed, at, record, &body)
            }
        };
        if self.faults.corrupt_at.contains(&seq) {
            // Truncated mid-record with garbage varints: no Avro reader can decode it.
            generated.payload = Bytes::from_static(&[0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        }
        BusEvent {
            seq,
            event_id: generated.event_id,
            schema_id: generated.schema_id,
            payload: generated.payload,
            empty: self.faults.empty_at.contains(&seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::generator::{parse_replay_id, replay_id};

    fn entities() -> Vec<Arc<Entity>> {
        ["Account", "Contact"]
            .iter()
            .map(|n| Arc::new(Entity::load(n).unwrap().unwrap()))
            .collect()
    }

    #[test]
    fn more_events_extend_the_same_sequence() {
        let small = Bus::new(
            entities(),
            7,
            10,
            1000,
            EventFaults::default(),
            Bodies::new(7),
            None,
        );
        let large = Bus::new(
            entities(),
            7,
            15,
            1000,
            EventFaults::default(),
            Bodies::new(7),
            None,
        );
        let (a, _) = small.read(1, None, 100);
        let (b, _) = large.read(1, None, 100);
        assert_eq!(a.len(), 20);
        assert_eq!(b.len(), 30);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.seq, &x.event_id, &x.payload),
                (y.seq, &y.event_id, &y.payload)
            );
        }
    }

    #[test]
    fn cached_bodies_serve_the_same_events_as_uncached_generation() {
        let bus = Bus::new(
            entities(),
            3,
            600,
            10_000,
            EventFaults::default(),
            Bodies::new(3),
            None,
        );
        let (events, _) = bus.read(1, None, 1200);
        for e in events.iter().step_by(7) {
            let entity = &bus.entities[((e.seq - 1) % 2) as usize];
            let at = Position {
                index: (e.seq - 1) / 2,
                seq: e.seq,
            };
            let direct = generator::generate(entity, &entity.schema, 3, at, false);
            assert_eq!(
                (&direct.event_id, &direct.payload),
                (&e.event_id, &e.payload),
                "seq {}",
                e.seq
            );
        }
    }

    /// Replays the stream's record ids and change types: every update and delete names a
    /// live record, every create a new one, every undelete a deleted one; and the records
    /// end as the stream says.
    #[test]
    fn with_records_events_change_records_that_exist() {
        use crate::sim::records::decode;
        use std::collections::HashMap;
        let faults = EventFaults {
            gap_every: Some(25),
            ..Default::default()
        };
        let bus = Bus::new(entities(), 5, 600, 10_000, faults, Bodies::new(5), Some(20));
        let mut state: Vec<HashMap<String, bool>> = (0..2)
            .map(|e| {
                (0..20)
                    .map(|n| {
                        let prefix = bus.entities[e].key_prefix;
                        (generator::record_id(prefix, n), true)
                    })
                    .collect()
            })
            .collect();
        let (events, _) = bus.read(1, None, 2000);
        let mut seen = HashMap::<ChangeType, usize>::new();
        for e in &events {
            let entity = ((e.seq - 1) % 2) as usize;
            let object = &bus.entities[entity];
            let schema = bus.schema_at(object, e.seq);
            let generated = Generated {
                event_id: e.event_id.clone(),
                schema_id: e.schema_id.clone(),
                payload: e.payload.clone(),
            };
            let event = decode(object, schema, &generated);
            let id = event.header.record_ids[0].clone();
            let live = state[entity].get(&id).copied();
            let kind = event.header.change_type;
            *seen.entry(kind).or_default() += 1;
            match kind {
                ChangeType::Create => assert_eq!(live, None, "{id} is new"),
                ChangeType::Update | ChangeType::GapUpdate | ChangeType::Delete => {
                    assert_eq!(live, Some(true), "{kind:?} of {id}")
                }
                ChangeType::Undelete => assert_eq!(live, Some(false), "undelete of {id}"),
                other => panic!("unexpected {other:?}"),
            }
            state[entity].insert(id, kind != ChangeType::Delete);
        }
        for kind in [
            ChangeType::Create,
            ChangeType::Update,
            ChangeType::Delete,
            ChangeType::Undelete,
            ChangeType::GapUpdate,
        ] {
            assert!(seen.get(&kind).is_some_and(|&n| n > 0), "some {kind:?}");
        }
        bus.with_records(|records, head| {
            assert_eq!(head, 1200);
            for (entity, expected) in state.iter().enumerate() {
                let prefix = bus.entities[entity].key_prefix;
                let actual: HashMap<String, bool> = records
                    .all(entity)
                    .iter()
                    .map(|r| (generator::record_id(prefix, r.number), !r.deleted))
                    .collect();
                assert_eq!(&actual, expected);
            }
        })
        .expect("the bus keeps records");
        let longer = Bus::new(
            entities(),
            5,
            700,
            10_000,
            EventFaults {
                gap_every: Some(25),
                ..Default::default()
            },
            Bodies::new(5),
            Some(20),
        );
        let (more, _) = longer.read(1, None, 2000);
        for (a, b) in events.iter().zip(&more) {
            assert_eq!((&a.event_id, &a.payload), (&b.event_id, &b.payload));
        }
    }

    /// The overflow event names no record and holds no field, yet the records it stands
    /// for changed: compared with the same bus one event earlier, some were updated and
    /// some deleted, and none was made.
    #[test]
    fn an_overflow_changes_records_no_event_describes() {
        let account = vec![entities().remove(0)];
        let before = Bus::new(
            account.clone(),
            9,
            39,
            1000,
            EventFaults::default(),
            Bodies::new(9),
            Some(100),
        );
        let faults = EventFaults {
            overflow_at: Some(40),
            ..Default::default()
        };
        let after = Bus::new(account, 9, 40, 1000, faults, Bodies::new(9), Some(100));
        let (events, _) = after.read(40, None, 1);
        let object = &after.entities[0];
        let generated = Generated {
            event_id: events[0].event_id.clone(),
            schema_id: events[0].schema_id.clone(),
            payload: events[0].payload.clone(),
        };
        let event = crate::sim::records::decode(object, &object.schema, &generated);
        assert_eq!(event.header.change_type, ChangeType::GapOverflow);
        assert_eq!(event.header.record_ids, ["000000000000000AAA"]);
        assert!(event.fields.is_empty(), "a gap has no values");
        let old = before.with_records(|r, _| r.all(0).to_vec()).unwrap();
        let new = after.with_records(|r, _| r.all(0).to_vec()).unwrap();
        assert_eq!(old.len(), new.len(), "an overflow here makes no record");
        let changed = old.iter().zip(&new).filter(|(a, b)| a != b).count();
        let deleted = old
            .iter()
            .zip(&new)
            .filter(|(a, b)| !a.deleted && b.deleted)
            .count();
        let updated = old
            .iter()
            .zip(&new)
            .filter(|(a, b)| !b.deleted && a.fields != b.fields)
            .count();
        assert!(
            changed as u64 <= OVERFLOW_CHANGES && deleted > 0 && updated > 0,
            "{changed} changed, {deleted} deleted, {updated} updated"
        );
    }

    #[test]
    fn reads_filter_by_entity_and_respect_retention() {
        let bus = Bus::new(
            entities(),
            1,
            10,
            8,
            EventFaults::default(),
            Bodies::new(1),
            None,
        );
        assert_eq!(bus.head(), 20);
        assert_eq!(bus.first(), 13);
        let (events, next) = bus.read(1, Some(1), 100);
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [14, 16, 18, 20]
        );
        assert_eq!(next, 21);
        assert_eq!(parse_replay_id(&replay_id(42)), Some(42));
        assert_eq!(parse_replay_id(b"short"), None);
    }
}
