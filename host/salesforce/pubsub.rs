//! The Pub/Sub API subscriber: one task per subscription that keeps a Subscribe stream
//! alive and hands raw events downstream.
//!
//! - Flow control: at most `batch_size` (≤ 100) events requested and not yet received, and
//!   credit only for capacity the pipeline has freed (a shared semaphore whose permits the
//!   pipeline returns once it has written an event), so a slow sink slows the fetch.
//! - Keepalives (empty FetchResponses) move the resume position to `latest_replay_id`; an idle
//!   watchdog resubscribes when the server sends nothing at all for `idle_timeout`.
//! - Failures are classified by the `error-code` trailer: auth → log in again; invalid replay
//!   id → the configured fallback, never a retry of the same id; unavailable → backoff with
//!   jitter; delivery limit → a long wait; missing topic or permission → stop, with a message.
//! - Every resubscription resumes CUSTOM after the last event handed downstream.
//! - With a managed subscription (ManagedSubscribe) Salesforce keeps the position instead:
//!   the checkpoint stage publishes each durable position on a watch channel, which the
//!   subscriber commits on the stream (CommitReplayRequest), last of all when it stops.
//!   Salesforce admits one client per managed subscription; the others wait as standbys.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use rand::Rng;
use secrecy::ExposeSecret;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::event::ReplayId;
use crate::proto::pubsub::pub_sub_client::PubSubClient;
use crate::proto::pubsub::{
    CommitReplayRequest, CommitReplayResponse, ConsumerEvent, FetchRequest, ManagedFetchRequest,
    ReplayPreset, SchemaRequest,
};
use crate::salesforce::auth::{AuthError, Authenticator, Session};
use crate::salesforce::schema::SchemaCache;

/// The Pub/Sub API's global endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://api.pubsub.salesforce.com:7443";
/// Salesforce accepts at most this many events requested at once.
pub const MAX_BATCH: u32 = 100;
/// Large events and schemas exceed tonic's default 4 MiB decode limit.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Where a subscription starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    Latest,
    Earliest,
    /// After this replay id.
    Custom(ReplayId),
}

impl StartPosition {
    fn preset(&self) -> (ReplayPreset, bytes::Bytes) {
        match self {
            StartPosition::Latest => (ReplayPreset::Latest, bytes::Bytes::new()),
            StartPosition::Earliest => (ReplayPreset::Earliest, bytes::Bytes::new()),
            StartPosition::Custom(id) => (ReplayPreset::Custom, id.as_bytes().clone()),
        }
    }
}

impl std::fmt::Display for StartPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartPosition::Latest => f.write_str("LATEST"),
            StartPosition::Earliest => f.write_str("EARLIEST"),
            StartPosition::Custom(id) => write!(f, "CUSTOM after {id}"),
        }
    }
}

/// What to do when Salesforce says the stored replay id is corrupted or outside retention.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ReplayFallback {
    /// Stop with an error: events may have been missed and a human should resync.
    Fail,
    /// Replay everything still retained (duplicates possible, nothing newer missed).
    Earliest,
    /// Skip to new events (what was published meanwhile is missed).
    Latest,
}

#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    pub topic: String,
    pub start: StartPosition,
    /// Events requested and not yet received, at most [`MAX_BATCH`].
    pub batch_size: u32,
    /// Resubscribe when the server sends nothing, not even a keepalive, for this long.
    pub idle_timeout: Duration,
    /// Told about idle timeouts and stream failures, for /healthz.
    pub health: Option<Arc<crate::health::Health>>,
    pub on_invalid_replay: ReplayFallback,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Read through this managed subscription (ManagedSubscribe) instead of Subscribe.
    pub managed: Option<ManagedOptions>,
}

/// A managed subscription and the durable positions to commit to it.
#[derive(Clone, Debug)]
pub struct ManagedOptions {
    pub developer_name: String,
    /// The position up to which everything is durably written; its sender's drop says no
    /// more will come.
    pub committed: watch::Receiver<Option<ReplayId>>,
}

impl SubscribeOptions {
    pub fn new(topic: impl Into<String>, start: StartPosition) -> Self {
        SubscribeOptions {
            topic: topic.into(),
            start,
            batch_size: MAX_BATCH,
            idle_timeout: Duration::from_secs(300),
            health: None,
            on_invalid_replay: ReplayFallback::Fail,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            managed: None,
        }
    }
}

/// An event as received, not yet decoded.
#[derive(Clone, Debug)]
pub struct RawEvent {
    pub replay_id: ReplayId,
    pub event_id: String,
    pub schema_id: String,
    pub payload: bytes::Bytes,
}

/// Pipeline capacity held by events in flight; dropping it frees the capacity for new
/// fetch credit.
#[derive(Debug)]
pub struct Credit {
    pool: Arc<Semaphore>,
    permits: usize,
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.pool.add_permits(self.permits);
    }
}

/// What a subscription hands downstream, in stream order.
#[derive(Debug)]
pub enum SourceMsg {
    Events {
        events: Vec<RawEvent>,
        /// The org the session belongs to.
        org_id: Arc<str>,
        credit: Credit,
    },
    /// The server had nothing to send; everything up to `latest` has been delivered.
    Keepalive { latest: ReplayId },
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(
        "channel {channel} was not found ({detail}). Enable Change Data Capture for the object \
         (Setup → Integrations → Change Data Capture) or check the channel name, e.g. \
         /data/AccountChangeEvent, /data/Foo__ChangeEvent, /data/ChangeEvents"
    )]
    TopicNotFound { channel: String, detail: String },
    #[error(
        "no permission to subscribe to {channel} ({detail}). The user needs \"API Enabled\", read \
         access to the object, and \"View All Data\" or the object's CDC permissions; check the \
         Pub/Sub API is allowed for the org"
    )]
    NoPermission { channel: String, detail: String },
    #[error(
        "Salesforce rejected replay id {replay_id} on {channel} ({detail}): it is corrupted or older \
         than the 72-hour retention window. Events may be missing. Resync the target (backfill with \
         --replay earliest), or set replay_invalid = \"earliest\" or \"latest\" to continue automatically"
    )]
    ReplayInvalid {
        channel: String,
        replay_id: String,
        detail: String,
    },
    #[error("authentication failed for {channel}: {source}")]
    Auth {
        channel: String,
        #[source]
        source: AuthError,
    },
    #[error("invalid Pub/Sub endpoint {endpoint}: {detail}")]
    Endpoint { endpoint: String, detail: String },
}

/// How the subscriber reacts to a stream failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Auth,
    ReplayInvalid,
    TopicNotFound,
    NoPermission,
    LimitExceeded,
    /// Another client reads the managed subscription.
    ManagedInUse,
    Transient,
}

/// Salesforce's words when another client holds a managed subscription; its status code and
/// trailer for this are not documented.
const MANAGED_IN_USE: &str = "active managed subscription with the same id already exists";

/// Classifies a failed RPC by its `error-code` trailer, falling back to the gRPC status.
pub fn classify(status: &Status) -> Failure {
    let code = status
        .metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if status
        .message()
        .to_ascii_lowercase()
        .contains(MANAGED_IN_USE)
    {
        Failure::ManagedInUse
    } else if code.contains("replayid") {
        Failure::ReplayInvalid
    } else if code.contains("auth.error")
        || code.contains("auth.refresh")
        || code.contains("auth.token")
    {
        Failure::Auth
    } else if code.contains("topic") && (code.contains("not.found") || code.contains("notfound")) {
        Failure::TopicNotFound
    } else if code.contains("permission")
        || code.contains("insufficient")
        || code.contains("access.denied")
    {
        Failure::NoPermission
    } else if code.contains("limit") || code.contains("exceeded") {
        Failure::LimitExceeded
    } else if !code.is_empty() {
        Failure::Transient
    } else {
        match status.code() {
            tonic::Code::Unauthenticated => Failure::Auth,
            tonic::Code::PermissionDenied => Failure::NoPermission,
            tonic::Code::NotFound => Failure::TopicNotFound,
            tonic::Code::ResourceExhausted => Failure::LimitExceeded,
            _ => Failure::Transient,
        }
    }
}

/// Adds the session's metadata to every RPC: `accesstoken` (marked sensitive), `instanceurl`,
/// `tenantid`, and a fresh `x-client-trace-id` to quote to Salesforce support.
#[derive(Clone)]
pub struct SessionInterceptor {
    session: Arc<RwLock<Option<Session>>>,
}

impl tonic::service::Interceptor for SessionInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let guard = self.session.read().unwrap_or_else(|e| e.into_inner());
        let session = guard
            .as_ref()
            .ok_or_else(|| Status::unauthenticated("not logged in"))?;
        let invalid = |what| {
            Status::invalid_argument(format!("the session's {what} is not a valid header value"))
        };
        let mut token: MetadataValue<_> = session
            .access_token
            .expose_secret()
            .parse()
            .map_err(|_| invalid("access token"))?;
        token.set_sensitive(true);
        let metadata = request.metadata_mut();
        metadata.insert("accesstoken", token);
        metadata.insert(
            "instanceurl",
            session
                .instance_url
                .parse()
                .map_err(|_| invalid("instance URL"))?,
        );
        metadata.insert(
            "tenantid",
            session.org_id.parse().map_err(|_| invalid("org id"))?,
        );
        let trace: MetadataValue<_> = uuid::Uuid::new_v4()
            .to_string()
            .parse()
            .map_err(|_| invalid("trace id"))?;
        metadata.insert("x-client-trace-id", trace);
        Ok(request)
    }
}

type Client = PubSubClient<InterceptedService<Channel, SessionInterceptor>>;

/// A connection to the Pub/Sub API with a logged-in session, shared by the subscriptions
/// of one org.
#[derive(Clone)]
pub struct PubSubConnection {
    client: Client,
    session: Arc<RwLock<Option<Session>>>,
    authenticator: Authenticator,
    login_lock: Arc<tokio::sync::Mutex<u64>>,
}

impl PubSubConnection {
    /// `endpoint` is `https://host:port` (TLS, the default service) or `http://host:port`
    /// (plaintext, for the simulator). Connects lazily: nothing is dialled until the first call.
    pub fn new(endpoint: &str, authenticator: Authenticator) -> Result<Self, SubscribeError> {
        let bad = |detail: String| SubscribeError::Endpoint {
            endpoint: endpoint.to_string(),
            detail,
        };
        let mut channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(20))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if endpoint.starts_with("https://") {
            channel = channel
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| bad(e.to_string()))?;
        } else if !endpoint.starts_with("http://") {
            return Err(bad(
                "it must start with https:// (or http:// for the simulator)".into(),
            ));
        }
        let session = Arc::new(RwLock::new(None));
        let interceptor = SessionInterceptor {
            session: session.clone(),
        };
        let client = PubSubClient::with_interceptor(channel.connect_lazy(), interceptor)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(PubSubConnection {
            client,
            session,
            authenticator,
            login_lock: Arc::new(tokio::sync::Mutex::new(0)),
        })
    }

    /// Logs in unless another task already refreshed the session since `seen_generation`.
    /// Returns the session generation now in force.
    async fn refresh(&self, seen_generation: u64) -> Result<u64, AuthError> {
        let mut generation = self.login_lock.lock().await;
        if *generation != seen_generation {
            return Ok(*generation);
        }
        let session = self.authenticator.login().await?;
        tracing::info!(org_id = %session.org_id, instance_url = %session.instance_url, flow = self.authenticator.credentials().kind(), "Authentication successful.");
        *self.session.write().unwrap_or_else(|e| e.into_inner()) = Some(session);
        *generation += 1;
        Ok(*generation)
    }

    /// Logs in if no session exists yet, and returns the org id.
    pub async fn ensure_session(&self) -> Result<String, AuthError> {
        if let Some(org) = self.org_id() {
            return Ok(org);
        }
        self.refresh(0).await?;
        Ok(self.org_id().unwrap_or_default())
    }

    pub fn org_id(&self) -> Option<String> {
        self.session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.org_id.clone())
    }

    async fn generation(&self) -> u64 {
        *self.login_lock.lock().await
    }
}

/// Runs one subscription until `cancel` fires or a failure that needs a human.
pub struct Subscriber {
    connection: PubSubConnection,
    options: SubscribeOptions,
    schemas: Arc<SchemaCache>,
    capacity: Arc<Semaphore>,
    out: mpsc::Sender<SourceMsg>,
    cancel: CancellationToken,
    /// Where the next subscription starts: after the last event handed downstream, or the
    /// latest keepalive position.
    resume: StartPosition,
    /// The position last committed to the managed subscription.
    committed: Option<ReplayId>,
}

/// The request side of a stream, whichever RPC it is.
enum Requests {
    Plain(mpsc::Sender<FetchRequest>),
    Managed(mpsc::Sender<ManagedFetchRequest>),
}

impl Requests {
    /// Asks for `n` more events; false if the stream is gone.
    async fn more(&self, n: u32) -> bool {
        let n = n as i32;
        match self {
            Requests::Plain(tx) => tx
                .send(FetchRequest {
                    num_requested: n,
                    ..Default::default()
                })
                .await
                .is_ok(),
            Requests::Managed(tx) => tx
                .send(ManagedFetchRequest {
                    num_requested: n,
                    ..Default::default()
                })
                .await
                .is_ok(),
        }
    }

    /// Commits `position` to a managed subscription; false if the stream is gone.
    async fn commit(&self, position: &ReplayId) -> bool {
        match self {
            Requests::Plain(_) => true,
            Requests::Managed(tx) => tx
                .send(ManagedFetchRequest {
                    commit_replay_id_request: Some(CommitReplayRequest {
                        commit_request_id: uuid::Uuid::new_v4().to_string(),
                        replay_id: position.as_bytes().clone(),
                    }),
                    ..Default::default()
                })
                .await
                .is_ok(),
        }
    }
}

/// A response, whichever RPC it came by.
struct Fetched {
    events: Vec<ConsumerEvent>,
    latest_replay_id: bytes::Bytes,
    pending_num_requested: i32,
    commit: Option<CommitReplayResponse>,
}

type Inbound = std::pin::Pin<Box<dyn Stream<Item = Result<Fetched, Status>> + Send>>;

/// The longest wait between two tries of a managed subscription another client reads.
const STANDBY_RETRY_MAX: Duration = Duration::from_secs(10);

/// The longest a stopping managed subscriber waits for the last durable position.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(30);

enum StreamEnd {
    Cancelled,
    Idle,
    Failed(Status),
}

impl Subscriber {
    pub fn new(
        connection: PubSubConnection,
        options: SubscribeOptions,
        schemas: Arc<SchemaCache>,
        capacity: Arc<Semaphore>,
        out: mpsc::Sender<SourceMsg>,
        cancel: CancellationToken,
    ) -> Self {
        let resume = options.start.clone();
        Subscriber {
            connection,
            options,
            schemas,
            capacity,
            out,
            cancel,
            resume,
            committed: None,
        }
    }

    pub async fn run(mut self) -> Result<(), SubscribeError> {
        let channel = self.options.topic.clone();
        let mut delay = self.options.backoff_initial;
        let mut auth_generation = self.connection.generation().await;
        loop {
            if self.connection.org_id().is_none() {
                match self.connection.refresh(auth_generation).await {
                    Ok(generation) => auth_generation = generation,
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Login failed; retrying.");
                        if self.sleep(&mut delay).await {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(source) => return Err(SubscribeError::Auth { channel, source }),
                }
            }
            match &self.options.managed {
                None => {
                    tracing::info!(start = %self.resume, batch_size = self.options.batch_size, "Starting subscription to {channel}.")
                }
                Some(managed) => {
                    tracing::info!(managed_subscription = %managed.developer_name, batch_size = self.options.batch_size, "Starting managed subscription {} to {channel}; Salesforce keeps its position.", managed.developer_name)
                }
            }
            let (end, delivered) = self.stream_once().await;
            if delivered {
                delay = self.options.backoff_initial;
            }
            let status = match end {
                StreamEnd::Cancelled => return Ok(()),
                StreamEnd::Idle => {
                    if let Some(health) = &self.options.health {
                        health.idle_timeout();
                    }
                    tracing::warn!(
                        idle_secs = self.options.idle_timeout.as_secs(),
                        "Nothing received, not even a keepalive; resubscribing."
                    );
                    continue;
                }
                StreamEnd::Failed(status) => status,
            };
            let failure = classify(&status);
            let detail = format!("{}: {}", error_code(&status), status.message());
            if let Some(health) = &self.options.health {
                health.stream_failed(&detail);
            }
            match failure {
                Failure::Auth => {
                    tracing::info!(%detail, "Session expired or rejected; logging in again.");
                    match self.connection.refresh(auth_generation).await {
                        Ok(generation) => auth_generation = generation,
                        Err(e) if e.is_retryable() => {
                            tracing::warn!(error = %e, "Login failed; retrying.");
                            if self.sleep(&mut delay).await {
                                return Ok(());
                            }
                        }
                        Err(source) => return Err(SubscribeError::Auth { channel, source }),
                    }
                }
                Failure::ReplayInvalid => {
                    let replay_id = match &self.resume {
                        StartPosition::Custom(id) => id.to_hex(),
                        other => other.to_string(),
                    };
                    match self.options.on_invalid_replay {
                        ReplayFallback::Fail => {
                            return Err(SubscribeError::ReplayInvalid {
                                channel,
                                replay_id,
                                detail,
                            });
                        }
                        ReplayFallback::Earliest => {
                            tracing::warn!(%replay_id, %detail, "Replay id rejected; replaying from EARLIEST as configured (duplicates possible).");
                            self.resume = StartPosition::Earliest;
                        }
                        ReplayFallback::Latest => {
                            tracing::warn!(%replay_id, %detail, "Replay id rejected; continuing from LATEST as configured: events published meanwhile are missed.");
                            self.resume = StartPosition::Latest;
                        }
                    }
                }
                Failure::TopicNotFound => {
                    return Err(SubscribeError::TopicNotFound { channel, detail });
                }
                Failure::NoPermission => {
                    return Err(SubscribeError::NoPermission { channel, detail });
                }
                Failure::LimitExceeded => {
                    let wait = delay.max(Duration::from_secs(60));
                    tracing::warn!(%detail, wait_secs = wait.as_secs(), "Delivery limit exceeded; waiting before resubscribing.");
                    let mut wait = wait;
                    if self.sleep(&mut wait).await {
                        return Ok(());
                    }
                }
                Failure::ManagedInUse => {
                    let name = self
                        .options
                        .managed
                        .as_ref()
                        .map(|m| m.developer_name.as_str())
                        .unwrap_or_default();
                    let reason = format!("managed subscription {name} is read by another client");
                    // A standby retries often enough to take over soon after the reader stops.
                    delay = delay.min(STANDBY_RETRY_MAX);
                    tracing::info!(
                        retry_in_ms = delay.as_millis() as u64,
                        "Standby: {reason}; trying again."
                    );
                    if let Some(health) = &self.options.health {
                        health.set_state(crate::health::State::Standby(reason));
                    }
                    if self.sleep(&mut delay).await {
                        return Ok(());
                    }
                }
                Failure::Transient => {
                    tracing::warn!(%detail, retry_in_ms = delay.as_millis() as u64, "Stream failed; resubscribing after backoff.");
                    if self.sleep(&mut delay).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Sleeps for `delay` with full jitter and doubles it (to the maximum). True if cancelled.
    async fn sleep(&self, delay: &mut Duration) -> bool {
        let jittered = delay.mul_f64(rand::rng().random_range(0.5..1.0));
        *delay = (*delay * 2).min(self.options.backoff_max.max(self.options.backoff_initial));
        tokio::select! {
            _ = self.cancel.cancelled() => true,
            _ = tokio::time::sleep(jittered) => false,
        }
    }

    /// One Subscribe stream, from the first FetchRequest to its end. Also says whether any
    /// event was delivered, which resets the backoff.
    async fn stream_once(&mut self) -> (StreamEnd, bool) {
        let mut held = 0u32;
        let result = self.stream_inner(&mut held).await;
        self.capacity.add_permits(held as usize);
        result
    }

    async fn stream_inner(&mut self, held: &mut u32) -> (StreamEnd, bool) {
        let batch = self.options.batch_size.clamp(1, MAX_BATCH);
        let mut delivered = false;
        tokio::select! {
            _ = self.cancel.cancelled() => return (StreamEnd::Cancelled, false),
            n = acquire_up_to(&self.capacity, batch) => *held = n,
        }
        let mut client = self.connection.client.clone();
        let opened = tokio::select! {
            _ = self.cancel.cancelled() => return (StreamEnd::Cancelled, false),
            opened = self.open(&mut client, *held) => opened,
        };
        let (requests, mut inbound) = match opened {
            Ok(opened) => opened,
            Err(status) => return (StreamEnd::Failed(status), false),
        };
        if let Some(health) = &self.options.health {
            health.stream_opened();
        }
        let mut committed = self.options.managed.as_ref().map(|m| m.committed.clone());
        if let Some(position) = committed
            .as_mut()
            .and_then(|c| c.borrow_and_update().clone())
            && self.committed.as_ref() != Some(&position)
            && requests.commit(&position).await
        {
            self.committed = Some(position);
        }
        let org_id: Arc<str> = self.connection.org_id().unwrap_or_default().into();
        let low_water = batch / 2;
        loop {
            let want_more = *held <= low_water;
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    self.stop(&requests, &mut inbound, committed).await;
                    return (StreamEnd::Cancelled, delivered);
                }
                n = acquire_up_to(&self.capacity, batch - *held), if want_more => {
                    *held += n;
                    if !requests.more(n).await {
                        return (StreamEnd::Failed(Status::unavailable("request stream closed")), delivered);
                    }
                }
                Some(position) = durable(&mut committed) => {
                    if self.committed.as_ref() != Some(&position) && requests.commit(&position).await {
                        self.committed = Some(position);
                    }
                }
                message = tokio::time::timeout(self.options.idle_timeout, inbound.next()) => {
                    let response = match message {
                        Err(_) => return (StreamEnd::Idle, delivered),
                        Ok(Some(Err(status))) => return (StreamEnd::Failed(status), delivered),
                        Ok(None) => return (StreamEnd::Failed(Status::unavailable("the server closed the stream")), delivered),
                        Ok(Some(Ok(response))) => response,
                    };
                    if let Some(commit) = &response.commit {
                        log_commit(commit);
                        if response.events.is_empty() {
                            // A reply to a commit, not to a fetch: no credit changes hands.
                            continue;
                        }
                    }
                    let received = response.events.len() as u32;
                    let pending = u32::try_from(response.pending_num_requested).unwrap_or(0);
                    let events: Vec<RawEvent> = response
                        .events
                        .into_iter()
                        .map(|e: ConsumerEvent| {
                            // One without its event still holds a position: it goes on (and is
                            // dead-lettered as empty) rather than vanish behind the checkpoint.
                            let event = e.event.unwrap_or_default();
                            RawEvent {
                                replay_id: ReplayId::new(e.replay_id),
                                event_id: event.id,
                                schema_id: event.schema_id,
                                payload: event.payload,
                            }
                        })
                        .collect();
                    let permits = received.min(*held);
                    *held -= permits;
                    if pending < *held {
                        // The server holds fewer requests than we counted: return the difference.
                        self.capacity.add_permits((*held - pending) as usize);
                        *held = pending;
                    }
                    if events.is_empty() {
                        if !response.latest_replay_id.is_empty() {
                            let latest = ReplayId::new(response.latest_replay_id);
                            tracing::debug!(latest = %latest, "Keepalive.");
                            self.resume = StartPosition::Custom(latest.clone());
                            if !self.deliver(SourceMsg::Keepalive { latest }).await {
                                self.stop(&requests, &mut inbound, committed).await;
                                return (StreamEnd::Cancelled, delivered);
                            }
                        }
                        continue;
                    }
                    if let Err(status) = self.ensure_schemas(&mut client, &events).await {
                        self.capacity.add_permits(permits as usize);
                        return (StreamEnd::Failed(status), delivered);
                    }
                    let last = events.last().map(|e| e.replay_id.clone());
                    let credit = Credit { pool: self.capacity.clone(), permits: permits as usize };
                    let msg = SourceMsg::Events { events, org_id: org_id.clone(), credit };
                    if !self.deliver(msg).await {
                        self.stop(&requests, &mut inbound, committed).await;
                        return (StreamEnd::Cancelled, delivered);
                    }
                    delivered = true;
                    if let Some(last) = last {
                        self.resume = StartPosition::Custom(last);
                    }
                }
            }
        }
    }

    /// Opens a Subscribe stream from the resume position, or a ManagedSubscribe stream, asking
    /// for `credit` events.
    async fn open(&self, client: &mut Client, credit: u32) -> Result<(Requests, Inbound), Status> {
        let credit = credit as i32;
        match &self.options.managed {
            None => {
                let (preset, replay_id) = self.resume.preset();
                let (requests, outbound) = opening(FetchRequest {
                    topic_name: self.options.topic.clone(),
                    replay_preset: preset as i32,
                    replay_id,
                    num_requested: credit,
                    auth_refresh: String::new(),
                });
                let inbound = client.subscribe(outbound).await?.into_inner().map(|r| {
                    r.map(|r| Fetched {
                        events: r.events,
                        latest_replay_id: r.latest_replay_id,
                        pending_num_requested: r.pending_num_requested,
                        commit: None,
                    })
                });
                Ok((Requests::Plain(requests), Box::pin(inbound)))
            }
            Some(managed) => {
                let (requests, outbound) = opening(ManagedFetchRequest {
                    developer_name: managed.developer_name.clone(),
                    num_requested: credit,
                    ..Default::default()
                });
                let inbound = client
                    .managed_subscribe(outbound)
                    .await?
                    .into_inner()
                    .map(|r| {
                        r.map(|r| Fetched {
                            events: r.events,
                            latest_replay_id: r.latest_replay_id,
                            pending_num_requested: r.pending_num_requested,
                            commit: r.commit_response,
                        })
                    });
                Ok((Requests::Managed(requests), Box::pin(inbound)))
            }
        }
    }

    /// Hands `msg` downstream; false once the subscription is stopping (cancelled, or
    /// nobody receives any more).
    async fn deliver(&self, msg: SourceMsg) -> bool {
        tokio::select! {
            sent = self.out.send(msg) => sent.is_ok(),
            _ = self.cancel.cancelled() => false,
        }
    }

    /// A stopping stream; for a managed subscription, waits (no longer fetching) until the
    /// pipeline has made its last position durable, commits it, and waits for Salesforce to
    /// confirm, so the next client starts right after it.
    async fn stop(
        &mut self,
        requests: &Requests,
        inbound: &mut Inbound,
        committed: Option<watch::Receiver<Option<ReplayId>>>,
    ) {
        let Some(mut committed) = committed else {
            return;
        };
        let waited = tokio::time::timeout(FINAL_COMMIT_WAIT, async {
            while committed.changed().await.is_ok() {}
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                "The pipeline did not finish within {} s; committing what is durable so far.",
                FINAL_COMMIT_WAIT.as_secs()
            );
        }
        let Some(position) = committed.borrow().clone() else {
            return;
        };
        let confirmed = self.committed.as_ref() == Some(&position)
            || (requests.commit(&position).await && confirmation(inbound, &position).await);
        if confirmed {
            tracing::info!(replay_id = %position, "Committed the last durable position to the managed subscription.");
            self.committed = Some(position);
        } else {
            tracing::warn!(replay_id = %position, "Salesforce did not confirm the last commit; the next client may receive some events again.");
        }
    }

    /// Fetches and caches the writer schema of every event whose schema is not cached yet.
    async fn ensure_schemas(&self, client: &mut Client, events: &[RawEvent]) -> Result<(), Status> {
        for event in events {
            // Known, known to be unusable (asking again per event would only repeat the
            // answer), or an event that came without one.
            if event.schema_id.is_empty()
                || self.schemas.get(&event.schema_id).is_some()
                || self.schemas.failure(&event.schema_id).is_some()
            {
                continue;
            }
            let info = client
                .get_schema(SchemaRequest {
                    schema_id: event.schema_id.clone(),
                })
                .await?
                .into_inner();
            match self.schemas.insert(&event.schema_id, &info.schema_json) {
                Ok(_) => {
                    tracing::info!(schema_id = %event.schema_id, "Fetched schema.")
                }
                // Remembered: events of this schema are dead-lettered with the reason.
                Err(error) => {
                    tracing::error!(schema_id = %event.schema_id, %error, "Schema cannot be used.")
                }
            }
        }
        Ok(())
    }
}

/// Whether Salesforce confirms the commit of `position` within a few seconds.
async fn confirmation(inbound: &mut Inbound, position: &ReplayId) -> bool {
    let confirmed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(response)) = inbound.next().await {
            if let Some(commit) = response.commit {
                log_commit(&commit);
                if commit.replay_id == position.as_bytes() {
                    return commit.error.is_none();
                }
            }
        }
        false
    })
    .await;
    confirmed == Ok(true)
}

/// The request side of a new stream with its first request queued, and what the RPC sends.
fn opening<T>(first: T) -> (mpsc::Sender<T>, tokio_stream::wrappers::ReceiverStream<T>) {
    let (requests, outbound) = mpsc::channel(4);
    requests
        .try_send(first)
        .unwrap_or_else(|_| unreachable!("a new channel has room"));
    (
        requests,
        tokio_stream::wrappers::ReceiverStream::new(outbound),
    )
}

/// The next durable position to commit, when there is a managed subscription whose pipeline
/// still runs; pending forever otherwise.
async fn durable(committed: &mut Option<watch::Receiver<Option<ReplayId>>>) -> Option<ReplayId> {
    let Some(rx) = committed else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        // The pipeline ended; the stream is stopping, and commits its last position then.
        return std::future::pending().await;
    }
    rx.borrow_and_update().clone()
}

fn log_commit(commit: &CommitReplayResponse) {
    let replay_id = hex::encode(&commit.replay_id);
    match &commit.error {
        Some(error) => {
            tracing::warn!(%replay_id, error = %error.msg, "Salesforce refused to commit the managed subscription's position; events after it may come again.")
        }
        None => tracing::debug!(%replay_id, "Committed to the managed subscription."),
    }
}

fn error_code(status: &Status) -> String {
    status
        .metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| format!("{:?}", status.code()), str::to_string)
}

/// Waits for at least one permit, then takes as many more as are free, up to `max`. The
/// permits are forgotten; the caller returns them with `add_permits` or a [`Credit`].
async fn acquire_up_to(pool: &Semaphore, max: u32) -> u32 {
    if max == 0 {
        return std::future::pending().await;
    }
    match pool.acquire().await {
        Ok(permit) => permit.forget(),
        Err(_) => return std::future::pending().await,
    }
    let mut got = 1;
    while got < max {
        match pool.try_acquire() {
            Ok(permit) => {
                permit.forget();
                got += 1;
            }
            Err(_) => break,
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(code: tonic::Code, error_code: &str) -> Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("error-code", error_code.parse().unwrap());
        Status::with_metadata(code, "x", metadata)
    }

    #[test]
    fn a_managed_subscription_in_use_is_recognised_by_salesforces_words() {
        let status = Status::failed_precondition(crate::sim::pubsub::MANAGED_IN_USE);
        assert_eq!(classify(&status), Failure::ManagedInUse);
        assert_eq!(
            classify(&Status::failed_precondition("something else")),
            Failure::Transient
        );
    }

    #[test]
    fn failures_are_classified_by_trailer_then_status() {
        let cases = [
            (
                "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted",
                Failure::ReplayInvalid,
            ),
            (
                "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed",
                Failure::ReplayInvalid,
            ),
            (
                "sfdc.platform.eventbus.grpc.service.auth.error",
                Failure::Auth,
            ),
            (
                "sfdc.platform.eventbus.grpc.topic.not.found",
                Failure::TopicNotFound,
            ),
            (
                "sfdc.platform.eventbus.grpc.subscription.limit.exceeded",
                Failure::LimitExceeded,
            ),
            (
                "sfdc.platform.eventbus.grpc.service.unavailable",
                Failure::Transient,
            ),
            (
                "sfdc.platform.eventbus.grpc.topic.permission.denied",
                Failure::NoPermission,
            ),
        ];
        for (code, want) in cases {
            assert_eq!(
                classify(&status_with(tonic::Code::Internal, code)),
                want,
                "{code}"
            );
        }
        assert_eq!(classify(&Status::unauthenticated("x")), Failure::Auth);
        assert_eq!(
            classify(&Status::permission_denied("x")),
            Failure::NoPermission
        );
        assert_eq!(classify(&Status::not_found("x")), Failure::TopicNotFound);
        assert_eq!(
            classify(&Status::resource_exhausted("x")),
            Failure::LimitExceeded
        );
        assert_eq!(classify(&Status::unavailable("x")), Failure::Transient);
        assert_eq!(
            classify(&Status::internal("RST_STREAM")),
            Failure::Transient
        );
    }

    #[tokio::test]
    async fn credit_returns_capacity_when_dropped() {
        let pool = Arc::new(Semaphore::new(10));
        let got = acquire_up_to(&pool, 4).await;
        assert_eq!(got, 4);
        assert_eq!(pool.available_permits(), 6);
        let credit = Credit {
            pool: pool.clone(),
            permits: got as usize,
        };
        drop(credit);
        assert_eq!(pool.available_permits(), 10);
        let got = acquire_up_to(&pool, 50).await;
        assert_eq!(got, 10);
    }

    #[test]
    fn endpoints_must_be_http_or_https() {
        let auth = Authenticator::new(
            "http://127.0.0.1:1",
            "57.0",
            crate::salesforce::auth::Credentials::Soap {
                username: "u".into(),
                password: "p".to_string().into(),
            },
        );
        assert!(PubSubConnection::new("ftp://x", auth.clone()).is_err());
        assert!(PubSubConnection::new("not a url", auth).is_err());
    }
}
