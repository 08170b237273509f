//! What each subscription is doing, as it happens: counters the pipeline bumps, the state
//! it is in, and the judgement "healthy or stuck, and why". The periodic health report,
//! the progress lines of a backfill, `/metrics`, `/healthz` and `/stats` all read this.
//! One thing goes the other way: a snapshot asked for over HTTP, which the subscription
//! takes when it next can.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

mod report;

pub use report::report;

use crate::checkpoint::{StoreState, StoreStatus};
use crate::transform::TransformStats;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "error")]
pub enum State {
    Starting,
    Running,
    /// Resubscribing after a stream failure.
    Reconnecting(String),
    /// Not reading: another process holds this subscription's Lease (see [`crate::lease`]).
    Standby(String),
    /// Stopped by an error that may pass (a sink, store or warehouse unreachable, a
    /// panic); started again after a wait: the error and when.
    #[serde(rename = "backing-off")]
    BackingOff(String),
    /// Streaming, but the org's daily API requests are used up: what needs the REST or
    /// Bulk API (re-reading records for the current state) waits, and when it tries again.
    Limited(String),
    /// Streaming held, not stopped: its checkpoint store has been failing for as much
    /// written data as a restart may replay; it goes on once the store answers.
    Paused(String),
    Stopped,
    Failed(String),
}

impl State {
    /// Every state's name, as `/subscriptions` and `sfzb_subscriptions{state}` give it.
    pub const NAMES: [&'static str; 9] = [
        "starting",
        "running",
        "reconnecting",
        "standby",
        "backing-off",
        "limited",
        "paused",
        "stopped",
        "failed",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Reconnecting(_) => "reconnecting",
            State::Standby(_) => "standby",
            State::BackingOff(_) => "backing-off",
            State::Limited(_) => "limited",
            State::Paused(_) => "paused",
            State::Stopped => "stopped",
            State::Failed(_) => "failed",
        }
    }

    /// Why it is in this state, when that has a reason.
    pub fn reason(&self) -> Option<&str> {
        match self {
            State::Reconnecting(r)
            | State::Standby(r)
            | State::BackingOff(r)
            | State::Limited(r)
            | State::Paused(r)
            | State::Failed(r) => Some(r),
            State::Starting | State::Running | State::Stopped => None,
        }
    }
}

/// Live figures of one subscription.
#[derive(Debug)]
pub struct Health {
    pub name: String,
    pub org: String,
    pub channel: String,
    pub target: String,
    max_timeouts: u32,
    idle_timeout: Duration,
    started: Instant,
    pub received: AtomicU64,
    pub written: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub keepalives: AtomicU64,
    /// Stream failures and idle timeouts that led to a resubscription.
    pub reconnects: AtomicU64,
    /// Times the supervisor started the whole subscription again after an error (a new
    /// login, target and stream), unlike a resubscription.
    pub restarts: AtomicU64,
    /// Events received and not yet covered by a committed checkpoint.
    pub in_flight: AtomicU64,
    consecutive_timeouts: AtomicU32,
    /// A Subscribe stream has opened at least once.
    subscribed: std::sync::atomic::AtomicBool,
    /// Commit timestamp (ms) of the newest event handled.
    last_commit_ms: AtomicI64,
    /// When the server last sent anything (event or keepalive), ms since the epoch.
    last_message_ms: AtomicI64,
    checkpoint_ms: AtomicI64,
    /// When the oldest event not yet behind a checkpoint arrived (0: none is).
    pending_since_ms: AtomicI64,
    /// Past this, events received and not checkpointed make the subscription unhealthy.
    max_checkpoint_lag: Duration,
    checkpoint: Mutex<Option<String>>,
    org_id: Mutex<Option<String>>,
    state: Mutex<State>,
    transforms: Mutex<Vec<TransformStats>>,
    /// A snapshot (the initial one, or one read again), while it is read.
    snapshot: Mutex<Option<crate::snapshot::Progress>>,
    /// Whether it reads a snapshot on request (`snapshot = true`).
    snapshots: AtomicBool,
    /// A snapshot asked for (`POST /subscriptions/snapshot`) and not yet begun.
    snapshot_asked: AtomicBool,
    snapshot_wake: tokio::sync::Notify,
    /// The store its checkpoint is committed to, and how the stores are doing.
    checkpoint_store: std::sync::OnceLock<(Arc<StoreStatus>, String)>,
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

impl Health {
    pub fn new(
        name: &str,
        org: &str,
        channel: &str,
        target: &str,
        idle_timeout: Duration,
        max_timeouts: u32,
    ) -> Health {
        Health {
            name: name.to_string(),
            org: org.to_string(),
            channel: channel.to_string(),
            target: target.to_string(),
            max_timeouts: max_timeouts.max(1),
            idle_timeout,
            started: Instant::now(),
            received: AtomicU64::new(0),
            written: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            keepalives: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            consecutive_timeouts: AtomicU32::new(0),
            subscribed: std::sync::atomic::AtomicBool::new(false),
            last_commit_ms: AtomicI64::new(0),
            last_message_ms: AtomicI64::new(0),
            checkpoint_ms: AtomicI64::new(0),
            pending_since_ms: AtomicI64::new(0),
            // No stall is reported until the run gives its `max-checkpoint-lag-secs`.
            max_checkpoint_lag: Duration::MAX,
            checkpoint: Mutex::new(None),
            org_id: Mutex::new(None),
            state: Mutex::new(State::Starting),
            transforms: Mutex::new(Vec::new()),
            snapshot: Mutex::new(None),
            snapshots: AtomicBool::new(false),
            snapshot_asked: AtomicBool::new(false),
            snapshot_wake: tokio::sync::Notify::new(),
            checkpoint_store: std::sync::OnceLock::new(),
        }
    }

    /// The subscription reads a snapshot when one is asked for (it has `snapshot = true`).
    pub fn allow_snapshots(&self) {
        self.snapshots.store(true, Relaxed);
    }

    /// Asks the subscription to read its object again; false if it reads no snapshots.
    pub fn ask_for_snapshot(&self) -> bool {
        if !self.snapshots.load(Relaxed) {
            return false;
        }
        self.snapshot_asked.store(true, Relaxed);
        self.snapshot_wake.notify_one();
        true
    }

    /// A snapshot is read: one asked for meanwhile is answered by it, as the changes since
    /// its position follow it.
    pub fn snapshot_read(&self) {
        self.snapshot_asked.store(false, Relaxed);
    }

    /// Waits until a snapshot is asked for, and takes the request. The flag, not the
    /// wake-up, is the request: a future dropped before it was woken loses nothing.
    pub async fn snapshot_asked(&self) {
        loop {
            if self.snapshot_asked.swap(false, Relaxed) {
                return;
            }
            self.snapshot_wake.notified().await;
        }
    }

    /// The snapshot being read, if one is.
    pub fn snapshot_progress(&self) -> Option<crate::snapshot::Progress> {
        self.snapshot.lock().expect("health lock").clone()
    }

    /// Where the snapshot being read stands; `None` once it is written.
    pub fn set_snapshot_progress(&self, progress: Option<crate::snapshot::Progress>) {
        *self.snapshot.lock().expect("health lock") = progress;
    }

    /// How long events may wait for their checkpoint before `/healthz` reports it.
    pub fn with_max_checkpoint_lag(mut self, limit: Duration) -> Self {
        self.max_checkpoint_lag = limit;
        self
    }

    /// `n` events arrived and wait for the sink and the checkpoint.
    pub fn events_received(&self, n: u64) {
        if self.in_flight.fetch_add(n, Relaxed) == 0 {
            self.pending_since_ms.store(now_ms(), Relaxed);
        }
    }

    pub fn set_state(&self, state: State) {
        if state == State::Starting {
            // Starting after a standby: silence counts from now, not from the process start.
            self.last_message_ms.store(now_ms(), Relaxed);
            self.consecutive_timeouts.store(0, Relaxed);
        }
        *self.state.lock().expect("health lock") = state;
    }

    pub fn state(&self) -> State {
        self.state.lock().expect("health lock").clone()
    }

    pub fn org_id(&self) -> Option<String> {
        self.org_id.lock().expect("health lock").clone()
    }

    pub fn set_org_id(&self, org_id: &str) {
        *self.org_id.lock().expect("health lock") = Some(org_id.to_string());
    }

    /// The Pub/Sub API accepted a Subscribe stream.
    pub fn stream_opened(&self) {
        self.subscribed.store(true, Relaxed);
    }

    pub fn has_subscribed(&self) -> bool {
        self.subscribed.load(Relaxed)
    }

    /// The server sent something: the stream is alive.
    pub fn message(&self) {
        self.last_message_ms.store(now_ms(), Relaxed);
        self.consecutive_timeouts.store(0, Relaxed);
        let mut state = self.state.lock().expect("health lock");
        if matches!(
            *state,
            State::Starting | State::Reconnecting(_) | State::Standby(_)
        ) {
            *state = State::Running;
        }
    }

    pub fn event_committed_at(&self, commit_timestamp_ms: i64) {
        self.last_commit_ms.fetch_max(commit_timestamp_ms, Relaxed);
    }

    pub fn idle_timeout(&self) {
        self.consecutive_timeouts.fetch_add(1, Relaxed);
        self.reconnects.fetch_add(1, Relaxed);
    }

    pub fn stream_failed(&self, detail: &str) {
        self.reconnects.fetch_add(1, Relaxed);
        self.set_state(State::Reconnecting(detail.to_string()));
    }

    pub fn checkpointed(&self, replay_id: &str) {
        *self.checkpoint.lock().expect("health lock") = Some(replay_id.to_string());
        self.checkpoint_ms.store(now_ms(), Relaxed);
        self.in_flight.store(0, Relaxed);
        self.pending_since_ms.store(0, Relaxed);
    }

    /// Its checkpoint is committed to `store` of `status` (none: the sink keeps its own).
    pub fn set_checkpoint_store(&self, status: Arc<StoreStatus>, store: String) {
        let _ = self.checkpoint_store.set((status, store));
    }

    /// Its checkpoint store's state, once it has committed to it.
    pub fn checkpoint_store(&self) -> Option<StoreState> {
        let (status, store) = self.checkpoint_store.get()?;
        status.get(store)
    }

    pub fn set_transforms(&self, stats: Vec<TransformStats>) {
        *self.transforms.lock().expect("health lock") = stats;
    }

    /// `None` when healthy, else why not.
    pub fn problem(&self) -> Option<String> {
        match self.state() {
            State::Failed(error) => return Some(format!("failed: {error}")),
            State::BackingOff(error) => return Some(format!("backing off: {error}")),
            State::Paused(why) => return Some(format!("paused: {why}")),
            // Limited streams on: only what needs the API waits, and a restart would not help.
            State::Stopped | State::Standby(_) | State::Limited(_) => return None,
            _ => {}
        }
        let pending_since = self.pending_since_ms.load(Relaxed);
        let waiting_ms = now_ms() - pending_since;
        let limit_ms = i64::try_from(self.max_checkpoint_lag.as_millis()).unwrap_or(i64::MAX);
        if pending_since > 0 && waiting_ms >= limit_ms {
            return Some(format!(
                "stalled: {} events received and not checkpointed for {} s (max-checkpoint-lag-secs = {}); the sink is not making them durable",
                self.in_flight.load(Relaxed),
                waiting_ms / 1000,
                self.max_checkpoint_lag.as_secs()
            ));
        }
        let timeouts = self.consecutive_timeouts.load(Relaxed);
        if timeouts >= self.max_timeouts {
            return Some(format!(
                "stuck: nothing received from Salesforce, not even a keepalive, for {timeouts} idle timeouts of {} s in a row",
                self.idle_timeout.as_secs()
            ));
        }
        let quiet_ms = now_ms() - self.last_message_ms.load(Relaxed).max(self.started_ms());
        let limit_ms = (self.idle_timeout.as_millis() as i64) * i64::from(self.max_timeouts);
        if quiet_ms > limit_ms {
            let state = match self.state() {
                State::Reconnecting(error) => format!(" (last error: {error})"),
                _ => String::new(),
            };
            return Some(format!(
                "stuck: no message from Salesforce for {} s{state}",
                quiet_ms / 1000
            ));
        }
        None
    }

    fn started_ms(&self) -> i64 {
        now_ms() - self.started.elapsed().as_millis() as i64
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = now_ms();
        let last_commit = self.last_commit_ms.load(Relaxed);
        let checkpoint_ms = self.checkpoint_ms.load(Relaxed);
        let received = self.received.load(Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let problem = self.problem();
        Snapshot {
            name: self.name.clone(),
            org: self.org.clone(),
            org_id: self.org_id.lock().expect("health lock").clone(),
            channel: self.channel.clone(),
            target: self.target.clone(),
            state: self.state(),
            running: matches!(
                self.state(),
                State::Starting | State::Running | State::Reconnecting(_)
            ),
            is_healthy: problem.is_none(),
            problem,
            received,
            written: self.written.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            keepalives: self.keepalives.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            queue_size: self.in_flight.load(Relaxed),
            events_per_second: received as f64 / elapsed,
            checkpoint: self.checkpoint.lock().expect("health lock").clone(),
            checkpoint_age_secs: (checkpoint_ms > 0).then(|| (now - checkpoint_ms) as f64 / 1000.0),
            lag_secs: (last_commit > 0).then(|| (now - last_commit).max(0) as f64 / 1000.0),
            consecutive_timeouts: self.consecutive_timeouts.load(Relaxed),
            uptime_secs: elapsed,
            transforms: self.transforms.lock().expect("health lock").clone(),
            snapshot: self.snapshot.lock().expect("health lock").clone(),
            checkpoint_store: self.checkpoint_store(),
        }
    }
}

/// One subscription's figures at one moment; `/stats` serves these (with the reference's
/// `get_stats()` keys: `running`, `queue_size`, `org_id`, `is_healthy`).
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub name: String,
    pub org: String,
    pub org_id: Option<String>,
    pub channel: String,
    pub target: String,
    #[serde(flatten)]
    pub state: State,
    pub running: bool,
    pub is_healthy: bool,
    pub problem: Option<String>,
    pub received: u64,
    pub written: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub keepalives: u64,
    pub reconnects: u64,
    pub restarts: u64,
    /// Events received and not yet behind a committed checkpoint.
    pub queue_size: u64,
    pub events_per_second: f64,
    pub checkpoint: Option<String>,
    pub checkpoint_age_secs: Option<f64>,
    /// Now minus the commit timestamp of the newest event handled.
    pub lag_secs: Option<f64>,
    pub consecutive_timeouts: u32,
    pub uptime_secs: f64,
    pub transforms: Vec<TransformStats>,
    /// A snapshot's progress, while it is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<crate::snapshot::Progress>,
    /// Its checkpoint store's state (none: the sink keeps its own, or nothing committed yet).
    pub checkpoint_store: Option<StoreState>,
}

/// The subscriptions of a run, as they come and go (a live reload adds and removes them):
/// what `/metrics`, `/healthz`, `/subscriptions` and the health reports read; and the
/// process's room for decoded events and its shared transform instances, for `/metrics`.
#[derive(Clone, Default)]
pub struct Registry {
    list: Arc<std::sync::RwLock<Vec<Arc<Health>>>>,
    in_flight: crate::salesforce::pubsub::Budget,
    /// Set once the transform runtime starts (at start, or with the first chain a reload
    /// brings).
    transforms: Arc<std::sync::OnceLock<Arc<crate::transform::PoolFigures>>>,
    /// The process's checkpoint stores, once the run starts.
    checkpoints: Arc<std::sync::OnceLock<Arc<StoreStatus>>>,
    /// Zerobus stream slots in use (each holds at most one open stream).
    zerobus_streams: Arc<std::sync::OnceLock<Arc<std::sync::atomic::AtomicUsize>>>,
}

impl Registry {
    pub fn with_budget(budget: crate::salesforce::pubsub::Budget) -> Registry {
        Registry {
            in_flight: budget,
            ..Default::default()
        }
    }

    /// The events every subscription holds together, and its bound.
    pub fn in_flight(&self) -> &crate::salesforce::pubsub::Budget {
        &self.in_flight
    }

    /// The figures of the process's transform instances, once it has any.
    pub fn set_transform_pool(&self, figures: Arc<crate::transform::PoolFigures>) {
        let _ = self.transforms.set(figures);
    }

    pub fn transform_pool(&self) -> Option<&Arc<crate::transform::PoolFigures>> {
        self.transforms.get()
    }

    /// How the process's checkpoint stores are doing.
    pub fn set_checkpoint_stores(&self, status: Arc<StoreStatus>) {
        let _ = self.checkpoints.set(status);
    }

    /// The Zerobus stream slots in use, counted by the process's pool.
    pub fn set_zerobus_streams(&self, in_use: Arc<std::sync::atomic::AtomicUsize>) {
        let _ = self.zerobus_streams.set(in_use);
    }

    pub fn zerobus_streams(&self) -> usize {
        self.zerobus_streams.get().map_or(0, |n| n.load(Relaxed))
    }

    pub fn checkpoint_stores(&self) -> Vec<StoreState> {
        self.checkpoints.get().map(|s| s.list()).unwrap_or_default()
    }

    /// The subscriptions now.
    pub fn list(&self) -> Vec<Arc<Health>> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many subscriptions there are, without copying the list.
    pub fn len(&self) -> usize {
        self.list.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn add(&self, health: Arc<Health>) {
        self.list
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(health);
    }

    /// Forgets a subscription that ended for good.
    pub fn remove(&self, health: &Arc<Health>) {
        self.list
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|h| !Arc::ptr_eq(h, health));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(
            "a",
            "default",
            "/data/AccountChangeEvent",
            "jsonl:-",
            Duration::from_secs(10),
            2,
        )
    }

    #[test]
    fn consecutive_idle_timeouts_make_a_subscription_stuck_until_a_message_arrives() {
        let h = health();
        h.message();
        assert_eq!(h.problem(), None);
        h.idle_timeout();
        assert_eq!(h.problem(), None);
        h.idle_timeout();
        assert!(h.problem().unwrap().contains("stuck"), "{:?}", h.problem());
        h.message();
        assert_eq!(h.problem(), None);
        assert_eq!(h.snapshot().reconnects, 2);
    }

    #[test]
    fn events_waiting_for_their_checkpoint_past_the_limit_are_unhealthy() {
        let h = health().with_max_checkpoint_lag(Duration::ZERO);
        h.message();
        assert_eq!(h.problem(), None, "nothing pending");
        h.events_received(5);
        let problem = h.problem().expect("stalled");
        assert!(
            problem.contains("5 events") && problem.contains("max-checkpoint-lag-secs"),
            "{problem}"
        );
        h.checkpointed("0a");
        assert_eq!(h.problem(), None, "checkpointed");
    }

    #[test]
    fn a_failed_subscription_is_unhealthy_and_names_the_error() {
        let h = health();
        h.set_state(State::Failed("topic not found".into()));
        let s = h.snapshot();
        assert!(!s.is_healthy && !s.running);
        assert!(s.problem.unwrap().contains("topic not found"));
        let json = serde_json::to_value(h.snapshot()).unwrap();
        assert_eq!(json["state"], "failed");
        assert_eq!(json["is_healthy"], false);
    }
}
