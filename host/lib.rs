//! sfzb-host: Salesforce Change Data Capture → sandboxed Wasm transforms → Databricks.
//!
//! Data flows one way: [`salesforce::pubsub`] (source) → [`salesforce::schema`] (decode) →
//! [`transform`] → [`sink`] → [`checkpoint`], wired per subscription by [`pipeline`]; this
//! module runs the subscriptions of a plan side by side, each isolated from the others.
//!
//! Where each concept lives:
//!
//! | concept | module |
//! |---|---|
//! | logins, session refresh | [`salesforce::auth`] |
//! | Pub/Sub streams, flow control (credit), keepalives, reconnects, managed subscriptions | [`salesforce::pubsub`] |
//! | writer schemas, decoding | [`salesforce::schema`], [`salesforce::avro`] |
//! | header field bitmaps | [`salesforce::bitmap`] |
//! | the decoded event, replay ids | [`event`] |
//! | Wasm engine, host functions, sandbox limits, the chain | [`transform`] (`engine`, `limits`, `chain`) |
//! | rows, sinks, dead letters | [`sink`] (`row`, `jsonl`, `delta`, `zerobus`, `deadletter`) |
//! | local checkpoints | [`checkpoint`] |
//! | Databricks tables and the checkpoint table (SQL Statement API) | [`sql`] |
//! | configuration, flags | [`config`], [`cli`] |
//! | health figures; the `/metrics` `/healthz` `/stats` server | [`health`], [`http`] |
//! | Kubernetes Lease fencing | [`lease`] |
//! | simulated Salesforce, Zerobus and Databricks servers | [`sim`] |
//! | `transform test`/`bench`, `transform init`, `demo` | [`authoring`], [`scaffold`], [`demo`] |
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
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod event;
pub mod health;
pub mod http;
pub mod lease;
pub mod pipeline;
pub mod proto;
pub mod salesforce;
pub mod scaffold;
pub mod sim;
pub mod sink;
pub mod sql;
pub mod transform;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use config::RunPlan;
pub use error::Error;
use health::{Health, State};
use pipeline::SubscriptionStats;
use salesforce::auth::{Authenticator, Credentials, SOAP_RETIREMENT};
use salesforce::pubsub::PubSubConnection;

/// How each subscription of a run ended.
#[derive(Debug)]
pub struct RunReport {
    pub subscriptions: Vec<SubscriptionOutcome>,
    /// Where `/metrics` was served, when it was.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug)]
pub struct SubscriptionOutcome {
    pub name: String,
    pub result: Result<SubscriptionStats, Error>,
}

impl RunReport {
    /// `Ok` when every subscription ended cleanly, else an error naming the first failure.
    pub fn into_result(self) -> Result<Vec<SubscriptionStats>, Error> {
        let total = self.subscriptions.len();
        let mut stats = Vec::with_capacity(total);
        let mut failures = Vec::new();
        for outcome in self.subscriptions {
            match outcome.result {
                Ok(s) => stats.push(s),
                Err(e) => failures.push((outcome.name, e)),
            }
        }
        let failed = failures.len();
        match failures.into_iter().next() {
            None => Ok(stats),
            Some((_, error)) if total == 1 => Err(error),
            Some((name, error)) => Err(Error::Subscriptions {
                failed,
                total,
                name,
                error: Box::new(error),
            }),
        }
    }
}

/// Runs every subscription of the plan until `cancel` fires, the idle limit passes, or it
/// fails; one failing does not stop the others. Errors before any subscription starts (a
/// transform that does not load, a metrics port taken) fail the whole run.
pub async fn run(mut plan: RunPlan, cancel: CancellationToken) -> Result<RunReport, Error> {
    if let Some(shard) = plan.shard {
        let total = plan.subscriptions.len();
        let orgs = &plan.orgs;
        plan.subscriptions
            .retain(|s| shard.owns(&orgs[s.org], &s.config.channel));
        let mine: Vec<&str> = plan.subscriptions.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(
            shard = format!("{}/{}", shard.index, shard.count),
            "Shard {}/{} runs {} of {total} subscriptions: {}.",
            shard.index,
            shard.count,
            mine.len(),
            mine.join(", ")
        );
    }
    for org in &plan.orgs {
        if matches!(org.credentials, Credentials::Soap { .. }) {
            tracing::warn!(org = %org.name, "{SOAP_RETIREMENT}");
        }
    }
    let mut chains = Vec::with_capacity(plan.subscriptions.len());
    let runtime = transform_runtime(&plan).await?;
    for sub in &plan.subscriptions {
        chains.push(match &runtime {
            Some(runtime) => load_chain_with(runtime.clone(), &sub.config.transforms).await?,
            None => None,
        });
    }
    let slots = connection_slots(plan.subscriptions.iter().map(|s| s.org));
    let mut connections = std::collections::HashMap::new();
    for &(org_index, slot) in &slots {
        if connections.contains_key(&(org_index, slot)) {
            continue;
        }
        let org = &plan.orgs[org_index];
        let authenticator =
            Authenticator::new(&org.login_url, &org.api_version, org.credentials.clone());
        let connection = PubSubConnection::new(&org.pubsub_endpoint, authenticator)
            .map_err(|e| Error::from(pipeline::PipelineError::from(e)))?;
        connections.insert((org_index, slot), connection);
    }
    let fence = match &plan.lease {
        Some(settings) => Some(lease::Fence::connect(settings.clone()).await?),
        None => None,
    };
    let healths: Vec<Arc<Health>> = plan
        .subscriptions
        .iter()
        .map(|s| {
            Arc::new(
                Health::new(
                    &s.name,
                    &plan.orgs[s.org].name,
                    &s.config.channel,
                    &s.config.sink.to_string(),
                    s.config.idle_timeout,
                    s.config.max_timeouts,
                )
                .with_max_checkpoint_lag(plan.max_checkpoint_lag),
            )
        })
        .collect();
    let observers = cancel.child_token();
    let metrics_addr = match plan.metrics_listen {
        Some(addr) => Some(
            http::serve(addr, healths.clone(), observers.clone())
                .await?
                .0,
        ),
        None => None,
    };
    tokio::spawn(report_health(
        healths.clone(),
        plan.health_interval,
        observers.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    // Which subscription each task runs, for a task that panics and returns nothing.
    let mut names = std::collections::HashMap::new();
    for (i, (sub, chain)) in plan.subscriptions.into_iter().zip(chains).enumerate() {
        let name = sub.name.clone();
        let channel = sub.config.channel.clone();
        let others = healths.len() > 1;
        let connection = connections[&slots[i]].clone();
        let health = healths[i].clone();
        let options = plan.options.clone();
        let cancel = cancel.clone();
        let org = plan.orgs[sub.org].name.clone();
        let fence = fence.clone();
        let runtime = runtime.clone();
        let handle = tasks.spawn(async move {
            let mut preloaded = Some(chain);
            let mut work = |cancel: CancellationToken| {
                let preloaded = preloaded.take();
                let (connection, config, options, health, runtime) = (
                    connection.clone(),
                    sub.config.clone(),
                    options.clone(),
                    health.clone(),
                    runtime.clone(),
                );
                async move {
                    // After a lost Lease the chain went with the stopped run: load it again
                    // (from the compile cache) for the next.
                    let chain = match (preloaded, runtime) {
                        (Some(chain), _) => chain,
                        (None, Some(runtime)) => {
                            load_chain_with(runtime, &config.transforms).await?
                        }
                        (None, None) => None,
                    };
                    health.set_state(State::Starting);
                    pipeline::run_subscription(connection, config, chain, options, health, cancel)
                        .await
                        .map_err(Error::from)
                }
            };
            let result = match &fence {
                None => work(cancel).await.map(Some),
                Some(fence) => {
                    let lease = lease::Fence::lease_name(
                        &org,
                        &sub.config.channel,
                        &sub.config.sink.to_string(),
                    );
                    fence.hold(&lease, &cancel, &health, work).await
                }
            };
            match &result {
                Ok(_) => health.set_state(State::Stopped),
                Err(error) => {
                    if others {
                        tracing::error!(subscription = %sub.name, %error, "Subscription failed; the others keep running.");
                    } else {
                        tracing::error!(subscription = %sub.name, %error, "Subscription failed.");
                    }
                    health.set_state(State::Failed(error.to_string()));
                }
            }
            // A standby that never held its Lease read nothing: say so rather than leave it out.
            let result = result.map(|stats| {
                stats.unwrap_or_else(|| SubscriptionStats {
                    channel: sub.config.channel.clone(),
                    target: sub.config.sink.to_string(),
                    ..SubscriptionStats::default()
                })
            });
            (i, sub.name, result)
        });
        names.insert(handle.id(), (i, name, channel));
    }
    if tasks.is_empty() {
        // A shard with nothing to read stays up (and keeps answering /healthz) rather than
        // exit and be restarted by its supervisor.
        match plan.options.until_idle {
            Some(idle) => tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(idle) => {}
            },
            None => cancel.cancelled().await,
        }
    }
    let mut outcomes: Vec<Option<SubscriptionOutcome>> = (0..healths.len()).map(|_| None).collect();
    // A stop has a deadline: past it, subscriptions still flushing are abandoned. Their
    // checkpoints only ever follow durable writes, so they stay behind the data.
    let shutdown_timeout = plan.shutdown_timeout;
    let deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(shutdown_timeout).await;
    };
    tokio::pin!(deadline);
    let mut abandoned = false;
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next_with_id() => match joined {
                Some(joined) => joined,
                None => break,
            },
            _ = &mut deadline, if !abandoned => {
                abandoned = true;
                tracing::error!(timeout_secs = shutdown_timeout.as_secs(), unfinished = tasks.len(), "Subscriptions did not stop within the shutdown timeout; abandoning them. Their checkpoints stay behind what was written.");
                tasks.abort_all();
                continue;
            }
        };
        let (i, name, result) = match joined {
            Ok((_, done)) => done,
            Err(e) => {
                let (i, name, channel) = names.remove(&e.id()).expect("every task is named");
                let error = if e.is_cancelled() {
                    pipeline::PipelineError::ShutdownTimeout {
                        channel,
                        timeout_secs: shutdown_timeout.as_secs(),
                    }
                } else {
                    pipeline::PipelineError::Panicked {
                        channel,
                        task: "subscription",
                        message: pipeline::panic_message(e),
                    }
                };
                tracing::error!(subscription = %name, %error, "Subscription failed.");
                healths[i].set_state(State::Failed(error.to_string()));
                (i, name, Err(error.into()))
            }
        };
        outcomes[i] = Some(SubscriptionOutcome { name, result });
    }
    observers.cancel();
    Ok(RunReport {
        subscriptions: outcomes.into_iter().flatten().collect(),
        metrics_addr,
    })
}

/// Salesforce allows at most this many concurrent streams on one HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 100;

/// For each subscription (given by its org), the connection it uses: (org, n) where n
/// counts that org's subscriptions in blocks of [`STREAMS_PER_CONNECTION`].
fn connection_slots(orgs: impl Iterator<Item = usize>) -> Vec<(usize, usize)> {
    let mut seen = std::collections::HashMap::<usize, usize>::new();
    orgs.map(|org| {
        let n = seen.entry(org).or_default();
        let slot = (org, *n / STREAMS_PER_CONNECTION);
        *n += 1;
        slot
    })
    .collect()
}

/// Logs a health report per subscription every `interval`, and, every 10 s, progress for
/// subscriptions that are catching up (a backfill): done, rate, and how far behind.
async fn report_health(
    healths: Vec<Arc<Health>>,
    interval: Option<Duration>,
    cancel: CancellationToken,
) {
    let progress_every = Duration::from_secs(10);
    let period = interval.map_or(progress_every, |i| i.min(progress_every));
    let mut last_report = tokio::time::Instant::now();
    let mut last_progress = tokio::time::Instant::now();
    let mut report_base: Vec<_> = healths.iter().map(|h| h.snapshot()).collect();
    let mut progress_base = report_base.clone();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now: Vec<_> = healths.iter().map(|h| h.snapshot()).collect();
        if last_progress.elapsed() >= progress_every {
            let window = last_progress.elapsed().as_secs_f64();
            for (s, before) in now.iter().zip(&progress_base) {
                let done = s.received - before.received;
                if done > 0 && s.lag_secs.is_some_and(|lag| lag > 60.0) {
                    let behind = humanize(s.lag_secs.unwrap_or_default());
                    tracing::info!(
                        subscription = %s.name,
                        channel = %s.channel,
                        received = s.received,
                        events_per_sec = format!("{:.0}", done as f64 / window),
                        behind = %behind,
                        "Backfill progress: {} events, {behind} behind the newest event.",
                        s.received,
                    );
                }
            }
            progress_base = now.clone();
            last_progress = tokio::time::Instant::now();
        }
        if let Some(interval) = interval
            && last_report.elapsed() >= interval
        {
            let window = last_report.elapsed();
            for (s, before) in now.iter().zip(&report_base) {
                s.log(before, window);
            }
            report_base = now;
            last_report = tokio::time::Instant::now();
        }
    }
}

fn humanize(secs: f64) -> String {
    let secs = secs as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// One transform runtime (engine and compile cache) for every chain of the run.
async fn transform_runtime(plan: &RunPlan) -> Result<Option<Arc<transform::Runtime>>, Error> {
    let specs: Vec<_> = plan
        .subscriptions
        .iter()
        .flat_map(|s| &s.config.transforms)
        .collect();
    if specs.is_empty() {
        return Ok(None);
    }
    let options = transform::RuntimeOptions {
        cache_dir: plan.cache_dir.clone(),
        fuel: specs.iter().any(|s| s.limits.fuel.is_some()),
    };
    let runtime = tokio::task::spawn_blocking(move || transform::Runtime::new(options))
        .await
        .expect("starting the transform runtime does not panic")?;
    Ok(Some(Arc::new(runtime)))
}

/// Compiles (or loads from the cache), links and initialises the transforms, off the async
/// workers: compiling a Python or JavaScript component takes seconds.
pub async fn load_chain(
    specs: &[transform::TransformSpec],
    cache_dir: Option<PathBuf>,
) -> Result<Option<transform::Chain>, Error> {
    if specs.is_empty() {
        return Ok(None);
    }
    let fuel = specs.iter().any(|s| s.limits.fuel.is_some());
    let runtime = tokio::task::spawn_blocking(move || {
        transform::Runtime::new(transform::RuntimeOptions { cache_dir, fuel })
    })
    .await
    .expect("starting the transform runtime does not panic")?;
    load_chain_with(Arc::new(runtime), specs).await
}

async fn load_chain_with(
    runtime: Arc<transform::Runtime>,
    specs: &[transform::TransformSpec],
) -> Result<Option<transform::Chain>, Error> {
    if specs.is_empty() {
        return Ok(None);
    }
    let specs = specs.to_vec();
    let chain = tokio::task::spawn_blocking(move || transform::Chain::load(runtime, &specs))
        .await
        .expect("loading transforms does not panic")?;
    Ok(Some(chain))
}

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
        self.args.instance_url = Some(url.into());
        self
    }

    pub fn pubsub_endpoint(mut self, url: impl Into<String>) -> Self {
        self.args.pubsub_endpoint = Some(url.into());
        self
    }

    /// SOAP (or, with a client id, OAuth password) login.
    pub fn username_password(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.args.username = Some(username.into());
        self.args.password = Some(password.into());
        self
    }

    /// OAuth client credentials.
    pub fn client_credentials(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.args.client_id = Some(id.into());
        self.args.client_secret = Some(secret.into());
        self
    }

    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.args.channel = Some(channel.into());
        self
    }

    /// `jsonl:PATH`, `delta:PATH_OR_URL` or `zerobus:catalog.schema.table`.
    pub fn sink(mut self, sink: impl Into<String>) -> Self {
        self.args.sink = Some(sink.into());
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
        self.args.state_dir = Some(dir.into());
        self
    }

    /// Stop once no event arrived for this long.
    pub fn until_idle(mut self, idle: Duration) -> Self {
        self.args.until_idle = Some(idle.as_secs_f64());
        self
    }

    pub fn metrics_listen(mut self, addr: std::net::SocketAddr) -> Self {
        self.args.metrics_listen = Some(addr.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_org_with_more_than_100_subscriptions_gets_another_connection() {
        let orgs = (0..250).map(|i| if i % 5 == 0 { 1 } else { 0 });
        let slots = connection_slots(orgs);
        let distinct: std::collections::BTreeSet<_> = slots.iter().copied().collect();
        assert_eq!(
            distinct.into_iter().collect::<Vec<_>>(),
            [(0, 0), (0, 1), (1, 0)],
            "200 subscriptions of org 0 on two connections, 50 of org 1 on one"
        );
        for slot in [(0, 0), (0, 1), (1, 0)] {
            let n = slots.iter().filter(|s| **s == slot).count();
            assert!(n <= STREAMS_PER_CONNECTION, "{slot:?}: {n}");
        }
    }
}
