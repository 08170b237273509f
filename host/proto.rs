//! Code generated from `proto/` by `build.rs`.

/// The Salesforce Pub/Sub API (`eventbus.v1`), exactly as publicly specified.
pub mod pubsub {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("eventbus.v1");
}
