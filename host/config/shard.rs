//! Sharing the subscriptions among processes: this process's shard, and Lease fencing.

use super::file::FileConfig;
use super::{ConfigError, OrgConfig, invalid, missing};
use crate::lease::LeaseSettings;

/// `I/N`: the subscriptions whose (org, channel) key hashes to `index` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn parse(text: &str) -> Result<Shard, ConfigError> {
        let bad = || {
            invalid(
                "shard",
                text,
                "write it as I/N with 0 <= I < N, e.g. 0/3 (the pod index and the replica count)",
            )
        };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Stable across processes, platforms and versions (CRC-32 of the org's name in the
    /// configuration and the channel): every process given the same configuration agrees
    /// on who reads what. Renaming an org moves its subscriptions between shards.
    pub fn owns(&self, org: &OrgConfig, channel: &str) -> bool {
        let key = format!("{}\u{0}{channel}", org.name);
        crc32fast::hash(key.as_bytes()) % self.count == self.index
    }
}

/// Lease fencing, when `lease-namespace` is set.
pub(super) fn lease_settings(run: &FileConfig) -> Result<Option<LeaseSettings>, ConfigError> {
    let holder = run.lease_holder.clone();
    let Some(namespace) = run.lease_namespace.clone().filter(|n| !n.is_empty()) else {
        return match (holder, run.lease_duration_secs) {
            (None, None) => Ok(None),
            _ => Err(missing(
                "lease-namespace",
                "lease-holder and lease-duration-secs only apply with Lease fencing: set lease-namespace (SFZB_LEASE_NAMESPACE) too",
            )),
        };
    };
    if !is_dns_label(&namespace) {
        return Err(invalid(
            "lease-namespace",
            namespace,
            "a Kubernetes namespace: lowercase letters, digits and '-', at most 63",
        ));
    }
    let holder = match holder.filter(|h| !h.is_empty()) {
        Some(holder) => holder,
        None => std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                missing(
                    "lease-holder",
                    "no HOSTNAME to name this process as a Lease holder: set lease-holder (SFZB_LEASE_HOLDER), e.g. to the pod name",
                )
            })?,
    };
    let duration_secs = run.lease_duration_secs();
    if !(3..=3600).contains(&duration_secs) {
        return Err(invalid(
            "lease-duration-secs",
            duration_secs.to_string(),
            "between 3 and 3600 seconds; 30 suits most",
        ));
    }
    Ok(Some(LeaseSettings {
        namespace,
        holder,
        duration_secs,
    }))
}

fn is_dns_label(name: &str) -> bool {
    name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
