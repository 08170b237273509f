//! Wasm transforms: user components that keep, rewrite, drop, fan out or route events,
//! run by wasmtime under hard limits.
//!
//! | file | concern |
//! |---|---|
//! | `engine.rs` | Engine, Linker, WIT bindings, compile cache, instances |
//! | `host.rs` | the host half of the contract: the `host` and `types` interfaces |
//! | `chain.rs` | ordered transforms, routing, failure policy, counts |
//! | `limits.rs` | memory cap, epoch deadlines, fuel; no event data |
//!
//! The contract is `wit/transform.wit`. Guests run on blocking threads, never on the async
//! workers, so a slow guest cannot stall I/O.

pub mod chain;
pub mod engine;
pub mod host;
pub mod limits;

pub use chain::{Chain, ChainOutput, Failed, OnError, Routed, TransformSpec, TransformStats};
pub use engine::{Runtime, RuntimeOptions, TransformError};
pub use limits::Limits;
