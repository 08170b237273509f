//! Where rows go. A sink writes rows and, on `flush`, makes everything written so far
//! durable; only then may the checkpoint move past those rows.

pub mod columns;
pub mod deadletter;
pub mod delta;
pub mod jsonl;
pub mod row;
pub mod typed;
pub mod zerobus;

use std::path::PathBuf;

use crate::event::ReplayId;

pub use deadletter::{DeadLetter, Stage};
pub use row::Row;
pub use typed::{Layout, Misfit};

/// In a sink's table name, `{object}` is the Salesforce object of each row
/// (`delta:./tables/{object}`): one table per object.
pub const OBJECT: &str = "{object}";

/// What `{object}` becomes for the dead letters of a sink with a table per object; its
/// Delta table also carries the checkpoint.
pub const DEAD_LETTER_OBJECT: &str = "dead_letter";

/// Rows a sink did not write because they do not fit their table, by position in the
/// batch, with the reason: they are dead-lettered.
pub type Misfits = Vec<(usize, Misfit)>;

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
    #[error(
        "sink {0:?} has {{object}} outside its table name; put it in the last part only (delta:./tables/{{object}}, jsonl:./out/{{object}}.jsonl, zerobus:main.salesforce.{{object}})"
    )]
    ObjectOutsideName(String),
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
        let separator = if kind == "zerobus" { '.' } else { '/' };
        if let Some((dir, _)) = rest.rsplit_once(separator)
            && dir.contains(OBJECT)
        {
            return Err(SinkSpecError::ObjectOutsideName(spec.to_string()));
        }
        match kind {
            "jsonl" => Ok(SinkSpec::Jsonl(match rest {
                "-" => JsonlTarget::Stdout,
                path => JsonlTarget::File(PathBuf::from(path)),
            })),
            "delta" => Ok(SinkSpec::Delta(rest.to_string())),
            "zerobus" => {
                let qualified = rest.split('.').count() == 3;
                // `{object}` stands for an object's API name: letters, digits and `_`.
                let named = rest.replace(OBJECT, "Object");
                if !qualified || !crate::transform::engine::valid_table_name(&named) {
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
    /// The table name with `{object}` in it, for a sink with a table per object: a file's
    /// stem, a Delta table's last path segment.
    pub fn object_template(&self) -> Option<String> {
        let name = match self {
            SinkSpec::Jsonl(JsonlTarget::File(path)) => path.file_stem()?.to_str()?.to_string(),
            SinkSpec::Delta(target) => target.trim_end_matches('/').rsplit('/').next()?.to_string(),
            SinkSpec::Zerobus(table) => table.rsplit('.').next()?.to_string(),
            SinkSpec::Jsonl(_) => return None,
        };
        name.contains(OBJECT).then_some(name)
    }

    /// The place opened as the sink's own: with `{object}`, its dead-letter table.
    fn opened(&self) -> SinkSpec {
        match self {
            SinkSpec::Jsonl(JsonlTarget::File(path)) => {
                let text = path.to_string_lossy().replace(OBJECT, DEAD_LETTER_OBJECT);
                SinkSpec::Jsonl(JsonlTarget::File(PathBuf::from(text)))
            }
            SinkSpec::Delta(target) => SinkSpec::Delta(target.replace(OBJECT, DEAD_LETTER_OBJECT)),
            SinkSpec::Zerobus(table) => {
                SinkSpec::Zerobus(table.replace(OBJECT, DEAD_LETTER_OBJECT))
            }
            other => other.clone(),
        }
    }

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
///
/// With `{object}` in the table name every row goes to its object's table, a sibling
/// (`delta:lake/{object}` → `lake/Account`, also for a routed name with `{object}`), and
/// the sink's own place is its dead-letter table (`lake/dead_letter`).
pub struct Sink {
    target: Target,
    layout: Layout,
    /// The table name with `{object}`, for a table per object.
    template: Option<String>,
}

enum Target {
    Jsonl(Box<jsonl::JsonlTables>),
    Delta(Box<delta::DeltaSink>),
    Zerobus(Box<zerobus::ZerobusSink>),
}

impl Sink {
    /// Opens the sink; `app_id` names this writer (org and channel) in the sinks that keep
    /// their own checkpoint.
    pub async fn open(
        spec: &SinkSpec,
        layout: Layout,
        app_id: &str,
        zerobus: &std::sync::Arc<zerobus::ZerobusPool>,
    ) -> Result<Sink, SinkError> {
        let template = spec.object_template();
        let per_object = template.is_some();
        let target = match &spec.opened() {
            SinkSpec::Jsonl(target) => Target::Jsonl(Box::new(
                jsonl::JsonlTables::open(target.clone(), layout, per_object).await?,
            )),
            SinkSpec::Zerobus(table) => Target::Zerobus(Box::new(zerobus::ZerobusSink::open(
                table, zerobus, layout, per_object,
            )?)),
            SinkSpec::Delta(target) => Target::Delta(Box::new(
                delta::DeltaSink::open(target, app_id.to_string(), layout, per_object).await?,
            )),
        };
        Ok(Sink {
            target,
            layout,
            template,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether the sink stores the checkpoint with its data (in the same atomic commit).
    pub fn keeps_checkpoint(&self) -> bool {
        matches!(self.target, Target::Delta(_))
    }

    /// The checkpoint the sink keeps, if it keeps one.
    pub fn checkpoint(&self) -> Option<ReplayId> {
        match &self.target {
            Target::Jsonl(_) | Target::Zerobus(_) => None,
            Target::Delta(s) => s.checkpoint(),
        }
    }

    /// Where a row of `object` goes, given its transform's route: the sink's own table
    /// (`None`), or another by name (`{object}` in it replaced); a route naming the
    /// dead-letter table is refused, with the reason.
    pub fn route(&self, table: Option<String>, object: &str) -> Result<Option<String>, String> {
        let table = match (table, &self.template) {
            (Some(table), _) => table.replace(OBJECT, object),
            (None, Some(template)) => template.replace(OBJECT, object),
            (None, None) => return Ok(None),
        };
        let kind = match &self.target {
            Target::Jsonl(s) => s.route_kind(&table),
            Target::Delta(s) => s.route_kind(&table),
            Target::Zerobus(s) => s.route_kind(&table),
        };
        match kind {
            // With a table per object, the own place holds the dead letters.
            RouteKind::Own if self.template.is_none() => Ok(None),
            RouteKind::Own | RouteKind::DeadLetter => Err(format!(
                "routed to {table}, the dead-letter table; route events to a table of their own"
            )),
            RouteKind::Other => Ok(Some(table)),
        }
    }

    /// Writes rows to the configured target (`table = None`) or a routed table; rows that
    /// do not fit a typed table are left out and returned, to be dead-lettered.
    pub async fn write(&mut self, table: Option<&str>, rows: &[Row]) -> Result<Misfits, SinkError> {
        match &mut self.target {
            Target::Jsonl(s) => s.write_rows(table, rows).await,
            // Boxed: a Delta write or commit holds kilobytes of state while it runs, room
            // every subscription's flush would hold otherwise, whatever its sink.
            Target::Delta(s) => Box::pin(s.write(table, rows)).await,
            Target::Zerobus(s) => s.write(table, rows).await,
        }
    }

    /// Writes dead letters to the sink's own dead-letter place.
    pub async fn write_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        match &mut self.target {
            Target::Jsonl(s) => s.write_dead_letters(letters).await,
            Target::Delta(s) => Box::pin(s.write_dead_letters(letters)).await,
            Target::Zerobus(s) => s.write_dead_letters(letters).await,
        }
    }

    /// Says that these events (every one of a batch, however it ended) have been processed
    /// and their rows handed to `write`: the Delta sink stops holding rows for them.
    pub fn processed(&mut self, replay_ids: &[ReplayId]) {
        if let Target::Delta(s) = &mut self.target {
            s.processed(replay_ids);
        }
    }

    /// Makes everything written so far, to every table, durable, covering events up to
    /// `position` (recorded with the data by sinks that keep their checkpoint).
    pub async fn flush(&mut self, position: &ReplayId) -> Result<(), SinkError> {
        match &mut self.target {
            Target::Jsonl(s) => s.flush().await,
            Target::Delta(s) => Box::pin(s.flush(position)).await,
            Target::Zerobus(s) => s.flush().await,
        }
    }

    /// Rows the last flush found refused by the server (Zerobus), to dead-letter: they
    /// were not written, the others were.
    pub fn take_refused(&mut self) -> Vec<DeadLetter> {
        match &mut self.target {
            Target::Zerobus(s) => s.take_refused(),
            Target::Jsonl(_) | Target::Delta(_) => Vec::new(),
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
        let per_object: SinkSpec = "delta:./tables/sf_{object}".parse().unwrap();
        assert_eq!(per_object.object_template().as_deref(), Some("sf_{object}"));
        assert_eq!(
            per_object.opened(),
            SinkSpec::Delta("./tables/sf_dead_letter".into())
        );
        let jsonl: SinkSpec = "jsonl:out/{object}.jsonl".parse().unwrap();
        assert_eq!(jsonl.object_template().as_deref(), Some("{object}"));
        assert_eq!(
            "delta:./t/a".parse::<SinkSpec>().unwrap().object_template(),
            None
        );
        let zerobus: SinkSpec = "zerobus:main.sf.{object}".parse().unwrap();
        assert_eq!(zerobus.object_template().as_deref(), Some("{object}"));
        assert_eq!(
            zerobus.opened(),
            SinkSpec::Zerobus("main.sf.dead_letter".into())
        );
        for bad in ["delta:./{object}/events", "zerobus:main.{object}.t"] {
            let err = bad.parse::<SinkSpec>().unwrap_err().to_string();
            assert!(err.contains("{object}"), "{bad}: {err}");
        }
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
