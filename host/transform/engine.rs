//! The wasmtime side: one Engine and Linker per process, components compiled once (cached
//! on disk, and loaded once per process), the host half of the WIT contract, and warm
//! instances shared by the chains that can use them ([`super::pool`]).
//! WASI is linked because guest toolchains import it, but it grants nothing: no files,
//! network, environment, arguments or stdin; stdout and stderr become log lines
//! ([`super::stdio`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::WasiCtx;

use crate::event::ChangeEvent;
use crate::transform::keys::Keys;
use crate::transform::limits::{EpochTicker, Limits, LogBudget, MemoryCap};
use crate::transform::metrics::GuestMetrics;
use crate::transform::pool::Pool;
use crate::transform::stdio::GuestOutput;

wasmtime::component::bindgen!({
    path: "wit",
    world: "transform",
    with: { "sfzb:transform/types.event": crate::event::ChangeEvent },
    imports: { default: trappable },
});

/// The contract this host implements (`wit/transform.wit`); components built against an
/// earlier 0.1 patch link too (wasmtime matches semver-compatible imports).
pub const CONTRACT: &str = "sfzb:transform@0.1.1";

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("cannot read transform {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable component: {detail}")]
    Compile { path: PathBuf, detail: String },
    #[error(
        "transform {name} needs something sfzb-host does not provide: {detail}. Transforms get only the sfzb:transform host interface and WASI without files, network or environment; build JavaScript guests with `--disable http fetch-event`"
    )]
    Link { name: String, detail: String },
    #[error(
        "transform {name} was built against {built}, which this sfzb-host does not run (it implements {CONTRACT}): rebuild it against this host's wit/transform.wit (`sfzb-host transform init` writes it) — Rust: cargo build --release --target wasm32-wasip2; Python: componentize-py -d wit -w transform componentize app -o {name}.wasm; JavaScript: jco componentize … --wit wit"
    )]
    Contract { name: String, built: String },
    #[error("transform {name} refused its configuration: {message}")]
    Init { name: String, message: String },
    #[error("transform {name} failed to start: {detail}")]
    Start { name: String, detail: String },
    #[error("cannot set up the Wasm engine: {0}")]
    Engine(String),
}

impl TransformError {
    pub fn is_retryable(&self) -> bool {
        match self {
            TransformError::Read { .. }
            | TransformError::Compile { .. }
            | TransformError::Link { .. }
            | TransformError::Contract { .. }
            | TransformError::Init { .. }
            | TransformError::Start { .. }
            | TransformError::Engine(_) => false,
        }
    }
}

/// The least time `init` may take.
const INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What one subscription's transform keeps whichever instance serves it, so a guest that
/// traps (and is replaced) cannot reset it: its name, log budget, metrics and keys.
pub struct Shared {
    pub name: Arc<str>,
    pub log: std::sync::Mutex<LogBudget>,
    pub metrics: std::sync::Mutex<GuestMetrics>,
    pub keys: Keys,
}

impl Shared {
    pub fn new(name: &str, limits: &Limits, keys: Keys) -> Arc<Shared> {
        Arc::new(Shared {
            name: Arc::from(name),
            log: std::sync::Mutex::new(LogBudget::new(limits.max_log_lines_per_sec)),
            metrics: Default::default(),
            keys,
        })
    }

    pub fn metrics(&self) -> GuestMetrics {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Per-store state: WASI (denied), the resource table holding events, the memory cap, and
/// what the current call has made the host hold.
pub struct State {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) memory: MemoryCap,
    pub(super) shared: Arc<Shared>,
    /// The same, for the guest's stdout and stderr streams (they outlive a call).
    pub(super) serving: Arc<Mutex<Arc<Shared>>>,
    pub(super) limits: Limits,
    /// Bytes `set` put into events during the current call.
    pub(super) added_bytes: usize,
    /// The bytes each event in the resource table holds (by handle): the one handed over
    /// and the guest's copies, including any it keeps across calls.
    pub(super) held: std::collections::HashMap<u32, usize>,
    /// Their sum: host memory the guest pins, bounded by its own memory limit.
    pub(super) held_bytes: usize,
    /// The org, channel and replay id of the event of the current call: outputs must be it
    /// or its copies (an instance serves several subscriptions, whose replay ids may match).
    pub(super) current: Option<(Arc<str>, Arc<str>, crate::event::ReplayId)>,
    /// The host-side limit that stopped the current call, for its error message.
    pub(super) limit_hit: Option<String>,
}

impl State {
    /// Stops the call: a host-side limit was reached. The message names the limit's key.
    pub(super) fn exceeded(&mut self, message: String) -> wasmtime::Error {
        let error = wasmtime::Error::msg(message.clone());
        self.limit_hit = Some(message);
        error
    }

    pub(super) fn start_call(&mut self) {
        self.added_bytes = 0;
        self.limit_hit = None;
    }

    /// Counts `bytes` more against the event `rep`; past the guest's memory limit, stops
    /// the call.
    pub(super) fn hold(&mut self, rep: u32, bytes: usize) -> wasmtime::Result<()> {
        *self.held.entry(rep).or_default() += bytes;
        self.held_bytes += bytes;
        if self.held_bytes > self.limits.memory_bytes {
            let message = format!(
                "exceeded memory-mib: the events it holds in the host passed {} MiB",
                self.limits.memory_bytes >> 20
            );
            return Err(self.exceeded(message));
        }
        Ok(())
    }

    pub(super) fn release(&mut self, rep: u32) {
        if let Some(bytes) = self.held.remove(&rep) {
            self.held_bytes -= bytes;
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let held_back = self
            .shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_suppressed();
        if let Some(n) = held_back {
            let transform = &*self.shared.name;
            tracing::warn!(
                transform,
                suppressed = n,
                "Transform {transform}: {n} log lines held back (max-log-lines-per-sec)."
            );
        }
    }
}

/// Settings for the whole process's Wasm runtime.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Where compiled components are kept (`<hash>.cwasm`); `None` compiles on every start.
    pub cache_dir: Option<PathBuf>,
    /// Meter fuel (needed when any transform has a fuel limit; costs ~9% per call).
    pub fuel: bool,
    /// Bytes of idle instances kept warm for the chains that share them
    /// (`transform-idle-mib`).
    pub idle_bytes: usize,
}

/// The default of `transform-idle-mib`.
pub const IDLE_MIB: usize = 256;

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: None,
            fuel: false,
            idle_bytes: IDLE_MIB << 20,
        }
    }
}

/// The process's Wasm runtime: one Engine and Linker shared by every transform, each
/// component loaded once, and the pool of idle instances.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    options: RuntimeOptions,
    /// Per component file, the last program loaded from it and the file's size and
    /// modification time then; each slot is locked while it loads, so thousands of chains
    /// starting at once load a component once.
    programs: Mutex<HashMap<PathBuf, Arc<Mutex<Option<(FileStamp, Arc<Program>)>>>>>,
    /// Bumped when a component file may have changed (or on SIGHUP), by the process's
    /// one watcher: chains then look whether their programs are still current.
    changes: tokio::sync::watch::Sender<u64>,
    pub(super) pool: Pool,
    _ticker: EpochTicker,
}

/// A component compiled and linked, ready to instantiate.
pub struct Program {
    pub pre: TransformPre<State>,
    /// A digest of the file's bytes (and the engine), naming it in instance keys.
    pub digest: String,
}

/// A file's size and modification time when it was read; `None` once it must be read again
/// whatever they are (SIGHUP).
type FileStamp = Option<(u64, Option<std::time::SystemTime>)>;

/// How a component got loaded, for the start-up log and the compile-cache benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadedFrom {
    /// Compiled earlier, read from the compile cache.
    Cache,
    Compiled,
    /// Already loaded in this process, for another chain.
    Loaded,
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Runtime, TransformError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(options.fuel);
        let engine = Engine::new(&config).map_err(|e| TransformError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| TransformError::Engine(format!("{e:#}")))?;
        Transform::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| TransformError::Engine(format!("{e:#}")))?;
        let ticker = EpochTicker::start(&engine);
        Ok(Runtime {
            engine,
            linker,
            pool: Pool::new(options.idle_bytes),
            options,
            programs: Default::default(),
            changes: tokio::sync::watch::Sender::new(0),
            _ticker: ticker,
        })
    }

    /// Figures of the shared instances, for `/metrics`.
    pub fn pool_figures(&self) -> Arc<crate::transform::PoolFigures> {
        self.pool.figures.clone()
    }

    /// The component at `path`, compiled and linked: once per process for as long as the
    /// file keeps its contents, so 10,000 subscriptions of one transform load it once. A
    /// file whose size or modification time changed is read again; the same program is
    /// returned if its bytes did not change.
    pub fn program(
        &self,
        name: &str,
        path: &Path,
    ) -> Result<(Arc<Program>, LoadedFrom), TransformError> {
        let read_error = |source| TransformError::Read {
            path: path.to_path_buf(),
            source,
        };
        let slot = self
            .programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_path_buf())
            .or_default()
            .clone();
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let meta = std::fs::metadata(path).map_err(read_error)?;
        let stamp = Some((meta.len(), meta.modified().ok()));
        if let Some((loaded, program)) = slot.as_ref()
            && *loaded == stamp
        {
            return Ok((program.clone(), LoadedFrom::Loaded));
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        let digest = self.cache_key(&bytes);
        if let Some((loaded, program)) = slot.as_mut()
            && program.digest == digest
        {
            *loaded = stamp;
            return Ok((program.clone(), LoadedFrom::Loaded));
        }
        let (component, from) = self.compile(path, &bytes, &digest)?;
        let pre = self.prepare(name, &component)?;
        let program = Arc::new(Program { pre, digest });
        *slot = Some((stamp, program.clone()));
        Ok((program, from))
    }

    /// The component files loaded so far, for the process's watcher.
    pub fn component_paths(&self) -> Vec<PathBuf> {
        let programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        programs.keys().cloned().collect()
    }

    /// Component files may have changed (`reread`: SIGHUP, read them again even if they
    /// look the same): every chain is told to look.
    pub fn components_changed(&self, reread: bool) {
        if reread {
            let programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
            for slot in programs.values() {
                if let Some((stamp, _)) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    *stamp = None;
                }
            }
        }
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// A signal each time [`Runtime::components_changed`] is called.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn fuel_enabled(&self) -> bool {
        self.options.fuel
    }

    /// Compiles a component, or loads it from the cache when this engine compiled the same
    /// bytes before.
    fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, LoadedFrom), TransformError> {
        let compile_error = |e: wasmtime::Error| TransformError::Compile {
            path: path.to_path_buf(),
            detail: format!("{e:#}"),
        };
        let cached = self
            .options
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{digest}.cwasm")));
        if let Some(file) = cached.as_ref().filter(|f| f.is_file()) {
            // SAFETY: the file is one this process family wrote into its own cache with
            // `precompile_component` for an engine of the same configuration (in the key).
            match unsafe { Component::deserialize_file(&self.engine, file) } {
                Ok(component) => return Ok((component, LoadedFrom::Cache)),
                Err(error) => {
                    tracing::warn!(path = %file.display(), error = %format!("{error:#}"), "Compiled component in the cache is unusable; recompiling.")
                }
            }
        }
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(compile_error)?;
        if let Some(file) = &cached
            && let Err(error) = write_cache(file, &compiled)
        {
            tracing::warn!(path = %file.display(), %error, "Cannot write the compile cache; the next start compiles again.");
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component =
            unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(compile_error)?;
        Ok((component, LoadedFrom::Compiled))
    }

    fn cache_key(&self, bytes: &[u8]) -> String {
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let mut digest = Sha256::new();
        digest.update(bytes);
        digest.update(engine_hash.finish().to_le_bytes());
        hex::encode(&digest.finalize()[..20])
    }

    /// Links a component against the host; fails, naming the import, if it needs more.
    fn prepare(
        &self,
        name: &str,
        component: &Component,
    ) -> Result<TransformPre<State>, TransformError> {
        let link = |e: wasmtime::Error| TransformError::Link {
            name: name.to_string(),
            detail: format!("{e:#}"),
        };
        if let Some(built) = foreign_contract(&self.engine, component) {
            return Err(TransformError::Contract {
                name: name.to_string(),
                built,
            });
        }
        let pre = self.linker.instantiate_pre(component).map_err(link)?;
        TransformPre::new(pre).map_err(link)
    }

    /// A fresh, initialised instance.
    pub fn instantiate(
        &self,
        shared: &Arc<Shared>,
        pre: &TransformPre<State>,
        limits: &Limits,
        config: &[(String, String)],
    ) -> Result<Instance, TransformError> {
        let name = &shared.name;
        let start = |e: wasmtime::Error| TransformError::Start {
            name: name.to_string(),
            detail: format!("{e:#}"),
        };
        let serving = Arc::new(Mutex::new(shared.clone()));
        let state = State {
            wasi: WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .stdout(GuestOutput::stdout(&serving))
                .stderr(GuestOutput::stderr(&serving))
                .build(),
            table: ResourceTable::new(),
            memory: MemoryCap::new(limits.memory_bytes),
            shared: shared.clone(),
            serving,
            limits: *limits,
            added_bytes: 0,
            held: Default::default(),
            held_bytes: 0,
            current: None,
            limit_hit: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(limits.deadline_ticks());
        if self.options.fuel {
            store
                .set_fuel(limits.fuel.unwrap_or(u64::MAX))
                .map_err(start)?;
        }
        let bindings = pre.instantiate(&mut store).map_err(start)?;
        // `init` starts the guest's language runtime too (a JavaScript engine takes tens of
        // milliseconds, more on a busy machine): it gets the longer of its timeout and this.
        let init_limits = Limits {
            timeout: limits.timeout.max(INIT_TIMEOUT),
            ..*limits
        };
        store.set_epoch_deadline(init_limits.deadline_ticks());
        match bindings.call_init(&mut store, config) {
            Ok(Ok(())) => Ok(Instance {
                store,
                bindings,
                events: 0,
            }),
            Ok(Err(message)) => Err(TransformError::Init {
                name: name.to_string(),
                message,
            }),
            Err(e) => Err(TransformError::Start {
                name: name.to_string(),
                detail: describe_trap(&e, &store, &init_limits),
            }),
        }
    }
}

/// The `sfzb:transform` version a component imports when it is not one this host links
/// (another 0.x minor, or a 1.0): a rebuild, not a missing capability, is the fix.
fn foreign_contract(engine: &Engine, component: &Component) -> Option<String> {
    let ours = semver_minor(CONTRACT.split_once('@')?.1)?;
    component
        .component_type()
        .imports(engine)
        .filter_map(|(name, _)| name.strip_prefix("sfzb:transform/").map(str::to_string))
        .find_map(|import| {
            let version = import.split_once('@').map(|(_, v)| v).unwrap_or("");
            (semver_minor(version) != Some(ours)).then(|| format!("sfzb:transform@{version}"))
        })
}

/// `0.1.3` → `(0, 1)`; semver-compatible versions share it (for 0.x, the minor).
fn semver_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    Some(if major == 0 { (0, minor) } else { (major, 0) })
}

fn write_cache(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, file)
}

/// A live instance of a transform.
pub struct Instance {
    store: Store<State>,
    bindings: Transform,
    events: u64,
}

/// Why one call failed.
#[derive(Debug)]
pub enum CallFailure {
    /// The guest returned an error: the instance is fine.
    Guest(String),
    /// A trap, timeout, memory or fuel exhaustion: the instance must be replaced.
    Trap(String),
    /// The guest returned something the host cannot use.
    Invalid(String),
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Guest(m) => write!(f, "returned an error: {m}"),
            CallFailure::Trap(m) => f.write_str(m),
            CallFailure::Invalid(m) => write!(f, "returned an invalid result: {m}"),
        }
    }
}

fn describe_trap(error: &wasmtime::Error, store: &Store<State>, limits: &Limits) -> String {
    if let Some(limit) = &store.data().limit_hit {
        return limit.clone();
    }
    if store.data().memory.refused {
        return format!(
            "exceeded its memory limit of {} MiB",
            limits.memory_bytes >> 20
        );
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "timed out: ran longer than {} ms",
            limits.timeout.as_millis()
        ),
        Some(Trap::OutOfFuel) => format!("ran out of fuel ({} units)", limits.fuel.unwrap_or(0)),
        Some(trap) => format!("trapped: {trap}"),
        None => format!("failed: {error:#}"),
    }
}

/// Letters, digits and `_`, optionally qualified as `catalog.schema.table`.
pub fn valid_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 255
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

impl Instance {
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Makes the instance serve the transform of another subscription: its log lines,
    /// metrics and keys are that one's from now on.
    pub fn serve(&mut self, shared: &Arc<Shared>) {
        let state = self.store.data_mut();
        if !Arc::ptr_eq(&state.shared, shared) {
            state.shared = shared.clone();
            *state.serving.lock().unwrap_or_else(|e| e.into_inner()) = shared.clone();
        }
    }

    pub fn memory_in_use(&self) -> usize {
        self.store.data().memory.current
    }

    /// Whether the events it kept from earlier calls leave no room for one of `bytes` more
    /// (by count or by size): then it is replaced before the next call rather than fail it.
    pub fn holds_too_much(&self, bytes: usize, limits: &Limits) -> bool {
        let state = self.store.data();
        state.held.len() + 1 >= limits.max_outputs
            || state.held_bytes + bytes > limits.memory_bytes / 2
    }

    /// Runs `process` on one event; on success, the events to pass on with their tables and
    /// an estimate of the bytes they hold.
    pub fn process(
        &mut self,
        event: ChangeEvent,
        limits: &Limits,
    ) -> Result<(Vec<(Option<String>, ChangeEvent)>, usize), CallFailure> {
        let size = event.payload.len();
        let state = self.store.data_mut();
        state.start_call();
        state.current = Some((
            event.org_id.clone(),
            event.channel.clone(),
            event.replay_id.clone(),
        ));
        let handle = state
            .table
            .push(event)
            .map_err(|e| CallFailure::Trap(format!("cannot hand the event over: {e}")))?;
        state.held.insert(handle.rep(), size);
        state.held_bytes += size;
        self.store.set_epoch_deadline(limits.deadline_ticks());
        if let Some(fuel) = limits.fuel {
            self.store
                .set_fuel(fuel)
                .map_err(|e| CallFailure::Trap(format!("{e:#}")))?;
        }
        self.events += 1;
        let outputs = match self.bindings.call_process(&mut self.store, handle) {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(message)) => return Err(CallFailure::Guest(message)),
            Err(e) => return Err(CallFailure::Trap(describe_trap(&e, &self.store, limits))),
        };
        // Every output leaves the resource table, even when the result is refused below.
        let state = self.store.data_mut();
        let mut out = Vec::with_capacity(outputs.len());
        let mut owned = true;
        for output in outputs {
            let rep = output.event.rep();
            match state.table.delete(output.event) {
                Ok(event) => {
                    state.release(rep);
                    out.push((output.table, event));
                }
                Err(_) => owned = false,
            }
        }
        if !owned {
            return Err(CallFailure::Invalid(
                "an output names an event it does not own (returned twice?)".into(),
            ));
        }
        // An event kept from an earlier call would write rows for a position outside this
        // batch, past or behind the checkpoint.
        let kept = |e: &ChangeEvent| {
            state
                .current
                .as_ref()
                .is_none_or(|(org, channel, replay_id)| {
                    e.replay_id != *replay_id || e.org_id != *org || e.channel != *channel
                })
        };
        if out.iter().any(|(_, e)| kept(e)) {
            return Err(CallFailure::Invalid(
                "an output is an event it kept from an earlier call; return only the event it was given or its copies".into(),
            ));
        }
        if out.len() > limits.max_outputs {
            return Err(CallFailure::Invalid(format!(
                "exceeded max-outputs: {} outputs of one event, more than {}",
                out.len(),
                limits.max_outputs
            )));
        }
        if let Some(table) = out
            .iter()
            .filter_map(|(t, _)| t.as_deref())
            .find(|t| !valid_table_name(t))
        {
            return Err(CallFailure::Invalid(format!(
                "table {table:?} is not a valid table name (letters, digits and _, optionally catalog.schema.table)"
            )));
        }
        let bytes = out.len() * (size + state.added_bytes);
        Ok((out, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked() {
        for ok in ["account_events", "main.sales.emea_accounts", "T1"] {
            assert!(valid_table_name(ok), "{ok}");
        }
        for bad in [
            "",
            "no such table!",
            "a.b.c.d",
            "1abc",
            "a..b",
            "drop;table",
        ] {
            assert!(!valid_table_name(bad), "{bad}");
        }
    }
}
