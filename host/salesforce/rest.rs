//! The org's REST API, on the session its Pub/Sub connection logged in with: describe an
//! object (its fields and their types) and read a record by id. Requests that find the
//! session expired log in again once; errors carry Salesforce's code, its message, and
//! what to do about it.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::auth::AuthError;
use super::pubsub::PubSubConnection;

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("cannot reach the Salesforce REST API at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Salesforce refused {what} ({code}, HTTP {status}): {message}. {hint}")]
    Refused {
        what: String,
        status: u16,
        code: String,
        message: String,
        hint: &'static str,
    },
    #[error("unexpected answer to {what} from {url}: {detail}")]
    Protocol {
        what: String,
        url: String,
        detail: String,
    },
    #[error("the Bulk API 2.0 query job {job} for {object} failed: {reason}. {hint}")]
    JobFailed {
        job: String,
        object: String,
        reason: String,
        hint: &'static str,
    },
    #[error("logging in again for the REST API failed: {0}")]
    Auth(#[from] AuthError),
    #[error("not logged in: the Pub/Sub connection has no session yet")]
    NoSession,
}

impl RestError {
    /// Whether the same request may succeed later: the API was unreachable, busy or
    /// limited for now (HTTP 5xx, 429, a concurrency limit).
    pub fn is_retryable(&self) -> bool {
        match self {
            RestError::Transport { .. } => true,
            RestError::Refused { status, code, .. } => {
                *status >= 500 || *status == 429 || code == "LIMIT_EXCEEDED"
            }
            RestError::Auth(e) => e.is_retryable(),
            RestError::Protocol { .. } | RestError::JobFailed { .. } | RestError::NoSession => {
                false
            }
        }
    }

    /// Whether the org's daily API requests (or Bulk API records) are used up: not an
    /// error of the request, a state that passes when the 24-hour window rolls.
    pub fn is_limited(&self) -> bool {
        match self {
            RestError::Refused { code, .. } => {
                matches!(code.as_str(), "REQUEST_LIMIT_EXCEEDED" | "ExceededQuota")
            }
            RestError::JobFailed { hint: said, .. } => *said == hint("REQUEST_LIMIT_EXCEEDED"),
            _ => false,
        }
    }
}

/// What to do about an error code the REST and Bulk APIs return.
pub(crate) fn hint(code: &str) -> &'static str {
    match code {
        "INVALID_SESSION_ID" => {
            "The session expired again right after a new login: check the connected app's session policies"
        }
        "INVALID_TYPE" | "NOT_FOUND" => {
            "Check the object's API name, and that the user can see it (profile or permission set: object Read access)"
        }
        "INVALID_FIELD" => {
            "The user cannot read this field: grant field-level security Read access, or leave the field out"
        }
        "API_DISABLED_FOR_ORG" | "API_CURRENTLY_DISABLED" => {
            "The org's edition or the user's profile does not allow the API: enable \"API Enabled\" for the user"
        }
        "REQUEST_LIMIT_EXCEEDED" | "ExceededQuota" => {
            "The org used up its daily API requests or Bulk API records (Setup → Company Information shows the limits): wait for the 24-hour window to roll, or ask Salesforce for more"
        }
        "LIMIT_EXCEEDED" => {
            "Too many Bulk API jobs run at once in the org: sfzb-host retries after a pause; other integrations' jobs may hold the slots"
        }
        "INVALIDJOB" | "MALFORMED_QUERY" | "INVALID_QUERY_FILTER_OPERATOR" => {
            "The query sfzb-host built was refused: report it with the message above"
        }
        "INSUFFICIENT_ACCESS" | "INSUFFICIENT_ACCESS_OR_READONLY" => {
            "The user lacks a permission the request needs: grant \"View All Data\" or Read access to the object"
        }
        _ => "See Salesforce's REST API error codes for this one",
    }
}

/// An object's description: its fields in the org's order.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Describe {
    pub name: String,
    #[serde(default)]
    pub fields: Vec<DescribeField>,
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct DescribeField {
    pub name: String,
    /// Salesforce's field type: `string`, `datetime`, `address`, `reference`, …
    #[serde(rename = "type")]
    pub kind: String,
}

/// The REST API of one org, by its Pub/Sub connection's session.
#[derive(Clone)]
pub struct RestClient {
    connection: PubSubConnection,
}

/// REST calls wait at most this long; a result page of a large query can take a while.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

impl RestClient {
    pub fn new(connection: PubSubConnection) -> RestClient {
        RestClient { connection }
    }

    /// `/services/data/v62.0/…` on the org's instance.
    fn url(&self, instance_url: &str, path: &str) -> String {
        let version = self.connection.authenticator().api_version();
        format!(
            "{}/services/data/v{version}/{path}",
            instance_url.trim_end_matches('/')
        )
    }

    /// Sends the request `build` makes (with the session's token), logging in again once
    /// when Salesforce says the session expired. `what` names the request in errors.
    pub(crate) async fn send(
        &self,
        what: &str,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        method: reqwest::Method,
    ) -> Result<reqwest::Response, RestError> {
        let mut relogged = false;
        loop {
            let generation = self.connection.session_generation().await;
            let session = self.connection.session().ok_or(RestError::NoSession)?;
            let url = self.url(&session.instance_url, path);
            let request = self
                .connection
                .authenticator()
                .http()
                .request(method.clone(), &url)
                .timeout(REQUEST_TIMEOUT)
                .bearer_auth(session.access_token.expose_secret());
            let response = build(request)
                .send()
                .await
                .map_err(|source| RestError::Transport {
                    url: url.clone(),
                    source,
                })?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let body = response.text().await.unwrap_or_default();
            let (code, message) = error_of(&body);
            if code == "INVALID_SESSION_ID" && !relogged {
                relogged = true;
                self.connection.relogin(generation).await?;
                continue;
            }
            return Err(RestError::Refused {
                what: what.to_string(),
                status: status.as_u16(),
                hint: hint(&code),
                code,
                message,
            });
        }
    }

    /// The object's fields and their types.
    pub async fn describe(&self, object: &str) -> Result<Describe, RestError> {
        let what = format!("describing {object}");
        let path = format!("sobjects/{object}/describe");
        let response = self.send(&what, &path, |r| r, reqwest::Method::GET).await?;
        json(response, &what).await
    }

    /// The record `id` of `object`, its fields by API name; `None` when it does not exist
    /// or is deleted (`NOT_FOUND`, `ENTITY_IS_DELETED`). Any other refusal is an error.
    pub async fn record(
        &self,
        object: &str,
        id: &str,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, RestError> {
        let what = format!("reading {object} {id}");
        let path = format!("sobjects/{object}/{id}");
        match self.send(&what, &path, |r| r, reqwest::Method::GET).await {
            Ok(response) => json(response, &what).await.map(Some),
            Err(RestError::Refused {
                status: 404, code, ..
            }) if code == "NOT_FOUND" || code == "ENTITY_IS_DELETED" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The body as JSON of type `T`.
pub(crate) async fn json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> Result<T, RestError> {
    let url = response.url().to_string();
    let bytes = response
        .bytes()
        .await
        .map_err(|source| RestError::Transport {
            url: url.clone(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|e| RestError::Protocol {
        what: what.to_string(),
        url,
        detail: format!("not the JSON expected: {e}"),
    })
}

/// Salesforce's error code and message from an error body: `[{"errorCode", "message"}]`
/// (REST) or `{"error", "error_description"}` (OAuth); else the body itself.
fn error_of(body: &str) -> (String, String) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Item {
        error_code: String,
        message: String,
    }
    if let Ok(items) = serde_json::from_str::<Vec<Item>>(body)
        && let Some(first) = items.into_iter().next()
    {
        return (first.error_code, first.message);
    }
    let short: String = body.chars().take(300).collect();
    ("UNKNOWN".into(), short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_their_code_and_a_hint() {
        let (code, message) =
            error_of(r#"[{"errorCode":"INVALID_FIELD","message":"No such column 'X'"}]"#);
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("INVALID_FIELD", "No such column 'X'")
        );
        assert!(hint(&code).contains("field-level security"));
        assert_eq!(error_of("<html>busy</html>").0, "UNKNOWN");
    }
}
