//! A Salesforce org on loopback: the Pub/Sub API over gRPC and the login endpoints over HTTP,
//! for the demo and the tests. Never on a production path.

pub mod catalog;
pub mod generator;
