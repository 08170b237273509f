//! What a replay wrote: one JSON line per dead letter, appended (and synced) only once the
//! rows it became are durable in their target, so that a later replay passes it by.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ReplayError;
use crate::sink::{DeadLetter, Stage};

/// A dead letter's identity. A letter of the decode or a transform stage holds the event
/// as received: it is the event (org, channel, replay id), however often and at whichever
/// of those stages it was dead-lettered, and is replayed once. One of the write stage
/// holds one row the chain made of it (a fan-out makes several): the row's digest tells
/// them apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key {
    pub org_id: String,
    pub channel: String,
    pub replay_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<String>,
}

impl Key {
    pub fn of(letter: &DeadLetter) -> Key {
        use sha2::Digest;
        Key {
            org_id: letter.org_id.clone(),
            channel: letter.channel.clone(),
            replay_id: letter.replay_id.clone(),
            row: (letter.stage == Stage::Write)
                .then(|| hex::encode(&sha2::Sha256::digest(&letter.payload)[..16])),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: Key,
    /// The stage it had failed in.
    stage: String,
    /// Where its rows went.
    target: String,
    /// When, milliseconds since the epoch.
    replayed_at: i64,
}

pub struct Ledger {
    path: PathBuf,
    /// Open for appending, and locked: one replay at a time per ledger.
    file: std::fs::File,
    replayed: HashSet<Key>,
}

impl Ledger {
    /// The ledger at `path` (made now if there is none, so that a place it cannot be
    /// written fails before anything is replayed), locked for this replay.
    pub fn open(path: &Path) -> Result<Ledger, ReplayError> {
        let bad = |detail: String| ReplayError::Ledger {
            path: path.to_path_buf(),
            detail,
        };
        let existed = path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| bad(e.to_string()))?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => {
                bad("another replay of these dead letters holds it; wait for it to finish".into())
            }
            std::fs::TryLockError::Error(e) => bad(e.to_string()),
        })?;
        if !existed {
            // The new file's name is durable too, or a crash could forget the whole ledger.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| bad(e.to_string()))?;
        // A crash mid-append leaves a torn last line: its letters were not recorded, and
        // the next append must not run on from it.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            file.set_len(whole as u64).map_err(|e| bad(e.to_string()))?;
        }
        let mut replayed = HashSet::new();
        for (n, line) in text[..whole].lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry: Entry = serde_json::from_str(line)
                .map_err(|e| bad(format!("line {} is not a ledger entry: {e}", n + 1)))?;
            replayed.insert(entry.key);
        }
        Ok(Ledger {
            path: path.to_path_buf(),
            file,
            replayed,
        })
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.replayed.contains(key)
    }

    /// Records `keys` (with the stage each had failed in) as replayed to `target`, synced
    /// before it returns.
    pub fn record(&mut self, keys: Vec<(Key, String)>, target: &str) -> Result<(), ReplayError> {
        if keys.is_empty() {
            return Ok(());
        }
        let replayed_at = crate::clock::now_ms();
        let mut text = Vec::new();
        for (key, stage) in &keys {
            let entry = Entry {
                key: key.clone(),
                stage: stage.clone(),
                target: target.to_string(),
                replayed_at,
            };
            serde_json::to_writer(&mut text, &entry).expect("an entry serializes");
            text.push(b'\n');
        }
        let written = self
            .file
            .write_all(&text)
            .and_then(|()| self.file.sync_data());
        written.map_err(|e| ReplayError::Ledger {
            path: self.path.clone(),
            detail: format!(
                "{e}; the rows of these letters are written but not recorded, so a later replay writes them again"
            ),
        })?;
        self.replayed.extend(keys.into_iter().map(|(key, _)| key));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(replay: &str, stage: Stage, payload: &[u8]) -> DeadLetter {
        DeadLetter {
            stage,
            error: "trapped".into(),
            org_id: "00D".into(),
            channel: "/data/AccountChangeEvent".into(),
            replay_id: replay.into(),
            event_id: "e".into(),
            schema_id: "s".into(),
            payload: payload.to_vec(),
            dead_lettered_at: 0,
        }
    }

    fn entry(replay: &str) -> (Key, String) {
        let letter = letter(replay, Stage::Decode, b"event");
        (Key::of(&letter), letter.stage.label())
    }

    #[test]
    fn an_event_is_one_letter_whatever_its_stage_and_each_written_row_its_own() {
        let mask =
            |payload: &[u8]| Key::of(&letter("0a", Stage::Transform("mask".into()), payload));
        assert_eq!(
            Key::of(&letter("0a", Stage::Decode, b"event")),
            mask(b"event")
        );
        let row = |payload: &[u8]| Key::of(&letter("0a", Stage::Write, payload));
        assert_ne!(row(b"first"), row(b"second"), "a fan-out's rows");
        assert_ne!(row(b"first"), mask(b"first"));
    }

    #[test]
    fn recorded_keys_are_read_back_and_a_torn_last_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl.replayed");
        let mut ledger = Ledger::open(&path).unwrap();
        ledger
            .record(vec![entry("0a"), entry("14")], "jsonl:out.jsonl")
            .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"{\"org_id\":\"00D\",\"chan").unwrap();
        drop(ledger);
        let mut ledger = Ledger::open(&path).unwrap();
        assert!(ledger.contains(&entry("0a").0) && ledger.contains(&entry("14").0));
        assert!(!ledger.contains(&entry("1e").0));
        ledger.record(vec![entry("1e")], "jsonl:out.jsonl").unwrap();
        drop(ledger);
        let ledger = Ledger::open(&path).unwrap();
        assert!(
            ledger.contains(&entry("1e").0),
            "appended after the torn line was cut"
        );
        let second = Ledger::open(&path).err().expect("one replay at a time");
        assert!(second.to_string().contains("another replay"), "{second}");
    }
}
