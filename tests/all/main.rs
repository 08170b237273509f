//! Integration tests: the real client code against the simulator's real servers on
//! 127.0.0.1, over gRPC and HTTP.

mod auth;
mod authoring;
mod cli;
mod dead_letters;
mod delta;
mod faults;
mod guests;
mod kube_api;
mod lease;
mod managed;
mod polyglot;
mod postgres;
mod product;
mod shard;
mod snapshot;
mod source;
mod support;
mod tenants;
mod transform;
mod zerobus;
