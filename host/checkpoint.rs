//! Replay checkpoints: per (org, channel, target), the replay id up to which every event is
//! durably written or dead-lettered. Written only after the sink's flush, atomically
//! (temp file, fsync, rename, fsync of the directory), so a crash leaves the old or the new
//! checkpoint, never a torn one.

use std::path::{Path, PathBuf};

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

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    replay_id: String,
    org_id: String,
    channel: String,
    target: String,
    updated_at_ms: i64,
}

/// Checkpoints as small JSON files under a state directory.
#[derive(Clone, Debug)]
pub struct FileCheckpointStore {
    dir: PathBuf,
}

impl FileCheckpointStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileCheckpointStore { dir: dir.into() }
    }

    /// `checkpoints/<org>/<channel>__<target>-<hash>.json`: readable names, made unique by
    /// a hash of the exact channel and target (`a/b.jsonl` and `a_b.jsonl` read alike).
    pub fn path(&self, key: &CheckpointKey) -> PathBuf {
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

    pub async fn load(&self, key: &CheckpointKey) -> Result<Option<ReplayId>, CheckpointError> {
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

    pub async fn commit(
        &self,
        key: &CheckpointKey,
        replay_id: &ReplayId,
    ) -> Result<(), CheckpointError> {
        let path = self.path(key);
        let stored = Stored {
            replay_id: replay_id.to_hex(),
            org_id: key.org_id.clone(),
            channel: key.channel.clone(),
            target: key.target.clone(),
            updated_at_ms: crate::clock::now_ms(),
        };
        let body = serde_json::to_vec_pretty(&stored).expect("a checkpoint always serializes");
        write_atomically(&path, &body).await
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
async fn write_atomically(path: &Path, body: &[u8]) -> Result<(), CheckpointError> {
    let (path, body) = (path.to_path_buf(), body.to_vec());
    tokio::task::spawn_blocking(move || write_atomically_blocking(&path, &body))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

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
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
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

    #[tokio::test]
    async fn commit_then_load_round_trips_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        assert_eq!(store.load(&key()).await.unwrap(), None);
        let id = ReplayId::from_hex("00000000000408760000").unwrap();
        store.commit(&key(), &id).await.unwrap();
        assert_eq!(store.load(&key()).await.unwrap(), Some(id));
        let name = store.path(&key());
        let name = name.file_name().unwrap().to_string_lossy();
        assert!(
            name.starts_with("data_AccountChangeEvent__jsonl_out_a.jsonl-")
                && name.ends_with(".json"),
            "{name}"
        );
    }

    #[tokio::test]
    async fn targets_that_read_alike_get_their_own_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        let a = key();
        let b = CheckpointKey {
            target: "jsonl:out_a.jsonl".into(),
            ..key()
        };
        assert_ne!(store.path(&a), store.path(&b));
        store
            .commit(&a, &ReplayId::from_hex("01").unwrap())
            .await
            .unwrap();
        assert_eq!(
            store.load(&b).await.unwrap(),
            None,
            "b has no checkpoint yet"
        );
    }

    #[tokio::test]
    async fn a_checkpoint_under_the_old_name_is_read_only_for_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        let old = store.legacy_path(&key());
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
    }

    /// A full disk: the temporary file is `/dev/full`, where every write fails with ENOSPC.
    /// The commit must fail and the previous checkpoint must stay as it was.
    #[tokio::test]
    async fn a_failed_write_is_an_error_and_keeps_the_old_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        let old = ReplayId::from_hex("0000000000000010").unwrap();
        store.commit(&key(), &old).await.unwrap();
        let path = store.path(&key());
        std::os::unix::fs::symlink("/dev/full", path.with_extension("json.tmp")).unwrap();
        let new = ReplayId::from_hex("0000000000000020").unwrap();
        let err = store.commit(&key(), &new).await.unwrap_err();
        assert!(err.to_string().contains("cannot write checkpoint"), "{err}");
        assert_eq!(store.load(&key()).await.unwrap(), Some(old));
    }

    #[tokio::test]
    async fn a_corrupt_checkpoint_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        let path = store.path(&key());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{").unwrap();
        let err = store.load(&key()).await.unwrap_err();
        assert!(err.to_string().contains("will not guess"), "{err}");
        assert!(err.to_string().contains("--replay earliest"), "{err}");
    }
}
