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

mod local;
mod postgres;
mod warehouse;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::ReplayId;
use crate::sink::SinkSpec;
pub use local::LocalFile;
pub use postgres::PostgresSettings;

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
        "checkpoints are not being committed to the {store} store ({detail}); the subscription stops rather than run on without one (a service starts it again after a wait). The data written is durable; the next start replays from the last committed position"
    )]
    Failing { store: &'static str, detail: String },
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
}

/// A position staged and not yet committed, and where it goes.
struct Entry {
    place: Place,
    stored: Stored,
}

#[derive(Default)]
struct Staged {
    entries: HashMap<String, Entry>,
    /// Keys staged since the last commit: only these are written.
    dirty: HashSet<String>,
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

    /// The position to resume `key` from: staged here, else in its store.
    pub async fn load(
        &self,
        key: &CheckpointKey,
        place: &Place,
    ) -> Result<Option<ReplayId>, CheckpointError> {
        if let Some(entry) = self.lock_staged().entries.get(&key.id()) {
            return parse_replay(place.store(), &entry.stored).map(Some);
        }
        match place {
            Place::Local => self.local.load(key).await,
            Place::Postgres => self.postgres()?.load(key).await,
            Place::Warehouse { table, reference } => {
                self.warehouse()?.load(key, table, *reference).await
            }
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
    /// commit writes it. Staged either way; the error says that the store has been
    /// failing since the last commit (a full disk, a database down): the caller stops
    /// rather than run on without a checkpoint.
    pub fn stage(
        &self,
        key: &CheckpointKey,
        place: &Place,
        replay_id: &ReplayId,
    ) -> Result<(), CheckpointError> {
        let stored = Stored {
            replay_id: replay_id.to_hex(),
            org_id: key.org_id.clone(),
            channel: key.channel.clone(),
            target: key.target.clone(),
            updated_at_ms: crate::clock::now_ms(),
        };
        let id = key.id();
        let mut staged = self.lock_staged();
        staged.dirty.insert(id.clone());
        staged.entries.insert(
            id,
            Entry {
                place: place.clone(),
                stored,
            },
        );
        match staged.failures.get(place) {
            None => Ok(()),
            Some(detail) => Err(CheckpointError::Failing {
                store: place.store(),
                detail: detail.clone(),
            }),
        }
    }

    /// Writes every position staged since the last commit: one operation per store (per
    /// checkpoint table for the warehouse). Nothing staged: nothing written. A store that
    /// fails keeps its positions staged for the next commit; the others commit theirs.
    pub async fn commit(&self) -> Result<(), CheckpointError> {
        let _one = self.committing.lock().await;
        let mut by_place: HashMap<Place, Vec<Stored>> = HashMap::new();
        {
            let staged = self.lock_staged();
            for id in &staged.dirty {
                if let Some(entry) = staged.entries.get(id) {
                    by_place
                        .entry(entry.place.clone())
                        .or_default()
                        .push(entry.stored.clone());
                }
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
        match self.lock_staged().failures.get(place) {
            None => Ok(()),
            Some(detail) => Err(CheckpointError::Failing {
                store: place.store(),
                detail: detail.clone(),
            }),
        }
    }

    /// After a store's commit: its positions are no longer dirty (unless staged again
    /// meanwhile), or its failure is remembered for [`Checkpoints::stage`].
    fn committed(&self, place: &Place, changed: &[Stored], result: &Result<(), CheckpointError>) {
        let mut staged = self.lock_staged();
        if let Err(error) = result {
            staged.failures.insert(place.clone(), error.to_string());
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
                staged.dirty.remove(&id);
            }
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
            if let Err(error) = self.commit().await {
                tracing::error!(%error, "Checkpoints not committed; trying again. The data is durable; a restart now would replay from the last committed positions.");
            }
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
}
