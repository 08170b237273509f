//! The simulated org's REST API and Bulk API 2.0 query endpoints, on the login port as a My
//! Domain serves them: describe an object, read a record by id, and query jobs whose CSV
//! results come in pages chained by `Sforce-Locator`, gzipped when the client accepts it.
//! They serve the records the org's events change (`--records`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::login::{LoginOrg, LoginState};
use super::records::{Record, Shape};
use crate::sink::typed::{Kind, TypedCell, convert};

/// The REST endpoints' state: the orgs (by the tokens their logins issued) and the query
/// jobs made so far.
pub struct RestState {
    login: Arc<LoginState>,
    page_size: usize,
    jobs: Mutex<HashMap<String, Job>>,
}

/// A query job: its result, fixed when it was made, as CSV lines.
struct Job {
    org_id: String,
    object: String,
    operation: String,
    header: String,
    lines: Vec<String>,
    /// Status reads so far: the first finds it in progress, as a client must be ready for.
    polls: u32,
    /// Why it failed, for a job that did.
    failure: Option<String>,
}

pub fn router(login: Arc<LoginState>, page_size: usize) -> Router {
    let state = Arc::new(RestState {
        login,
        page_size: page_size.max(1),
        jobs: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route(
            "/services/data/{version}/sobjects/{object}/describe",
            get(describe),
        )
        .route(
            "/services/data/{version}/sobjects/{object}/{id}",
            get(read_record),
        )
        .route("/services/data/{version}/jobs/query", post(create_job))
        .route("/services/data/{version}/jobs/query/{job}", get(job_info))
        .route(
            "/services/data/{version}/jobs/query/{job}/results",
            get(job_results),
        )
        .with_state(state)
}

/// An error as the REST API writes them: a list of `{errorCode, message}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!([{ "errorCode": code, "message": message }])),
    )
        .into_response()
}

impl RestState {
    /// The org whose valid session `headers` carry.
    fn org(&self, headers: &HeaderMap) -> Result<&Arc<LoginOrg>, Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let org = self
            .login
            .org_of_token(token)
            .filter(|org| org.tokens.is_valid(token))
            .ok_or_else(|| {
                error(
                    StatusCode::UNAUTHORIZED,
                    "INVALID_SESSION_ID",
                    "Session expired or invalid",
                )
            })?;
        if org
            .api_limit_exceeded
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(error(
                StatusCode::FORBIDDEN,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded.",
            ));
        }
        Ok(org)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The shape of `object`'s records in `org`: its entity index and fields, by the schema
/// its events use now.
fn shape(org: &LoginOrg, object: &str) -> Option<(usize, Shape)> {
    let bus = &org.bus;
    let index = bus
        .entities
        .iter()
        .position(|e| e.name.eq_ignore_ascii_case(object))?;
    let entity = bus.entities[index].clone();
    let schema = bus.current_schema(&entity);
    Some((index, Shape::new(entity, &schema)))
}

fn no_object(object: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!(
            "The requested resource does not exist: sObject type '{object}' is not supported."
        ),
    )
}

/// The describe type of a column, as Salesforce names field types.
fn describe_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "string",
        Kind::Int => "int",
        Kind::Long => "long",
        Kind::Double => "double",
        Kind::Bool => "boolean",
        Kind::Bytes => "base64",
        Kind::DateMillis | Kind::DateDays => "date",
        Kind::TimestampMillis | Kind::TimestampMicros => "datetime",
        Kind::TimeMillis => "time",
    }
}

async fn describe(
    State(state): State<Arc<RestState>>,
    Path((_version, object)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let org = match state.org(&headers) {
        Ok(org) => org,
        Err(response) => return response,
    };
    let Some((_, shape)) = shape(org, &object) else {
        return no_object(&object);
    };
    let mut fields = vec![
        serde_json::json!({"name": "Id", "type": "id", "nillable": false}),
        serde_json::json!({"name": "IsDeleted", "type": "boolean", "nillable": false}),
        serde_json::json!({"name": "SystemModstamp", "type": "datetime", "nillable": false}),
    ];
    fields.extend(shape.columns.iter().map(
        |c| serde_json::json!({"name": c.name, "type": describe_type(c.kind), "nillable": true}),
    ));
    axum::Json(serde_json::json!({
        "name": shape.entity.name,
        "keyPrefix": shape.entity.key_prefix,
        "queryable": true,
        "fields": fields,
    }))
    .into_response()
}

/// A field's value in a REST record: numbers and booleans as JSON's, the rest as text.
fn json_value(shape: &Shape, record: &Record, name: &str) -> serde_json::Value {
    let column = shape.columns.iter().find(|c| c.name == name);
    let text = shape.text(record, name);
    match (column.map(|c| c.kind), text) {
        (_, None) => serde_json::Value::Null,
        (None, Some(text)) if name == "IsDeleted" => (text == "true").into(),
        (Some(kind), Some(text)) => {
            let value = match (
                record.get(column.map_or(0, |c| c.top)),
                column.and_then(|c| c.child),
            ) {
                (Some(crate::event::Value::Record(children)), Some(j)) => {
                    children.get(j).map(|c| &c.value)
                }
                (value, None) => value,
                _ => None,
            };
            match value.map(|v| convert(v, kind)) {
                Some(TypedCell::Int(v)) => v.into(),
                Some(TypedCell::Long(v)) => v.into(),
                Some(TypedCell::Double(v)) => v.into(),
                Some(TypedCell::Bool(v)) => v.into(),
                _ => text.into(),
            }
        }
        (None, Some(text)) => text.into(),
    }
}

async fn read_record(
    State(state): State<Arc<RestState>>,
    Path((version, object, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let org = match state.org(&headers) {
        Ok(org) => org,
        Err(response) => return response,
    };
    let Some((entity, shape)) = shape(org, &object) else {
        return no_object(&object);
    };
    let prefix = shape.entity.key_prefix;
    let number = id
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix("AAA"))
        .and_then(|n| n.parse::<u64>().ok());
    let found = number.and_then(|n| {
        org.bus
            .with_records(|records, _| records.record(entity, n).cloned())
            .flatten()
    });
    let record = match found {
        Some(record) if !record.deleted => record,
        Some(_) => {
            return error(
                StatusCode::NOT_FOUND,
                "ENTITY_IS_DELETED",
                "entity is deleted",
            );
        }
        None => {
            return error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
            );
        }
    };
    let mut body = serde_json::Map::new();
    body.insert(
        "attributes".into(),
        serde_json::json!({"type": shape.entity.name, "url": format!("/services/data/{version}/sobjects/{}/{id}", shape.entity.name)}),
    );
    for name in shape.names() {
        body.insert(name.to_string(), json_value(&shape, &record, name));
    }
    axum::Json(serde_json::Value::Object(body)).into_response()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobRequest {
    operation: String,
    query: String,
}

/// `SELECT a, b FROM Object`: the fields and the object. The simulator reads nothing more
/// of SOQL.
fn parse_query(query: &str) -> Option<(Vec<String>, String)> {
    let words: Vec<&str> = query.split_whitespace().collect();
    let from = words.iter().position(|w| w.eq_ignore_ascii_case("FROM"))?;
    if !words.first()?.eq_ignore_ascii_case("SELECT") || words.len() != from + 2 {
        return None;
    }
    let fields: Vec<String> = words[1..from]
        .join(" ")
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    (!fields.is_empty()).then(|| (fields, words[from + 1].to_string()))
}

async fn create_job(
    State(state): State<Arc<RestState>>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<JobRequest>,
) -> Response {
    let org = match state.org(&headers) {
        Ok(org) => org,
        Err(response) => return response,
    };
    if request.operation != "query" && request.operation != "queryAll" {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALIDJOB",
            "operation must be query or queryAll",
        );
    }
    let Some((fields, object)) = parse_query(&request.query) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_QUERY",
            "the simulator understands SELECT field, ... FROM Object",
        );
    };
    let Some((entity, shape)) = shape(org, &object) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE",
            &format!("sObject type '{object}' is not supported."),
        );
    };
    let known: Vec<&str> = shape.names().collect();
    if let Some(bad) = fields.iter().find(|f| !known.contains(&f.as_str())) {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            &format!("No such column '{bad}' on entity '{object}'."),
        );
    }
    let all = request.operation == "queryAll";
    let rows = org.bus.with_records(|records, _| {
        records
            .all(entity)
            .iter()
            .filter(|r| all || !r.deleted)
            .map(|r| csv_line(fields.iter().map(|f| shape.text(r, f))))
            .collect::<Vec<_>>()
    });
    let failure = rows.is_none().then(|| {
        "this simulated org keeps no records: start the simulator with --records N".to_string()
    });
    let job = Job {
        org_id: org.org_id.clone(),
        object: shape.entity.name.to_string(),
        operation: request.operation.clone(),
        header: csv_line(fields.iter().map(|f| Some(f.clone()))),
        lines: rows.unwrap_or_default(),
        polls: 0,
        failure,
    };
    let mut jobs = state.lock();
    let id = format!("750SIM{:09}AAA", jobs.len() as u64 + 1);
    let body = job_json(&id, &job, "UploadComplete");
    jobs.insert(id, job);
    drop(jobs);
    axum::Json(body).into_response()
}

fn csv_line(cells: impl Iterator<Item = Option<String>>) -> String {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let cells: Vec<String> = cells.map(Option::unwrap_or_default).collect();
    writer
        .write_record(&cells)
        .expect("CSV into memory cannot fail");
    String::from_utf8(writer.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn job_json(id: &str, job: &Job, job_state: &str) -> serde_json::Value {
    let mut body = serde_json::json!({
        "id": id,
        "operation": job.operation,
        "object": job.object,
        "createdById": "005000000000001AAA",
        "state": job_state,
        "concurrencyMode": "Parallel",
        "contentType": "CSV",
        "apiVersion": 62.0,
        "jobType": "V2Query",
        "lineEnding": "LF",
        "columnDelimiter": "COMMA",
    });
    if job_state == "JobComplete" {
        body["numberRecordsProcessed"] = job.lines.len().into();
    }
    if let Some(reason) = &job.failure {
        body["errorMessage"] = reason.as_str().into();
    }
    body
}

async fn job_info(
    State(state): State<Arc<RestState>>,
    Path((_version, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let org = match state.org(&headers) {
        Ok(org) => org.org_id.clone(),
        Err(response) => return response,
    };
    let mut jobs = state.lock();
    let Some(job) = jobs.get_mut(&id).filter(|j| j.org_id == org) else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        );
    };
    job.polls += 1;
    let job_state = match (&job.failure, job.polls) {
        (Some(_), _) => "Failed",
        (None, 1) => "InProgress",
        (None, _) => "JobComplete",
    };
    axum::Json(job_json(&id, job, job_state)).into_response()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    locator: Option<String>,
    max_records: Option<usize>,
}

async fn job_results(
    State(state): State<Arc<RestState>>,
    Path((_version, id)): Path<(String, String)>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Response {
    let org = match state.org(&headers) {
        Ok(org) => org.org_id.clone(),
        Err(response) => return response,
    };
    let (body, next, count) = {
        let jobs = state.lock();
        let Some(job) = jobs.get(&id).filter(|j| j.org_id == org) else {
            return error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
            );
        };
        if job.failure.is_some() || job.polls < 2 {
            return error(
                StatusCode::BAD_REQUEST,
                "JOB_NOT_COMPLETE",
                "the job is not complete: poll its state until JobComplete",
            );
        }
        let start = match page.locator.as_deref() {
            None | Some("") => 0,
            Some(locator) => match locator.parse::<usize>() {
                Ok(n) if n <= job.lines.len() => n,
                _ => {
                    return error(StatusCode::BAD_REQUEST, "INVALID_LOCATOR", "bad locator");
                }
            },
        };
        let size = page
            .max_records
            .unwrap_or(state.page_size)
            .clamp(1, state.page_size);
        let end = (start + size).min(job.lines.len());
        let mut body = job.header.clone();
        for line in &job.lines[start..end] {
            body.push_str(line);
        }
        let next = (end < job.lines.len()).then(|| end.to_string());
        (body, next, end - start)
    };
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let mut response_headers = vec![
        (
            header::CONTENT_TYPE.as_str().to_string(),
            "text/csv".to_string(),
        ),
        (
            "sforce-locator".into(),
            next.unwrap_or_else(|| "null".into()),
        ),
        ("sforce-numberofrecords".into(), count.to_string()),
    ];
    let bytes = if gzip {
        response_headers.push((header::CONTENT_ENCODING.as_str().into(), "gzip".into()));
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = encoder.write_all(body.as_bytes());
        encoder.finish().unwrap_or_default()
    } else {
        body.into_bytes()
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    for (name, value) in response_headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name),
            header::HeaderValue::try_from(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_their_fields_and_object() {
        assert_eq!(
            parse_query("SELECT Id, Name,BillingCity FROM Account"),
            Some((
                vec!["Id".into(), "Name".into(), "BillingCity".into()],
                "Account".into()
            ))
        );
        assert_eq!(parse_query("SELECT FROM Account"), None);
        assert_eq!(parse_query("SELECT Id FROM Account WHERE x = 1"), None);
        assert_eq!(
            csv_line([Some("a,b".to_string()), None, Some("c\"d".into())].into_iter()),
            "\"a,b\",,\"c\"\"d\"\n"
        );
    }
}
