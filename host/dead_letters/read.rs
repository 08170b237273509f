//! Dead letters read back from where a sink wrote them: a dead-letter file (JSON lines, as
//! the jsonl sink writes them) or a dead-letter Delta table (its current version).

use std::path::PathBuf;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::DataType;

use super::ReplayError;
use crate::sink::{DeadLetter, Stage};

/// Where dead letters are read from, as `--from` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `jsonl:PATH`.
    Jsonl(PathBuf),
    /// `delta:PATH_OR_URL`.
    Delta(String),
}

impl std::str::FromStr for Source {
    type Err = ReplayError;

    fn from_str(spec: &str) -> Result<Source, ReplayError> {
        let bad = |fix: &str| ReplayError::From {
            spec: spec.to_string(),
            fix: fix.to_string(),
        };
        match spec.split_once(':') {
            Some(("jsonl", "" | "-")) => Err(bad(
                "name the dead-letter file: jsonl:PATH (standard input cannot be read twice, and the ledger needs a place)",
            )),
            Some(("jsonl", path)) => Ok(Source::Jsonl(PathBuf::from(path))),
            Some(("delta", "")) => Err(bad("name the dead-letter table: delta:PATH_OR_URL")),
            Some(("delta", table)) => Ok(Source::Delta(table.to_string())),
            _ => Err(bad(
                "write it as jsonl:PATH (a dead-letter file) or delta:PATH (a dead-letter table); a Zerobus dead-letter table is read as Delta from its storage location",
            )),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Jsonl(path) => write!(f, "jsonl:{}", path.display()),
            Source::Delta(table) => write!(f, "delta:{table}"),
        }
    }
}

impl Source {
    /// The ledger's default place: beside the dead letters; a remote table needs one named.
    pub fn default_ledger(&self) -> Result<PathBuf, ReplayError> {
        let mut path = match self {
            Source::Jsonl(path) => path.clone().into_os_string(),
            Source::Delta(table) if table.contains("://") => {
                return Err(ReplayError::From {
                    spec: self.to_string(),
                    fix: "a remote table has no place beside it for the ledger of what was replayed; give one with --ledger PATH".into(),
                });
            }
            Source::Delta(table) => PathBuf::from(table.trim_end_matches('/')).into_os_string(),
        };
        path.push(".replayed");
        Ok(PathBuf::from(path))
    }

    /// Every dead letter, in the order written.
    pub async fn read(&self) -> Result<Vec<DeadLetter>, ReplayError> {
        match self {
            Source::Jsonl(path) => read_jsonl(path),
            Source::Delta(table) => read_delta(table).await.map_err(|detail| ReplayError::Read {
                from: self.to_string(),
                detail,
            }),
        }
    }
}

fn read_jsonl(path: &PathBuf) -> Result<Vec<DeadLetter>, ReplayError> {
    let from = format!("jsonl:{}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| ReplayError::Read {
        from: from.clone(),
        detail: e.to_string(),
    })?;
    // A crash mid-write leaves a torn last line, which the sink cuts when it opens the file
    // again: not a letter yet.
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    if whole < text.len() {
        tracing::warn!(from = %from, "The last line of the dead letters is incomplete (a write cut short); passed by.");
    }
    let mut letters = Vec::new();
    for (n, line) in text[..whole].lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let letter = serde_json::from_str(line).map_err(|e| ReplayError::Read {
            from: from.clone(),
            detail: format!(
                "line {}: {e}; a dead letter has stage, error, org_id, channel, replay_id, event_id, schema_id and payload",
                n + 1
            ),
        })?;
        letters.push(letter);
    }
    Ok(letters)
}

async fn read_delta(table: &str) -> Result<Vec<DeadLetter>, String> {
    let url = if table.contains("://") {
        crate::sink::delta::table_url(table)?
    } else {
        let path = std::path::Path::new(table)
            .canonicalize()
            .map_err(|e| format!("{table}: {e}"))?;
        url::Url::from_directory_path(&path)
            .map_err(|_| format!("{} is not a directory", path.display()))?
    };
    let table = deltalake::open_table(url)
        .await
        .map_err(|e| e.to_string())?;
    let store = table.object_store();
    let files: Vec<_> = table
        .snapshot()
        .map_err(|e| e.to_string())?
        .log_data()
        .into_iter()
        .map(|file| file.object_store_path())
        .collect();
    let mut letters = Vec::new();
    for location in files {
        let reader = crate::sink::delta::parquet_file(&store, &location)
            .await?
            .build()
            .map_err(|e| format!("{location}: {e}"))?;
        for batch in reader {
            let batch = batch.map_err(|e| format!("{location}: {e}"))?;
            letters.extend(letters_of(&batch).map_err(|e| format!("{location}: {e}"))?);
        }
    }
    // Files come in no particular order; each subscription's letters by position.
    letters.sort_by(|a, b| {
        (&a.org_id, &a.channel, &a.replay_id).cmp(&(&b.org_id, &b.channel, &b.replay_id))
    });
    Ok(letters)
}

/// The dead letters of one batch of the dead-letter table's rows.
fn letters_of(
    batch: &deltalake::arrow::record_batch::RecordBatch,
) -> Result<Vec<DeadLetter>, String> {
    let column = |name: &str, to: &DataType| {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name}: not a dead-letter table"))?;
        deltalake::arrow::compute::cast(column, to).map_err(|e| format!("column {name}: {e}"))
    };
    let text = |name: &str| column(name, &DataType::Utf8);
    let (stage, error, org, channel) = (
        text("stage")?,
        text("error")?,
        text("org_id")?,
        text("channel")?,
    );
    let (replay, event, schema) = (text("replay_id")?, text("event_id")?, text("schema_id")?);
    let payload = column("payload", &DataType::Binary)?;
    let at = column("dead_lettered_at", &DataType::Int64)?;
    let (payload, at) = (
        payload.as_binary::<i32>(),
        at.as_primitive::<deltalake::arrow::datatypes::Int64Type>(),
    );
    let value = |array: &deltalake::arrow::array::ArrayRef, i: usize| {
        let strings = array.as_string::<i32>();
        match strings.is_null(i) {
            true => String::new(),
            false => strings.value(i).to_string(),
        }
    };
    (0..batch.num_rows())
        .map(|i| {
            let label = value(&stage, i);
            Ok(DeadLetter {
                stage: Stage::from_label(&label).ok_or_else(|| {
                    format!("stage {label:?} is not decode, transform:NAME or write")
                })?,
                error: value(&error, i),
                org_id: value(&org, i),
                channel: value(&channel, i),
                replay_id: value(&replay, i),
                event_id: value(&event, i),
                schema_id: value(&schema, i),
                payload: match payload.is_null(i) {
                    true => Vec::new(),
                    false => payload.value(i).to_vec(),
                },
                dead_lettered_at: match at.is_null(i) {
                    true => 0,
                    false => at.value(i),
                },
            })
        })
        .collect()
}
