//! The configuration file (`sfzb.toml`): the same settings as the flags, under the same
//! names, plus what flags cannot say (several orgs, several subscriptions, per-transform
//! settings). Relative paths in a file are relative to the file's directory, so a file and
//! the components next to it move together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::AuthFlow;
use crate::salesforce::pubsub::ReplayFallback;
use crate::transform::OnError;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub transform_cache_dir: Option<PathBuf>,
    pub flush_interval_ms: Option<u64>,
    pub max_in_flight: Option<usize>,
    /// Seconds.
    pub until_idle: Option<f64>,
    pub metrics_listen: Option<String>,
    pub health_interval_secs: Option<u64>,
    /// Events waiting longer than this for their checkpoint make /healthz fail.
    pub max_checkpoint_lag_secs: Option<u64>,
    /// How long a stop waits for subscriptions to flush before exiting non-zero.
    pub shutdown_timeout_secs: Option<u64>,
    /// `I/N`: this process's share of the subscriptions.
    pub shard: Option<String>,
    /// Kubernetes Lease fencing: the namespace of the Leases, this process's holder name,
    /// and how long a Lease lasts unrenewed (seconds).
    pub lease_namespace: Option<String>,
    pub lease_holder: Option<String>,
    pub lease_duration_secs: Option<u64>,
    /// The org subscriptions use when they name none.
    pub salesforce: Option<OrgSection>,
    /// More orgs, by name: `[orgs.acme]`.
    #[serde(default)]
    pub orgs: BTreeMap<String, OrgSection>,
    #[serde(default)]
    pub databricks: DatabricksSection,
    /// Settings every `[[subscription]]` inherits.
    #[serde(default)]
    pub defaults: SubscriptionSection,
    #[serde(default, rename = "subscription")]
    pub subscriptions: Vec<SubscriptionSection>,
}

/// A secret: inline (`password = "…"`), from an environment variable
/// (`password = { env = "ACME_PASSWORD" }`) or from a file (`password = { file = "…" }`,
/// trailing newline dropped), so none has to be on a command line.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Secret {
    Value(String),
    Env { env: String },
    File { file: PathBuf },
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OrgSection {
    pub instance_url: Option<String>,
    pub pubsub_endpoint: Option<String>,
    /// The reference's way to name the endpoint: host and port, TLS.
    pub grpc_host: Option<String>,
    pub grpc_port: Option<u16>,
    pub api_version: Option<String>,
    pub auth: Option<AuthFlow>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub jwt_key_file: Option<PathBuf>,
    pub jwt_audience: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DatabricksSection {
    pub workspace_url: Option<String>,
    pub zerobus_endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub sql_warehouse_id: Option<String>,
    pub sql_timeout_secs: Option<u64>,
    pub auto_create_table: Option<bool>,
    pub zerobus_max_inflight: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SubscriptionSection {
    /// Names the subscription in logs, metrics and /healthz; defaults to the channel's
    /// last part (`AccountChangeEvent`), with the org when several orgs read one channel.
    pub name: Option<String>,
    pub org: Option<String>,
    pub channel: Option<String>,
    pub sink: Option<String>,
    pub dead_letter: Option<String>,
    pub replay: Option<String>,
    pub backfill_historical: Option<bool>,
    pub enable_replay_recovery: Option<bool>,
    pub batch_size: Option<u32>,
    /// The reference calls it `timeout_seconds`.
    #[serde(alias = "timeout-seconds")]
    pub idle_timeout_secs: Option<u64>,
    pub max_timeouts: Option<u32>,
    pub replay_invalid: Option<ReplayFallback>,
    /// Read through this Salesforce managed event subscription (ManagedSubscribe) instead of
    /// a plain subscription: Salesforce keeps the position and admits one client at a time.
    pub managed_subscription: Option<String>,
    /// The transform chain, in order: `[[subscription.transform]]`.
    #[serde(rename = "transform")]
    pub transforms: Option<Vec<TransformSection>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TransformSection {
    pub path: PathBuf,
    /// Defaults to the file stem.
    pub name: Option<String>,
    pub on_error: Option<OnError>,
    pub memory_mib: Option<usize>,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub recycle_after: Option<u64>,
    /// Bytes of values `set` may put into one event [default: 1048576].
    pub max_added_bytes: Option<usize>,
    /// Outputs (and copies) per input event [default: 100].
    pub max_outputs: Option<usize>,
    /// MiB of one batch's outputs held before they are written [default: 64].
    pub max_batch_output_mib: Option<usize>,
    /// Distinct tables the transform may route to in one subscription [default: 100].
    pub max_tables: Option<usize>,
    /// Guest log lines per second; the rest are counted in one summary line [default: 100].
    pub max_log_lines_per_sec: Option<u32>,
    /// Qualified tables it may route to beyond the subscription's own catalog and schema
    /// (`hr.payroll.*`).
    #[serde(default)]
    pub allow_tables: Vec<String>,
    /// Passed to the transform's `init`; values may be strings, numbers or booleans.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

/// Later wins: each field of `over` that is set replaces the one in `base`.
macro_rules! overlay {
    ($base:ident, $over:ident; $($field:ident),+ $(,)?) => {
        $( if $over.$field.is_some() { $base.$field = $over.$field; } )+
    };
}

impl OrgSection {
    pub fn overlay(mut self, over: OrgSection) -> OrgSection {
        overlay!(self, over; instance_url, pubsub_endpoint, grpc_host, grpc_port, api_version,
            auth, username, password, client_id, client_secret, jwt_key_file, jwt_audience);
        self
    }

    pub fn is_empty(&self) -> bool {
        let OrgSection {
            instance_url,
            pubsub_endpoint,
            grpc_host,
            grpc_port,
            api_version,
            auth,
            username,
            password,
            client_id,
            client_secret,
            jwt_key_file,
            jwt_audience,
        } = self;
        instance_url.is_none()
            && pubsub_endpoint.is_none()
            && grpc_host.is_none()
            && grpc_port.is_none()
            && api_version.is_none()
            && auth.is_none()
            && username.is_none()
            && password.is_none()
            && client_id.is_none()
            && client_secret.is_none()
            && jwt_key_file.is_none()
            && jwt_audience.is_none()
    }
}

impl DatabricksSection {
    pub fn overlay(mut self, over: DatabricksSection) -> DatabricksSection {
        overlay!(self, over; workspace_url, zerobus_endpoint, client_id, client_secret,
            sql_warehouse_id, sql_timeout_secs, auto_create_table, zerobus_max_inflight);
        self
    }
}

impl SubscriptionSection {
    pub fn overlay(mut self, over: SubscriptionSection) -> SubscriptionSection {
        overlay!(self, over; name, org, channel, sink, dead_letter, replay, backfill_historical,
            enable_replay_recovery, batch_size, idle_timeout_secs, max_timeouts, replay_invalid,
            managed_subscription, transforms);
        self
    }
}

impl FileConfig {
    /// Reads and parses a file; the error names the file, the line and the key.
    pub fn load(path: &Path) -> Result<FileConfig, super::ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| super::ConfigError::File {
            key: "config".into(),
            path: path.display().to_string(),
            source,
        })?;
        let mut file: FileConfig =
            toml::from_str(&text).map_err(|e| super::ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        file.rebase(dir);
        Ok(file)
    }

    fn rebase(&mut self, dir: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        self.state_dir.as_mut().map(join);
        self.transform_cache_dir.as_mut().map(join);
        let orgs = self.salesforce.iter_mut().chain(self.orgs.values_mut());
        for org in orgs {
            org.jwt_key_file.as_mut().map(join);
            for secret in [&mut org.password, &mut org.client_secret] {
                if let Some(Secret::File { file }) = secret {
                    join(file);
                }
            }
        }
        if let Some(Secret::File { file }) = &mut self.databricks.client_secret {
            join(file);
        }
        for sub in std::iter::once(&mut self.defaults).chain(self.subscriptions.iter_mut()) {
            for spec in [&mut sub.sink, &mut sub.dead_letter].into_iter().flatten() {
                *spec = rebase_sink(spec, dir);
            }
            for t in sub.transforms.iter_mut().flatten() {
                join(&mut t.path);
            }
        }
    }
}

/// `jsonl:out.jsonl` / `delta:tables/x` → under `dir`; URLs, absolute paths, standard
/// output and Zerobus tables stay as written.
fn rebase_sink(spec: &str, dir: &Path) -> String {
    match spec.split_once(':') {
        Some((kind @ ("jsonl" | "delta"), path))
            if path != "-" && !path.contains("://") && Path::new(path).is_relative() =>
        {
            format!("{kind}:{}", dir.join(path).display())
        }
        _ => spec.to_string(),
    }
}

impl Secret {
    /// The secret's text; `key` names it in errors.
    pub fn resolve(&self, key: &str) -> Result<String, super::ConfigError> {
        match self {
            Secret::Value(v) => Ok(v.clone()),
            Secret::Env { env } => std::env::var(env).map_err(|_| super::ConfigError::Invalid {
                key: key.to_string(),
                value: format!("{{ env = {env:?} }}"),
                fix: format!("set the environment variable {env}"),
            }),
            Secret::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|source| super::ConfigError::File {
                    key: key.to_string(),
                    path: file.display().to_string(),
                    source,
                }),
        }
    }
}

/// A transform setting's value as the transform receives it (text). Any setting may be a
/// secret, so it may also come from `{ env = "VAR" }` or `{ file = "PATH" }`; `key` names
/// it in errors, which never carry the value.
pub fn setting_text(key: &str, value: &toml::Value) -> Result<String, super::ConfigError> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Array(items) => Ok(items
            .iter()
            .map(|item| setting_text(key, item))
            .collect::<Result<Vec<_>, _>>()?
            .join(",")),
        toml::Value::Table(table) => match Secret::deserialize(table.clone()) {
            Ok(secret @ (Secret::Env { .. } | Secret::File { .. })) => secret.resolve(key),
            _ => Err(super::ConfigError::Invalid {
                key: key.to_string(),
                value: "a table".into(),
                fix: "give text, a number, a boolean, a list, { env = \"VAR\" } or { file = \"PATH\" }".into(),
            }),
        },
        other => Ok(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_under_the_file_and_urls_are_kept() {
        let dir = Path::new("/etc/sfzb");
        assert_eq!(
            rebase_sink("delta:tables/a", dir),
            "delta:/etc/sfzb/tables/a"
        );
        assert_eq!(rebase_sink("jsonl:-", dir), "jsonl:-");
        assert_eq!(rebase_sink("delta:s3://b/t", dir), "delta:s3://b/t");
        assert_eq!(rebase_sink("zerobus:c.s.t", dir), "zerobus:c.s.t");
        assert_eq!(
            rebase_sink("jsonl:/var/out.jsonl", dir),
            "jsonl:/var/out.jsonl"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = toml::from_str::<FileConfig>("[[subscription]]\nchanel = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chanel") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn secrets_come_inline_from_the_environment_or_from_a_file() {
        let file: FileConfig = toml::from_str(
            "[salesforce]\npassword = { env = \"SFZB_TEST_NO_SUCH_VAR\" }\nclient-secret = \"s\"\n",
        )
        .unwrap();
        let org = file.salesforce.unwrap();
        assert_eq!(org.client_secret.unwrap().resolve("k").unwrap(), "s");
        let err = org
            .password
            .unwrap()
            .resolve("salesforce.password")
            .unwrap_err();
        assert!(err.to_string().contains("SFZB_TEST_NO_SUCH_VAR"), "{err}");
    }
}
