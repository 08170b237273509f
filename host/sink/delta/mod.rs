//! Local Delta Lake tables (`delta:PATH_OR_URL`), exactly once in every table a
//! subscription writes: the main table, routed sibling tables, and the dead-letter table
//! (`<table>_dead_letter`).
//!
//! Rows are buffered per table and committed on `flush`: the siblings first, the main table
//! last. Every commit carries, atomically with its data, a Delta application transaction
//! (`txn`, app id = org + channel) whose version counts flushes and is never reused, and
//! commit metadata `sfzb.replay_id` = the position the flush covers. The main table's commit
//! is the checkpoint. It also records the siblings this writer has ever committed to
//! (`sfzb.tables`) and the sibling rows it knows are ahead of it (`sfzb.held`).
//!
//! A crash between a sibling's commit and the main table's leaves rows in the sibling for
//! events the checkpoint does not cover; they come again on restart. On open, every known
//! sibling is opened and its commits of ours with a flush counter above the main table's
//! are read back: the replay ids of their rows are *held*. A held event's rows are skipped
//! when it comes again (in that table only), and the id is released once its event has been
//! processed again. Held ids not yet released travel in every main commit, so a second crash
//! before they come again forgets none. This is by event identity, not by order: replay ids
//! are opaque, and the flush position is often not a row of the sibling at all.
//!
//! A sibling is added to `sfzb.tables` by a main commit of its own (no data, no txn) before
//! its first data commit, so a crash can never leave a sibling the main table does not name.

mod batches;
mod recovery;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::arrow::datatypes::Schema as ArrowSchema;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, ArrayType, DataType, StructField, Transaction};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use url::Url;

use batches::{TypedRows, batch};
pub(crate) use recovery::parquet_file;
use recovery::{recorded, rows_after};

use crate::event::ReplayId;
use crate::sink::columns::{self, Column, Type};
use crate::sink::typed::{HEADER, Storage, TypedColumn, TypedTable};
use crate::sink::{DeadLetter, Layout, Misfits, RouteKind, Row, SinkError};

const REPLAY_KEY: &str = "sfzb.replay_id";
const APP_KEY: &str = "sfzb.app_id";
const TABLES_KEY: &str = "sfzb.tables";
const HELD_KEY: &str = "sfzb.held";

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
    /// The reference layout's 16 columns.
    Rows,
    /// A typed table: the header columns, then a column per field seen so far.
    Typed,
    DeadLetters,
}

/// A typed column's Delta type.
pub(crate) fn delta_type(storage: Storage) -> DataType {
    match storage {
        Storage::Text => DataType::STRING,
        Storage::Int => DataType::INTEGER,
        Storage::Long => DataType::LONG,
        Storage::Double => DataType::DOUBLE,
        Storage::Bool => DataType::BOOLEAN,
        Storage::Bytes => DataType::BINARY,
        Storage::Date => DataType::DATE,
        Storage::Timestamp => DataType::TIMESTAMP,
        Storage::TextList => DataType::Array(Box::new(ArrayType::new(DataType::STRING, true))),
    }
}

/// A stored column's storage, if it is one a typed table has.
fn storage_of(ty: &DataType) -> Option<Storage> {
    Storage::ALL.into_iter().find(|s| &delta_type(*s) == ty)
}

/// The table's columns, from their one definition in [`crate::sink::columns`] (a typed
/// table starts with the header's and gains the fields' with its first rows).
fn columns(kind: Kind) -> Vec<StructField> {
    let columns: &[Column] = match kind {
        Kind::Rows => &columns::ROW,
        Kind::DeadLetters => &columns::DEAD_LETTER,
        Kind::Typed => {
            return HEADER
                .iter()
                .map(|(name, storage, _)| StructField::new(*name, delta_type(*storage), true))
                .collect();
        }
    };
    columns
        .iter()
        .map(|c| {
            let ty = match c.ty {
                Type::Text => DataType::STRING,
                Type::Long => DataType::LONG,
                Type::TextList => DataType::Array(Box::new(ArrayType::new(DataType::STRING, true))),
                Type::Bytes => DataType::BINARY,
            };
            StructField::new(c.name, ty, true)
        })
        .collect()
}

/// Sibling table → replay ids of rows it already holds for events the checkpoint does not cover.
type Held = BTreeMap<String, BTreeSet<String>>;

/// The typed columns of a typed table, refusing a table of the other layout: rows of one
/// layout written into the other's table would be unreadable.
fn layout_of(table: &DeltaTable, kind: Kind) -> Result<Option<TypedTable>, String> {
    let schema = table.snapshot().map_err(|e| e.to_string())?.schema();
    let has = |name: &str| schema.fields().any(|f| f.name() == name);
    match kind {
        Kind::Typed => {
            for (name, storage, _) in HEADER {
                let field = schema.fields().find(|f| f.name() == name);
                if field.is_none_or(|f| f.data_type() != &delta_type(storage)) {
                    return Err(format!(
                        "the table is not a typed table (its column {name} is missing or not {}): write the typed layout to a new table, or set layout = \"reference\"",
                        storage.sql()
                    ));
                }
            }
            let columns = schema
                .fields()
                .filter_map(|f| {
                    Some(TypedColumn {
                        name: f.name().as_str().into(),
                        storage: storage_of(f.data_type())?,
                    })
                })
                .collect();
            Ok(Some(TypedTable::with_columns(columns)))
        }
        Kind::Rows if !has("record_data_json") => Err(
            "the table is not a reference-layout table (it has no record_data_json column): write to a new table, or set layout = \"typed\" if it is a typed table".into(),
        ),
        Kind::Rows | Kind::DeadLetters => Ok(None),
    }
}

struct Table {
    url: Url,
    table: DeltaTable,
    writer: RecordBatchWriter,
    schema: Arc<ArrowSchema>,
    buffered: usize,
    /// Our application transaction's version here: the last flush this table took part in.
    txn: Option<i64>,
    /// A typed table's columns and plans.
    typed: Option<TypedTable>,
    /// A typed table's rows since the last flush (a reference table's are in `writer`).
    pending: TypedRows,
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
                    Kind::Typed => {
                        "Salesforce Change Data Capture events, a column per field (sfzb-host, typed layout)"
                    }
                    Kind::DeadLetters => {
                        "Events sfzb-host could not deliver, with the reason (sfzb-host)"
                    }
                })
                .with_columns(columns(kind))
                .await
                .map_err(|e| error(&url, e))?;
            tracing::info!(table = %url, "Created Delta table.");
        }
        let txn = table
            .snapshot()
            .map_err(|e| error(&url, e))?
            .transaction_version(table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| error(&url, e))?;
        let typed = layout_of(&table, kind).map_err(|e| error(&url, e))?;
        let writer = RecordBatchWriter::for_table(&table)
            .map_err(|e| error(&url, e))?
            .with_writer_properties(writer_properties());
        let schema = writer.arrow_schema();
        Ok(Table {
            url,
            table,
            writer,
            schema,
            buffered: 0,
            txn,
            typed,
            pending: TypedRows::default(),
        })
    }

    /// Adds a typed table's new columns in a commit of their own, before any row has them.
    async fn add_columns(&mut self, added: &[TypedColumn]) -> Result<(), SinkError> {
        let fields: Vec<StructField> = added
            .iter()
            .map(|c| StructField::new(c.name.to_string(), delta_type(c.storage), true))
            .collect();
        self.table = self
            .table
            .clone()
            .add_columns()
            .with_fields(fields)
            .await
            .map_err(|e| error(&self.url, e))?;
        let names: Vec<&str> = added.iter().map(|c| &*c.name).collect();
        tracing::info!(table = %self.url, columns = %names.join(","), "Added columns for a new writer schema.");
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch, rows: usize) -> Result<(), SinkError> {
        if rows == 0 {
            return Ok(());
        }
        self.writer
            .write_with_mode(batch, WriteMode::Default)
            .await
            .map_err(|e| error(&self.url, e))?;
        self.buffered += rows;
        Ok(())
    }

    /// Hands a typed table's pending rows to the Parquet writer.
    async fn write_pending(&mut self) -> Result<(), SinkError> {
        if self.pending.len() == 0 {
            return Ok(());
        }
        let columns = self.typed.as_ref().map_or(&[][..], TypedTable::columns);
        let (batch, widens) = self
            .pending
            .finish(&self.writer.arrow_schema(), columns)
            .map_err(|e| error(&self.url, e))?;
        let mode = match widens {
            true => WriteMode::MergeSchema,
            false => WriteMode::Default,
        };
        self.writer
            .write_with_mode(batch, mode)
            .await
            .map_err(|e| error(&self.url, e))
    }

    /// One commit: the buffered rows (with `data`; without, none: an intent commit leaves
    /// them buffered), our transaction at `txn`, and `metadata`.
    async fn commit(
        &mut self,
        app_id: &str,
        txn: i64,
        metadata: serde_json::Map<String, serde_json::Value>,
        data: bool,
    ) -> Result<(), SinkError> {
        if data {
            self.write_pending().await?;
        }
        let adds: Vec<Action> = if data {
            self.writer
                .flush()
                .await
                .map_err(|e| error(&self.url, e))?
                .into_iter()
                .map(Action::Add)
                .collect()
        } else {
            Vec::new()
        };
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(app_id, txn))
            .with_metadata(metadata);
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
        self.txn = Some(txn);
        if data {
            self.buffered = 0;
        }
        Ok(())
    }
}

/// Parquet as delta-rs writes it (Snappy), except that columns unique to each event skip
/// the dictionary: every value would be a new entry, hashed and then thrown away.
fn writer_properties() -> WriterProperties {
    let unique = ["replay_id", "event_id"];
    unique
        .into_iter()
        .fold(
            WriterProperties::builder().set_compression(Compression::SNAPPY),
            |builder, column| {
                builder.set_column_dictionary_enabled(ColumnPath::from(column), false)
            },
        )
        .build()
}

/// A typed table's rows wait in Arrow builders up to this many, then go to the Parquet
/// writer as one batch: enough that its per-column work is spread thin, few enough that the
/// builders of a busy stream stay around ten megabytes.
const PENDING_ROWS: usize = 8192;

/// The Delta sink: the main table, routed sibling tables, and the dead-letter table.
pub struct DeltaSink {
    url: Url,
    app_id: String,
    layout: Layout,
    /// A table per object: the main table is the dead-letter table.
    per_object: bool,
    main: Table,
    others: HashMap<String, Table>,
    /// The siblings the main table names (`sfzb.tables`).
    known: BTreeSet<String>,
    /// The highest flush counter seen in any of our tables; the next flush is one above.
    version: i64,
    /// The main table's flush counter at open: sibling commits above it are not covered.
    start_version: i64,
    /// The checkpoint: the position of the newest main commit.
    position: Option<String>,
    /// Where the table said to resume at open.
    resume: Option<ReplayId>,
    held: Held,
    /// `held` as the newest main commit records it (what an intent commit repeats).
    committed_held: Held,
}

impl DeltaSink {
    /// Opens (or creates) the table and every sibling it names. `app_id` identifies the
    /// writer (org and channel).
    pub async fn open(
        target: &str,
        app_id: String,
        layout: Layout,
        per_object: bool,
    ) -> Result<DeltaSink, SinkError> {
        let url = table_url(target).map_err(|detail| SinkError::Delta {
            target: target.to_string(),
            detail,
        })?;
        let kind = match (per_object, layout) {
            (true, _) => Kind::DeadLetters,
            (false, Layout::Reference) => Kind::Rows,
            (false, Layout::Typed) => Kind::Typed,
        };
        let main = Table::open(url.clone(), kind, &app_id).await?;
        let recorded = recorded(&main.table, &app_id)
            .await
            .map_err(|e| error(&url, e))?;
        let (version, position) = recorded.checkpoint.unzip();
        let version = version.unwrap_or(0);
        let resume = match &position {
            Some(replay) => Some(
                ReplayId::from_hex(replay)
                    .map_err(|e| error(&url, format!("{REPLAY_KEY} {replay:?}: {e}")))?,
            ),
            None => None,
        };
        let mut sink = DeltaSink {
            url,
            app_id,
            layout,
            per_object,
            main,
            others: HashMap::new(),
            known: recorded.tables.clone(),
            version,
            start_version: version,
            position,
            resume,
            committed_held: recorded.held.clone(),
            held: recorded.held,
        };
        for name in &recorded.tables {
            sink.open_sibling(name).await?;
        }
        Ok(sink)
    }

    /// Where the table's own checkpoint says to resume.
    pub fn checkpoint(&self) -> Option<ReplayId> {
        self.resume.clone()
    }

    /// A route to the main table's own name, or to its dead-letter table's.
    pub fn route_kind(&self, table: &str) -> RouteKind {
        if table == last_segment(&self.url) {
            RouteKind::Own
        } else if table == self.dead_letter_name() {
            RouteKind::DeadLetter
        } else {
            RouteKind::Other
        }
    }

    fn dead_letter_name(&self) -> String {
        if self.per_object {
            return last_segment(&self.url);
        }
        format!("{}_dead_letter", last_segment(&self.url))
    }

    /// Opens a sibling and holds the rows it has past the checkpoint.
    async fn open_sibling(&mut self, name: &str) -> Result<(), SinkError> {
        let kind = match self.layout {
            _ if name == self.dead_letter_name() => Kind::DeadLetters,
            Layout::Reference => Kind::Rows,
            Layout::Typed => Kind::Typed,
        };
        let table = Table::open(sibling(&self.url, name), kind, &self.app_id).await?;
        if let Some(txn) = table.txn {
            self.version = self.version.max(txn);
            if txn > self.start_version {
                let ids = rows_after(&table.table, &self.app_id, self.start_version)
                    .await
                    .map_err(|e| error(&table.url, e))?;
                tracing::info!(table = %table.url, rows = ids.len(), "Table holds rows past the checkpoint; skipping them when their events come again.");
                self.held.entry(name.to_string()).or_default().extend(ids);
            }
        }
        self.others.insert(name.to_string(), table);
        Ok(())
    }

    /// A sibling, opened on first use, and what it already holds.
    async fn other(
        &mut self,
        name: &str,
    ) -> Result<(&mut Table, Option<&BTreeSet<String>>), SinkError> {
        if !self.others.contains_key(name) {
            self.open_sibling(name).await?;
        }
        let table = self.others.get_mut(name).expect("opened above");
        Ok((table, self.held.get(name)))
    }

    /// Buffers rows for the next flush; a typed table first gets the columns of new
    /// fields (a schema change commit), and rows whose fields changed type are returned.
    pub async fn write(&mut self, table: Option<&str>, rows: &[Row]) -> Result<Misfits, SinkError> {
        let (target, held) = match table {
            None => (&mut self.main, None),
            Some(name) => self.other(name).await?,
        };
        let rows: Vec<(usize, &Row)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| held.is_none_or(|h| !h.contains(&r.replay_id)))
            .collect();
        let Some(typed) = target.typed.as_mut() else {
            let rows: Vec<&Row> = rows.into_iter().map(|(_, r)| r).collect();
            let batch = batch(&target.schema, &rows).map_err(|e| error(&target.url, e))?;
            target.write(batch, rows.len()).await?;
            return Ok(Vec::new());
        };
        let mut misfits = Vec::new();
        let mut planned = Vec::with_capacity(rows.len());
        for (i, row) in rows {
            match typed.plan(&row.event.schema) {
                Ok(plan) => planned.push((plan, row)),
                Err(misfit) => misfits.push((i, misfit)),
            }
        }
        let added = typed.take_added();
        if !added.is_empty() {
            // Should this fail, the table has columns the plans do not know: the error
            // restarts the subscription, which reads them back.
            target.add_columns(&added).await?;
        }
        // The rows wait for the flush, which writes them after the columns they need.
        let columns = target.typed.as_ref().map_or(&[][..], TypedTable::columns);
        for (plan, row) in &planned {
            target.pending.push(columns, plan, row);
        }
        target.buffered += planned.len();
        if target.pending.len() >= PENDING_ROWS {
            target.write_pending().await?;
        }
        Ok(misfits)
    }

    pub async fn write_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let (target, held) = match self.per_object {
            true => (&mut self.main, None),
            false => {
                let name = self.dead_letter_name();
                self.other(&name).await?
            }
        };
        let letters: Vec<&DeadLetter> = letters
            .iter()
            .filter(|l| held.is_none_or(|h| !h.contains(&l.replay_id)))
            .collect();
        let batch = batch(&target.schema, &letters).map_err(|e| error(&target.url, e))?;
        target.write(batch, letters.len()).await
    }

    /// These events have been processed again (written, routed, dead-lettered or dropped):
    /// rows held for them have served their purpose.
    pub fn processed(&mut self, replay_ids: &[ReplayId]) {
        if self.held.is_empty() {
            return;
        }
        for id in replay_ids.iter().map(ReplayId::to_hex) {
            self.held.values_mut().for_each(|h| {
                h.remove(&id);
            });
        }
        self.held.retain(|_, h| !h.is_empty());
    }

    fn metadata(&self, held: &Held) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut metadata = serde_json::Map::new();
        metadata.insert(APP_KEY.into(), Value::String(self.app_id.clone()));
        if let Some(position) = &self.position {
            metadata.insert(REPLAY_KEY.into(), Value::String(position.clone()));
        }
        if !self.known.is_empty() {
            metadata.insert(TABLES_KEY.into(), serde_json::json!(self.known));
        }
        if !held.is_empty() {
            metadata.insert(HELD_KEY.into(), serde_json::json!(held));
        }
        metadata
    }

    /// Commits every sibling that has rows, then the main table (always, to record
    /// `position`). A sibling's first commit is preceded by a main commit that names it.
    pub async fn flush(&mut self, position: &ReplayId) -> Result<(), SinkError> {
        let new: Vec<String> = self
            .others
            .iter()
            .filter(|(name, t)| t.buffered > 0 && !self.known.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        if !new.is_empty() {
            let before = self.known.clone();
            self.known.extend(new);
            // Still the last checkpoint and the held ids it had: this commit moves nothing.
            let metadata = self.metadata(&self.committed_held);
            let txn = self.main.txn.unwrap_or(0);
            if let Err(e) = self.main.commit(&self.app_id, txn, metadata, false).await {
                self.known = before;
                return Err(e);
            }
        }
        let version = self.version + 1;
        let hex = position.to_hex();
        let mut sibling = serde_json::Map::new();
        sibling.insert(APP_KEY.into(), self.app_id.clone().into());
        sibling.insert(REPLAY_KEY.into(), hex.clone().into());
        for table in self.others.values_mut().filter(|t| t.buffered > 0) {
            table
                .commit(&self.app_id, version, sibling.clone(), true)
                .await?;
        }
        // This counter is used now, whatever happens next; the position only once the main
        // commit is in (a failed flush leaves it as the table has it).
        self.version = version;
        let previous = self.position.replace(hex);
        let metadata = self.metadata(&self.held);
        if let Err(e) = self
            .main
            .commit(&self.app_id, version, metadata, true)
            .await
        {
            self.position = previous;
            return Err(e);
        }
        self.committed_held = self.held.clone();
        Ok(())
    }
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
