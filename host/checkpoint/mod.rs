//! Replay checkpoints: per (org, channel, target), the replay id up to which every event is
//! durably written or dead-lettered.
//!
//! A sink that keeps its own (a Delta table: the position commits with the rows) needs
//! none of this. Every other subscription stages its position in the process's
//! [`Checkpoints`] once its sink's flush returned; one committer per process writes every
//! staged position once per interval, in one operation per store, whatever the number of
//! subscriptions, so no store ever holds a position its sink has not made durable.
//!
//! | store | [`Place`] | one commit is |
//! |---|---|---|
//! | [`local`] | `state-dir/checkpoints.json` | one atomic file replacement |
//! | [`postgres`] | a PostgreSQL (or Databricks Lakebase) table | one upsert statement |
//! | [`warehouse`] | `sfzb_checkpoints` next to a Zerobus table, by SQL warehouse | one `MERGE` per table |
//!
//! A store that fails stops nothing: its positions stay staged (the newest per key), the
//! subscriptions go on writing, and the next commit that gets through writes them all;
//! [`status`] says meanwhile which store fails, why, and since when.

mod local;
mod postgres;
mod status;
mod warehouse;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::ReplayId;
use crate::sink::SinkSpec;
pub use local::LocalFile;
pub use postgres::PostgresSettings;
pub use status::{StoreState, StoreStatus};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot {action} checkpoint {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checkpoint {path} is unreadable ({detail}); sfzb-host will not guess where to resume. Restore the file, or choose the start yourself with --replay earliest (the retained 72 hours again: at least once) or --replay <hex replay id>"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "PostgreSQL checkpoint store: cannot {action}: {detail}; check checkpoint-postgres-url (host, port, database, user, password, sslmode) and that the server accepts connections from here"
    )]
    Postgres {
        action: &'static str,
        detail: String,
    },
    #[error("checkpoint table through the SQL warehouse: {0}")]
    Warehouse(#[from] crate::sql::SqlError),
    #[error(
        "checkpoints are not being committed to the {store} store ({detail}); the data written is durable, and the next start replays from the last committed position"
    )]
    Failing { store: String, detail: String },
}

impl CheckpointError {
    pub fn is_retryable(&self) -> bool {
        match self {
            CheckpointError::Io { .. }
            | CheckpointError::Postgres { .. }
            | CheckpointError::Failing { .. } => true,
            CheckpointError::Warehouse(e) => e.is_retryable(),
            CheckpointError::Corrupt { .. } => false,
        }
    }
}

/// Identifies one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckpointKey {
    pub org_id: String,
    pub channel: String,
    pub target: String,
}

impl CheckpointKey {
    fn id(&self) -> String {
        id(&self.org_id, &self.channel, &self.target)
    }
}

/// One checkpoint as every store keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    replay_id: String,
    org_id: String,
    channel: String,
    target: String,
    updated_at_ms: i64,
}

impl Stored {
    /// Its key's [`CheckpointKey::id`].
    fn id(&self) -> String {
        id(&self.org_id, &self.channel, &self.target)
    }
}

/// What a checkpoint is stored under: org, channel and target.
fn id(org_id: &str, channel: &str, target: &str) -> String {
    format!("{org_id}\0{channel}\0{target}")
}

/// Which store keeps a subscription's checkpoint (`checkpoint-store`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// PostgreSQL when checkpoint-postgres-url is set; else the warehouse's table for
    /// Zerobus targets when a SQL warehouse is set; else local.
    #[default]
    Auto,
    Local,
    Postgres,
    Warehouse,
}

/// Where one subscription's checkpoint lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    Local,
    Postgres,
    /// The checkpoint table next to this Zerobus table; `reference`: the table has the
    /// reference layout, so a table the reference library wrote tells where to resume.
    Warehouse {
        table: Arc<str>,
        reference: bool,
    },
}

impl Place {
    fn store(&self) -> &'static str {
        match self {
            Place::Local => "local",
            Place::Postgres => "PostgreSQL",
            Place::Warehouse { .. } => "SQL warehouse",
        }
    }

    /// The store as [`StoreStatus`] names it: each warehouse table on its own.
    pub fn label(&self) -> String {
        match self {
            Place::Warehouse { table, .. } => format!("SQL warehouse ({table})"),
            _ => self.store().to_string(),
        }
    }
}

/// A position staged and not yet committed, and where it goes.
struct Entry {
    place: Place,
    stored: Stored,
}

/// Positions staged and not yet in their store. A committed one leaves: the store is then
/// the truth (an operator's change to it is seen at the next start).
#[derive(Default)]
struct Staged {
    entries: HashMap<String, Entry>,
    /// The last position this process committed per key: what a subscription started
    /// again resumes from while its store cannot be read (a store that fails stops
    /// nothing), never in place of a store that answers.
    last_committed: HashMap<String, Stored>,
    /// Per place (each warehouse table on its own), why its last commit failed, while it
    /// does.
    failures: HashMap<Place, String>,
}

/// The process's checkpoints (see the module documentation).
pub struct Checkpoints {
    kind: StoreKind,
    staged: Mutex<Staged>,
    /// One commit at a time within the process.
    committing: tokio::sync::Mutex<()>,
    status: Arc<StoreStatus>,
    local: LocalFile,
    postgres: Option<postgres::PostgresStore>,
    warehouse: Option<warehouse::WarehouseStore>,
}

impl Checkpoints {
    /// The stores the options name. Nothing connects until a checkpoint is read or written.
    pub fn new(options: &crate::config::RunOptions) -> Checkpoints {
        Checkpoints {
            kind: options.checkpoint_store,
            staged: Mutex::default(),
            committing: tokio::sync::Mutex::new(()),
            status: Arc::default(),
            local: LocalFile::new(&options.state_dir),
            postgres: options.postgres.clone().map(postgres::PostgresStore::new),
            warehouse: options.sql.clone().map(warehouse::WarehouseStore::new),
        }
    }

    /// Only the local store, in `dir`.
    #[cfg(test)]
    pub(crate) fn in_dir(dir: &std::path::Path) -> Checkpoints {
        Checkpoints {
            kind: StoreKind::Local,
            staged: Mutex::default(),
            committing: tokio::sync::Mutex::new(()),
            status: Arc::default(),
            local: LocalFile::new(dir),
            postgres: None,
            warehouse: None,
        }
    }

    /// Where the checkpoint of a subscription writing `sink` lives (a sink keeping its own
    /// needs none). Configuration checks made sure the store named exists.
    pub fn place(&self, sink: &SinkSpec, layout: crate::sink::Layout) -> Place {
        let warehouse = match (sink, &self.warehouse) {
            (SinkSpec::Zerobus(table), Some(_)) => Some(Place::Warehouse {
                table: Arc::from(table.as_str()),
                reference: layout == crate::sink::Layout::Reference,
            }),
            _ => None,
        };
        match self.kind {
            StoreKind::Auto | StoreKind::Postgres if self.postgres.is_some() => Place::Postgres,
            StoreKind::Auto | StoreKind::Warehouse => warehouse.unwrap_or(Place::Local),
            StoreKind::Local | StoreKind::Postgres => Place::Local,
        }
    }

    fn lock_staged(&self) -> std::sync::MutexGuard<'_, Staged> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How each store is doing, for the endpoints.
    pub fn status(&self) -> Arc<StoreStatus> {
        self.status.clone()
    }

    /// The position to resume `key` from: staged here and not yet committed, else in its
    /// store.
    pub async fn load(
        &self,
        key: &CheckpointKey,
        place: &Place,
    ) -> Result<Option<ReplayId>, CheckpointError> {
        if let Some(entry) = self.lock_staged().entries.get(&key.id()) {
            return parse_replay(place.store(), &entry.stored).map(Some);
        }
        let stored = match place {
            Place::Local => self.local.load(key).await,
            Place::Postgres => self.postgres()?.load(key).await,
            Place::Warehouse { table, reference } => {
                self.warehouse()?.load(key, table, *reference).await
            }
        };
        match stored {
            Err(error) if error.is_retryable() => {
                let last = self.lock_staged().last_committed.get(&key.id()).cloned();
                let Some(last) = last else {
                    return Err(error);
                };
                tracing::warn!(%error, replay_id = %last.replay_id, "Checkpoint store unreadable: resuming from the position this process committed last.");
                parse_replay(place.store(), &last).map(Some)
            }
            other => other,
        }
    }

    fn postgres(&self) -> Result<&postgres::PostgresStore, CheckpointError> {
        self.postgres.as_ref().ok_or(CheckpointError::Postgres {
            action: "connect",
            detail: "no checkpoint-postgres-url is set".into(),
        })
    }

    fn warehouse(&self) -> Result<&warehouse::WarehouseStore, CheckpointError> {
        self.warehouse.as_ref().ok_or_else(|| {
            crate::sql::SqlError::Failed {
                statement: "(checkpoint table)".into(),
                message: "no sql-warehouse-id is set".into(),
            }
            .into()
        })
    }

    /// Records that everything up to `replay_id` is durable in `key`'s sink; the next
    /// commit that gets through writes it. A failing store holds it back, it stops nothing
    /// ([`Checkpoints::failing`] says so).
    pub fn stage(&self, key: &CheckpointKey, place: &Place, replay_id: &ReplayId) {
        let stored = Stored {
            replay_id: replay_id.to_hex(),
            org_id: key.org_id.clone(),
            channel: key.channel.clone(),
            target: key.target.clone(),
            updated_at_ms: crate::clock::now_ms(),
        };
        self.lock_staged().entries.insert(
            key.id(),
            Entry {
                place: place.clone(),
                stored,
            },
        );
    }

    /// Why `place`'s store failed its last commit, while it does.
    pub fn failing(&self, place: &Place) -> Option<String> {
        self.lock_staged().failures.get(place).cloned()
    }

    /// Writes every position staged since the last commit: one operation per store (per
    /// checkpoint table for the warehouse). Nothing staged: nothing written. A store that
    /// fails keeps its positions staged for the next commit; the others commit theirs.
    pub async fn commit(&self) -> Result<(), CheckpointError> {
        let _one = self.committing.lock().await;
        let mut by_place: HashMap<Place, Vec<Stored>> = HashMap::new();
        {
            let staged = self.lock_staged();
            for entry in staged.entries.values() {
                by_place
                    .entry(entry.place.clone())
                    .or_default()
                    .push(entry.stored.clone());
            }
        }
        let mut first_error = None;
        for (place, changed) in by_place {
            // Each store's write is boxed while it runs: thousands of subscriptions stopping
            // at once each wait here for the lock, and would each hold room for the
            // largest store's request.
            let result = match &place {
                Place::Local => Box::pin(self.local.write(changed.clone())).await,
                Place::Postgres => match self.postgres() {
                    Ok(store) => Box::pin(store.write(&changed)).await,
                    Err(e) => Err(e),
                },
                Place::Warehouse { table, .. } => match self.warehouse() {
                    Ok(store) => Box::pin(store.write(table, &changed)).await,
                    Err(e) => Err(e),
                },
            };
            self.committed(&place, &changed, &result);
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`Checkpoints::commit`], for a subscription whose checkpoint lives at `place`: the
    /// error is its own store's, never another's (a PostgreSQL outage does not fail a
    /// subscription on the local store). A sink that keeps its own (`None`) commits nothing.
    pub async fn commit_for(&self, place: Option<&Place>) -> Result<(), CheckpointError> {
        let Some(place) = place else {
            return Ok(());
        };
        // Another store's failure is for its own subscriptions to report.
        let _ = self.commit().await;
        match self.failing(place) {
            None => Ok(()),
            Some(detail) => Err(CheckpointError::Failing {
                store: place.label(),
                detail,
            }),
        }
    }

    /// [`Checkpoints::commit_for`] until it gets through, for a step that must not go on
    /// before its position is durable (a snapshot's marks): a store outage is waited out,
    /// it restarts nothing. Cancelled first: the store's error.
    pub async fn commit_durably(
        &self,
        place: &Place,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), CheckpointError> {
        let mut backoff = crate::backoff::Backoff::new(RETRY_FIRST, RETRY_MAX);
        let stopped = || CheckpointError::Failing {
            store: place.label(),
            detail: "stopped while waiting for it".into(),
        };
        loop {
            // A stop does not wait for a commit queued behind others (up to a statement's
            // timeout each): what is staged stays staged for the committer.
            let error = tokio::select! {
                _ = cancel.cancelled() => return Err(stopped()),
                committed = self.commit_for(Some(place)) => match committed {
                    Ok(()) => return Ok(()),
                    Err(error) => error,
                },
            };
            if backoff.wait(cancel).await {
                return Err(error);
            }
        }
    }

    /// After a store's commit: its positions leave the staged ones (unless staged again
    /// meanwhile), or its failure is remembered; [`StoreStatus`] hears either, and a
    /// change of state is logged once.
    fn committed(&self, place: &Place, changed: &[Stored], result: &Result<(), CheckpointError>) {
        let error = result.as_ref().err().map(ToString::to_string);
        let transition = self
            .status
            .record(&place.label(), crate::clock::now_ms(), error.clone());
        match (transition, &error) {
            (status::Transition::Failing, Some(error)) => {
                tracing::warn!(store = %place.label(), %error, "Checkpoint store failing: checkpoints are held back until it answers; subscriptions go on writing (the data is durable, a restart now would replay from the last committed positions).");
            }
            (status::Transition::Recovered(ms), _) => {
                tracing::info!(store = %place.label(), failed_for_secs = ms / 1000, "Checkpoint store answers again: the held-back checkpoints are committed.");
            }
            _ => {}
        }
        let mut staged = self.lock_staged();
        if let Some(error) = error {
            staged.failures.insert(place.clone(), error);
            return;
        }
        staged.failures.remove(place);
        for stored in changed {
            let id = stored.id();
            if staged
                .entries
                .get(&id)
                .is_some_and(|e| e.stored.replay_id == stored.replay_id)
            {
                staged.entries.remove(&id);
            }
            staged.last_committed.insert(id, stored.clone());
        }
    }

    /// Commits every `interval` until `cancel` fires. A failed commit is logged and tried
    /// again; the subscriptions hear of it at their next stage.
    pub async fn committer(
        self: Arc<Self>,
        interval: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A failing store is logged when it begins failing and when it answers again
            // (see `committed`), not every interval.
            let _ = self.commit().await;
        }
    }
}

fn parse_replay(store: &str, stored: &Stored) -> Result<ReplayId, CheckpointError> {
    ReplayId::from_hex(&stored.replay_id).map_err(|e| CheckpointError::Corrupt {
        path: PathBuf::from(format!("{store} store, {}", stored.channel)),
        detail: format!("replay_id: {e}"),
    })
}

/// A cache of a whole table of checkpoints, read again once it is older than
/// [`ROWS_FRESH_FOR`]: ten thousand subscriptions starting read the table a few times,
/// not ten thousand, and a key another process wrote a while ago is still seen.
struct Rows {
    read: tokio::sync::Mutex<Option<(std::time::Instant, Arc<HashMap<String, String>>)>>,
}

const ROWS_FRESH_FOR: Duration = Duration::from_secs(2);

/// How long [`Checkpoints::commit_durably`] waits between tries: at first, and at most.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

impl Rows {
    fn new() -> Rows {
        Rows {
            read: tokio::sync::Mutex::new(None),
        }
    }

    /// The replay id stored for `id`, from the rows `fetch` reads when the cache is stale.
    async fn get<F, Fut>(&self, id: &str, fetch: F) -> Result<Option<String>, CheckpointError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<HashMap<String, String>, CheckpointError>>,
    {
        let mut read = self.read.lock().await;
        let rows = match &*read {
            Some((at, rows)) if at.elapsed() < ROWS_FRESH_FOR => rows.clone(),
            _ => {
                let rows = Arc::new(fetch().await?);
                *read = Some((std::time::Instant::now(), rows.clone()));
                rows
            }
        };
        Ok(rows.get(id).cloned())
    }

    /// Forgets the rows as read: this process just wrote some of them.
    async fn forget(&self) {
        *self.read.lock().await = None;
    }
}
