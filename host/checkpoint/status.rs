//! How each checkpoint store is doing: answering or failing (since when, why), and when
//! it last took a commit. `/healthz`, `/metrics` and `/subscriptions` read it; the
//! committer writes it. A store that fails holds checkpoints back, it stops nothing: the
//! subscriptions go on writing and their positions wait, staged, for the store's return.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// One store's state, as the endpoints show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StoreState {
    /// `local`, `PostgreSQL`, or `SQL warehouse (table)`.
    pub store: String,
    pub healthy: bool,
    /// Why the last commit failed, while it does.
    pub error: Option<String>,
    /// When the store began failing (ms since the epoch), while it does.
    pub failing_since_ms: Option<i64>,
    /// When a commit last succeeded (ms since the epoch).
    pub last_commit_ms: Option<i64>,
}

impl StoreState {
    /// Seconds since the last successful commit; `None` before the first.
    pub fn last_commit_age_secs(&self, now_ms: i64) -> Option<f64> {
        self.last_commit_ms
            .map(|at| (now_ms - at).max(0) as f64 / 1000.0)
    }
}

/// Every store the process has committed to (see the module documentation).
#[derive(Debug, Default)]
pub struct StoreStatus {
    stores: Mutex<BTreeMap<String, StoreState>>,
}

/// What a commit's outcome changed, for the committer to log once, not every interval.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Transition {
    Unchanged,
    /// It was answering (or never tried) and failed.
    Failing,
    /// It was failing and answered again, after this many ms.
    Recovered(i64),
}

impl StoreStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoreState>> {
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a commit to `store` at `now_ms`: succeeded, or failed with `error`.
    pub(super) fn record(&self, store: &str, now_ms: i64, error: Option<String>) -> Transition {
        let mut stores = self.lock();
        let state = stores
            .entry(store.to_string())
            .or_insert_with(|| StoreState {
                store: store.to_string(),
                healthy: true,
                ..StoreState::default()
            });
        let was_failing = state.failing_since_ms;
        match error {
            None => {
                state.healthy = true;
                state.error = None;
                state.failing_since_ms = None;
                state.last_commit_ms = Some(now_ms);
                match was_failing {
                    Some(since) => Transition::Recovered(now_ms - since),
                    None => Transition::Unchanged,
                }
            }
            Some(error) => {
                state.healthy = false;
                state.error = Some(error);
                state.failing_since_ms = Some(was_failing.unwrap_or(now_ms));
                match was_failing {
                    Some(_) => Transition::Unchanged,
                    None => Transition::Failing,
                }
            }
        }
    }

    /// Every store committed to so far.
    pub fn list(&self) -> Vec<StoreState> {
        self.lock().values().cloned().collect()
    }

    /// One store's state, if the process has committed to it.
    pub fn get(&self, store: &str) -> Option<StoreState> {
        self.lock().get(store).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_told_once_and_the_recovery_says_how_long_it_lasted() {
        let status = StoreStatus::default();
        assert_eq!(
            status.record("PostgreSQL", 1_000, None),
            Transition::Unchanged
        );
        assert_eq!(
            status.record("PostgreSQL", 2_000, Some("refused".into())),
            Transition::Failing
        );
        assert_eq!(
            status.record("PostgreSQL", 3_000, Some("refused".into())),
            Transition::Unchanged
        );
        let state = status.get("PostgreSQL").unwrap();
        assert!(!state.healthy);
        assert_eq!(state.failing_since_ms, Some(2_000));
        assert_eq!(state.last_commit_age_secs(4_000), Some(3.0));
        assert_eq!(
            status.record("PostgreSQL", 5_000, None),
            Transition::Recovered(3_000)
        );
        assert!(status.get("PostgreSQL").unwrap().healthy);
        assert_eq!(
            status.get("PostgreSQL").unwrap().last_commit_ms,
            Some(5_000)
        );
    }
}
