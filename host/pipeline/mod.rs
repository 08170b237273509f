//! One subscription end to end: source → decode → transform chain → sink → checkpoint, with
//! data flowing one way through a bounded channel. The source task receives; this task
//! decodes, runs the chain (on a blocking thread), writes, flushes, and commits the
//! checkpoint only past events that are durably written, dead-lettered, or dropped by a
//! transform.
//!
//! | file | step |
//! |---|---|
//! | [`flow`] | the loop: batches in, flushes on time, reloads, idle and stop |
//! | [`decode`] | raw events to decoded ones, or dead letters |
//! | [`chain`] | the transform chain, off the async workers; reloads |
//! | [`route`] | each output to its table, re-encoded, as a row |
//! | [`write`] | rows and dead letters to their sinks; the figures |
//! | [`flush`] | sinks made durable, then the checkpoint staged (or the sink's own) |
//! | [`pace`] | logins and subscribes at most so many a second |
//! | [`claims`] | one running subscription per (org id, channel, target) in the process |

mod chain;
mod claims;
mod decode;
mod flow;
mod flush;
mod pace;
mod route;
mod snapshot;
mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::checkpoint::{CheckpointError, CheckpointKey, Checkpoints, Place};
use crate::config::{RunOptions, SubscriptionConfig};
use crate::event::ReplayId;
use crate::health::Health;
use crate::salesforce::auth::AuthError;
use crate::salesforce::pubsub::{
    Budget, ManagedOptions, PubSubConnection, SourceBox, StartPosition, SubscribeError,
    SubscribeOptions, Subscriber,
};
use crate::salesforce::schema::SchemaCache;
use crate::sink::zerobus::ZerobusPool;
use crate::sink::{Layout, Sink, SinkError, SinkSpec};
use crate::transform::{Chain, TransformStats};
use flow::Flow;
use pace::Pace;
pub(crate) use route::to_row;

/// Flush before the flush interval once the rows written since the last flush hold this
/// much: the Delta sink buffers them in memory until its commit.
const MAX_UNFLUSHED_BYTES: usize = 64 << 20;

/// What the subscriptions of a process share: the Zerobus SDK and its streams, the
/// writer schemas (a schema id is the fingerprint of its schema, so one org's fetch serves
/// every org with the same schema), the checkpoint stores with their one committer, and
/// the pace of logins and subscribes.
#[derive(Clone)]
pub struct Shared {
    pub zerobus: Arc<ZerobusPool>,
    pub schemas: Arc<SchemaCache>,
    pub checkpoints: Arc<Checkpoints>,
    logins: Arc<Pace>,
    subscribes: Arc<Pace>,
    /// Room for decoded events, for every subscription together.
    pub in_flight: Budget,
    /// One running subscription per (org id, channel, target).
    claims: claims::Claims,
}

impl Shared {
    pub fn new(options: &RunOptions) -> Shared {
        Shared {
            zerobus: Arc::new(ZerobusPool::new(&options.zerobus, options.sql.as_ref())),
            schemas: Arc::new(SchemaCache::keeping_in(
                crate::salesforce::schema::kept_dir(&options.state_dir),
            )),
            checkpoints: Arc::new(Checkpoints::new(options)),
            logins: Arc::new(Pace::per_second(options.login_rate)),
            subscribes: Arc::new(Pace::per_second(options.subscribe_rate)),
            in_flight: Budget::new(options.max_in_flight_total),
            claims: claims::Claims::default(),
        }
    }
}

/// What a subscription did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscriptionStats {
    pub channel: String,
    pub target: String,
    pub received: u64,
    pub written: u64,
    pub dead_lettered: u64,
    /// Events the transform chain dropped.
    pub dropped: u64,
    pub keepalives: u64,
    /// Records the snapshots wrote.
    pub snapshot_records: u64,
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
    #[error("the snapshot failed: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    CurrentState(#[from] crate::current_state::CurrentStateError),
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

impl PipelineError {
    /// Whether starting the subscription again, after a wait, may succeed: the store,
    /// sink or warehouse was unreachable, or a panic. The source already retried what
    /// passes by itself (streams, logins); a topic, permission, replay or transform error
    /// needs a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Sink(e) => e.is_retryable(),
            PipelineError::Checkpoint(e) => e.is_retryable(),
            PipelineError::Sql(e) => e.is_retryable(),
            PipelineError::Snapshot(e) => e.is_retryable(),
            PipelineError::CurrentState(e) => e.is_retryable(),
            PipelineError::Auth { source, .. } => source.is_retryable(),
            PipelineError::Panicked { .. } => true,
            PipelineError::Subscribe(_)
            | PipelineError::TransformStop(..)
            | PipelineError::NeverSubscribed { .. }
            | PipelineError::ShutdownTimeout { .. } => false,
        }
    }
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
    options: Arc<RunOptions>,
    shared: Shared,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> Result<SubscriptionStats, PipelineError> {
    let span = tracing::info_span!("subscription", name = %health.name, channel = %config.channel, target = %config.sink);
    async move {
        // What runs once (login, opening, the end) is boxed, so that only the loop's state
        // stays in the future while the subscription streams.
        let org_id = Box::pin(login(
            &connection,
            &config.channel,
            &shared.logins,
            &cancel,
            options.until_idle,
        ))
        .await?;
        health.set_org_id(&org_id);
        let store = shared.checkpoints.clone();
        let key = CheckpointKey {
            org_id: org_id.clone(),
            channel: config.channel.clone(),
            target: config.sink.to_string(),
        };
        // Before the checkpoint is read: a holder still stopping commits its last first.
        let Some(_claim) = Box::pin(shared.claims.claim(&key, &health, &cancel)).await else {
            return Ok(SubscriptionStats::default());
        };
        let app_id = format!("sfzb:{org_id}:{}", config.channel);
        let (mut sink, place, checkpoint) = Box::pin(open_target(
            &config,
            &options,
            &shared.zerobus,
            &store,
            &key,
            &app_id,
        ))
        .await?;
        if let Some(place) = &place {
            health.set_checkpoint_store(store.status(), place.label());
        }
        let snapshot_start =
            Box::pin(snapshot::plan(&config, &store, &key, checkpoint.as_ref())).await?;
        let schemas = shared.schemas.clone();
        // A cancelled wait goes on: the source sees the cancel and ends at once.
        shared.subscribes.wait(&cancel).await;
        let mut flow = Flow {
            channel: Arc::from(config.channel.as_str()),
            schemas,
            sink: &mut sink,
            dead_spec: config.dead_letter.as_ref(),
            app_id: &app_id,
            zerobus: &shared.zerobus,
            dead: None,
            chain: chain.filter(|c| !c.is_empty()).map(|mut chain| {
                chain.set_home(config.sink.home_schema());
                chain
            }),
            store: &store,
            key: &key,
            place,
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
            held_back_bytes: 0,
            durable: None,
            current: current_state(&config, &org_id, &connection)?,
            resnapshot: config.snapshot,
            overflow: None,
            position: None,
            read_at: None,
        };
        let mut snapshot_at = match snapshot_start {
            snapshot::Start::Skip => None,
            snapshot::Start::Resume(at, with_deleted) => Some((at, with_deleted)),
            snapshot::Start::Capture => {
                let captured = snapshot::capture(
                    connection.clone(),
                    &config,
                    &shared,
                    &options,
                    &health,
                    &store,
                    &key,
                    &cancel,
                );
                match Box::pin(captured).await? {
                    Some(at) => Some((at, false)),
                    None => return Ok(flow.stats),
                }
            }
        };
        let org: Arc<str> = Arc::from(org_id.as_str());
        let mut checkpoint = checkpoint;
        let mut started = None;
        // Once, or again after each GAP_OVERFLOW or snapshot asked for: a snapshot (if one
        // is due), then the stream from where it was captured.
        let (result, source) = loop {
            let mut start = None;
            if let Some((at, with_deleted)) = snapshot_at.take() {
                let read = flow.snapshot(
                    &connection,
                    &config,
                    &org,
                    at.clone(),
                    with_deleted,
                    &cancel,
                );
                if !Box::pin(read).await? {
                    // Cancelled: what is written stays; the next start reads the snapshot
                    // again.
                    Box::pin(flow.flush()).await?;
                    return Ok(flow.stats);
                }
                // The captured position, whatever `replay` says: anything else loses or
                // repeats the changes made while the snapshot was read.
                start = Some(StartPosition::Custom(at));
            }
            let source_cancel = cancel.child_token();
            let (source, mut rx, durable) = start_source(
                connection.clone(),
                &config,
                start.unwrap_or_else(|| start_position(&config, checkpoint.take())),
                &shared,
                &options,
                &health,
                source_cancel.clone(),
            );
            flow.durable = Some(durable);
            started.get_or_insert_with(Instant::now);
            let result = flow.drive(&mut rx, &options, &cancel).await;
            source_cancel.cancel();
            let running = Running { source, rx };
            let at = match result {
                Ok(flow::End::Again(at)) => at,
                Ok(flow::End::Stopped) => break (Ok(()), running),
                Err(error) => break (Err(error), running),
            };
            // The mark first (or with the checkpoint that passes the position), so that no
            // crash leaves the position passed and the object not read again.
            let begun = Box::pin(snapshot::begin_again(
                &config,
                &store,
                &key,
                &at,
                flow.place.is_none(),
                &cancel,
            ))
            .await;
            let flushed = match begun {
                Ok(()) => Box::pin(flow.flush()).await,
                Err(error) => Err(error),
            };
            let handed = Box::pin(hand_over(&mut flow, running, &config.channel)).await;
            flushed?;
            handed?;
            snapshot_at = Some((at, true));
        };
        let mut stats = Box::pin(finish(flow, result, source, &config.channel)).await?;
        stats.elapsed_ms = started.map_or(0, |t| t.elapsed().as_millis() as u64);
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

/// The subscription's current-state table, if it keeps one: it follows the sink's table of
/// the channel's object.
fn current_state(
    config: &SubscriptionConfig,
    org_id: &str,
    connection: &PubSubConnection,
) -> Result<Option<Box<crate::current_state::CurrentState>>, PipelineError> {
    let (Some(SinkSpec::Delta(target)), SinkSpec::Delta(change)) =
        (&config.current_state, &config.sink)
    else {
        return Ok(None);
    };
    let object = crate::event::object_of(&config.channel).unwrap_or_default();
    let current = crate::current_state::CurrentState::new(
        target,
        &change.replace("{object}", &object),
        format!("sfzb-current:{org_id}:{}", config.channel),
        config.current_state_deletes,
        object,
        Some(crate::salesforce::rest::RestClient::new(connection.clone())),
        config.current_state_interval,
    )?;
    Ok(Some(Box::new(current)))
}

/// The source task and the channel it feeds.
struct Running {
    source: Source,
    rx: mpsc::Receiver<SourceBox>,
}

/// The end of a subscription whose source was told to stop: a clean end flushes what is
/// written; then a managed source hears the last durable position and ends too.
async fn finish(
    mut flow: Flow<'_>,
    result: Result<(), PipelineError>,
    running: Running,
    channel: &str,
) -> Result<SubscriptionStats, PipelineError> {
    // After a failure mid-batch, part of that batch may be buffered: committing it would
    // move no checkpoint yet write rows that the restart writes again. Nothing is lost by
    // not flushing: the checkpoint stays where it was.
    let mut flushed = match &result {
        Ok(()) => flow.flush().await,
        Err(_) => Ok(()),
    };
    // The last changes into the current state too, whenever the last apply was.
    if let (Ok(()), Ok(())) = (&result, &flushed) {
        flushed = Box::pin(flow.apply_current_state(true)).await;
    }
    let handed = hand_over(&mut flow, running, channel).await;
    if let Some(chain) = &flow.chain {
        flow.stats.transforms = chain.stats();
    }
    result?;
    flushed?;
    handed?;
    Ok(flow.stats)
}

/// The end of a source that was told to stop, once what it delivered is flushed (or not,
/// after a failure): positions staged by earlier flushes are durable whatever ended the
/// run, so into the store with them now rather than at the committer's next turn; then a
/// managed source hears the last durable position, and ends.
async fn hand_over(
    flow: &mut Flow<'_>,
    running: Running,
    channel: &str,
) -> Result<(), PipelineError> {
    let committed = flow.store.commit_for(flow.place.as_ref()).await;
    // The sign a stopping managed source waits for: the last position is durable.
    flow.durable = None;
    // rx lives until here: a source that is still delivering never sees a closed channel
    // and skips its final commit.
    let source_result = source_end(running.source, channel).await;
    drop(running.rx);
    committed?;
    source_result
}

/// The sink (its table made sure of, for a Zerobus target with a SQL warehouse), where
/// its checkpoint lives, and the stored position: the sink's own, or its store's.
async fn open_target(
    config: &SubscriptionConfig,
    options: &RunOptions,
    zerobus: &Arc<ZerobusPool>,
    store: &Checkpoints,
    key: &CheckpointKey,
    app_id: &str,
) -> Result<(Sink, Option<Place>, Option<ReplayId>), PipelineError> {
    let sink = open_sink(config, options, zerobus, app_id).await?;
    if sink.keeps_checkpoint() {
        let checkpoint = sink.checkpoint();
        return Ok((sink, None, checkpoint));
    }
    let place = store.place(&config.sink, config.layout);
    let checkpoint = match config.replay {
        // An explicit start needs no checkpoint, so one that is unreadable can be passed by.
        Some(_) => None,
        None => store.load(key, &place).await?,
    };
    Ok((sink, Some(place), checkpoint))
}

/// The subscription's sink, its Zerobus table made sure of when a SQL warehouse is set.
pub(crate) async fn open_sink(
    config: &SubscriptionConfig,
    options: &RunOptions,
    zerobus: &Arc<ZerobusPool>,
    app_id: &str,
) -> Result<Sink, PipelineError> {
    let sink = Sink::open(&config.sink, config.layout, app_id, zerobus).await?;
    // A typed table is created with the columns of its first rows, by the sink.
    if let (SinkSpec::Zerobus(table), Some(sql), Layout::Reference) =
        (&config.sink, &options.sql, config.layout)
    {
        crate::sql::ensure_table(sql, table, options.auto_create_table).await?;
    }
    Ok(sink)
}

type Source = tokio::task::JoinHandle<Result<(), SubscribeError>>;

/// How the source ended; its panic is this subscription's error.
async fn source_end(source: Source, channel: &str) -> Result<(), PipelineError> {
    match source.await {
        Ok(result) => result.map_err(PipelineError::from),
        Err(e) => Err(PipelineError::Panicked {
            channel: channel.to_string(),
            task: "source",
            message: panic_message(e),
        }),
    }
}

/// The subscriber task, feeding a bounded channel; and, for a managed subscription, the
/// sender of the durable positions it commits.
fn start_source(
    connection: PubSubConnection,
    config: &SubscriptionConfig,
    start: StartPosition,
    shared: &Shared,
    options: &RunOptions,
    health: &Arc<Health>,
    cancel: CancellationToken,
) -> (
    Source,
    mpsc::Receiver<SourceBox>,
    watch::Sender<Option<ReplayId>>,
) {
    let capacity = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let (tx, rx) = mpsc::channel(8);
    let mut subscribe = SubscribeOptions::new(config.channel.clone(), start);
    let (durable, committed) = watch::channel(None);
    subscribe.managed = config
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
    subscribe.budget = shared.in_flight.clone();
    let subscriber = Subscriber::new(
        connection,
        subscribe,
        shared.schemas.clone(),
        capacity,
        tx,
        cancel,
    );
    (
        tokio::spawn(subscriber.run().in_current_span()),
        rx,
        durable,
    )
}

/// Logs in, retrying what may pass (an unreachable endpoint) until `give_up` elapses
/// (`--until-idle` runs: no progress within the idle window) or forever.
async fn login(
    connection: &PubSubConnection,
    channel: &str,
    pace: &Pace,
    cancel: &CancellationToken,
    give_up: Option<Duration>,
) -> Result<String, PipelineError> {
    if let Some(org) = connection.org_id() {
        return Ok(org);
    }
    pace.wait(cancel).await;
    // Another subscription of the org may have logged in meanwhile.
    if let Some(org) = connection.org_id() {
        return Ok(org);
    }
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    connection
        .login_retrying(0, &mut backoff, cancel, give_up)
        .await
        .map_err(|source| PipelineError::Auth {
            channel: channel.to_string(),
            source,
        })?;
    Ok(connection.org_id().unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Every subscription holds this future for as long as it streams: a step awaited
    /// inline rather than boxed puts its state into each of them (28 KB before the steps
    /// that run once, or per batch, were boxed; 4 KB after).
    #[tokio::test]
    async fn a_running_subscription_holds_a_small_future() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sfzb.toml");
        std::fs::write(
            &file,
            "[salesforce]\ninstance-url = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword = \"p\"\n[[subscription]]\nchannel = \"AccountChangeEvent\"\n",
        )
        .unwrap();
        let cli =
            crate::cli::Cli::try_parse_from(["sfzb-host", "--config", file.to_str().unwrap()])
                .unwrap();
        let crate::cli::Command::Run(args) = cli.into_command() else {
            unreachable!("a run command")
        };
        let plan = args.plan().unwrap();
        let (org, sub) = (&plan.orgs[0], &plan.subscriptions[0]);
        let connection = PubSubConnection::new(
            crate::salesforce::pubsub::connection::channel(&org.pubsub_endpoint).unwrap(),
            crate::salesforce::auth::Authenticator::new(
                &org.login_url,
                &org.api_version,
                org.credentials.clone(),
            ),
        );
        let health = Arc::new(Health::new(
            &sub.name,
            &org.name,
            &sub.config.channel,
            &sub.config.sink.to_string(),
            sub.config.idle_timeout,
            sub.config.max_timeouts,
        ));
        let future = run_subscription(
            connection,
            sub.config.clone(),
            None,
            Arc::new(plan.options.clone()),
            Shared::new(&plan.options),
            health,
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&future);
        assert!(
            size <= 4 << 10,
            "run_subscription's future is {size} bytes: box the step that made it grow"
        );
    }
}
