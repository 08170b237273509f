//! The current-state table (`current-state = "delta:PATH"`): one row per record, kept up to
//! date from the subscription's typed change table (a local Delta table), in the order its
//! commits were made.
//!
//! Each apply reads the change table's commits after the last one applied, collapses their
//! rows to one action per record ([`collapse`]), and applies them in one delta-rs MERGE whose
//! commit also records, as an application transaction, the change table version it covers:
//! exactly once, whatever crashes when. A change applies only if it is newer than the row
//! (by commit timestamp; a snapshot row's is its `SystemModstamp`), so changes the snapshot
//! already holds do not take the row back.
//!
//! | action | row exists (and is older) | no row |
//! |---|---|---|
//! | full (snapshot, create, undelete, re-read) | every column replaced | inserted |
//! | partial (updates) | only the changed and nulled columns set | inserted with those |
//! | delete | removed, or marked `is_deleted` (`current-state-deletes`) | nothing, or a marked row |

mod collapse;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, TimeUnit};
use deltalake::datafusion::common::Column;
use deltalake::datafusion::logical_expr::{Expr, lit, when};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructField, Transaction};
use url::Url;

use crate::salesforce::rest::{RestClient, RestError};
use collapse::{Collapsed, Kind, collapse};

/// What a DELETE does to the record's row.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Deletes {
    /// The row is removed.
    #[default]
    Remove,
    /// The row stays, with `is_deleted` true; an UNDELETE clears it.
    Mark,
}

#[derive(Debug, thiserror::Error)]
pub enum CurrentStateError {
    #[error("current-state table {target}: {detail}")]
    Delta { target: String, detail: String },
    #[error("current-state table {target}: {0}", target = .1)]
    Rows(collapse::CollapseError, String),
    #[error("current-state table {target}: re-reading a record after a gap event failed: {0}", target = .1)]
    Reread(RestError, String),
    #[error(
        "current-state table {target}: commit {version} of the change table is no longer in its log (past delta.logRetentionDuration), so its changes cannot be applied; start the current-state table again from a new snapshot (a new table with snapshot = true)"
    )]
    Expired { target: String, version: i64 },
    #[error("current-state table {target}: {detail}")]
    Unsupported { target: String, detail: String },
}

impl CurrentStateError {
    pub fn is_retryable(&self) -> bool {
        match self {
            CurrentStateError::Delta { .. } => true,
            CurrentStateError::Reread(e, _) => e.is_retryable(),
            CurrentStateError::Rows(..)
            | CurrentStateError::Expired { .. }
            | CurrentStateError::Unsupported { .. } => false,
        }
    }

    /// The org's daily API requests are used up: the apply waits (see
    /// [`CurrentState::hold_off`]); the change table goes on.
    pub fn is_limited(&self) -> bool {
        matches!(self, CurrentStateError::Reread(e, _) if e.is_limited())
    }
}

/// After the API limit refused a re-read, the first wait before the next apply is this
/// many applies' intervals; it doubles each time, up to [`MAX_HOLD`].
const HOLD_INTERVALS: u32 = 12;
const MAX_HOLD: Duration = Duration::from_secs(3600);

/// Change table commits applied in one MERGE, at most: a long catch-up goes in steps.
const VERSIONS_PER_APPLY: i64 = 200;

/// The typed storage of a change table column read back from parquet.
fn storage_of(ty: &ArrowType) -> Option<crate::sink::typed::Storage> {
    use crate::sink::typed::Storage;
    Some(match ty {
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View => Storage::Text,
        ArrowType::Int32 => Storage::Int,
        ArrowType::Int64 => Storage::Long,
        ArrowType::Float64 => Storage::Double,
        ArrowType::Boolean => Storage::Bool,
        ArrowType::Binary | ArrowType::LargeBinary | ArrowType::BinaryView => Storage::Bytes,
        ArrowType::Date32 => Storage::Date,
        ArrowType::Timestamp(..) => Storage::Timestamp,
        ArrowType::List(_) | ArrowType::LargeList(_) => Storage::TextList,
        _ => return None,
    })
}

/// The columns of a current-state row besides the object's fields.
const KEY: [&str; 2] = ["org_id", "Id"];
const META: [&str; 4] = ["is_deleted", "change_type", "commit_timestamp", "replay_id"];

/// What one apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Change table commits applied.
    pub versions: u64,
    /// Change rows read from them.
    pub changes: u64,
    /// Actions merged: one per record changed.
    pub records: u64,
}

/// One subscription's current-state table and the change table it follows.
pub struct CurrentState {
    url: Url,
    change_url: Url,
    app_id: String,
    deletes: Deletes,
    object: String,
    rest: Option<RestClient>,
    every: Duration,
    last: Option<Instant>,
    /// While the org's API requests are used up: no apply before this.
    held_until: Option<Instant>,
    /// The next wait [`CurrentState::hold_off`] gives.
    hold: Duration,
}

fn delta_error(url: &Url, e: impl std::fmt::Display) -> CurrentStateError {
    CurrentStateError::Delta {
        target: url.to_string(),
        detail: e.to_string(),
    }
}

fn src(name: &str) -> Expr {
    Expr::Column(Column::new(Some("source"), name))
}

fn dst(name: &str) -> Expr {
    Expr::Column(Column::new(Some("target"), name))
}

impl CurrentState {
    /// `target` (a local path or URL) follows the change table at `change`; `rest`
    /// re-reads records after gap events. Applies at most once per `every` (and always
    /// when asked to finish).
    pub fn new(
        target: &str,
        change: &str,
        app_id: String,
        deletes: Deletes,
        object: String,
        rest: Option<RestClient>,
        every: Duration,
    ) -> Result<CurrentState, CurrentStateError> {
        let url =
            crate::sink::delta::table_url(target).map_err(|detail| CurrentStateError::Delta {
                target: target.to_string(),
                detail,
            })?;
        let change_url =
            crate::sink::delta::table_url(change).map_err(|detail| CurrentStateError::Delta {
                target: change.to_string(),
                detail,
            })?;
        Ok(CurrentState {
            url,
            change_url,
            app_id,
            deletes,
            object,
            rest,
            every,
            last: None,
            held_until: None,
            hold: every * HOLD_INTERVALS,
        })
    }

    /// Applies what the change table has that this table does not, if `every` passed since
    /// the last apply (or `now`).
    pub async fn apply_due(&mut self, now: bool) -> Result<Option<Applied>, CurrentStateError> {
        if !now && self.last.is_some_and(|at| at.elapsed() < self.every) {
            return Ok(None);
        }
        if !now && self.held_until.is_some_and(|t| Instant::now() < t) {
            return Ok(None);
        }
        self.last = Some(Instant::now());
        let applied = self.apply().await?;
        self.held_until = None;
        self.hold = self.every * HOLD_INTERVALS;
        Ok(Some(applied))
    }

    /// Whether an apply waits for the org's API requests (see [`CurrentState::hold_off`]).
    pub fn held(&self) -> bool {
        self.held_until.is_some()
    }

    /// The API limit refused a re-read: no apply for a while (longer each time in a
    /// row). The changes wait in the change table; the next apply takes them all. Returns
    /// the wait.
    pub fn hold_off(&mut self) -> Duration {
        let wait = self.hold;
        self.held_until = Some(Instant::now() + wait);
        self.hold = (self.hold * 2).min(MAX_HOLD);
        wait
    }

    /// Applies every change table commit after the last one applied.
    pub async fn apply(&mut self) -> Result<Applied, CurrentStateError> {
        let mut done = Applied::default();
        let change = match deltalake::open_table(self.change_url.clone()).await {
            Ok(table) => table,
            // No change table yet: nothing to apply.
            Err(deltalake::DeltaTableError::NotATable(_)) => return Ok(done),
            Err(e) => return Err(delta_error(&self.change_url, e)),
        };
        let Some(latest) = change.version().map(|v| v as i64) else {
            return Ok(done);
        };
        let mut target = self.open_target().await?;
        let mut applied = target
            .snapshot()
            .map_err(|e| delta_error(&self.url, e))?
            .transaction_version(target.log_store().as_ref(), &self.app_id)
            .await
            .map_err(|e| delta_error(&self.url, e))?
            .unwrap_or(-1);
        while applied < latest {
            let upto = latest.min(applied + VERSIONS_PER_APPLY);
            let batches = self.read_changes(&change, applied + 1, upto).await?;
            let changes: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let started = Instant::now();
            let records = if changes == 0 {
                self.mark_applied(&mut target, upto).await?;
                0
            } else {
                let collapsed = collapse(batches)
                    .map_err(|e| CurrentStateError::Rows(e, self.url.to_string()))?;
                self.merge(&mut target, collapsed, upto).await?
            };
            tracing::info!(table = %self.url, versions = upto - applied, changes, records, ms = started.elapsed().as_millis() as u64, "Current state applied.");
            done.versions += (upto - applied) as u64;
            done.changes += changes as u64;
            done.records += records as u64;
            applied = upto;
        }
        Ok(done)
    }

    async fn open_target(&self) -> Result<DeltaTable, CurrentStateError> {
        if let Ok(path) = self.url.to_file_path() {
            std::fs::create_dir_all(&path).map_err(|e| delta_error(&self.url, e))?;
        }
        let table = DeltaTable::try_from_url(self.url.clone())
            .await
            .map_err(|e| delta_error(&self.url, e))?;
        if table.version().is_some() {
            return Ok(table);
        }
        let text = deltalake::kernel::DataType::STRING;
        let columns = vec![
            StructField::new("org_id", text.clone(), false),
            StructField::new("Id", text.clone(), false),
            StructField::new("is_deleted", deltalake::kernel::DataType::BOOLEAN, false),
            StructField::new("change_type", text.clone(), true),
            StructField::new(
                "commit_timestamp",
                deltalake::kernel::DataType::TIMESTAMP,
                true,
            ),
            StructField::new("replay_id", text, true),
        ];
        let table = table
            .create()
            .with_table_name(format!("{}_current", self.object))
            .with_comment(
                "The current state of each Salesforce record, from the change table (sfzb-host)",
            )
            .with_columns(columns)
            .await
            .map_err(|e| delta_error(&self.url, e))?;
        tracing::info!(table = %self.url, "Created current-state table.");
        Ok(table)
    }

    /// The rows that commits `from..=to` of the change table added, in commit order.
    async fn read_changes(
        &self,
        change: &DeltaTable,
        from: i64,
        to: i64,
    ) -> Result<Vec<RecordBatch>, CurrentStateError> {
        let log = change.log_store();
        let store = change.object_store();
        let mut out = Vec::new();
        for version in from..=to {
            let Some(entry) = log
                .read_commit_entry(version as u64)
                .await
                .map_err(|e| delta_error(&self.change_url, e))?
            else {
                // Its log file expired (delta.logRetentionDuration): its rows cannot be
                // applied, and passing them by would lose them.
                return Err(CurrentStateError::Expired {
                    target: self.url.to_string(),
                    version,
                });
            };
            for line in entry.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let action: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|e| delta_error(&self.change_url, format!("commit {version}: {e}")))?;
                let Some(add) = action.get("add") else {
                    continue;
                };
                // A compaction re-adds rows it already had: no new change.
                if add.get("dataChange").and_then(|d| d.as_bool()) == Some(false) {
                    continue;
                }
                let Some(path) = add.get("path").and_then(|p| p.as_str()) else {
                    continue;
                };
                let location = deltalake::Path::from_url_path(path)
                    .map_err(|e| delta_error(&self.change_url, e))?;
                let reader = crate::sink::delta::parquet_file(&store, &location)
                    .await
                    .map_err(|e| delta_error(&self.change_url, e))?
                    .build()
                    .map_err(|e| delta_error(&self.change_url, e))?;
                for batch in reader {
                    out.push(batch.map_err(|e| delta_error(&self.change_url, e))?);
                }
            }
        }
        Ok(out)
    }

    /// Records that the change table is applied up to `version`, for commits without rows.
    async fn mark_applied(
        &self,
        target: &mut DeltaTable,
        version: i64,
    ) -> Result<(), CurrentStateError> {
        use deltalake::kernel::transaction::CommitBuilder;
        use deltalake::protocol::{DeltaOperation, SaveMode};
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, version));
        let snapshot = target.snapshot().map_err(|e| delta_error(&self.url, e))?;
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let finalized = CommitBuilder::from(properties)
            .build(Some(snapshot), target.log_store(), operation)
            .await
            .map_err(|e| delta_error(&self.url, e))?;
        target.state = Some(finalized.snapshot());
        Ok(())
    }

    /// Merges the actions into the table, recording `version` as applied. Returns how many
    /// records they changed.
    async fn merge(
        &self,
        target: &mut DeltaTable,
        mut collapsed: Collapsed,
        version: i64,
    ) -> Result<usize, CurrentStateError> {
        if collapsed.overflows > 0 {
            tracing::warn!(table = %self.url, overflows = collapsed.overflows, "GAP_OVERFLOW events: Salesforce could not describe some changes. With snapshot = true the subscription reads the object again and its rows bring these records up to date; without it they may stay stale.");
        }
        self.reread(&mut collapsed).await?;
        let fields = collapsed.columns.clone();
        self.add_columns(target, &fields).await?;
        // A gap with no REST API to re-read by leaves its record as it was.
        let chosen: Vec<usize> = (0..collapsed.actions.len())
            .filter(|&a| collapsed.actions[a].kind != Kind::Reread)
            .collect();
        let batch = self.source(&collapsed, &chosen)?;
        let records = batch.num_rows();
        let source = SessionContext::new()
            .read_batch(batch)
            .map_err(|e| delta_error(&self.url, e))?;
        let key = dst("org_id").eq(src("org_id")).and(dst("Id").eq(src("Id")));
        // Newer than the row: a later commit, or as late and not what a snapshot read.
        let newer = src("commit_timestamp")
            .gt(dst("commit_timestamp"))
            .or(src("commit_timestamp")
                .eq(dst("commit_timestamp"))
                .and(dst("change_type").not_eq(lit("SNAPSHOT"))));
        let action = |kind: &str| src("__action").eq(lit(kind.to_string()));
        let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
        let meta = |u: deltalake::operations::merge::UpdateBuilder| {
            META.iter().fold(u, |u, m| u.update(*m, src(m)))
        };
        let mut merge = target
            .clone()
            .merge(source, key)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_commit_properties(
                CommitProperties::default()
                    .with_application_transaction(Transaction::new(&self.app_id, version)),
            );
        let delete = action("delete").and(newer.clone());
        merge = match self.deletes {
            Deletes::Remove => merge.when_matched_delete(|d| d.predicate(delete.clone())),
            Deletes::Mark => merge.when_matched_update(|u| meta(u.predicate(delete.clone()))),
        }
        .map_err(|e| delta_error(&self.url, e))?;
        merge = merge
            .when_matched_update(|u| {
                let u = meta(u.predicate(action("full").and(newer.clone())));
                names.iter().fold(u, |u, n| u.update(n.as_str(), src(n)))
            })
            .map_err(|e| delta_error(&self.url, e))?;
        let set = |n: &str| {
            deltalake::datafusion::functions_nested::expr_fn::array_has(
                src("__set"),
                lit(n.to_string()),
            )
        };
        let mut partial_updates = Vec::with_capacity(names.len());
        for n in &names {
            let value = when(set(n), src(n))
                .otherwise(dst(n))
                .map_err(|e| delta_error(&self.url, e))?;
            partial_updates.push((n.clone(), value));
        }
        merge = merge
            .when_matched_update(|u| {
                let u = u
                    .predicate(action("partial").and(newer.clone()))
                    .update("change_type", src("change_type"))
                    .update("commit_timestamp", src("commit_timestamp"))
                    .update("replay_id", src("replay_id"));
                partial_updates
                    .iter()
                    .fold(u, |u, (n, value)| u.update(n.as_str(), value.clone()))
            })
            .map_err(|e| delta_error(&self.url, e))?;
        let inserted = match self.deletes {
            Deletes::Remove => Some(std::ops::Not::not(action("delete"))),
            Deletes::Mark => None,
        };
        merge = merge
            .when_not_matched_insert(|i| {
                let i = match inserted.clone() {
                    Some(p) => i.predicate(p),
                    None => i,
                };
                let i = KEY.iter().chain(&META).fold(i, |i, c| i.set(*c, src(c)));
                names.iter().fold(i, |i, n| i.set(n.as_str(), src(n)))
            })
            .map_err(|e| delta_error(&self.url, e))?;
        let (table, _metrics) = merge.await.map_err(|e| delta_error(&self.url, e))?;
        *target = table;
        Ok(records)
    }

    /// Re-reads the records of gap actions through the REST API: found, a full action
    /// at its `SystemModstamp`; gone, a delete.
    async fn reread(&self, collapsed: &mut Collapsed) -> Result<(), CurrentStateError> {
        let ids: Vec<usize> = collapsed
            .actions
            .iter()
            .enumerate()
            .filter(|(_, a)| a.kind == Kind::Reread)
            .map(|(i, _)| i)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let Some(rest) = &self.rest else {
            tracing::warn!(
                records = ids.len(),
                "Gap events with no REST API to re-read their records: they stay as they were."
            );
            return Ok(());
        };
        for a in ids {
            let id = collapsed.actions[a].id.clone();
            let record = rest
                .record(&self.object, &id)
                .await
                .map_err(|e| CurrentStateError::Reread(e, self.url.to_string()))?;
            collapsed
                .resolve(a, record)
                .map_err(|e| CurrentStateError::Rows(e, self.url.to_string()))?;
        }
        Ok(())
    }

    /// Adds the field columns the table lacks, before the MERGE that fills them.
    async fn add_columns(
        &self,
        target: &mut DeltaTable,
        fields: &[Arc<Field>],
    ) -> Result<(), CurrentStateError> {
        let have: HashSet<String> = target
            .snapshot()
            .map_err(|e| delta_error(&self.url, e))?
            .schema()
            .fields()
            .map(|f| f.name().to_lowercase())
            .collect();
        let mut missing = Vec::new();
        for field in fields {
            if have.contains(&field.name().to_lowercase()) {
                continue;
            }
            let storage = storage_of(field.data_type()).ok_or_else(|| CurrentStateError::Unsupported {
                target: self.url.to_string(),
                detail: format!(
                    "the change table's column {} has type {}, which a typed table never has: is {} a typed change table?",
                    field.name(),
                    field.data_type(),
                    self.change_url
                ),
            })?;
            let kind = crate::sink::delta::delta_type(storage);
            missing.push(StructField::new(field.name().clone(), kind, true));
        }
        if missing.is_empty() {
            return Ok(());
        }
        *target = target
            .clone()
            .add_columns()
            .with_fields(missing)
            .await
            .map_err(|e| delta_error(&self.url, e))?;
        Ok(())
    }

    /// The MERGE's source: a row per action, with its kind (`__action`) and, for a partial
    /// one, the columns it sets (`__set`).
    fn source(
        &self,
        collapsed: &Collapsed,
        chosen: &[usize],
    ) -> Result<RecordBatch, CurrentStateError> {
        let rows = || chosen.iter().map(|&a| &collapsed.actions[a]);
        let text = |f: fn(&collapse::Action) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows().map(f)))
        };
        let mut fields = vec![
            Field::new("org_id", ArrowType::Utf8, false),
            Field::new("Id", ArrowType::Utf8, false),
            Field::new("is_deleted", ArrowType::Boolean, false),
            Field::new("change_type", ArrowType::Utf8, true),
            Field::new(
                "commit_timestamp",
                ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("replay_id", ArrowType::Utf8, true),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            text(|a| &a.org_id),
            text(|a| &a.id),
            Arc::new(BooleanArray::from_iter(
                rows().map(|a| Some(a.kind == Kind::Delete)),
            )),
            text(|a| &a.change_type),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows().map(|a| a.commit_timestamp))
                    .with_timezone("UTC"),
            ),
            text(|a| &a.replay_id),
        ];
        for (c, field) in collapsed.columns.iter().enumerate() {
            fields.push(field.as_ref().clone().with_nullable(true));
            columns.push(
                collapsed
                    .column(c, chosen)
                    .map_err(|e| CurrentStateError::Rows(e, self.url.to_string()))?,
            );
        }
        fields.push(Field::new("__action", ArrowType::Utf8, false));
        columns.push(Arc::new(StringArray::from_iter_values(rows().map(
            |a| match a.kind {
                Kind::Full | Kind::Reread => "full",
                Kind::Partial => "partial",
                Kind::Delete => "delete",
            },
        ))));
        let mut set = ListBuilder::new(StringBuilder::new());
        for action in rows() {
            for name in action.sets(&collapsed.columns) {
                set.values().append_value(name);
            }
            set.append(true);
        }
        let set = set.finish();
        fields.push(Field::new("__set", set.data_type().clone(), true));
        columns.push(Arc::new(set));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| delta_error(&self.url, e))
    }
}
