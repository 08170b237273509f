//! Databricks tables through Zerobus, with the official `databricks-zerobus-ingest-sdk`:
//! one SDK stream per table, rows as protobuf (`proto/sfzb_row.proto`), and `flush` waiting
//! for the server's durability acknowledgements. The SDK recovers failed streams and resends
//! unacknowledged records itself; the checkpoint moves only after `flush` returns, so
//! delivery is at least once. After a crash, what comes again is every row acknowledged since
//! the last checkpoint commit plus what was in flight: at most a flush interval's worth of
//! events (flush interval × rate) plus `max-in-flight` (each row's `event_id` identifies
//! them).

use std::collections::HashMap;

use databricks_zerobus_ingest_sdk::{ZerobusSdk, ZerobusStream};
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

pub struct ZerobusSink {
    sdk: ZerobusSdk,
    settings: ZerobusSettings,
    table: String,
    streams: HashMap<String, ZerobusStream>,
}

impl ZerobusSink {
    pub fn open(table: &str, settings: &ZerobusSettings) -> Result<ZerobusSink, SinkError> {
        if settings.endpoint.is_empty() {
            return Err(error(
                table,
                "no Zerobus endpoint: set --zerobus-endpoint or DATABRICKS_ZEROBUS_ENDPOINT",
            ));
        }
        let mut builder = ZerobusSdk::builder().endpoint(settings.endpoint.clone());
        let plaintext = settings.endpoint.starts_with("http://");
        if plaintext {
            builder = builder.no_tls();
        }
        // Credentials given are always used, plaintext or not: a local test server may
        // check them too. Only a plaintext endpoint may go without.
        if settings.has_credentials() {
            let workspace = settings.workspace_url.clone().ok_or_else(|| {
                error(table, "no Databricks workspace URL for the OAuth token: set --databricks-workspace-url or DATABRICKS_HOST")
            })?;
            builder = builder.unity_catalog_url(workspace);
        } else if !plaintext {
            return Err(error(
                table,
                "no service principal: set DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET",
            ));
        }
        let sdk = builder.build().map_err(|e| error(table, e))?;
        Ok(ZerobusSink {
            sdk,
            settings: settings.clone(),
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

    async fn stream(&mut self, table: &str, message: &str) -> Result<&ZerobusStream, SinkError> {
        if !self.streams.contains_key(table) {
            let mut builder = self
                .sdk
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
            let stream = builder.build().await.map_err(|e| error(table, e))?;
            tracing::info!(table, "Zerobus stream opened.");
            self.streams.insert(table.to_string(), stream);
        }
        Ok(self.streams.get(table).expect("inserted above"))
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
        let stream = self.stream(&table, message).await?;
        stream
            .ingest_records_offset(records)
            .await
            .map_err(|e| error(&table, e))?;
        Ok(())
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

    /// Waits until Zerobus acknowledged every record sent, on every table.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        for (table, stream) in &self.streams {
            stream.flush().await.map_err(|e| error(table, e))?;
        }
        Ok(())
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
