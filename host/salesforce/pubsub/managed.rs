//! Managed subscriptions (ManagedSubscribe): Salesforce keeps the position. The checkpoint
//! stage publishes each durable position on a watch channel; the subscriber commits it on
//! the stream, and last of all when it stops, waiting for Salesforce to confirm, so the next
//! client starts right after it. Salesforce admits one client at a time; the others wait as
//! standbys.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::Subscriber;
use super::stream::{Inbound, Open, Requests};
use crate::event::ReplayId;
use crate::proto::pubsub::{CommitReplayRequest, CommitReplayResponse, ManagedFetchRequest};

/// The longest wait between two tries of a managed subscription another client reads.
pub(super) const STANDBY_RETRY_MAX: Duration = Duration::from_secs(10);

/// The longest a stopping managed subscriber waits for the last durable position.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(30);

impl Requests {
    /// Commits `position` to a managed subscription; false if the stream is gone.
    pub(super) async fn commit(&self, position: &ReplayId) -> bool {
        match self {
            Requests::Plain(_) => true,
            Requests::Managed(tx) => tx
                .send(ManagedFetchRequest {
                    commit_replay_id_request: Some(CommitReplayRequest {
                        commit_request_id: uuid::Uuid::new_v4().to_string(),
                        replay_id: position.as_bytes().clone(),
                    }),
                    ..Default::default()
                })
                .await
                .is_ok(),
        }
    }
}

impl Subscriber {
    /// Commits `position` unless it already is.
    pub(super) async fn commit(&mut self, requests: &Requests, position: ReplayId) {
        if self.committed.as_ref() != Some(&position) && requests.commit(&position).await {
            self.committed = Some(position);
        }
    }

    /// A stopping stream; for a managed subscription, waits (no longer fetching) until the
    /// pipeline has made its last position durable, commits it, and waits for Salesforce to
    /// confirm, so the next client starts right after it.
    pub(super) async fn stop(&mut self, open: &mut Open) {
        let Some(mut committed) = open.committed.take() else {
            return;
        };
        let waited = tokio::time::timeout(FINAL_COMMIT_WAIT, async {
            while committed.changed().await.is_ok() {}
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                "The pipeline did not finish within {} s; committing what is durable so far.",
                FINAL_COMMIT_WAIT.as_secs()
            );
        }
        let Some(position) = committed.borrow().clone() else {
            return;
        };
        let confirmed = self.committed.as_ref() == Some(&position)
            || (open.requests.commit(&position).await
                && confirmation(&mut open.inbound, &position).await);
        if confirmed {
            tracing::info!(replay_id = %position, "Committed the last durable position to the managed subscription.");
            self.committed = Some(position);
        } else {
            tracing::warn!(replay_id = %position, "Salesforce did not confirm the last commit; the next client may receive some events again.");
        }
    }
}

/// Whether Salesforce confirms the commit of `position` within a few seconds.
async fn confirmation(inbound: &mut Inbound, position: &ReplayId) -> bool {
    let confirmed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(response)) = inbound.next().await {
            if let Some(commit) = response.commit {
                log_commit(&commit);
                if commit.replay_id == position.as_bytes() {
                    return commit.error.is_none();
                }
            }
        }
        false
    })
    .await;
    confirmed == Ok(true)
}

/// The next durable position to commit, when there is a managed subscription whose pipeline
/// still runs; pending forever otherwise.
pub(super) async fn durable(
    committed: &mut Option<watch::Receiver<Option<ReplayId>>>,
) -> Option<ReplayId> {
    let Some(rx) = committed else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        // The pipeline ended; the stream is stopping, and commits its last position then.
        return std::future::pending().await;
    }
    rx.borrow_and_update().clone()
}

pub(super) fn log_commit(commit: &CommitReplayResponse) {
    let replay_id = hex::encode(&commit.replay_id);
    match &commit.error {
        Some(error) => {
            tracing::warn!(%replay_id, error = %error.msg, "Salesforce refused to commit the managed subscription's position; events after it may come again.")
        }
        None => tracing::debug!(%replay_id, "Committed to the managed subscription."),
    }
}
