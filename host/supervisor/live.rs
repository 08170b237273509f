//! Live onboarding: the configuration read again on SIGHUP or when the configuration
//! file or the tenants file (or a file of the tenants directory) changes, and what
//! changed applied to the running process. Subscriptions are told apart by name
//! (`TENANT/CHANNEL` for tenants): a removed one stops with a final flush and commit, an
//! added one starts, a changed one (its org, credentials or settings) restarts once its
//! old run stopped; the others go on untouched. A configuration that does not load
//! changes nothing; a tenant whose new entry is invalid keeps running as it was.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, OrgConfig, RunPlan, SubscriptionPlan};

/// How often the watched files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// Builds the plan again from the same arguments.
pub type Replan = Box<dyn Fn() -> Result<RunPlan, ConfigError> + Send>;

/// The configuration sources of a plan, and a signal each time one changed.
pub(super) struct Reload {
    pub(super) replan: Replan,
    pub(super) changed: mpsc::Receiver<()>,
}

impl Reload {
    pub(super) fn watch(paths: &[PathBuf], replan: Replan, cancel: CancellationToken) -> Reload {
        let paths = paths.to_vec();
        Reload {
            replan,
            changed: spawn_watcher(paths, cancel),
        }
    }
}

/// A file's or a directory's entries' modification times and sizes.
fn stamp(path: &PathBuf) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
    let of = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut stamps: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .map(|p| {
                    let s = of(&p);
                    (p, s)
                })
                .collect();
            stamps.sort();
            stamps
        }
        Err(_) => vec![(path.clone(), of(path))],
    }
}

fn spawn_watcher(paths: Vec<PathBuf>, cancel: CancellationToken) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let stamps = |paths: &[PathBuf]| paths.iter().map(stamp).collect::<Vec<_>>();
        let mut seen = stamps(&paths);
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
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = hup => {
                    tracing::info!("SIGHUP: reading the configuration again.");
                }
                _ = tick.tick() => {
                    let now = stamps(&paths);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    tracing::info!("The configuration changed: reading it again.");
                }
            }
            // A reload already waiting covers this change too.
            let _ = tx.try_send(());
        }
    });
    rx
}

/// What identifies a subscription's run: its org (credentials included, hashed) and its
/// settings. Equal fingerprints: nothing to restart.
pub(super) fn fingerprint(org: &OrgConfig, sub: &SubscriptionPlan) -> String {
    format!(
        "{}\n{}\n{:?}",
        super::connections::org_identity(org),
        org.name,
        sub.config
    )
}

/// The tenant a subscription belongs to, by its name (`TENANT/CHANNEL`).
pub(super) fn tenant_of(name: &str) -> Option<&str> {
    name.split_once('/').map(|(tenant, _)| tenant)
}
