//! Hard limits for guests: memory per instance, wall-clock time per call (epoch
//! interruption), optional fuel. No event data here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::Engine;

/// How often the engine's epoch advances; deadlines are counted in these ticks.
pub const TICK: Duration = Duration::from_millis(2);

/// Limits for one transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// Wall-clock time one `process` (or `init`) call may take.
    pub timeout: Duration,
    /// Wasm instructions (roughly) one call may execute; `None` = unmetered.
    pub fuel: Option<u64>,
    /// Replace the instance with a fresh one after this many events.
    pub recycle_after: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_millis(100),
            fuel: None,
            recycle_after: 100_000,
        }
    }
}

impl Limits {
    /// The epoch deadline, in ticks, for one call.
    pub fn deadline_ticks(&self) -> u64 {
        (self.timeout.as_micros() / TICK.as_micros()).max(1) as u64 + 1
    }

    /// Past this much memory an instance is recycled between events.
    pub fn high_water(&self) -> usize {
        self.memory_bytes / 4 * 3
    }
}

/// Caps linear memory growth and remembers whether it refused, so a trap can be explained.
#[derive(Debug)]
pub struct MemoryCap {
    pub max: usize,
    pub current: usize,
    pub refused: bool,
}

impl MemoryCap {
    pub fn new(max: usize) -> Self {
        MemoryCap {
            max,
            current: 0,
            refused: false,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.refused = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} MiB exceeded",
                self.max >> 20
            )));
        }
        self.current = desired;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Advances the engine's epoch every [`TICK`] on its own thread until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sfzb-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .expect("the OS can start a thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
