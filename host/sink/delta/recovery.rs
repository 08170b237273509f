//! What a restart reads back: the newest commits of ours in the main table (checkpoint,
//! named siblings, held replay ids), and the replay ids of the rows a sibling holds past the
//! checkpoint, from the commits' own parquet files.

use std::collections::BTreeSet;

use deltalake::arrow::array::AsArray;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::{DeltaTable, DeltaTableError, ObjectStore};
use futures::StreamExt;

use super::{APP_KEY, HELD_KEY, Held, REPLAY_KEY, TABLES_KEY};

/// The replay ids of the rows that our commits with a flush counter above `after` put
/// in `table`, read back from the commits' own files.
pub(super) async fn rows_after(
    table: &DeltaTable,
    app_id: &str,
    after: i64,
) -> Result<BTreeSet<String>, String> {
    let mut files = Vec::new();
    let log = table.log_store();
    let Some(latest) = table.version() else {
        return Ok(BTreeSet::new());
    };
    for version in (0..=latest).rev() {
        let Some(entry) = log
            .read_commit_entry(version)
            .await
            .map_err(|e| e.to_string())?
        else {
            break;
        };
        let (mut ours, mut adds) = (None, Vec::new());
        for line in entry.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| format!("commit {version} is not JSON: {e}"))?;
            if let Some(txn) = action.get("txn")
                && txn.get("appId").and_then(|a| a.as_str()) == Some(app_id)
            {
                ours = txn.get("version").and_then(|v| v.as_i64());
            }
            if let Some(path) = action.pointer("/add/path").and_then(|p| p.as_str()) {
                adds.push(path.to_string());
            }
        }
        match ours {
            Some(flush) if flush > after => files.extend(adds),
            // Flush counters only grow: everything older is covered by the checkpoint.
            Some(_) => break,
            None => {}
        }
    }
    let store = table.object_store();
    let mut ids = BTreeSet::new();
    for file in files {
        let location = deltalake::Path::from_url_path(&file).map_err(|e| e.to_string())?;
        let builder = parquet_file(&store, &location).await?;
        let column = builder
            .schema()
            .index_of("replay_id")
            .map_err(|e| format!("{file}: {e}"))?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [column]);
        for batch in builder
            .with_projection(mask)
            .build()
            .map_err(|e| e.to_string())?
        {
            let batch = batch.map_err(|e| e.to_string())?;
            let replays = deltalake::arrow::compute::cast(
                batch.column(0),
                &deltalake::arrow::datatypes::DataType::Utf8,
            )
            .map_err(|e| e.to_string())?;
            let replays = replays.as_string::<i32>();
            ids.extend(replays.iter().flatten().map(str::to_string));
        }
    }
    Ok(ids)
}

/// A parquet file of the table, read whole from its object store, ready to read.
pub(crate) async fn parquet_file(
    store: &deltalake::logstore::ObjectStoreRef,
    location: &deltalake::Path,
) -> Result<ParquetRecordBatchReaderBuilder<bytes::Bytes>, String> {
    let bytes = store
        .get_opts(location, Default::default())
        .await
        .map_err(|e| format!("{location}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("{location}: {e}"))?;
    ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| format!("{location}: {e}"))
}

/// What the newest commits of ours in the main table record.
#[derive(Debug, Default)]
pub(super) struct Recorded {
    /// Flush counter and replay id of the checkpoint.
    pub(super) checkpoint: Option<(i64, String)>,
    pub(super) tables: BTreeSet<String>,
    pub(super) held: Held,
}

pub(super) async fn recorded(
    table: &DeltaTable,
    app_id: &str,
) -> Result<Recorded, DeltaTableError> {
    let mut out = Recorded::default();
    let Some(version) = table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?
    else {
        return Ok(out);
    };
    let mut newest = true;
    let mut history = table.history(None);
    while let Some(info) = history.next().await {
        let info = info?;
        // Several subscriptions may write one table: take this writer's newest commits.
        if info.info.get(APP_KEY).and_then(|v| v.as_str()) != Some(app_id) {
            continue;
        }
        if std::mem::take(&mut newest) {
            out.tables = metadata(&info.info, TABLES_KEY)?;
            out.held = metadata(&info.info, HELD_KEY)?;
        }
        // Version 0 is an intent commit made before the first flush: no checkpoint yet.
        if version == 0 {
            return Ok(out);
        }
        if let Some(replay) = info.info.get(REPLAY_KEY).and_then(|v| v.as_str()) {
            out.checkpoint = Some((version, replay.to_string()));
            return Ok(out);
        }
    }
    Err(DeltaTableError::Generic(format!(
        "transaction {app_id} has no {REPLAY_KEY} in the table history"
    )))
}

/// A key of our commit metadata: absent is empty; present and unreadable is an error, never
/// read as empty (that would forget held rows).
fn metadata<T: serde::de::DeserializeOwned + Default>(
    info: &std::collections::HashMap<String, serde_json::Value>,
    key: &str,
) -> Result<T, DeltaTableError> {
    match info.get(key) {
        None => Ok(T::default()),
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
            DeltaTableError::Generic(format!("commit metadata {key} is not readable: {e}"))
        }),
    }
}
