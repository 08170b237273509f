//! One subscription end to end: source → decode → transform chain → sink → checkpoint, with
//! data flowing one way through a bounded channel. The source task receives; this task
//! decodes, runs the chain (on a blocking thread), writes, flushes, and commits the
//! checkpoint only past events that are durably written, dead-lettered, or dropped by a
//! transform.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint::{CheckpointError, CheckpointKey, FileCheckpointStore};
use crate::clock::now_ms;
use crate::event::ReplayId;
use crate::health::{Health, State};
use crate::salesforce::auth::AuthError;
use crate::salesforce::pubsub::{
    ManagedOptions, PubSubConnection, RawEvent, ReplayFallback, SourceMsg, StartPosition,
    SubscribeError, SubscribeOptions, Subscriber,
};
use crate::salesforce::schema::{EventMeta, SchemaCache, decode_event, encode_payload};
use crate::sink::{DeadLetter, Row, Sink, SinkError, SinkSpec, Stage};
use crate::transform::{Chain, ChainOutput, Failed, TransformStats};

/// Flush before the flush interval once the rows written since the last flush hold this
/// much: the Delta sink buffers them in memory until its commit.
const MAX_UNFLUSHED_BYTES: usize = 64 << 20;

/// How one subscription runs.
#[derive(Clone, Debug)]
pub struct SubscriptionConfig {
    pub channel: String,
    pub sink: SinkSpec,
    /// Where dead letters go; `None` = the sink's own dead-letter place.
    pub dead_letter: Option<SinkSpec>,
    /// Overrides the checkpoint and the backfill rule.
    pub replay: Option<StartPosition>,
    /// With no checkpoint, start from EARLIEST (true) or LATEST (false).
    pub backfill_historical: bool,
    /// Resume from the stored checkpoint (false: always start from LATEST, as the
    /// reference's `enable_replay_recovery = False`).
    pub replay_recovery: bool,
    pub batch_size: u32,
    pub idle_timeout: Duration,
    /// Consecutive idle timeouts after which the subscription counts as stuck.
    pub max_timeouts: u32,
    pub on_invalid_replay: ReplayFallback,
    /// The developer name of the Salesforce managed event subscription read with
    /// ManagedSubscribe, when not a plain Subscribe.
    pub managed_subscription: Option<String>,
    /// Transforms, in order.
    pub transforms: Vec<crate::transform::TransformSpec>,
}

/// Settings shared by every subscription of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    /// Stop once no event arrived for this long (keepalives do not count).
    pub until_idle: Option<Duration>,
    /// Flush the sink and commit the checkpoint at least this often while events flow.
    pub flush_interval: Duration,
    /// Events held by one subscription between fetch and write; fetch credit waits for room.
    pub max_in_flight: usize,
    pub zerobus: crate::sink::zerobus::ZerobusSettings,
    /// The SQL warehouse for Zerobus targets: table management and the checkpoint table.
    pub sql: Option<crate::sql::SqlSettings>,
    /// Create a missing Zerobus target table.
    pub auto_create_table: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            state_dir: PathBuf::from(".sfzb-state"),
            until_idle: None,
            flush_interval: Duration::from_secs(1),
            max_in_flight: 1000,
            zerobus: Default::default(),
            sql: None,
            auto_create_table: true,
        }
    }
}

/// What a subscription did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    pub channel: String,
    pub target: String,
    pub received: u64,
    pub written: u64,
    pub dead_lettered: u64,
    /// Events the transform chain dropped.
    pub dropped: u64,
    pub keepalives: u64,
    pub checkpoint: Option<String>,
    pub elapsed_ms: u64,
    /// From the first to the last batch of events.
    pub active_ms: u64,
    pub transforms: Vec<TransformStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    #[error("login for {channel} failed: {source}")]
    Auth {
        channel: String,
        #[source]
        source: AuthError,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "stopping as configured (on_error = stop): {0}; the checkpoint stays before replay id {1}"
    )]
    TransformStop(String, String),
    #[error("Databricks: {0}")]
    Sql(#[from] crate::sql::SqlError),
    #[error(
        "never subscribed to {channel} within the idle limit ({idle_secs} s, --until-idle): {reason}"
    )]
    NeverSubscribed {
        channel: String,
        idle_secs: f64,
        reason: String,
    },
    #[error(
        "{channel} did not stop within the shutdown timeout ({timeout_secs} s, shutdown-timeout-secs); its checkpoint stays behind what was written, and the next start replays from there"
    )]
    ShutdownTimeout { channel: String, timeout_secs: u64 },
    #[error(
        "the {task} of {channel} panicked: {message}; the subscription stops, the others go on"
    )]
    Panicked {
        channel: String,
        task: &'static str,
        message: String,
    },
}

/// A panic's message, for [`PipelineError::Panicked`].
pub fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(error) => error.to_string(),
    }
}

/// Runs one subscription until cancelled, idle (with `until_idle`), or failed. `chain` is
/// the loaded transform chain (`None` or empty: events pass through unchanged).
pub async fn run_subscription(
    connection: PubSubConnection,
    config: SubscriptionConfig,
    chain: Option<Chain>,
    options: RunOptions,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> Result<SubscriptionStats, PipelineError> {
    let span = tracing::info_span!("subscription", name = %health.name, channel = %config.channel, target = %config.sink);
    async move {
        let org_id = login(&connection, &config.channel, &cancel, options.until_idle).await?;
        health.set_org_id(&org_id);
        let store = FileCheckpointStore::new(&options.state_dir);
        let key = CheckpointKey {
            org_id: org_id.clone(),
            channel: config.channel.clone(),
            target: config.sink.to_string(),
        };
        let app_id = format!("sfzb:{org_id}:{}", config.channel);
        let mut sink = Sink::open(&config.sink, &app_id, &options.zerobus).await?;
        let mut databricks = match (&config.sink, &options.sql) {
            (SinkSpec::Zerobus(table), Some(sql)) => {
                Some(Databricks::prepare(sql, table, &key, options.auto_create_table).await?)
            }
            _ => None,
        };
        let checkpoint = match &mut databricks {
            Some(databricks) => databricks.stored.take(),
            None if sink.keeps_checkpoint() => sink.checkpoint(),
            // An explicit start needs no checkpoint, so one that is unreadable can be passed by.
            None if config.replay.is_some() => None,
            None => store.load(&key).await?,
        };
        let start = start_position(&config, checkpoint);
        let schemas = Arc::new(SchemaCache::default());
        let capacity = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
        let (tx, mut rx) = mpsc::channel(8);
        let source_cancel = cancel.child_token();
        let mut subscribe = SubscribeOptions::new(config.channel.clone(), start);
        let (durable, committed) = tokio::sync::watch::channel(None);
        subscribe.managed =
            config
                .managed_subscription
                .clone()
                .map(|developer_name| ManagedOptions {
                    developer_name,
                    committed,
                });
        subscribe.batch_size = config.batch_size;
        subscribe.idle_timeout = config.idle_timeout;
        subscribe.on_invalid_replay = config.on_invalid_replay;
        subscribe.health = Some(health.clone());
        let subscriber = Subscriber::new(
            connection,
            subscribe,
            schemas.clone(),
            capacity,
            tx,
            source_cancel.clone(),
        );
        let source = tokio::spawn(subscriber.run().in_current_span());

        let mut stage = Stage2 {
            channel: Arc::from(config.channel.as_str()),
            schemas,
            sink: &mut sink,
            dead_spec: config.dead_letter.as_ref(),
            app_id: &app_id,
            zerobus: &options.zerobus,
            databricks,
            dead: None,
            chain: chain.filter(|c| !c.is_empty()).map(|mut chain| {
                chain.set_home(config.sink.home_schema());
                chain
            }),
            store: &store,
            key: &key,
            stats: SubscriptionStats {
                channel: config.channel.clone(),
                target: config.sink.to_string(),
                ..Default::default()
            },
            unflushed: None,
            last_flush: Instant::now(),
            first_batch: None,
            health: health.clone(),
            last_written: String::new(),
            written_since_flush: 0,
            unflushed_bytes: 0,
            durable: Some(durable),
        };
        let started = Instant::now();
        let result = stage.drive(&mut rx, &options, &cancel).await;
        source_cancel.cancel();
        // After a failure mid-batch, part of that batch may be buffered: committing it would
        // move no checkpoint yet write rows that the restart writes again. Nothing is lost by
        // not flushing: the checkpoint stays where it was.
        let flushed = match &result {
            Ok(()) => stage.flush().await,
            Err(_) => Ok(()),
        };
        // The sign a stopping managed source waits for: the last position is durable.
        stage.durable = None;
        // rx lives until here: a source that is still delivering never sees a closed channel
        // and skips its final commit.
        let source_result = match source.await {
            Ok(result) => result.map_err(PipelineError::from),
            Err(e) => Err(PipelineError::Panicked {
                channel: config.channel.clone(),
                task: "source",
                message: panic_message(e),
            }),
        };
        if let Some(chain) = &stage.chain {
            stage.stats.transforms = chain.stats();
        }
        let mut stats = stage.stats;
        stats.elapsed_ms = started.elapsed().as_millis() as u64;
        result?;
        flushed?;
        source_result?;
        tracing::info!(
            received = stats.received,
            written = stats.written,
            dead_lettered = stats.dead_lettered,
            checkpoint = stats.checkpoint.as_deref().unwrap_or("none"),
            "Subscription stopped."
        );
        Ok(stats)
    }
    .instrument(span)
    .await
}

/// Logs in, retrying what may pass (an unreachable endpoint) until `give_up` elapses
/// (`--until-idle` runs: no progress within the idle window) or forever.
async fn login(
    connection: &PubSubConnection,
    channel: &str,
    cancel: &CancellationToken,
    give_up: Option<Duration>,
) -> Result<String, PipelineError> {
    let mut delay = Duration::from_millis(500);
    let started = Instant::now();
    loop {
        match connection.ensure_session().await {
            Ok(org) => return Ok(org),
            Err(e) if e.is_retryable() && give_up.is_none_or(|limit| started.elapsed() < limit) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Login failed; retrying.");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(PipelineError::Auth { channel: channel.to_string(), source: e }),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(source) => {
                return Err(PipelineError::Auth {
                    channel: channel.to_string(),
                    source,
                });
            }
        }
    }
}

/// The reference's rules: an explicit `--replay` wins; then a stored checkpoint (CUSTOM);
/// then EARLIEST when backfilling history, else LATEST.
fn start_position(config: &SubscriptionConfig, checkpoint: Option<ReplayId>) -> StartPosition {
    if let Some(replay) = &config.replay {
        tracing::info!(start = %replay, "Replay position set explicitly.");
        return replay.clone();
    }
    if !config.replay_recovery {
        tracing::info!(
            "Replay recovery disabled: starting from LATEST (enable-replay-recovery = false)."
        );
        return StartPosition::Latest;
    }
    match checkpoint {
        Some(id) => {
            tracing::info!(replay_id = %id, "Resuming from previous session with replay_id: {id}");
            StartPosition::Custom(id)
        }
        None if config.backfill_historical => {
            tracing::info!(
                "No checkpoint: starting historical backfill from EARLIEST (backfill_historical = true)."
            );
            StartPosition::Earliest
        }
        None => {
            tracing::info!(
                "No checkpoint: starting fresh subscription from LATEST (backfill_historical = false)."
            );
            StartPosition::Latest
        }
    }
}

/// The decode → sink → checkpoint stage of one subscription.
struct Stage2<'a> {
    channel: Arc<str>,
    schemas: Arc<SchemaCache>,
    sink: &'a mut Sink,
    dead_spec: Option<&'a SinkSpec>,
    app_id: &'a str,
    zerobus: &'a crate::sink::zerobus::ZerobusSettings,
    /// The checkpoint table, for Zerobus targets with a SQL warehouse.
    databricks: Option<Databricks>,
    /// Opened on the first dead letter, so a clean run leaves no empty file behind.
    dead: Option<Sink>,
    chain: Option<Chain>,
    store: &'a FileCheckpointStore,
    key: &'a CheckpointKey,
    stats: SubscriptionStats,
    /// The position written but not yet flushed and checkpointed.
    unflushed: Option<ReplayId>,
    last_flush: Instant,
    first_batch: Option<Instant>,
    health: Arc<Health>,
    /// The last event written, as the reference logs it: `Account UPDATE 001…`.
    last_written: String,
    written_since_flush: u64,
    /// Bytes of the rows written since the last flush, which a sink may hold in memory.
    unflushed_bytes: usize,
    /// Each durable position, for a managed subscription to commit to Salesforce; dropped
    /// once the last flush is done.
    durable: Option<tokio::sync::watch::Sender<Option<ReplayId>>>,
}

impl Stage2<'_> {
    async fn drive(
        &mut self,
        rx: &mut mpsc::Receiver<SourceMsg>,
        options: &RunOptions,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let far = Duration::from_secs(100 * 365 * 86_400);
        let idle = options.until_idle.unwrap_or(far);
        let mut idle_deadline = tokio::time::Instant::now() + idle;
        let mut flush_tick = tokio::time::interval(options.flush_interval);
        let mut reload = self
            .chain
            .as_ref()
            .map(|chain| spawn_reload_watcher(chain.paths(), cancel.clone()));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(idle_deadline) => {
                    // Idle time counts only once the stream is up: a run that never
                    // subscribed (an unreachable endpoint) has not succeeded.
                    if !self.health.has_subscribed() {
                        let reason = match self.health.state() {
                            State::Reconnecting(detail) | State::Failed(detail) => detail,
                            _ => "the Pub/Sub API sent nothing".to_string(),
                        };
                        return Err(PipelineError::NeverSubscribed {
                            channel: self.channel.to_string(),
                            idle_secs: idle.as_secs_f64(),
                            reason,
                        });
                    }
                    tracing::info!(idle_secs = idle.as_secs_f64(), "No event for the idle limit; stopping (--until-idle).");
                    return Ok(());
                }
                _ = flush_tick.tick() => {
                    if self.unflushed.is_some() && self.last_flush.elapsed() >= options.flush_interval {
                        self.flush().await?;
                    }
                }
                Some(()) = async { match reload.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    self.reload().await;
                }
                msg = rx.recv() => match msg {
                    None => return Ok(()),
                    Some(SourceMsg::Keepalive { latest }) => {
                        self.health.message();
                        self.stats.keepalives += 1;
                        self.health.keepalives.store(self.stats.keepalives, Relaxed);
                        // Everything received is already written: the keepalive position is safe.
                        if self.stats.checkpoint.as_deref() != Some(&latest.to_hex()) {
                            self.unflushed = Some(latest);
                        }
                    }
                    Some(SourceMsg::Events { events, org_id, credit }) => {
                        idle_deadline = tokio::time::Instant::now() + idle;
                        self.health.message();
                        self.handle(events, org_id).await?;
                        drop(credit);
                        if self.last_flush.elapsed() >= options.flush_interval
                            || self.unflushed_bytes >= MAX_UNFLUSHED_BYTES
                        {
                            self.flush().await?;
                        }
                    }
                }
            }
        }
    }

    async fn handle(
        &mut self,
        events: Vec<RawEvent>,
        org_id: Arc<str>,
    ) -> Result<(), PipelineError> {
        let processed = now_ms();
        let mut decoded = Vec::with_capacity(events.len());
        let mut letters = Vec::new();
        let last = events.last().map(|e| e.replay_id.clone());
        // Only a Delta sink (main or dead-letter) may hold rows from before a crash, and
        // needs to hear which events came again.
        let holding = matches!(self.sink, Sink::Delta(_))
            || matches!(self.dead_spec, Some(SinkSpec::Delta(_)));
        let batch: Vec<ReplayId> = match holding {
            true => events.iter().map(|e| e.replay_id.clone()).collect(),
            false => Vec::new(),
        };
        self.stats.received += events.len() as u64;
        self.health.events_received(events.len() as u64);
        for raw in events {
            let meta = EventMeta {
                org_id: org_id.clone(),
                channel: self.channel.clone(),
                replay_id: raw.replay_id.clone(),
                event_id: raw.event_id.clone(),
            };
            let result = match self.schemas.get(&raw.schema_id) {
                Some(schema) => {
                    decode_event(&schema, meta, raw.payload.clone()).map_err(|e| e.to_string())
                }
                None if raw.schema_id.is_empty() && raw.payload.is_empty() => Err(
                    "the Pub/Sub API delivered this position without an event (no schema, no payload)"
                        .to_string(),
                ),
                None => Err(match self.schemas.failure(&raw.schema_id) {
                    Some(reason) => format!("schema {} cannot be used: {reason}", raw.schema_id),
                    None => format!("schema {} could not be fetched", raw.schema_id),
                }),
            };
            match result {
                Ok(event) => {
                    tracing::debug!(
                        replay_id = %event.replay_id,
                        "Received {} {} {}",
                        event.header.entity_name,
                        event.header.change_type,
                        event.first_record_id()
                    );
                    decoded.push(event);
                }
                Err(error) => {
                    tracing::error!(replay_id = %raw.replay_id, event_id = %raw.event_id, schema_id = %raw.schema_id, %error, "Event could not be decoded; dead-lettered.");
                    letters.push(DeadLetter {
                        stage: Stage::Decode,
                        error,
                        org_id: org_id.to_string(),
                        channel: self.channel.to_string(),
                        replay_id: raw.replay_id.to_hex(),
                        event_id: raw.event_id,
                        schema_id: raw.schema_id,
                        payload: raw.payload.to_vec(),
                        dead_lettered_at: processed,
                    });
                }
            }
        }
        let inputs = decoded.len() as u64;
        let output = match self.chain.take() {
            Some(mut chain) => {
                let (chain, output) = tokio::task::spawn_blocking(move || {
                    let output = chain.run(decoded);
                    (chain, output)
                })
                .await
                .map_err(|e| PipelineError::Panicked {
                    channel: self.channel.to_string(),
                    task: "transform chain",
                    message: panic_message(e),
                })?;
                self.chain = Some(chain);
                output
            }
            None => ChainOutput {
                routed: decoded
                    .into_iter()
                    .map(|event| crate::transform::Routed { table: None, event })
                    .collect(),
                ..Default::default()
            },
        };
        if let Some(stop) = output.stop {
            return Err(PipelineError::TransformStop(
                stop.error,
                stop.replay_id.to_hex(),
            ));
        }
        let chain_failures = output.failed.len() as u64;
        letters.extend(
            output
                .failed
                .into_iter()
                .map(|f| transform_letter(f, processed)),
        );
        let routed_count = output.routed.len() as u64;
        if routed_count + chain_failures < inputs {
            self.stats.dropped += inputs - routed_count - chain_failures;
        }
        let mut tables: Vec<(Option<String>, Vec<Row>)> = Vec::new();
        for routed in output.routed {
            let mut event = routed.event;
            let table = match self.sink.route(routed.table) {
                Ok(table) => table,
                Err(error) => {
                    tracing::error!(replay_id = %event.replay_id, %error, "Event routed where it cannot go; dead-lettered.");
                    letters.push(DeadLetter::of_event(
                        Stage::Transform("route".into()),
                        error,
                        &event,
                        processed,
                    ));
                    continue;
                }
            };
            if let Some(by) = event.modified_by.clone() {
                let encoded = self
                    .schemas
                    .get(&event.schema.id)
                    .ok_or_else(|| format!("schema {} is no longer cached", event.schema.id))
                    .and_then(|schema| {
                        encode_payload(&schema, &event).map_err(|e| {
                            format!("transform {by} set a value that does not fit the schema: {e}")
                        })
                    });
                match encoded {
                    Ok(payload) => event.payload = payload,
                    Err(error) => {
                        tracing::error!(replay_id = %event.replay_id, %error, "Transformed event does not fit its schema; dead-lettered.");
                        letters.push(DeadLetter::of_event(
                            Stage::Transform(by.to_string()),
                            error,
                            &event,
                            processed,
                        ));
                        continue;
                    }
                }
            }
            self.health
                .event_committed_at(event.header.commit_timestamp);
            let row = Row::from_event(event, processed);
            self.unflushed_bytes +=
                row.event.payload.len() + row.record_data_json.len() + row.schema().json.len();
            match tables.iter_mut().find(|(t, _)| *t == table) {
                Some((_, rows)) => rows.push(row),
                None => tables.push((table, vec![row])),
            }
        }
        for (table, rows) in &tables {
            self.sink.write(table.as_deref(), rows).await?;
            self.stats.written += rows.len() as u64;
            self.written_since_flush += rows.len() as u64;
        }
        if let Some(row) = tables.last().and_then(|(_, rows)| rows.last()) {
            let h = &row.event.header;
            self.last_written = format!(
                "{} {} {}",
                h.entity_name,
                h.change_type,
                row.event.first_record_id()
            );
        }
        if !letters.is_empty() {
            match self.dead_spec {
                None => self.sink.write_dead_letters(&letters).await?,
                Some(spec) => {
                    if self.dead.is_none() {
                        self.dead = Some(Sink::open(spec, self.app_id, self.zerobus).await?);
                    }
                    if let Some(dead) = self.dead.as_mut() {
                        dead.write_dead_letters(&letters).await?;
                    }
                }
            }
        }
        if holding {
            self.sink.processed(&batch);
            if let Some(dead) = self.dead.as_mut() {
                dead.processed(&batch);
            }
        }
        let first = *self.first_batch.get_or_insert_with(Instant::now);
        self.stats.active_ms = first.elapsed().as_millis() as u64;
        self.stats.dead_lettered += letters.len() as u64;
        self.health.received.store(self.stats.received, Relaxed);
        self.health.written.store(self.stats.written, Relaxed);
        self.health.dropped.store(self.stats.dropped, Relaxed);
        self.health
            .dead_lettered
            .store(self.stats.dead_lettered, Relaxed);
        if let Some(last) = last {
            self.unflushed = Some(last);
        }
        Ok(())
    }

    /// Swaps in a freshly loaded chain between batches; if any component fails to load or
    /// to init, the running chain stays and the log says why.
    async fn reload(&mut self) {
        let Some(chain) = self.chain.take() else {
            return;
        };
        let (chain, fresh) = tokio::task::spawn_blocking(move || {
            let fresh = chain.reload();
            (chain, fresh)
        })
        .await
        .expect("reloading transforms does not panic");
        match fresh {
            Ok(fresh) => {
                tracing::info!("Transforms reloaded.");
                self.chain = Some(fresh);
            }
            Err(error) => {
                tracing::error!(%error, "Transform reload failed; the running chain stays.");
                self.chain = Some(chain);
            }
        }
    }

    async fn flush(&mut self) -> Result<(), PipelineError> {
        self.last_flush = Instant::now();
        self.unflushed_bytes = 0;
        let Some(position) = self.unflushed.take() else {
            return Ok(());
        };
        // Dead letters first: the main sink's flush may carry the checkpoint with it.
        if let Some(dead) = self.dead.as_mut() {
            dead.flush(&position).await?;
        }
        self.sink.flush(&position).await?;
        match &mut self.databricks {
            Some(databricks) => databricks.commit(self.key, &position).await?,
            None if self.sink.keeps_checkpoint() => {}
            None => self.store.commit(self.key, &position).await?,
        }
        if self.written_since_flush > 0 {
            tracing::info!(
                replay_id = %position,
                "Written to {}: {} events, last {}",
                self.health.target,
                self.written_since_flush,
                self.last_written
            );
            self.written_since_flush = 0;
        }
        tracing::debug!(replay_id = %position, written = self.stats.written, "Checkpoint committed.");
        if let Some(durable) = &self.durable {
            durable.send_replace(Some(position.clone()));
        }
        let hex = position.to_hex();
        self.health.checkpointed(&hex);
        self.stats.checkpoint = Some(hex);
        if let Some(chain) = &self.chain {
            self.health.set_transforms(chain.stats());
        }
        Ok(())
    }
}

fn transform_letter(failed: Failed, at: i64) -> DeadLetter {
    DeadLetter {
        stage: Stage::Transform(failed.transform),
        error: failed.error,
        org_id: failed.org_id.to_string(),
        channel: failed.channel.to_string(),
        replay_id: failed.replay_id.to_hex(),
        event_id: failed.event_id,
        schema_id: failed.schema_id,
        payload: failed.payload.to_vec(),
        dead_lettered_at: at,
    }
}

/// Signals a reload on SIGHUP or when a component file changes (checked every second).
fn spawn_reload_watcher(paths: Vec<PathBuf>, cancel: CancellationToken) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    let stamps = |paths: &[PathBuf]| -> Vec<Option<(std::time::SystemTime, u64)>> {
        paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = stamps(&paths);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = hup => {
                    tracing::info!("SIGHUP: reloading transforms.");
                    let _ = tx.try_send(());
                }
                _ = tick.tick() => {
                    let now = stamps(&paths);
                    if now != seen {
                        seen = now;
                        tracing::info!("A transform file changed: reloading.");
                        let _ = tx.try_send(());
                    }
                }
            }
        }
    });
    rx
}

/// A Zerobus target's table and its checkpoint table, through the SQL warehouse.
struct Databricks {
    client: crate::sql::SqlClient,
    checkpoints: String,
    /// The checkpoint found at start.
    stored: Option<ReplayId>,
}

impl Databricks {
    /// Creates the target table if missing (and allowed), the checkpoint table if missing,
    /// and finds where to resume: the checkpoint table, else (a table the reference library
    /// wrote) its newest row. Any SQL failure or timeout stops the run: it is never read as
    /// "missing" or "empty", so a slow warehouse cannot send the subscription to LATEST.
    async fn prepare(
        settings: &crate::sql::SqlSettings,
        table: &str,
        key: &CheckpointKey,
        auto_create: bool,
    ) -> Result<Databricks, PipelineError> {
        use crate::sql::{SqlClient, SqlError, checkpoint_table, create_table_sql, ident, quote};
        let mut client = SqlClient::new(settings.clone());
        let existed = client.table_exists(table).await?;
        if !existed {
            if !auto_create {
                return Err(SqlError::Failed {
                    statement: format!("DESCRIBE TABLE {}", ident(table)),
                    message: format!("table {table} does not exist and auto-create is off; create it (see the README's DDL) or drop --no-auto-create"),
                }
                .into());
            }
            tracing::info!(table, "Table {table} doesn't exist - creating it.");
            client.run(&create_table_sql(table)).await?;
            tracing::info!(table, "Successfully created table: {table}");
        }
        let checkpoints = ident(&checkpoint_table(table));
        client
            .run(&format!(
                "CREATE TABLE IF NOT EXISTS {checkpoints} (org_id STRING, channel STRING, target STRING, replay_id STRING, updated_at BIGINT) USING DELTA COMMENT 'sfzb-host replay checkpoints'"
            ))
            .await?;
        let rows = client
            .run(&format!(
                "SELECT replay_id FROM {checkpoints} WHERE org_id = {} AND channel = {} AND target = {}",
                quote(&key.org_id),
                quote(&key.channel),
                quote(&key.target)
            ))
            .await?;
        let mut stored = first_replay(&rows);
        if stored.is_none() && existed {
            let rows = client
                .run(&format!(
                    "SELECT replay_id FROM {} WHERE org_id = {} ORDER BY timestamp DESC, replay_id DESC LIMIT 1",
                    ident(table),
                    quote(&key.org_id)
                ))
                .await?;
            stored = first_replay(&rows);
            if let Some(id) = &stored {
                tracing::info!(replay_id = %id, "Found latest replay_id: {id} (from the table's rows; no checkpoint yet)");
            }
        }
        Ok(Databricks {
            client,
            checkpoints,
            stored,
        })
    }

    async fn commit(
        &mut self,
        key: &CheckpointKey,
        position: &ReplayId,
    ) -> Result<(), PipelineError> {
        use crate::sql::quote;
        let statement = format!(
            "MERGE INTO {cp} AS t USING (SELECT {org} AS org_id, {channel} AS channel, {target} AS target, {replay} AS replay_id, {now} AS updated_at) AS s \
             ON t.org_id = s.org_id AND t.channel = s.channel AND t.target = s.target \
             WHEN MATCHED THEN UPDATE SET t.replay_id = s.replay_id, t.updated_at = s.updated_at WHEN NOT MATCHED THEN INSERT *",
            cp = self.checkpoints,
            org = quote(&key.org_id),
            channel = quote(&key.channel),
            target = quote(&key.target),
            replay = quote(&position.to_hex()),
            now = now_ms(),
        );
        self.client.run(&statement).await?;
        Ok(())
    }
}

fn first_replay(rows: &[Vec<Option<String>>]) -> Option<ReplayId> {
    rows.first()
        .and_then(|row| row.first())
        .and_then(|v| v.as_deref())
        .and_then(|hex| ReplayId::from_hex(hex).ok())
}
