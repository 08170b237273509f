//! Hard limits for guests: memory per instance (all of its memories together), wall-clock
//! time per call (epoch interruption), optional fuel, and host-side bounds on what a guest
//! can make the host hold or do while staying inside those: bytes `set` adds to an event,
//! outputs per event, bytes of a batch's outputs, distinct routed tables, log lines per
//! second. Each limit has a name (the configuration key) that its error message carries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::Engine;

/// How often the engine's epoch advances; deadlines are counted in these ticks.
pub const TICK: Duration = Duration::from_millis(2);

/// Limits for one transform; their defaults are those of the settings
/// ([`crate::config::file::TransformSection`]).
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
    /// `max-added-bytes`: bytes of values `set` may put into one event (the host holds
    /// them, outside the guest's memory limit).
    pub max_added_bytes: usize,
    /// `max-outputs`: outputs (and `duplicate` copies) per input event.
    pub max_outputs: usize,
    /// `max-batch-output-mib`: bytes of one batch's outputs held before they are written.
    pub max_batch_output_bytes: usize,
    /// `max-tables`: distinct tables the transform may route to in one subscription (each
    /// is an open file, Delta table or Zerobus stream).
    pub max_tables: usize,
    /// `max-log-lines-per-sec`: guest log lines per second; the rest are counted and
    /// summarised in one line.
    pub max_log_lines_per_sec: u32,
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

/// Caps the growth of all of an instance's memories together, and remembers whether it
/// refused, so a trap can be explained.
#[derive(Debug)]
pub struct MemoryCap {
    pub max: usize,
    /// Bytes of every linear memory of the instance.
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
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // `current` and `desired` are this memory's; a component can have several.
        let total = self.current - current.min(self.current) + desired;
        if total > self.max {
            self.refused = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} MiB exceeded",
                self.max >> 20
            )));
        }
        self.current = total;
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

/// A guest's log lines within one second, and those held back past the limit.
#[derive(Debug)]
pub struct LogBudget {
    per_sec: u32,
    window: std::time::Instant,
    lines: u32,
    suppressed: u64,
}

impl LogBudget {
    pub fn new(per_sec: u32) -> Self {
        LogBudget {
            per_sec,
            window: std::time::Instant::now(),
            lines: 0,
            suppressed: 0,
        }
    }

    /// Whether the next line may be written; when a new second starts, the number held back
    /// in the last one comes first.
    pub fn admit(&mut self) -> (bool, Option<u64>) {
        let mut summary = None;
        if self.window.elapsed() >= Duration::from_secs(1) {
            summary = self.take_suppressed();
            self.window = std::time::Instant::now();
            self.lines = 0;
        }
        if self.lines < self.per_sec {
            self.lines += 1;
            (true, summary)
        } else {
            self.suppressed += 1;
            (false, summary)
        }
    }

    pub fn per_sec(&self) -> u32 {
        self.per_sec
    }

    pub fn take_suppressed(&mut self) -> Option<u64> {
        (self.suppressed > 0).then(|| std::mem::take(&mut self.suppressed))
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

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn the_memory_cap_counts_every_memory_of_an_instance() {
        let mut cap = MemoryCap::new(64 << 20);
        assert!(cap.memory_growing(0, 40 << 20, None).unwrap());
        // A second memory of 40 MiB would be 80 MiB in all.
        assert!(cap.memory_growing(0, 40 << 20, None).is_err());
        assert!(cap.refused);
        // The first one may still grow to the cap.
        assert!(cap.memory_growing(40 << 20, 64 << 20, None).unwrap());
    }

    #[test]
    fn log_lines_past_the_budget_are_counted_not_written() {
        let mut budget = LogBudget::new(3);
        let admitted = (0..10).filter(|_| budget.admit().0).count();
        assert_eq!(admitted, 3);
        assert_eq!(budget.take_suppressed(), Some(7));
        assert_eq!(budget.take_suppressed(), None);
    }
}
