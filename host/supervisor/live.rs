//! Live onboarding: the configuration read again on SIGHUP or when the configuration
//! file or the tenants file (or a file of the tenants directory) changes, and what
//! changed applied to the running process. Subscriptions are told apart by name
//! (`TENANT/CHANNEL` for tenants): a removed one stops with a final flush and commit, an
//! added one starts, a changed one (its org, credentials or settings) restarts once its
//! old run stopped; the others go on untouched. A configuration that does not load
//! changes nothing; a tenant whose new entry is invalid keeps running as it was.

use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, OrgConfig, RunPlan, SubscriptionPlan};

/// Builds the plan again from the same arguments.
pub type Replan = Box<dyn Fn() -> Result<RunPlan, ConfigError> + Send>;

/// The configuration sources of a plan, and a signal each time one changed.
pub(super) struct Reload {
    pub(super) replan: Replan,
    pub(super) changed: mpsc::Receiver<()>,
}

impl Reload {
    pub(super) fn watch(paths: &[PathBuf], replan: Replan, cancel: CancellationToken) -> Reload {
        Reload {
            replan,
            changed: crate::watch::changes(paths.to_vec(), "the configuration", cancel),
        }
    }
}

/// What identifies a subscription's run: its org (credentials included, hashed) and its
/// settings, as a digest (each running subscription keeps one). Equal fingerprints:
/// nothing to restart.
pub(super) fn fingerprint(org: &OrgConfig, sub: &SubscriptionPlan) -> [u8; 32] {
    use sha2::Digest;
    let text = format!(
        "{}\n{}\n{:?}",
        super::connections::org_identity(org),
        org.name,
        sub.config
    );
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// The tenant a subscription belongs to, by its name (`TENANT/CHANNEL`).
pub(super) fn tenant_of(name: &str) -> Option<&str> {
    name.split_once('/').map(|(tenant, _)| tenant)
}
