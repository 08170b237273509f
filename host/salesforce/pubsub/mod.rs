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
//!
//! | file | holds |
//! |---|---|
//! | [`connection`] | the HTTP/2 channel and the org's session, logins with retry |
//! | [`supervisor`] | one subscription's life: (re)subscribe, react to each failure |
//! | [`stream`] | one stream's lifetime: open, receive, hand downstream, fetch schemas |
//! | [`credit`] | flow control: fetch credit is pipeline capacity |
//! | [`managed`] | managed subscriptions: commits, the last commit on stop |
//! | [`error`] | error classification by `error-code` trailer and status |
//!
//! Start positions and the invalid-replay fallback are in [`crate::salesforce::replay`];
//! the session's metadata on every call in [`crate::salesforce::auth`].

pub mod connection;
pub mod credit;
pub mod error;
pub mod managed;
pub mod stream;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::event::ReplayId;
use crate::salesforce::auth::AuthError;
pub use crate::salesforce::replay::{ReplayFallback, StartPosition};
use crate::salesforce::schema::SchemaCache;
pub use connection::PubSubConnection;
pub use credit::{Budget, Credit};
pub use error::{Failure, classify};

/// The Pub/Sub API's global endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://api.pubsub.salesforce.com:7443";
/// Salesforce accepts at most this many events requested at once.
pub const MAX_BATCH: u32 = 100;
/// Large events and schemas exceed tonic's default 4 MiB decode limit.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

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
    /// The process's room for decoded events, shared by its subscriptions.
    pub budget: Budget,
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
            budget: Budget::new(0),
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

/// What a subscription hands downstream, in stream order. It travels boxed
/// ([`SourceBox`]): a channel allocates room for 32 messages at once, 256 bytes of pointers
/// rather than 2.3 KB of messages for every subscription.
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

/// A [`SourceMsg`] as the source's channel carries it.
pub type SourceBox = Box<SourceMsg>;

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

/// Runs one subscription until `cancel` fires or a failure that needs a human.
pub struct Subscriber {
    connection: PubSubConnection,
    options: SubscribeOptions,
    schemas: Arc<SchemaCache>,
    capacity: Arc<Semaphore>,
    out: mpsc::Sender<SourceBox>,
    cancel: CancellationToken,
    /// Where the next subscription starts: after the last event handed downstream, or the
    /// latest keepalive position.
    resume: StartPosition,
    /// The position last committed to the managed subscription.
    committed: Option<ReplayId>,
    /// The wait before the next try; reset once a stream delivers.
    backoff: Backoff,
}
