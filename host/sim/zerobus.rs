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
use crate::sim::databricks::Workspace;
use prost_types::DescriptorProto;

/// Faults the server applies.
#[derive(Clone, Debug, Default)]
pub struct ZerobusFaults {
    /// End the ingest stream with UNAVAILABLE once this many records arrived in total (once).
    pub close_after: Option<u64>,
    /// Wait this long before each acknowledgement.
    pub ack_delay: Duration,
    /// Refuse (INVALID_ARGUMENT, which the SDK does not retry) any batch holding a row
    /// with this replay id (of this org, if `reject_org_id` is set), while `rejecting` is
    /// on.
    pub reject_replay_id: Option<String>,
    pub reject_org_id: Option<String>,
    /// Refuse (UNAUTHENTICATED) a stream without `authorization: Bearer <this>`.
    pub require_token: Option<String>,
}

/// What the server received: per table, `(event_id, replay_id, org_id)` of every row, in
/// order.
#[derive(Default)]
pub struct Received {
    pub tables: Mutex<HashMap<String, Vec<(String, String, String)>>>,
    /// Rows of typed streams, decoded with the stream's descriptor: field name → value
    /// (nulls absent), per table; kept by a server started with a workspace.
    pub typed_rows: Mutex<HashMap<String, Vec<serde_json::Map<String, serde_json::Value>>>>,
    /// Streams refused because their descriptor has a field that is not a column.
    pub refused: AtomicU64,
    /// Whether `reject_replay_id` is enforced; tests turn it off to let a retry through.
    pub rejecting: AtomicBool,
    pub records: AtomicU64,
    pub streams: AtomicU64,
    /// Ingest streams open now (created and not yet ended by either side).
    pub open_streams: std::sync::atomic::AtomicI64,
    /// Ingest calls accepted, and the bytes of records of the largest.
    pub calls: AtomicU64,
    pub largest_call: AtomicU64,
}

/// What Zerobus takes in one ingest call, at most.
const MAX_CALL_BYTES: usize = 10 << 20;

struct Inner {
    received: Arc<Received>,
    faults: ZerobusFaults,
    closed_once: AtomicBool,
    /// The workspace whose tables' columns a typed stream's descriptor must match.
    workspace: Option<Arc<Workspace>>,
}

/// The answers of one ingest stream.
type Replies = mpsc::Sender<Result<EphemeralStreamResponse, Status>>;

impl Inner {
    /// Refuses a stream without the required bearer token.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.faults.require_token else {
            return Ok(());
        };
        let sent = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {token}").as_str()) {
            return Err(Status::unauthenticated("a valid bearer token is required"));
        }
        Ok(())
    }

    /// One stream: its creation, then every batch acknowledged in turn. `Ok` when the
    /// client went away; an error status ends the stream.
    async fn serve_stream(
        &self,
        inbound: &mut Streaming<EphemeralStreamRequest>,
        tx: &Replies,
    ) -> Result<(), Status> {
        let (table, descriptor) = match inbound
            .message()
            .await
            .ok()
            .flatten()
            .and_then(|r| r.payload)
        {
            Some(ephemeral_stream_request::Payload::CreateStream(create)) => {
                let descriptor = create
                    .descriptor_proto
                    .as_deref()
                    .and_then(|d| DescriptorProto::decode(d).ok())
                    .filter(|d| d.name() == "TypedRow");
                (create.table_name.unwrap_or_default(), descriptor)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be CreateIngestStreamRequest",
                ));
            }
        };
        if let Some(descriptor) = &descriptor {
            self.check_columns(&table, descriptor)?;
        }
        let stream_id = self.received.streams.fetch_add(1, Ordering::Relaxed) + 1;
        let created =
            ephemeral_stream_response::Payload::CreateStreamResponse(CreateIngestStreamResponse {
                stream_id: Some(format!("sim-{stream_id}")),
            });
        if !reply(tx, created).await {
            return Ok(());
        }
        while let Ok(Some(request)) = inbound.message().await {
            let Some((offset, records)) = records_of(request) else {
                continue;
            };
            self.accept(&table, &records, descriptor.as_ref())?;
            if !self.faults.ack_delay.is_zero() {
                tokio::time::sleep(self.faults.ack_delay).await;
            }
            let ack =
                ephemeral_stream_response::Payload::IngestRecordResponse(IngestRecordResponse {
                    durability_ack_up_to_offset: Some(offset),
                });
            if !reply(tx, ack).await {
                return Ok(());
            }
        }
        Ok(())
    }

    /// As Zerobus does, refuses a stream whose descriptor names a field the table does not
    /// have as a column (with a workspace to ask).
    fn check_columns(&self, table: &str, descriptor: &DescriptorProto) -> Result<(), Status> {
        let Some(workspace) = &self.workspace else {
            return Ok(());
        };
        let columns = workspace.columns.lock().unwrap_or_else(|e| e.into_inner());
        let Some(columns) = columns.get(table) else {
            self.received.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Status::not_found(format!("table {table} does not exist")));
        };
        for field in &descriptor.field {
            if !columns
                .iter()
                .any(|(c, _)| c.eq_ignore_ascii_case(field.name()))
            {
                self.received.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Status::invalid_argument(format!(
                    "descriptor field {} is not a column of {table}",
                    field.name()
                )));
            }
        }
        Ok(())
    }

    /// Keeps one batch's rows, or refuses it (a fault) without keeping any of them.
    fn accept(
        &self,
        table: &str,
        records: &[Vec<u8>],
        descriptor: Option<&DescriptorProto>,
    ) -> Result<(), Status> {
        let bytes: usize = records.iter().map(Vec::len).sum();
        if bytes > MAX_CALL_BYTES {
            return Err(Status::invalid_argument(format!(
                "payload too large: {bytes} bytes in one call, over {MAX_CALL_BYTES}"
            )));
        }
        self.received.calls.fetch_add(1, Ordering::Relaxed);
        self.received
            .largest_call
            .fetch_max(bytes as u64, Ordering::Relaxed);
        let count = records.len() as u64;
        let total = self.received.records.fetch_add(count, Ordering::Relaxed) + count;
        if let Some(limit) = self.faults.close_after
            && total >= limit
            && !self.closed_once.swap(true, Ordering::Relaxed)
        {
            // The batch is not acknowledged: the client must resend it.
            self.received.records.fetch_sub(count, Ordering::Relaxed);
            return Err(Status::unavailable(
                "simulated Zerobus fault: stream closed",
            ));
        }
        if let Some(descriptor) = descriptor {
            let rows = records
                .iter()
                .map(|r| decode_dynamic(descriptor, r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    self.received.records.fetch_sub(count, Ordering::Relaxed);
                    Status::invalid_argument(format!("a record does not decode: {e}"))
                })?;
            let text = |row: &serde_json::Map<String, serde_json::Value>, name: &str| {
                row.get(name)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let ids = rows
                .iter()
                .map(|r| (text(r, "event_id"), text(r, "replay_id"), text(r, "org_id")));
            keep(&self.received.tables, table, ids);
            // Whole rows are kept for tests (a server with a workspace); the `sim`
            // command's server would grow by kilobytes per row.
            if self.workspace.is_some() {
                keep(&self.received.typed_rows, table, rows);
            }
            return Ok(());
        }
        let decoded: Vec<(String, String, String)> = records
            .iter()
            .map(|record| match CdcEventRow::decode(record.as_slice()) {
                Ok(row) => (
                    row.event_id.unwrap_or_default(),
                    row.replay_id.unwrap_or_default(),
                    row.org_id.unwrap_or_default(),
                ),
                Err(_) => Default::default(),
            })
            .collect();
        if let Some(reject) = &self.faults.reject_replay_id
            && self.received.rejecting.load(Ordering::Relaxed)
            && decoded.iter().any(|(_, replay, org)| {
                replay == reject && self.faults.reject_org_id.as_ref().is_none_or(|o| o == org)
            })
        {
            self.received.records.fetch_sub(count, Ordering::Relaxed);
            return Err(Status::invalid_argument(format!(
                "simulated Zerobus fault: record {reject} rejected"
            )));
        }
        keep(&self.received.tables, table, decoded);
        Ok(())
    }
}

/// Appends what arrived for `table`.
fn keep<T>(
    by_table: &Mutex<HashMap<String, Vec<T>>>,
    table: &str,
    items: impl IntoIterator<Item = T>,
) {
    by_table
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(table.to_string())
        .or_default()
        .extend(items);
}

/// A record decoded with its stream's descriptor, as a server that knows no generated
/// type must: field name → value; repeated fields as arrays; bytes as base64.
fn decode_dynamic(
    descriptor: &DescriptorProto,
    mut record: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    use prost_types::field_descriptor_proto::{Label, Type};
    use serde_json::Value;
    let mut row = serde_json::Map::new();
    while !record.is_empty() {
        let (tag, wire) = decode_key(&mut record).map_err(|e| e.to_string())?;
        let field = descriptor.field.iter().find(|f| f.number() == tag as i32);
        let value = match wire {
            WireType::Varint => {
                let v = decode_varint(&mut record).map_err(|e| e.to_string())?;
                match field.map(|f| f.r#type()) {
                    Some(Type::Bool) => Value::Bool(v != 0),
                    Some(Type::Int32) => Value::from(v as i32),
                    _ => Value::from(v as i64),
                }
            }
            WireType::SixtyFourBit => {
                let (bytes, rest) = record
                    .split_at_checked(8)
                    .ok_or_else(|| "a 64-bit field ends early".to_string())?;
                record = rest;
                Value::from(f64::from_le_bytes(bytes.try_into().expect("8 bytes")))
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut record).map_err(|e| e.to_string())? as usize;
                let (bytes, rest) = record
                    .split_at_checked(len)
                    .ok_or_else(|| "a field ends early".to_string())?;
                record = rest;
                match field.map(|f| f.r#type()) {
                    Some(Type::String) => Value::String(
                        String::from_utf8(bytes.to_vec())
                            .map_err(|_| "a string is not UTF-8".to_string())?,
                    ),
                    _ => {
                        use base64::Engine;
                        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                    }
                }
            }
            other => {
                return Err(format!("unexpected wire type {other:?}"));
            }
        };
        let Some(field) = field else {
            return Err(format!("field {tag} is not in the descriptor"));
        };
        if field.label() == Label::Repeated {
            let list = row
                .entry(field.name().to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = list {
                items.push(value);
            }
        } else {
            row.insert(field.name().to_string(), value);
        }
    }
    Ok(row)
}

/// Sends one answer; false when the client went away.
async fn reply(tx: &Replies, payload: ephemeral_stream_response::Payload) -> bool {
    let response = EphemeralStreamResponse {
        payload: Some(payload),
    };
    tx.send(Ok(response)).await.is_ok()
}

/// The offset and the records of one ingest request (single record or batch).
fn records_of(request: EphemeralStreamRequest) -> Option<(i64, Vec<Vec<u8>>)> {
    match request.payload? {
        ephemeral_stream_request::Payload::IngestRecord(r) => {
            let records = match r.record {
                Some(ingest_record_request::Record::ProtoEncodedRecord(bytes)) => vec![bytes],
                _ => Vec::new(),
            };
            Some((r.offset_id.unwrap_or(0), records))
        }
        ephemeral_stream_request::Payload::IngestRecordBatch(b) => {
            let records = match b.batch {
                Some(ingest_record_batch_request::Batch::ProtoEncodedBatch(batch)) => batch.records,
                _ => Vec::new(),
            };
            Some((b.offset_id.unwrap_or(0), records))
        }
        _ => None,
    }
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
        self.0.authorize(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        // Answer only in the task: the client may wait for the response to start before it
        // sends CreateIngestStreamRequest.
        tokio::spawn(async move {
            let open = &service.0.received.open_streams;
            open.fetch_add(1, Ordering::Relaxed);
            if let Err(status) = service.0.serve_stream(&mut inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
            open.fetch_sub(1, Ordering::Relaxed);
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
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), faults, None).await
    }

    /// A server that checks typed streams' descriptors against `workspace`'s tables.
    pub async fn start_with_workspace(
        faults: ZerobusFaults,
        workspace: Arc<Workspace>,
    ) -> std::io::Result<ZerobusServerHandle> {
        Self::start_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            faults,
            Some(workspace),
        )
        .await
    }

    pub async fn start_on(
        addr: SocketAddr,
        faults: ZerobusFaults,
        workspace: Option<Arc<Workspace>>,
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
            workspace,
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

    /// `(event_id, replay_id)` of every row of `table`, in order.
    pub fn rows(&self, table: &str) -> Vec<(String, String)> {
        self.org_rows(table)
            .into_iter()
            .map(|(event, replay, _)| (event, replay))
            .collect()
    }

    /// `(event_id, replay_id, org_id)` of every row of `table`, in order.
    pub fn org_rows(&self, table: &str) -> Vec<(String, String, String)> {
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
