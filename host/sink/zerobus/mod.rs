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

pub mod typed;

use crate::sink::{DeadLetter, Layout, RouteKind, Row, SinkError};
use crate::sql::SqlSettings;

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

/// A stream slot: opened on first use, replaced once it failed for good or its
/// descriptor is older than a typed table's.
type Slot = Arc<tokio::sync::Mutex<Option<(Arc<ZerobusStream>, u64)>>>;

/// A typed table's shared columns, loaded on first use.
type SharedTyped = Arc<tokio::sync::Mutex<Option<typed::Shared>>>;

/// The process's Zerobus SDK and its streams, by table and slot.
pub struct ZerobusPool {
    sdk: Result<ZerobusSdk, String>,
    settings: ZerobusSettings,
    slots: Mutex<HashMap<(String, usize), Slot>>,
    /// Subscriptions that wrote each table so far, to give the next one its slot.
    writers: Mutex<HashMap<String, usize>>,
    /// The SQL warehouse that creates and widens typed tables.
    sql: Option<SqlSettings>,
    typed: Mutex<HashMap<String, SharedTyped>>,
}

impl ZerobusPool {
    /// The SDK for `settings`; an incomplete setting is reported when a table is opened.
    pub fn new(settings: &ZerobusSettings, sql: Option<&SqlSettings>) -> ZerobusPool {
        ZerobusPool {
            sdk: sdk(settings),
            settings: settings.clone(),
            slots: Mutex::default(),
            writers: Mutex::default(),
            sql: sql.cloned(),
            typed: Mutex::default(),
        }
    }

    fn shared_typed(&self, table: &str) -> SharedTyped {
        self.typed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(table.to_string())
            .or_default()
            .clone()
    }

    /// The slot of the next subscription to write `table`.
    fn assign(&self, table: &str) -> usize {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        let n = writers.entry(table.to_string()).or_default();
        *n += 1;
        (*n - 1) / SUBSCRIPTIONS_PER_STREAM
    }

    /// The open stream of `(table, slot)` with a descriptor of at least `generation`,
    /// opening it (again, after a failure or a widening) if needed.
    async fn stream(
        &self,
        table: &str,
        slot: usize,
        descriptor: prost_types::DescriptorProto,
        generation: u64,
    ) -> Result<Arc<ZerobusStream>, SinkError> {
        let cell = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((table.to_string(), slot))
            .or_default()
            .clone();
        let mut open = cell.lock().await;
        if let Some((stream, _)) = open
            .as_ref()
            .filter(|(s, g)| !s.is_closed() && *g >= generation)
        {
            return Ok(stream.clone());
        }
        let sdk = self.sdk.as_ref().map_err(|e| error(table, e))?;
        let mut builder = sdk
            .stream_builder()
            .table(table)
            .compiled_proto(descriptor)
            .max_inflight_requests(self.settings.max_inflight.max(1));
        builder = match (&self.settings.client_id, &self.settings.client_secret) {
            (Some(id), Some(secret)) => {
                builder.oauth(id.clone(), secret.expose_secret().to_string())
            }
            _ => builder.no_auth(),
        };
        let stream = Arc::new(builder.build().await.map_err(|e| error(table, e))?);
        tracing::info!(table, slot, generation, "Zerobus stream opened.");
        *open = Some((stream.clone(), generation));
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

/// A table this writer sent to: its slot's stream, the stream's descriptor generation and
/// the offset of this writer's last record on it.
struct Written {
    stream: Arc<ZerobusStream>,
    generation: u64,
    last: Option<OffsetId>,
}

/// One subscription's writer on the shared streams.
pub struct ZerobusSink {
    pool: Arc<ZerobusPool>,
    table: String,
    layout: Layout,
    /// A table per object: the configured table is the dead-letter table.
    per_object: bool,
    streams: HashMap<String, Written>,
}

impl ZerobusSink {
    pub fn open(
        table: &str,
        pool: &Arc<ZerobusPool>,
        layout: Layout,
        per_object: bool,
    ) -> Result<ZerobusSink, SinkError> {
        if let Err(e) = &pool.sdk {
            return Err(error(table, e));
        }
        if layout == Layout::Typed && pool.sql.is_none() {
            return Err(error(
                table,
                "typed tables through Zerobus need a SQL warehouse to create and widen them: set sql-warehouse-id (DATABRICKS_WAREHOUSE_ID)",
            ));
        }
        Ok(ZerobusSink {
            pool: pool.clone(),
            table: table.to_string(),
            layout,
            per_object,
            streams: HashMap::new(),
        })
    }

    fn dead_letter_table(&self) -> String {
        match self.per_object {
            true => self.table.clone(),
            false => format!("{}_dead_letter", self.table),
        }
    }
    /// A route to the main table, or to its dead-letter table.
    pub fn route_kind(&self, table: &str) -> RouteKind {
        let table = self.qualify(table);
        if table == self.table {
            RouteKind::Own
        } else if table == self.dead_letter_table() {
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

    /// Sends `records` to `table` on a stream whose descriptor is at least `generation`;
    /// a stream of an older one is left once what this writer sent on it is acknowledged.
    async fn send(
        &mut self,
        table: String,
        descriptor: impl FnOnce() -> prost_types::DescriptorProto,
        generation: u64,
        records: Vec<Vec<u8>>,
    ) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(old) = self
            .streams
            .get(&table)
            .filter(|w| w.generation < generation)
        {
            if let Some(offset) = old.last {
                old.stream
                    .wait_for_offset(offset)
                    .await
                    .map_err(|e| error(&table, e))?;
            }
            self.streams.remove(&table);
        }
        if !self.streams.contains_key(&table) {
            let slot = self.pool.assign(&table);
            let stream = self
                .pool
                .stream(&table, slot, descriptor(), generation)
                .await?;
            let written = Written {
                stream,
                generation,
                last: None,
            };
            self.streams.insert(table.clone(), written);
        }
        let written = self.streams.get_mut(&table).expect("inserted above");
        match written.stream.ingest_records_offset(records).await {
            Ok(offset) => {
                written.last = offset.or(written.last);
                Ok(())
            }
            Err(e) => {
                // The stream failed for good: the next write opens its slot again.
                self.streams.remove(&table);
                Err(error(&table, e))
            }
        }
    }

    /// Writes rows in the sink's layout; typed rows whose fields changed type are
    /// returned, to be dead-lettered.
    pub async fn write(
        &mut self,
        table: Option<&str>,
        rows: &[Row],
    ) -> Result<crate::sink::Misfits, SinkError> {
        let table = table.map_or_else(|| self.table.clone(), |t| self.qualify(t));
        if self.layout == Layout::Typed {
            return self.write_typed(table, rows).await;
        }
        let records = rows
            .iter()
            .map(|r| {
                let mut buf = Vec::new();
                r.encode_proto(&mut buf);
                buf
            })
            .collect();
        self.send(table, || descriptor("CdcEventRow"), 0, records)
            .await?;
        Ok(Vec::new())
    }

    /// Plans the rows against the table's shared columns, widens the table first when
    /// they add some, and sends them encoded with the table's descriptor.
    async fn write_typed(
        &mut self,
        table: String,
        rows: &[Row],
    ) -> Result<crate::sink::Misfits, SinkError> {
        let sql = self.pool.sql.as_ref().expect("checked at open");
        let shared = self.pool.shared_typed(&table);
        let mut guard = shared.lock().await;
        if guard.is_none() {
            *guard = Some(
                typed::Shared::load(sql, &table)
                    .await
                    .map_err(|e| error(&table, e))?,
            );
        }
        let state = guard.as_mut().expect("loaded above");
        let mut misfits = Vec::new();
        let mut planned = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            match state.table.plan(&row.event.schema) {
                Ok(plan) => planned.push((plan, row)),
                Err(misfit) => misfits.push((i, misfit)),
            }
        }
        if let Err(e) = state.widen(sql, &table).await {
            // The columns stay planned but the table may lack them: start over from what
            // the workspace has.
            *guard = None;
            return Err(error(&table, e));
        }
        let columns = state.table.columns().len();
        let records = planned
            .iter()
            .map(|(plan, row)| {
                let mut buf = Vec::with_capacity(2048);
                typed::encode(plan, row, columns, &mut buf);
                buf
            })
            .collect();
        let (generation, descriptor) = (state.generation, state.descriptor.clone());
        drop(guard);
        self.send(table, || (*descriptor).clone(), generation, records)
            .await?;
        Ok(misfits)
    }

    pub async fn write_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let table = self.dead_letter_table();
        let records = letters
            .iter()
            .map(|l| {
                let mut buf = Vec::new();
                crate::sink::columns::encode_proto(l, &mut buf);
                buf
            })
            .collect();
        self.send(table, || descriptor("DeadLetterRow"), 0, records)
            .await
    }

    /// Waits until Zerobus acknowledged every record this writer sent, on every table.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        let mut failed = None;
        for (table, written) in &self.streams {
            if let Some(offset) = written.last
                && let Err(e) = written.stream.wait_for_offset(offset).await
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
