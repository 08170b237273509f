//! A Zerobus server on loopback speaking the real Zerobus gRPC protocol (the SDK's own
//! `zerobus_service.proto`): ephemeral ingest streams, cumulative durability acks, and
//! faults on demand. It decodes the rows it receives and keeps their event and replay ids
//! per table, so tests can check what arrived.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use databricks_zerobus_ingest_sdk::databricks::zerobus::zerobus_server::{Zerobus, ZerobusServer};
use databricks_zerobus_ingest_sdk::databricks::zerobus::{
    CreateIngestStreamResponse, EphemeralStreamRequest, EphemeralStreamResponse,
    IngestRecordResponse, PersistentStreamRequest, PersistentStreamResponse, RetireStreamRequest,
    RetireStreamResponse, ephemeral_stream_request, ephemeral_stream_response,
    ingest_record_batch_request, ingest_record_request,
};
use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::row::CdcEventRow;

/// Faults the server applies.
#[derive(Clone, Debug, Default)]
pub struct ZerobusFaults {
    /// End the ingest stream with UNAVAILABLE once this many records arrived in total (once).
    pub close_after: Option<u64>,
    /// Wait this long before each acknowledgement.
    pub ack_delay: Duration,
    /// Refuse (INVALID_ARGUMENT, which the SDK does not retry) any batch holding a row
    /// with this replay id, while `rejecting` is on.
    pub reject_replay_id: Option<String>,
    /// Refuse (UNAUTHENTICATED) a stream without `authorization: Bearer <this>`.
    pub require_token: Option<String>,
}

/// What the server received: per table, `(event_id, replay_id)` of every row, in order.
#[derive(Default)]
pub struct Received {
    pub tables: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Whether `reject_replay_id` is enforced; tests turn it off to let a retry through.
    pub rejecting: AtomicBool,
    pub records: AtomicU64,
    pub streams: AtomicU64,
}

struct Inner {
    received: Arc<Received>,
    faults: ZerobusFaults,
    closed_once: AtomicBool,
}

#[derive(Clone)]
struct Service(Arc<Inner>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Zerobus for Service {
    type EphemeralStreamStream = BoxStream<EphemeralStreamResponse>;
    type PersistentStreamStream = BoxStream<PersistentStreamResponse>;

    async fn ephemeral_stream(
        &self,
        request: Request<Streaming<EphemeralStreamRequest>>,
    ) -> Result<Response<Self::EphemeralStreamStream>, Status> {
        if let Some(token) = &self.0.faults.require_token {
            let sent = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if sent != Some(format!("Bearer {token}").as_str()) {
                return Err(Status::unauthenticated("a valid bearer token is required"));
            }
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        // Answer only in the task: the client may wait for the response to start before it
        // sends CreateIngestStreamRequest.
        tokio::spawn(async move {
            let table = match inbound
                .message()
                .await
                .ok()
                .flatten()
                .and_then(|r| r.payload)
            {
                Some(ephemeral_stream_request::Payload::CreateStream(create)) => {
                    create.table_name.unwrap_or_default()
                }
                _ => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "the first message must be CreateIngestStreamRequest",
                        )))
                        .await;
                    return;
                }
            };
            let stream_id = service.0.received.streams.fetch_add(1, Ordering::Relaxed) + 1;
            let created = EphemeralStreamResponse {
                payload: Some(ephemeral_stream_response::Payload::CreateStreamResponse(
                    CreateIngestStreamResponse {
                        stream_id: Some(format!("sim-{stream_id}")),
                    },
                )),
            };
            if tx.send(Ok(created)).await.is_err() {
                return;
            }
            while let Ok(Some(request)) = inbound.message().await {
                let (offset, records) = match request.payload {
                    Some(ephemeral_stream_request::Payload::IngestRecord(r)) => match r.record {
                        Some(ingest_record_request::Record::ProtoEncodedRecord(bytes)) => {
                            (r.offset_id.unwrap_or(0), vec![bytes])
                        }
                        _ => (r.offset_id.unwrap_or(0), Vec::new()),
                    },
                    Some(ephemeral_stream_request::Payload::IngestRecordBatch(b)) => {
                        match b.batch {
                            Some(ingest_record_batch_request::Batch::ProtoEncodedBatch(batch)) => {
                                (b.offset_id.unwrap_or(0), batch.records)
                            }
                            _ => (b.offset_id.unwrap_or(0), Vec::new()),
                        }
                    }
                    _ => continue,
                };
                let total = service
                    .0
                    .received
                    .records
                    .fetch_add(records.len() as u64, Ordering::Relaxed)
                    + records.len() as u64;
                if let Some(limit) = service.0.faults.close_after
                    && total >= limit
                    && !service.0.closed_once.swap(true, Ordering::Relaxed)
                {
                    // The batch is not acknowledged: the client must resend it.
                    service
                        .0
                        .received
                        .records
                        .fetch_sub(records.len() as u64, Ordering::Relaxed);
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "simulated Zerobus fault: stream closed",
                        )))
                        .await;
                    return;
                }
                let decoded: Vec<(String, String)> = records
                    .iter()
                    .map(|record| match CdcEventRow::decode(record.as_slice()) {
                        Ok(row) => (
                            row.event_id.unwrap_or_default(),
                            row.replay_id.unwrap_or_default(),
                        ),
                        Err(_) => (String::new(), String::new()),
                    })
                    .collect();
                if let Some(reject) = &service.0.faults.reject_replay_id
                    && service.0.received.rejecting.load(Ordering::Relaxed)
                    && decoded.iter().any(|(_, replay)| replay == reject)
                {
                    service
                        .0
                        .received
                        .records
                        .fetch_sub(records.len() as u64, Ordering::Relaxed);
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "simulated Zerobus fault: record {reject} rejected"
                        ))))
                        .await;
                    return;
                }
                service
                    .0
                    .received
                    .tables
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(table.clone())
                    .or_default()
                    .extend(decoded);
                if !service.0.faults.ack_delay.is_zero() {
                    tokio::time::sleep(service.0.faults.ack_delay).await;
                }
                let ack = EphemeralStreamResponse {
                    payload: Some(ephemeral_stream_response::Payload::IngestRecordResponse(
                        IngestRecordResponse {
                            durability_ack_up_to_offset: Some(offset),
                        },
                    )),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn persistent_stream(
        &self,
        _request: Request<Streaming<PersistentStreamRequest>>,
    ) -> Result<Response<Self::PersistentStreamStream>, Status> {
        Err(Status::unimplemented(
            "persistent streams are not simulated",
        ))
    }

    async fn retire_stream(
        &self,
        _request: Request<RetireStreamRequest>,
    ) -> Result<Response<RetireStreamResponse>, Status> {
        Err(Status::unimplemented(
            "persistent streams are not simulated",
        ))
    }
}

/// A running Zerobus test server.
pub struct ZerobusServerHandle {
    pub addr: SocketAddr,
    pub received: Arc<Received>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ZerobusServerHandle {
    pub async fn start(faults: ZerobusFaults) -> std::io::Result<ZerobusServerHandle> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), faults).await
    }

    pub async fn start_on(
        addr: SocketAddr,
        faults: ZerobusFaults,
    ) -> std::io::Result<ZerobusServerHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Received {
            rejecting: AtomicBool::new(true),
            ..Received::default()
        });
        let service = Service(Arc::new(Inner {
            received: received.clone(),
            faults,
            closed_once: AtomicBool::new(false),
        }));
        let cancel = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(ZerobusServer::new(service).max_decoding_message_size(64 << 20))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                cancel.clone().cancelled_owned(),
            );
        let task = tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "Zerobus test server stopped.");
            }
        });
        Ok(ZerobusServerHandle {
            addr,
            received,
            cancel,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn rows(&self, table: &str) -> Vec<(String, String)> {
        self.received
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .cloned()
            .unwrap_or_default()
    }

    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}
