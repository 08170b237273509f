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
    /// The commit timestamp of the snapshot row the action started from: the stream's
    /// changes up to it are already in that row.
    floor: Option<i64>,
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
    /// GAP_OVERFLOW rows: changes too many to describe, which a new snapshot would cover.
    pub overflows: u64,
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
    let mut overflows = 0;
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
            if change_type == "GAP_OVERFLOW" {
                overflows += 1;
                continue;
            }
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
                        floor: None,
                    });
                    actions.len() - 1
                });
                let action = &mut actions[at];
                let snapshot = change_type == "SNAPSHOT";
                let held = action.floor.is_some_and(|floor| ts[r] <= floor);
                // A change the snapshot row already holds, or a snapshot row older than a
                // change already taken, is passed by.
                if (!snapshot && held) || (snapshot && ts[r] < action.commit_timestamp) {
                    continue;
                }
                if snapshot {
                    action.floor = Some(ts[r]);
                }
                let taken = match change_type.as_str() {
                    "SNAPSHOT" | "CREATE" | "UNDELETE" if action.kind != Kind::Reread => {
                        action.kind = Kind::Full;
                        action.cells.clear();
                        action.base = Some((b, r));
                        true
                    }
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
                        true
                    }
                    "DELETE" if action.kind != Kind::Reread => {
                        action.kind = Kind::Delete;
                        action.cells.clear();
                        action.base = None;
                        true
                    }
                    t if t.starts_with("GAP_") => {
                        action.kind = Kind::Reread;
                        action.cells.clear();
                        action.base = None;
                        true
                    }
                    // An update of a deleted record, or anything after a re-read (which
                    // reads the record as it is now), is passed by.
                    _ => false,
                };
                if taken {
                    action.change_type = change_type.clone();
                    action.commit_timestamp = action.commit_timestamp.max(ts[r]);
                    action.replay_id = replays[r].clone().unwrap_or_default();
                }
            }
        }
    }
    Ok(Collapsed {
        columns,
        actions,
        overflows,
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
            .and_then(crate::snapshot::timestamp_micros)
        {
            action.commit_timestamp = at;
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

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{
        ListBuilder, StringArray, StringBuilder, TimestampMicrosecondArray,
    };
    use deltalake::arrow::datatypes::Schema;

    /// Change rows: (change type, record id, commit timestamp, changed, nulled, Name, Phone).
    type Change = (
        &'static str,
        &'static str,
        i64,
        &'static [&'static str],
        &'static [&'static str],
        Option<&'static str>,
        Option<&'static str>,
    );

    fn batch(rows: &[Change]) -> RecordBatch {
        let list = |pick: fn(&Change) -> &'static [&'static str]| {
            let mut b = ListBuilder::new(StringBuilder::new());
            for row in rows {
                pick(row).iter().for_each(|v| b.values().append_value(v));
                b.append(true);
            }
            Arc::new(b.finish()) as ArrayRef
        };
        let text = |pick: fn(&Change) -> Option<&'static str>| {
            Arc::new(rows.iter().map(pick).collect::<StringArray>()) as ArrayRef
        };
        let mut ids = ListBuilder::new(StringBuilder::new());
        for row in rows {
            ids.values().append_value(row.1);
            ids.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            text(|r| Some(r.0)),
            text(|_| Some("00D")),
            text(|_| Some("00")),
            Arc::new(ids.finish()),
            list(|r| r.3),
            list(|r| r.4),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| r.2),
            )),
            text(|r| r.5),
            text(|r| r.6),
        ];
        let schema = Schema::new(
            [
                "change_type",
                "org_id",
                "replay_id",
                "record_ids",
                "changed_fields",
                "nulled_fields",
                "commit_timestamp",
                "Name",
                "Phone",
            ]
            .iter()
            .zip(&columns)
            .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
            .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(Arc::new(schema), columns).unwrap()
    }

    /// Each record's action: kind, then (Name, Phone) as the MERGE would get them, with
    /// the columns a partial one sets.
    fn outcome(rows: &[Change]) -> Vec<(String, Kind, i64, Vec<String>, Vec<Option<String>>)> {
        let collapsed = collapse(vec![batch(rows)]).unwrap();
        let all: Vec<usize> = (0..collapsed.actions.len()).collect();
        let values: Vec<Vec<Option<String>>> = (0..collapsed.columns.len())
            .map(|c| {
                let array = collapsed.column(c, &all).unwrap();
                let text = cast(&array, &DataType::Utf8).unwrap();
                text.as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_string))
                    .collect()
            })
            .collect();
        collapsed
            .actions
            .iter()
            .enumerate()
            .map(|(a, action)| {
                let sets = action
                    .sets(&collapsed.columns)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                let row = values.iter().map(|column| column[a].clone()).collect();
                (
                    action.id.clone(),
                    action.kind,
                    action.commit_timestamp,
                    sets,
                    row,
                )
            })
            .collect()
    }

    #[test]
    fn each_record_comes_to_one_action() {
        let s = |v: &str| Some(v.to_string());
        let got = outcome(&[
            // A snapshot row, then a change it already holds (passed by), then a newer one.
            ("SNAPSHOT", "a", 10, &[], &[], Some("Ada"), Some("1")),
            ("UPDATE", "a", 8, &["Phone"], &[], None, Some("0")),
            (
                "UPDATE",
                "a",
                20,
                &["Name"],
                &["Phone"],
                Some("Grace"),
                None,
            ),
            // Only updates: partial, the last value of each column.
            ("UPDATE", "b", 5, &["Phone"], &[], None, Some("2")),
            ("UPDATE", "b", 6, &["Phone"], &[], None, Some("3")),
            // Deleted, then created again: the create's row; an update after a delete is
            // passed by.
            ("DELETE", "c", 5, &[], &[], None, None),
            ("UPDATE", "c", 6, &["Name"], &[], Some("ghost"), None),
            ("CREATE", "c", 7, &[], &[], Some("Linus"), Some("4")),
            ("DELETE", "d", 9, &[], &[], None, None),
            // A gap hides what changed: re-read, whatever came before or after.
            ("UPDATE", "e", 1, &["Name"], &[], Some("x"), None),
            ("GAP_UPDATE", "e", 2, &[], &[], None, None),
            ("UPDATE", "e", 3, &["Phone"], &[], None, Some("5")),
        ]);
        assert_eq!(
            got,
            vec![
                (
                    "a".into(),
                    Kind::Full,
                    20,
                    vec!["Name".into(), "Phone".into()],
                    vec![s("Grace"), None]
                ),
                (
                    "b".into(),
                    Kind::Partial,
                    6,
                    vec!["Phone".into()],
                    vec![None, s("3")]
                ),
                ("c".into(), Kind::Full, 7, vec![], vec![s("Linus"), s("4")]),
                ("d".into(), Kind::Delete, 9, vec![], vec![None, None]),
                ("e".into(), Kind::Reread, 2, vec![], vec![None, None]),
            ]
        );
    }

    #[test]
    fn a_snapshot_row_older_than_a_change_taken_is_passed_by() {
        let got = outcome(&[
            ("UPDATE", "a", 30, &["Phone"], &[], None, Some("new")),
            ("SNAPSHOT", "a", 10, &[], &[], Some("Ada"), Some("old")),
        ]);
        assert_eq!(got[0].1, Kind::Partial);
        assert_eq!(got[0].4, vec![None, Some("new".to_string())]);
    }
}
