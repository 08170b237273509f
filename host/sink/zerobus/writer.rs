//! One subscription's writer on the shared streams: its rows and dead letters sent in
//! calls under the size limit, each table's stream taken from the pool's slots and left
//! again, and `flush` waiting for the acknowledgement of its last record on each. What it
//! sent since its last flush is kept until then: a stream that failed (another
//! subscription's refused row fails it for everyone on it) is not a restart, its rows go
//! again on a stream of their own ([`super::refused`]).

use std::collections::HashMap;
use std::sync::Arc;

use databricks_zerobus_ingest_sdk::{OffsetId, ZerobusStream};
use prost_types::DescriptorProto;

use super::refused::{Kept, Origin, send_alone};
use super::{MAX_CALL_BYTES, ZerobusPool, calls, error, shared_descriptor, too_large, typed};
use crate::sink::{DeadLetter, Layout, RouteKind, Row, SinkError};

/// A table this writer sent to: its slot, the slot's stream, the stream's descriptor
/// generation and the offset of this writer's last record on it.
struct Written {
    slot: usize,
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
    /// Per table, the rows sent since the last flush, to send again alone if its stream
    /// fails before it acknowledged them.
    kept: HashMap<String, Kept>,
    /// Tables whose stream failed while rows were sent: the flush sends them again alone.
    failed: HashMap<String, String>,
    /// Rows the server refused, found by the last flush, for the pipeline to dead-letter.
    refused: Vec<DeadLetter>,
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
            kept: HashMap::new(),
            failed: HashMap::new(),
            refused: Vec::new(),
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
    /// Rows (`origins`, one per record) are kept until the flush; dead letters (`None`)
    /// are not.
    async fn send(
        &mut self,
        table: String,
        descriptor: &Arc<DescriptorProto>,
        generation: u64,
        records: Vec<Vec<u8>>,
        origins: Option<Vec<Origin>>,
    ) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(origins) = origins {
            let kept = self
                .kept
                .entry(table.clone())
                .or_insert_with(|| Kept::new(descriptor));
            kept.add(descriptor, &records, origins);
        }
        if self.failed.contains_key(&table) {
            // Its stream failed since the last flush: the flush sends all of it alone.
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
            self.leave(&table);
        }
        if !self.streams.contains_key(&table) {
            let slot = self.pool.assign(&table);
            let stream = match self
                .pool
                .stream(&table, slot, (**descriptor).clone(), generation)
                .await
            {
                Ok(stream) => stream,
                Err(e) => {
                    self.pool.release(&table, slot);
                    return Err(e);
                }
            };
            let written = Written {
                slot,
                stream,
                generation,
                last: None,
            };
            self.streams.insert(table.clone(), written);
        }
        let written = self.streams.get_mut(&table).expect("inserted above");
        for call in calls(records) {
            match written.stream.ingest_records_offset(call).await {
                Ok(offset) => written.last = offset.or(written.last),
                Err(e) if self.kept.contains_key(&table) => {
                    // The shared stream failed (perhaps another subscription's row): this
                    // writer's rows go again alone at the flush.
                    self.leave(&table);
                    self.failed.insert(table, e.to_string());
                    return Ok(());
                }
                Err(e) => {
                    // The stream failed for good: the next write opens its slot again.
                    self.leave(&table);
                    return Err(error(&table, e));
                }
            }
        }
        Ok(())
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
        let mut records = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut buf = Vec::new();
                r.encode_proto(&mut buf);
                (i, buf)
            })
            .collect();
        let misfits = too_large(&mut records);
        let origins = records.iter().map(|(i, _)| Origin::of(&rows[*i])).collect();
        let records = records.into_iter().map(|(_, r)| r).collect();
        let descriptor = shared_descriptor("CdcEventRow");
        self.send(table, &descriptor, 0, records, Some(origins))
            .await?;
        Ok(misfits)
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
                Ok(plan) => planned.push((i, plan, row)),
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
        let mut records = planned
            .iter()
            .map(|(i, plan, row)| {
                let mut buf = Vec::with_capacity(2048);
                typed::encode(plan, row, columns, &mut buf);
                (*i, buf)
            })
            .collect();
        misfits.extend(too_large(&mut records));
        misfits.sort_by_key(|(i, _)| *i);
        let origins = records.iter().map(|(i, _)| Origin::of(&rows[*i])).collect();
        let records = records.into_iter().map(|(_, r)| r).collect();
        let (generation, descriptor) = (state.generation, state.descriptor.clone());
        drop(guard);
        self.send(table, &descriptor, generation, records, Some(origins))
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
                if buf.len() > MAX_CALL_BYTES {
                    // A letter must land: without its payload, saying why.
                    let mut slim = l.clone();
                    slim.error = format!(
                        "{} (its payload of {} bytes is left out: over what Zerobus takes in one record)",
                        l.error,
                        l.payload.len()
                    );
                    slim.payload = Vec::new();
                    buf.clear();
                    crate::sink::columns::encode_proto(&slim, &mut buf);
                }
                buf
            })
            .collect();
        let descriptor = shared_descriptor("DeadLetterRow");
        self.send(table, &descriptor, 0, records, None).await
    }

    /// Waits until Zerobus acknowledged every record this writer sent, on every table. A
    /// table whose stream failed meanwhile has its rows since the last flush sent again
    /// on a stream of their own: a row the server refuses is found and kept for the
    /// pipeline to dead-letter ([`ZerobusSink::take_refused`]), the others are written.
    /// Only what cannot be sent alone either (the server gone, dead letters) is an error,
    /// and then the subscription starts again from its checkpoint.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        let mut failed = std::mem::take(&mut self.failed);
        for (table, written) in &self.streams {
            if let Some(offset) = written.last
                && let Err(e) = written.stream.wait_for_offset(offset).await
            {
                failed.insert(table.clone(), e.to_string());
            }
        }
        for table in failed.keys() {
            self.leave(table);
        }
        let mut result = Ok(());
        for (table, reason) in failed {
            match self.kept.remove(&table) {
                Some(kept) if result.is_ok() => {
                    match Box::pin(send_alone(&self.pool, &table, kept, &reason)).await {
                        Ok(refused) => self.refused.extend(refused),
                        Err(e) => result = Err(e),
                    }
                }
                Some(_) => {}
                None => result = Err(error(&table, reason)),
            }
        }
        self.kept.clear();
        if result.is_err() {
            // Its records are sent again from the checkpoint, on streams opened again.
            let tables: Vec<String> = self.streams.keys().cloned().collect();
            for table in tables {
                self.leave(&table);
            }
        }
        result
    }

    /// The rows the last flush found refused by the server, with its reason.
    pub fn take_refused(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.refused)
    }

    /// Stops writing `table` on its slot (the slot's last writer closes its stream).
    fn leave(&mut self, table: &str) {
        if let Some(written) = self.streams.remove(table) {
            self.pool.release(table, written.slot);
        }
    }
}

impl Drop for ZerobusSink {
    /// A subscription that ends leaves its slots: a stream no subscription writes any
    /// more is closed, however often subscriptions start again.
    fn drop(&mut self) {
        for (table, written) in self.streams.drain() {
            self.pool.release(&table, written.slot);
        }
    }
}
