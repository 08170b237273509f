//! One subscription stream of the simulated service: credit in, batches and keepalives
//! out, commits to a managed subscription, faults; and publishing.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;
use crate::proto::pubsub::{
    CommitReplayRequest, CommitReplayResponse, ConsumerEvent, ProducerEvent, PublishResult,
};
use crate::salesforce::schema::{EventMeta, decode_event};
use crate::sim::generator::{Generated, replay_id};

/// What a client sends on a subscription stream, whichever RPC it came by.
pub(super) struct Ask {
    num_requested: i32,
    commit: Option<CommitReplayRequest>,
}

/// What a subscription stream sends back, whichever RPC.
pub(super) struct Reply {
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
    pub(super) fn start<Req, Resp>(
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

    pub(super) fn publish_batch(&self, request: PublishRequest) -> Result<PublishResponse, Status> {
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

/// What the stream does after a delivery attempt.
enum Next {
    /// Events were read: try again before waiting.
    Deliver,
    /// Nothing to deliver: wait for credit, new events or the keepalive.
    Wait,
    /// The stream is over.
    Stop,
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
            match self.deliver(&tx).await {
                Next::Deliver => {
                    keepalive.reset();
                    continue;
                }
                Next::Wait => {}
                Next::Stop => return,
            }
            let alive = tokio::select! {
                request = inbound.next() => match request {
                    Some(Ok(request)) => self.on_request(request, &tx).await,
                    _ => false,
                },
                changed = head.changed() => changed.is_ok(),
                _ = keepalive.tick() => {
                    let latest = replay_id(self.cursor.saturating_sub(1));
                    self.reply(&tx, Vec::new(), latest, None).await
                }
                _ = tx.closed() => false,
            };
            if !alive {
                return;
            }
        }
    }

    /// Sends what the credit allows of the events after the cursor (up to the
    /// `end_stream_after` fault, which then ends the stream).
    async fn deliver(&mut self, tx: &mpsc::Sender<Result<Reply, Status>>) -> Next {
        if self.pending <= 0 {
            return Next::Wait;
        }
        let want = (self.pending as usize).min(MAX_BATCH);
        let (events, next) = self.service.bus.read(self.cursor, self.entity, want);
        self.cursor = next;
        if events.is_empty() {
            return Next::Wait;
        }
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
        if let Some(last) = events.last() {
            let sent = events.len();
            let latest = last.replay_id.clone();
            self.pending -= sent as i64;
            self.delivered += sent as u64;
            if !self.reply(tx, events, latest, None).await {
                return Next::Stop;
            }
            self.service.note_served(sent as u64);
        }
        if allowed < n {
            let _ = tx
                .send(Err(error(
                    tonic::Code::Unavailable,
                    codes::UNAVAILABLE,
                    "Simulator fault: stream ended.",
                )))
                .await;
            return Next::Stop;
        }
        Next::Deliver
    }

    /// Adds the request's credit and answers its commit (managed subscriptions).
    async fn on_request(&mut self, request: Ask, tx: &mpsc::Sender<Result<Reply, Status>>) -> bool {
        self.pending += i64::from(request.num_requested.clamp(0, MAX_BATCH as i32));
        self.service
            .stats
            .max_pending
            .fetch_max(self.pending, Ordering::Relaxed);
        match (request.commit, &self.active) {
            (Some(commit), Some(active)) => {
                let commit = self.service.commit(&active.name, commit);
                self.reply(tx, Vec::new(), Default::default(), Some(commit))
                    .await
            }
            _ => true,
        }
    }

    /// One response on the stream; false when the client went away.
    async fn reply(
        &self,
        tx: &mpsc::Sender<Result<Reply, Status>>,
        events: Vec<ConsumerEvent>,
        latest_replay_id: bytes::Bytes,
        commit: Option<CommitReplayResponse>,
    ) -> bool {
        let response = Reply {
            events,
            latest_replay_id,
            rpc_id: self.rpc_id.clone(),
            pending_num_requested: self.pending as i32,
            commit,
        };
        tx.send(Ok(response)).await.is_ok()
    }
}
