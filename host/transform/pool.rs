//! Warm instances shared by chains. Subscriptions whose transform has the same component,
//! configuration, keys and limits (and scope, for a transform that keeps each org's events
//! apart) use the same instances: a chain takes one for a batch and gives it back after, so
//! 10,000 subscriptions of one mask hold about as many instances as run at once, not 10,000.
//! Idle instances are kept under a process-wide memory budget, the least recently used
//! dropped first; a chain that finds none starts one (tens of microseconds for a Rust guest).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::chain::TransformSpec;
use super::engine::Instance;

/// What makes instances interchangeable: a digest of the component's contents, the
/// transform's name, configuration, keys (by an HMAC of a fixed text, never the key),
/// limits and scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InstanceKey([u8; 32]);

impl InstanceKey {
    pub fn new(component: &str, spec: &TransformSpec) -> InstanceKey {
        let mut digest = Sha256::new();
        let mut field = |bytes: &[u8]| {
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(bytes);
        };
        field(component.as_bytes());
        field(spec.name.as_bytes());
        for (key, value) in &spec.config {
            field(key.as_bytes());
            field(value.as_bytes());
        }
        field(b"keys");
        for (name, fingerprint) in spec.keys.fingerprints() {
            field(name.as_bytes());
            field(&fingerprint);
        }
        field(format!("{:?}", spec.limits).as_bytes());
        field(spec.scope.as_deref().unwrap_or("").as_bytes());
        InstanceKey(digest.finalize().into())
    }
}

/// Figures for `/metrics`.
#[derive(Debug, Default)]
pub struct PoolFigures {
    /// Instances started (a chain found no idle one), since the process started.
    pub started: AtomicU64,
    /// Idle instances dropped to stay within the budget.
    pub evicted: AtomicU64,
    pub idle: AtomicU64,
    pub idle_bytes: AtomicU64,
    /// `transform-idle-mib`, in bytes.
    pub budget: u64,
}

pub struct Pool {
    budget: usize,
    idle: Mutex<Idle>,
    pub figures: Arc<PoolFigures>,
}

#[derive(Default)]
struct Idle {
    /// Per key, oldest first: a chain takes the newest (warmest), eviction the oldest.
    by_key: HashMap<InstanceKey, Vec<(u64, Instance)>>,
    /// Every idle instance by when it was given back.
    order: BTreeMap<u64, InstanceKey>,
    bytes: usize,
    clock: u64,
}

impl Pool {
    /// A pool keeping at most `budget` bytes of idle instances' memory.
    pub fn new(budget: usize) -> Pool {
        Pool {
            budget,
            idle: Mutex::new(Idle::default()),
            figures: Arc::new(PoolFigures {
                budget: budget as u64,
                ..Default::default()
            }),
        }
    }

    /// An idle instance for `key`, the most recently used.
    pub fn take(&self, key: &InstanceKey) -> Option<Instance> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.by_key.get_mut(key)?;
        let (stamp, instance) = list.pop()?;
        if list.is_empty() {
            idle.by_key.remove(key);
        }
        idle.order.remove(&stamp);
        idle.bytes -= footprint(&instance);
        self.publish(&idle);
        Some(instance)
    }

    /// Counts an instance a chain started because none was idle.
    pub fn started(&self) {
        self.figures.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives an instance back; past the budget the least recently used idle ones are
    /// dropped (outside the lock: dropping a store unmaps its memory).
    pub fn give_back(&self, key: InstanceKey, instance: Instance) {
        let mut dropped = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.clock += 1;
            let stamp = idle.clock;
            idle.bytes += footprint(&instance);
            idle.by_key.entry(key).or_default().push((stamp, instance));
            idle.order.insert(stamp, key);
            while idle.bytes > self.budget {
                let Some((_, oldest)) = idle.order.pop_first() else {
                    break;
                };
                let list = idle.by_key.get_mut(&oldest).expect("ordered keys are held");
                let (_, instance) = list.remove(0);
                if list.is_empty() {
                    idle.by_key.remove(&oldest);
                }
                idle.bytes -= footprint(&instance);
                dropped.push(instance);
            }
            self.publish(&idle);
        }
        self.figures
            .evicted
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
    }

    fn publish(&self, idle: &Idle) {
        self.figures
            .idle
            .store(idle.order.len() as u64, Ordering::Relaxed);
        self.figures
            .idle_bytes
            .store(idle.bytes as u64, Ordering::Relaxed);
    }
}

/// What an idle instance is counted as: its linear memories (what the guest grew them to;
/// pages it never touched take no memory, so this is an upper bound) and the store around
/// them.
fn footprint(instance: &Instance) -> usize {
    const STORE: usize = 64 << 10;
    instance.memory_in_use() + STORE
}
