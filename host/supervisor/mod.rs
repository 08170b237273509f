//! The run: every subscription of a plan as its own task, side by side, each isolated
//! from the others (a failure or a panic ends that subscription only), sharing the Pub/Sub
//! connections ([`connections`]), the schema cache, the Zerobus streams, the checkpoint
//! stores, one transform runtime and the Lease fence; changed while it runs by a reload
//! ([`live`]); and the stop, bounded by the shutdown timeout.
//!
//! | file | what |
//! |---|---|
//! | [`running`] | the subscriptions' tasks: start, end, reload |
//! | [`connections`] | Pub/Sub connections and sessions, shared |
//! | [`live`] | watching the configuration; what identifies a subscription |

pub(crate) mod connections;
mod live;
mod running;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RunPlan;
use crate::error::Error;
use crate::health::{self, Registry};
use crate::pipeline::{self, SubscriptionStats};
use crate::salesforce::auth::{Credentials, SOAP_RETIREMENT};
use crate::{http, lease, transform};
pub use live::Replan;
use running::{Context, Running};

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
    /// A paragraph per subscription that ended cleanly: what it read, wrote, dropped and
    /// dead-lettered, how fast, and where its checkpoint is; a line per transform.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for outcome in &self.subscriptions {
            let Ok(stats) = &outcome.result else {
                continue;
            };
            let active = (stats.active_ms as f64 / 1000.0).max(0.001);
            out.push_str(&format!(
                "{} ({}): {} received, {} written to {}, {} dropped, {} dead-lettered in {:.1} s ({:.0} events/s while events flowed); checkpoint {}\n",
                outcome.name,
                stats.channel,
                stats.received,
                stats.written,
                stats.target,
                stats.dropped,
                stats.dead_lettered,
                stats.elapsed_ms as f64 / 1000.0,
                stats.received as f64 / active,
                stats.checkpoint.as_deref().unwrap_or("none"),
            ));
            for t in &stats.transforms {
                out.push_str(&format!(
                    "  transform {}: {} in, {} out, {} dropped, {} dead-lettered, {} skipped, {} restarts\n",
                    t.name, t.events_in, t.events_out, t.dropped, t.dead_lettered, t.skipped, t.recycled
                ));
            }
        }
        out
    }

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
pub async fn run(plan: RunPlan, cancel: CancellationToken) -> Result<RunReport, Error> {
    Ok(start(plan, cancel).await?.wait().await)
}

/// [`run`], reading the configuration again with `replan` on SIGHUP or when its file or
/// tenants change, and applying what changed (see [`live`]).
pub async fn run_reloading(
    plan: RunPlan,
    replan: Replan,
    cancel: CancellationToken,
) -> Result<RunReport, Error> {
    Ok(start(plan, cancel).await?.reloading(replan).wait().await)
}

/// A run whose subscriptions are started.
pub struct Started {
    metrics_addr: Option<std::net::SocketAddr>,
    running: Running,
    /// The configuration's files, watched once [`Started::reloading`].
    sources: Vec<PathBuf>,
    reload: Option<live::Reload>,
    observers: CancellationToken,
    cancel: CancellationToken,
    shutdown_timeout: Duration,
    until_idle: Option<Duration>,
}

/// Starts every subscription of the plan (see [`run`]) and returns once they run, with the
/// address `/metrics` is served on (a `metrics-listen` port 0 picks a free one).
pub async fn start(mut plan: RunPlan, cancel: CancellationToken) -> Result<Started, Error> {
    keep_own_shard(&mut plan);
    for (tenant, reason) in &plan.rejected_tenants {
        tracing::error!(%tenant, %reason, "Tenant left out of the run: its entry is invalid; the others run.");
    }
    for org in &plan.orgs {
        if matches!(org.credentials, Credentials::Soap { .. }) {
            tracing::warn!(org = %org.name, "{SOAP_RETIREMENT}");
        }
    }
    // Transforms load first: one that does not load is a configuration error, found
    // before anything connects.
    let runtime = transform_runtime(&plan).await?;
    let mut chains = Vec::with_capacity(plan.subscriptions.len());
    for sub in &plan.subscriptions {
        chains.push(match &runtime {
            Some(runtime) => load_chain_with(runtime.clone(), &sub.config.transforms).await?,
            None => None,
        });
    }
    let fence = match &plan.lease {
        Some(settings) => Some(lease::Fence::connect(settings.clone()).await?),
        None => None,
    };
    let pipeline = pipeline::Shared::new(&plan.options);
    let registry = Registry::with_budget(pipeline.in_flight.clone());
    registry.set_checkpoint_stores(pipeline.checkpoints.status());
    registry.set_zerobus_streams(pipeline.zerobus.streams_in_use());
    if let Some(runtime) = &runtime {
        registry.set_transform_pool(runtime.pool_figures());
    }
    let observers = cancel.child_token();
    if let Some(runtime) = &runtime {
        watch_components(runtime, observers.clone());
    }
    let metrics_addr = match plan.metrics_listen {
        Some(addr) => Some(
            http::serve(addr, registry.clone(), observers.clone())
                .await?
                .0,
        ),
        None => None,
    };
    let context = Context {
        runtime,
        pipeline,
        connections: connections::Connections::new(),
        fence,
        registry: registry.clone(),
        options: Arc::new(plan.options.clone()),
        max_checkpoint_lag: plan.max_checkpoint_lag,
        transform_options: runtime_options(&plan, false),
    };
    tokio::spawn(
        context
            .pipeline
            .checkpoints
            .clone()
            .committer(plan.options.flush_interval, observers.clone()),
    );
    tokio::spawn(health::report(
        registry,
        plan.health_interval,
        observers.clone(),
    ));
    let mut running = Running::new(context, cancel.clone());
    let subscriptions = std::mem::take(&mut plan.subscriptions);
    for (sub, chain) in subscriptions.into_iter().zip(chains) {
        let org = plan.orgs[sub.org].clone();
        running.spawn(sub, &org, chain)?;
    }
    Ok(Started {
        metrics_addr,
        running,
        observers,
        cancel,
        shutdown_timeout: plan.shutdown_timeout,
        until_idle: plan.options.until_idle,
        sources: plan.source.iter().chain(&plan.tenants).cloned().collect(),
        reload: None,
    })
}

impl Started {
    /// Where `/metrics`, `/healthz` and `/stats` are served, when they are.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The subscriptions' live figures, as they come and go, for a program embedding the
    /// host to report on.
    pub fn registry(&self) -> Registry {
        self.running.ctx.registry.clone()
    }

    /// Reads the configuration again with `replan` on SIGHUP or when its file or tenants
    /// change, and applies what changed (see [`live`]).
    pub fn reloading(mut self, replan: Replan) -> Started {
        self.reload = Some(live::Reload::watch(
            &self.sources,
            replan,
            self.observers.clone(),
        ));
        self
    }

    /// Waits until every subscription has ended; once `cancel` fires, at most the shutdown
    /// timeout more: past it, subscriptions still flushing are abandoned. Their
    /// checkpoints only ever follow durable writes, so they stay behind the data. A run
    /// with no subscription (a shard with nothing to read, or a reload that removed every
    /// one) stays up, answering /healthz, rather than exit and be restarted.
    pub async fn wait(mut self) -> RunReport {
        let cancel = self.cancel.clone();
        let timeout = self.shutdown_timeout;
        let deadline = async {
            cancel.cancelled().await;
            tokio::time::sleep(timeout).await;
        };
        tokio::pin!(deadline);
        let idle_until = self
            .until_idle
            .map(|idle| tokio::time::Instant::now() + idle);
        let mut abandoned = false;
        loop {
            let empty = self.running.tasks.is_empty();
            if self.running.all_ended() || (empty && cancel.is_cancelled()) {
                break;
            }
            tokio::select! {
                Some(joined) = self.running.tasks.join_next_with_id(), if !empty => {
                    self.running.joined(joined, timeout);
                }
                _ = &mut deadline, if !abandoned && !empty => {
                    abandoned = true;
                    tracing::error!(timeout_secs = timeout.as_secs(), unfinished = self.running.tasks.len(), "Subscriptions did not stop within the shutdown timeout; abandoning them. Their checkpoints stay behind what was written.");
                    self.running.tasks.abort_all();
                }
                Some(()) = changed(&mut self.reload), if !cancel.is_cancelled() => self.reload().await,
                _ = cancel.cancelled(), if empty => {}
                _ = sleep_until(idle_until), if empty => break,
            }
        }
        // What aborted or late subscriptions staged goes in with one last commit.
        if let Err(error) = self.running.ctx.pipeline.checkpoints.commit().await {
            tracing::error!(%error, "Last checkpoint commit failed; the next start replays from the positions committed before.");
        }
        self.observers.cancel();
        RunReport {
            subscriptions: self.running.into_outcomes(),
            metrics_addr: self.metrics_addr,
        }
    }

    async fn reload(&mut self) {
        let Some(reload) = &self.reload else {
            return;
        };
        match (reload.replan)() {
            Ok(mut plan) => {
                keep_own_shard(&mut plan);
                self.running.apply(plan).await;
            }
            Err(error) => {
                tracing::error!(%error, "Configuration not reloaded: it does not load; the running subscriptions go on unchanged.");
            }
        }
    }
}

/// The next change of the configuration; never without a reload.
async fn changed(reload: &mut Option<live::Reload>) -> Option<()> {
    match reload {
        Some(reload) => reload.changed.recv().await,
        None => std::future::pending().await,
    }
}

/// Until `at`; never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// With a shard, only the subscriptions this process owns.
fn keep_own_shard(plan: &mut RunPlan) {
    let Some(shard) = plan.shard else {
        return;
    };
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

/// One transform runtime (engine and compile cache) for every chain of the run.
pub(crate) async fn transform_runtime(
    plan: &RunPlan,
) -> Result<Option<Arc<transform::Runtime>>, Error> {
    let specs: Vec<_> = plan
        .subscriptions
        .iter()
        .flat_map(|s| &s.config.transforms)
        .collect();
    if specs.is_empty() {
        return Ok(None);
    }
    let options = runtime_options(plan, specs.iter().any(|s| s.limits.fuel.is_some()));
    let runtime = tokio::task::spawn_blocking(move || transform::Runtime::new(options))
        .await
        .expect("starting the transform runtime does not panic")?;
    Ok(Some(Arc::new(runtime)))
}

/// One watcher of the component files of every chain of the run: a changed file (or
/// SIGHUP) tells each chain to look whether its programs are still current, so 10,000
/// subscriptions of one transform cost one poll a second, not 10,000.
pub(super) fn watch_components(runtime: &Arc<transform::Runtime>, cancel: CancellationToken) {
    let (paths, changed) = (runtime.clone(), runtime.clone());
    crate::watch::watch(
        move || paths.component_paths(),
        "transforms",
        move |change| changed.components_changed(change == crate::watch::Change::Hangup),
        cancel,
    );
}

/// The transform runtime's settings for `plan`, metering fuel if `fuel`.
fn runtime_options(plan: &RunPlan, fuel: bool) -> transform::RuntimeOptions {
    transform::RuntimeOptions {
        cache_dir: plan.cache_dir.clone(),
        fuel,
        idle_bytes: plan.transform_idle_bytes,
    }
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
        transform::Runtime::new(transform::RuntimeOptions {
            cache_dir,
            fuel,
            ..Default::default()
        })
    })
    .await
    .expect("starting the transform runtime does not panic")?;
    load_chain_with(Arc::new(runtime), specs).await
}

pub(crate) async fn load_chain_with(
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
