//! A connection to the Pub/Sub API: an HTTP/2 channel (TLS, keepalives), shared by up to
//! 100 streams of any orgs as one endpoint serves every org, and an org's session on it.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{MAX_MESSAGE_BYTES, SubscribeError};
use crate::backoff::Backoff;
use crate::proto::pubsub::pub_sub_client::PubSubClient;
use crate::salesforce::auth::{AuthError, Authenticator, Session, SessionInterceptor};

pub(super) type Client = PubSubClient<InterceptedService<Channel, SessionInterceptor>>;

/// A connection to the Pub/Sub API with a logged-in session, shared by the subscriptions
/// of one org: a clone is a pointer (10,000 subscriptions hold several each).
#[derive(Clone)]
pub struct PubSubConnection(Arc<Shared>);

struct Shared {
    client: Client,
    session: Arc<RwLock<Option<Session>>>,
    authenticator: Authenticator,
    login_lock: tokio::sync::Mutex<u64>,
}

impl PubSubConnection {
    /// The org's session (by `authenticator`) on `channel`, which other orgs may share.
    pub fn new(channel: Channel, authenticator: Authenticator) -> Self {
        let session = Arc::new(RwLock::new(None));
        let interceptor = SessionInterceptor::new(session.clone());
        let client = PubSubClient::with_interceptor(channel, interceptor)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        PubSubConnection(Arc::new(Shared {
            client,
            session,
            authenticator,
            login_lock: tokio::sync::Mutex::new(0),
        }))
    }

    /// A client of the connection's channel, for a call or a stream of its own.
    pub(super) fn client(&self) -> Client {
        self.0.client.clone()
    }

    /// Logs in unless another task already refreshed the session since `seen_generation`.
    /// Returns the session generation now in force.
    async fn refresh(&self, seen_generation: u64) -> Result<u64, AuthError> {
        let mut generation = self.0.login_lock.lock().await;
        if *generation != seen_generation {
            return Ok(*generation);
        }
        let session = self.0.authenticator.login().await?;
        tracing::info!(org_id = %session.org_id, instance_url = %session.instance_url, flow = self.0.authenticator.credentials().kind(), "Authentication successful.");
        *self.0.session.write().unwrap_or_else(|e| e.into_inner()) = Some(session);
        *generation += 1;
        Ok(*generation)
    }

    /// Logs in unless another task did since `seen_generation`, retrying failures that may
    /// pass (an unreachable login endpoint) until `give_up` elapses, if given, or `cancel`
    /// fires; then the last failure is returned. Returns the session generation in force.
    pub async fn login_retrying(
        &self,
        seen_generation: u64,
        backoff: &mut Backoff,
        cancel: &CancellationToken,
        give_up: Option<Duration>,
    ) -> Result<u64, AuthError> {
        let started = Instant::now();
        loop {
            match self.refresh(seen_generation).await {
                Ok(generation) => return Ok(generation),
                Err(e)
                    if e.is_retryable()
                        && give_up.is_none_or(|limit| started.elapsed() < limit) =>
                {
                    tracing::warn!(error = %e, retry_in_ms = backoff.delay().as_millis() as u64, "Login failed; retrying.");
                    if backoff.wait(cancel).await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The session in force, for the org's REST and Bulk APIs.
    pub fn session(&self) -> Option<Session> {
        self.0
            .session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Logs in again after a REST call found the session expired, unless another task
    /// already did since `seen` (a session's generation, from [`Self::session_generation`]).
    pub async fn relogin(&self, seen: u64) -> Result<u64, AuthError> {
        self.refresh(seen).await
    }

    /// The generation of the session in force: it changes at every login.
    pub async fn session_generation(&self) -> u64 {
        self.generation().await
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.0.authenticator
    }

    pub fn org_id(&self) -> Option<String> {
        self.0
            .session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.org_id.clone())
    }

    /// The writer schema `id` as JSON (GetSchema), outside any stream, within
    /// [`CALL_DEADLINE`].
    pub async fn schema_json(&self, id: &str) -> Result<String, tonic::Status> {
        let request = crate::proto::pubsub::SchemaRequest {
            schema_id: id.to_string(),
        };
        let mut client = self.client();
        let info = within_deadline("GetSchema", client.get_schema(request)).await?;
        Ok(info.into_inner().schema_json)
    }

    /// The id of the schema `channel`'s events use now (GetTopic), within
    /// [`CALL_DEADLINE`].
    pub async fn topic_schema_id(&self, channel: &str) -> Result<String, tonic::Status> {
        let request = crate::proto::pubsub::TopicRequest {
            topic_name: channel.to_string(),
        };
        let mut client = self.client();
        let info = within_deadline("GetTopic", client.get_topic(request)).await?;
        Ok(info.into_inner().schema_id)
    }

    pub(super) async fn generation(&self) -> u64 {
        *self.0.login_lock.lock().await
    }
}

/// How long a unary call (GetSchema, GetTopic) may go unanswered before it fails as
/// DEADLINE_EXCEEDED, an error that may pass: a hung call never stalls a subscription.
pub const CALL_DEADLINE: Duration = Duration::from_secs(60);

async fn within_deadline<T>(
    call: &str,
    answer: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(CALL_DEADLINE, answer)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "{call} gave no answer within {} s",
                CALL_DEADLINE.as_secs()
            )))
        })
}

/// An HTTP/2 channel to `endpoint`: `https://host:port` (TLS, the default service) or
/// `http://host:port` (plaintext, for the simulator). Connects lazily: nothing is dialled
/// until the first call.
pub fn channel(endpoint: &str) -> Result<Channel, SubscribeError> {
    let bad = |detail: String| SubscribeError::Endpoint {
        endpoint: endpoint.to_string(),
        detail,
    };
    let mut channel = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(20))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if endpoint.starts_with("https://") {
        channel = channel
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .map_err(|e| bad(e.to_string()))?;
    } else if !endpoint.starts_with("http://") {
        return Err(bad(
            "it must start with https:// (or http:// for the simulator)".into(),
        ));
    }
    Ok(channel.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_must_be_http_or_https() {
        assert!(channel("ftp://x").is_err());
        assert!(channel("not a url").is_err());
    }
}
