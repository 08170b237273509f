//! Databricks tables through Zerobus, with the official `databricks-zerobus-ingest-sdk`:
//! one SDK per process ([`ZerobusPool`]) and, per table, streams shared by the
//! subscriptions writing it (one per [`SUBSCRIPTIONS_PER_STREAM`]; each row's org and
//! channel columns say whose it is); rows as protobuf (`proto/sfzb_row.proto`), and `flush`
//! waiting for the server's durability acknowledgement of this subscription's last record. The SDK recovers failed streams and resends
//! unacknowledged records itself; the checkpoint moves only after `flush` returns, so
//! delivery is at least once. After a crash, what comes again is every row acknowledged since
//! the last checkpoint commit plus what was in flight: at most a flush interval's worth of
//! events (flush interval × rate) plus `max-in-flight` (each row's `event_id` identifies
//! them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use databricks_zerobus_ingest_sdk::{OffsetId, ZerobusSdk, ZerobusStream};
use prost::Message;
use secrecy::{ExposeSecret, SecretString};

use crate::sink::{DeadLetter, RouteKind, Row, SinkError};

/// How to reach Zerobus.
#[derive(Clone, Debug, Default)]
pub struct ZerobusSettings {
    /// `https://<workspace-id>.zerobus.<region>.cloud.databricks.com`, or `http://host:port`
    /// for a local test server (plaintext; authenticated when credentials are set).
    pub endpoint: String,
    /// The workspace URL, for the OAuth token (`{workspace}/oidc/v1/token`).
    pub workspace_url: Option<String>,
    /// OAuth M2M: a service principal's client id and secret.
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    /// Most record batches sent and not yet acknowledged, per stream.
    pub max_inflight: usize,
}

impl ZerobusSettings {
    fn has_credentials(&self) -> bool {
        self.client_id.is_some() && self.client_secret.is_some()
    }
}

fn error(table: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Zerobus {
        table: table.to_string(),
        detail: e.to_string(),
    }
}

fn descriptor(name: &str) -> prost_types::DescriptorProto {
    let set = prost_types::FileDescriptorSet::decode(crate::proto::row::DESCRIPTOR_SET)
        .expect("build.rs writes a valid descriptor set");
    set.file
        .iter()
        .flat_map(|f| f.message_type.iter())
        .find(|m| m.name() == name)
        .cloned()
        .expect("proto/sfzb_row.proto defines the row messages")
}

/// Subscriptions sharing one stream of a table: enough streams to spread the load,
/// few enough that 10,000 subscriptions need 40, not 10,000.
pub const SUBSCRIPTIONS_PER_STREAM: usize = 250;

/// A stream slot: opened on first use, replaced once it failed for good.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<ZerobusStream>>>>;

/// The process's Zerobus SDK and its streams, by table and slot.
pub struct ZerobusPool {
    sdk: Result<ZerobusSdk, String>,
    settings: ZerobusSettings,
    slots: Mutex<HashMap<(String, usize), Slot>>,
    /// Subscriptions that wrote each table so far, to give the next one its slot.
    writers: Mutex<HashMap<String, usize>>,
}

impl ZerobusPool {
    /// The SDK for `settings`; an incomplete setting is reported when a table is opened.
    pub fn new(settings: &ZerobusSettings) -> ZerobusPool {
        ZerobusPool {
            sdk: sdk(settings),
            settings: settings.clone(),
            slots: Mutex::default(),
            writers: Mutex::default(),
        }
    }

    /// The slot of the next subscription to write `table`.
    fn assign(&self, table: &str) -> usize {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        let n = writers.entry(table.to_string()).or_default();
        *n += 1;
        (*n - 1) / SUBSCRIPTIONS_PER_STREAM
    }

    /// The open stream of `(table, slot)`, opening it (again, after a failure) if needed.
    async fn stream(
        &self,
        table: &str,
        slot: usize,
        message: &str,
    ) -> Result<Arc<ZerobusStream>, SinkError> {
        let cell = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((table.to_string(), slot))
            .or_default()
            .clone();
        let mut open = cell.lock().await;
        if let Some(stream) = open.as_ref().filter(|s| !s.is_closed()) {
            return Ok(stream.clone());
        }
        let sdk = self.sdk.as_ref().map_err(|e| error(table, e))?;
        let mut builder = sdk
            .stream_builder()
            .table(table)
            .compiled_proto(descriptor(message))
            .max_inflight_requests(self.settings.max_inflight.max(1));
        builder = match (&self.settings.client_id, &self.settings.client_secret) {
            (Some(id), Some(secret)) => {
                builder.oauth(id.clone(), secret.expose_secret().to_string())
            }
            _ => builder.no_auth(),
        };
        let stream = Arc::new(builder.build().await.map_err(|e| error(table, e))?);
        tracing::info!(table, slot, "Zerobus stream opened.");
        *open = Some(stream.clone());
        Ok(stream)
    }
}

/// The SDK for `settings`, or why there is none.
fn sdk(settings: &ZerobusSettings) -> Result<ZerobusSdk, String> {
    if settings.endpoint.is_empty() {
        return Err(
            "no Zerobus endpoint: set --zerobus-endpoint or DATABRICKS_ZEROBUS_ENDPOINT".into(),
        );
    }
    let mut builder = ZerobusSdk::builder().endpoint(settings.endpoint.clone());
    let plaintext = settings.endpoint.starts_with("http://");
    if plaintext {
        builder = builder.no_tls();
    }
    // Credentials given are always used, plaintext or not: a local test server may
    // check them too. Only a plaintext endpoint may go without.
    if settings.has_credentials() {
        let workspace = settings.workspace_url.clone().ok_or(
            "no Databricks workspace URL for the OAuth token: set --databricks-workspace-url or DATABRICKS_HOST",
        )?;
        builder = builder.unity_catalog_url(workspace);
    } else if !plaintext {
        return Err(
            "no service principal: set DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET".into(),
        );
    }
    builder.build().map_err(|e| e.to_string())
}

/// One subscription's writer on the shared streams.
pub struct ZerobusSink {
    pool: Arc<ZerobusPool>,
    table: String,
    /// Per table written: its slot's stream and the offset of this writer's last record.
    streams: HashMap<String, (Arc<ZerobusStream>, Option<OffsetId>)>,
}

impl ZerobusSink {
    pub fn open(table: &str, pool: &Arc<ZerobusPool>) -> Result<ZerobusSink, SinkError> {
        if let Err(e) = &pool.sdk {
            return Err(error(table, e));
        }
        Ok(ZerobusSink {
            pool: pool.clone(),
            table: table.to_string(),
            streams: HashMap::new(),
        })
    }
    /// A route to the main table, or to its dead-letter table.
    pub fn route_kind(&self, table: &str) -> RouteKind {
        let table = self.qualify(table);
        if table == self.table {
            RouteKind::Own
        } else if table == format!("{}_dead_letter", self.table) {
            RouteKind::DeadLetter
        } else {
            RouteKind::Other
        }
    }

    /// An unqualified routed table lives in the main table's catalog and schema.
    fn qualify(&self, table: &str) -> String {
        if table.contains('.') {
            return table.to_string();
        }
        match self.table.rsplit_once('.') {
            Some((prefix, _)) => format!("{prefix}.{table}"),
            None => table.to_string(),
        }
    }

    async fn send(
        &mut self,
        table: String,
        message: &str,
        records: Vec<Vec<u8>>,
    ) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        if !self.streams.contains_key(&table) {
            let slot = self.pool.assign(&table);
            let stream = self.pool.stream(&table, slot, message).await?;
            self.streams.insert(table.clone(), (stream, None));
        }
        let (stream, last) = self.streams.get_mut(&table).expect("inserted above");
        match stream.ingest_records_offset(records).await {
            Ok(offset) => {
                *last = offset.or(*last);
                Ok(())
            }
            Err(e) => {
                // The stream failed for good: the next write opens its slot again.
                self.streams.remove(&table);
                Err(error(&table, e))
            }
        }
    }

    pub async fn write(&mut self, table: Option<&str>, rows: &[Row]) -> Result<(), SinkError> {
        let table = table.map_or_else(|| self.table.clone(), |t| self.qualify(t));
        let records = rows
            .iter()
            .map(|r| {
                let mut buf = Vec::new();
                r.encode_proto(&mut buf);
                buf
            })
            .collect();
        self.send(table, "CdcEventRow", records).await
    }

    pub async fn write_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let table = format!("{}_dead_letter", self.table);
        let records = letters
            .iter()
            .map(|l| {
                let mut buf = Vec::new();
                crate::sink::columns::encode_proto(l, &mut buf);
                buf
            })
            .collect();
        self.send(table, "DeadLetterRow", records).await
    }

    /// Waits until Zerobus acknowledged every record this writer sent, on every table.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        let mut failed = None;
        for (table, (stream, last)) in &self.streams {
            if let Some(offset) = *last
                && let Err(e) = stream.wait_for_offset(offset).await
            {
                failed = Some(error(table, e));
                break;
            }
        }
        match failed {
            Some(e) => {
                // Its records are resent from the checkpoint, on streams opened again.
                self.streams.clear();
                Err(e)
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_hold_the_sixteen_columns() {
        let row = descriptor("CdcEventRow");
        assert_eq!(row.field.len(), 16);
        assert_eq!(row.field[12].name(), "payload_binary");
        assert_eq!(descriptor("DeadLetterRow").field.len(), 9);
    }
}
