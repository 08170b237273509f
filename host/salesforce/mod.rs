//! The Salesforce side: authentication, the Pub/Sub API subscriber, schemas and decoding.

pub mod auth;
pub mod avro;
pub mod bitmap;
pub mod pubsub;
pub mod replay;
pub mod schema;
