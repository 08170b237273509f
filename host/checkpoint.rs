//! Replay checkpoints: per (org, channel, target), the replay id up to which every event is
//! durably written or dead-lettered. Written only after the sink's flush, atomically
//! (temp file, fsync, rename, fsync of the directory), so a crash leaves the old or the new
//! checkpoint, never a torn one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
        "checkpoint {path} is unreadable ({detail}); move it aside to start from the configured position"
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

    pub fn path(&self, key: &CheckpointKey) -> PathBuf {
        self.dir
            .join("checkpoints")
            .join(file_safe(&key.org_id))
            .join(format!(
                "{}__{}.json",
                file_safe(&key.channel),
                file_safe(&key.target)
            ))
    }

    pub async fn load(&self, key: &CheckpointKey) -> Result<Option<ReplayId>, CheckpointError> {
        let path = self.path(key);
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let stored: Stored = serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let id = ReplayId::from_hex(&stored.replay_id).map_err(|e| CheckpointError::Corrupt {
            path,
            detail: format!("replay_id: {e}"),
        })?;
        Ok(Some(id))
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
            updated_at_ms: crate::sink::row::now_ms(),
        };
        let body = serde_json::to_vec_pretty(&stored).expect("a checkpoint always serializes");
        write_atomically(&path, &body).await
    }
}

async fn write_atomically(path: &Path, body: &[u8]) -> Result<(), CheckpointError> {
    let io = |action, source| CheckpointError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io("create the directory of", e))?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io("create", e))?;
        tokio::io::AsyncWriteExt::write_all(&mut file, body)
            .await
            .map_err(|e| io("write", e))?;
        file.sync_all().await.map_err(|e| io("sync", e))?;
    }
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| io("rename", e))?;
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
    Ok(())
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
        assert!(
            store
                .path(&key())
                .ends_with("data_AccountChangeEvent__jsonl_out_a.jsonl.json")
        );
    }

    #[tokio::test]
    async fn a_corrupt_checkpoint_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        let path = store.path(&key());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{").unwrap();
        let err = store.load(&key()).await.unwrap_err();
        assert!(err.to_string().contains("move it aside"), "{err}");
    }
}
