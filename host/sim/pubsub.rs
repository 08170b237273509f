//! The simulated Pub/Sub API: the real `eventbus.v1.PubSub` service over gRPC, with
//! Salesforce's flow control (`num_requested` credit, `pending_num_requested`), keepalives,
//! replay presets, error codes in the `error-code` trailer, and injectable faults.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::pubsub::pub_sub_server::PubSub;
use crate::proto::pubsub::{
    ConsumerEvent, FetchRequest, FetchResponse, ManagedFetchRequest, ManagedFetchResponse,
    ProducerEvent, PublishRequest, PublishResponse, PublishResult, ReplayPreset, SchemaInfo,
    SchemaRequest, TopicInfo, TopicRequest,
};
use crate::salesforce::schema::{EventMeta, decode_event};
use crate::sim::bus::{Bus, parse_replay_id, replay_id};
use crate::sim::generator::Generated;
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
}

impl PubSubService {
    pub fn new(
        bus: Arc<Bus>,
        tokens: Arc<Tokens>,
        org_id: String,
        keepalive: Duration,
        faults: StreamFaults,
    ) -> Self {
        PubSubService {
            bus,
            stats: Arc::default(),
            tokens,
            org_id,
            keepalive,
            faults,
            tokens_expired: AtomicBool::new(false),
        }
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
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        let pending = i64::from(first.num_requested.clamp(0, MAX_BATCH as i32));
        self.stats.subscribes.fetch_add(1, Ordering::Relaxed);
        self.stats.max_pending.fetch_max(pending, Ordering::Relaxed);
        tokio::spawn(async move {
            let stream = Subscription {
                service,
                token,
                entity,
                cursor,
                pending,
                delivered: 0,
                rpc_id: uuid::Uuid::new_v4().to_string(),
            };
            stream.run(inbound, tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
            .find(|s| &s.event.id == id)
            .ok_or_else(|| Status::not_found(format!("schema {id} not found")))?;
        Ok(Response::new(SchemaInfo {
            schema_json: schema.event.json.clone(),
            schema_id: schema.event.id.clone(),
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
                .map(|i| self.bus.entities[i as usize].schema.event.id.clone())
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
        _request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        Err(Status::unimplemented(
            "ManagedSubscribe is not simulated; use Subscribe.",
        ))
    }
}

impl PubSubService {
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
            schema_id: schemas.schema.event.id.clone(),
            rpc_id: uuid::Uuid::new_v4().to_string(),
        })
    }

    fn publish_one(
        &self,
        entity: u16,
        schemas: [&Arc<crate::salesforce::schema::WriterSchema>; 2],
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
        let Some(schema) = schemas.into_iter().find(|s| s.event.id == event.schema_id) else {
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
}

impl Subscription {
    async fn run(
        mut self,
        mut inbound: Streaming<FetchRequest>,
        tx: mpsc::Sender<Result<FetchResponse, Status>>,
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
                            event: Some(ProducerEvent {
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
                        let response = FetchResponse {
                            events,
                            latest_replay_id: latest,
                            rpc_id: self.rpc_id.clone(),
                            pending_num_requested: self.pending as i32,
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
                request = inbound.message() => match request {
                    Ok(Some(request)) => {
                        self.pending += i64::from(request.num_requested.clamp(0, MAX_BATCH as i32));
                        self.service.stats.max_pending.fetch_max(self.pending, Ordering::Relaxed);
                    }
                    _ => return,
                },
                changed = head.changed() => if changed.is_err() { return },
                _ = keepalive.tick() => {
                    let response = FetchResponse {
                        events: Vec::new(),
                        latest_replay_id: replay_id(self.cursor.saturating_sub(1)),
                        rpc_id: self.rpc_id.clone(),
                        pending_num_requested: self.pending as i32,
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
