//! The local store: every checkpoint of a state directory in one file,
//! `checkpoints.json`. A commit writes the changed positions merged over the file as it is,
//! under a lock on the directory (processes sharing a state directory keep each other's
//! keys), in one atomic replacement (temp file, fsync, rename, fsync of the directory): a
//! crash leaves the old or the new file, never a torn one. Checkpoints of releases before
//! the shared file (one file per key) are read when the file has none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CheckpointError, CheckpointKey, Stored};
use crate::event::ReplayId;

/// The shared file: every checkpoint, sorted by key.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    checkpoints: Vec<Stored>,
}

/// The file's checkpoints by key.
type OnDisk = std::collections::HashMap<String, Stored>;

/// The checkpoints file of a state directory (see the module documentation).
pub struct LocalFile {
    dir: PathBuf,
    /// The file as last read, by its modification time and length: ten thousand
    /// subscriptions starting read it once, not ten thousand times.
    read: Mutex<Option<(std::fs::Metadata, Arc<OnDisk>)>>,
    legacy: FileCheckpointStore,
}

impl LocalFile {
    pub fn new(dir: impl Into<PathBuf>) -> LocalFile {
        let dir = dir.into();
        LocalFile {
            legacy: FileCheckpointStore { dir: dir.clone() },
            dir,
            read: Mutex::default(),
        }
    }

    /// The file, under a state directory.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("checkpoints.json")
    }

    /// `key`'s position in the file (another process may have written it), else in a
    /// per-key file of an earlier release.
    pub(super) async fn load(
        &self,
        key: &CheckpointKey,
    ) -> Result<Option<ReplayId>, CheckpointError> {
        let path = Self::path_in(&self.dir);
        let file = self.file().await?;
        match file.get(&key.id()) {
            Some(stored) => parse_replay(&path, stored).map(Some),
            None => self.legacy.load(key).await,
        }
    }

    /// The file as it is now: read again only when it changed since the last read.
    async fn file(&self) -> Result<Arc<OnDisk>, CheckpointError> {
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
        let file: Arc<OnDisk> =
            Arc::new(file.checkpoints.into_iter().map(|s| (s.id(), s)).collect());
        if let Some(now) = now {
            *self.read.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, file.clone()));
        }
        Ok(file)
    }

    /// `changed` over the file as it is, in one atomic replacement.
    pub(super) async fn write(&self, changed: Vec<Stored>) -> Result<(), CheckpointError> {
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || merge_and_write(&dir, changed))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        // Read again at the next load: two writes within one tick of the clock leave a
        // file of the same length and time, which the cache would take for unchanged.
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) = None;
        written
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
fn merge_and_write(dir: &Path, changed: Vec<Stored>) -> Result<(), CheckpointError> {
    let path = LocalFile::path_in(dir);
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
    all.extend(changed.into_iter().map(|s| (s.id(), s)));
    let file = StoreFile {
        checkpoints: all.into_values().collect(),
    };
    let body = serde_json::to_vec_pretty(&file).expect("checkpoints always serialize");
    write_atomically_blocking(&path, &body)
}

/// Checkpoints as small JSON files, one per key: how releases before [`LocalFile`] kept
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
    use crate::checkpoint::{Checkpoints, Place};

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
        let store = Checkpoints::in_dir(dir.path());
        assert_eq!(store.load(&key(), &Place::Local).await.unwrap(), None);
        let id = ReplayId::from_hex("00000000000408760000").unwrap();
        store.stage(&key(), &Place::Local, &id);
        assert!(
            !LocalFile::path_in(dir.path()).exists(),
            "not before the commit"
        );
        store.commit().await.unwrap();
        let fresh = Checkpoints::in_dir(dir.path());
        assert_eq!(fresh.load(&key(), &Place::Local).await.unwrap(), Some(id));
        assert_eq!(
            fresh
                .load(&other("jsonl:out_a.jsonl"), &Place::Local)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn many_keys_are_one_write_and_two_processes_keep_each_others_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            Checkpoints::in_dir(dir.path()),
            Checkpoints::in_dir(dir.path()),
        );
        for i in 0..1000u64 {
            a.stage(
                &other(&format!("t{i}")),
                &Place::Local,
                &ReplayId::from_hex(&format!("{:04x}", i + 1)).unwrap(),
            );
        }
        a.commit().await.unwrap();
        b.stage(&key(), &Place::Local, &ReplayId::from_hex("2a").unwrap());
        b.commit().await.unwrap();
        // a's next commit writes only what changed since its last: b's key stays.
        a.stage(
            &other("t0"),
            &Place::Local,
            &ReplayId::from_hex("ffff").unwrap(),
        );
        a.commit().await.unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "one file for every checkpoint");
        let fresh = Checkpoints::in_dir(dir.path());
        assert_eq!(
            fresh.load(&key(), &Place::Local).await.unwrap(),
            ReplayId::from_hex("2a").ok()
        );
        assert_eq!(
            fresh.load(&other("t0"), &Place::Local).await.unwrap(),
            ReplayId::from_hex("ffff").ok()
        );
        assert_eq!(
            fresh.load(&other("t999"), &Place::Local).await.unwrap(),
            ReplayId::from_hex("03e8").ok()
        );
    }

    /// A committed position is not kept in memory over the store: an operator's change
    /// to the store (here, another process's commit) is what the next start reads; one
    /// staged and not yet committed is newer than the store, and wins.
    #[tokio::test]
    async fn the_store_not_memory_says_where_a_committed_subscription_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (running, operator) = (
            Checkpoints::in_dir(dir.path()),
            Checkpoints::in_dir(dir.path()),
        );
        let ours = ReplayId::from_hex("0400").unwrap();
        running.stage(&key(), &Place::Local, &ours);
        running.commit().await.unwrap();
        let set_by_hand = ReplayId::from_hex("0100").unwrap();
        operator.stage(&key(), &Place::Local, &set_by_hand);
        operator.commit().await.unwrap();
        assert_eq!(
            running.load(&key(), &Place::Local).await.unwrap(),
            Some(set_by_hand),
            "the store's position, not the one this process committed before"
        );
        let newer = ReplayId::from_hex("0500").unwrap();
        running.stage(&key(), &Place::Local, &newer);
        assert_eq!(
            running.load(&key(), &Place::Local).await.unwrap(),
            Some(newer),
            "staged and not yet committed: newer than the store"
        );
    }

    #[tokio::test]
    async fn a_checkpoint_of_an_earlier_release_is_read_only_for_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::in_dir(dir.path());
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
            store.load(&key(), &Place::Local).await.unwrap(),
            Some(ReplayId::from_hex("2a").unwrap())
        );
        // The same old file name, written for the other target: not ours.
        std::fs::write(&old, stored("jsonl:out_a.jsonl")).unwrap();
        assert_eq!(store.load(&key(), &Place::Local).await.unwrap(), None);
        // The hashed per-key name of the release after it.
        let hashed = legacy.path(&key());
        std::fs::write(&hashed, stored("jsonl:out/a.jsonl")).unwrap();
        assert_eq!(
            store.load(&key(), &Place::Local).await.unwrap(),
            ReplayId::from_hex("2a").ok()
        );
    }

    /// A full disk: the temporary file is `/dev/full`, where every write fails with ENOSPC.
    /// The commit must fail, the previous file must stay as it was, and the position stays
    /// staged for the next commit.
    #[tokio::test]
    async fn a_failed_write_is_an_error_and_keeps_the_old_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::in_dir(dir.path());
        let old = ReplayId::from_hex("0000000000000010").unwrap();
        store.stage(&key(), &Place::Local, &old);
        store.commit().await.unwrap();
        let path = LocalFile::path_in(dir.path());
        std::os::unix::fs::symlink("/dev/full", path.with_extension("json.tmp")).unwrap();
        let new = ReplayId::from_hex("0000000000000020").unwrap();
        store.stage(&key(), &Place::Local, &new);
        let err = store.commit().await.unwrap_err();
        assert!(err.to_string().contains("cannot write checkpoint"), "{err}");
        assert_eq!(
            Checkpoints::in_dir(dir.path())
                .load(&key(), &Place::Local)
                .await
                .unwrap(),
            Some(old)
        );
        let err = store.commit().await.unwrap_err();
        assert!(
            err.to_string().contains("cannot write checkpoint"),
            "still full: {err}"
        );
        assert!(
            store.failing(&Place::Local).is_some(),
            "a subscription staging on a failing store can tell"
        );
        std::fs::remove_file(path.with_extension("json.tmp")).unwrap();
        store.commit().await.unwrap();
        assert!(
            store.failing(&Place::Local).is_none(),
            "a commit went through again"
        );
        assert_eq!(
            Checkpoints::in_dir(dir.path())
                .load(&key(), &Place::Local)
                .await
                .unwrap(),
            Some(new)
        );
    }

    #[tokio::test]
    async fn a_corrupt_store_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(LocalFile::path_in(dir.path()), "{").unwrap();
        let err = Checkpoints::in_dir(dir.path())
            .load(&key(), &Place::Local)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("will not guess"), "{err}");
        assert!(err.to_string().contains("--replay earliest"), "{err}");
    }
}
