//! The simulated Pub/Sub API: the real `eventbus.v1.PubSub` service over gRPC, with
//! Salesforce's flow control (`num_requested` credit, `pending_num_requested`), keepalives,
//! replay presets, error codes in the `error-code` trailer, and injectable faults. Managed
//! subscriptions (ManagedSubscribe) keep their committed replay id here, and admit one
//! active client each, as Salesforce does.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::pubsub::pub_sub_server::PubSub;
use crate::proto::pubsub::{
    CommitReplayRequest, CommitReplayResponse, ConsumerEvent, FetchRequest, FetchResponse,
    ManagedFetchRequest, ManagedFetchResponse, ProducerEvent, PublishRequest, PublishResponse,
    PublishResult, ReplayPreset, SchemaInfo, SchemaRequest, TopicInfo, TopicRequest,
};
use crate::salesforce::schema::{EventMeta, decode_event};
use crate::sim::bus::Bus;
use crate::sim::generator::Generated;
use crate::sim::generator::{parse_replay_id, replay_id};
use crate::sim::login::Tokens;

/// Error codes as the real service puts them in the `error-code` trailer.
pub mod codes {
    pub const AUTH: &str = "sfdc.platform.eventbus.grpc.service.auth.error";
    pub const REPLAY_CORRUPTED: &str =
        "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted";
    pub const REPLAY_INVALID: &str =
        "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed";
    pub const TOPIC_NOT_FOUND: &str = "sfdc.platform.eventbus.grpc.topic.not.found";
    pub const UNAVAILABLE: &str = "sfdc.platform.eventbus.grpc.service.unavailable";
}

/// What Salesforce says to a second client of an active managed subscription (its gRPC status
/// and trailer for this are not documented; clients recognise the message).
pub const MANAGED_IN_USE: &str = "An active managed subscription with the same ID already exists. If a previous subscription with the same ID was stopped, there can be a delay before it expires. Try subscribing again later.";

/// A managed subscription: a topic, and the replay id its client last committed.
#[derive(Debug)]
struct Managed {
    topic: Option<u16>,
    committed: Option<u64>,
    active: bool,
}

/// Salesforce delivers at most this many events per FetchResponse.
const MAX_BATCH: usize = 100;

/// Faults applied to streams.
#[derive(Clone, Debug, Default)]
pub struct StreamFaults {
    /// End every subscription stream with UNAVAILABLE after it has delivered this many events.
    pub end_stream_after: Option<u64>,
    /// Expire every issued token once this many events have been delivered in total.
    pub expire_tokens_after: Option<u64>,
}

/// What the simulator observed, for tests and the demo.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Subscribe calls accepted.
    pub subscribes: AtomicU64,
    /// Events delivered over all streams.
    pub served: AtomicU64,
    /// The most events any stream had requested and not yet received.
    pub max_pending: AtomicI64,
}

pub struct PubSubService {
    pub bus: Arc<Bus>,
    pub stats: Arc<SimStats>,
    pub tokens: Arc<Tokens>,
    pub org_id: String,
    pub keepalive: Duration,
    pub faults: StreamFaults,
    tokens_expired: AtomicBool,
    /// By developer name.
    managed: Mutex<HashMap<String, Managed>>,
}

impl PubSubService {
    pub fn new(
        bus: Arc<Bus>,
        tokens: Arc<Tokens>,
        org_id: String,
        keepalive: Duration,
        faults: StreamFaults,
        managed: &[(String, String)],
    ) -> Result<Self, Status> {
        let mut service = PubSubService {
            bus,
            stats: Arc::default(),
            tokens,
            org_id,
            keepalive,
            faults,
            tokens_expired: AtomicBool::new(false),
            managed: Mutex::default(),
        };
        let mut subscriptions = HashMap::new();
        for (name, topic) in managed {
            let topic = service.topic(topic)?;
            subscriptions.insert(
                name.clone(),
                Managed {
                    topic,
                    committed: None,
                    active: false,
                },
            );
        }
        service.managed = Mutex::new(subscriptions);
        Ok(service)
    }

    /// The token the call carries, after checking it and the tenant against this org.
    fn authorize(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let get = |k: &str| metadata.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
        let token = get("accesstoken");
        if !self.tokens.is_valid(token) {
            return Err(error(
                tonic::Code::Unauthenticated,
                codes::AUTH,
                "Authentication error: the access token is invalid or expired.",
            ));
        }
        if get("tenantid") != self.org_id {
            return Err(error(
                tonic::Code::PermissionDenied,
                codes::AUTH,
                "The tenantid header does not match the session's org.",
            ));
        }
        if get("instanceurl").is_empty() {
            return Err(error(
                tonic::Code::InvalidArgument,
                codes::AUTH,
                "The instanceurl header is missing.",
            ));
        }
        Ok(token.to_string())
    }

    /// `None` for `/data/ChangeEvents`, the entity's index for its own channel.
    fn topic(&self, name: &str) -> Result<Option<u16>, Status> {
        if name == "/data/ChangeEvents" {
            return Ok(None);
        }
        self.bus
            .entities
            .iter()
            .position(|e| e.channel == name)
            .map(|i| Some(i as u16))
            .ok_or_else(|| {
                error(
                    tonic::Code::NotFound,
                    codes::TOPIC_NOT_FOUND,
                    &format!("Topic {name} not found. Check that Change Data Capture is enabled for the object."),
                )
            })
    }

    fn note_served(&self, n: u64) {
        let total = self.stats.served.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(limit) = self.faults.expire_tokens_after
            && total >= limit
            && !self.tokens_expired.swap(true, Ordering::Relaxed)
        {
            tracing::info!(
                served = total,
                "Simulator fault: expiring every access token."
            );
            self.tokens.revoke_all();
        }
    }
}

fn error(code: tonic::Code, error_code: &str, message: &str) -> Status {
    let mut metadata = MetadataMap::new();
    if let Ok(v) = error_code.parse() {
        metadata.insert("error-code", v);
    }
    Status::with_metadata(code, message, metadata)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl PubSub for Arc<PubSubService> {
    type SubscribeStream = BoxStream<FetchResponse>;
    type PublishStreamStream = BoxStream<PublishResponse>;
    type ManagedSubscribeStream = BoxStream<ManagedFetchResponse>;

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let token = self.authorize(request.metadata())?;
        let mut inbound = request.into_inner();
        let first = match inbound.message().await? {
            Some(first) => first,
            None => {
                return Err(Status::invalid_argument(
                    "the stream ended before the first FetchRequest",
                ));
            }
        };
        let entity = self.topic(&first.topic_name)?;
        let cursor = match ReplayPreset::try_from(first.replay_preset)
            .unwrap_or(ReplayPreset::Latest)
        {
            ReplayPreset::Latest => self.bus.head() + 1,
            ReplayPreset::Earliest => self.bus.first(),
            ReplayPreset::Custom => {
                let Some(seq) = parse_replay_id(&first.replay_id) else {
                    return Err(error(
                        tonic::Code::InvalidArgument,
                        codes::REPLAY_CORRUPTED,
                        "The Replay ID provided is corrupted.",
                    ));
                };
                if seq + 1 < self.bus.first() || seq > self.bus.head() {
                    return Err(error(
                        tonic::Code::InvalidArgument,
                        codes::REPLAY_INVALID,
                        "The Replay ID validation failed: the replay ID is outside the retention window or was never issued.",
                    ));
                }
                seq + 1
            }
        };
        let replies = self.start(token, entity, cursor, first.num_requested, inbound, None);
        Ok(Response::new(Box::pin(replies)))
    }

    async fn get_schema(
        &self,
        request: Request<SchemaRequest>,
    ) -> Result<Response<SchemaInfo>, Status> {
        self.authorize(request.metadata())?;
        let id = &request.get_ref().schema_id;
        let schema = self
            .bus
            .entities
            .iter()
            .flat_map(|e| [&e.schema, &e.changed_schema])
            .find(|s| &s.id == id)
            .ok_or_else(|| Status::not_found(format!("schema {id} not found")))?;
        Ok(Response::new(SchemaInfo {
            schema_json: schema.json.clone(),
            schema_id: schema.id.clone(),
            rpc_id: uuid::Uuid::new_v4().to_string(),
        }))
    }

    async fn get_topic(
        &self,
        request: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        self.authorize(request.metadata())?;
        let name = request.get_ref().topic_name.clone();
        let entity = self.topic(&name)?;
        Ok(Response::new(TopicInfo {
            topic_name: name,
            tenant_guid: self.org_id.clone(),
            can_publish: entity.is_some(),
            can_subscribe: true,
            schema_id: entity
                .map(|i| self.bus.entities[i as usize].schema.id.clone())
                .unwrap_or_default(),
            rpc_id: uuid::Uuid::new_v4().to_string(),
        }))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.authorize(request.metadata())?;
        Ok(Response::new(self.publish_batch(request.into_inner())?))
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.authorize(request.metadata())?;
        let service = self.clone();
        let responses = request
            .into_inner()
            .map(move |req| service.publish_batch(req?));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn managed_subscribe(
        &self,
        request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        let token = self.authorize(request.metadata())?;
        let mut inbound = request.into_inner();
        let Some(first) = inbound.message().await? else {
            return Err(Status::invalid_argument(
                "the stream ended before the first ManagedFetchRequest",
            ));
        };
        let name = if first.developer_name.is_empty() {
            first.subscription_id.clone()
        } else {
            first.developer_name.clone()
        };
        let (entity, cursor) = {
            let mut managed = self.managed.lock().expect("managed lock");
            let Some(subscription) = managed.get_mut(&name) else {
                return Err(Status::not_found(format!(
                    "Managed event subscription {name} not found. Create it (ManagedEventSubscription) before subscribing."
                )));
            };
            if subscription.active {
                return Err(Status::failed_precondition(MANAGED_IN_USE));
            }
            subscription.active = true;
            let cursor = match subscription.committed {
                Some(seq) => seq + 1,
                None => self.bus.first(),
            };
            (subscription.topic, cursor)
        };
        let replies = self.start(
            token,
            entity,
            cursor,
            first.num_requested,
            inbound,
            Some(name),
        );
        Ok(Response::new(Box::pin(replies)))
    }
}

/// What a client sends on a subscription stream, whichever RPC it came by.
struct Ask {
    num_requested: i32,
    commit: Option<CommitReplayRequest>,
}

/// What a subscription stream sends back, whichever RPC.
struct Reply {
    events: Vec<ConsumerEvent>,
    latest_replay_id: bytes::Bytes,
    rpc_id: String,
    pending_num_requested: i32,
    commit: Option<CommitReplayResponse>,
}

impl From<FetchRequest> for Ask {
    fn from(r: FetchRequest) -> Ask {
        Ask {
            num_requested: r.num_requested,
            commit: None,
        }
    }
}

impl From<ManagedFetchRequest> for Ask {
    fn from(r: ManagedFetchRequest) -> Ask {
        Ask {
            num_requested: r.num_requested,
            commit: r.commit_replay_id_request,
        }
    }
}

impl From<Reply> for FetchResponse {
    fn from(r: Reply) -> FetchResponse {
        FetchResponse {
            events: r.events,
            latest_replay_id: r.latest_replay_id,
            rpc_id: r.rpc_id,
            pending_num_requested: r.pending_num_requested,
        }
    }
}

impl From<Reply> for ManagedFetchResponse {
    fn from(r: Reply) -> ManagedFetchResponse {
        ManagedFetchResponse {
            events: r.events,
            latest_replay_id: r.latest_replay_id,
            rpc_id: r.rpc_id,
            pending_num_requested: r.pending_num_requested,
            commit_response: r.commit,
        }
    }
}

/// Marks a managed subscription inactive when its stream ends, however it ends.
struct Active {
    service: Arc<PubSubService>,
    name: String,
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(m) = self
            .service
            .managed
            .lock()
            .expect("managed lock")
            .get_mut(&self.name)
        {
            m.active = false;
        }
    }
}

impl PubSubService {
    /// Serves a subscription stream from `cursor` on a task, whichever RPC it came by; its
    /// replies, as that RPC's responses.
    fn start<Req, Resp>(
        self: &Arc<Self>,
        token: String,
        entity: Option<u16>,
        cursor: u64,
        num_requested: i32,
        inbound: Streaming<Req>,
        managed: Option<String>,
    ) -> impl Stream<Item = Result<Resp, Status>> + Send + 'static
    where
        Req: Into<Ask> + Send + 'static,
        Resp: From<Reply>,
    {
        let inbound = inbound.map(|r| r.map(Into::into));
        let (tx, rx) = mpsc::channel(4);
        let pending = i64::from(num_requested.clamp(0, MAX_BATCH as i32));
        self.stats.subscribes.fetch_add(1, Ordering::Relaxed);
        self.stats.max_pending.fetch_max(pending, Ordering::Relaxed);
        let active = managed.map(|name| Active {
            service: self.clone(),
            name,
        });
        let stream = Subscription {
            service: self.clone(),
            token,
            entity,
            cursor,
            pending,
            delivered: 0,
            rpc_id: uuid::Uuid::new_v4().to_string(),
            active,
        };
        tokio::spawn(stream.run(inbound, tx));
        ReceiverStream::new(rx).map(|r| r.map(Resp::from))
    }

    /// Records a managed subscription's commit; the reply for it.
    fn commit(&self, name: &str, request: CommitReplayRequest) -> CommitReplayResponse {
        let started = std::time::Instant::now();
        let error = match parse_replay_id(&request.replay_id) {
            Some(seq) if seq <= self.bus.head() => {
                if let Some(m) = self.managed.lock().expect("managed lock").get_mut(name) {
                    m.committed = Some(seq);
                }
                None
            }
            _ => Some(crate::proto::pubsub::Error {
                code: crate::proto::pubsub::ErrorCode::Commit as i32,
                msg: "The replay ID is invalid or was never issued.".into(),
            }),
        };
        CommitReplayResponse {
            commit_request_id: request.commit_request_id,
            replay_id: request.replay_id,
            error,
            process_time: started.elapsed().as_millis() as i64,
        }
    }

    fn publish_batch(&self, request: PublishRequest) -> Result<PublishResponse, Status> {
        let Some(entity) = self.topic(&request.topic_name)? else {
            return Err(Status::invalid_argument(
                "/data/ChangeEvents cannot be published to",
            ));
        };
        let schemas = &self.bus.entities[entity as usize];
        let results = request
            .events
            .into_iter()
            .map(|event| {
                self.publish_one(entity, [&schemas.schema, &schemas.changed_schema], event)
            })
            .collect();
        Ok(PublishResponse {
            results,
            schema_id: schemas.schema.id.clone(),
            rpc_id: uuid::Uuid::new_v4().to_string(),
        })
    }

    fn publish_one(
        &self,
        entity: u16,
        schemas: [&Arc<crate::event::EventSchema>; 2],
        event: ProducerEvent,
    ) -> PublishResult {
        let failure = |msg: &str| PublishResult {
            replay_id: Default::default(),
            error: Some(crate::proto::pubsub::Error {
                code: crate::proto::pubsub::ErrorCode::Publish as i32,
                msg: msg.to_string(),
            }),
            correlation_key: event.id.clone(),
        };
        let Some(schema) = schemas.into_iter().find(|s| s.id == event.schema_id) else {
            return failure("unknown schema id for this topic");
        };
        let meta = EventMeta {
            org_id: self.org_id.as_str().into(),
            channel: "".into(),
            replay_id: crate::event::ReplayId::new(Default::default()),
            event_id: event.id.clone(),
        };
        if let Err(e) = decode_event(schema, meta, event.payload.clone()) {
            return failure(&e.to_string());
        }
        let id = if event.id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            event.id.clone()
        };
        let seq = self.bus.publish(
            entity,
            Generated {
                event_id: id.clone(),
                schema_id: event.schema_id,
                payload: event.payload,
            },
        );
        PublishResult {
            replay_id: replay_id(seq),
            error: None,
            correlation_key: id,
        }
    }
}

struct Subscription {
    service: Arc<PubSubService>,
    token: String,
    entity: Option<u16>,
    cursor: u64,
    pending: i64,
    delivered: u64,
    rpc_id: String,
    /// Held while the stream of a managed subscription lives.
    active: Option<Active>,
}

impl Subscription {
    async fn run(
        mut self,
        mut inbound: impl Stream<Item = Result<Ask, Status>> + Unpin,
        tx: mpsc::Sender<Result<Reply, Status>>,
    ) {
        let mut head = self.service.bus.watch_head();
        let mut keepalive = tokio::time::interval(self.service.keepalive);
        keepalive.tick().await;
        loop {
            if !self.service.tokens.is_valid(&self.token) {
                let _ = tx
                    .send(Err(error(
                        tonic::Code::Unauthenticated,
                        codes::AUTH,
                        "Authentication error: the session expired.",
                    )))
                    .await;
                return;
            }
            if self.pending > 0 {
                let want = (self.pending as usize).min(MAX_BATCH);
                let (events, next) = self.service.bus.read(self.cursor, self.entity, want);
                self.cursor = next;
                if !events.is_empty() {
                    let n = events.len();
                    let allowed = match self.service.faults.end_stream_after {
                        Some(limit) => (limit.saturating_sub(self.delivered) as usize).min(n),
                        None => n,
                    };
                    if allowed < n {
                        self.cursor = events[allowed].seq;
                    }
                    let events: Vec<ConsumerEvent> = events
                        .into_iter()
                        .take(allowed)
                        .map(|e| ConsumerEvent {
                            event: (!e.empty).then(|| ProducerEvent {
                                id: e.event_id,
                                schema_id: e.schema_id,
                                payload: e.payload,
                                headers: Vec::new(),
                            }),
                            replay_id: replay_id(e.seq),
                        })
                        .collect();
                    if !events.is_empty() {
                        let sent = events.len();
                        self.pending -= sent as i64;
                        self.delivered += sent as u64;
                        let latest = events
                            .last()
                            .map(|e| e.replay_id.clone())
                            .unwrap_or_default();
                        let response = Reply {
                            events,
                            latest_replay_id: latest,
                            rpc_id: self.rpc_id.clone(),
                            pending_num_requested: self.pending as i32,
                            commit: None,
                        };
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                        self.service.note_served(sent as u64);
                        keepalive.reset();
                    }
                    if allowed < n {
                        let _ = tx
                            .send(Err(error(
                                tonic::Code::Unavailable,
                                codes::UNAVAILABLE,
                                "Simulator fault: stream ended.",
                            )))
                            .await;
                        return;
                    }
                    continue;
                }
            }
            tokio::select! {
                request = inbound.next() => match request {
                    Some(Ok(request)) => {
                        self.pending += i64::from(request.num_requested.clamp(0, MAX_BATCH as i32));
                        self.service.stats.max_pending.fetch_max(self.pending, Ordering::Relaxed);
                        if let (Some(commit), Some(active)) = (request.commit, &self.active) {
                            let response = Reply {
                                events: Vec::new(),
                                latest_replay_id: Default::default(),
                                rpc_id: self.rpc_id.clone(),
                                pending_num_requested: self.pending as i32,
                                commit: Some(self.service.commit(&active.name, commit)),
                            };
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => return,
                },
                changed = head.changed() => if changed.is_err() { return },
                _ = keepalive.tick() => {
                    let response = Reply {
                        events: Vec::new(),
                        latest_replay_id: replay_id(self.cursor.saturating_sub(1)),
                        rpc_id: self.rpc_id.clone(),
                        pending_num_requested: self.pending as i32,
                        commit: None,
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }
}
