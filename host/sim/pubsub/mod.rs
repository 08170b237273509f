//! The simulated Pub/Sub API: the real `eventbus.v1.PubSub` service over gRPC, with
//! Salesforce's flow control (`num_requested` credit, `pending_num_requested`), keepalives,
//! replay presets, error codes in the `error-code` trailer, and injectable faults. Managed
//! subscriptions (ManagedSubscribe) keep their committed replay id here, and admit one
//! active client each, as Salesforce does.

mod stream;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::pubsub::pub_sub_server::PubSub;
use crate::proto::pubsub::{
    FetchRequest, FetchResponse, ManagedFetchRequest, ManagedFetchResponse, PublishRequest,
    PublishResponse, ReplayPreset, SchemaInfo, SchemaRequest, TopicInfo, TopicRequest,
};
use crate::sim::bus::Bus;
use crate::sim::generator::parse_replay_id;
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
    /// GetSchema never answers (a hung call), for the host's deadline on it.
    pub hang_get_schema: bool,
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
    /// Events this org delivered, for `expire_tokens_after`.
    served: AtomicU64,
    tokens_expired: AtomicBool,
    /// By developer name.
    managed: Mutex<HashMap<String, Managed>>,
}

impl PubSubService {
    /// One org's service; `stats` are the simulator's, shared by every org.
    pub fn new(
        bus: Arc<Bus>,
        tokens: Arc<Tokens>,
        org_id: String,
        stats: Arc<SimStats>,
        keepalive: Duration,
        faults: StreamFaults,
        managed: &[(String, String)],
    ) -> Result<Self, Status> {
        let mut service = PubSubService {
            bus,
            stats,
            tokens,
            org_id,
            keepalive,
            faults,
            served: AtomicU64::new(0),
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
        self.stats.served.fetch_add(n, Ordering::Relaxed);
        let total = self.served.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(limit) = self.faults.expire_tokens_after
            && total >= limit
            && !self.tokens_expired.swap(true, Ordering::Relaxed)
        {
            tracing::info!(
                org_id = %self.org_id,
                served = total,
                "Simulator fault: expiring every access token of the org."
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
        if self.faults.hang_get_schema {
            std::future::pending::<()>().await;
        }
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
                .map(|i| {
                    let entity = &self.bus.entities[i as usize];
                    self.bus.current_schema(entity).id.clone()
                })
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

/// Every simulated org's Pub/Sub API behind one endpoint, as `api.pubsub.salesforce.com`
/// serves every org: a call goes to the org whose session it carries (an access token
/// starts with its org's id); that org then checks the token and the `tenantid` header.
#[derive(Clone)]
pub struct Orgs(Arc<HashMap<String, Arc<PubSubService>>>);

impl Orgs {
    pub fn new(services: impl IntoIterator<Item = Arc<PubSubService>>) -> Orgs {
        Orgs(Arc::new(
            services
                .into_iter()
                .map(|s| (s.org_id.clone(), s))
                .collect(),
        ))
    }

    fn org(&self, metadata: &MetadataMap) -> Result<&Arc<PubSubService>, Status> {
        let token = metadata
            .get("accesstoken")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        token
            .split_once('!')
            .and_then(|(org_id, _)| self.0.get(org_id))
            .ok_or_else(|| {
                error(
                    tonic::Code::Unauthenticated,
                    codes::AUTH,
                    "Authentication error: the access token is invalid or expired.",
                )
            })
    }
}

#[tonic::async_trait]
impl PubSub for Orgs {
    type SubscribeStream = BoxStream<FetchResponse>;
    type PublishStreamStream = BoxStream<PublishResponse>;
    type ManagedSubscribeStream = BoxStream<ManagedFetchResponse>;

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.org(request.metadata())?.subscribe(request).await
    }

    async fn get_schema(
        &self,
        request: Request<SchemaRequest>,
    ) -> Result<Response<SchemaInfo>, Status> {
        self.org(request.metadata())?.get_schema(request).await
    }

    async fn get_topic(
        &self,
        request: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        self.org(request.metadata())?.get_topic(request).await
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.org(request.metadata())?.publish(request).await
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.org(request.metadata())?.publish_stream(request).await
    }

    async fn managed_subscribe(
        &self,
        request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        self.org(request.metadata())?
            .managed_subscribe(request)
            .await
    }
}
