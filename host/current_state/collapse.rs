//! Rows of the typed change table, in the order they were written, collapsed to one action
//! per record (org id and record id):
//!
//! | rows of a record, in order | action |
//! |---|---|
//! | a SNAPSHOT, CREATE or UNDELETE | full: every column from it |
//! | then UPDATEs | the same, with the columns they changed or nulled from them |
//! | only UPDATEs | partial: the columns they changed or nulled, the last value of each |
//! | a DELETE (after anything) | delete |
//! | a GAP_* (after anything; anything after it) | re-read: the record as the REST API has it now |
//!
//! The action's commit timestamp, change type and replay id are its last row's.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use deltalake::arrow::compute::{cast, interleave};
use deltalake::arrow::datatypes::{DataType, Field, TimeUnit};

use crate::sink::typed::HEADER;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Full,
    Partial,
    Delete,
    Reread,
}

/// What one record's rows come to.
#[derive(Debug)]
pub struct Action {
    pub org_id: String,
    pub id: String,
    pub kind: Kind,
    pub change_type: String,
    /// Microseconds since the epoch.
    pub commit_timestamp: i64,
    pub replay_id: String,
    /// Each column's source (batch, row); `None` is null. A full action has every column;
    /// a partial one only those it sets.
    cells: HashMap<usize, Option<(usize, usize)>>,
    /// Full actions take unlisted columns from this row.
    base: Option<(usize, usize)>,
}

impl Action {
    /// The columns a partial action sets, by name.
    pub fn sets<'a>(&self, columns: &'a [Arc<Field>]) -> Vec<&'a str> {
        let mut set: Vec<usize> = self.cells.keys().copied().collect();
        set.sort_unstable();
        set.into_iter()
            .map(|c| columns[c].name().as_str())
            .collect()
    }
}

/// The change table's rows, read back: the field columns (every column but the header's)
/// and the actions.
pub struct Collapsed {
    pub columns: Vec<Arc<Field>>,
    pub actions: Vec<Action>,
    batches: Vec<RecordBatch>,
}

#[derive(Debug, thiserror::Error)]
#[error("the change table's rows cannot be read as typed rows: {0}")]
pub struct CollapseError(String);

fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, CollapseError> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| CollapseError(format!("no {name} column")))?;
    let text = cast(column, &DataType::Utf8).map_err(|e| CollapseError(e.to_string()))?;
    Ok(text
        .as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect())
}

fn lists(batch: &RecordBatch, name: &str) -> Result<Vec<Vec<String>>, CollapseError> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(vec![Vec::new(); batch.num_rows()]);
    };
    let list = column
        .as_list_opt::<i32>()
        .ok_or_else(|| CollapseError(format!("{name} is not a list")))?;
    (0..batch.num_rows())
        .map(|r| {
            if list.is_null(r) {
                return Ok(Vec::new());
            }
            let items =
                cast(&list.value(r), &DataType::Utf8).map_err(|e| CollapseError(e.to_string()))?;
            Ok(items
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect())
        })
        .collect()
}

fn micros(batch: &RecordBatch) -> Result<Vec<i64>, CollapseError> {
    let column = batch
        .column_by_name("commit_timestamp")
        .ok_or_else(|| CollapseError("no commit_timestamp column".into()))?;
    let ts = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))
        .map_err(|e| CollapseError(e.to_string()))?;
    let ts = ts.as_primitive::<deltalake::arrow::datatypes::TimestampMicrosecondType>();
    Ok((0..ts.len())
        .map(|i| if ts.is_null(i) { 0 } else { ts.value(i) })
        .collect())
}

/// Collapses `batches` (rows in the order written) to one action per record.
pub fn collapse(batches: Vec<RecordBatch>) -> Result<Collapsed, CollapseError> {
    let header: std::collections::HashSet<&str> = HEADER.iter().map(|(n, _, _)| *n).collect();
    let mut columns: Vec<Arc<Field>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    // The newest batch's type of a column wins: older files may predate a column.
    for batch in batches.iter().rev() {
        for field in batch.schema().fields() {
            if header.contains(field.name().as_str()) || index.contains_key(field.name()) {
                continue;
            }
            index.insert(field.name().clone(), columns.len());
            columns.push(field.clone());
        }
    }
    let mut actions: Vec<Action> = Vec::new();
    let mut by_record: HashMap<(String, String), usize> = HashMap::new();
    for (b, batch) in batches.iter().enumerate() {
        let types = strings(batch, "change_type")?;
        let orgs = strings(batch, "org_id")?;
        let replays = strings(batch, "replay_id")?;
        let ids = lists(batch, "record_ids")?;
        let changed = lists(batch, "changed_fields")?;
        let nulled = lists(batch, "nulled_fields")?;
        let ts = micros(batch)?;
        for r in 0..batch.num_rows() {
            let change_type = types[r].clone().unwrap_or_default();
            let org_id = orgs[r].clone().unwrap_or_default();
            // A change of several records (a transaction's) applies to each.
            for id in &ids[r] {
                let key = (org_id.clone(), id.clone());
                let at = *by_record.entry(key).or_insert_with(|| {
                    actions.push(Action {
                        org_id: org_id.clone(),
                        id: id.clone(),
                        kind: Kind::Partial,
                        change_type: String::new(),
                        commit_timestamp: 0,
                        replay_id: String::new(),
                        cells: HashMap::new(),
                        base: None,
                    });
                    actions.len() - 1
                });
                let action = &mut actions[at];
                match change_type.as_str() {
                    "SNAPSHOT" | "CREATE" | "UNDELETE" if action.kind != Kind::Reread => {
                        action.kind = Kind::Full;
                        action.cells.clear();
                        action.base = Some((b, r));
                    }
                    // An update of a deleted record, or of one a re-read stands for, is
                    // passed by.
                    "UPDATE" if matches!(action.kind, Kind::Full | Kind::Partial) => {
                        for name in &changed[r] {
                            if let Some(&c) = index.get(name) {
                                action.cells.insert(c, Some((b, r)));
                            }
                        }
                        for name in &nulled[r] {
                            if let Some(&c) = index.get(name) {
                                action.cells.insert(c, None);
                            }
                        }
                    }
                    "DELETE" if action.kind != Kind::Reread => {
                        action.kind = Kind::Delete;
                        action.cells.clear();
                        action.base = None;
                    }
                    t if t.starts_with("GAP_") => {
                        action.kind = Kind::Reread;
                        action.cells.clear();
                        action.base = None;
                    }
                    _ => {}
                }
                action.change_type = change_type.clone();
                action.commit_timestamp = action.commit_timestamp.max(ts[r]);
                action.replay_id = replays[r].clone().unwrap_or_default();
            }
        }
    }
    Ok(Collapsed {
        columns,
        actions,
        batches,
    })
}

impl Collapsed {
    /// Column `c`'s value for each of `actions` (indices into `self.actions`), as the
    /// action has it: a full action's base row unless a later update set it, a partial
    /// one's update; null where the action has none.
    pub fn column(&self, c: usize, actions: &[usize]) -> Result<ArrayRef, CollapseError> {
        let field = &self.columns[c];
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.batches.len() + 1);
        for batch in &self.batches {
            let array = match batch.column_by_name(field.name()) {
                Some(a) if a.data_type() == field.data_type() => a.clone(),
                Some(a) => cast(a, field.data_type()).map_err(|e| CollapseError(e.to_string()))?,
                None => new_null_array(field.data_type(), batch.num_rows()),
            };
            arrays.push(array);
        }
        let null = self.batches.len();
        arrays.push(new_null_array(field.data_type(), 1));
        let indices: Vec<(usize, usize)> = actions
            .iter()
            .map(|&a| {
                let action = &self.actions[a];
                match action.cells.get(&c) {
                    Some(Some(at)) => *at,
                    Some(None) => (null, 0),
                    None => action.base.unwrap_or((null, 0)),
                }
            })
            .collect();
        let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
        interleave(&refs, &indices).map_err(|e| CollapseError(e.to_string()))
    }
}

impl Collapsed {
    /// Settles a re-read: the record as the REST API returned it (a full action at its
    /// `SystemModstamp`), or, gone, a delete.
    pub fn resolve(
        &mut self,
        a: usize,
        record: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<(), CollapseError> {
        let action = &mut self.actions[a];
        action.cells.clear();
        let Some(mut record) = record else {
            action.kind = Kind::Delete;
            action.base = None;
            return Ok(());
        };
        if let Some(at) = record
            .get("SystemModstamp")
            .and_then(|v| v.as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            action.commit_timestamp = at.timestamp_micros();
        }
        record.retain(|k, _| self.columns.iter().any(|c| c.name() == k));
        let schema = Arc::new(deltalake::arrow::datatypes::Schema::new(
            self.columns
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let line = serde_json::to_vec(&record).map_err(|e| CollapseError(e.to_string()))?;
        let mut reader = deltalake::arrow::json::ReaderBuilder::new(schema)
            .build(line.as_slice())
            .map_err(|e| CollapseError(e.to_string()))?;
        let batch = reader
            .next()
            .transpose()
            .map_err(|e| CollapseError(format!("record {}: {e}", action.id)))?
            .ok_or_else(|| CollapseError(format!("record {} read back empty", action.id)))?;
        action.kind = Kind::Full;
        action.base = Some((self.batches.len(), 0));
        self.batches.push(batch);
        Ok(())
    }
}
