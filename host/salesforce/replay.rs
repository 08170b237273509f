//! Where a subscription starts, and what to do when Salesforce rejects the stored position.

use crate::event::ReplayId;
use crate::proto::pubsub::ReplayPreset;

/// Where a subscription starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    Latest,
    Earliest,
    /// After this replay id.
    Custom(ReplayId),
}

impl StartPosition {
    pub(crate) fn preset(&self) -> (ReplayPreset, bytes::Bytes) {
        match self {
            StartPosition::Latest => (ReplayPreset::Latest, bytes::Bytes::new()),
            StartPosition::Earliest => (ReplayPreset::Earliest, bytes::Bytes::new()),
            StartPosition::Custom(id) => (ReplayPreset::Custom, id.as_bytes().clone()),
        }
    }
}

impl std::fmt::Display for StartPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartPosition::Latest => f.write_str("LATEST"),
            StartPosition::Earliest => f.write_str("EARLIEST"),
            StartPosition::Custom(id) => write!(f, "CUSTOM after {id}"),
        }
    }
}

/// What to do when Salesforce says the stored replay id is corrupted or outside retention.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ReplayFallback {
    /// Stop with an error: events may have been missed and a human should resync.
    Fail,
    /// Replay everything still retained (duplicates possible, nothing newer missed).
    Earliest,
    /// Skip to new events (what was published meanwhile is missed).
    Latest,
}
