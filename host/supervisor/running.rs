//! The subscriptions running in a process, as tasks: started, ended (their outcome kept
//! for the report), and changed by a reload (see [`super::live`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::connections::{Connections, Slot};
use super::live::{fingerprint, tenant_of};
use super::{SubscriptionOutcome, load_chain_with};
use crate::backoff::Backoff;
use crate::config::{OrgConfig, RunOptions, RunPlan, SubscriptionPlan};
use crate::error::Error;
use crate::health::{Health, Registry, State};
use crate::pipeline::{self, SubscriptionStats};
use crate::{lease, transform};

/// What every subscription of the run shares.
pub(super) struct Context {
    pub(super) runtime: Option<Arc<transform::Runtime>>,
    pub(super) pipeline: pipeline::Shared,
    pub(super) connections: Connections,
    pub(super) fence: Option<lease::Fence>,
    pub(super) registry: Registry,
    /// Shared, not copied: every subscription's task holds it.
    pub(super) options: Arc<RunOptions>,
    pub(super) max_checkpoint_lag: Duration,
    /// The transform runtime's settings, for a reload that starts the first chain.
    pub(super) transform_options: transform::RuntimeOptions,
}

type Done = (usize, String, Result<SubscriptionStats, Error>);

/// A subscription to start once the run it replaces has stopped.
struct Next {
    sub: SubscriptionPlan,
    org: OrgConfig,
    chain: Option<transform::Chain>,
}

/// One running subscription.
struct Entry {
    name: String,
    fingerprint: [u8; 32],
    cancel: CancellationToken,
    health: Arc<Health>,
    slot: Slot,
    /// Stopped by a reload: removed, or restarting as `next`.
    retiring: bool,
    next: Option<Next>,
}

pub(super) struct Running {
    pub(super) ctx: Context,
    pub(super) tasks: JoinSet<Done>,
    entries: HashMap<usize, Entry>,
    by_task: HashMap<Id, usize>,
    next_index: usize,
    outcomes: Vec<(usize, SubscriptionOutcome)>,
    /// Subscriptions of the current plan that ended on their own, by name, with what they
    /// ran and their figures (still at /subscriptions): a reload starts one again only
    /// when its configuration changed.
    ended: HashMap<String, ([u8; 32], Arc<Health>)>,
    /// Names of the current plan that were started.
    current: HashSet<String>,
    cancel: CancellationToken,
}

impl Running {
    pub(super) fn new(ctx: Context, cancel: CancellationToken) -> Running {
        Running {
            ctx,
            tasks: JoinSet::new(),
            entries: HashMap::new(),
            by_task: HashMap::new(),
            next_index: 0,
            outcomes: Vec::new(),
            ended: HashMap::new(),
            current: HashSet::new(),
            cancel,
        }
    }

    /// Every planned subscription has ended (a plan with none never has).
    pub(super) fn all_ended(&self) -> bool {
        self.tasks.is_empty() && !self.current.is_empty()
    }

    /// The outcomes, in the order the subscriptions started.
    pub(super) fn into_outcomes(mut self) -> Vec<SubscriptionOutcome> {
        self.outcomes.sort_by_key(|(i, _)| *i);
        self.outcomes.into_iter().map(|(_, o)| o).collect()
    }

    /// Starts `sub` of `org` on a connection with room, under a child of the run's token.
    pub(super) fn spawn(
        &mut self,
        sub: SubscriptionPlan,
        org: &OrgConfig,
        chain: Option<transform::Chain>,
    ) -> Result<(), Error> {
        let (connection, slot) = self
            .ctx
            .connections
            .assign(org)
            .map_err(|e| Error::from(pipeline::PipelineError::from(e)))?;
        let health = Arc::new(
            Health::new(
                &sub.name,
                &org.name,
                &sub.config.channel,
                &sub.config.sink.to_string(),
                sub.config.idle_timeout,
                sub.config.max_timeouts,
            )
            .with_max_checkpoint_lag(self.ctx.max_checkpoint_lag),
        );
        if sub.config.snapshot {
            health.allow_snapshots();
        }
        self.ctx.registry.add(health.clone());
        let index = self.next_index;
        self.next_index += 1;
        let cancel = self.cancel.child_token();
        let entry = Entry {
            name: sub.name.clone(),
            fingerprint: fingerprint(org, &sub),
            cancel: cancel.clone(),
            health: health.clone(),
            slot,
            retiring: false,
            next: None,
        };
        self.current.insert(sub.name.clone());
        if let Some((_, old)) = self.ended.remove(&sub.name) {
            self.ctx.registry.remove(&old);
        }
        let task = Task {
            index,
            org: org.identity(),
            connection,
            health,
            options: self.ctx.options.clone(),
            fence: self.ctx.fence.clone(),
            runtime: self.ctx.runtime.clone(),
            common: self.ctx.pipeline.clone(),
            others: self.ctx.registry.len() > 1,
        };
        let handle = self.tasks.spawn(task.supervise(sub, chain, cancel));
        self.by_task.insert(handle.id(), index);
        self.entries.insert(index, entry);
        Ok(())
    }

    /// A task ended: its outcome is kept, its stream's place freed; a subscription a
    /// reload changed starts again now.
    pub(super) fn joined(
        &mut self,
        joined: Result<(Id, Done), JoinError>,
        shutdown_timeout: Duration,
    ) {
        let (index, result) = match joined {
            Ok((id, (index, _, result))) => {
                self.by_task.remove(&id);
                (index, result)
            }
            Err(e) => {
                let index = self.by_task.remove(&e.id()).expect("every task is known");
                let channel = self.entries[&index].health.channel.clone();
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
                let entry = &self.entries[&index];
                tracing::error!(subscription = %entry.name, %error, "Subscription failed.");
                entry.health.set_state(State::Failed(error.to_string()));
                (index, Err(error.into()))
            }
        };
        let entry = self
            .entries
            .remove(&index)
            .expect("every task has its entry");
        self.ctx.connections.release(&entry.slot);
        if entry.retiring {
            self.ctx.registry.remove(&entry.health);
        } else {
            self.ended
                .insert(entry.name.clone(), (entry.fingerprint, entry.health));
        }
        let name = entry.name;
        self.outcomes
            .push((index, SubscriptionOutcome { name, result }));
        if let Some(next) = entry.next
            && !self.cancel.is_cancelled()
        {
            let name = next.sub.name.clone();
            if let Err(error) = self.spawn(next.sub, &next.org, next.chain) {
                tracing::error!(subscription = %name, %error, "Changed subscription not restarted.");
            }
        }
    }

    /// Applies a new plan: see [`super::live`].
    pub(super) async fn apply(&mut self, plan: RunPlan) {
        for (tenant, reason) in &plan.rejected_tenants {
            tracing::error!(%tenant, %reason, "Tenant entry invalid: the change is skipped, and what this tenant ran goes on as it was.");
        }
        let rejected: HashSet<&str> = plan
            .rejected_tenants
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        if format!("{:?}", plan.options) != format!("{:?}", self.ctx.options) {
            tracing::warn!(
                "Run-wide settings changed (state directory, sinks, stores, flush interval, …): they take effect at the next restart; subscriptions are reloaded now."
            );
        }
        let mut wanted: HashMap<&str, ([u8; 32], &SubscriptionPlan)> = plan
            .subscriptions
            .iter()
            .map(|s| (s.name.as_str(), (fingerprint(&plan.orgs[s.org], s), s)))
            .collect();
        let kept_as_it_was = |name: &str| tenant_of(name).is_some_and(|t| rejected.contains(t));
        // What the plan runs from now on: the rest stops, or, once ended, is forgotten.
        let planned: HashSet<String> = wanted.keys().map(|n| n.to_string()).collect();
        self.current
            .retain(|name| planned.contains(name) || kept_as_it_was(name));
        let (mut removed, mut changed, mut kept, mut added) = (0, 0, 0, 0);
        let mut restarts = Vec::new();
        for (index, entry) in self.entries.iter_mut() {
            match wanted.remove(entry.name.as_str()) {
                // Still stopping after an earlier reload: it starts as planned now once
                // stopped, never beside itself.
                Some((_, sub)) if entry.retiring => restarts.push((*index, sub)),
                None if kept_as_it_was(&entry.name) => kept += usize::from(!entry.retiring),
                // Stopping, and no longer planned: nothing starts after it.
                None if entry.retiring => entry.next = None,
                None => {
                    tracing::info!(subscription = %entry.name, "Removed from the configuration: stopping it with a final flush and commit.");
                    entry.retiring = true;
                    entry.next = None;
                    entry.cancel.cancel();
                    removed += 1;
                }
                Some((print, _)) if print == entry.fingerprint => kept += 1,
                Some((_, sub)) => restarts.push((*index, sub)),
            }
        }
        for (index, sub) in restarts {
            let Some(chain) = self.chain_for(sub).await else {
                continue;
            };
            let Some(entry) = self.entries.get_mut(&index) else {
                continue;
            };
            tracing::info!(subscription = %entry.name, "Changed in the configuration: restarting it once its run stopped with a final flush and commit.");
            entry.retiring = true;
            entry.next = Some(Next {
                sub: sub.clone(),
                org: plan.orgs[sub.org].clone(),
                chain,
            });
            entry.cancel.cancel();
            changed += 1;
        }
        let registry = &self.ctx.registry;
        self.ended.retain(|name, (_, health)| {
            let stays = planned.contains(name) || kept_as_it_was(name);
            if !stays {
                registry.remove(health);
            }
            stays
        });
        for (name, (print, sub)) in wanted {
            if self.cancel.is_cancelled() {
                break;
            }
            if self.ended.get(name).is_some_and(|(ran, _)| *ran == print) {
                continue;
            }
            let Some(chain) = self.chain_for(sub).await else {
                continue;
            };
            match self.spawn(sub.clone(), &plan.orgs[sub.org], chain) {
                Ok(()) => added += 1,
                Err(error) => {
                    tracing::error!(subscription = %name, %error, "Added subscription not started.")
                }
            }
        }
        tracing::info!(
            added,
            removed,
            changed,
            unchanged = kept,
            "Configuration reloaded: {added} added, {removed} removed, {changed} restarting with changes, {kept} unchanged."
        );
    }

    /// The transform chain of a subscription a reload starts; `None` (logged) when it does
    /// not load: that subscription is skipped, the others go on.
    async fn chain_for(&mut self, sub: &SubscriptionPlan) -> Option<Option<transform::Chain>> {
        if sub.config.transforms.is_empty() {
            return Some(None);
        }
        if self.ctx.runtime.is_none() {
            let options = transform::RuntimeOptions {
                fuel: sub
                    .config
                    .transforms
                    .iter()
                    .any(|s| s.limits.fuel.is_some()),
                ..self.ctx.transform_options.clone()
            };
            match tokio::task::spawn_blocking(move || transform::Runtime::new(options)).await {
                Ok(Ok(runtime)) => {
                    let runtime = Arc::new(runtime);
                    super::watch_components(&runtime, self.cancel.clone());
                    self.ctx.registry.set_transform_pool(runtime.pool_figures());
                    self.ctx.runtime = Some(runtime);
                }
                Ok(Err(error)) => {
                    tracing::error!(subscription = %sub.name, %error, "Transform runtime did not start; the subscription is not started.");
                    return None;
                }
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        let runtime = self.ctx.runtime.clone().expect("started above");
        match load_chain_with(runtime, &sub.config.transforms).await {
            Ok(chain) => Some(chain),
            Err(error) => {
                tracing::error!(subscription = %sub.name, %error, "Transform chain did not load; the subscription is not started (or keeps its old configuration).");
                None
            }
        }
    }
}

/// The longest wait before a failed subscription is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What one subscription's task needs.
struct Task {
    index: usize,
    /// The org's [`OrgConfig::identity`], which its Lease is named by.
    org: String,
    connection: crate::salesforce::pubsub::PubSubConnection,
    health: Arc<Health>,
    options: Arc<RunOptions>,
    fence: Option<lease::Fence>,
    runtime: Option<Arc<transform::Runtime>>,
    common: pipeline::Shared,
    /// Whether other subscriptions run beside it, for the log.
    others: bool,
}

impl Task {
    /// The subscription's pipeline, under its Lease when fenced, its outcome in its
    /// health. A failure ends this subscription only.
    async fn supervise(
        self,
        sub: SubscriptionPlan,
        chain: Option<transform::Chain>,
        cancel: CancellationToken,
    ) -> Done {
        let Task {
            index,
            org,
            connection,
            health,
            options,
            fence,
            runtime,
            common,
            others,
        } = self;
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
                    (None, Some(runtime)) => {
                        Box::pin(load_chain_with(runtime, &config.transforms)).await?
                    }
                    (None, None) => None,
                };
                health.set_state(State::Starting);
                // Boxed: its state is on the heap only while it runs, not in every task's future.
                Box::pin(pipeline::run_subscription(
                    connection, config, chain, options, common, health, cancel,
                ))
                .await
                .map_err(Error::from)
            }
        };
        // A bounded run (`until-idle`) reports its failures; a service starts a
        // subscription again after an error that may pass, waiting longer each time.
        let restarts = options.until_idle.is_none();
        let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
        let result = loop {
            let attempt = std::time::Instant::now();
            let result = match &fence {
                None => work(cancel.clone()).await.map(Some),
                Some(fence) => {
                    let lease = lease::Fence::lease_name(
                        &org,
                        &sub.config.channel,
                        &sub.config.sink.to_string(),
                    );
                    Box::pin(fence.hold(&lease, &cancel, &health, &mut work)).await
                }
            };
            let error = match result {
                Err(error) if restarts && error.is_retryable() && !cancel.is_cancelled() => error,
                other => break other,
            };
            // A run that went well for a while before it failed starts again soon.
            if attempt.elapsed() > MAX_BACKOFF {
                backoff.reset();
            }
            backing_off(&health, &sub.name, &error, backoff.delay());
            if backoff.wait(&cancel).await {
                // Stopped while waiting: stopped, not failed.
                break Ok(None);
            }
        };
        ended(&health, &sub.name, &result, others);
        // A standby that never held its Lease read nothing: say so rather than leave it out.
        let result = result.map(|stats| {
            stats.unwrap_or_else(|| SubscriptionStats {
                channel: sub.config.channel.clone(),
                target: sub.config.sink.to_string(),
                ..SubscriptionStats::default()
            })
        });
        (index, sub.name, result)
    }
}

/// A subscription stopped by an error that may pass, to start again after `within`: counted,
/// said (throttled: thousands may stop at once), and its state.
fn backing_off(health: &Health, name: &str, error: &Error, within: Duration) {
    let within = within.as_secs_f64();
    health
        .restarts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(held_back) = crate::throttle::admit("restart") {
        tracing::warn!(subscription = %name, %error, held_back, "Subscription stopped by an error that may pass; starting it again within {within:.0} s.");
    }
    health.set_state(State::BackingOff(format!(
        "{error}; next attempt within {within:.0} s"
    )));
}

/// A subscription's end in its health, and a failure in the log (throttled when others run).
fn ended(
    health: &Health,
    name: &str,
    result: &Result<Option<SubscriptionStats>, Error>,
    others: bool,
) {
    match result {
        Ok(_) => health.set_state(State::Stopped),
        Err(error) => {
            if !others {
                tracing::error!(subscription = %name, %error, "Subscription failed.");
            } else if let Some(held_back) = crate::throttle::admit("failed") {
                tracing::error!(subscription = %name, %error, held_back, "Subscription failed; the others keep running (see /subscriptions?state=failed).");
            }
            health.set_state(State::Failed(error.to_string()));
        }
    }
}
