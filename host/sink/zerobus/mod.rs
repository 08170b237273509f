//! Databricks tables through Zerobus, with the official `databricks-zerobus-ingest-sdk`:
//! one SDK per process ([`ZerobusPool`]) and, per table, streams shared by the
//! subscriptions writing it (one per [`SUBSCRIPTIONS_PER_STREAM`]; each row's org and
//! channel columns say whose it is); rows as protobuf (`proto/sfzb_row.proto`), and `flush`
//! waiting for the server's durability acknowledgement of this subscription's last record.
//! The SDK recovers failed streams and resends unacknowledged records itself; the
//! checkpoint moves only after `flush` returns, so delivery is at least once. After a
//! crash, what comes again is every row acknowledged since the last checkpoint commit plus
//! what was in flight: at most a flush interval's worth of events (flush interval × rate)
//! plus `max-in-flight` (each row's `event_id` identifies them).
//!
//! | file | concern |
//! |---|---|
//! | this one | settings, the SDK, the pool of shared streams (slots taken and left), one call's size |
//! | [`writer`] | one subscription's writer: rows and dead letters sent, flushed |
//! | [`refused`] | after a stream failed: a writer's rows sent again on a stream of its own, a refused row found and dead-lettered |
//! | [`typed`] | typed tables: DDL, descriptors, widening |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use databricks_zerobus_ingest_sdk::{ZerobusSdk, ZerobusStream};
use prost::Message;
use secrecy::{ExposeSecret, SecretString};

mod refused;
pub mod typed;
mod writer;

use crate::sink::SinkError;
use crate::sql::SqlSettings;
pub use writer::ZerobusSink;

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

/// The reference layout's row and dead-letter descriptors, built once.
fn shared_descriptor(name: &'static str) -> Arc<prost_types::DescriptorProto> {
    static ROW: std::sync::OnceLock<Arc<prost_types::DescriptorProto>> = std::sync::OnceLock::new();
    static LETTER: std::sync::OnceLock<Arc<prost_types::DescriptorProto>> =
        std::sync::OnceLock::new();
    let cell = match name {
        "CdcEventRow" => &ROW,
        _ => &LETTER,
    };
    cell.get_or_init(|| Arc::new(descriptor(name))).clone()
}

/// The most bytes of records one ingest call may carry: the SDK refuses a larger call
/// whole (the server takes at most 10 MiB).
pub const MAX_CALL_BYTES: usize =
    databricks_zerobus_ingest_sdk::stream_options::defaults::MAX_INGEST_PAYLOAD_BYTES;

/// Records in runs of at most [`MAX_CALL_BYTES`] each, in order; each record must fit
/// alone (see [`too_large`]).
fn calls(records: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
    let mut calls = Vec::new();
    let (mut call, mut bytes) = (Vec::new(), 0);
    for record in records {
        if !call.is_empty() && bytes + record.len() > MAX_CALL_BYTES {
            calls.push(std::mem::take(&mut call));
            bytes = 0;
        }
        bytes += record.len();
        call.push(record);
    }
    if !call.is_empty() {
        calls.push(call);
    }
    calls
}

/// Takes out of `records` (each with its row's index) those too large for one call, as
/// misfits to dead-letter; the others are written.
fn too_large(records: &mut Vec<(usize, Vec<u8>)>) -> crate::sink::Misfits {
    let mut misfits = Vec::new();
    records.retain(|(i, record)| {
        let fits = record.len() <= MAX_CALL_BYTES;
        if !fits {
            misfits.push((
                *i,
                crate::sink::Misfit::TooLarge {
                    bytes: record.len(),
                    limit: MAX_CALL_BYTES,
                },
            ));
        }
        fits
    });
    misfits
}

/// Subscriptions sharing one stream of a table: enough streams to spread the load,
/// few enough that 10,000 subscriptions need 40, not 10,000.
pub const SUBSCRIPTIONS_PER_STREAM: usize = 250;

/// A stream slot: opened on first use, replaced once it failed for good or its
/// descriptor is older than a typed table's.
type Slot = Arc<tokio::sync::Mutex<Option<(Arc<ZerobusStream>, u64)>>>;

/// A slot in use: its stream, and how many subscriptions write on it now. The last one
/// to leave takes the slot away, and with it the stream (dropped once its last writer's
/// records are acknowledged or abandoned: an SDK stream closes when dropped).
struct Held {
    slot: Slot,
    writers: usize,
}

/// A typed table's shared columns, loaded on first use.
type SharedTyped = Arc<tokio::sync::Mutex<Option<typed::Shared>>>;

/// The process's Zerobus SDK and its streams, by table and slot.
pub struct ZerobusPool {
    sdk: Result<ZerobusSdk, String>,
    settings: ZerobusSettings,
    /// The slots in use, by table and index.
    slots: Mutex<HashMap<(String, usize), Held>>,
    /// How many slots (so streams, at most) are in use, for `/metrics`.
    in_use: Arc<std::sync::atomic::AtomicUsize>,
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
            in_use: Arc::default(),
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

    /// How many stream slots are in use: the bound on the streams open.
    pub fn streams_in_use(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.in_use.clone()
    }

    /// A slot of `table` for one more writer: the first with room, so that subscriptions
    /// started again fill the slots that are open rather than open new ones.
    fn assign(&self, table: &str) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut index = 0;
        loop {
            match slots.get_mut(&(table.to_string(), index)) {
                Some(held) if held.writers >= SUBSCRIPTIONS_PER_STREAM => index += 1,
                Some(held) => {
                    held.writers += 1;
                    return index;
                }
                None => {
                    let held = Held {
                        slot: Slot::default(),
                        writers: 1,
                    };
                    slots.insert((table.to_string(), index), held);
                    self.in_use
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return index;
                }
            }
        }
    }

    /// A writer leaves slot `index` of `table`; the last one takes the slot and its
    /// stream away.
    fn release(&self, table: &str, index: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let key = (table.to_string(), index);
        let Some(held) = slots.get_mut(&key) else {
            return;
        };
        held.writers = held.writers.saturating_sub(1);
        if held.writers == 0 {
            slots.remove(&key);
            self.in_use
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                table,
                slot = index,
                "Zerobus stream slot left by its last writer; its stream closes."
            );
        }
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
            .get(&(table.to_string(), slot))
            .map(|held| held.slot.clone())
            .ok_or_else(|| error(table, format!("stream slot {slot} is not assigned")))?;
        let mut open = cell.lock().await;
        if let Some((stream, _)) = open
            .as_ref()
            .filter(|(s, g)| !s.is_closed() && *g >= generation)
        {
            return Ok(stream.clone());
        }
        let stream = Arc::new(
            self.open(table, descriptor)
                .await
                .map_err(|e| error(table, e))?,
        );
        tracing::info!(table, slot, generation, "Zerobus stream opened.");
        *open = Some((stream.clone(), generation));
        Ok(stream)
    }

    /// A new stream to `table`, shared or not.
    async fn open(
        &self,
        table: &str,
        descriptor: prost_types::DescriptorProto,
    ) -> Result<ZerobusStream, String> {
        let sdk = self.sdk.as_ref().map_err(String::clone)?;
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
        builder.build().await.map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_go_in_calls_under_the_limit_and_one_too_large_is_a_misfit() {
        let mib = |n: usize| vec![0u8; n << 20];
        let mut records: Vec<(usize, Vec<u8>)> = vec![
            (0, mib(4)),
            (1, mib(11)),
            (2, mib(4)),
            (3, mib(4)),
            (4, vec![1]),
        ];
        let misfits = too_large(&mut records);
        assert_eq!(misfits.len(), 1);
        assert_eq!(misfits[0].0, 1);
        assert!(
            misfits[0].1.to_string().contains("10 MiB"),
            "{}",
            misfits[0].1
        );
        let calls = calls(records.into_iter().map(|(_, r)| r).collect());
        let sizes: Vec<usize> = calls.iter().map(|c| c.iter().map(Vec::len).sum()).collect();
        assert_eq!(
            sizes,
            [8 << 20, (4 << 20) + 1],
            "in order, each under the limit"
        );
        assert!(sizes.iter().all(|s| *s <= MAX_CALL_BYTES));
    }

    #[test]
    fn descriptors_hold_the_sixteen_columns() {
        let row = descriptor("CdcEventRow");
        assert_eq!(row.field.len(), 16);
        assert_eq!(row.field[12].name(), "payload_binary");
        assert_eq!(descriptor("DeadLetterRow").field.len(), 9);
    }
}
