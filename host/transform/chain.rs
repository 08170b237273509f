//! An ordered chain of transforms and what happens when one fails. Outputs of one
//! transform feed the next; a table chosen by one carries through unless a later one
//! chooses another.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::event::{ChangeEvent, ReplayId};
use crate::transform::engine::{
    CallFailure, Instance, LoadedFrom, Program, Runtime, Shared, TransformError,
};
use crate::transform::keys::Keys;
use crate::transform::limits::Limits;
use crate::transform::metrics::GuestMetrics;
use crate::transform::pool::InstanceKey;

/// What to do with an event a transform fails on.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Send the original event to the dead-letter sink with the error; continue.
    #[default]
    DeadLetter,
    /// Pass the event on as if this transform were not in the chain; continue.
    Skip,
    /// Stop the subscription; the checkpoint stays before the event.
    Stop,
}

/// One transform as configured.
#[derive(Clone, Debug)]
pub struct TransformSpec {
    /// The component file's stem: `mask` for `mask.wasm`.
    pub name: String,
    pub path: PathBuf,
    pub config: Vec<(String, String)>,
    pub on_error: OnError,
    pub limits: Limits,
    /// `allow-tables`: qualified tables (`catalog.schema.table`, `*` at the end matches any
    /// rest) the transform may route to beyond the subscription's own catalog and schema.
    pub allow_tables: Vec<String>,
    /// `keys`: the secrets `host.hmac-sha256` hashes with, by name; never given to the guest.
    pub keys: Keys,
    /// `share-instances = false`: only chains of this org use its instances. `None`: any
    /// chain with the same component, configuration, keys and limits may.
    pub scope: Option<String>,
}

/// Counts for one transform.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TransformStats {
    pub name: String,
    pub events_in: u64,
    pub events_out: u64,
    /// Inputs for which it returned no output.
    pub dropped: u64,
    pub dead_lettered: u64,
    /// Failures passed over with `on_error = skip`.
    pub skipped: u64,
    /// Instances replaced (after a trap, N events, or the memory high-water mark).
    pub recycled: u64,
    /// The counters and gauges it defines (`host.counter-add`, `host.gauge-set`).
    pub metrics: GuestMetrics,
}

struct Loaded {
    spec: TransformSpec,
    /// Its name, log budget, metrics and keys, kept across instances.
    shared: Arc<Shared>,
    program: Arc<Program>,
    /// Which idle instances of the pool can serve it.
    key: InstanceKey,
    /// The instance serving the current batch; between batches it is back in the pool.
    instance: Option<Instance>,
    stats: TransformStats,
    /// Bytes of this batch's outputs so far (`max-batch-output-mib`).
    batch_bytes: usize,
    /// The distinct tables it has routed to in this subscription (`max-tables`).
    tables: std::collections::HashSet<String>,
}

/// An event the chain could not pass, with what is needed to dead-letter it: the event's
/// original payload (as received, before any transform) and its identity.
#[derive(Clone, Debug)]
pub struct Failed {
    pub transform: String,
    pub error: String,
    pub org_id: Arc<str>,
    pub channel: Arc<str>,
    pub replay_id: ReplayId,
    pub event_id: String,
    pub schema_id: String,
    pub payload: Bytes,
}

/// An event to write, and where.
#[derive(Debug)]
pub struct Routed {
    pub table: Option<String>,
    pub event: ChangeEvent,
}

#[derive(Debug, Default)]
pub struct ChainOutput {
    pub routed: Vec<Routed>,
    pub failed: Vec<Failed>,
    /// A transform with `on_error = stop` failed: nothing of this batch may be written.
    pub stop: Option<Failed>,
}

pub struct Chain {
    runtime: Arc<Runtime>,
    transforms: Vec<Loaded>,
    /// The subscription's own `catalog.schema` (Zerobus targets): qualified routes inside it
    /// need no allow-list.
    home: Option<String>,
}

impl Chain {
    /// Loads, links and initialises every transform, so a bad component or configuration
    /// fails here, before any event: a configuration that has an idle instance passed its
    /// `init` already; any other gets one, which then waits in the pool.
    pub fn load(runtime: Arc<Runtime>, specs: &[TransformSpec]) -> Result<Chain, TransformError> {
        let mut transforms = Vec::with_capacity(specs.len());
        for spec in specs {
            let started = Instant::now();
            let (program, from) = runtime.program(&spec.name, &spec.path)?;
            let key = InstanceKey::new(&program.digest, spec);
            let shared = Shared::new(&spec.name, &spec.limits, spec.keys.clone());
            let instance = match runtime.pool.take(&key) {
                Some(instance) => instance,
                None => {
                    runtime.pool.started();
                    runtime.instantiate(&shared, &program.pre, &spec.limits, &spec.config)?
                }
            };
            runtime.pool.give_back(key, instance);
            let load_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1e3);
            match from {
                // Thousands of subscriptions of one transform log its loading once.
                LoadedFrom::Loaded => {
                    tracing::debug!(transform = %spec.name, path = %spec.path.display(), load_ms, "Transform loaded (already in this process).")
                }
                LoadedFrom::Cache | LoadedFrom::Compiled => tracing::info!(
                    transform = %spec.name,
                    path = %spec.path.display(),
                    load_ms,
                    from = if from == LoadedFrom::Cache { "cache" } else { "compiled" },
                    "Transform loaded."
                ),
            }
            transforms.push(Loaded {
                stats: TransformStats {
                    name: spec.name.clone(),
                    ..Default::default()
                },
                spec: spec.clone(),
                shared,
                program,
                key,
                instance: None,
                batch_bytes: 0,
                tables: Default::default(),
            });
        }
        Ok(Chain {
            runtime,
            transforms,
            home: None,
        })
    }

    /// The `catalog.schema` the subscription writes to, for routes that name a full table.
    pub fn set_home(&mut self, home: Option<String>) {
        self.home = home;
    }

    pub fn is_empty(&self) -> bool {
        self.transforms.is_empty()
    }

    /// A new chain from the same specs (the component files as they are now), for a reload;
    /// `None` when no component changed. The running chain is untouched: on error, keep
    /// using it.
    pub fn reload(&self) -> Result<Option<Chain>, TransformError> {
        let mut unchanged = true;
        for t in &self.transforms {
            let (program, _) = self.runtime.program(&t.spec.name, &t.spec.path)?;
            unchanged &= Arc::ptr_eq(&program, &t.program);
        }
        if unchanged {
            return Ok(None);
        }
        let specs: Vec<TransformSpec> = self.transforms.iter().map(|t| t.spec.clone()).collect();
        let mut fresh = Chain::load(self.runtime.clone(), &specs)?;
        fresh.home = self.home.clone();
        for (new, old) in fresh.transforms.iter_mut().zip(&self.transforms) {
            let recycled = new.stats.recycled;
            new.stats = old.stats.clone();
            new.stats.recycled += recycled + 1;
            new.tables = old.tables.clone();
            // A reload is a new instance, not a new transform: its metrics go on, with what
            // the new instance's init recorded.
            let earlier = old.shared.metrics();
            new.shared
                .metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .carry(earlier);
        }
        Ok(Some(fresh))
    }

    /// A signal each time a component file may have changed: then [`Chain::reload`].
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.runtime.changes()
    }

    pub fn stats(&self) -> Vec<TransformStats> {
        self.transforms
            .iter()
            .map(|t| TransformStats {
                metrics: t.shared.metrics(),
                ..t.stats.clone()
            })
            .collect()
    }

    /// Runs every event through the chain, then gives the instances back to the pool.
    pub fn run(&mut self, events: Vec<ChangeEvent>) -> ChainOutput {
        let out = self.run_events(events);
        for transform in &mut self.transforms {
            if let Some(instance) = transform.instance.take() {
                self.runtime.pool.give_back(transform.key, instance);
            }
        }
        out
    }

    fn run_events(&mut self, events: Vec<ChangeEvent>) -> ChainOutput {
        let mut out = ChainOutput::default();
        self.transforms.iter_mut().for_each(|t| t.batch_bytes = 0);
        // An event's outputs at each step, in two lists reused for the whole batch.
        let (mut current, mut next) = (Vec::new(), Vec::new());
        out.routed.reserve(events.len());
        for event in events {
            current.push(Routed { table: None, event });
            for transform in &mut self.transforms {
                for Routed { table, event } in current.drain(..) {
                    match transform.process(&self.runtime, self.home.as_deref(), event) {
                        Step::Out(outputs) => {
                            next.extend(outputs.into_iter().map(|(t, event)| Routed {
                                table: t.or_else(|| table.clone()),
                                event,
                            }))
                        }
                        Step::Skip(event) => next.push(Routed { table, event }),
                        Step::DeadLetter(failed) => out.failed.push(failed),
                        Step::Stop(failed) => {
                            out.stop = Some(failed);
                            return out;
                        }
                    }
                }
                std::mem::swap(&mut current, &mut next);
            }
            out.routed.append(&mut current);
        }
        out
    }
}

enum Step {
    Out(Vec<(Option<String>, ChangeEvent)>),
    Skip(ChangeEvent),
    DeadLetter(Failed),
    Stop(Failed),
}

impl Loaded {
    fn process(&mut self, runtime: &Runtime, home: Option<&str>, event: ChangeEvent) -> Step {
        self.stats.events_in += 1;
        if self.instance.is_none() {
            self.instance = runtime.pool.take(&self.key).map(|mut instance| {
                instance.serve(&self.shared);
                instance
            });
        }
        // A guest that keeps events across calls gets a fresh instance before it pins more.
        if self
            .instance
            .as_ref()
            .is_some_and(|i| i.holds_too_much(event.payload.len(), &self.spec.limits))
        {
            tracing::warn!(transform = %self.spec.name, "Transform keeps events across calls; replacing its instance.");
            self.instance = None;
            self.stats.recycled += 1;
        }
        // What a failure names once the guest has the event; the names are copied only then.
        let identity = (
            event.org_id.clone(),
            event.channel.clone(),
            event.replay_id.clone(),
            event.event_id.clone(),
            event.schema.clone(),
            event.payload.clone(),
        );
        let backup = (self.spec.on_error == OnError::Skip).then(|| event.clone());
        let result = match self.instance.as_mut() {
            Some(instance) => instance.process(event, &self.spec.limits),
            None => match runtime.instantiate(
                &self.shared,
                &self.program.pre,
                &self.spec.limits,
                &self.spec.config,
            ) {
                Ok(instance) => {
                    runtime.pool.started();
                    self.instance
                        .insert(instance)
                        .process(event, &self.spec.limits)
                }
                Err(e) => Err(CallFailure::Trap(format!("could not be restarted: {e}"))),
            },
        };
        let result = result.and_then(|(outputs, bytes)| self.admit(home, outputs, bytes));
        match result {
            Ok(outputs) => {
                self.stats.events_out += outputs.len() as u64;
                if outputs.is_empty() {
                    self.stats.dropped += 1;
                }
                self.recycle_if_due();
                Step::Out(outputs)
            }
            Err(failure) => {
                if matches!(failure, CallFailure::Trap(_)) {
                    self.instance = None;
                    self.stats.recycled += 1;
                }
                let error = format!("transform {} {failure}", self.spec.name);
                let (org_id, channel, replay_id, event_id, schema, payload) = identity;
                tracing::error!(transform = %self.spec.name, %replay_id, %error, on_error = ?self.spec.on_error, "Transform failed on an event.");
                let failed = Failed {
                    transform: self.spec.name.clone(),
                    error,
                    org_id,
                    channel,
                    replay_id,
                    event_id,
                    schema_id: schema.id.clone(),
                    payload,
                };
                match (self.spec.on_error, backup) {
                    (OnError::Skip, Some(event)) => {
                        self.stats.skipped += 1;
                        Step::Skip(event)
                    }
                    (OnError::Stop, _) => Step::Stop(failed),
                    _ => {
                        self.stats.dead_lettered += 1;
                        Step::DeadLetter(failed)
                    }
                }
            }
        }
    }

    /// Checks the outputs of one call against the batch's byte budget, the table limit and
    /// where routes may go; counts them in only when all pass.
    fn admit(
        &mut self,
        home: Option<&str>,
        outputs: Vec<(Option<String>, ChangeEvent)>,
        bytes: usize,
    ) -> Result<Vec<(Option<String>, ChangeEvent)>, CallFailure> {
        let limits = &self.spec.limits;
        if self.batch_bytes + bytes > limits.max_batch_output_bytes {
            return Err(CallFailure::Invalid(format!(
                "exceeded max-batch-output-mib: this batch's outputs would pass {} MiB",
                limits.max_batch_output_bytes >> 20
            )));
        }
        let mut new = Vec::new();
        for table in outputs.iter().filter_map(|(t, _)| t.as_deref()) {
            if self.tables.contains(table) || new.iter().any(|n| n == table) {
                continue;
            }
            if table.contains('.') && !route_allowed(table, home, &self.spec.allow_tables) {
                return Err(CallFailure::Invalid(format!(
                    "routed to {table}, outside {}; list it in the transform's allow-tables to permit it",
                    home.map_or_else(
                        || "the subscription's own tables".to_string(),
                        |h| format!("{h}.*")
                    )
                )));
            }
            new.push(table.to_string());
        }
        if self.tables.len() + new.len() > limits.max_tables {
            return Err(CallFailure::Invalid(format!(
                "exceeded max-tables: routing to {} would make more than {} distinct tables in this subscription",
                new[0], limits.max_tables
            )));
        }
        self.tables.extend(new);
        self.batch_bytes += bytes;
        Ok(outputs)
    }

    fn recycle_if_due(&mut self) {
        let due = self.instance.as_ref().is_some_and(|i| {
            i.events() >= self.spec.limits.recycle_after
                || i.memory_in_use() > self.spec.limits.high_water()
        });
        if due {
            self.instance = None;
            self.stats.recycled += 1;
        }
    }
}

/// Whether a route to the qualified `table` is allowed: inside the subscription's own
/// `catalog.schema`, or matched by an `allow-tables` entry (exact, or a prefix ending in `*`).
fn route_allowed(table: &str, home: Option<&str>, allow: &[String]) -> bool {
    let inside = home.is_some_and(|home| {
        table
            .rsplit_once('.')
            .is_some_and(|(schema, _)| schema == home)
    });
    inside
        || allow.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => table.starts_with(prefix),
            None => table == pattern,
        })
}

/// A transform's name from its file: `path/to/tenant-filter.wasm` → `tenant-filter`.
pub fn name_from_path(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "transform".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_stay_home_unless_allowed() {
        let home = Some("main.sales");
        assert!(route_allowed("main.sales.emea", home, &[]));
        assert!(!route_allowed("hr.payroll.salaries", home, &[]));
        assert!(!route_allowed("main.sales_x.t", home, &[]));
        assert!(!route_allowed("main.sales.emea", None, &[]));
        let allow = ["hr.payroll.*".to_string(), "ops.audit.log".to_string()];
        assert!(route_allowed("hr.payroll.salaries", home, &allow));
        assert!(route_allowed("ops.audit.log", None, &allow));
        assert!(!route_allowed("ops.audit.log2", None, &allow));
    }
}
