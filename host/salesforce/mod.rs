//! The Salesforce side: authentication, the Pub/Sub API subscriber, the REST and Bulk API 2.0
//! clients, schemas and decoding.

pub mod auth;
pub mod avro;
pub mod bitmap;
pub mod bulk;
pub mod pubsub;
pub mod replay;
pub mod rest;
pub mod schema;
