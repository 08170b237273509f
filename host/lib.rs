//! sfzb-host: Salesforce Change Data Capture → sandboxed Wasm transforms → Databricks.
//!
//! Data flows one way: [`salesforce::pubsub`] (source) → [`salesforce::schema`] (decode) →
//! [`transform`] → [`sink`] → [`checkpoint`], wired per subscription by [`pipeline`];
//! [`supervisor`] runs the subscriptions of a plan side by side, each isolated from the
//! others. `main.rs` only parses and dispatches.
//!
//! Where each concept lives:
//!
//! | concept | module |
//! |---|---|
//! | logins, session refresh, the session on every call | [`salesforce::auth`] |
//! | the Pub/Sub connection; one subscription's life; one stream; flow control (credit); managed subscriptions; error classification | [`salesforce::pubsub`] (`connection`, `supervisor`, `stream`, `credit`, `managed`, `error`) |
//! | start positions, the invalid-replay fallback | [`salesforce::replay`] |
//! | writer schemas, decoding, re-encoding | [`salesforce::schema`], [`salesforce::avro`] |
//! | header field bitmaps | [`salesforce::bitmap`] |
//! | the REST API (describe, a record by id) and Bulk API 2.0 query jobs | [`salesforce::rest`], [`salesforce::bulk`] |
//! | the initial snapshot: an object's records as events; capture, read, hand over | [`snapshot`], [`pipeline`] (`snapshot`) |
//! | the current-state table: changes collapsed per record, one MERGE per apply | [`current_state`] (`collapse`) |
//! | the decoded event (with its writer schema), replay ids | [`event`] |
//! | Wasm engine, host functions, sandbox limits, the chain | [`transform`] (`engine`, `host`, `limits`, `chain`) |
//! | one subscription's steps: decode, chain, route, write, flush, snapshot | [`pipeline`] |
//! | every table's columns; rows; the typed layout; dead letters; each sink | [`sink`] (`columns`, `row`, `typed`, `deadletter`, `jsonl`, `delta`, `zerobus`) |
//! | checkpoints: staging, the one committer, the local, PostgreSQL and warehouse stores | [`checkpoint`] (`local`, `postgres`, `warehouse`) |
//! | Databricks tables (SQL Statement API) | [`sql`] |
//! | settings (each defined once), the file, layering, the plan | [`config`] (`settings`, `file`, `layering`, …), [`cli`] |
//! | the subscriptions of a run: restarts, live reload, shared connections, the stop | [`supervisor`] (`running`, `live`, `connections`) |
//! | files changed or SIGHUP, for reloads | [`watch`] |
//! | log lines many subscriptions give at once: one a kind per window, with a count | [`throttle`] |
//! | health figures and reports; the `/metrics` `/healthz` `/stats` server | [`health`], [`http`] |
//! | `healthcheck` and `status`: the running process's endpoint from the command line | [`probe`] |
//! | the binary's log and signals | [`process`] |
//! | Kubernetes Lease fencing | [`lease`] |
//! | retry delays; the pace of logins and subscribes | [`backoff`], [`pipeline`] (`pace`) |
//! | simulated Salesforce (with its records, REST and Bulk APIs), Zerobus and Databricks servers; `sim`'s flags | [`sim`] (`records`, `rest`, …) |
//! | `transform test`/`bench`, `transform init`, `demo` | [`authoring`], [`scaffold`], [`demo`] |
//! | `dead-letter replay`: dead letters read back, replayed once, a ledger | [`dead_letters`] (`read`, `ledger`, `replay`) |
//!
//! From Rust, build a plan with [`SfzbHost::builder`] (or load `sfzb.toml` with
//! [`config`]) and run it:
//!
//! ```no_run
//! # async fn example() -> Result<(), sfzb_host::Error> {
//! let host = sfzb_host::SfzbHost::builder()
//!     .config_file("sfzb.toml")
//!     .transform("mask.wasm")
//!     .build()?;
//! let shutdown = host.shutdown_handle();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     shutdown.cancel();
//! });
//! let report = host.run().await?;
//! for s in &report.subscriptions {
//!     println!("{}: {:?}", s.name, s.result.as_ref().map(|stats| stats.written));
//! }
//! # Ok(())
//! # }
//! ```

pub mod authoring;
pub mod backoff;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod current_state;
pub mod dead_letters;
pub mod demo;
pub mod error;
pub mod event;
pub mod health;
pub mod http;
pub mod lease;
pub mod pipeline;
pub mod probe;
pub mod process;
pub mod proto;
pub mod salesforce;
pub mod scaffold;
pub mod sim;
pub mod sink;
pub mod snapshot;
pub mod sql;
pub mod supervisor;
pub mod throttle;
pub mod transform;
pub mod watch;

/// glibc's allocator spends a fifth of the CPU of many small subscriptions in `malloc`
/// and keeps freed memory in per-thread arenas; mimalloc does neither (measured with
/// `cargo bench --bench capacity`). Set here so the binary, tests and benches all use it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use config::RunPlan;
pub use error::Error;
pub use supervisor::{
    Replan, RunReport, Started, SubscriptionOutcome, load_chain, run, run_reloading, start,
};

/// The engine as a library: a plan from a configuration file and/or settings given in
/// code, run with [`SfzbHost::run`] until done or until its shutdown handle is cancelled.
pub struct SfzbHost {
    plan: RunPlan,
    cancel: CancellationToken,
}

/// Settings of an [`SfzbHost`]; each method takes what the `sfzb-host run` flag of the
/// same name takes, and wins over the configuration file.
#[derive(Default)]
pub struct SfzbHostBuilder {
    args: cli::RunArgs,
}

impl SfzbHost {
    pub fn builder() -> SfzbHostBuilder {
        SfzbHostBuilder::default()
    }

    /// Cancel it to stop: fetching stops, in-flight events are written and checkpointed.
    pub fn shutdown_handle(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn plan(&self) -> &RunPlan {
        &self.plan
    }

    pub async fn run(self) -> Result<RunReport, Error> {
        run(self.plan, self.cancel).await
    }
}

impl SfzbHostBuilder {
    /// A `sfzb.toml` to start from (without one, `./sfzb.toml` is read when present).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.args.config_file = Some(path.into());
        self
    }

    pub fn instance_url(mut self, url: impl Into<String>) -> Self {
        self.args.org.instance_url = Some(url.into());
        self
    }

    pub fn pubsub_endpoint(mut self, url: impl Into<String>) -> Self {
        self.args.org.pubsub_endpoint = Some(url.into());
        self
    }

    /// SOAP (or, with a client id, OAuth password) login.
    pub fn username_password(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.args.org.username = Some(username.into());
        self.args.org.password = Some(config::file::Secret::Value(password.into()));
        self
    }

    /// OAuth client credentials.
    pub fn client_credentials(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.args.org.client_id = Some(id.into());
        self.args.org.client_secret = Some(config::file::Secret::Value(secret.into()));
        self
    }

    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.args.subscription.channel = Some(channel.into());
        self
    }

    /// `jsonl:PATH`, `delta:PATH_OR_URL` or `zerobus:catalog.schema.table`.
    pub fn sink(mut self, sink: impl Into<String>) -> Self {
        self.args.subscription.sink = Some(sink.into());
        self
    }

    /// Appends a component to the chain (replacing the file's chains).
    pub fn transform(mut self, path: impl Into<PathBuf>) -> Self {
        self.args.transforms.paths.push(path.into());
        self
    }

    /// A setting for a transform of the chain, by its name (the file stem).
    pub fn transform_config(mut self, transform: &str, key: &str, value: &str) -> Self {
        self.args
            .transforms
            .config
            .push(format!("{transform}.{key}={value}"));
        self
    }

    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.args.run.state_dir = Some(dir.into());
        self
    }

    /// Stop once no event arrived for this long.
    pub fn until_idle(mut self, idle: Duration) -> Self {
        self.args.run.until_idle = Some(idle.as_secs_f64());
        self
    }

    pub fn metrics_listen(mut self, addr: std::net::SocketAddr) -> Self {
        self.args.run.metrics_listen = Some(addr.to_string());
        self
    }

    /// Validates everything (files, URLs, names, secrets) without connecting.
    pub fn build(self) -> Result<SfzbHost, Error> {
        Ok(SfzbHost {
            plan: self.args.plan()?,
            cancel: CancellationToken::new(),
        })
    }
}
