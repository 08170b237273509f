//! Fencing with Kubernetes Leases: with `lease-namespace` set, a subscription reads only
//! while this process holds the Lease of its (org, channel), so two processes never read the
//! same channel, even while a reshard or a rolling update runs old and new pods side by side
//! (shards alone cannot promise that: two pods with different `N` both think they own it).
//!
//! The Lease is held through `kube-lease-manager` (server-side apply: a second holder is
//! refused by the API server). A holder renews at `duration - grace`; if it is told it lost
//! the Lease, or a renewal fails, it stops reading at once and finishes what it holds (flush,
//! checkpoint), within the `grace` seconds before anyone else may take the Lease, or is
//! abandoned. A process that stops releases its Leases; a standby, which looks again when
//! the Lease it saw would expire, takes over within `duration` seconds.

use crate::backoff::Backoff;
use std::future::Future;
use std::time::Duration;

use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio_util::sync::CancellationToken;

use crate::health::{Health, State};

/// `lease-*` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    /// Who this process is in `holderIdentity`: the pod name in Kubernetes.
    pub holder: String,
    /// How long a Lease stays held without renewal.
    pub duration_secs: u64,
}

impl LeaseSettings {
    /// Renewals happen this long before expiry; a failed one leaves this long to stop.
    pub fn grace_secs(&self) -> u64 {
        (self.duration_secs / 3).max(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error(
        "the Kubernetes API refused Lease {lease}: {reason}. The service account needs get, create and patch on leases (coordination.k8s.io) in that namespace (deploy/kubernetes/components/lease), and the namespace must exist"
    )]
    Refused { lease: String, reason: String },
    #[error(
        "Lease fencing is on (lease-namespace = {namespace:?}) but no Kubernetes API is configured: {reason}. In a pod, mount the service account token (automountServiceAccountToken: true); elsewhere set KUBECONFIG, or unset lease-namespace"
    )]
    NoCluster { namespace: String, reason: String },
}

/// A connection to the Kubernetes API and the settings of this process's Leases.
#[derive(Clone)]
pub struct Fence {
    client: kube::Client,
    settings: LeaseSettings,
    /// `holder` and a suffix of this process: a restarted pod of the same name must not be
    /// taken for the holder while the old process may still be writing.
    identity: String,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("settings", &self.settings)
            .finish()
    }
}

/// A free Lease is taken well within this; past it, another process most likely holds it
/// (or the API is slow, which the retry log lines then tell).
const STANDBY_AFTER: Duration = Duration::from_secs(1);

impl Fence {
    /// The in-cluster service account, else `KUBECONFIG` / `~/.kube/config`.
    pub async fn connect(settings: LeaseSettings) -> Result<Fence, FenceError> {
        let no_cluster = |reason: String| FenceError::NoCluster {
            namespace: settings.namespace.clone(),
            reason,
        };
        // kube builds its TLS client with rustls' process default provider.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut config = kube::Config::infer()
            .await
            .map_err(|e| no_cluster(e.to_string()))?;
        // A renewal must fail within the grace period, not be retried or left hanging past
        // it: the holder has to notice in time to stop before the Lease expires.
        config.default_retry = false;
        let limit = Duration::from_secs(settings.grace_secs()).div_f32(2.0);
        config.connect_timeout = Some(limit);
        config.read_timeout = Some(limit);
        config.write_timeout = Some(limit);
        config.reset_reader_on_write = true;
        let client = kube::Client::try_from(config).map_err(|e| no_cluster(e.to_string()))?;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let identity = format!("{}-{}", settings.holder, &suffix[..8]);
        Ok(Fence {
            client,
            settings,
            identity,
        })
    }

    /// The Lease of an (org, channel, target), the org by its
    /// [`crate::config::OrgConfig::identity`] (not the entry's name, which a rename
    /// changes): a valid object name, readable, and unique per key (the hash covers the
    /// target and what the readable part had to drop or fold).
    pub fn lease_name(org: &str, channel: &str, target: &str) -> String {
        let key = format!("{org}\u{0}{channel}\u{0}{target}");
        let readable: String = format!("{org}-{}", channel.trim_start_matches('/'))
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let readable: String = readable.chars().take(40).collect();
        let readable = readable.trim_matches('-');
        format!("sfzb-{readable}-{:08x}", crc32fast::hash(key.as_bytes()))
    }

    async fn manager(&self, lease: &str) -> Result<LeaseManager, LeaseManagerError> {
        LeaseManagerBuilder::new(self.client.clone(), lease)
            .with_namespace(&self.settings.namespace)
            .with_identity(&self.identity)
            .with_duration(self.settings.duration_secs)
            .with_grace(self.settings.grace_secs())
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .build()
            .await
    }

    /// Runs `work` whenever this process holds `lease`, until `work` ends on its own or
    /// `cancel` fires. `work` gets a token that fires when the Lease is lost; it must then
    /// stop reading and finish within the grace period (else it is abandoned, as after a
    /// crash: what it had not checkpointed is read again), after which the Lease is sought
    /// again. `health` says whether this process waits for another holder or cannot reach
    /// the API. Returns the outcome of the last run of `work`, `None` if it never ran.
    pub async fn hold<T, E, F, Fut>(
        &self,
        lease: &str,
        cancel: &CancellationToken,
        health: &Health,
        mut work: F,
    ) -> Result<Option<T>, E>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<FenceError> + std::fmt::Display,
    {
        let namespace = &self.settings.namespace;
        let mut last = None;
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let Some(manager) = self.take(lease, cancel, health, &mut backoff).await? else {
                return Ok(last);
            };
            tracing::info!(lease = %lease, holder = %self.identity, "Holding Kubernetes Lease {namespace}/{lease}; reading.");
            let lost = cancel.child_token();
            let run = work(lost.clone());
            tokio::pin!(run);
            let (outcome, renewal_failed) = tokio::select! {
                outcome = &mut run => (Some(outcome), false),
                renewal = manager.changed() => {
                    match &renewal {
                        Ok(_) => tracing::warn!(lease = %lease, "Kubernetes Lease {namespace}/{lease} was taken by another process; stopping this subscription."),
                        Err(error) => tracing::warn!(lease = %lease, %error, "Cannot renew Kubernetes Lease {namespace}/{lease}; stopping this subscription before it expires."),
                    }
                    lost.cancel();
                    let grace = Duration::from_secs(self.settings.grace_secs());
                    match tokio::time::timeout(grace, &mut run).await {
                        Ok(outcome) => (Some(outcome), renewal.is_err()),
                        Err(_) => {
                            tracing::warn!(lease = %lease, "The subscription did not stop within the Lease's grace period ({} s); abandoned: what it had not checkpointed is read again.", grace.as_secs());
                            (None, renewal.is_err())
                        }
                    }
                }
            };
            let stopped_by_loss = lost.is_cancelled() && !cancel.is_cancelled();
            if let Err(error) = manager.release().await {
                tracing::warn!(lease = %lease, %error, "Could not release Kubernetes Lease {namespace}/{lease}; it expires in {} s.", self.settings.duration_secs);
            }
            if !stopped_by_loss {
                return match outcome {
                    Some(outcome) => outcome.map(Some),
                    None => Ok(last),
                };
            }
            match outcome {
                Some(Ok(stats)) => last = Some(stats),
                Some(Err(error)) => {
                    tracing::warn!(lease = %lease, %error, "The subscription stopped with an error after losing its Lease; it starts again once the Lease is held.")
                }
                None => {}
            }
            // A Lease lost to a failing API: do not restart the whole pipeline at once.
            if renewal_failed && backoff.wait(cancel).await {
                return Ok(last);
            }
        }
    }

    /// Waits as a standby until this process holds `lease`, retrying API failures with
    /// `backoff`; `None` if cancelled first. A refusal no retry mends is an error.
    async fn take(
        &self,
        lease: &str,
        cancel: &CancellationToken,
        health: &Health,
        backoff: &mut Backoff,
    ) -> Result<Option<LeaseManager>, FenceError> {
        let namespace = &self.settings.namespace;
        loop {
            health.set_state(State::Standby(format!(
                "waiting for Kubernetes Lease {namespace}/{lease}, held by another process"
            )));
            // A fresh manager per attempt: after an API error one may still believe it holds
            // the Lease and never report acquiring it again.
            let acquisition = self.acquire(lease);
            tokio::pin!(acquisition);
            let acquired = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                acquired = &mut acquisition => acquired,
                _ = tokio::time::sleep(STANDBY_AFTER) => {
                    tracing::info!(lease = %lease, "Standby: Kubernetes Lease {namespace}/{lease} is held by another process; waiting for it.");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(None),
                        acquired = &mut acquisition => acquired,
                    }
                }
            };
            match acquired {
                Ok(manager) => return Ok(Some(manager)),
                Err(error) if refused(&error) => {
                    return Err(FenceError::Refused {
                        lease: format!("{namespace}/{lease}"),
                        reason: error.to_string(),
                    });
                }
                Err(error) => {
                    tracing::warn!(lease = %lease, %error, "Cannot take Kubernetes Lease {namespace}/{lease}; retrying in about {} s.", backoff.delay().as_secs());
                    health.set_state(State::Reconnecting(format!(
                        "cannot take Kubernetes Lease {namespace}/{lease}: {error}"
                    )));
                    if backoff.wait(cancel).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Waits until this process holds `lease`.
    async fn acquire(&self, lease: &str) -> Result<LeaseManager, LeaseManagerError> {
        let manager = self.manager(lease).await?;
        while !manager.changed().await? {}
        Ok(manager)
    }
}

/// Errors no retry mends: no permission, or no such namespace.
fn refused(error: &LeaseManagerError) -> bool {
    matches!(error, LeaseManagerError::KubeError(kube::Error::Api(status)) if matches!(status.code, 401 | 403 | 404))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_object_names_and_distinct() {
        let names = [
            Fence::lease_name("default", "/data/AccountChangeEvent", "delta:a"),
            Fence::lease_name("default", "/data/Account_ChangeEvent", "delta:a"),
            Fence::lease_name("acme", "/data/AccountChangeEvent", "delta:a"),
            Fence::lease_name("default", "/data/AccountChangeEvent", "delta:b"),
            Fence::lease_name(
                "an org with a very long name indeed",
                "/event/A_Very_Long_Platform_Event_Name__e",
                "zerobus:main.s.t",
            ),
        ];
        for name in &names {
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.ends_with('-') && name.starts_with("sfzb-"), "{name}");
        }
        assert_eq!(
            names[0],
            Fence::lease_name("default", "/data/AccountChangeEvent", "delta:a")
        );
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
        assert!(names[0].starts_with("sfzb-default-data-accountchangeevent-"));
    }
}
