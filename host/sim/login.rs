//! The simulated org's login endpoints over HTTP: SOAP partner `login()`, OAuth 2.0 token
//! (client credentials, username-password, JWT bearer) and `userinfo`. Tokens it issues are
//! the only ones its Pub/Sub API accepts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quick_xml::escape::escape;

use crate::salesforce::auth::xml_element;
use std::sync::Arc;

/// Who may log in. With no users and no clients configured, any non-empty credentials work.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    /// `(username, password)` pairs for SOAP and the OAuth password grant.
    pub users: Vec<(String, String)>,
    /// `(client_id, client_secret)` pairs for the OAuth grants.
    pub clients: Vec<(String, String)>,
    /// When set, JWT bearer assertions must be RS256-signed by this key's private half.
    pub jwt_public_key_pem: Option<String>,
}

impl Accounts {
    fn user_ok(&self, user: &str, password: &str) -> bool {
        if self.users.is_empty() {
            return !user.is_empty() && !password.is_empty();
        }
        self.users.iter().any(|(u, p)| u == user && p == password)
    }

    fn client_ok(&self, id: &str, secret: Option<&str>) -> bool {
        if self.clients.is_empty() {
            return !id.is_empty() && secret.is_none_or(|s| !s.is_empty());
        }
        self.clients
            .iter()
            .any(|(i, s)| i == id && secret.is_none_or(|secret| secret == s))
    }
}

/// Access tokens issued by the simulated org.
pub struct Tokens {
    ttl: Option<Duration>,
    issued: Mutex<HashMap<String, Instant>>,
    counter: std::sync::atomic::AtomicU64,
}

impl Tokens {
    pub fn new(ttl: Option<Duration>) -> Self {
        Tokens {
            ttl,
            issued: Mutex::new(HashMap::new()),
            counter: Default::default(),
        }
    }

    pub fn issue(&self, org_id: &str) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = format!("{org_id}!SIM.{n}.{}", uuid::Uuid::new_v4().simple());
        self.lock().insert(token.clone(), Instant::now());
        token
    }

    pub fn is_valid(&self, token: &str) -> bool {
        match self.lock().get(token) {
            Some(at) => self.ttl.is_none_or(|ttl| at.elapsed() < ttl),
            None => false,
        }
    }

    /// Every token issued and not revoked, for tests that look for them where they must
    /// not be.
    pub fn issued(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many tokens were issued, logins and refreshes together.
    pub fn issued_count(&self) -> u64 {
        self.counter.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Expires every token issued so far, as a session timeout or a revoked app would.
    pub fn revoke_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.issued.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One simulated org as its login endpoints see it.
pub struct LoginOrg {
    pub org_id: String,
    pub accounts: Accounts,
    pub tokens: Arc<Tokens>,
    /// Off once the org revoked this app's access: logins fail as Salesforce's do.
    pub access: std::sync::atomic::AtomicBool,
    /// Its events and records, for the REST and Bulk APIs.
    pub bus: Arc<crate::sim::bus::Bus>,
    /// On while the org's daily API request allocation is used up: REST and Bulk API
    /// calls are refused with 403 REQUEST_LIMIT_EXCEEDED, as Salesforce refuses them.
    pub api_limit_exceeded: std::sync::atomic::AtomicBool,
}

impl LoginOrg {
    pub fn new(
        org_id: String,
        accounts: Accounts,
        tokens: Arc<Tokens>,
        bus: Arc<crate::sim::bus::Bus>,
    ) -> LoginOrg {
        LoginOrg {
            org_id,
            accounts,
            tokens,
            access: std::sync::atomic::AtomicBool::new(true),
            bus,
            api_limit_exceeded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn has_access(&self) -> bool {
        self.access.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The login endpoints of every simulated org. With one org, it takes every login; with
/// several, a login goes to the org whose user or client it names, as one
/// login.salesforce.com serves every org.
pub struct LoginState {
    pub base_url: String,
    pub orgs: Vec<Arc<LoginOrg>>,
    /// Org index by username and by client id.
    by_identity: HashMap<String, usize>,
}

impl LoginState {
    pub fn new(base_url: String, orgs: Vec<Arc<LoginOrg>>) -> LoginState {
        let mut by_identity = HashMap::new();
        for (i, org) in orgs.iter().enumerate() {
            for (name, _) in org.accounts.users.iter().chain(&org.accounts.clients) {
                by_identity.insert(name.clone(), i);
            }
        }
        LoginState {
            base_url,
            orgs,
            by_identity,
        }
    }

    /// The org a login naming `identity` (a username or client id) goes to.
    fn org_for(&self, identity: &str) -> Option<&Arc<LoginOrg>> {
        match self.orgs.as_slice() {
            [only] => Some(only),
            orgs => self.by_identity.get(identity).map(|&i| &orgs[i]),
        }
    }

    /// The org that issued `token` (tokens start with their org's id, as Salesforce's do).
    pub(super) fn org_of_token(&self, token: &str) -> Option<&Arc<LoginOrg>> {
        let org_id = token.split_once('!')?.0;
        self.orgs.iter().find(|o| o.org_id == org_id)
    }
}

pub fn router(state: Arc<LoginState>) -> Router {
    Router::new()
        .route("/services/Soap/u/{version}/", post(soap_login))
        .route("/services/Soap/u/{version}", post(soap_login))
        .route("/services/oauth2/token", post(oauth_token))
        .route("/services/oauth2/userinfo", get(userinfo))
        .with_state(state)
}

const USER_ID: &str = "005000000000001AAA";

async fn soap_login(
    State(state): State<Arc<LoginState>>,
    Path(version): Path<String>,
    body: String,
) -> Response {
    let user = xml_element(&body, "username").unwrap_or_default();
    let password = xml_element(&body, "password").unwrap_or_default();
    let org = state
        .org_for(&user)
        .filter(|org| org.has_access() && org.accounts.user_ok(&user, &password));
    let Some(org) = org else {
        let fault = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope \
            xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
            xmlns:sf=\"urn:fault.partner.soap.sforce.com\"><soapenv:Body><soapenv:Fault>\
            <faultcode>sf:INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN: Invalid username, \
            password, security token; or user locked out.</faultstring><detail>\
            <sf:LoginFault><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode></sf:LoginFault>\
            </detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>";
        return xml(StatusCode::INTERNAL_SERVER_ERROR, fault.to_string());
    };
    let token = org.tokens.issue(&org.org_id);
    let base = &state.base_url;
    let org = &org.org_id;
    // Element order follows the real response; clients must find elements by name.
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope \
        xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns=\"urn:partner.soap.sforce.com\" \
        xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><loginResponse><result>\
        <metadataServerUrl>{base}/services/Soap/m/{version}/{org}</metadataServerUrl>\
        <passwordExpired>false</passwordExpired><sandbox>false</sandbox>\
        <serverUrl>{base}/services/Soap/u/{version}/{org}</serverUrl>\
        <sessionId>{}</sessionId><userId>{USER_ID}</userId><userInfo>\
        <accessibilityMode>false</accessibilityMode><currencySymbol>$</currencySymbol>\
        <orgAttachmentFileSizeLimit>5242880</orgAttachmentFileSizeLimit>\
        <orgDefaultCurrencyIsoCode>USD</orgDefaultCurrencyIsoCode>\
        <organizationId>{org}</organizationId><organizationMultiCurrency>false</organizationMultiCurrency>\
        <organizationName>sfzb simulator</organizationName><userEmail>{}</userEmail>\
        <userFullName>Sim User</userFullName><userId>{USER_ID}</userId><userName>{}</userName>\
        </userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>",
        escape(&token),
        escape(&user),
        escape(&user),
    );
    xml(StatusCode::OK, body)
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct TokenClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
}

async fn oauth_token(
    State(state): State<Arc<LoginState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let grant = get("grant_type");
    let identity = match grant {
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => jwt_issuer(get("assertion")),
        _ => get("client_id").to_string(),
    };
    let accepted = match state.org_for(&identity) {
        None => Err(("invalid_client", "invalid client credentials")),
        Some(org) if !org.has_access() => {
            Err(("invalid_grant", "the app's access to this org was revoked"))
        }
        Some(org) => check_grant(&org.accounts, grant, &form).map(|()| org),
    };
    let org = match accepted {
        Ok(org) => org,
        Err((error, description)) => {
            let status = if error == "invalid_client" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            };
            return oauth_error(status, error, description);
        }
    };
    let token = org.tokens.issue(&org.org_id);
    axum::Json(serde_json::json!({
        "access_token": token,
        "instance_url": state.base_url,
        "id": format!("{}/id/{}/{USER_ID}", state.base_url, org.org_id),
        "token_type": "Bearer",
        "issued_at": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis().to_string(),
        "signature": "sim",
    }))
    .into_response()
}

type Refusal = (&'static str, &'static str);

/// Whether the org's accounts accept this grant.
fn check_grant(
    accounts: &Accounts,
    grant: &str,
    form: &HashMap<String, String>,
) -> Result<(), Refusal> {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    match grant {
        "client_credentials" => {
            if accounts.client_ok(get("client_id"), Some(get("client_secret"))) {
                Ok(())
            } else {
                Err(("invalid_client", "invalid client credentials"))
            }
        }
        "password" => {
            if !accounts.client_ok(get("client_id"), Some(get("client_secret"))) {
                Err(("invalid_client", "invalid client credentials"))
            } else if !accounts.user_ok(get("username"), get("password")) {
                Err(("invalid_grant", "authentication failure"))
            } else {
                Ok(())
            }
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => check_jwt(accounts, get("assertion")),
        _ => Err(("unsupported_grant_type", "grant type not supported")),
    }
}

/// The client id a JWT assertion names (unverified: only to find its org).
fn jwt_issuer(assertion: &str) -> String {
    jsonwebtoken::dangerous::insecure_decode::<TokenClaims>(assertion)
        .map(|t| t.claims.iss)
        .unwrap_or_default()
}

fn check_jwt(accounts: &Accounts, assertion: &str) -> Result<(), Refusal> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| ("invalid_grant", "malformed assertion"))?;
    if header.alg != Algorithm::RS256 {
        return Err(("invalid_grant", "assertion must be RS256"));
    }
    let claims: TokenClaims = match &accounts.jwt_public_key_pem {
        Some(pem) => {
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|_| ("invalid_grant", "bad key"))?;
            let mut validation = Validation::new(Algorithm::RS256);
            validation.validate_aud = false;
            jsonwebtoken::decode::<TokenClaims>(assertion, &key, &validation)
                .map_err(|_| ("invalid_grant", "invalid assertion signature"))?
                .claims
        }
        None => {
            jsonwebtoken::dangerous::insecure_decode::<TokenClaims>(assertion)
                .map_err(|_| ("invalid_grant", "malformed assertion"))?
                .claims
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if claims.exp < now {
        return Err(("invalid_grant", "expired assertion"));
    }
    if claims.aud.is_empty() || claims.sub.is_empty() || !accounts.client_ok(&claims.iss, None) {
        return Err(("invalid_grant", "user hasn't approved this consumer"));
    }
    Ok(())
}

async fn userinfo(State(state): State<Arc<LoginState>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Some(org) = state
        .org_of_token(token)
        .filter(|org| org.tokens.is_valid(token))
    else {
        return (StatusCode::FORBIDDEN, "Bad_OAuth_Token").into_response();
    };
    axum::Json(serde_json::json!({
        "sub": format!("{}/id/{}/{USER_ID}", state.base_url, org.org_id),
        "user_id": USER_ID,
        "organization_id": org.org_id,
        "preferred_username": "sim@example.com",
        "name": "Sim User",
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_revoke() {
        let tokens = Tokens::new(None);
        let t = tokens.issue("00D");
        assert!(tokens.is_valid(&t));
        assert!(!tokens.is_valid("forged"));
        tokens.revoke_all();
        assert!(!tokens.is_valid(&t));
        let short = Tokens::new(Some(Duration::ZERO));
        let t = short.issue("00D");
        assert!(!short.is_valid(&t));
    }
}
