//! Where rows go. A sink writes rows and, on `flush`, makes everything written so far
//! durable; only then may the checkpoint move past those rows.

pub mod deadletter;
pub mod jsonl;
pub mod row;

use std::path::PathBuf;

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
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        match self {
            // A full disk or a revoked permission needs a human; retrying cannot fix it.
            SinkError::Io { .. } => false,
        }
    }
}

/// A sink as named on the command line or in the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// `jsonl:PATH`, one JSON object per row; `jsonl:-` is standard output.
    Jsonl(JsonlTarget),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonlTarget {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkSpecError {
    #[error("sink {0:?} has no kind; write it as jsonl:PATH (jsonl:- for standard output)")]
    NoKind(String),
    #[error("unknown sink kind {kind:?} in {spec:?}; known kinds: jsonl")]
    UnknownKind { kind: String, spec: String },
    #[error("sink {0:?} names no path; write it as jsonl:PATH (jsonl:- for standard output)")]
    NoPath(String),
}

impl std::str::FromStr for SinkSpec {
    type Err = SinkSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| SinkSpecError::NoKind(spec.to_string()))?;
        match kind {
            "jsonl" => Ok(SinkSpec::Jsonl(match rest {
                "" => return Err(SinkSpecError::NoPath(spec.to_string())),
                "-" => JsonlTarget::Stdout,
                path => JsonlTarget::File(PathBuf::from(path)),
            })),
            _ => Err(SinkSpecError::UnknownKind {
                kind: kind.to_string(),
                spec: spec.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSpec::Jsonl(JsonlTarget::Stdout) => f.write_str("jsonl:-"),
            SinkSpec::Jsonl(JsonlTarget::Stderr) => f.write_str("jsonl:stderr"),
            SinkSpec::Jsonl(JsonlTarget::File(p)) => write!(f, "jsonl:{}", p.display()),
        }
    }
}

impl SinkSpec {
    /// Where dead letters go when not configured: next to a file sink
    /// (`out.jsonl` → `out_dead_letter.jsonl`), standard error for standard output.
    pub fn default_dead_letter(&self) -> SinkSpec {
        match self {
            SinkSpec::Jsonl(JsonlTarget::File(path)) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                SinkSpec::Jsonl(JsonlTarget::File(
                    path.with_file_name(format!("{stem}_dead_letter.jsonl")),
                ))
            }
            SinkSpec::Jsonl(_) => SinkSpec::Jsonl(JsonlTarget::Stderr),
        }
    }
}

/// An open sink. Rows routed to another table by a transform go next to the configured
/// target: for `jsonl:dir/out.jsonl`, table `emea` is `dir/emea.jsonl`.
pub enum Sink {
    Jsonl(jsonl::JsonlTables),
}

impl Sink {
    pub async fn open(spec: &SinkSpec) -> Result<Sink, SinkError> {
        match spec {
            SinkSpec::Jsonl(target) => {
                Ok(Sink::Jsonl(jsonl::JsonlTables::open(target.clone()).await?))
            }
        }
    }

    /// Writes rows to the configured target (`table = None`) or a routed table.
    pub async fn write(&mut self, table: Option<&str>, rows: &[Row]) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(s) => s.write(table, rows).await,
        }
    }

    pub async fn write_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(s) => s.write(None, letters).await,
        }
    }

    /// Makes everything written so far, to every table, durable.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(s) => s.flush().await,
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
            "jsonl:out/a.jsonl"
                .parse::<SinkSpec>()
                .unwrap()
                .default_dead_letter()
                .to_string(),
            "jsonl:out/a_dead_letter.jsonl"
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
    }
}
