//! Replay checkpoints: per (org, channel, target), the replay id up to which every event is
//! durably written or dead-lettered.
//!
//! The local store ([`LocalStore`]) keeps every checkpoint of a state directory in one file,
//! `checkpoints.json`. A subscription stages its position once its sink's flush returned;
//! one committer per process writes every staged position once per interval in one atomic
//! replacement (temp file, fsync, rename, fsync of the directory), so a crash leaves the old
//! or the new file, never a torn one, and the file never holds a position the sink has not
//! made durable. Ten thousand subscriptions cost one write per interval, not ten thousand.
//! Processes sharing a state directory merge their changes under a lock on it. Checkpoints
//! of releases before the shared file (one file per key) are read when the file has none.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::ReplayId;

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
}

impl CheckpointError {
    pub fn is_retryable(&self) -> bool {
        match self {
            CheckpointError::Io { .. } => true,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    replay_id: String,
    org_id: String,
    channel: String,
    target: String,
    updated_at_ms: i64,
}

/// The shared file: every checkpoint, sorted by key.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    checkpoints: Vec<Stored>,
}

impl CheckpointKey {
    fn id(&self) -> String {
        id(&self.org_id, &self.channel, &self.target)
    }
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

/// The file's checkpoints by key.
type OnDisk = std::collections::HashMap<String, Stored>;

/// Staged positions not yet in the file.
#[derive(Default)]
struct Staged {
    entries: BTreeMap<String, Stored>,
    /// Keys staged since the last commit: only these are written over what is on disk.
    dirty: HashSet<String>,
    /// Why the last commit failed, while it did.
    failure: Option<(&'static str, std::io::ErrorKind, String)>,
}

/// Every checkpoint of a state directory, in one file (see the module documentation).
pub struct LocalStore {
    dir: PathBuf,
    staged: Mutex<Staged>,
    /// The file as last read, by its modification time and length: ten thousand
    /// subscriptions starting read it once, not ten thousand times.
    read: Mutex<Option<(std::fs::Metadata, std::sync::Arc<OnDisk>)>>,
    /// One commit at a time within the process.
    committing: tokio::sync::Mutex<()>,
    legacy: FileCheckpointStore,
}

impl LocalStore {
    pub fn new(dir: impl Into<PathBuf>) -> LocalStore {
        let dir = dir.into();
        LocalStore {
            legacy: FileCheckpointStore { dir: dir.clone() },
            dir,
            staged: Mutex::default(),
            read: Mutex::default(),
            committing: tokio::sync::Mutex::new(()),
        }
    }

    /// The file, under a state directory.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("checkpoints.json")
    }

    fn lock_staged(&self) -> std::sync::MutexGuard<'_, Staged> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The position to resume `key` from: staged here, else in the file (another process
    /// may have written it), else in a per-key file of an earlier release.
    pub async fn load(&self, key: &CheckpointKey) -> Result<Option<ReplayId>, CheckpointError> {
        let path = Self::path_in(&self.dir);
        if let Some(stored) = self.lock_staged().entries.get(&key.id()) {
            return parse_replay(&path, stored).map(Some);
        }
        let file = self.file().await?;
        match file.get(&key.id()) {
            Some(stored) => parse_replay(&path, stored).map(Some),
            None => self.legacy.load(key).await,
        }
    }

    /// The file as it is now: read again only when it changed since the last read.
    async fn file(&self) -> Result<std::sync::Arc<OnDisk>, CheckpointError> {
        let path = Self::path_in(&self.dir);
        let now = tokio::fs::metadata(&path).await.ok();
        let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
            a.len() == b.len() && a.modified().ok() == b.modified().ok()
        };
        let cached = self.read.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let (Some(now), Some((then, file))) = (&now, cached)
            && same(now, &then)
        {
            return Ok(file);
        }
        let file = read_file(&path).await?;
        let file: std::sync::Arc<OnDisk> =
            std::sync::Arc::new(file.checkpoints.into_iter().map(|s| (s.id(), s)).collect());
        if let Some(now) = now {
            *self.read.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, file.clone()));
        }
        Ok(file)
    }

    /// Records that everything up to `replay_id` is durable in `key`'s sink; the next
    /// commit writes it. Staged either way; the error is the last commit's, while commits
    /// fail (a full disk): the caller stops rather than run on without a checkpoint.
    pub fn stage(&self, key: &CheckpointKey, replay_id: &ReplayId) -> Result<(), CheckpointError> {
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
        staged.entries.insert(id, stored);
        match &staged.failure {
            None => Ok(()),
            Some((action, kind, message)) => Err(CheckpointError::Io {
                action,
                path: Self::path_in(&self.dir),
                source: std::io::Error::new(*kind, message.clone()),
            }),
        }
    }

    /// Writes every position staged since the last commit, merged over the file as it is
    /// (under a lock on the directory), in one atomic replacement. Nothing staged: nothing
    /// written. On failure the positions stay staged for the next commit.
    pub async fn commit(&self) -> Result<(), CheckpointError> {
        let _one = self.committing.lock().await;
        let changed: Vec<(String, Stored)> = {
            let staged = self.lock_staged();
            staged
                .dirty
                .iter()
                .filter_map(|id| staged.entries.get(id).map(|s| (id.clone(), s.clone())))
                .collect()
        };
        if changed.is_empty() {
            return Ok(());
        }
        let dir = self.dir.clone();
        let written = changed.clone();
        let result = tokio::task::spawn_blocking(move || merge_and_write(&dir, written))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let mut staged = self.lock_staged();
        staged.failure = match &result {
            Err(CheckpointError::Io { action, source, .. }) => {
                Some((*action, source.kind(), source.to_string()))
            }
            _ => None,
        };
        result?;
        for (id, stored) in changed {
            // Staged again meanwhile: still dirty, for the next commit.
            if staged
                .entries
                .get(&id)
                .is_some_and(|s| s.replay_id == stored.replay_id)
            {
                staged.dirty.remove(&id);
            }
        }
        Ok(())
    }

    /// Commits every `interval` until `cancel` fires. A failed commit is logged and tried
    /// again; the subscriptions' own last commit reports it.
    pub async fn committer(
        self: std::sync::Arc<Self>,
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

async fn read_file(path: &Path) -> Result<StoreFile, CheckpointError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_file_blocking(&path))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn read_file_blocking(path: &Path) -> Result<StoreFile, CheckpointError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoreFile::default()),
        Err(source) => {
            return Err(CheckpointError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Under an exclusive lock on `dir`: the file as it is, with `changed` over it, written.
fn merge_and_write(dir: &Path, changed: Vec<(String, Stored)>) -> Result<(), CheckpointError> {
    let path = LocalStore::path_in(dir);
    let io = |action, source| CheckpointError::Io {
        action,
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    let lock = std::fs::File::open(dir).map_err(|e| io("open the directory of", e))?;
    lock.lock().map_err(|e| io("lock the directory of", e))?;
    let mut all: BTreeMap<String, Stored> = read_file_blocking(&path)?
        .checkpoints
        .into_iter()
        .map(|s| (s.id(), s))
        .collect();
    all.extend(changed);
    let file = StoreFile {
        checkpoints: all.into_values().collect(),
    };
    let body = serde_json::to_vec_pretty(&file).expect("checkpoints always serialize");
    write_atomically_blocking(&path, &body)
}

/// Checkpoints as small JSON files, one per key: how releases before [`LocalStore`] kept
/// them. Read only.
#[derive(Clone, Debug)]
struct FileCheckpointStore {
    dir: PathBuf,
}

impl FileCheckpointStore {
    /// `checkpoints/<org>/<channel>__<target>-<hash>.json`: readable names, made unique by
    /// a hash of the exact channel and target (`a/b.jsonl` and `a_b.jsonl` read alike).
    fn path(&self, key: &CheckpointKey) -> PathBuf {
        let mut digest = Sha256::new();
        for part in [&key.org_id, &key.channel, &key.target] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        let hash = hex::encode(&digest.finalize()[..6]);
        self.org_dir(key).join(format!(
            "{}__{}-{hash}.json",
            file_safe(&key.channel),
            file_safe(&key.target)
        ))
    }

    /// Where releases before the hash kept it; read when the new file is not there yet, and
    /// only if it names this very key.
    fn legacy_path(&self, key: &CheckpointKey) -> PathBuf {
        self.org_dir(key).join(format!(
            "{}__{}.json",
            file_safe(&key.channel),
            file_safe(&key.target)
        ))
    }

    fn org_dir(&self, key: &CheckpointKey) -> PathBuf {
        self.dir.join("checkpoints").join(file_safe(&key.org_id))
    }

    async fn load(&self, key: &CheckpointKey) -> Result<Option<ReplayId>, CheckpointError> {
        if let Some(stored) = self.read(self.path(key)).await? {
            return Ok(Some(stored));
        }
        let legacy = self.legacy_path(key);
        match self.read_stored(&legacy).await? {
            Some(stored)
                if stored.org_id == key.org_id
                    && stored.channel == key.channel
                    && stored.target == key.target =>
            {
                tracing::info!(path = %legacy.display(), "Checkpoint read from its old file name; the next commit writes the new one.");
                parse_replay(&legacy, &stored).map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn read(&self, path: PathBuf) -> Result<Option<ReplayId>, CheckpointError> {
        match self.read_stored(&path).await? {
            Some(stored) => parse_replay(&path, &stored).map(Some),
            None => Ok(None),
        }
    }

    async fn read_stored(&self, path: &Path) -> Result<Option<Stored>, CheckpointError> {
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
    }
}

fn parse_replay(path: &Path, stored: &Stored) -> Result<ReplayId, CheckpointError> {
    ReplayId::from_hex(&stored.replay_id).map_err(|e| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("replay_id: {e}"),
    })
}

/// Write, flush and fsync a temporary file, rename it over `path`, fsync the directory;
/// every step's error is checked. Blocking `std::fs` on purpose: tokio's `File` reports a
/// failed background write only on the *next* operation, so `write_all` + `sync_all`
/// there can succeed on a full disk and leave an empty file to rename into place.
fn write_atomically_blocking(path: &Path, body: &[u8]) -> Result<(), CheckpointError> {
    use std::io::Write;
    let io = |action, source| CheckpointError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    let tmp = path.with_extension("json.tmp");
    let written = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
        file.write_all(body).map_err(|e| io("write", e))?;
        file.flush().map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        // The bytes on disk, not the bytes handed over: a short write must never be renamed.
        let len = std::fs::metadata(&tmp).map_err(|e| io("check", e))?.len();
        if len != body.len() as u64 {
            return Err(io(
                "write",
                std::io::Error::other(format!("{len} of {} bytes written", body.len())),
            ));
        }
        Ok(())
    })();
    // A failed temporary file stays: the next attempt truncates and rewrites it, and it
    // is never renamed into place.
    written?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync the directory of", e))
}

/// Keeps letters, digits, `-`, `_` and `.`; everything else becomes `_`.
fn file_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_matches('_')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CheckpointKey {
        CheckpointKey {
            org_id: "00D000000000001".into(),
            channel: "/data/AccountChangeEvent".into(),
            target: "jsonl:out/a.jsonl".into(),
        }
    }

    fn other(target: &str) -> CheckpointKey {
        CheckpointKey {
            target: target.into(),
            ..key()
        }
    }

    #[tokio::test]
    async fn staged_positions_reach_the_file_only_on_commit_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        assert_eq!(store.load(&key()).await.unwrap(), None);
        let id = ReplayId::from_hex("00000000000408760000").unwrap();
        store.stage(&key(), &id).unwrap();
        assert!(
            !LocalStore::path_in(dir.path()).exists(),
            "not before the commit"
        );
        store.commit().await.unwrap();
        let fresh = LocalStore::new(dir.path());
        assert_eq!(fresh.load(&key()).await.unwrap(), Some(id));
        assert_eq!(fresh.load(&other("jsonl:out_a.jsonl")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn many_keys_are_one_write_and_two_processes_keep_each_others_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (LocalStore::new(dir.path()), LocalStore::new(dir.path()));
        for i in 0..1000u64 {
            a.stage(
                &other(&format!("t{i}")),
                &ReplayId::from_hex(&format!("{:04x}", i + 1)).unwrap(),
            )
            .unwrap();
        }
        a.commit().await.unwrap();
        b.stage(&key(), &ReplayId::from_hex("2a").unwrap()).unwrap();
        b.commit().await.unwrap();
        // a's next commit writes only what changed since its last: b's key stays.
        a.stage(&other("t0"), &ReplayId::from_hex("ffff").unwrap())
            .unwrap();
        a.commit().await.unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "one file for every checkpoint");
        let fresh = LocalStore::new(dir.path());
        assert_eq!(
            fresh.load(&key()).await.unwrap(),
            ReplayId::from_hex("2a").ok()
        );
        assert_eq!(
            fresh.load(&other("t0")).await.unwrap(),
            ReplayId::from_hex("ffff").ok()
        );
        assert_eq!(
            fresh.load(&other("t999")).await.unwrap(),
            ReplayId::from_hex("03e8").ok()
        );
    }

    #[tokio::test]
    async fn a_checkpoint_of_an_earlier_release_is_read_only_for_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let legacy = FileCheckpointStore {
            dir: dir.path().to_path_buf(),
        };
        let old = legacy.legacy_path(&key());
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        let stored = |target: &str| {
            format!(
                r#"{{"replay_id":"2a","org_id":"00D000000000001","channel":"/data/AccountChangeEvent","target":"{target}","updated_at_ms":0}}"#
            )
        };
        std::fs::write(&old, stored("jsonl:out/a.jsonl")).unwrap();
        assert_eq!(
            store.load(&key()).await.unwrap(),
            Some(ReplayId::from_hex("2a").unwrap())
        );
        // The same old file name, written for the other target: not ours.
        std::fs::write(&old, stored("jsonl:out_a.jsonl")).unwrap();
        assert_eq!(store.load(&key()).await.unwrap(), None);
        // The hashed per-key name of the release after it.
        let hashed = legacy.path(&key());
        std::fs::write(&hashed, stored("jsonl:out/a.jsonl")).unwrap();
        assert_eq!(
            store.load(&key()).await.unwrap(),
            ReplayId::from_hex("2a").ok()
        );
    }

    /// A full disk: the temporary file is `/dev/full`, where every write fails with ENOSPC.
    /// The commit must fail, the previous file must stay as it was, and the position stays
    /// staged for the next commit.
    #[tokio::test]
    async fn a_failed_write_is_an_error_and_keeps_the_old_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let old = ReplayId::from_hex("0000000000000010").unwrap();
        store.stage(&key(), &old).unwrap();
        store.commit().await.unwrap();
        let path = LocalStore::path_in(dir.path());
        std::os::unix::fs::symlink("/dev/full", path.with_extension("json.tmp")).unwrap();
        let new = ReplayId::from_hex("0000000000000020").unwrap();
        store.stage(&key(), &new).unwrap();
        let err = store.commit().await.unwrap_err();
        assert!(err.to_string().contains("cannot write checkpoint"), "{err}");
        assert_eq!(
            LocalStore::new(dir.path()).load(&key()).await.unwrap(),
            Some(old)
        );
        let err = store.commit().await.unwrap_err();
        assert!(
            err.to_string().contains("cannot write checkpoint"),
            "still full: {err}"
        );
        assert!(
            store.stage(&key(), &new).is_err(),
            "a subscription staging on a failing store hears it"
        );
        std::fs::remove_file(path.with_extension("json.tmp")).unwrap();
        store.commit().await.unwrap();
        assert!(
            store.stage(&key(), &new).is_ok(),
            "a commit went through again"
        );
        assert_eq!(
            LocalStore::new(dir.path()).load(&key()).await.unwrap(),
            Some(new)
        );
    }

    #[tokio::test]
    async fn a_corrupt_store_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(LocalStore::path_in(dir.path()), "{").unwrap();
        let err = LocalStore::new(dir.path()).load(&key()).await.unwrap_err();
        assert!(err.to_string().contains("will not guess"), "{err}");
        assert!(err.to_string().contains("--replay earliest"), "{err}");
    }
}
