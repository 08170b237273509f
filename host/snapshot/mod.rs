//! The initial snapshot of an object (`snapshot = true`): every record read through a Bulk
//! API 2.0 query job, page by page, each made into an event of the object's writer schema
//! so that the transform chain and the typed table take it as they take a change. Its row's
//! change type is `SNAPSHOT` and its commit timestamp the record's `SystemModstamp`. A
//! snapshot read again after a GAP_OVERFLOW reads deleted records too (`queryAll`), as
//! DELETE rows.
//!
//! The pipeline captures the stream position before the job is made and follows the
//! change stream from there once the last page is written (see `pipeline::snapshot`).

mod record;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::event::{ChangeEvent, EventSchema, ReplayId};
use crate::salesforce::rest::{RestClient, RestError};
use crate::sink::typed::{FieldColumn, field_columns};
pub use record::RecordError;
pub(crate) use record::timestamp_micros;

/// Records asked for per result page: a page's records are held as events (~8 KB each with
/// Account's 135 columns) until they are written and flushed.
pub const PAGE_RECORDS: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Rest(#[from] RestError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(
        "snapshot = true needs a channel of one object (/data/AccountChangeEvent, /data/Foo__ChangeEvent); {channel} carries several: give each object its own subscription"
    )]
    NotOneObject { channel: String },
    #[error("the writer schema of {channel} does not fit the typed layout: {0}", channel = .1)]
    Schema(crate::sink::typed::Misfit, String),
    #[error("cannot learn the writer schema of {channel} for its snapshot: {detail}")]
    Topic { channel: String, detail: String },
    #[error("a result page of query job {job} is not CSV: {detail}")]
    Csv { job: String, detail: String },
}

impl SnapshotError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SnapshotError::Rest(e) if e.is_retryable())
    }
}

/// Where a snapshot stands, for the log and `/subscriptions`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Progress {
    pub object: String,
    pub records: u64,
    /// What the job found, once it is complete.
    pub total: Option<u64>,
    pub records_per_sec: f64,
    /// Seconds left at the rate so far.
    pub eta_secs: Option<f64>,
}

/// A snapshot being read: its job, and where its result continues.
pub struct Reader {
    rest: RestClient,
    object: String,
    job: String,
    locator: Option<String>,
    finished: bool,
    shape: record::Shape,
    meta: record::Meta,
    started: Instant,
    records: u64,
    total: Option<u64>,
}

impl Reader {
    /// Makes the query job for every field of the object that the schema has a column for
    /// (`all`: deleted records too, `queryAll`), and waits for it to complete. `None` if
    /// cancelled first.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        rest: RestClient,
        object: &str,
        schema: Arc<EventSchema>,
        org_id: Arc<str>,
        channel: Arc<str>,
        position: ReplayId,
        all: bool,
        cancel: &CancellationToken,
    ) -> Result<Option<Reader>, SnapshotError> {
        let columns: Vec<FieldColumn> =
            field_columns(&schema).map_err(|m| SnapshotError::Schema(m, channel.to_string()))?;
        let describe = rest.describe(object).await?;
        let queryable: std::collections::HashSet<&str> =
            describe.fields.iter().map(|f| f.name.as_str()).collect();
        let mut select = vec!["Id".to_string(), "SystemModstamp".to_string()];
        if all {
            select.push("IsDeleted".to_string());
        }
        for column in &columns {
            if queryable.contains(column.name.as_str()) && !select.contains(&column.name) {
                select.push(column.name.clone());
            }
        }
        let soql = format!("SELECT {} FROM {object}", select.join(", "));
        let job = rest.create_query_job(&soql, all).await?;
        tracing::info!(object, job = %job.id, fields = select.len(), "Snapshot: query job created; waiting for it to complete.");
        let Some(done) = rest.wait_for_job(&job.id, cancel).await? else {
            return Ok(None);
        };
        tracing::info!(object, job = %done.id, records = done.number_records_processed.unwrap_or(0), "Snapshot: query job complete; reading its results.");
        Ok(Some(Reader {
            rest,
            object: object.to_string(),
            job: done.id,
            locator: None,
            finished: false,
            shape: record::Shape::new(schema, columns),
            meta: record::Meta {
                org_id,
                channel,
                position,
                object: object.to_string(),
            },
            started: Instant::now(),
            records: 0,
            total: done.number_records_processed,
        }))
    }

    /// The next page's records as events; `None` after the last page.
    pub async fn next_page(&mut self) -> Result<Option<Vec<ChangeEvent>>, SnapshotError> {
        if self.finished {
            return Ok(None);
        }
        let page = self
            .rest
            .result_page(&self.job, self.locator.as_deref(), PAGE_RECORDS)
            .await?;
        let mut reader = csv::ReaderBuilder::new().from_reader(page.csv.as_ref());
        let bad = |e: csv::Error| SnapshotError::Csv {
            job: self.job.clone(),
            detail: e.to_string(),
        };
        let header = reader.headers().map_err(bad)?.clone();
        let places = self.shape.places(&header);
        let mut events = Vec::new();
        for row in reader.records() {
            let row = row.map_err(bad)?;
            events.push(self.shape.event(&places, &row, &self.meta)?);
        }
        self.records += events.len() as u64;
        self.locator = page.next;
        self.finished = self.locator.is_none();
        Ok(Some(events))
    }

    pub fn progress(&self) -> Progress {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.records as f64 / secs;
        Progress {
            object: self.object.clone(),
            records: self.records,
            total: self.total,
            records_per_sec: rate,
            eta_secs: self
                .total
                .filter(|_| rate > 0.0)
                .map(|t| t.saturating_sub(self.records) as f64 / rate),
        }
    }
}
