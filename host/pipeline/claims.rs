//! At most one running subscription per (org id, channel, target) in a process: two would
//! share one checkpoint and write each other's events twice. A subscription claims its key
//! once it knows its org id (after the login) and before it reads its checkpoint; one that
//! finds the key held (a tenant renamed by a live reload, starting while the old name
//! still stops) waits, as a standby, until the holder has made its last position durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointKey;
use crate::health::{Health, State};

/// The keys claimed in this process.
#[derive(Clone, Default)]
pub struct Claims(Arc<Mutex<HashMap<CheckpointKey, Arc<tokio::sync::Mutex<()>>>>>);

/// A held claim: the key is free again when it is dropped.
pub struct Claim {
    _held: OwnedMutexGuard<()>,
}

impl Claims {
    /// Claims `key`, waiting while another subscription holds it; `None` if cancelled
    /// meanwhile.
    pub async fn claim(
        &self,
        key: &CheckpointKey,
        health: &Health,
        cancel: &CancellationToken,
    ) -> Option<Claim> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        if let Ok(held) = lock.clone().try_lock_owned() {
            return Some(Claim { _held: held });
        }
        tracing::info!(org_id = %key.org_id, "Another subscription of this process reads this org, channel and target: waiting for it to stop.");
        health.set_state(State::Standby(
            "another subscription of this process reads this org, channel and target (a renamed tenant?); waiting for it to stop".into(),
        ));
        let held = tokio::select! {
            _ = cancel.cancelled() => return None,
            held = lock.lock_owned() => held,
        };
        health.set_state(State::Starting);
        Some(Claim { _held: held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_claim_of_a_key_waits_for_the_first_to_end() {
        let claims = Claims::default();
        let key = CheckpointKey {
            org_id: "00D000000000001".into(),
            channel: "/data/AccountChangeEvent".into(),
            target: "jsonl:a".into(),
        };
        let health = Health::new("a", "o", "c", "t", std::time::Duration::from_secs(1), 1);
        let cancel = CancellationToken::new();
        let first = claims.claim(&key, &health, &cancel).await.unwrap();
        let other = CheckpointKey {
            target: "jsonl:b".into(),
            ..key.clone()
        };
        assert!(
            claims.claim(&other, &health, &cancel).await.is_some(),
            "another key is free"
        );
        let waiting = {
            let (claims, key, cancel) = (claims.clone(), key.clone(), cancel.clone());
            tokio::spawn(async move {
                let health = Health::new("b", "o", "c", "t", std::time::Duration::from_secs(1), 1);
                claims.claim(&key, &health, &cancel).await.is_some()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "held: the second waits");
        drop(first);
        assert!(waiting.await.unwrap(), "claimed once the first ended");
    }
}
