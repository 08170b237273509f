//! Turns flags into a validated run plan before anything connects. Every error names the
//! setting, the value and the fix.

use std::time::Duration;

use secrecy::SecretString;

use crate::cli::{AuthFlow, RunArgs, SimArgs};
use crate::event::ReplayId;
use crate::pipeline::{RunOptions, SubscriptionConfig};
use crate::salesforce::auth::Credentials;
use crate::salesforce::pubsub::StartPosition;
use crate::sim::SimConfig;
use crate::sink::SinkSpec;
use crate::transform::{Limits, OnError, TransformSpec, chain::name_from_path};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} = {value:?} is invalid: {fix}")]
    Invalid {
        key: &'static str,
        value: String,
        fix: String,
    },
    #[error("{key} is required: {fix}")]
    Missing {
        key: &'static str,
        fix: &'static str,
    },
    #[error("cannot read {key} file {path}: {source}")]
    File {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The Salesforce org to read from.
#[derive(Clone, Debug)]
pub struct OrgConfig {
    pub pubsub_endpoint: String,
    pub login_url: String,
    pub api_version: String,
    pub credentials: Credentials,
}

#[derive(Clone, Debug)]
pub struct RunPlan {
    pub org: OrgConfig,
    /// Where compiled transforms are cached.
    pub cache_dir: Option<std::path::PathBuf>,
    pub subscription: SubscriptionConfig,
    pub options: RunOptions,
}

fn invalid(key: &'static str, value: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        fix: fix.into(),
    }
}

fn check_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let ok = url.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.starts_with('/')
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            url,
            "give a URL such as https://login.salesforce.com (http:// only for the simulator)",
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

impl RunArgs {
    /// Validates the flags and reads the files they name (the JWT key).
    pub fn plan(&self) -> Result<RunPlan, ConfigError> {
        check_url("pubsub-endpoint", &self.pubsub_endpoint)?;
        check_url("instance-url", &self.instance_url)?;
        let channel = normalize_channel(&self.channel)?;
        let sink: SinkSpec = self
            .sink
            .parse()
            .map_err(|e: crate::sink::SinkSpecError| invalid("sink", &self.sink, e.to_string()))?;
        let dead_letter = match &self.dead_letter {
            Some(spec) => Some(spec.parse().map_err(|e: crate::sink::SinkSpecError| {
                invalid("dead-letter", spec, e.to_string())
            })?),
            None => None,
        };
        if let SinkSpec::Delta(target) = &sink
            && target.contains("://")
            && !target.starts_with("file://")
            && !cfg!(feature = "cloud")
        {
            return Err(invalid(
                "sink",
                &self.sink,
                "object store tables (s3://, abfss://, gs://) are not built into this binary: build it with `cargo build --release --features cloud`, write to a local path, or use zerobus:catalog.schema.table for Databricks",
            ));
        }
        if let SinkSpec::Zerobus(table) = &sink {
            if table.split('.').count() != 3 || table.split('.').any(str::is_empty) {
                return Err(invalid(
                    "sink",
                    &self.sink,
                    "Zerobus tables are named in full: zerobus:catalog.schema.table",
                ));
            }
            match &self.zerobus_endpoint {
                None => {
                    return Err(ConfigError::Missing {
                        key: "zerobus-endpoint",
                        fix: "pass --zerobus-endpoint or set DATABRICKS_ZEROBUS_ENDPOINT (https://<workspace-id>.zerobus.<region>.cloud.databricks.com)",
                    });
                }
                Some(endpoint) => check_url("zerobus-endpoint", endpoint)?,
            }
        }
        let replay = self.replay.as_deref().map(parse_replay).transpose()?;
        let until_idle = match self.until_idle {
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
        if self.idle_timeout_secs == 0 {
            return Err(invalid(
                "idle-timeout-secs",
                "0",
                "give a positive number of seconds (Salesforce sends a keepalive within 270 s)",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(invalid(
                "max-in-flight",
                "0",
                "give at least 1 (default 1000)",
            ));
        }
        Ok(RunPlan {
            cache_dir: self.transforms.cache_dir(),
            org: OrgConfig {
                pubsub_endpoint: self.pubsub_endpoint.clone(),
                login_url: self.instance_url.trim_end_matches('/').to_string(),
                api_version: self.api_version.clone(),
                credentials: self.credentials()?,
            },
            subscription: SubscriptionConfig {
                channel,
                sink,
                dead_letter,
                replay,
                backfill_historical: !self.no_backfill,
                batch_size: self.batch_size,
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
                on_invalid_replay: self.replay_invalid,
                transforms: self.transforms.specs()?,
            },
            options: RunOptions {
                state_dir: self.state_dir.clone(),
                until_idle,
                flush_interval: Duration::from_millis(self.flush_interval_ms.max(1)),
                max_in_flight: self.max_in_flight,
                zerobus: crate::sink::zerobus::ZerobusSettings {
                    endpoint: self.zerobus_endpoint.clone().unwrap_or_default(),
                    workspace_url: self.databricks_workspace_url.clone(),
                    client_id: self.databricks_client_id.clone(),
                    client_secret: self
                        .databricks_client_secret
                        .clone()
                        .map(SecretString::from),
                    max_inflight: self.zerobus_max_inflight,
                },
                sql: match (&self.sql_warehouse_id, &self.databricks_workspace_url) {
                    (Some(warehouse), Some(workspace)) => {
                        check_url("databricks-workspace-url", workspace)?;
                        Some(crate::databricks::SqlSettings {
                            workspace_url: workspace.clone(),
                            warehouse_id: warehouse.clone(),
                            client_id: self.databricks_client_id.clone(),
                            client_secret: self
                                .databricks_client_secret
                                .clone()
                                .map(SecretString::from),
                            timeout: Duration::from_secs(self.sql_timeout_secs.max(1)),
                        })
                    }
                    (Some(_), None) => {
                        return Err(ConfigError::Missing {
                            key: "databricks-workspace-url",
                            fix: "the SQL warehouse needs the workspace: pass --databricks-workspace-url or set DATABRICKS_HOST",
                        });
                    }
                    _ => None,
                },
                auto_create_table: !self.no_auto_create,
            },
        })
    }

    fn credentials(&self) -> Result<Credentials, ConfigError> {
        let flow = self.auth.unwrap_or(
            match (&self.jwt_key_file, &self.client_id, &self.username) {
                (Some(_), _, _) => AuthFlow::JwtBearer,
                (None, Some(_), Some(_)) => AuthFlow::Password,
                (None, Some(_), None) => AuthFlow::ClientCredentials,
                (None, None, _) => AuthFlow::Soap,
            },
        );
        let need = |value: &Option<String>, key: &'static str, fix: &'static str| {
            value
                .clone()
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing { key, fix })
        };
        let username = || {
            need(
                &self.username,
                "username",
                "pass --username or set SALESFORCE_USERNAME",
            )
        };
        let password = || {
            need(&self.password, "password", "set SALESFORCE_PASSWORD (password with the security token appended) or pass --password")
                .map(SecretString::from)
        };
        let client_id = || {
            need(
                &self.client_id,
                "client-id",
                "pass --client-id or set SALESFORCE_CLIENT_ID (the connected app's consumer key)",
            )
        };
        let client_secret = || {
            need(
                &self.client_secret,
                "client-secret",
                "set SALESFORCE_CLIENT_SECRET (the connected app's consumer secret)",
            )
            .map(SecretString::from)
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
                let path = self.jwt_key_file.as_ref().ok_or(ConfigError::Missing {
                    key: "jwt-key-file",
                    fix: "pass --jwt-key-file or set SALESFORCE_JWT_KEY_FILE (PEM RSA private key)",
                })?;
                let pem = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                    key: "jwt-key-file",
                    path: path.display().to_string(),
                    source,
                })?;
                Credentials::JwtBearer {
                    client_id: client_id()?,
                    username: username()?,
                    private_key_pem: SecretString::from(pem),
                    audience: self
                        .jwt_audience
                        .clone()
                        .unwrap_or_else(|| self.instance_url.trim_end_matches('/').to_string()),
                }
            }
        })
    }
}

impl crate::cli::TransformArgs {
    /// The transform chain: every file must exist, every setting must name a transform.
    pub fn specs(&self) -> Result<Vec<TransformSpec>, ConfigError> {
        let limits = Limits {
            memory_bytes: self.transform_memory_mib.max(1) << 20,
            timeout: Duration::from_millis(self.transform_timeout_ms.max(1)),
            fuel: self.transform_fuel,
            recycle_after: self.transform_recycle_after.max(1),
        };
        let mut specs: Vec<TransformSpec> = Vec::new();
        for path in &self.paths {
            if !path.is_file() {
                return Err(invalid(
                    "transform",
                    path.display().to_string(),
                    "no such file; give the path of a .wasm component",
                ));
            }
            let name = name_from_path(path);
            if specs.iter().any(|s| s.name == name) {
                return Err(invalid(
                    "transform",
                    path.display().to_string(),
                    format!(
                        "a transform named {name} is already in the chain; rename one of the files"
                    ),
                ));
            }
            specs.push(TransformSpec {
                name,
                path: path.clone(),
                config: Vec::new(),
                on_error: OnError::default(),
                limits,
            });
        }
        let chain = specs
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
            .join(", ");
        for item in &self.config {
            let parsed = item
                .split_once('=')
                .and_then(|(k, v)| k.split_once('.').map(|(n, k)| (n, k, v)));
            let Some((name, key, value)) =
                parsed.filter(|(n, k, _)| !n.is_empty() && !k.is_empty())
            else {
                return Err(invalid(
                    "transform-config",
                    item,
                    "write it as NAME.KEY=VALUE, e.g. mask.fields=Email,Phone",
                ));
            };
            let spec = specs.iter_mut().find(|s| s.name == name).ok_or_else(|| {
                invalid(
                    "transform-config",
                    item,
                    format!("no transform named {name} in the chain (transforms: {chain})"),
                )
            })?;
            spec.config.push((key.to_string(), value.to_string()));
        }
        for item in &self.on_error {
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

    /// The compile cache directory: the flag, else the user's cache directory.
    pub fn cache_dir(&self) -> Option<std::path::PathBuf> {
        self.transform_cache_dir.clone().or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache"))
                })
                .map(|d| d.join("sfzb-host"))
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
        })
    }

    pub fn cache(&self) -> Option<std::path::PathBuf> {
        crate::cli::TransformArgs {
            transform_cache_dir: self.cache_dir.clone(),
            ..Default::default()
        }
        .cache_dir()
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
                        key: "jwt-public-key",
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
                schema_change_at: self.schema_change_at,
                gap_every: self.gap_every,
            },
            stream_faults: crate::sim::pubsub::StreamFaults {
                end_stream_after: self.end_stream_after,
                expire_tokens_after: self.expire_tokens_after,
            },
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
        match cli.command {
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
        assert_eq!(plan.org.credentials.kind(), "soap");
        let plan = run_args(&["--client-id", "c", "--client-secret", "s"]).unwrap();
        assert_eq!(plan.org.credentials.kind(), "client-credentials");
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
        assert_eq!(plan.org.credentials.kind(), "password");
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
        let cases: [(&[&str], &[&str]); 5] = [
            (&["--sink", "out.jsonl"], &["sink", "jsonl:PATH"]),
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
            plan.subscription.replay,
            Some(StartPosition::Custom(
                ReplayId::from_hex("00000000000000ff").unwrap()
            ))
        );
    }
}
