//! A signal each time files change (polled every second: a file's modification time and
//! size, or those of every entry of a directory; signalled once they stayed the same for a
//! poll, so a file being written is not read half done) or the process gets SIGHUP: what
//! reloads transforms and the configuration listen to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(1);

type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// A file's modification time and size; a directory's entries'.
fn stamp(path: &Path) -> Stamp {
    let of = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut stamps: Stamp = entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    let s = of(&p);
                    (p, s)
                })
                .collect();
            stamps.sort();
            stamps
        }
        Err(_) => vec![(path.to_path_buf(), of(path))],
    }
}

/// Signals (at most one waiting) when `paths` change or on SIGHUP, until `cancel`; `what`
/// names them in the log ("transforms", "the configuration"). Changes from the moment of
/// the call count: the files are looked at before it returns, not when the task first runs,
/// so a caller that reads them after arming the watch misses nothing.
pub fn changes(
    paths: Vec<PathBuf>,
    what: &'static str,
    cancel: CancellationToken,
) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    watch(
        move || paths.clone(),
        what,
        move |_| {
            // A signal already waiting covers this change too.
            let _ = tx.try_send(());
        },
        cancel,
    );
    rx
}

/// What changed: files (possibly), or SIGHUP (read everything again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Files,
    Hangup,
}

/// Calls `changed` when a file of `paths()` changes or on SIGHUP, until `cancel`. The list
/// is asked for at each poll, so files may be added as they come into use: a file first
/// seen is not a change.
pub fn watch(
    paths: impl Fn() -> Vec<PathBuf> + Send + 'static,
    what: &'static str,
    changed: impl Fn(Change) + Send + 'static,
    cancel: CancellationToken,
) {
    let stamps = move |seen: &mut HashMap<PathBuf, Stamp>| {
        let mut differs = false;
        for path in paths() {
            let now = stamp(&path);
            match seen.get_mut(&path) {
                Some(old) if *old != now => {
                    *old = now;
                    differs = true;
                }
                Some(_) => {}
                None => {
                    seen.insert(path, now);
                }
            }
        }
        differs
    };
    let mut seen = HashMap::new();
    stamps(&mut seen);
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut pending = false;
        let mut tick = tokio::time::interval(POLL);
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            let change = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = hup => {
                    tracing::info!("SIGHUP: reading {what} again.");
                    Change::Hangup
                }
                _ = tick.tick() => {
                    if stamps(&mut seen) {
                        // Written, perhaps not finished: read once it stayed the same for
                        // a poll, not half of it.
                        pending = true;
                        continue;
                    }
                    if !std::mem::take(&mut pending) {
                        continue;
                    }
                    tracing::info!("A file of {what} changed: reading it again.");
                    Change::Files
                }
            };
            changed(change);
        }
    });
}
