//! Turns the configuration file, the environment and the flags into a validated run plan
//! before anything connects. Every error names the setting, the value and the fix.
//!
//! | file | holds |
//! |---|---|
//! | [`settings`] | how a setting is defined once; the reference table |
//! | [`file`] | every setting and section of `sfzb.toml` (and so every flag of `run`) |
//! | [`layering`] | file < environment < flags, the subscriptions and their orgs |
//! | [`org`] | an org's endpoints and credentials (the login flow) |
//! | [`subscription`] | one subscription's channel, sink, replay and flow control |
//! | [`chain`] | transform chains and their limits |
//! | [`shard`] | this process's share of the subscriptions, Lease fencing |
//! | [`tenants`] | many orgs, one entry each, in a file or directory |
//! | [`describe`] | the plan as `config check` prints it |

pub mod chain;
pub mod describe;
pub mod file;
pub mod layering;
pub mod org;
pub mod settings;
pub mod shard;
pub mod subscription;
pub mod tenants;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::RunArgs;
use crate::lease::LeaseSettings;
use crate::salesforce::auth::Credentials;
use crate::salesforce::pubsub::{ReplayFallback, StartPosition};
use crate::sink::SinkSpec;
use file::FileConfig;
pub use shard::Shard;
pub use subscription::{normalize_channel, parse_replay};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} = {value:?} is invalid: {fix}")]
    Invalid {
        key: String,
        value: String,
        fix: String,
    },
    #[error("{key} is required: {fix}")]
    Missing { key: String, fix: String },
    #[error("cannot read {key} file {path}: {source}")]
    File {
        key: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: String, message: String },
    #[error(
        "{count} tenant(s) are invalid and are left out of a run (see rejected-tenants above); the first, {name}: {reason}"
    )]
    RejectedTenants {
        count: usize,
        name: String,
        reason: String,
    },
}

/// A Salesforce org to read from.
#[derive(Clone, Debug)]
pub struct OrgConfig {
    /// `default` for `[salesforce]` and the flags; else the name of `[orgs.NAME]`.
    pub name: String,
    pub pubsub_endpoint: String,
    pub login_url: String,
    pub api_version: String,
    pub credentials: Credentials,
    /// `transform-config`: (transform, key, value) for this org's transforms.
    pub transform_config: Vec<(String, String, String)>,
}

impl OrgConfig {
    /// The org as its login names it, whatever the entry is called: who logs in, and
    /// where. Two entries with the same identity read the same org, so a Lease keyed by
    /// it fences a tenant across a rename (the org id itself is known only after a login).
    pub fn identity(&self) -> String {
        let host = self
            .login_url
            .split("://")
            .nth(1)
            .unwrap_or(&self.login_url)
            .trim_end_matches('/');
        format!("{}@{host}", self.credentials.principal())
    }
}

/// One subscription of a run and the org it reads from.
#[derive(Clone, Debug)]
pub struct SubscriptionPlan {
    pub name: String,
    /// Index into [`RunPlan::orgs`].
    pub org: usize,
    pub config: SubscriptionConfig,
}

#[derive(Clone, Debug)]
pub struct RunPlan {
    pub orgs: Vec<OrgConfig>,
    pub subscriptions: Vec<SubscriptionPlan>,
    /// Tenants whose entry is invalid, with the reason: left out of the run, which goes on
    /// with the others; `config check` fails on them.
    pub rejected_tenants: Vec<(String, String)>,
    /// Where compiled transforms are cached.
    pub cache_dir: Option<PathBuf>,
    /// Bytes of idle transform instances kept warm for the whole process.
    pub transform_idle_bytes: usize,
    pub options: RunOptions,
    pub metrics_listen: Option<SocketAddr>,
    /// How often each subscription logs a health report; `None` = never.
    pub health_interval: Option<Duration>,
    /// Events waiting longer than this for their checkpoint make a subscription unhealthy.
    pub max_checkpoint_lag: Duration,
    /// How long a stop waits for the subscriptions before giving up on them.
    pub shutdown_timeout: Duration,
    /// The configuration file read, if any.
    pub source: Option<PathBuf>,
    /// The tenants file or directory read, if any.
    pub tenants: Option<PathBuf>,
    /// This process's share, when the subscriptions are split over several processes.
    pub shard: Option<Shard>,
    /// Kubernetes Lease fencing, when on.
    pub lease: Option<LeaseSettings>,
}

/// How one subscription runs.
#[derive(Clone, Debug)]
pub struct SubscriptionConfig {
    pub channel: String,
    pub sink: SinkSpec,
    pub layout: crate::sink::Layout,
    /// Start a new table with a snapshot of the object's records.
    pub snapshot: bool,
    /// The current-state table that follows the typed change table.
    pub current_state: Option<SinkSpec>,
    pub current_state_deletes: crate::current_state::Deletes,
    pub current_state_interval: std::time::Duration,
    /// Where dead letters go; `None` = the sink's own dead-letter place.
    pub dead_letter: Option<SinkSpec>,
    /// Overrides the checkpoint and the backfill rule.
    pub replay: Option<StartPosition>,
    /// With no checkpoint, start from EARLIEST (true) or LATEST (false).
    pub backfill_historical: bool,
    /// Resume from the stored checkpoint (false: always start from LATEST, as the
    /// reference's `enable_replay_recovery = False`).
    pub replay_recovery: bool,
    pub batch_size: u32,
    pub idle_timeout: Duration,
    /// Consecutive idle timeouts after which the subscription counts as stuck.
    pub max_timeouts: u32,
    pub on_invalid_replay: ReplayFallback,
    /// The developer name of the Salesforce managed event subscription read with
    /// ManagedSubscribe, when not a plain Subscribe.
    pub managed_subscription: Option<String>,
    /// Transforms, in order.
    pub transforms: Vec<crate::transform::TransformSpec>,
}

/// Settings shared by every subscription of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    /// Stop once no event arrived for this long (keepalives do not count).
    pub until_idle: Option<Duration>,
    /// Flush the sink and commit the checkpoint at least this often while events flow.
    pub flush_interval: Duration,
    /// Events held by one subscription between fetch and write; fetch credit waits for room.
    pub max_in_flight: usize,
    /// Events held by all subscriptions together (`max-in-flight-total`; 0: no limit).
    pub max_in_flight_total: usize,
    pub zerobus: crate::sink::zerobus::ZerobusSettings,
    /// The SQL warehouse for Zerobus targets: table management and the checkpoint table.
    pub sql: Option<crate::sql::SqlSettings>,
    /// Create a missing Zerobus target table.
    pub auto_create_table: bool,
    /// Which store keeps checkpoints (`checkpoint-store`).
    pub checkpoint_store: crate::checkpoint::StoreKind,
    /// The PostgreSQL checkpoint store, when its URL is set.
    pub postgres: Option<crate::checkpoint::PostgresSettings>,
    /// Logins per second at most (`login-rate`; 0: no limit).
    pub login_rate: f64,
    /// Subscribes per second at most at start (`subscribe-rate`; 0: no limit).
    pub subscribe_rate: f64,
}

pub(crate) fn invalid(
    key: impl Into<String>,
    value: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        fix: fix.into(),
    }
}

pub(crate) fn missing(key: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Missing {
        key: key.into(),
        fix: fix.into(),
    }
}

/// An http(s) URL; `example` is one the error offers for this setting.
fn check_url(key: &str, url: &str, example: &str) -> Result<(), ConfigError> {
    let ok = url.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.starts_with('/')
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            url,
            format!("give a URL such as {example} (http:// only for a local test server)"),
        ))
    }
}

/// An error from a shared check, renamed to the key the user wrote.
fn rekey(error: ConfigError, key: &str) -> ConfigError {
    match error {
        ConfigError::Invalid { value, fix, .. } => invalid(key, value, fix),
        other => other,
    }
}

/// The configuration file a run reads: `--config`/`SFZB_CONFIG`, else `./sfzb.toml` if present.
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_path_buf).or_else(|| {
        let local = PathBuf::from("sfzb.toml");
        local.is_file().then_some(local)
    })
}

impl RunArgs {
    /// Reads the configuration file (if any), lays the flags and environment over it, and
    /// validates the result, reading the files it names (keys, secrets).
    pub fn plan(&self) -> Result<RunPlan, ConfigError> {
        let source = config_path(self.config_file.as_deref());
        let file = match &source {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        layering::resolve(file, self, source)
    }
}

#[cfg(test)]
mod tests;
