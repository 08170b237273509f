//! Events that could not be delivered, kept with why and where they failed, so nothing is
//! lost silently and the checkpoint may pass them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::sink::columns::{Cell, Cells, Column, DEAD_LETTER};

use crate::sink::row::{base64_bytes, from_base64};

/// The pipeline stage an event failed in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Decode,
    Transform(String),
    /// The row does not fit its typed table (a field changed type).
    Write,
}

impl Stage {
    /// The `stage` column: `decode`, or `transform:<name>`.
    pub fn label(&self) -> String {
        match self {
            Stage::Decode => "decode".to_string(),
            Stage::Transform(name) => format!("transform:{name}"),
            Stage::Write => "write".to_string(),
        }
    }

    /// The stage a `stage` column names.
    pub fn from_label(label: &str) -> Option<Stage> {
        match label {
            "decode" => Some(Stage::Decode),
            "write" => Some(Stage::Write),
            _ => label
                .strip_prefix("transform:")
                .map(|name| Stage::Transform(name.to_string())),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stage: Stage,
    pub error: String,
    pub org_id: String,
    pub channel: String,
    pub replay_id: String,
    pub event_id: String,
    pub schema_id: String,
    /// The event's Avro payload exactly as received; base64 in JSON.
    #[serde(serialize_with = "base64_bytes", deserialize_with = "from_base64")]
    pub payload: Vec<u8>,
    /// When it was dead-lettered, milliseconds since the epoch.
    pub dead_lettered_at: i64,
}

impl DeadLetter {
    /// A decoded event that cannot be written (`stage` says where it failed), with the
    /// payload it has now.
    pub fn of_event(
        stage: Stage,
        error: String,
        event: &crate::event::ChangeEvent,
        at: i64,
    ) -> DeadLetter {
        DeadLetter {
            stage,
            error,
            org_id: event.org_id.to_string(),
            channel: event.channel.to_string(),
            replay_id: event.replay_id.to_hex(),
            event_id: event.event_id.clone(),
            schema_id: event.schema.id.clone(),
            payload: event.payload.to_vec(),
            dead_lettered_at: at,
        }
    }
}

impl Cells for DeadLetter {
    const COLUMNS: &'static [Column] = &DEAD_LETTER;

    fn cell(&self, i: usize) -> Cell<'_> {
        match i {
            0 => Cell::Text(Cow::Owned(self.stage.label())),
            1 => Cell::Text(Cow::Borrowed(&self.error)),
            2 => Cell::Text(Cow::Borrowed(&self.org_id)),
            3 => Cell::Text(Cow::Borrowed(&self.channel)),
            4 => Cell::Text(Cow::Borrowed(&self.replay_id)),
            5 => Cell::Text(Cow::Borrowed(&self.event_id)),
            6 => Cell::Text(Cow::Borrowed(&self.schema_id)),
            7 => Cell::Bytes(&self.payload),
            8 => Cell::Long(self.dead_lettered_at),
            _ => unreachable!("a dead letter has {} columns", DEAD_LETTER.len()),
        }
    }
}
