//! The Pub/Sub connections of a run: per endpoint, HTTP/2 connections of at most
//! [`STREAMS_PER_CONNECTION`] streams, any orgs on each (one endpoint serves every org, so
//! 10,000 subscriptions need 100 connections, not 10,000), and one session per org on
//! each. Subscriptions come and go (a reload), so a connection's streams are counted and
//! a stopped subscription's place is reused.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::config::OrgConfig;
use crate::salesforce::auth::{Authenticator, Credentials};
use crate::salesforce::pubsub::PubSubConnection;
use crate::salesforce::pubsub::connection;

/// Salesforce allows at most this many concurrent streams on one HTTP/2 connection.
pub(super) const STREAMS_PER_CONNECTION: usize = 100;

/// Which connection a subscription uses: its endpoint and the connection's number there.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Slot {
    endpoint: String,
    n: usize,
}

pub(crate) struct Connections {
    logins: crate::salesforce::auth::Logins,
    /// Per endpoint, its connections and the streams each carries.
    channels: HashMap<String, Vec<(tonic::transport::Channel, usize)>>,
    /// One session per org (by [`org_identity`]) and connection.
    sessions: HashMap<(String, Slot), PubSubConnection>,
}

impl Connections {
    pub(crate) fn new() -> Connections {
        Connections {
            logins: Default::default(),
            channels: HashMap::new(),
            sessions: HashMap::new(),
        }
    }

    /// A connection with room for one more stream, and the org's session on it.
    pub(crate) fn assign(
        &mut self,
        org: &OrgConfig,
    ) -> Result<(PubSubConnection, Slot), crate::salesforce::pubsub::SubscribeError> {
        let endpoint = &org.pubsub_endpoint;
        let channels = self.channels.entry(endpoint.clone()).or_default();
        let n = match channels
            .iter()
            .position(|(_, streams)| *streams < STREAMS_PER_CONNECTION)
        {
            Some(n) => n,
            None => {
                channels.push((connection::channel(endpoint)?, 0));
                channels.len() - 1
            }
        };
        channels[n].1 += 1;
        let channel = channels[n].0.clone();
        let slot = Slot {
            endpoint: endpoint.clone(),
            n,
        };
        let logins = &self.logins;
        let session = self
            .sessions
            .entry((org_identity(org), slot.clone()))
            .or_insert_with(|| {
                let authenticator = Authenticator::sharing(
                    logins,
                    &org.login_url,
                    &org.api_version,
                    org.credentials.clone(),
                );
                PubSubConnection::new(channel, authenticator)
            });
        Ok((session.clone(), slot))
    }

    /// A stream of `slot` ended for good: its place is free for the next subscription.
    pub(super) fn release(&mut self, slot: &Slot) {
        if let Some((_, streams)) = self
            .channels
            .get_mut(&slot.endpoint)
            .and_then(|c| c.get_mut(slot.n))
        {
            *streams = streams.saturating_sub(1);
        }
    }
}

/// What makes two orgs' sessions the same: where they log in and as whom, secrets
/// included (hashed, never shown), so a changed credential gets a new session.
pub(super) fn org_identity(org: &OrgConfig) -> String {
    use secrecy::ExposeSecret;
    let mut digest = Sha256::new();
    let mut part = |text: &str| {
        digest.update(text.as_bytes());
        digest.update([0]);
    };
    part(&org.login_url);
    part(&org.pubsub_endpoint);
    part(&org.api_version);
    match &org.credentials {
        Credentials::Soap { username, password } => {
            part("soap");
            part(username);
            part(password.expose_secret());
        }
        Credentials::ClientCredentials {
            client_id,
            client_secret,
        } => {
            part("client-credentials");
            part(client_id);
            part(client_secret.expose_secret());
        }
        Credentials::JwtBearer {
            client_id,
            username,
            private_key_pem,
            audience,
        } => {
            part("jwt");
            part(client_id);
            part(username);
            part(private_key_pem.expose_secret());
            part(audience);
        }
        Credentials::Password {
            client_id,
            client_secret,
            username,
            password,
        } => {
            part("password");
            part(client_id);
            part(client_secret.expose_secret());
            part(username);
            part(password.expose_secret());
        }
    }
    hex::encode(digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(endpoint: &str, secret: &str) -> OrgConfig {
        OrgConfig {
            name: "o".into(),
            pubsub_endpoint: endpoint.into(),
            login_url: "https://login.example".into(),
            api_version: "62.0".into(),
            credentials: Credentials::ClientCredentials {
                client_id: "c".into(),
                client_secret: secret.to_string().into(),
            },
            transform_config: Vec::new(),
        }
    }

    #[tokio::test]
    async fn an_endpoint_with_more_than_100_streams_gets_another_connection_and_reuses_freed_places()
     {
        let mut pool = Connections::new();
        let (a, b) = (org("https://a", "s"), org("https://b", "s"));
        let mut slots = Vec::new();
        for i in 0..250 {
            let org = if i % 5 == 0 { &b } else { &a };
            slots.push(pool.assign(org).unwrap().1);
        }
        let mut distinct: Vec<_> = slots.clone();
        distinct.sort();
        distinct.dedup();
        let names: Vec<_> = distinct
            .iter()
            .map(|s| (s.endpoint.as_str(), s.n))
            .collect();
        assert_eq!(
            names,
            [("https://a", 0), ("https://a", 1), ("https://b", 0)],
            "200 streams of endpoint a on two connections, 50 of b on one"
        );
        pool.release(&slots[1]);
        assert_eq!(
            pool.assign(&a).unwrap().1,
            slots[1],
            "a freed place on a full connection is taken before a new connection"
        );
        assert_eq!(
            pool.assign(&a).unwrap().1.n,
            2,
            "a third once both are full"
        );
    }

    #[test]
    fn a_changed_secret_is_another_session() {
        assert_eq!(
            org_identity(&org("https://a", "s")),
            org_identity(&org("https://a", "s"))
        );
        assert_ne!(
            org_identity(&org("https://a", "s")),
            org_identity(&org("https://a", "t"))
        );
    }
}
