//! One stream's lifetime: open it (Subscribe from the resume position, or ManagedSubscribe),
//! keep credit outstanding, receive, fetch unknown schemas, hand events downstream, and
//! end on cancellation, silence (the idle watchdog) or failure.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::connection::Client;
use super::credit::acquire_up_to;
use super::managed::durable;
use super::{Credit, MAX_BATCH, RawEvent, SourceMsg, StartPosition, Subscriber};
use crate::event::ReplayId;
use crate::proto::pubsub::{
    CommitReplayResponse, ConsumerEvent, FetchRequest, ManagedFetchRequest, SchemaRequest,
};

/// Why a stream ended.
pub(super) enum StreamEnd {
    Cancelled,
    Idle,
    Failed(Status),
}

/// A stream while it is open.
pub(super) struct Open {
    client: Client,
    pub(super) requests: Requests,
    pub(super) inbound: Inbound,
    /// Durable positions to commit, for a managed subscription.
    pub(super) committed: Option<watch::Receiver<Option<ReplayId>>>,
    org_id: Arc<str>,
}

/// What one response led to.
enum Received {
    Events,
    Nothing,
    End(StreamEnd),
}

/// The request side of a stream, whichever RPC it is. After the first request a Subscribe
/// stream only asks for more events, so its channel carries the count: a tokio channel
/// allocates 32 slots at once, 128 bytes of counts rather than 2.8 KB of requests for
/// every subscription.
pub(super) enum Requests {
    Plain(mpsc::Sender<i32>),
    Managed(mpsc::Sender<ManagedFetchRequest>),
}

impl Requests {
    /// Asks for `n` more events; false if the stream is gone.
    pub(super) async fn more(&self, n: u32) -> bool {
        let n = n as i32;
        match self {
            Requests::Plain(tx) => tx.send(n).await.is_ok(),
            Requests::Managed(tx) => tx
                .send(ManagedFetchRequest {
                    num_requested: n,
                    ..Default::default()
                })
                .await
                .is_ok(),
        }
    }
}

/// A response, whichever RPC it came by.
pub(super) struct Fetched {
    pub(super) events: Vec<ConsumerEvent>,
    pub(super) latest_replay_id: bytes::Bytes,
    pub(super) pending_num_requested: i32,
    pub(super) commit: Option<CommitReplayResponse>,
}

pub(super) type Inbound = std::pin::Pin<Box<dyn Stream<Item = Result<Fetched, Status>> + Send>>;

impl Subscriber {
    /// One Subscribe stream, from the first FetchRequest to its end. Also says whether any
    /// event was delivered, which resets the backoff.
    pub(super) async fn stream_once(&mut self) -> (StreamEnd, bool) {
        let mut held = 0u32;
        let result = self.stream_inner(&mut held).await;
        self.capacity.add_permits(held as usize);
        result
    }

    async fn stream_inner(&mut self, held: &mut u32) -> (StreamEnd, bool) {
        let batch = self.options.batch_size.clamp(1, MAX_BATCH);
        tokio::select! {
            _ = self.cancel.cancelled() => return (StreamEnd::Cancelled, false),
            n = acquire_up_to(&self.capacity, batch) => *held = n,
        }
        let mut open = match Box::pin(self.open_stream(*held)).await {
            Ok(open) => open,
            Err(end) => return (end, false),
        };
        let low_water = batch / 2;
        let mut delivered = false;
        loop {
            let want_more = *held <= low_water;
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    self.stop(&mut open).await;
                    return (StreamEnd::Cancelled, delivered);
                }
                n = acquire_up_to(&self.capacity, batch - *held), if want_more => {
                    *held += n;
                    if !open.requests.more(n).await {
                        return (StreamEnd::Failed(Status::unavailable("request stream closed")), delivered);
                    }
                }
                Some(position) = durable(&mut open.committed) => self.commit(&open.requests, position).await,
                message = tokio::time::timeout(self.options.idle_timeout, open.inbound.next()) => {
                    let response = match message {
                        Err(_) => return (StreamEnd::Idle, delivered),
                        Ok(Some(Err(status))) => return (StreamEnd::Failed(status), delivered),
                        Ok(None) => return (StreamEnd::Failed(Status::unavailable("the server closed the stream")), delivered),
                        Ok(Some(Ok(response))) => response,
                    };
                    // Boxed while it runs: it may fetch a schema or wait for room.
                    match Box::pin(self.receive(response, held, &mut open)).await {
                        Received::Events => delivered = true,
                        Received::Nothing => {}
                        Received::End(end) => return (end, delivered),
                    }
                }
            }
        }
    }

    /// Opens the stream asking for `credit` events, and commits the durable position a
    /// managed subscription may not have yet.
    async fn open_stream(&mut self, credit: u32) -> Result<Open, StreamEnd> {
        let mut client = self.connection.client();
        let opened = tokio::select! {
            _ = self.cancel.cancelled() => return Err(StreamEnd::Cancelled),
            opened = self.open(&mut client, credit) => opened,
        };
        let (requests, inbound) = opened.map_err(StreamEnd::Failed)?;
        if let Some(health) = &self.options.health {
            health.stream_opened();
        }
        let mut committed = self.options.managed.as_ref().map(|m| m.committed.clone());
        if let Some(position) = committed
            .as_mut()
            .and_then(|c| c.borrow_and_update().clone())
        {
            self.commit(&requests, position).await;
        }
        Ok(Open {
            client,
            requests,
            inbound,
            committed,
            org_id: self.connection.org_id().unwrap_or_default().into(),
        })
    }

    /// One response: its events handed downstream with their credit, or a keepalive's
    /// position.
    async fn receive(&mut self, response: Fetched, held: &mut u32, open: &mut Open) -> Received {
        if let Some(commit) = &response.commit {
            super::managed::log_commit(commit);
            if response.events.is_empty() {
                // A reply to a commit, not to a fetch: no credit changes hands.
                return Received::Nothing;
            }
        }
        let received = response.events.len() as u32;
        let pending = u32::try_from(response.pending_num_requested).unwrap_or(0);
        let events: Vec<RawEvent> = response.events.into_iter().map(raw_event).collect();
        let permits = received.min(*held);
        *held -= permits;
        if pending < *held {
            // The server holds fewer requests than we counted: return the difference.
            self.capacity.add_permits((*held - pending) as usize);
            *held = pending;
        }
        if events.is_empty() {
            if response.latest_replay_id.is_empty() {
                return Received::Nothing;
            }
            let latest = ReplayId::new(response.latest_replay_id);
            tracing::debug!(latest = %latest, "Keepalive.");
            self.resume = StartPosition::Custom(latest.clone());
            if !self.deliver(SourceMsg::Keepalive { latest }).await {
                self.stop(open).await;
                return Received::End(StreamEnd::Cancelled);
            }
            return Received::Nothing;
        }
        if let Err(status) = self.ensure_schemas(&mut open.client, &events).await {
            self.capacity.add_permits(permits as usize);
            if self.cancel.is_cancelled() {
                self.stop(open).await;
                return Received::End(StreamEnd::Cancelled);
            }
            return Received::End(StreamEnd::Failed(status));
        }
        let budget = tokio::select! {
            _ = self.cancel.cancelled() => {
                self.capacity.add_permits(permits as usize);
                self.stop(open).await;
                return Received::End(StreamEnd::Cancelled);
            }
            room = self.options.budget.room(received) => room,
        };
        let last = events.last().map(|e| e.replay_id.clone());
        let credit = Credit {
            pool: self.capacity.clone(),
            permits: permits as usize,
            _room: budget,
        };
        let msg = SourceMsg::Events {
            events,
            org_id: open.org_id.clone(),
            credit,
        };
        if !self.deliver(msg).await {
            self.stop(open).await;
            return Received::End(StreamEnd::Cancelled);
        }
        if let Some(last) = last {
            self.resume = StartPosition::Custom(last);
        }
        Received::Events
    }

    /// Opens a Subscribe stream from the resume position, or a ManagedSubscribe stream, asking
    /// for `credit` events.
    async fn open(&self, client: &mut Client, credit: u32) -> Result<(Requests, Inbound), Status> {
        let credit = credit as i32;
        match &self.options.managed {
            None => {
                let (preset, replay_id) = self.resume.preset();
                let (requests, outbound) = opening(
                    FetchRequest {
                        topic_name: self.options.topic.clone(),
                        replay_preset: preset as i32,
                        replay_id,
                        num_requested: credit,
                        auth_refresh: String::new(),
                    },
                    |n| FetchRequest {
                        num_requested: n,
                        ..Default::default()
                    },
                );
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
                let (requests, outbound) = opening(
                    ManagedFetchRequest {
                        developer_name: managed.developer_name.clone(),
                        num_requested: credit,
                        ..Default::default()
                    },
                    |request| request,
                );
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
            sent = self.out.send(Box::new(msg)) => sent.is_ok(),
            _ = self.cancel.cancelled() => false,
        }
    }

    /// Fetches and caches the writer schema of every event whose schema is not cached yet.
    /// A GetSchema call that answers nothing for the idle timeout is silence like any
    /// other (the stream is opened again); a stop cancels it.
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
            let call = client.get_schema(SchemaRequest {
                schema_id: event.schema_id.clone(),
            });
            let deadline = self.options.idle_timeout;
            let info = tokio::select! {
                _ = self.cancel.cancelled() => return Err(Status::cancelled("the subscription is stopping")),
                answer = tokio::time::timeout(deadline, call) => match answer {
                    Ok(answer) => answer?.into_inner(),
                    Err(_) => return Err(Status::deadline_exceeded(format!(
                        "GetSchema {} gave no answer within {} s (idle-timeout-secs)",
                        event.schema_id,
                        deadline.as_secs()
                    ))),
                },
            };
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

/// One without its event still holds a position: it goes on (and is dead-lettered as
/// empty) rather than vanish behind the checkpoint.
fn raw_event(e: ConsumerEvent) -> RawEvent {
    let event = e.event.unwrap_or_default();
    RawEvent {
        replay_id: ReplayId::new(e.replay_id),
        event_id: event.id,
        schema_id: event.schema_id,
        payload: event.payload,
    }
}

/// The request side of a new stream, and what the RPC sends: `first`, then each later
/// request as `next` makes it from what is sent. The RPC's side ends when the sender is
/// dropped.
fn opening<T: Send + 'static, C: Send + 'static>(
    first: T,
    next: fn(C) -> T,
) -> (mpsc::Sender<C>, impl Stream<Item = T> + Send + 'static) {
    let (requests, outbound) = mpsc::channel(4);
    let outbound = futures::stream::once(std::future::ready(first))
        .chain(tokio_stream::wrappers::ReceiverStream::new(outbound).map(next));
    (requests, outbound)
}
