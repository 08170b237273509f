//! sfzb-host: Salesforce Change Data Capture → sandboxed Wasm transforms → Databricks.

pub mod event;
pub mod proto;
pub mod salesforce;
pub mod sim;
