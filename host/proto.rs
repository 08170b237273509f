//! Code generated from `proto/` by `build.rs`.

/// The Salesforce Pub/Sub API (`eventbus.v1`), exactly as publicly specified.
pub mod pubsub {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("eventbus.v1");
}

/// The rows written through Zerobus (`proto/sfzb_row.proto`).
pub mod row {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sfzb.zerobus");

    /// The compiled descriptors of `proto/sfzb_row.proto`.
    pub const DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sfzb_row_descriptor.bin"));
}
