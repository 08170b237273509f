//! Databricks SQL Statement Execution API: table management and the checkpoint table for
//! Zerobus targets. Every statement is polled to completion; a timeout or an HTTP error is
//! an error with the statement and the reason, never read as "missing" or "empty".

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(
        "the SQL warehouse did not finish `{statement}` within {timeout_s} s; check that warehouse {warehouse} is running (a stopped serverless or classic warehouse takes minutes to start) or raise --sql-timeout-secs"
    )]
    Timeout {
        statement: String,
        warehouse: String,
        timeout_s: u64,
    },
    #[error("`{statement}` failed: {message}")]
    Failed { statement: String, message: String },
    #[error("cannot reach the Databricks workspace at {url}: {detail}")]
    Http { url: String, detail: String },
}

impl SqlError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SqlError::Timeout { .. } | SqlError::Http { .. } => true,
            SqlError::Failed { .. } => false,
        }
    }
}

/// How to run statements.
#[derive(Clone, Debug)]
pub struct SqlSettings {
    pub workspace_url: String,
    pub warehouse_id: String,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub timeout: Duration,
}

pub struct SqlClient {
    http: reqwest::Client,
    settings: SqlSettings,
    token: Option<SecretString>,
}

#[derive(Deserialize)]
struct StatementResponse {
    statement_id: Option<String>,
    status: Option<Status>,
    result: Option<ResultData>,
}

#[derive(Deserialize)]
struct Status {
    state: String,
    error: Option<StatusError>,
}

#[derive(Deserialize)]
struct StatusError {
    message: Option<String>,
    error_code: Option<String>,
}

#[derive(Deserialize)]
struct ResultData {
    data_array: Option<Vec<Vec<Option<String>>>>,
}

/// The outcome of a statement that finished.
pub enum Outcome {
    Rows(Vec<Vec<Option<String>>>),
    /// The statement failed with this error code and message (e.g. TABLE_OR_VIEW_NOT_FOUND).
    Error {
        code: String,
        message: String,
    },
}

impl SqlClient {
    pub fn new(settings: SqlSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a reqwest client with a timeout always builds");
        SqlClient {
            http,
            settings,
            token: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.settings.workspace_url.trim_end_matches('/')
        )
    }

    async fn token(&mut self) -> Result<Option<String>, SqlError> {
        if let Some(token) = &self.token {
            return Ok(Some(token.expose_secret().to_string()));
        }
        let (Some(id), Some(secret)) = (&self.settings.client_id, &self.settings.client_secret)
        else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
        }
        let url = self.url("/oidc/v1/token");
        let http = |detail: String| SqlError::Http {
            url: url.clone(),
            detail,
        };
        let response = self
            .http
            .post(&url)
            .basic_auth(id, Some(secret.expose_secret()))
            .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
            .send()
            .await
            .map_err(|e| http(e.to_string()))?;
        if !response.status().is_success() {
            return Err(http(format!(
                "the OAuth token request answered HTTP {}; check DATABRICKS_CLIENT_ID/SECRET",
                response.status()
            )));
        }
        let token: Token = response.json().await.map_err(|e| http(e.to_string()))?;
        self.token = Some(SecretString::from(token.access_token.clone()));
        Ok(Some(token.access_token))
    }

    /// Runs a statement and waits for it to finish, at most the configured timeout.
    pub async fn execute(&mut self, statement: &str) -> Result<Outcome, SqlError> {
        let started = Instant::now();
        let token = self.token().await?;
        let submit_url = self.url("/api/2.0/sql/statements");
        let body = serde_json::json!({
            "statement": statement,
            "warehouse_id": self.settings.warehouse_id,
            "wait_timeout": "10s",
            "on_wait_timeout": "CONTINUE",
        });
        let mut response = self
            .call(
                self.http.post(&submit_url).json(&body),
                &submit_url,
                token.as_deref(),
            )
            .await?;
        loop {
            let state = response
                .status
                .as_ref()
                .map_or_else(|| "PENDING".to_string(), |s| s.state.clone());
            match state.as_str() {
                "SUCCEEDED" => {
                    return Ok(Outcome::Rows(
                        response
                            .result
                            .and_then(|r| r.data_array)
                            .unwrap_or_default(),
                    ));
                }
                "FAILED" | "CANCELED" | "CLOSED" => {
                    let error = response.status.and_then(|s| s.error);
                    return Ok(Outcome::Error {
                        code: error
                            .as_ref()
                            .and_then(|e| e.error_code.clone())
                            .unwrap_or_default(),
                        message: error.and_then(|e| e.message).unwrap_or(state),
                    });
                }
                _ => {}
            }
            if started.elapsed() >= self.settings.timeout {
                return Err(SqlError::Timeout {
                    statement: statement.to_string(),
                    warehouse: self.settings.warehouse_id.clone(),
                    timeout_s: self.settings.timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let id = response.statement_id.clone().unwrap_or_default();
            let poll_url = self.url(&format!("/api/2.0/sql/statements/{id}"));
            response = self
                .call(self.http.get(&poll_url), &poll_url, token.as_deref())
                .await?;
        }
    }

    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        token: Option<&str>,
    ) -> Result<StatementResponse, SqlError> {
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let http = |detail: String| SqlError::Http {
            url: url.to_string(),
            detail,
        };
        let response = request.send().await.map_err(|e| http(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| http(e.to_string()))?;
        if !status.is_success() {
            return Err(http(format!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        serde_json::from_str(&text).map_err(|e| http(format!("unexpected answer: {e}")))
    }

    /// Whether the table exists. A failure other than "not found" is an error.
    pub async fn table_exists(&mut self, table: &str) -> Result<bool, SqlError> {
        let statement = format!("DESCRIBE TABLE {}", ident(table));
        match self.execute(&statement).await? {
            Outcome::Rows(_) => Ok(true),
            Outcome::Error { code, message }
                if code.contains("NOT_FOUND") || message.contains("TABLE_OR_VIEW_NOT_FOUND") =>
            {
                Ok(false)
            }
            Outcome::Error { message, .. } => Err(SqlError::Failed { statement, message }),
        }
    }

    pub async fn run(&mut self, statement: &str) -> Result<Vec<Vec<Option<String>>>, SqlError> {
        match self.execute(statement).await? {
            Outcome::Rows(rows) => Ok(rows),
            Outcome::Error { message, .. } => Err(SqlError::Failed {
                statement: statement.to_string(),
                message,
            }),
        }
    }
}

/// The reference's table, with column comments and the properties Zerobus needs. No
/// generated partition column: Zerobus cannot write tables that have one.
pub fn create_table_sql(table: &str) -> String {
    crate::sink::columns::create_table(
        &ident(table),
        &crate::sink::columns::ROW,
        &[
            ("delta.enableRowTracking", "false"),
            ("delta.autoOptimize.optimizeWrite", "true"),
            ("delta.autoOptimize.autoCompact", "true"),
        ],
        "Real-time Salesforce Change Data Capture events",
    )
}

/// Creates Zerobus target `table` if it is missing (and `auto_create` allows). A failure or
/// a timeout is an error, never read as "missing".
pub async fn ensure_table(
    settings: &SqlSettings,
    table: &str,
    auto_create: bool,
) -> Result<(), SqlError> {
    let mut client = SqlClient::new(settings.clone());
    if client.table_exists(table).await? {
        return Ok(());
    }
    if !auto_create {
        return Err(SqlError::Failed {
            statement: format!("DESCRIBE TABLE {}", ident(table)),
            message: format!(
                "table {table} does not exist and auto-create is off; create it (see the README's DDL) or set auto-create-table = true"
            ),
        });
    }
    tracing::info!(table, "Table {table} doesn't exist - creating it.");
    client.run(&create_table_sql(table)).await?;
    tracing::info!(table, "Successfully created table: {table}");
    Ok(())
}

/// The checkpoint table next to a target: `catalog.schema.sfzb_checkpoints`.
pub fn checkpoint_table(target: &str) -> String {
    match target.rsplit_once('.') {
        Some((prefix, _)) => format!("{prefix}.sfzb_checkpoints"),
        None => "sfzb_checkpoints".to_string(),
    }
}

/// A table name as a SQL identifier: each part of `catalog.schema.table` in backticks
/// (a backtick inside is doubled), so no name can change a statement.
pub fn ident(table: &str) -> String {
    table
        .split('.')
        .map(|part| format!("`{}`", part.replace('`', "``")))
        .collect::<Vec<_>>()
        .join(".")
}

/// A SQL string literal.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_and_names() {
        let ddl = create_table_sql("main.sfzb.accounts");
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS `main`.`sfzb`.`accounts` ("));
        assert_eq!(ident("main.s.t"), "`main`.`s`.`t`");
        assert_eq!(ident("a`b"), "`a``b`");
        assert!(ddl.contains("'delta.enableRowTracking' = 'false'"));
        assert_eq!(ddl.matches(" COMMENT '").count(), 17);
        assert_eq!(
            checkpoint_table("main.sfzb.accounts"),
            "main.sfzb.sfzb_checkpoints"
        );
        assert_eq!(quote("it's"), "'it\\'s'");
    }
}
