//! Local Delta Lake tables (`delta:PATH_OR_URL`), exactly once.
//!
//! Rows are buffered per table and committed on `flush`. Each commit carries, atomically
//! with its data, a Delta application transaction (`txn`, app id = org + channel) whose
//! version counts flushes, and commit metadata `sfzb.replay_id` = the position it covers. On
//! start the table itself says where to resume, so a crash at any point loses nothing and
//! writes nothing twice:
//!
//! - crash before the commit: nothing of the flush is in the table, the checkpoint is the
//!   previous one, the events come again;
//! - crash after it: data and checkpoint are both there.
//!
//! Routed tables and the dead-letter table (`<table>_dead_letter`) commit first in a flush,
//! the main table last. A routed table whose last flush is newer than the main table's (a
//! crash between the two) skips the rows it already holds when they come again: up to and
//! including its own recorded replay id.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, BinaryBuilder, Int64Builder, ListBuilder, StringBuilder};
use deltalake::arrow::datatypes::Schema as ArrowSchema;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, ArrayType, DataType, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use futures::StreamExt;
use url::Url;

use crate::event::ReplayId;
use crate::sink::{DeadLetter, Row, SinkError};

const REPLAY_KEY: &str = "sfzb.replay_id";
const APP_KEY: &str = "sfzb.app_id";

fn error(target: &Url, e: impl std::fmt::Display) -> SinkError {
    SinkError::Delta {
        target: target.to_string(),
        detail: e.to_string(),
    }
}

/// Object stores are registered with delta-rs once per process (feature `cloud`).
fn register_object_stores() {
    #[cfg(feature = "cloud")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            deltalake::aws::register_handlers(None);
            deltalake::azure::register_handlers(None);
            deltalake::gcp::register_handlers(None);
        });
    }
}

/// `PATH` (created if missing) or an object store URL, as a URL.
pub fn table_url(path_or_url: &str) -> Result<Url, String> {
    if path_or_url.contains("://") {
        register_object_stores();
        return Url::parse(path_or_url).map_err(|e| e.to_string());
    }
    let path = std::path::Path::new(path_or_url);
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {path_or_url}: {e}"))?;
    let absolute = path.canonicalize().map_err(|e| e.to_string())?;
    Url::from_directory_path(&absolute)
        .map_err(|_| format!("{} is not an absolute path", absolute.display()))
}

/// A sibling table's URL: `…/account_events/` → `…/<name>/`.
fn sibling(url: &Url, name: &str) -> Url {
    let mut out = url.clone();
    let trimmed = url.path().trim_end_matches('/');
    let parent = trimmed.rsplit_once('/').map_or("", |(p, _)| p);
    out.set_path(&format!("{parent}/{name}/"));
    out
}

fn last_segment(url: &Url) -> String {
    url.path()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("table")
        .to_string()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rows,
    DeadLetters,
}

fn columns(kind: Kind) -> Vec<StructField> {
    let string = |n: &str| StructField::new(n, DataType::STRING, true);
    let long = |n: &str| StructField::new(n, DataType::LONG, true);
    let list = |n: &str| {
        StructField::new(
            n,
            DataType::Array(Box::new(ArrayType::new(DataType::STRING, true))),
            true,
        )
    };
    match kind {
        Kind::Rows => vec![
            string("event_id"),
            string("schema_id"),
            string("replay_id"),
            long("timestamp"),
            string("change_type"),
            string("entity_name"),
            string("change_origin"),
            list("record_ids"),
            list("changed_fields"),
            list("nulled_fields"),
            list("diff_fields"),
            string("record_data_json"),
            StructField::new("payload_binary", DataType::BINARY, true),
            string("schema_json"),
            string("org_id"),
            long("processed_timestamp"),
        ],
        Kind::DeadLetters => vec![
            string("stage"),
            string("error"),
            string("org_id"),
            string("channel"),
            string("replay_id"),
            string("event_id"),
            string("schema_id"),
            StructField::new("payload", DataType::BINARY, true),
            long("dead_lettered_at"),
        ],
    }
}

struct Table {
    url: Url,
    table: DeltaTable,
    writer: RecordBatchWriter,
    schema: Arc<ArrowSchema>,
    buffered: usize,
    /// The replay id of the last row buffered since the last commit.
    last: Option<String>,
    /// Flush counter and replay id of the newest commit of ours.
    committed: Option<(i64, String)>,
    /// Rows up to and including this replay id are already in the table (see module doc).
    skip_until: Option<String>,
}

impl Table {
    async fn open(url: Url, kind: Kind, app_id: &str) -> Result<Table, SinkError> {
        if let Ok(path) = url.to_file_path() {
            std::fs::create_dir_all(&path).map_err(|e| error(&url, e))?;
        }
        let mut table = DeltaTable::try_from_url(url.clone())
            .await
            .map_err(|e| error(&url, e))?;
        if table.version().is_none() {
            table = table
                .create()
                .with_table_name(last_segment(&url))
                .with_comment(match kind {
                    Kind::Rows => "Salesforce Change Data Capture events (sfzb-host)",
                    Kind::DeadLetters => {
                        "Events sfzb-host could not deliver, with the reason (sfzb-host)"
                    }
                })
                .with_columns(columns(kind))
                .await
                .map_err(|e| error(&url, e))?;
            tracing::info!(table = %url, "Created Delta table.");
        }
        let committed = committed(&table, app_id)
            .await
            .map_err(|e| error(&url, e))?;
        let writer = RecordBatchWriter::for_table(&table).map_err(|e| error(&url, e))?;
        let schema = writer.arrow_schema();
        Ok(Table {
            url,
            table,
            writer,
            schema,
            buffered: 0,
            last: None,
            committed,
            skip_until: None,
        })
    }

    async fn write(
        &mut self,
        batch: RecordBatch,
        rows: usize,
        last: Option<String>,
    ) -> Result<(), SinkError> {
        if rows == 0 {
            return Ok(());
        }
        self.writer
            .write(batch)
            .await
            .map_err(|e| error(&self.url, e))?;
        self.buffered += rows;
        if last.is_some() {
            self.last = last;
        }
        Ok(())
    }

    /// Commits what is buffered (or, with `force`, an empty commit that only moves the
    /// checkpoint) as flush `version` covering events up to `position`.
    async fn commit(
        &mut self,
        app_id: &str,
        version: i64,
        position: &str,
        force: bool,
    ) -> Result<(), SinkError> {
        if self.buffered == 0 && !force {
            return Ok(());
        }
        let adds: Vec<Action> = self
            .writer
            .flush()
            .await
            .map_err(|e| error(&self.url, e))?
            .into_iter()
            .map(Action::Add)
            .collect();
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(app_id, version))
            .with_metadata([
                (
                    REPLAY_KEY.to_string(),
                    serde_json::Value::String(position.to_string()),
                ),
                (
                    APP_KEY.to_string(),
                    serde_json::Value::String(app_id.to_string()),
                ),
            ]);
        let snapshot = self.table.snapshot().map_err(|e| error(&self.url, e))?;
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let finalized = CommitBuilder::from(properties)
            .with_actions(adds)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await
            .map_err(|e| error(&self.url, e))?;
        self.table.state = Some(finalized.snapshot());
        self.committed = Some((version, position.to_string()));
        self.buffered = 0;
        self.last = None;
        Ok(())
    }
}

/// The newest commit of `app_id`: its flush counter and the replay id it covers.
async fn committed(
    table: &DeltaTable,
    app_id: &str,
) -> Result<Option<(i64, String)>, DeltaTableError> {
    let Some(version) = table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?
    else {
        return Ok(None);
    };
    let mut history = table.history(None);
    while let Some(info) = history.next().await {
        let info = info?;
        // Several subscriptions may write one table: take this writer's newest commit.
        if info.info.get(APP_KEY).and_then(|v| v.as_str()) != Some(app_id) {
            continue;
        }
        if let Some(replay) = info.info.get(REPLAY_KEY).and_then(|v| v.as_str()) {
            return Ok(Some((version, replay.to_string())));
        }
    }
    Err(DeltaTableError::Generic(format!(
        "transaction {app_id} has no {REPLAY_KEY} in the table history"
    )))
}

/// The Delta sink: the main table, routed sibling tables, and the dead-letter table.
pub struct DeltaSink {
    url: Url,
    app_id: String,
    main: Table,
    others: HashMap<String, Table>,
    /// The highest flush counter seen in any of our tables.
    version: i64,
    /// The main table's position at start: where to resume.
    resume: Option<ReplayId>,
}

impl DeltaSink {
    /// Opens (or creates) the table. `app_id` identifies the writer (org and channel).
    pub async fn open(target: &str, app_id: String) -> Result<DeltaSink, SinkError> {
        let url = table_url(target).map_err(|detail| SinkError::Delta {
            target: target.to_string(),
            detail,
        })?;
        let main = Table::open(url.clone(), Kind::Rows, &app_id).await?;
        let (version, resume) = match &main.committed {
            Some((version, replay)) => {
                let id = ReplayId::from_hex(replay)
                    .map_err(|e| error(&url, format!("{REPLAY_KEY} {replay:?}: {e}")))?;
                (*version, Some(id))
            }
            None => (0, None),
        };
        Ok(DeltaSink {
            url,
            app_id,
            main,
            others: HashMap::new(),
            version,
            resume,
        })
    }

    /// Where the table's own checkpoint says to resume.
    pub fn checkpoint(&self) -> Option<ReplayId> {
        self.resume.clone()
    }

    async fn other(&mut self, name: &str, kind: Kind) -> Result<&mut Table, SinkError> {
        if !self.others.contains_key(name) {
            let mut table = Table::open(sibling(&self.url, name), kind, &self.app_id).await?;
            let main_version = self.main.committed.as_ref().map_or(0, |(v, _)| *v);
            if let Some((version, replay)) = &table.committed {
                if *version > main_version {
                    tracing::info!(table = %table.url, replay_id = %replay, "Table is ahead of the checkpoint; skipping the rows it already holds.");
                    table.skip_until = Some(replay.clone());
                }
                self.version = self.version.max(*version);
            }
            self.others.insert(name.to_string(), table);
        }
        Ok(self.others.get_mut(name).expect("inserted above"))
    }

    pub async fn write(&mut self, table: Option<&str>, rows: &[Row]) -> Result<(), SinkError> {
        match table {
            None => {
                let batch =
                    rows_batch(&self.main.schema, rows).map_err(|e| error(&self.main.url, e))?;
                self.main
                    .write(batch, rows.len(), rows.last().map(|r| r.replay_id.clone()))
                    .await
            }
            Some(name) => {
                let target = self.other(name, Kind::Rows).await?;
                let rows = skip_held(target, rows, |r| &r.replay_id);
                let batch = rows_batch(&target.schema, rows).map_err(|e| error(&target.url, e))?;
                target
                    .write(batch, rows.len(), rows.last().map(|r| r.replay_id.clone()))
                    .await
            }
        }
    }

    pub async fn write_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let name = format!("{}_dead_letter", last_segment(&self.url));
        let target = self.other(&name, Kind::DeadLetters).await?;
        let letters = skip_held(target, letters, |l| &l.replay_id);
        let batch = letters_batch(&target.schema, letters).map_err(|e| error(&target.url, e))?;
        target
            .write(
                batch,
                letters.len(),
                letters.last().map(|l| l.replay_id.clone()),
            )
            .await
    }

    /// Commits every table that has rows, the main table last (always, to record `position`).
    pub async fn flush(&mut self, position: &ReplayId) -> Result<(), SinkError> {
        let version = self.version + 1;
        let hex = position.to_hex();
        for table in self.others.values_mut() {
            table.commit(&self.app_id, version, &hex, false).await?;
        }
        self.main.commit(&self.app_id, version, &hex, true).await?;
        self.version = version;
        Ok(())
    }
}

/// The rows not yet held by a table that is ahead of the checkpoint.
fn skip_held<'a, T>(table: &mut Table, items: &'a [T], replay: impl Fn(&T) -> &String) -> &'a [T] {
    let Some(until) = table.skip_until.clone() else {
        return items;
    };
    match items.iter().position(|i| *replay(i) == until) {
        Some(i) => {
            table.skip_until = None;
            &items[i + 1..]
        }
        None => &[],
    }
}

fn cast(
    array: ArrayRef,
    schema: &ArrowSchema,
    index: usize,
) -> Result<ArrayRef, deltalake::arrow::error::ArrowError> {
    let target = schema.field(index).data_type();
    if array.data_type() == target {
        Ok(array)
    } else {
        deltalake::arrow::compute::cast(&array, target)
    }
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    let mut b = StringBuilder::new();
    values.for_each(|v| b.append_value(v));
    Arc::new(b.finish())
}

fn longs(values: impl Iterator<Item = i64>) -> ArrayRef {
    let mut b = Int64Builder::new();
    values.for_each(|v| b.append_value(v));
    Arc::new(b.finish())
}

fn lists<'a>(values: impl Iterator<Item = &'a Vec<String>>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for list in values {
        list.iter().for_each(|v| b.values().append_value(v));
        b.append(true);
    }
    Arc::new(b.finish())
}

fn binaries<'a>(values: impl Iterator<Item = &'a [u8]>) -> ArrayRef {
    let mut b = BinaryBuilder::new();
    values.for_each(|v| b.append_value(v));
    Arc::new(b.finish())
}

fn batch(
    schema: &Arc<ArrowSchema>,
    arrays: Vec<ArrayRef>,
) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let arrays = arrays
        .into_iter()
        .enumerate()
        .map(|(i, a)| cast(a, schema, i))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), arrays)
}

fn rows_batch(
    schema: &Arc<ArrowSchema>,
    rows: &[Row],
) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    batch(
        schema,
        vec![
            strings(rows.iter().map(|r| r.event.event_id.as_str())),
            strings(rows.iter().map(|r| r.schema().id.as_str())),
            strings(rows.iter().map(|r| r.replay_id.as_str())),
            longs(rows.iter().map(Row::timestamp)),
            strings(rows.iter().map(Row::change_type)),
            strings(rows.iter().map(|r| r.event.header.entity_name.as_str())),
            strings(rows.iter().map(|r| r.event.header.change_origin.as_str())),
            lists(rows.iter().map(|r| &r.event.header.record_ids)),
            lists(rows.iter().map(|r| &r.event.header.changed_fields)),
            lists(rows.iter().map(|r| &r.event.header.nulled_fields)),
            lists(rows.iter().map(|r| &r.event.header.diff_fields)),
            strings(rows.iter().map(|r| r.record_data_json.as_str())),
            binaries(rows.iter().map(|r| &r.event.payload[..])),
            strings(rows.iter().map(|r| r.schema().json.as_str())),
            strings(rows.iter().map(|r| &*r.event.org_id)),
            longs(rows.iter().map(|r| r.processed_timestamp)),
        ],
    )
}

fn letters_batch(
    schema: &Arc<ArrowSchema>,
    letters: &[DeadLetter],
) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let stages: Vec<String> = letters.iter().map(|l| l.stage.label()).collect();
    batch(
        schema,
        vec![
            strings(stages.iter().map(String::as_str)),
            strings(letters.iter().map(|l| l.error.as_str())),
            strings(letters.iter().map(|l| l.org_id.as_str())),
            strings(letters.iter().map(|l| l.channel.as_str())),
            strings(letters.iter().map(|l| l.replay_id.as_str())),
            strings(letters.iter().map(|l| l.event_id.as_str())),
            strings(letters.iter().map(|l| l.schema_id.as_str())),
            binaries(letters.iter().map(|l| l.payload.as_slice())),
            longs(letters.iter().map(|l| l.dead_lettered_at)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_share_the_parent() {
        let url = Url::parse("file:///data/tables/account_events/").unwrap();
        assert_eq!(sibling(&url, "emea").as_str(), "file:///data/tables/emea/");
        assert_eq!(last_segment(&url), "account_events");
        let s3 = Url::parse("s3://bucket/lake/accounts").unwrap();
        assert_eq!(
            sibling(&s3, "accounts_dead_letter").as_str(),
            "s3://bucket/lake/accounts_dead_letter/"
        );
    }
}
