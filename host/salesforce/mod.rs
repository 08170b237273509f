//! The Salesforce side: authentication, the Pub/Sub API subscriber, schemas and decoding.

pub mod bitmap;
pub mod schema;
