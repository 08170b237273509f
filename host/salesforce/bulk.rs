//! Bulk API 2.0 query jobs: create one for a SOQL query (`query`, or `queryAll` to include
//! deleted records), poll it until it is complete, then read its CSV result in pages
//! chained by `Sforce-Locator`, gzipped on the wire.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::rest::{RestClient, RestError, hint, json};
use crate::backoff::Backoff;

/// A query job's state as Salesforce reports it.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    pub id: String,
    pub state: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub number_records_processed: Option<u64>,
    #[serde(default)]
    pub error_message: Option<String>,
}

/// One page of a job's result: its CSV (header line first) and the locator of the next.
pub struct Page {
    pub csv: bytes::Bytes,
    pub next: Option<String>,
}

impl RestClient {
    /// Creates a query job for `soql`; `all` includes deleted and archived records.
    pub async fn create_query_job(&self, soql: &str, all: bool) -> Result<JobInfo, RestError> {
        let what = "creating a Bulk API 2.0 query job".to_string();
        let body = serde_json::json!({
            "operation": if all { "queryAll" } else { "query" },
            "query": soql,
        });
        let response = self
            .send(
                &what,
                "jobs/query",
                |r| r.json(&body),
                reqwest::Method::POST,
            )
            .await?;
        json(response, &what).await
    }

    /// Polls job `id` until it is complete (`JobComplete`); a failed or aborted job is an
    /// error with its reason. Returns `None` if cancelled first.
    pub async fn wait_for_job(
        &self,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<JobInfo>, RestError> {
        let what = format!("reading the state of query job {id}");
        let path = format!("jobs/query/{id}");
        // Small jobs finish in well under a second; large ones take minutes.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let response = self.send(&what, &path, |r| r, reqwest::Method::GET).await?;
            let info: JobInfo = json(response, &what).await?;
            match info.state.as_str() {
                "JobComplete" => return Ok(Some(info)),
                "Failed" | "Aborted" => {
                    let reason = info
                        .error_message
                        .clone()
                        .unwrap_or_else(|| format!("the job is {}", info.state));
                    return Err(RestError::JobFailed {
                        job: info.id,
                        object: info.object,
                        hint: job_hint(&reason),
                        reason,
                    });
                }
                _ => {
                    if backoff.wait(cancel).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// A page of job `id`'s result: from the start, or at `locator`; at most
    /// `max_records` records.
    pub async fn result_page(
        &self,
        id: &str,
        locator: Option<&str>,
        max_records: usize,
    ) -> Result<Page, RestError> {
        let what = format!("reading the results of query job {id}");
        let path = format!("jobs/query/{id}/results");
        let mut query = vec![("maxRecords", max_records.to_string())];
        if let Some(locator) = locator {
            query.push(("locator", locator.to_string()));
        }
        let response = self
            .send(
                &what,
                &path,
                |r| r.query(&query).header(reqwest::header::ACCEPT, "text/csv"),
                reqwest::Method::GET,
            )
            .await?;
        let next = response
            .headers()
            .get("sforce-locator")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && *v != "null")
            .map(str::to_string);
        let url = response.url().to_string();
        let csv = response
            .bytes()
            .await
            .map_err(|source| RestError::Transport { url, source })?;
        Ok(Page { csv, next })
    }
}

/// What to do about a failed job, by its reason.
fn job_hint(reason: &str) -> &'static str {
    if reason.contains("--records") {
        "Start the simulator with --records N to give the org records"
    } else if reason.contains("InvalidBatch") || reason.contains("INVALID_FIELD") {
        hint("INVALID_FIELD")
    } else if reason.contains("ExceededQuota") || reason.contains("limit") {
        hint("REQUEST_LIMIT_EXCEEDED")
    } else {
        "The snapshot starts again from the beginning at the next start; if it fails again, check the job in Setup → Bulk Data Load Jobs"
    }
}
