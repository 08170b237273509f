//! The host half of the WIT contract (`wit/transform.wit`): the `host` interface (logging,
//! rate-limited) and the `types` interface (the event resource: read, set, copy, drop),
//! with every host-side bound a guest could push against. WASI is linked with nothing
//! granted (see [`super::engine`]).

use wasmtime::component::Resource;
use wasmtime_wasi::{WasiCtxView, WasiView};

use super::engine::State;
use super::engine::sfzb;
use crate::event::{self, ChangeEvent};
use sfzb::transform::host::Level;
use sfzb::transform::types::{ChangeType as WitChangeType, Header, Value as WitValue};

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Longest log line a guest may write.
const MAX_LOG_BYTES: usize = 1024;

impl sfzb::transform::host::Host for State {
    fn log(&mut self, level: Level, mut message: String) -> wasmtime::Result<()> {
        let (admitted, held_back) = self.log.lock().unwrap_or_else(|e| e.into_inner()).admit();
        if let Some(n) = held_back {
            let transform = &*self.name;
            tracing::warn!(
                transform,
                suppressed = n,
                "Transform {transform}: {n} log lines held back in the last second (max-log-lines-per-sec = {}).",
                self.limits.max_log_lines_per_sec
            );
        }
        if !admitted {
            return Ok(());
        }
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let transform = &*self.name;
        match level {
            Level::Debug => tracing::debug!(transform, "{message}"),
            Level::Info => tracing::info!(transform, "{message}"),
            Level::Warn => tracing::warn!(transform, "{message}"),
            Level::Error => tracing::error!(transform, "{message}"),
        }
        Ok(())
    }
}

impl sfzb::transform::types::Host for State {}

fn to_wit(value: event::Value) -> WitValue {
    match value {
        event::Value::Null | event::Value::Record(_) => WitValue::Null,
        event::Value::Bool(b) => WitValue::Boolean(b),
        event::Value::Int(i) => WitValue::Integer(i),
        event::Value::Float(f) => WitValue::Float(f),
        event::Value::Text(t) => WitValue::Text(t),
        event::Value::Bytes(b) => WitValue::Bytes(b),
    }
}

fn from_wit(value: WitValue) -> event::Value {
    match value {
        WitValue::Null => event::Value::Null,
        WitValue::Boolean(b) => event::Value::Bool(b),
        WitValue::Integer(i) => event::Value::Int(i),
        WitValue::Float(f) => event::Value::Float(f),
        WitValue::Text(t) => event::Value::Text(t),
        WitValue::Bytes(b) => event::Value::Bytes(b),
    }
}

fn change_type(t: event::ChangeType) -> WitChangeType {
    match t {
        event::ChangeType::Create => WitChangeType::Create,
        event::ChangeType::Update => WitChangeType::Update,
        event::ChangeType::Delete => WitChangeType::Delete,
        event::ChangeType::Undelete => WitChangeType::Undelete,
        event::ChangeType::GapCreate => WitChangeType::GapCreate,
        event::ChangeType::GapUpdate => WitChangeType::GapUpdate,
        event::ChangeType::GapDelete => WitChangeType::GapDelete,
        event::ChangeType::GapUndelete => WitChangeType::GapUndelete,
        event::ChangeType::GapOverflow => WitChangeType::GapOverflow,
    }
}

impl sfzb::transform::types::HostEvent for State {
    fn org_id(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.org_id.to_string())
    }

    fn channel(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.channel.to_string())
    }

    fn event_id(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.event_id.clone())
    }

    fn replay_id(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.replay_id.to_hex())
    }

    fn schema_id(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.schema.id.clone())
    }

    fn entity_name(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.header.entity_name.clone())
    }

    fn change_type(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<WitChangeType> {
        Ok(change_type(self.table.get(&this)?.header.change_type))
    }

    fn header(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<Header> {
        let h = &self.table.get(&this)?.header;
        Ok(Header {
            entity_name: h.entity_name.clone(),
            change_type: change_type(h.change_type),
            record_ids: h.record_ids.clone(),
            changed_fields: h.changed_fields.clone(),
            nulled_fields: h.nulled_fields.clone(),
            diff_fields: h.diff_fields.clone(),
            commit_timestamp: h.commit_timestamp,
            commit_number: h.commit_number,
            commit_user: h.commit_user.clone(),
            change_origin: h.change_origin.clone(),
            transaction_key: h.transaction_key.clone(),
            sequence_number: h.sequence_number,
        })
    }

    fn get(
        &mut self,
        this: Resource<ChangeEvent>,
        name: String,
    ) -> wasmtime::Result<Option<WitValue>> {
        Ok(self.table.get(&this)?.get(&name).map(to_wit))
    }

    fn set(
        &mut self,
        this: Resource<ChangeEvent>,
        name: String,
        value: WitValue,
    ) -> wasmtime::Result<Result<(), String>> {
        let size = match &value {
            WitValue::Text(t) => t.len(),
            WitValue::Bytes(b) => b.len(),
            _ => 8,
        };
        self.added_bytes += size;
        if self.added_bytes > self.limits.max_added_bytes {
            let message = format!(
                "exceeded max-added-bytes: its set values on one event passed {} bytes",
                self.limits.max_added_bytes
            );
            return Err(self.exceeded(message));
        }
        self.hold(this.rep(), size)?;
        let by = self.name.clone();
        let event = self.table.get_mut(&this)?;
        Ok(if event.set(&name, from_wit(value), &by) {
            Ok(())
        } else {
            Err(format!("{} has no field {name}", event.header.entity_name))
        })
    }

    fn remove(&mut self, this: Resource<ChangeEvent>, name: String) -> wasmtime::Result<bool> {
        let by = self.name.clone();
        Ok(self
            .table
            .get_mut(&this)?
            .set(&name, event::Value::Null, &by))
    }

    fn field_names(&mut self, this: Resource<ChangeEvent>) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.schema.names.data_field_names())
    }

    fn duplicate(
        &mut self,
        this: Resource<ChangeEvent>,
    ) -> wasmtime::Result<Resource<ChangeEvent>> {
        if self.held.len() >= self.limits.max_outputs {
            let message = format!(
                "exceeded max-outputs: more than {} outputs of one event",
                self.limits.max_outputs
            );
            return Err(self.exceeded(message));
        }
        let copy = self.table.get(&this)?.clone();
        let bytes = self.held.get(&this.rep()).copied().unwrap_or_default();
        let handle = self.table.push(copy)?;
        self.hold(handle.rep(), bytes)?;
        Ok(handle)
    }

    fn drop(&mut self, rep: Resource<ChangeEvent>) -> wasmtime::Result<()> {
        let handle = rep.rep();
        self.table.delete(rep)?;
        self.release(handle);
        Ok(())
    }
}
