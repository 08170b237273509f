//! A Databricks workspace on loopback for tests: the SQL Statement Execution API (submit,
//! poll) and the OIDC token endpoint, over HTTP. It understands the few statements sfzb-host
//! sends (DESCRIBE, CREATE TABLE, ALTER TABLE … ADD COLUMNS, the checkpoint table's SELECT
//! and batched MERGE, the reference fallback SELECT), keeps the tables' columns, and can be
//! slow or failing on demand.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqlFault {
    #[default]
    None,
    /// Statements never finish (a warehouse that is starting or overloaded).
    Slow,
    /// Every call answers HTTP 500.
    Failing,
}

/// The workspace's state, open to tests.
#[derive(Default)]
pub struct Workspace {
    pub tables: Mutex<HashSet<String>>,
    /// The columns of each table created here, `(name, type)`, widened by `ALTER TABLE`.
    pub columns: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// (org, channel, target) → replay id, the checkpoint table's rows.
    pub checkpoints: Mutex<HashMap<(String, String, String), String>>,
    /// The rows of a table written by the reference library, by table: (entity_name,
    /// replay_id), oldest first. The same org throughout.
    pub reference_rows: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Every statement received, in order.
    pub statements: Mutex<Vec<String>>,
    pub fault: Mutex<SqlFault>,
}

fn quoted(text: &str) -> Vec<String> {
    text.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The `(name, type)` of each column a `CREATE TABLE` or `ALTER TABLE … ADD COLUMNS` lists,
/// one per line as sfzb-host writes them.
fn column_defs(statement: &str) -> Vec<(String, String)> {
    statement
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with(')'))
        .filter_map(|line| {
            let mut words = line.trim().trim_end_matches(',').split_whitespace();
            let name = words.next()?.replace('`', "");
            Some((name, words.next()?.to_string()))
        })
        .collect()
}

/// The identifier after `marker`, unquoted: `` `main`.`s`.`t` `` → `main.s.t`.
fn word_after(text: &str, marker: &str) -> Option<String> {
    text.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(|word| word.replace('`', ""))
}

impl Workspace {
    fn execute(&self, statement: &str) -> serde_json::Value {
        self.statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(statement.to_string());
        let ok = |rows: Vec<Vec<String>>| serde_json::json!({"status": {"state": "SUCCEEDED"}, "result": {"data_array": rows}});
        let failed = |code: &str, message: String| serde_json::json!({"status": {"state": "FAILED", "error": {"error_code": code, "message": message}}});
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = word_after(statement, "DESCRIBE TABLE ") {
            return if tables.contains(&table) {
                let columns = self.columns.lock().unwrap_or_else(|e| e.into_inner());
                let rows = columns.get(&table).map_or_else(Vec::new, |c| {
                    c.iter()
                        .map(|(name, ty)| vec![name.clone(), ty.to_lowercase(), String::new()])
                        .collect()
                });
                ok(rows)
            } else {
                failed(
                    "TABLE_OR_VIEW_NOT_FOUND",
                    format!("[TABLE_OR_VIEW_NOT_FOUND] The table {table} cannot be found."),
                )
            };
        }
        if let Some(table) = word_after(statement, "CREATE TABLE IF NOT EXISTS ") {
            if tables.insert(table.clone()) {
                let mut columns = self.columns.lock().unwrap_or_else(|e| e.into_inner());
                columns.insert(table, column_defs(statement));
            }
            return ok(vec![]);
        }
        if let Some(table) = word_after(statement, "ALTER TABLE ") {
            if !tables.contains(&table) {
                return failed(
                    "TABLE_OR_VIEW_NOT_FOUND",
                    format!("[TABLE_OR_VIEW_NOT_FOUND] The table {table} cannot be found."),
                );
            }
            let mut columns = self.columns.lock().unwrap_or_else(|e| e.into_inner());
            let have = columns.entry(table.clone()).or_default();
            let added = column_defs(statement);
            if let Some((name, _)) = added
                .iter()
                .find(|(n, _)| have.iter().any(|(h, _)| h.eq_ignore_ascii_case(n)))
            {
                return failed(
                    "FIELDS_ALREADY_EXISTS",
                    format!("[FIELDS_ALREADY_EXISTS] Cannot add column {name}: {table} has it."),
                );
            }
            have.extend(added);
            return ok(vec![]);
        }
        if statement.starts_with("MERGE INTO ") {
            // One row per checkpoint: org, channel, target and replay id quoted.
            let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
            for row in quoted(statement).chunks_exact(4) {
                checkpoints.insert(
                    (row[0].clone(), row[1].clone(), row[2].clone()),
                    row[3].clone(),
                );
            }
            return ok(vec![]);
        }
        if let Some(table) =
            word_after(statement, "SELECT org_id, channel, target, replay_id FROM ")
        {
            if !tables.contains(&table) {
                return failed(
                    "TABLE_OR_VIEW_NOT_FOUND",
                    format!("[TABLE_OR_VIEW_NOT_FOUND] The table {table} cannot be found."),
                );
            }
            let checkpoints = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
            let rows = checkpoints
                .iter()
                .map(|((org, channel, target), replay)| {
                    vec![org.clone(), channel.clone(), target.clone(), replay.clone()]
                })
                .collect();
            return ok(rows);
        }
        if let Some(table) = word_after(statement, "SELECT replay_id FROM ") {
            if !tables.contains(&table) {
                return failed(
                    "TABLE_OR_VIEW_NOT_FOUND",
                    format!("[TABLE_OR_VIEW_NOT_FOUND] The table {table} cannot be found."),
                );
            }
            // The newest row of a table the reference library wrote, of one object if
            // the statement asks for one.
            let entity = statement
                .split("entity_name = '")
                .nth(1)
                .and_then(|rest| rest.split('\'').next());
            let found = self
                .reference_rows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&table)
                .and_then(|rows| {
                    rows.iter()
                        .rev()
                        .find(|(name, _)| entity.is_none_or(|e| e == name))
                        .map(|(_, replay)| replay.clone())
                });
            return ok(found.into_iter().map(|r| vec![r]).collect());
        }
        failed(
            "PARSE_SYNTAX_ERROR",
            format!("the test workspace does not understand: {statement}"),
        )
    }
}

#[derive(Clone)]
struct AppState {
    workspace: Arc<Workspace>,
    results: Arc<Mutex<HashMap<String, serde_json::Value>>>,
}

fn fault(state: &AppState) -> SqlFault {
    *state
        .workspace
        .fault
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

async fn submit(
    State(state): State<AppState>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    match fault(&state) {
        SqlFault::Failing => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "warehouse unavailable").into_response();
        }
        SqlFault::Slow => {
            let id = uuid::Uuid::new_v4().to_string();
            return axum::Json(
                serde_json::json!({"statement_id": id, "status": {"state": "RUNNING"}}),
            )
            .into_response();
        }
        SqlFault::None => {}
    }
    let statement = body["statement"].as_str().unwrap_or_default().to_string();
    let id = uuid::Uuid::new_v4().to_string();
    let mut result = state.workspace.execute(&statement);
    result["statement_id"] = serde_json::Value::String(id.clone());
    state
        .results
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, result.clone());
    // Answer PENDING first, as a busy warehouse does, so clients must poll.
    axum::Json(
        serde_json::json!({"statement_id": result["statement_id"], "status": {"state": "PENDING"}}),
    )
    .into_response()
}

async fn poll(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if fault(&state) == SqlFault::Failing {
        return (StatusCode::INTERNAL_SERVER_ERROR, "warehouse unavailable").into_response();
    }
    match state
        .results
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
    {
        Some(result) => axum::Json(result.clone()).into_response(),
        None => axum::Json(serde_json::json!({"statement_id": id, "status": {"state": "RUNNING"}}))
            .into_response(),
    }
}

async fn token() -> Response {
    axum::Json(serde_json::json!({"access_token": "sim-databricks-token", "token_type": "Bearer", "expires_in": 3600})).into_response()
}

/// A running test workspace.
pub struct WorkspaceServer {
    pub addr: SocketAddr,
    pub workspace: Arc<Workspace>,
    cancel: CancellationToken,
}

impl WorkspaceServer {
    pub async fn start() -> std::io::Result<WorkspaceServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let workspace = Arc::new(Workspace::default());
        let state = AppState {
            workspace: workspace.clone(),
            results: Arc::default(),
        };
        let app = Router::new()
            .route("/api/2.0/sql/statements", post(submit))
            .route("/api/2.0/sql/statements/{id}", get(poll))
            .route("/oidc/v1/token", post(token))
            .with_state(state);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(WorkspaceServer {
            addr,
            workspace,
            cancel,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn shutdown(self) {
        self.cancel.cancel();
    }
}
