//! Wasm transforms: user components that keep, rewrite, drop, fan out or route events,
//! run by wasmtime under hard limits.
//!
//! | file | concern |
//! |---|---|
//! | `engine.rs` | Engine, Linker, WIT bindings, compile cache, loaded components, instances |
//! | `pool.rs` | warm instances shared by chains, idle ones under a process-wide budget |
//! | `host.rs` | the host half of the contract: the `host` and `types` interfaces |
//! | `chain.rs` | ordered transforms, routing, failure policy, counts |
//! | `limits.rs` | memory cap, epoch deadlines, fuel; no event data |
//! | `keys.rs` | the secret keys `hmac-sha256` uses, by name, never shown to guests |
//! | `metrics.rs` | counters and gauges a transform defines, bounded |
//! | `stdio.rs` | a guest's stdout and stderr, as lines of the host log |
//!
//! The contract is `wit/transform.wit`. Guests run on blocking threads, never on the async
//! workers, so a slow guest cannot stall I/O.

pub mod chain;
pub mod engine;
pub mod host;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod stdio;

pub use chain::{Chain, ChainOutput, Failed, OnError, Routed, TransformSpec, TransformStats};
pub use engine::{CONTRACT, Runtime, RuntimeOptions, TransformError};
pub use keys::Keys;
pub use limits::Limits;
pub use pool::PoolFigures;
