//! A row the Zerobus server refuses (INVALID_ARGUMENT) fails the stream it came on, for
//! every subscription sharing it. Each writer keeps what it sent since its last flush;
//! after a failure it sends that again on a stream of its own, and where the server
//! refuses a call it sends each half again, until every refused row stands alone: that
//! row is dead-lettered with the server's reason, the others are written, and only its
//! own subscription has a dead letter. Neighbours find nothing refused and go on without
//! a restart (their rows since the last flush may arrive twice: at least once).

use std::sync::Arc;

use bytes::Bytes;
use databricks_zerobus_ingest_sdk::ZerobusError;
use prost_types::DescriptorProto;

use super::{ZerobusPool, calls, error};
use crate::event::{EventSchema, ReplayId};
use crate::sink::{DeadLetter, Row, SinkError, Stage};

/// Where a row came from, enough to dead-letter it.
pub(super) struct Origin {
    org_id: Arc<str>,
    channel: Arc<str>,
    replay_id: ReplayId,
    event_id: String,
    schema: Arc<EventSchema>,
    payload: Bytes,
    processed: i64,
}

impl Origin {
    pub(super) fn of(row: &Row) -> Origin {
        let event = &row.event;
        Origin {
            org_id: event.org_id.clone(),
            channel: event.channel.clone(),
            replay_id: event.replay_id.clone(),
            event_id: event.event_id.clone(),
            schema: event.schema.clone(),
            payload: event.payload.clone(),
            processed: row.processed_timestamp,
        }
    }

    fn letter(&self, table: &str, reason: &str) -> DeadLetter {
        DeadLetter {
            stage: Stage::Write,
            error: format!("Zerobus refused this row of {table}: {reason}"),
            org_id: self.org_id.to_string(),
            channel: self.channel.to_string(),
            replay_id: self.replay_id.to_hex(),
            event_id: self.event_id.clone(),
            schema_id: self.schema.id.clone(),
            payload: self.payload.to_vec(),
            dead_lettered_at: self.processed,
        }
    }
}

/// The rows a writer sent to one table since its last flush, with the newest descriptor.
pub(super) struct Kept {
    descriptor: Arc<DescriptorProto>,
    records: Vec<Vec<u8>>,
    origins: Vec<Origin>,
}

impl Kept {
    pub(super) fn new(descriptor: &Arc<DescriptorProto>) -> Kept {
        Kept {
            descriptor: descriptor.clone(),
            records: Vec::new(),
            origins: Vec::new(),
        }
    }

    /// A typed table's descriptor only gains fields, so the newest reads every record.
    pub(super) fn add(
        &mut self,
        descriptor: &Arc<DescriptorProto>,
        records: &[Vec<u8>],
        origins: Vec<Origin>,
    ) {
        self.descriptor = descriptor.clone();
        self.records.extend_from_slice(records);
        self.origins.extend(origins);
    }
}

/// Sends `kept` to `table` on streams of its own (see the module documentation); the
/// rows the server refused, as dead letters. `failure` is why the shared stream failed.
pub(super) async fn send_alone(
    pool: &ZerobusPool,
    table: &str,
    kept: Kept,
    failure: &str,
) -> Result<Vec<DeadLetter>, SinkError> {
    if let Some(held_back) = crate::throttle::admit("zerobus-alone") {
        tracing::warn!(table, rows = kept.records.len(), %failure, held_back, "Zerobus stream failed: sending this subscription's rows since its last flush again on a stream of its own.");
    }
    let Kept {
        descriptor,
        records,
        origins,
    } = kept;
    let total = records.len();
    let mut letters = Vec::new();
    let mut todo = vec![(records, origins)];
    while let Some((records, mut origins)) = todo.pop() {
        let refused = match alone(pool, table, &descriptor, records.clone()).await {
            Ok(()) => continue,
            // Only a refusal of what was sent is a row's; the table gone, a permission
            // revoked or a stream in a bad state is the table's: the subscription starts
            // again from its checkpoint.
            Err(e) if !refusal(&e) => return Err(error(table, e)),
            Err(e) => e,
        };
        if records.len() == 1 {
            let letter = origins[0].letter(table, &refused.to_string());
            tracing::error!(table, replay_id = %letter.replay_id, error = %refused, "Zerobus refused a row; dead-lettered.");
            letters.push(letter);
            continue;
        }
        let half = records.len() / 2;
        let mut first = records;
        let second = first.split_off(half);
        let later = origins.split_off(half);
        // The first half is sent first (a stack: pushed last).
        todo.push((second, later));
        todo.push((first, origins));
    }
    if total > 1 && letters.len() == total {
        // Every row refused one by one: the table refuses them all (a schema changed by
        // hand), not a row; dead-lettering them would pass rows that are fine.
        return Err(error(
            table,
            format!(
                "the server refused every one of the {total} rows sent again one by one: {}",
                letters[0].error
            ),
        ));
    }
    Ok(letters)
}

/// Whether the server refused the records sent (INVALID_ARGUMENT), rather than failing.
fn refusal(e: &ZerobusError) -> bool {
    match e {
        ZerobusError::InvalidArgument(_) => true,
        ZerobusError::StreamClosedError(status) | ZerobusError::CreateStreamError(status) => {
            status.code() == tonic::Code::InvalidArgument
        }
        _ => false,
    }
}

/// `records` on a new stream of `table` of their own, acknowledged, and the stream gone.
async fn alone(
    pool: &ZerobusPool,
    table: &str,
    descriptor: &DescriptorProto,
    records: Vec<Vec<u8>>,
) -> Result<(), ZerobusError> {
    let stream = pool
        .open(table, descriptor.clone())
        .await
        .map_err(ZerobusError::ChannelCreationError)?;
    let mut last = None;
    for call in calls(records) {
        last = stream.ingest_records_offset(call).await?.or(last);
    }
    if let Some(offset) = last {
        stream.wait_for_offset(offset).await?;
    }
    Ok(())
}
