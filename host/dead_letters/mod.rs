//! Dead letters replayed (`sfzb-host dead-letter replay`): read back from a dead-letter file
//! or table, run through the chain of the subscription that dead-lettered them (fixed
//! since), written to its sink, and recorded once durable, so that a second replay writes
//! nothing twice. A letter that fails again stays where it is, for the next replay.
//!
//! | file | holds |
//! |---|---|
//! | [`read`] | `--from`: a dead-letter file or Delta table, read back |
//! | [`ledger`] | what was replayed, by letter |
//! | [`replay`] | each letter's org found by logging in, its schema fetched, the chain, the sink |

pub mod ledger;
pub mod read;
pub mod replay;

use std::path::PathBuf;

pub use replay::{Report, replay};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("--from {spec:?}: {fix}")]
    From { spec: String, fix: String },
    #[error("cannot read the dead letters of {from}: {detail}")]
    Read { from: String, detail: String },
    #[error("the ledger of what was replayed, {path}: {detail}")]
    Ledger { path: PathBuf, detail: String },
    #[error(
        "{count} dead letter(s) still fail (listed above); they stay in {from}, and a later replay tries them again"
    )]
    StillFailing { count: usize, from: String },
}
