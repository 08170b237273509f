//! Salesforce authentication: SOAP partner `login()` (as the reference library does),
//! OAuth 2.0 client credentials, JWT bearer and username-password. Each yields a [`Session`]:
//! the access token, the instance URL and the org id the Pub/Sub API needs on every call.
//! Secrets live in `SecretString` and never reach a log line or an error message.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// SOAP `login()` is retired in Summer '27 (API version 65.0 onwards refuses it).
pub const SOAP_RETIREMENT: &str = "SOAP login() is retired in Salesforce Summer '27; \
    move to OAuth client credentials (--client-id/--client-secret) or JWT bearer (--jwt-key-file).";

/// How to log in.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// SOAP partner API `login()`: username and password with the security token appended.
    Soap {
        username: String,
        password: SecretString,
    },
    /// OAuth 2.0 client credentials flow of a connected app / external client app.
    ClientCredentials {
        client_id: String,
        client_secret: SecretString,
    },
    /// OAuth 2.0 JWT bearer flow: an assertion signed (RS256) with the app's private key.
    JwtBearer {
        client_id: String,
        username: String,
        private_key_pem: SecretString,
        /// `https://login.salesforce.com`, `https://test.salesforce.com`, or the login URL.
        audience: String,
    },
    /// OAuth 2.0 username-password flow.
    Password {
        client_id: String,
        client_secret: SecretString,
        username: String,
        password: SecretString,
    },
}

impl Credentials {
    pub fn kind(&self) -> &'static str {
        match self {
            Credentials::Soap { .. } => "soap",
            Credentials::ClientCredentials { .. } => "client-credentials",
            Credentials::JwtBearer { .. } => "jwt-bearer",
            Credentials::Password { .. } => "password",
        }
    }

    /// Who logs in: the username, else the client id (a client-credentials app runs as
    /// one user of one org). Not a secret.
    pub fn principal(&self) -> &str {
        match self {
            Credentials::Soap { username, .. }
            | Credentials::JwtBearer { username, .. }
            | Credentials::Password { username, .. } => username,
            Credentials::ClientCredentials { client_id, .. } => client_id,
        }
    }

    /// The flow and who logs in, secrets masked: for `config check` and logs.
    pub fn describe(&self) -> serde_json::Value {
        let (client_id, username) = match self {
            Credentials::Soap { username, .. } => (None, Some(username)),
            Credentials::ClientCredentials { client_id, .. } => (Some(client_id), None),
            Credentials::JwtBearer {
                client_id,
                username,
                ..
            }
            | Credentials::Password {
                client_id,
                username,
                ..
            } => (Some(client_id), Some(username)),
        };
        serde_json::json!({
            "flow": self.kind(),
            "client-id": client_id,
            "username": username,
            "secret": "***",
        })
    }
}

/// An authenticated session.
#[derive(Clone, Debug)]
pub struct Session {
    pub access_token: SecretString,
    /// The org's instance URL (scheme, host and port), sent as `instanceurl`.
    pub instance_url: String,
    /// The org id, sent as `tenantid`.
    pub org_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Salesforce rejected the {flow} login ({code}): {}. {hint}", .message.trim_end_matches('.'))]
    Rejected {
        flow: &'static str,
        code: String,
        message: String,
        hint: &'static str,
    },
    #[error("cannot reach the Salesforce login endpoint {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from {url} (HTTP {status}): {detail}")]
    Protocol {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("the JWT private key cannot be used: {0}")]
    Key(String),
}

impl AuthError {
    /// Whether trying again later can succeed. Rejected credentials and bad keys need a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            AuthError::Transport { .. } => true,
            AuthError::Protocol { status, .. } => *status >= 500 || *status == 429,
            AuthError::Rejected { .. } | AuthError::Key(_) => false,
        }
    }
}

const SOAP_HINT: &str = "Check the username, that the password has the security token appended with no \
    space (Setup → My Personal Information → Reset My Security Token), that --instance-url is your \
    login or My Domain URL, and that the user's profile has \"API Enabled\"";
const OAUTH_HINT: &str = "Check the client id and secret of the connected app, that its OAuth policies \
    allow this flow (client credentials needs a \"Run As\" user), and that the app is enabled for the org";

/// Logs in to Salesforce with one set of credentials.
#[derive(Clone)]
pub struct Authenticator {
    http: reqwest::Client,
    in_flight: Arc<tokio::sync::Semaphore>,
    login_url: String,
    api_version: String,
    credentials: Credentials,
}

/// Idle connections kept per login host: one per org kept for 90 s (reqwest's default)
/// held 33 KB each, 330 MB for 10,000 orgs starting. Orgs with a host of their own (My
/// Domain) keep one each, for the idle timeout.
const IDLE_LOGIN_CONNECTIONS: usize = 16;

/// Logins of a process in flight at once, whatever `login-rate` allows: ten thousand
/// tenants starting with no rate limit would otherwise hold ten thousand login requests
/// and connections at the same time.
const MAX_LOGINS_IN_FLIGHT: usize = 64;

/// What the logins of many orgs share: the HTTP client (TLS roots and connection pool
/// loaded once per run, not once per tenant) and the bound on logins in flight.
#[derive(Clone)]
pub struct Logins {
    http: reqwest::Client,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Default for Logins {
    fn default() -> Logins {
        Logins {
            http: http_client(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_LOGINS_IN_FLIGHT)),
        }
    }
}

/// An HTTP client for logins.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        // A login is rare (a start, an expired session) but thousands of orgs start at
        // once: a few idle connections serve the next logins, and none is kept for long.
        .pool_max_idle_per_host(IDLE_LOGIN_CONNECTIONS)
        .pool_idle_timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client with a timeout always builds")
}

impl Authenticator {
    /// `login_url` is where to log in: `https://login.salesforce.com`, `https://test.salesforce.com`
    /// or the org's My Domain URL.
    pub fn new(login_url: &str, api_version: &str, credentials: Credentials) -> Self {
        Self::sharing(&Logins::default(), login_url, api_version, credentials)
    }

    /// The same, sharing `logins` with other orgs.
    pub fn sharing(
        logins: &Logins,
        login_url: &str,
        api_version: &str,
        credentials: Credentials,
    ) -> Self {
        Authenticator {
            http: logins.http.clone(),
            in_flight: logins.in_flight.clone(),
            login_url: login_url.trim_end_matches('/').to_string(),
            api_version: api_version.to_string(),
            credentials,
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The client its logins use, for the REST and Bulk APIs of the same org.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The API version, `62.0`.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    pub async fn login(&self) -> Result<Session, AuthError> {
        let _in_flight = self.in_flight.acquire().await;
        match &self.credentials {
            Credentials::Soap { username, password } => self.soap_login(username, password).await,
            Credentials::ClientCredentials {
                client_id,
                client_secret,
            } => {
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", client_secret.expose_secret()),
                ];
                self.oauth(&form, "client-credentials").await
            }
            Credentials::Password {
                client_id,
                client_secret,
                username,
                password,
            } => {
                let form = [
                    ("grant_type", "password"),
                    ("client_id", client_id),
                    ("client_secret", client_secret.expose_secret()),
                    ("username", username),
                    ("password", password.expose_secret()),
                ];
                self.oauth(&form, "password").await
            }
            Credentials::JwtBearer {
                client_id,
                username,
                private_key_pem,
                audience,
            } => {
                let assertion = jwt_assertion(client_id, username, audience, private_key_pem)?;
                let form = [
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ];
                self.oauth(&form, "jwt-bearer").await
            }
        }
    }

    async fn soap_login(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<Session, AuthError> {
        use quick_xml::escape::escape;
        let url = format!("{}/services/Soap/u/{}/", self.login_url, self.api_version);
        let envelope = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><soapenv:Envelope \
             xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             xmlns:urn=\"urn:partner.soap.sforce.com\"><soapenv:Body><urn:login>\
             <urn:username>{}</urn:username><urn:password>{}</urn:password>\
             </urn:login></soapenv:Body></soapenv:Envelope>",
            escape(username),
            escape(password.expose_secret())
        );
        let request = self
            .http
            .post(&url)
            .header("Content-Type", "text/xml; charset=UTF-8")
            .header("SOAPAction", "login")
            .body(envelope);
        let (status, body) = send(request, &url).await?;
        if let Some(message) = xml_element(&body, "faultstring") {
            let code = xml_element(&body, "exceptionCode")
                .or_else(|| xml_element(&body, "faultcode"))
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(AuthError::Rejected {
                flow: "SOAP",
                code,
                message,
                hint: SOAP_HINT,
            });
        }
        let field = |name: &str| {
            xml_element(&body, name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| AuthError::Protocol {
                    url: url.clone(),
                    status,
                    detail: format!("the login response has no {name}"),
                })
        };
        let server_url = field("serverUrl")?;
        let session_id = field("sessionId")?;
        let org_id = field("organizationId")?;
        Ok(Session {
            access_token: SecretString::from(session_id),
            instance_url: origin(&server_url).ok_or_else(|| AuthError::Protocol {
                url: url.clone(),
                status,
                detail: format!("serverUrl {server_url:?} is not a URL"),
            })?,
            org_id,
        })
    }

    async fn oauth(&self, form: &[(&str, &str)], flow: &'static str) -> Result<Session, AuthError> {
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            instance_url: String,
        }
        #[derive(Deserialize)]
        struct OAuthError {
            error: String,
            #[serde(default)]
            error_description: String,
        }
        #[derive(Deserialize)]
        struct UserInfo {
            organization_id: String,
        }
        let url = format!("{}/services/oauth2/token", self.login_url);
        let (status, body) = send(self.http.post(&url).form(form), &url).await?;
        if status != 200 {
            return Err(match serde_json::from_str::<OAuthError>(&body) {
                Ok(e) => AuthError::Rejected {
                    flow,
                    code: e.error,
                    message: e.error_description,
                    hint: OAUTH_HINT,
                },
                Err(_) => AuthError::Protocol {
                    url,
                    status,
                    detail: truncate(&body),
                },
            });
        }
        let token: Token = serde_json::from_str(&body).map_err(|e| AuthError::Protocol {
            url: url.clone(),
            status,
            detail: format!("the token response is not as expected: {e}"),
        })?;
        let info_url = format!(
            "{}/services/oauth2/userinfo",
            token.instance_url.trim_end_matches('/')
        );
        let (status, body) = send(
            self.http.get(&info_url).bearer_auth(&token.access_token),
            &info_url,
        )
        .await?;
        if status != 200 {
            return Err(AuthError::Protocol {
                url: info_url,
                status,
                detail: truncate(&body),
            });
        }
        let info: UserInfo = serde_json::from_str(&body).map_err(|e| AuthError::Protocol {
            url: info_url.clone(),
            status,
            detail: format!("userinfo has no organization_id: {e}"),
        })?;
        Ok(Session {
            access_token: SecretString::from(token.access_token),
            instance_url: origin(&token.instance_url).unwrap_or(token.instance_url),
            org_id: info.organization_id,
        })
    }
}

/// Sends a request and reads the whole answer: its status and body.
async fn send(request: reqwest::RequestBuilder, url: &str) -> Result<(u16, String), AuthError> {
    let transport = |source| AuthError::Transport {
        url: url.to_string(),
        source,
    };
    let response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(transport)?;
    Ok((status, body))
}

/// An error body as far as it may be logged: its first 300 characters, with every run that
/// could be a credential (24 or more token characters: an access token, a session id, a
/// signed assertion) replaced by `[redacted]`.
fn truncate(body: &str) -> String {
    let token_char = |c: char| c.is_ascii_alphanumeric() || "._~+/=!-".contains(c);
    let mut out = String::new();
    let mut run = String::new();
    let end_run = |run: &mut String, out: &mut String| {
        if run.len() >= 24 {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in body.chars().take(300) {
        if token_char(c) {
            run.push(c);
        } else {
            end_run(&mut run, &mut out);
            out.push(c);
        }
    }
    end_run(&mut run, &mut out);
    out
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}"))
}

fn jwt_assertion(
    client_id: &str,
    username: &str,
    audience: &str,
    key_pem: &SecretString,
) -> Result<String, AuthError> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        sub: &'a str,
        aud: &'a str,
        exp: u64,
    }
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.expose_secret().as_bytes())
        .map_err(|e| AuthError::Key(format!("not an RSA private key in PEM form ({e})")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        iss: client_id,
        sub: username,
        aud: audience,
        // Salesforce accepts assertions valid for at most 3 minutes.
        exp: now + 180,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .map_err(|e| AuthError::Key(e.to_string()))
}

/// The text of the first element with this local name (namespace prefix ignored),
/// entity references resolved.
pub(crate) fn xml_element(body: &str, local: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(body);
    let mut text: Option<String> = None;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if text.is_none() && e.local_name().as_ref() == local.as_bytes() => {
                text = Some(String::new());
            }
            Event::Text(t) => {
                if let Some(text) = text.as_mut() {
                    text.push_str(&t.decode().ok()?);
                }
            }
            Event::CData(t) => {
                if let Some(text) = text.as_mut() {
                    text.push_str(&t.decode().ok()?);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(text) = text.as_mut() {
                    if let Some(c) = r.resolve_char_ref().ok()? {
                        text.push(c);
                    } else {
                        text.push_str(quick_xml::escape::resolve_predefined_entity(
                            &r.decode().ok()?,
                        )?);
                    }
                }
            }
            Event::End(_) if text.is_some() => return text,
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// Adds the session's metadata to every RPC: `accesstoken` (marked sensitive), `instanceurl`,
/// `tenantid`, and a fresh `x-client-trace-id` to quote to Salesforce support.
#[derive(Clone)]
pub struct SessionInterceptor {
    session: Arc<RwLock<Option<Session>>>,
}

impl SessionInterceptor {
    /// Reads the session from `session`, where logins put it.
    pub fn new(session: Arc<RwLock<Option<Session>>>) -> Self {
        SessionInterceptor { session }
    }
}

impl tonic::service::Interceptor for SessionInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let guard = self.session.read().unwrap_or_else(|e| e.into_inner());
        let session = guard
            .as_ref()
            .ok_or_else(|| tonic::Status::unauthenticated("not logged in"))?;
        let invalid = |what| {
            tonic::Status::invalid_argument(format!(
                "the session's {what} is not a valid header value"
            ))
        };
        let mut token: tonic::metadata::MetadataValue<_> = session
            .access_token
            .expose_secret()
            .parse()
            .map_err(|_| invalid("access token"))?;
        token.set_sensitive(true);
        let metadata = request.metadata_mut();
        metadata.insert("accesstoken", token);
        metadata.insert(
            "instanceurl",
            session
                .instance_url
                .parse()
                .map_err(|_| invalid("instance URL"))?,
        );
        metadata.insert(
            "tenantid",
            session.org_id.parse().map_err(|_| invalid("org id"))?,
        );
        let trace: tonic::metadata::MetadataValue<_> = uuid::Uuid::new_v4()
            .to_string()
            .parse()
            .map_err(|_| invalid("trace id"))?;
        metadata.insert("x-client-trace-id", trace);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_lose_anything_that_could_be_a_credential() {
        let token = "00D5g000004X9Zz!AQ4AQFwzQ3y7M_9aQexample";
        let body = format!(r#"{{"error":"server_error","detail":"bad {token}"}}"#);
        let logged = truncate(&body);
        assert!(!logged.contains(token), "{logged}");
        assert!(
            logged.contains("server_error") && logged.contains("[redacted]"),
            "{logged}"
        );
        assert_eq!(truncate(&"x".repeat(1000)), "[redacted]");
    }

    #[test]
    fn a_rejection_ends_in_one_period() {
        let e = AuthError::Rejected {
            flow: "SOAP",
            code: "INVALID_LOGIN".into(),
            message: "Invalid username, password, security token; or user locked out.".into(),
            hint: "Check the credentials.",
        };
        let text = e.to_string();
        assert!(
            text.contains("locked out. Check") && !text.contains(".."),
            "{text}"
        );
    }

    #[test]
    fn elements_are_found_by_name_and_unescaped() {
        let body = "<e:Envelope xmlns:e='x'><e:Body><urn:login><urn:username>a&amp;b&#33;</urn:username>\
                    <urn:password>p&lt;w</urn:password><empty></empty></urn:login></e:Body></e:Envelope>";
        assert_eq!(xml_element(body, "username").as_deref(), Some("a&b!"));
        assert_eq!(xml_element(body, "password").as_deref(), Some("p<w"));
        assert_eq!(xml_element(body, "empty").as_deref(), Some(""));
        assert_eq!(xml_element(body, "nothing"), None);
        assert_eq!(xml_element("<a><b>", "b"), None);
    }

    #[test]
    fn origin_keeps_scheme_host_and_port() {
        assert_eq!(
            origin("https://na1.salesforce.com/services/Soap/u/57.0/00D").as_deref(),
            Some("https://na1.salesforce.com")
        );
        assert_eq!(
            origin("http://127.0.0.1:18443/x").as_deref(),
            Some("http://127.0.0.1:18443")
        );
        assert_eq!(origin("nonsense"), None);
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = Credentials::Soap {
            username: "u".into(),
            password: SecretString::from("hunter2TOKEN"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn a_bad_key_is_a_key_error() {
        let err = jwt_assertion("id", "u", "aud", &SecretString::from("not a key")).unwrap_err();
        assert!(matches!(err, AuthError::Key(_)));
        assert!(!err.is_retryable());
    }
}
