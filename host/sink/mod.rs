//! Where rows go. A sink writes rows and, on `flush`, makes everything written so far
//! durable; only then may the checkpoint move past those rows.

pub mod columns;
pub mod deadletter;
pub mod delta;
pub mod jsonl;
pub mod row;
pub mod zerobus;

use std::path::PathBuf;

use crate::event::ReplayId;

pub use deadletter::{DeadLetter, Stage};
pub use row::Row;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write to {target}: {source}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Delta table {target}: {detail}")]
    Delta { target: String, detail: String },
    #[error("Zerobus table {table}: {detail}")]
    Zerobus { table: String, detail: String },
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        match self {
            // A full disk or a revoked permission needs a human; retrying cannot fix it.
            SinkError::Io { .. } => false,
            // A commit conflict or an unreachable object store may pass; the checkpoint has
            // not moved, so a restart replays the batch.
            SinkError::Delta { .. } => true,
            // The SDK has already retried the stream; a restart resends from the checkpoint.
            SinkError::Zerobus { .. } => true,
        }
    }
}

/// What a routed table name is to a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// The sink's own table.
    Own,
    /// The sink's dead-letter table.
    DeadLetter,
    Other,
}

/// A sink as named on the command line or in the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// `jsonl:PATH`, one JSON object per row; `jsonl:-` is standard output.
    Jsonl(JsonlTarget),
    /// `delta:PATH_OR_URL`, a Delta Lake table (created if missing), exactly once.
    Delta(String),
    /// `zerobus:CATALOG.SCHEMA.TABLE`, a Databricks table through Zerobus, at least once.
    Zerobus(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonlTarget {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkSpecError {
    #[error(
        "sink {0:?} has no kind; write it as delta:PATH, jsonl:PATH (jsonl:- for standard output)"
    )]
    NoKind(String),
    #[error("unknown sink kind {kind:?} in {spec:?}; known kinds: delta, jsonl, zerobus")]
    UnknownKind { kind: String, spec: String },
    #[error(
        "sink {0:?} names no path; write it as delta:PATH or jsonl:PATH (jsonl:- for standard output)"
    )]
    NoPath(String),
    #[error(
        "Zerobus table {0:?} is not catalog.schema.table with each part letters, digits and _ (not starting with a digit)"
    )]
    BadTable(String),
}

impl std::str::FromStr for SinkSpec {
    type Err = SinkSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| SinkSpecError::NoKind(spec.to_string()))?;
        if rest.is_empty() {
            return Err(SinkSpecError::NoPath(spec.to_string()));
        }
        match kind {
            "jsonl" => Ok(SinkSpec::Jsonl(match rest {
                "-" => JsonlTarget::Stdout,
                path => JsonlTarget::File(PathBuf::from(path)),
            })),
            "delta" => Ok(SinkSpec::Delta(rest.to_string())),
            "zerobus" => {
                let qualified = rest.split('.').count() == 3;
                if !qualified || !crate::transform::engine::valid_table_name(rest) {
                    return Err(SinkSpecError::BadTable(rest.to_string()));
                }
                Ok(SinkSpec::Zerobus(rest.to_string()))
            }
            _ => Err(SinkSpecError::UnknownKind {
                kind: kind.to_string(),
                spec: spec.to_string(),
            }),
        }
    }
}

impl SinkSpec {
    /// The `catalog.schema` of a Zerobus target: where its routed tables may go.
    pub fn home_schema(&self) -> Option<String> {
        match self {
            SinkSpec::Zerobus(table) => table.rsplit_once('.').map(|(home, _)| home.to_string()),
            SinkSpec::Jsonl(_) | SinkSpec::Delta(_) => None,
        }
    }
}

impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSpec::Jsonl(JsonlTarget::Stdout) => f.write_str("jsonl:-"),
            SinkSpec::Jsonl(JsonlTarget::Stderr) => f.write_str("jsonl:stderr"),
            SinkSpec::Jsonl(JsonlTarget::File(p)) => write!(f, "jsonl:{}", p.display()),
            SinkSpec::Delta(target) => write!(f, "delta:{target}"),
            SinkSpec::Zerobus(table) => write!(f, "zerobus:{table}"),
        }
    }
}

/// An open sink. Rows routed to another table by a transform go next to the configured
/// target: for `jsonl:dir/out.jsonl`, table `emea` is `dir/emea.jsonl`; for
/// `delta:lake/accounts`, `lake/emea`. Dead letters go to `out_dead_letter.jsonl` or the
/// Delta table `accounts_dead_letter` unless `--dead-letter` names another place.
pub enum Sink {
    Jsonl(Box<jsonl::JsonlTables>),
    Delta(Box<delta::DeltaSink>),
    Zerobus(Box<zerobus::ZerobusSink>),
}

impl Sink {
    /// Opens the sink; `app_id` names this writer (org and channel) in the sinks that keep
    /// their own checkpoint.
    pub async fn open(
        spec: &SinkSpec,
        app_id: &str,
        zerobus: &std::sync::Arc<zerobus::ZerobusPool>,
    ) -> Result<Sink, SinkError> {
        match spec {
            SinkSpec::Jsonl(target) => Ok(Sink::Jsonl(Box::new(
                jsonl::JsonlTables::open(target.clone()).await?,
            ))),
            SinkSpec::Zerobus(table) => Ok(Sink::Zerobus(Box::new(zerobus::ZerobusSink::open(
                table, zerobus,
            )?))),
            SinkSpec::Delta(target) => Ok(Sink::Delta(Box::new(
                delta::DeltaSink::open(target, app_id.to_string()).await?,
            ))),
        }
    }

    /// Whether the sink stores the checkpoint with its data (in the same atomic commit).
    pub fn keeps_checkpoint(&self) -> bool {
        matches!(self, Sink::Delta(_))
    }

    /// The checkpoint the sink keeps, if it keeps one.
    pub fn checkpoint(&self) -> Option<ReplayId> {
        match self {
            Sink::Jsonl(_) | Sink::Zerobus(_) => None,
            Sink::Delta(s) => s.checkpoint(),
        }
    }

    /// Where a transform's route goes: a route naming the sink's own table is that table
    /// (`None`); one naming its dead-letter table is refused, with the reason.
    pub fn route(&self, table: Option<String>) -> Result<Option<String>, String> {
        let Some(table) = table else {
            return Ok(None);
        };
        let kind = match self {
            Sink::Jsonl(s) => s.route_kind(&table),
            Sink::Delta(s) => s.route_kind(&table),
            Sink::Zerobus(s) => s.route_kind(&table),
        };
        match kind {
            RouteKind::Own => Ok(None),
            RouteKind::DeadLetter => Err(format!(
                "routed to {table}, the dead-letter table; route events to a table of their own"
            )),
            RouteKind::Other => Ok(Some(table)),
        }
    }

    /// Writes rows to the configured target (`table = None`) or a routed table.
    pub async fn write(&mut self, table: Option<&str>, rows: &[Row]) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(s) => s.write(table, rows).await,
            Sink::Delta(s) => s.write(table, rows).await,
            Sink::Zerobus(s) => s.write(table, rows).await,
        }
    }

    /// Writes dead letters to the sink's own dead-letter place.
    pub async fn write_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(s) => s.write_dead_letters(letters).await,
            Sink::Delta(s) => s.write_dead_letters(letters).await,
            Sink::Zerobus(s) => s.write_dead_letters(letters).await,
        }
    }

    /// Says that these events (every one of a batch, however it ended) have been processed
    /// and their rows handed to `write`: the Delta sink stops holding rows for them.
    pub fn processed(&mut self, replay_ids: &[ReplayId]) {
        if let Sink::Delta(s) = self {
            s.processed(replay_ids);
        }
    }

    /// Makes everything written so far, to every table, durable, covering events up to
    /// `position` (recorded with the data by sinks that keep their checkpoint).
    pub async fn flush(&mut self, position: &ReplayId) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(s) => s.flush().await,
            Sink::Delta(s) => s.flush(position).await,
            Sink::Zerobus(s) => s.flush().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_actionable_errors() {
        assert_eq!(
            "jsonl:-".parse::<SinkSpec>().unwrap(),
            SinkSpec::Jsonl(JsonlTarget::Stdout)
        );
        assert_eq!(
            "delta:./tables/a".parse::<SinkSpec>().unwrap(),
            SinkSpec::Delta("./tables/a".into())
        );
        assert!(
            "out.jsonl"
                .parse::<SinkSpec>()
                .unwrap_err()
                .to_string()
                .contains("jsonl:PATH")
        );
        assert!(
            "kafka:x"
                .parse::<SinkSpec>()
                .unwrap_err()
                .to_string()
                .contains("known kinds")
        );
        assert!("jsonl:".parse::<SinkSpec>().is_err());
        assert_eq!(
            "zerobus:main.sales.accounts".parse::<SinkSpec>().unwrap(),
            SinkSpec::Zerobus("main.sales.accounts".into())
        );
        for bad in [
            "zerobus:main.s.t; DROP TABLE x --",
            "zerobus:accounts",
            "zerobus:a.b.c.d",
            "zerobus:main.s.`t`",
        ] {
            let err = bad.parse::<SinkSpec>().unwrap_err().to_string();
            assert!(err.contains("catalog.schema.table"), "{bad}: {err}");
        }
    }
}
