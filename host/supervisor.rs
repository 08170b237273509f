//! The run: every subscription of a plan as its own task, side by side, each isolated
//! from the others (a failure or a panic ends that subscription only), sharing the Pub/Sub
//! connections (one per 100 streams of an endpoint, any orgs), one session per org, one
//! schema cache, the Zerobus streams, one transform runtime and the Lease fence; and the
//! stop, bounded by the shutdown timeout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{RunPlan, SubscriptionPlan};
use crate::error::Error;
use crate::health::{self, Health, State};
use crate::pipeline::{self, SubscriptionStats};
use crate::salesforce::auth::{Authenticator, Credentials, SOAP_RETIREMENT};
use crate::salesforce::pubsub::PubSubConnection;
use crate::{http, lease, transform};

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

/// A run whose subscriptions are started.
pub struct Started {
    metrics_addr: Option<std::net::SocketAddr>,
    tasks: tokio::task::JoinSet<Done>,
    /// Which subscription each task runs, for a task that panics and returns nothing.
    names: HashMap<tokio::task::Id, (usize, String, String)>,
    healths: Vec<Arc<Health>>,
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
    let shared = Shared::prepare(&plan, runtime).await?;
    let observers = cancel.child_token();
    let metrics_addr = match plan.metrics_listen {
        Some(addr) => Some(
            http::serve(addr, shared.healths.clone(), observers.clone())
                .await?
                .0,
        ),
        None => None,
    };
    tokio::spawn(
        shared
            .pipeline
            .checkpoints
            .clone()
            .committer(plan.options.flush_interval, observers.clone()),
    );
    tokio::spawn(health::report(
        shared.healths.clone(),
        plan.health_interval,
        observers.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = HashMap::new();
    let subscriptions = std::mem::take(&mut plan.subscriptions);
    for (i, (sub, chain)) in subscriptions.into_iter().zip(chains).enumerate() {
        let named = (i, sub.name.clone(), sub.config.channel.clone());
        let handle = tasks.spawn(supervise(i, sub, chain, &plan, &shared, cancel.clone()));
        names.insert(handle.id(), named);
    }
    Ok(Started {
        metrics_addr,
        tasks,
        names,
        healths: shared.healths,
        observers,
        cancel,
        shutdown_timeout: plan.shutdown_timeout,
        until_idle: plan.options.until_idle,
    })
}

impl Started {
    /// Where `/metrics`, `/healthz` and `/stats` are served, when they are.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Each subscription's live figures, for a program embedding the host to report on.
    pub fn health(&self) -> Vec<Arc<Health>> {
        self.healths.clone()
    }

    /// Waits until every subscription has ended.
    pub async fn wait(self) -> RunReport {
        if self.tasks.is_empty() {
            // A shard with nothing to read stays up (and keeps answering /healthz) rather
            // than exit and be restarted by its supervisor.
            match self.until_idle {
                Some(idle) => tokio::select! {
                    _ = self.cancel.cancelled() => {}
                    _ = tokio::time::sleep(idle) => {}
                },
                None => self.cancel.cancelled().await,
            }
        }
        let outcomes = join(
            self.tasks,
            self.names,
            &self.healths,
            self.shutdown_timeout,
            &self.cancel,
        )
        .await;
        self.observers.cancel();
        RunReport {
            subscriptions: outcomes,
            metrics_addr: self.metrics_addr,
        }
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

/// What the subscriptions of a run share: connections, the transform runtime, the Lease
/// fence, and their health figures.
struct Shared {
    runtime: Option<Arc<transform::Runtime>>,
    /// The Zerobus streams and the schema cache.
    pipeline: pipeline::Shared,
    /// Per subscription, its connection.
    connections: Vec<PubSubConnection>,
    fence: Option<lease::Fence>,
    healths: Vec<Arc<Health>>,
}

impl Shared {
    async fn prepare(
        plan: &RunPlan,
        runtime: Option<Arc<transform::Runtime>>,
    ) -> Result<Shared, Error> {
        let endpoints = plan
            .subscriptions
            .iter()
            .map(|s| plan.orgs[s.org].pubsub_endpoint.as_str());
        let slots = connection_slots(endpoints);
        let mut channels = HashMap::new();
        let mut by_org = HashMap::new();
        let http = crate::salesforce::auth::http_client();
        let mut connections = Vec::with_capacity(slots.len());
        for (sub, slot) in plan.subscriptions.iter().zip(&slots) {
            if !channels.contains_key(slot) {
                let channel = crate::salesforce::pubsub::connection::channel(slot.0)
                    .map_err(|e| Error::from(pipeline::PipelineError::from(e)))?;
                channels.insert(*slot, channel);
            }
            let connection = by_org.entry((sub.org, *slot)).or_insert_with(|| {
                let org = &plan.orgs[sub.org];
                let authenticator = Authenticator::with_client(
                    http.clone(),
                    &org.login_url,
                    &org.api_version,
                    org.credentials.clone(),
                );
                PubSubConnection::new(channels[slot].clone(), authenticator)
            });
            connections.push(connection.clone());
        }
        let fence = match &plan.lease {
            Some(settings) => Some(lease::Fence::connect(settings.clone()).await?),
            None => None,
        };
        let healths = plan
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
        Ok(Shared {
            runtime,
            pipeline: pipeline::Shared::new(&plan.options),
            connections,
            fence,
            healths,
        })
    }
}

type Done = (usize, String, Result<SubscriptionStats, Error>);

/// One subscription's task: its pipeline, under its Lease when fenced, its outcome in its
/// health. A failure ends this subscription only.
fn supervise(
    i: usize,
    sub: SubscriptionPlan,
    chain: Option<transform::Chain>,
    plan: &RunPlan,
    shared: &Shared,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = Done> + Send + 'static {
    let others = shared.healths.len() > 1;
    let connection = shared.connections[i].clone();
    let health = shared.healths[i].clone();
    let options = plan.options.clone();
    let org = plan.orgs[sub.org].name.clone();
    let fence = shared.fence.clone();
    let runtime = shared.runtime.clone();
    let common = shared.pipeline.clone();
    async move {
        let mut preloaded = Some(chain);
        let mut work = |cancel: CancellationToken| {
            let preloaded = preloaded.take();
            let (connection, config, options, health, runtime, common) = (
                connection.clone(),
                sub.config.clone(),
                options.clone(),
                health.clone(),
                runtime.clone(),
                common.clone(),
            );
            async move {
                // After a lost Lease the chain went with the stopped run: load it again
                // (from the compile cache) for the next.
                let chain = match (preloaded, runtime) {
                    (Some(chain), _) => chain,
                    (None, Some(runtime)) => load_chain_with(runtime, &config.transforms).await?,
                    (None, None) => None,
                };
                health.set_state(State::Starting);
                pipeline::run_subscription(
                    connection, config, chain, options, common, health, cancel,
                )
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
    }
}

/// Waits for every task; once `cancel` fires, at most `shutdown_timeout` more: past it,
/// subscriptions still flushing are abandoned. Their checkpoints only ever follow durable
/// writes, so they stay behind the data. A task that panicked is that subscription's error.
async fn join(
    mut tasks: tokio::task::JoinSet<Done>,
    mut names: HashMap<tokio::task::Id, (usize, String, String)>,
    healths: &[Arc<Health>],
    shutdown_timeout: Duration,
    cancel: &CancellationToken,
) -> Vec<SubscriptionOutcome> {
    let mut outcomes: Vec<Option<SubscriptionOutcome>> = (0..healths.len()).map(|_| None).collect();
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
    outcomes.into_iter().flatten().collect()
}

/// Salesforce allows at most this many concurrent streams on one HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 100;

/// For each subscription (given by its org's Pub/Sub endpoint), the connection it uses:
/// (endpoint, n) where n counts that endpoint's subscriptions, of any org, in blocks of
/// [`STREAMS_PER_CONNECTION`]. One endpoint serves every org, so 10,000 subscriptions
/// need 100 connections, not 10,000.
fn connection_slots<'a>(endpoints: impl Iterator<Item = &'a str>) -> Vec<(&'a str, usize)> {
    let mut seen = HashMap::<&str, usize>::new();
    endpoints
        .map(|endpoint| {
            let n = seen.entry(endpoint).or_default();
            let slot = (endpoint, *n / STREAMS_PER_CONNECTION);
            *n += 1;
            slot
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_with_more_than_100_subscriptions_gets_another_connection() {
        let endpoints = (0..250).map(|i| if i % 5 == 0 { "https://b" } else { "https://a" });
        let slots = connection_slots(endpoints);
        let distinct: std::collections::BTreeSet<_> = slots.iter().copied().collect();
        assert_eq!(
            distinct.into_iter().collect::<Vec<_>>(),
            [("https://a", 0), ("https://a", 1), ("https://b", 0)],
            "200 subscriptions of endpoint a on two connections, 50 of b on one"
        );
        for slot in [("https://a", 0), ("https://a", 1), ("https://b", 0)] {
            let n = slots.iter().filter(|s| **s == slot).count();
            assert!(n <= STREAMS_PER_CONNECTION, "{slot:?}: {n}");
        }
    }
}
