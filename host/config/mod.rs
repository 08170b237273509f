//! Turns the configuration file, the environment and the flags into a validated run plan
//! before anything connects. Every error names the setting, the value and the fix.

pub mod file;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::cli::{AuthFlow, RunArgs, SimArgs, TransformArgs};
use crate::event::ReplayId;
use crate::lease::LeaseSettings;
use crate::pipeline::{RunOptions, SubscriptionConfig};
use crate::salesforce::auth::Credentials;
use crate::salesforce::pubsub::{ReplayFallback, StartPosition};
use crate::sim::SimConfig;
use crate::sink::SinkSpec;
use crate::transform::{Limits, OnError, TransformSpec, chain::name_from_path};
use file::{DatabricksSection, FileConfig, OrgSection, SubscriptionSection, TransformSection};

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
    /// Where compiled transforms are cached.
    pub cache_dir: Option<PathBuf>,
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
    /// This process's share, when the subscriptions are split over several processes.
    pub shard: Option<Shard>,
    /// Kubernetes Lease fencing, when on.
    pub lease: Option<LeaseSettings>,
}

/// `shutdown-timeout-secs` unless configured: below the 120 s grace period of the manifests.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 90;

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

fn invalid(
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

fn missing(key: impl Into<String>, fix: impl Into<String>) -> ConfigError {
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

/// `AccountChangeEvent` → `/data/AccountChangeEvent`; full channel names are kept.
pub fn normalize_channel(channel: &str) -> Result<String, ConfigError> {
    let channel = channel.trim();
    if channel.is_empty() || channel.contains(char::is_whitespace) {
        return Err(invalid(
            "channel",
            channel,
            "name a channel such as /data/AccountChangeEvent or /data/ChangeEvents",
        ));
    }
    if channel.starts_with('/') {
        let parts: Vec<&str> = channel.split('/').collect();
        if parts.len() != 3 || parts[2].is_empty() || !matches!(parts[1], "data" | "event") {
            return Err(invalid(
                "channel",
                channel,
                "channels look like /data/AccountChangeEvent, /data/ChangeEvents, /data/Foo__chn or /event/Foo__e",
            ));
        }
        return Ok(channel.to_string());
    }
    Ok(format!("/data/{channel}"))
}

pub fn parse_replay(text: &str) -> Result<StartPosition, ConfigError> {
    match text.to_ascii_lowercase().as_str() {
        "earliest" => Ok(StartPosition::Earliest),
        "latest" => Ok(StartPosition::Latest),
        _ => ReplayId::from_hex(text)
            .map(StartPosition::Custom)
            .map_err(|_| {
                invalid(
                    "replay",
                    text,
                    "use earliest, latest, or a replay id in hex as shown in the logs",
                )
            }),
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
        resolve(file, self, source)
    }

    /// The flags as a file would say them.
    fn as_file(&self) -> (FileConfig, SubscriptionSection) {
        let secret = |v: &Option<String>| v.clone().map(file::Secret::Value);
        let org = OrgSection {
            instance_url: self.instance_url.clone(),
            pubsub_endpoint: self.pubsub_endpoint.clone(),
            api_version: self.api_version.clone(),
            auth: self.auth,
            username: self.username.clone(),
            password: secret(&self.password),
            client_id: self.client_id.clone(),
            client_secret: secret(&self.client_secret),
            jwt_key_file: self.jwt_key_file.clone(),
            jwt_audience: self.jwt_audience.clone(),
            ..OrgSection::default()
        };
        let flags = FileConfig {
            state_dir: self.state_dir.clone(),
            transform_cache_dir: self.transforms.transform_cache_dir.clone(),
            flush_interval_ms: self.flush_interval_ms,
            max_in_flight: self.max_in_flight,
            until_idle: self.until_idle,
            metrics_listen: self.metrics_listen.clone(),
            health_interval_secs: self.health_interval_secs,
            max_checkpoint_lag_secs: self.max_checkpoint_lag_secs,
            shutdown_timeout_secs: self.shutdown_timeout_secs,
            shard: self.shard.clone(),
            lease_namespace: self.lease_namespace.clone(),
            lease_holder: self.lease_holder.clone(),
            lease_duration_secs: self.lease_duration_secs,
            salesforce: (!org.is_empty()).then_some(org),
            databricks: DatabricksSection {
                workspace_url: self.databricks_workspace_url.clone(),
                zerobus_endpoint: self.zerobus_endpoint.clone(),
                client_id: self.databricks_client_id.clone(),
                client_secret: secret(&self.databricks_client_secret),
                sql_warehouse_id: self.sql_warehouse_id.clone(),
                sql_timeout_secs: self.sql_timeout_secs,
                auto_create_table: self.no_auto_create.then_some(false),
                zerobus_max_inflight: self.zerobus_max_inflight,
            },
            ..FileConfig::default()
        };
        let sub = SubscriptionSection {
            channel: self.channel.clone(),
            sink: self.sink.clone(),
            dead_letter: self.dead_letter.clone(),
            replay: self.replay.clone(),
            backfill_historical: self.no_backfill.then_some(false),
            enable_replay_recovery: self.no_replay_recovery.then_some(false),
            batch_size: self.batch_size,
            managed_subscription: self.managed_subscription.clone(),
            idle_timeout_secs: self.idle_timeout_secs,
            max_timeouts: self.max_timeouts,
            replay_invalid: self.replay_invalid,
            transforms: (!self.transforms.paths.is_empty()).then(|| {
                self.transforms
                    .paths
                    .iter()
                    .map(|path| TransformSection {
                        path: path.clone(),
                        ..TransformSection::default()
                    })
                    .collect()
            }),
            ..SubscriptionSection::default()
        };
        (flags, sub)
    }
}

fn resolve(
    file: FileConfig,
    args: &RunArgs,
    source: Option<PathBuf>,
) -> Result<RunPlan, ConfigError> {
    let (flags, flag_sub) = args.as_file();
    let default_org = match (file.salesforce, flags.salesforce) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or_default().overlay(b.unwrap_or_default())),
    };
    let databricks = file.databricks.overlay(flags.databricks);
    let options = run_options(
        &databricks,
        flags.state_dir.or(file.state_dir),
        flags.until_idle.or(file.until_idle),
        flags.flush_interval_ms.or(file.flush_interval_ms),
        flags.max_in_flight.or(file.max_in_flight),
    )?;
    let metrics_listen = match flags.metrics_listen.or(file.metrics_listen) {
        Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "metrics-listen",
                &addr,
                "give an address and port, e.g. 127.0.0.1:9464 or 0.0.0.0:9464",
            )
        })?),
        None => None,
    };
    let health_interval = match flags.health_interval_secs.or(file.health_interval_secs) {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
        None => Some(Duration::from_secs(300)),
    };
    let sections: Vec<(String, SubscriptionSection)> = if flag_sub.channel.is_some()
        || file.subscriptions.is_empty()
    {
        vec![(String::new(), file.defaults.overlay(flag_sub))]
    } else {
        if file.subscriptions.len() > 1 && flag_sub.sink.is_some() {
            return Err(invalid(
                "sink",
                flag_sub.sink.unwrap_or_default(),
                format!(
                    "one --sink for {} subscriptions would mix their rows; set sink in each [[subscription]] of the file",
                    file.subscriptions.len()
                ),
            ));
        }
        file.subscriptions
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("subscription[{i}]."),
                    file.defaults.clone().overlay(s).overlay(flag_sub.clone()),
                )
            })
            .collect()
    };
    let mut orgs: Vec<OrgConfig> = Vec::new();
    let mut subscriptions: Vec<SubscriptionPlan> = Vec::new();
    for (prefix, section) in sections {
        let org_name = match &section.org {
            Some(name) => name.clone(),
            None if default_org.is_some() => "default".to_string(),
            None if file.orgs.len() == 1 => file.orgs.keys().next().cloned().unwrap_or_default(),
            None => {
                return Err(missing(
                    format!("{prefix}org"),
                    if file.orgs.is_empty() {
                        "say where to log in: pass --instance-url (or set SALESFORCE_INSTANCE_URL), or add a [salesforce] section with instance-url".to_string()
                    } else {
                        format!(
                            "name the org this subscription reads from (orgs: {})",
                            file.orgs.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    },
                ));
            }
        };
        let org = match orgs.iter().position(|o| o.name == org_name) {
            Some(i) => i,
            None => {
                let (section, key) = match (org_name.as_str(), &default_org) {
                    ("default", Some(org)) => (org.clone(), String::new()),
                    (name, _) => match file.orgs.get(name) {
                        Some(org) => (org.clone(), format!("orgs.{name}.")),
                        None => {
                            let mut known: Vec<String> = file.orgs.keys().cloned().collect();
                            if default_org.is_some() {
                                known.insert(0, "default".into());
                            }
                            return Err(invalid(
                                format!("{prefix}org"),
                                name,
                                format!(
                                    "no such org; add an [orgs.{name}] section (orgs: {})",
                                    if known.is_empty() {
                                        "none".into()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                            ));
                        }
                    },
                };
                orgs.push(org_config(&org_name, section, &key)?);
                orgs.len() - 1
            }
        };
        let config = subscription_config(&prefix, section.clone(), &args.transforms)?;
        if matches!(config.sink, SinkSpec::Zerobus(_)) && options.zerobus.endpoint.is_empty() {
            return Err(missing(
                "zerobus-endpoint",
                "pass --zerobus-endpoint, set DATABRICKS_ZEROBUS_ENDPOINT, or set zerobus-endpoint under [databricks] (https://<workspace-id>.zerobus.<region>.cloud.databricks.com)",
            ));
        }
        let short = config
            .channel
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let name = match section.name {
            Some(name) if subscriptions.iter().any(|s| s.name == name) => {
                return Err(invalid(
                    format!("{prefix}name"),
                    name,
                    "another subscription has this name; names must be unique",
                ));
            }
            Some(name) => name,
            None if subscriptions.iter().any(|s| s.name == short) => {
                format!("{short}@{org_name}")
            }
            None => short,
        };
        if subscriptions.iter().any(|s| s.name == name) {
            return Err(invalid(
                format!("{prefix}channel"),
                &config.channel,
                "another subscription reads this channel from this org; give each a distinct name and sink, or remove one",
            ));
        }
        // One checkpoint per (org, channel, target): two readers of it would skip each
        // other's events.
        if let Some(other) = subscriptions.iter().find(|s| {
            s.org == org && s.config.channel == config.channel && s.config.sink == config.sink
        }) {
            return Err(invalid(
                format!("{prefix}sink"),
                config.sink.to_string(),
                format!(
                    "subscription {} already reads {} from org {org_name} into this sink; they would share one checkpoint and skip each other's events: give each its own sink, or remove one",
                    other.name, config.channel
                ),
            ));
        }
        subscriptions.push(SubscriptionPlan { name, org, config });
    }
    let shard = flags
        .shard
        .or(file.shard)
        .map(|s| Shard::parse(&s))
        .transpose()?;
    let lease = lease_settings(
        flags.lease_namespace.or(file.lease_namespace),
        flags.lease_holder.or(file.lease_holder),
        flags.lease_duration_secs.or(file.lease_duration_secs),
    )?;
    let max_checkpoint_lag = flags
        .max_checkpoint_lag_secs
        .or(file.max_checkpoint_lag_secs)
        .map_or(
            crate::health::DEFAULT_MAX_CHECKPOINT_LAG,
            Duration::from_secs,
        );
    if max_checkpoint_lag <= options.flush_interval {
        return Err(invalid(
            "max-checkpoint-lag-secs",
            max_checkpoint_lag.as_secs().to_string(),
            format!(
                "checkpoints move once per flush-interval-ms ({} ms): give a longer lag, or every subscription reads as stalled",
                options.flush_interval.as_millis()
            ),
        ));
    }
    Ok(RunPlan {
        orgs,
        subscriptions,
        shard,
        lease,
        cache_dir: cache_dir(flags.transform_cache_dir.or(file.transform_cache_dir)),
        options,
        metrics_listen,
        health_interval,
        max_checkpoint_lag,
        shutdown_timeout: Duration::from_secs(
            flags
                .shutdown_timeout_secs
                .or(file.shutdown_timeout_secs)
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
        ),
        source,
    })
}

fn lease_settings(
    namespace: Option<String>,
    holder: Option<String>,
    duration_secs: Option<u64>,
) -> Result<Option<LeaseSettings>, ConfigError> {
    let Some(namespace) = namespace.filter(|n| !n.is_empty()) else {
        return match (holder, duration_secs) {
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
    let duration_secs = duration_secs.unwrap_or(30);
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

fn run_options(
    databricks: &DatabricksSection,
    state_dir: Option<PathBuf>,
    until_idle: Option<f64>,
    flush_interval_ms: Option<u64>,
    max_in_flight: Option<usize>,
) -> Result<RunOptions, ConfigError> {
    let until_idle = match until_idle {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            return Err(invalid(
                "until-idle",
                s.to_string(),
                "give a positive number of seconds",
            ));
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let max_in_flight = max_in_flight.unwrap_or(1000);
    if max_in_flight == 0 {
        return Err(invalid(
            "max-in-flight",
            "0",
            "give at least 1 (default 1000)",
        ));
    }
    if let Some(endpoint) = &databricks.zerobus_endpoint {
        check_url(
            "zerobus-endpoint",
            endpoint,
            "https://<workspace-id>.zerobus.<region>.cloud.databricks.com",
        )?;
    }
    let client_secret = databricks
        .client_secret
        .as_ref()
        .map(|s| {
            s.resolve("databricks.client-secret")
                .map(SecretString::from)
        })
        .transpose()?;
    let sql = match (&databricks.sql_warehouse_id, &databricks.workspace_url) {
        (Some(warehouse), Some(workspace)) => {
            check_url(
                "databricks-workspace-url",
                workspace,
                "https://<workspace>.cloud.databricks.com",
            )?;
            Some(crate::sql::SqlSettings {
                workspace_url: workspace.clone(),
                warehouse_id: warehouse.clone(),
                client_id: databricks.client_id.clone(),
                client_secret: client_secret.clone(),
                timeout: Duration::from_secs(databricks.sql_timeout_secs.unwrap_or(300).max(1)),
            })
        }
        (Some(_), None) => {
            return Err(missing(
                "databricks-workspace-url",
                "the SQL warehouse needs the workspace: pass --databricks-workspace-url, set DATABRICKS_HOST, or set workspace-url under [databricks]",
            ));
        }
        _ => None,
    };
    Ok(RunOptions {
        state_dir: state_dir.unwrap_or_else(|| PathBuf::from(".sfzb-state")),
        until_idle,
        flush_interval: Duration::from_millis(flush_interval_ms.unwrap_or(1000).max(1)),
        max_in_flight,
        zerobus: crate::sink::zerobus::ZerobusSettings {
            endpoint: databricks.zerobus_endpoint.clone().unwrap_or_default(),
            workspace_url: databricks.workspace_url.clone(),
            client_id: databricks.client_id.clone(),
            client_secret,
            max_inflight: databricks.zerobus_max_inflight.unwrap_or(16).max(1),
        },
        sql,
        auto_create_table: databricks.auto_create_table.unwrap_or(true),
    })
}

fn subscription_config(
    prefix: &str,
    section: SubscriptionSection,
    flags: &TransformArgs,
) -> Result<SubscriptionConfig, ConfigError> {
    let key = |k: &str| format!("{prefix}{k}");
    let channel = section.channel.as_deref().ok_or_else(|| {
        missing(
            key("channel"),
            "pass --channel (e.g. AccountChangeEvent) or set channel in each [[subscription]] of sfzb.toml",
        )
    })?;
    let channel = normalize_channel(channel).map_err(|e| rekey(e, &key("channel")))?;
    let sink_text = section.sink.unwrap_or_else(|| "jsonl:-".to_string());
    let sink: SinkSpec = sink_text
        .parse()
        .map_err(|e: crate::sink::SinkSpecError| invalid(key("sink"), &sink_text, e.to_string()))?;
    let dead_letter = match &section.dead_letter {
        Some(spec) => Some(spec.parse().map_err(|e: crate::sink::SinkSpecError| {
            invalid(key("dead-letter"), spec, e.to_string())
        })?),
        None => None,
    };
    if let SinkSpec::Delta(target) = &sink
        && target.contains("://")
        && !target.starts_with("file://")
        && !cfg!(feature = "cloud")
    {
        return Err(invalid(
            key("sink"),
            &sink_text,
            "object store tables (s3://, abfss://, gs://) are not built into this binary: build it with `cargo build --release --features cloud`, write to a local path, or use zerobus:catalog.schema.table for Databricks",
        ));
    }
    if let SinkSpec::Zerobus(table) = &sink
        && (table.split('.').count() != 3 || table.split('.').any(str::is_empty))
    {
        return Err(invalid(
            key("sink"),
            &sink_text,
            "Zerobus tables are named in full: zerobus:catalog.schema.table",
        ));
    }
    let replay = section
        .replay
        .as_deref()
        .map(parse_replay)
        .transpose()
        .map_err(|e| rekey(e, &key("replay")))?;
    let idle_timeout_secs = section.idle_timeout_secs.unwrap_or(300);
    if idle_timeout_secs == 0 {
        return Err(invalid(
            key("idle-timeout-secs"),
            "0",
            "give a positive number of seconds (Salesforce sends a keepalive within 270 s)",
        ));
    }
    let batch_size = section.batch_size.unwrap_or(100);
    if !(1..=100).contains(&batch_size) {
        return Err(invalid(
            key("batch-size"),
            batch_size.to_string(),
            "give 1 to 100 (Salesforce sends at most 100 events per request)",
        ));
    }
    Ok(SubscriptionConfig {
        channel,
        sink,
        dead_letter,
        replay,
        backfill_historical: section.backfill_historical.unwrap_or(true),
        replay_recovery: section.enable_replay_recovery.unwrap_or(true),
        batch_size,
        idle_timeout: Duration::from_secs(idle_timeout_secs),
        max_timeouts: section.max_timeouts.unwrap_or(3).max(1),
        on_invalid_replay: section.replay_invalid.unwrap_or(ReplayFallback::Fail),
        managed_subscription: section.managed_subscription.filter(|n| !n.is_empty()),
        transforms: chain_specs(prefix, section.transforms.unwrap_or_default(), flags)?,
    })
}

/// An error from a shared check, renamed to the key the user wrote.
fn rekey(error: ConfigError, key: &str) -> ConfigError {
    match error {
        ConfigError::Invalid { value, fix, .. } => invalid(key, value, fix),
        other => other,
    }
}

fn org_config(name: &str, org: OrgSection, prefix: &str) -> Result<OrgConfig, ConfigError> {
    let key = |k: &str| format!("{prefix}{k}");
    let pubsub_endpoint = match (&org.pubsub_endpoint, &org.grpc_host, org.grpc_port) {
        (Some(endpoint), _, _) => endpoint.clone(),
        (None, Some(host), port) => format!("https://{host}:{}", port.unwrap_or(7443)),
        (None, None, Some(port)) => format!("https://api.pubsub.salesforce.com:{port}"),
        (None, None, None) => crate::salesforce::pubsub::DEFAULT_ENDPOINT.to_string(),
    };
    check_url(
        &key("pubsub-endpoint"),
        &pubsub_endpoint,
        "https://api.pubsub.salesforce.com:7443",
    )?;
    let login_url = org.instance_url.clone().ok_or_else(|| {
        missing(
            key("instance-url"),
            if prefix.is_empty() {
                "pass --instance-url, set SALESFORCE_INSTANCE_URL, or set instance-url under [salesforce] (https://login.salesforce.com, https://test.salesforce.com or your My Domain URL)"
            } else {
                "set instance-url for this org (https://login.salesforce.com, https://test.salesforce.com or your My Domain URL)"
            },
        )
    })?;
    check_url(
        &key("instance-url"),
        &login_url,
        "https://login.salesforce.com",
    )?;
    let login_url = login_url.trim_end_matches('/').to_string();
    Ok(OrgConfig {
        name: name.to_string(),
        pubsub_endpoint,
        api_version: org.api_version.clone().unwrap_or_else(|| "57.0".into()),
        credentials: credentials(&org, prefix, &login_url)?,
        login_url,
    })
}

fn credentials(
    org: &OrgSection,
    prefix: &str,
    login_url: &str,
) -> Result<Credentials, ConfigError> {
    let flow = org
        .auth
        .unwrap_or(match (&org.jwt_key_file, &org.client_id, &org.username) {
            (Some(_), _, _) => AuthFlow::JwtBearer,
            (None, Some(_), Some(_)) => AuthFlow::Password,
            (None, Some(_), None) => AuthFlow::ClientCredentials,
            (None, None, _) => AuthFlow::Soap,
        });
    let flags = prefix.is_empty();
    let key = |k: &str| format!("{prefix}{k}");
    let where_ = |flag: &str, env: &str, what: &str| {
        if flags {
            format!("pass --{flag} or set {env}{what}")
        } else {
            format!("set {prefix}{flag}, e.g. {{ env = \"{env}\" }}{what}")
        }
    };
    let text = |value: &Option<String>, k: &str, fix: String| {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| missing(key(k), fix))
    };
    let secret = |value: &Option<file::Secret>, k: &str, fix: String| match value {
        Some(s) => s.resolve(&key(k)).and_then(|v| {
            if v.is_empty() {
                Err(missing(key(k), fix.clone()))
            } else {
                Ok(SecretString::from(v))
            }
        }),
        None => Err(missing(key(k), fix)),
    };
    let username = || {
        text(
            &org.username,
            "username",
            where_("username", "SALESFORCE_USERNAME", ""),
        )
    };
    let password = || {
        secret(
            &org.password,
            "password",
            where_(
                "password",
                "SALESFORCE_PASSWORD",
                " (password with the security token appended)",
            ),
        )
    };
    let client_id = || {
        text(
            &org.client_id,
            "client-id",
            where_(
                "client-id",
                "SALESFORCE_CLIENT_ID",
                " (the connected app's consumer key)",
            ),
        )
    };
    let client_secret = || {
        secret(
            &org.client_secret,
            "client-secret",
            where_(
                "client-secret",
                "SALESFORCE_CLIENT_SECRET",
                " (the connected app's consumer secret)",
            ),
        )
    };
    Ok(match flow {
        AuthFlow::Soap => Credentials::Soap {
            username: username()?,
            password: password()?,
        },
        AuthFlow::ClientCredentials => Credentials::ClientCredentials {
            client_id: client_id()?,
            client_secret: client_secret()?,
        },
        AuthFlow::Password => Credentials::Password {
            client_id: client_id()?,
            client_secret: client_secret()?,
            username: username()?,
            password: password()?,
        },
        AuthFlow::JwtBearer => {
            let path = org.jwt_key_file.as_ref().ok_or_else(|| {
                missing(
                    key("jwt-key-file"),
                    where_(
                        "jwt-key-file",
                        "SALESFORCE_JWT_KEY_FILE",
                        " (PEM RSA private key)",
                    ),
                )
            })?;
            let pem = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                key: key("jwt-key-file"),
                path: path.display().to_string(),
                source,
            })?;
            Credentials::JwtBearer {
                client_id: client_id()?,
                username: username()?,
                private_key_pem: SecretString::from(pem),
                audience: org
                    .jwt_audience
                    .clone()
                    .unwrap_or_else(|| login_url.to_string()),
            }
        }
    })
}

/// The transform chain of one subscription: the file's (or the flags') transforms, with the
/// flags' settings, policies and limits laid over them. Every file must exist and every
/// setting must name a transform of the chain.
fn chain_specs(
    prefix: &str,
    sections: Vec<TransformSection>,
    flags: &TransformArgs,
) -> Result<Vec<TransformSpec>, ConfigError> {
    let key = |k: &str| format!("{prefix}{k}");
    let mut specs: Vec<TransformSpec> = Vec::new();
    let defaults = Limits::default();
    for section in sections {
        let path = section.path;
        if !path.is_file() {
            return Err(invalid(
                key("transform"),
                path.display().to_string(),
                "no such file; give the path of a .wasm component",
            ));
        }
        let name = section.name.unwrap_or_else(|| name_from_path(&path));
        if specs.iter().any(|s| s.name == name) {
            return Err(invalid(
                key("transform"),
                path.display().to_string(),
                format!("a transform named {name} is already in the chain; rename one"),
            ));
        }
        specs.push(TransformSpec {
            name,
            path,
            config: section
                .config
                .iter()
                .map(|(k, v)| {
                    let text = file::setting_text(&key(&format!("transform.config.{k}")), v)?;
                    Ok((k.clone(), text))
                })
                .collect::<Result<_, ConfigError>>()?,
            on_error: section.on_error.unwrap_or_default(),
            limits: Limits {
                memory_bytes: flags
                    .transform_memory_mib
                    .or(section.memory_mib)
                    .unwrap_or(64)
                    .max(1)
                    << 20,
                timeout: Duration::from_millis(
                    flags
                        .transform_timeout_ms
                        .or(section.timeout_ms)
                        .unwrap_or(100)
                        .max(1),
                ),
                fuel: flags.transform_fuel.or(section.fuel),
                recycle_after: flags
                    .transform_recycle_after
                    .or(section.recycle_after)
                    .unwrap_or(defaults.recycle_after)
                    .max(1),
                max_added_bytes: section.max_added_bytes.unwrap_or(defaults.max_added_bytes),
                max_outputs: section.max_outputs.unwrap_or(defaults.max_outputs).max(1),
                max_batch_output_bytes: section
                    .max_batch_output_mib
                    .map_or(defaults.max_batch_output_bytes, |mib| mib.max(1) << 20),
                max_tables: section.max_tables.unwrap_or(defaults.max_tables),
                max_log_lines_per_sec: section
                    .max_log_lines_per_sec
                    .unwrap_or(defaults.max_log_lines_per_sec),
            },
            allow_tables: section.allow_tables,
        });
    }
    let chain = specs
        .iter()
        .map(|s| s.name.clone())
        .collect::<Vec<_>>()
        .join(", ");
    for item in &flags.config {
        let parsed = item
            .split_once('=')
            .and_then(|(k, v)| k.split_once('.').map(|(n, k)| (n, k, v)));
        // A setting may be a secret: errors name it by NAME.KEY only, never its value.
        let named = item.split_once('=').map_or("(no =)", |(k, _)| k);
        let Some((name, setting, value)) =
            parsed.filter(|(n, k, _)| !n.is_empty() && !k.is_empty())
        else {
            return Err(invalid(
                "transform-config",
                named,
                "write it as NAME.KEY=VALUE, e.g. mask.fields=Email,Phone",
            ));
        };
        let spec = specs.iter_mut().find(|s| s.name == name).ok_or_else(|| {
            invalid(
                "transform-config",
                named,
                format!("no transform named {name} in the chain (transforms: {chain})"),
            )
        })?;
        spec.config.retain(|(k, _)| k != setting);
        spec.config.push((setting.to_string(), value.to_string()));
    }
    for item in &flags.on_error {
        let (name, policy) = match item.split_once('=') {
            Some((n, p)) => (Some(n), p),
            None => (None, item.as_str()),
        };
        let policy = <OnError as clap::ValueEnum>::from_str(policy, true).map_err(|_| {
            invalid(
                "transform-on-error",
                item,
                "the policy is dead-letter, skip or stop",
            )
        })?;
        match name {
            None => specs.iter_mut().for_each(|s| s.on_error = policy),
            Some(name) => {
                let spec = specs.iter_mut().find(|s| s.name == name).ok_or_else(|| {
                    invalid(
                        "transform-on-error",
                        item,
                        format!("no transform named {name} in the chain (transforms: {chain})"),
                    )
                })?;
                spec.on_error = policy;
            }
        }
    }
    Ok(specs)
}

/// The compile cache directory: the setting, else the user's cache directory.
fn cache_dir(setting: Option<PathBuf>) -> Option<PathBuf> {
    setting.or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("sfzb-host"))
    })
}

impl RunPlan {
    /// The plan as `config check` prints it: every resolved setting, secrets masked.
    pub fn describe(&self) -> serde_json::Value {
        use serde_json::json;
        let orgs: Vec<_> = self
            .orgs
            .iter()
            .map(|o| {
                json!({
                    "name": o.name,
                    "instance-url": o.login_url,
                    "pubsub-endpoint": o.pubsub_endpoint,
                    "api-version": o.api_version,
                    "auth": o.credentials.describe(),
                })
            })
            .collect();
        let subscriptions: Vec<_> = self
            .subscriptions
            .iter()
            .map(|s| {
                let c = &s.config;
                json!({
                    "name": s.name,
                    "in-this-shard": self.shard.is_none_or(|shard| shard.owns(&self.orgs[s.org], &s.config.channel)),
                    "lease": self.lease.as_ref().map(|_| crate::lease::Fence::lease_name(&self.orgs[s.org].name, &c.channel, &c.sink.to_string())),
                    "org": self.orgs[s.org].name,
                    "channel": c.channel,
                    "sink": c.sink.to_string(),
                    "dead-letter": c.dead_letter.as_ref().map(ToString::to_string),
                    "replay": c.replay.as_ref().map(ToString::to_string),
                    "managed-subscription": c.managed_subscription,
                    "backfill-historical": c.backfill_historical,
                    "enable-replay-recovery": c.replay_recovery,
                    "batch-size": c.batch_size,
                    "idle-timeout-secs": c.idle_timeout.as_secs(),
                    "max-timeouts": c.max_timeouts,
                    "replay-invalid": c.on_invalid_replay,
                    "transforms": c.transforms.iter().map(|t| json!({
                        "name": t.name,
                        "path": t.path.display().to_string(),
                        "on-error": t.on_error,
                        // Any setting may be a secret: keys only.
                        "config": t.config.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                        "memory-mib": t.limits.memory_bytes >> 20,
                        "timeout-ms": t.limits.timeout.as_millis() as u64,
                        "fuel": t.limits.fuel,
                        "recycle-after": t.limits.recycle_after,
                        "max-added-bytes": t.limits.max_added_bytes,
                        "max-outputs": t.limits.max_outputs,
                        "max-batch-output-mib": t.limits.max_batch_output_bytes >> 20,
                        "max-tables": t.limits.max_tables,
                        "max-log-lines-per-sec": t.limits.max_log_lines_per_sec,
                        "allow-tables": t.allow_tables,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let o = &self.options;
        json!({
            "config-file": self.source.as_ref().map(|p| p.display().to_string()),
            "state-dir": o.state_dir.display().to_string(),
            "transform-cache-dir": self.cache_dir.as_ref().map(|p| p.display().to_string()),
            "flush-interval-ms": o.flush_interval.as_millis() as u64,
            "max-in-flight": o.max_in_flight,
            "until-idle": o.until_idle.map(|d| d.as_secs_f64()),
            "metrics-listen": self.metrics_listen.map(|a| a.to_string()),
            "health-interval-secs": self.health_interval.map(|d| d.as_secs()),
            "max-checkpoint-lag-secs": self.max_checkpoint_lag.as_secs(),
            "shutdown-timeout-secs": self.shutdown_timeout.as_secs(),
            "shard": self.shard.map(|s| format!("{}/{}", s.index, s.count)),
            "lease": self.lease.as_ref().map(|l| serde_json::json!({
                "namespace": l.namespace,
                "holder": l.holder,
                "duration-secs": l.duration_secs,
            })),
            "databricks": {
                "zerobus-endpoint": (!o.zerobus.endpoint.is_empty()).then_some(&o.zerobus.endpoint),
                "workspace-url": o.zerobus.workspace_url,
                "client-id": o.zerobus.client_id,
                "client-secret": o.zerobus.client_secret.as_ref().map(|_| "***"),
                "sql-warehouse-id": o.sql.as_ref().map(|s| &s.warehouse_id),
                "auto-create-table": o.auto_create_table,
                "zerobus-max-inflight": o.zerobus.max_inflight,
            },
            "orgs": orgs,
            "subscriptions": subscriptions,
        })
    }
}
impl crate::cli::ComponentArgs {
    /// The component as a one-transform chain.
    pub fn spec(&self) -> Result<TransformSpec, ConfigError> {
        if !self.component.is_file() {
            return Err(invalid(
                "component",
                self.component.display().to_string(),
                "no such file; give the path of a .wasm component",
            ));
        }
        let config = self
            .config
            .iter()
            .map(|item| {
                item.split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| {
                        invalid(
                            "config",
                            item,
                            "write it as KEY=VALUE, e.g. fields=Email,Phone",
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(TransformSpec {
            name: name_from_path(&self.component),
            path: self.component.clone(),
            config,
            on_error: OnError::DeadLetter,
            limits: Limits {
                memory_bytes: self.memory_mib.max(1) << 20,
                timeout: Duration::from_millis(self.timeout_ms.max(1)),
                fuel: self.fuel,
                ..Limits::default()
            },
            allow_tables: Vec::new(),
        })
    }

    pub fn cache(&self) -> Option<std::path::PathBuf> {
        cache_dir(self.cache_dir.clone())
    }
}

fn pairs(key: &'static str, items: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    items
        .iter()
        .map(|item| {
            item.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| invalid(key, item, "write it as NAME:SECRET"))
        })
        .collect()
}

impl SimArgs {
    pub fn config(&self) -> Result<SimConfig, ConfigError> {
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(invalid(
                "rate",
                self.rate.to_string(),
                "give events per second, 0 or more",
            ));
        }
        let jwt_public_key_pem = match &self.jwt_public_key {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                        key: "jwt-public-key".into(),
                        path: path.display().to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Ok(SimConfig {
            pubsub_addr: (self.host, self.port).into(),
            login_addr: (self.host, self.login_port).into(),
            entities: self.entities.clone(),
            events: self.events,
            rate: self.rate,
            seed: self.seed,
            org_id: self.org_id.clone(),
            retention: self.retention,
            keepalive: Duration::from_millis(self.keepalive_ms.max(10)),
            accounts: crate::sim::login::Accounts {
                users: pairs("login", &self.logins)?,
                clients: pairs("client", &self.clients)?,
                jwt_public_key_pem,
            },
            token_ttl: self.token_ttl_secs.map(Duration::from_secs),
            event_faults: crate::sim::bus::EventFaults {
                corrupt_at: self.corrupt_at.clone(),
                empty_at: self.empty_at.clone(),
                schema_change_at: self.schema_change_at,
                gap_every: self.gap_every,
            },
            stream_faults: crate::sim::pubsub::StreamFaults {
                end_stream_after: self.end_stream_after,
                expire_tokens_after: self.expire_tokens_after,
            },
            managed: self
                .managed_subscriptions
                .iter()
                .map(|item| {
                    item.split_once('=')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| {
                            invalid(
                                "managed-subscription",
                                item,
                                "write it as NAME=TOPIC, e.g. Accounts=/data/AccountChangeEvent",
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn run_args(extra: &[&str]) -> Result<RunPlan, ConfigError> {
        let mut argv = vec![
            "sfzb-host",
            "run",
            "--instance-url",
            "http://127.0.0.1:1",
            "--channel",
            "AccountChangeEvent",
        ];
        argv.extend_from_slice(extra);
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        match cli.into_command() {
            crate::cli::Command::Run(args) => args.plan(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn channels_normalize_and_bad_ones_are_named() {
        assert_eq!(
            normalize_channel("AccountChangeEvent").unwrap(),
            "/data/AccountChangeEvent"
        );
        assert_eq!(
            normalize_channel("/data/Foo__chn").unwrap(),
            "/data/Foo__chn"
        );
        assert!(
            normalize_channel("/nope/x/y")
                .unwrap_err()
                .to_string()
                .contains("/data/AccountChangeEvent")
        );
        assert!(normalize_channel("").is_err());
    }

    #[test]
    fn auth_flow_is_inferred_and_missing_secrets_say_where_to_put_them() {
        let plan = run_args(&["--username", "u", "--password", "p"]).unwrap();
        assert_eq!(plan.orgs[0].credentials.kind(), "soap");
        let plan = run_args(&["--client-id", "c", "--client-secret", "s"]).unwrap();
        assert_eq!(plan.orgs[0].credentials.kind(), "client-credentials");
        let plan = run_args(&[
            "--client-id",
            "c",
            "--client-secret",
            "s",
            "--username",
            "u",
            "--password",
            "p",
        ])
        .unwrap();
        assert_eq!(plan.orgs[0].credentials.kind(), "password");
        let err = run_args(&["--username", "u"]).unwrap_err().to_string();
        assert!(err.contains("SALESFORCE_PASSWORD"), "{err}");
        let err = run_args(&[
            "--jwt-key-file",
            "/nonexistent/key.pem",
            "--client-id",
            "c",
            "--username",
            "u",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
    }

    #[test]
    fn bad_values_name_key_value_and_fix() {
        let err = run_args(&["--username", "u", "--password", "p", "--replay", "zz"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("replay") && err.contains("zz") && err.contains("earliest"),
            "{err}"
        );
        let cases: [(&[&str], &[&str]); 7] = [
            (&["--sink", "out.jsonl"], &["sink", "jsonl:PATH"]),
            (
                &["--sink", "zerobus:main.s.t; DROP TABLE x --"],
                &["catalog.schema.table"],
            ),
            (
                &["--sink", "zerobus:main.s.t", "--zerobus-endpoint", "zb:443"],
                &["zerobus-endpoint", "zerobus.<region>.cloud.databricks.com"],
            ),
            (
                &["--sink", "delta:s3://bucket/t"],
                &["not built into this binary"],
            ),
            (&["--sink", "zerobus:accounts"], &["catalog.schema.table"]),
            (&["--sink", "zerobus:main.s.t"], &["zerobus-endpoint"]),
            (&["--pubsub-endpoint", "api:7443"], &["pubsub-endpoint"]),
        ];
        for (flags, expected) in cases {
            let mut argv = vec!["--username", "u", "--password", "p"];
            argv.extend_from_slice(flags);
            let err = run_args(&argv).unwrap_err().to_string();
            assert!(expected.iter().all(|e| err.contains(e)), "{flags:?}: {err}");
        }
        let plan = run_args(&[
            "--username",
            "u",
            "--password",
            "p",
            "--replay",
            "00000000000000ff",
        ])
        .unwrap();
        assert_eq!(
            plan.subscriptions[0].config.replay,
            Some(StartPosition::Custom(
                ReplayId::from_hex("00000000000000ff").unwrap()
            ))
        );
    }

    #[test]
    fn shards_parse_and_split_every_subscription_to_exactly_one() {
        for bad in ["2/2", "1", "a/2", "0/0", "-1/3"] {
            let err = Shard::parse(bad).unwrap_err().to_string();
            assert!(err.contains("shard") && err.contains("I/N"), "{bad}: {err}");
        }
        let org = |name: &str| OrgConfig {
            name: name.into(),
            pubsub_endpoint: String::new(),
            login_url: String::new(),
            api_version: String::new(),
            credentials: Credentials::Soap {
                username: "u".into(),
                password: SecretString::from("p"),
            },
        };
        let shards: Vec<Shard> = (0..3)
            .map(|i| Shard::parse(&format!("{i}/3")).unwrap())
            .collect();
        for org in [org("a"), org("b")] {
            for entity in ["Account", "Contact", "Lead", "Opportunity", "Case"] {
                let channel = format!("/data/{entity}ChangeEvent");
                let owners = shards.iter().filter(|s| s.owns(&org, &channel)).count();
                assert_eq!(owners, 1, "{} {channel}", org.name);
            }
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sfzb.toml");
        std::fs::write(
            &file,
            "max-in-flight = 500\nflush-interval-ms = 250\n[salesforce]\ninstance-url = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword = \"p\"\n[defaults]\nbatch-size = 20\n[[subscription]]\nchannel = \"AccountChangeEvent\"\nbatch-size = 30\n",
        )
        .unwrap();
        let from = |extra: &[&str]| {
            let mut argv = vec!["sfzb-host", "--config", file.to_str().unwrap()];
            argv.extend_from_slice(extra);
            match crate::cli::Cli::try_parse_from(argv)
                .unwrap()
                .into_command()
            {
                crate::cli::Command::Run(args) => args.plan().unwrap(),
                _ => unreachable!(),
            }
        };
        let plan = from(&["--max-in-flight", "7"]);
        assert_eq!(plan.options.max_in_flight, 7, "the flag wins");
        assert_eq!(
            plan.options.flush_interval,
            Duration::from_millis(250),
            "the file wins over the default"
        );
        assert_eq!(
            plan.subscriptions[0].config.batch_size, 30,
            "a subscription wins over [defaults]"
        );
        assert_eq!(
            plan.subscriptions[0].config.idle_timeout,
            Duration::from_secs(300),
            "default"
        );
        assert_eq!(
            from(&["--batch-size", "5"]).subscriptions[0]
                .config
                .batch_size,
            5
        );
        let plan = from(&["--channel", "ContactChangeEvent"]);
        assert_eq!(plan.subscriptions.len(), 1);
        assert_eq!(
            plan.subscriptions[0].config.channel,
            "/data/ContactChangeEvent"
        );
        assert_eq!(
            plan.subscriptions[0].config.batch_size, 20,
            "--channel takes [defaults]"
        );
    }
}
