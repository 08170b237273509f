//! The configuration file (`sfzb.toml`): the same settings as the flags, under the same
//! names, plus what flags cannot say (several orgs, several subscriptions, per-transform
//! settings). Relative paths in a file are relative to the file's directory, so a file and
//! the components next to it move together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::AuthFlow;
use crate::salesforce::pubsub::ReplayFallback;
use crate::sink::Layout;
use crate::transform::OnError;

use super::settings::settings;

settings! {
    /// The file's top level: run-wide settings, and the sections.
    pub struct FileConfig in "top level" {
        /// Directory for checkpoints (the local store) and a copy of each schema fetched (schemas/, which transform test reads for dead letters).
        state_dir: PathBuf = ".sfzb-state", flag "state-dir", env "SFZB_STATE_DIR";
        /// Where compiled components are cached; defaults to $XDG_CACHE_HOME/sfzb-host or
        /// ~/.cache/sfzb-host.
        transform_cache_dir: PathBuf, flag "transform-cache-dir", env "SFZB_CACHE_DIR";
        /// Memory kept in warm transform instances between batches, for the whole process,
        /// MiB. Subscriptions whose transform has the same component, configuration and keys
        /// share instances; past this, the least recently used idle ones are dropped and
        /// started again when next needed (tens of microseconds for a Rust guest).
        transform_idle_mib: usize = 256usize, flag "transform-idle-mib";
        /// Where checkpoints are kept for sinks that keep none themselves (a Delta table keeps
        /// its own): local (checkpoints.json in state-dir), postgres (a table in PostgreSQL
        /// or Databricks Lakebase, checkpoint-postgres-url), warehouse (sfzb_checkpoints
        /// next to each Zerobus table, through sql-warehouse-id), or auto: postgres when
        /// its URL is set, else warehouse for Zerobus targets with a warehouse, else local.
        /// Every store is written once per flush interval, in one operation, for all
        /// subscriptions.
        [arg(value_name = "STORE")]
        checkpoint_store: crate::checkpoint::StoreKind = crate::checkpoint::StoreKind::Auto, flag "checkpoint-store", env "SFZB_CHECKPOINT_STORE";
        /// The PostgreSQL checkpoint store: a URL (postgres://user:password@host:5432/db?sslmode=require)
        /// or key=value connection string; inline, { env = "VAR" } or { file = "PATH" }. It
        /// holds the password: prefer the environment variable. TLS unless sslmode=disable.
        [arg(hide_env_values = true, value_name = "URL")]
        checkpoint_postgres_url: Secret, flag "checkpoint-postgres-url", env "SFZB_CHECKPOINT_POSTGRES_URL";
        /// The PostgreSQL checkpoint table (`name` or `schema.name`); created if missing.
        checkpoint_postgres_table: String = "sfzb_checkpoints", flag "checkpoint-postgres-table";
        /// Logins this process starts per second at most, in order of arrival, so thousands
        /// of tenants starting at once stay within Salesforce's login limits; 0: no limit.
        login_rate: f64 = 100.0, flag "login-rate";
        /// Subscribe streams this process opens per second at most when subscriptions
        /// start; 0: no limit.
        subscribe_rate: f64 = 500.0, flag "subscribe-rate";
        /// Flush the sink and commit the checkpoint at least this often while events flow,
        /// milliseconds.
        flush_interval_ms: u64 = 1000u64, flag "flush-interval-ms";
        /// Events held in memory per subscription between fetch and write; fetching waits
        /// for room.
        max_in_flight: usize = 1000usize, flag "max-in-flight";
        /// Events held in memory by all subscriptions of the process together between
        /// receipt and write (about 25 KB each in the reference layout); a received batch
        /// waits for room, so thousands of subscriptions catching up at once stay within
        /// memory (2,000: about 50 MB); 0: no limit.
        max_in_flight_total: usize = 2000usize, flag "max-in-flight-total";
        /// Exit 0 once no event arrived for this many seconds (keepalives do not count);
        /// idle time counts once the subscription is streaming: a run that never
        /// subscribed (an unreachable endpoint) exits 1 with the reason.
        [arg(value_name = "SECS")]
        until_idle: f64, flag "until-idle";
        /// Serve /metrics (Prometheus), /healthz and /stats on this address, e.g.
        /// 127.0.0.1:9464.
        metrics_listen: String, flag "metrics-listen", env "SFZB_METRICS_LISTEN";
        /// Log a health report per subscription this often, seconds; 0 turns it off.
        health_interval_secs: u64 = 300u64, flag "health-interval-secs";
        /// /healthz reports a subscription whose received events wait longer than this for
        /// their checkpoint (a sink that stopped acknowledging), seconds; must exceed
        /// flush-interval-ms.
        max_checkpoint_lag_secs: u64 = 120u64, flag "max-checkpoint-lag-secs";
        /// After SIGTERM, stop waiting for subscriptions to flush after this long and exit
        /// non-zero; their checkpoints stay behind the data, never ahead. Keep it below the
        /// orchestrator's grace period (the manifests give 120), seconds.
        shutdown_timeout_secs: u64 = 90u64, flag "shutdown-timeout-secs";
        /// Run only this process's share of the subscriptions: I/N runs those whose (org,
        /// channel) hashes to I of N (0-based). Give every process the same configuration
        /// and N, and each a distinct I (a StatefulSet's pod index).
        [arg(value_name = "I/N")]
        shard: String, flag "shard", env "SFZB_SHARD";
        /// Fence every subscription with a Kubernetes Lease in this namespace: it reads only
        /// while this process holds the Lease of its (org, channel), so no two processes
        /// read the same channel. Needs a Kubernetes API (in-cluster service account, or
        /// KUBECONFIG).
        lease_namespace: String, flag "lease-namespace", env "SFZB_LEASE_NAMESPACE";
        /// This process's name as a Lease holder, unique among the processes; defaults to
        /// the host name, i.e. the pod name.
        lease_holder: String, flag "lease-holder", env "SFZB_LEASE_HOLDER";
        /// How long a Lease stays held without renewal, seconds; renewals come a third of it
        /// before expiry, and a holder that cannot renew stops reading then.
        lease_duration_secs: u64 = 30u64, flag "lease-duration-secs";
        /// Many orgs, one small entry each: a TOML file of `[NAME]` sections with the keys
        /// of [salesforce], or a directory of such files. Each tenant inherits
        /// [salesforce] and the flags and runs every subscription that names no org
        /// (`{tenant}` in its sink is the tenant's name).
        [arg(value_name = "PATH")]
        tenants: PathBuf, flag "tenants", env "SFZB_TENANTS";
    }
    sections {
        /// The org subscriptions use when they name none.
        [serde(default)]
        salesforce: Option<OrgSection>;
        /// More orgs, by name: `[orgs.acme]`.
        [serde(default)]
        orgs: BTreeMap<String, OrgSection>;
        /// Zerobus and the SQL warehouse.
        [serde(default)]
        databricks: DatabricksSection;
        /// Settings every `[[subscription]]` inherits.
        [serde(default)]
        defaults: SubscriptionSection;
        /// One per channel and target.
        [serde(default, rename = "subscription")]
        subscriptions: Vec<SubscriptionSection>;
    }
}

/// A secret: inline (`password = "…"`), from an environment variable
/// (`password = { env = "ACME_PASSWORD" }`) or from a file (`password = { file = "…" }`,
/// trailing newline dropped), so none has to be on a command line.
#[derive(Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Secret {
    Value(String),
    Env { env: String },
    File { file: PathBuf },
}

/// Never the value: settings end up in `{:?}` output.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret(***)"),
            Secret::Env { env } => write!(f, "Secret(env {env})"),
            Secret::File { file } => write!(f, "Secret(file {})", file.display()),
        }
    }
}

/// A flag or environment variable gives the value itself.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::Value(s.to_string()))
    }
}

settings! {
    /// A Salesforce org: `[salesforce]` (the default org, also the flags) or `[orgs.NAME]`.
    pub struct OrgSection in "[salesforce] and [orgs.NAME]" {
        /// Where to log in: https://login.salesforce.com, https://test.salesforce.com, or
        /// your My Domain URL.
        instance_url: String, flag "instance-url", env "SALESFORCE_INSTANCE_URL";
        /// Salesforce Pub/Sub API endpoint: https://host:port, or http://host:port for the
        /// simulator.
        pubsub_endpoint: String = crate::salesforce::pubsub::DEFAULT_ENDPOINT,
            flag "pubsub-endpoint", env "SFZB_PUBSUB_ENDPOINT";
        /// Salesforce API version for the SOAP login.
        api_version: String = "57.0", flag "api-version";
        /// Login flow. Inferred when omitted: jwt-bearer with a JWT key file, password with
        /// a client id and a username, client-credentials with a client id, else soap.
        [arg(value_enum)]
        auth: AuthFlow, flag "auth";
        /// Salesforce username (SOAP, password and JWT bearer flows).
        username: String, flag "username", env "SALESFORCE_USERNAME";
        /// Password with the security token appended (SOAP and password flows): inline,
        /// { env = "VAR" } or { file = "PATH" }; prefer the environment variable to a flag.
        [arg(hide_env_values = true)]
        password: Secret, flag "password", env "SALESFORCE_PASSWORD";
        /// Connected app consumer key (OAuth flows).
        client_id: String, flag "client-id", env "SALESFORCE_CLIENT_ID";
        /// Connected app consumer secret (client-credentials and password flows): inline,
        /// { env = "VAR" } or { file = "PATH" }.
        [arg(hide_env_values = true)]
        client_secret: Secret, flag "client-secret", env "SALESFORCE_CLIENT_SECRET";
        /// PEM file with the RSA private key of the connected app's certificate (JWT bearer
        /// flow).
        jwt_key_file: PathBuf, flag "jwt-key-file", env "SALESFORCE_JWT_KEY_FILE";
        /// JWT audience; defaults to instance-url.
        jwt_audience: String, flag "jwt-audience", env "SALESFORCE_JWT_AUDIENCE";
    }
    file_only {
        /// The reference's way to name the endpoint: its host (TLS), instead of
        /// pubsub-endpoint.
        grpc_host: String;
        /// With grpc-host: its port (7443).
        grpc_port: u16;
        /// Settings of this org's transforms, by transform name, laid over its
        /// subscriptions' as --transform-config is: `[acme.transform-config.tenant-filter]`
        /// in a tenants file gives one tenant its own filter. Values as in a transform's
        /// config (lists, { env = "VAR" }, { file = "PATH" }).
        transform_config: BTreeMap<String, BTreeMap<String, toml::Value>>;
    }
}

settings! {
    /// `[databricks]`: Zerobus and the SQL warehouse.
    pub struct DatabricksSection in "[databricks]" {
        /// Databricks workspace URL (OAuth token endpoint for Zerobus, the SQL Statement
        /// API).
        workspace_url: String, flag "databricks-workspace-url", env "DATABRICKS_HOST";
        /// Zerobus endpoint for zerobus: sinks, e.g.
        /// https://<workspace-id>.zerobus.<region>.cloud.databricks.com (http:// for a
        /// local test server: plaintext, no auth).
        zerobus_endpoint: String, flag "zerobus-endpoint", env "DATABRICKS_ZEROBUS_ENDPOINT";
        /// Service principal client id (OAuth M2M).
        client_id: String, flag "databricks-client-id", env "DATABRICKS_CLIENT_ID";
        /// Service principal secret (OAuth M2M): inline, { env = "VAR" } or
        /// { file = "PATH" }; prefer the environment variable to a flag.
        [arg(hide_env_values = true)]
        client_secret: Secret, flag "databricks-client-secret", env "DATABRICKS_CLIENT_SECRET";
        /// SQL warehouse for Zerobus targets: creates missing tables and keeps the
        /// checkpoint in `<catalog>.<schema>.sfzb_checkpoints`. Without it the checkpoint is
        /// in state-dir.
        sql_warehouse_id: String, flag "sql-warehouse-id", env "DATABRICKS_WAREHOUSE_ID";
        /// How long one SQL statement may take, including a warehouse start, seconds.
        sql_timeout_secs: u64 = 300u64, flag "sql-timeout-secs";
        /// Create a missing Zerobus target table (false: fail instead).
        [arg(num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
        auto_create_table: bool = true, flag "auto-create-table";
        /// Record batches (of up to batch-size rows) sent to Zerobus and not yet
        /// acknowledged, per table: bounds memory (~1.5 MB a batch of Account rows). After a
        /// crash, the rows acknowledged since the last checkpoint come again too: up to a
        /// flush interval's worth of events plus max-in-flight.
        zerobus_max_inflight: usize = 16usize, flag "zerobus-max-inflight";
    }
}

settings! {
    /// One subscription: `[[subscription]]`, `[defaults]`, or the flags.
    pub struct SubscriptionSection in "[[subscription]] and [defaults]" {
        /// Channel to subscribe to: /data/AccountChangeEvent, /data/Foo__ChangeEvent,
        /// /data/ChangeEvents (all objects, mixed schemas), a custom channel /data/Foo__chn;
        /// a bare AccountChangeEvent also works. Given with a configuration file, the run
        /// has this one subscription.
        channel: String, flag "channel";
        /// Where rows go: zerobus:CATALOG.SCHEMA.TABLE (Databricks through Zerobus),
        /// delta:PATH_OR_URL (a Delta table, created if missing; exactly once) or
        /// jsonl:PATH (a JSON row per line; jsonl:- is standard output).
        sink: String = "jsonl:-", flag "sink";
        /// How rows are laid out: reference (the reference library's 16 columns: the record
        /// as JSON, the Avro payload and schema) or typed (a column per Salesforce field,
        /// added as the schema grows; `{object}` in the sink's table name makes a table per
        /// object). See "Typed tables" in the README.
        [arg(value_enum)]
        layout: Layout = Layout::Reference, flag "layout";
        /// Start a new typed table with a snapshot of the object's existing records (Bulk
        /// API 2.0; deleted records are not in it), then follow changes from the stream
        /// position captured before the snapshot began, so no change is missed. For layout =
        /// "typed" and a channel of one object. A table that already has a checkpoint is not
        /// snapshotted again; a crash mid-snapshot reads it again from the same position.
        /// A GAP_OVERFLOW on the stream reads the object again (deleted records too).
        [arg(num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
        snapshot: bool = false, flag "snapshot";
        /// Keep a current-state table too: one row per record (org_id, Id), updated from the
        /// typed change table as it is written: creates insert, updates set only the
        /// fields they changed, deletes remove or mark (current-state-deletes), the newest
        /// change wins. delta:PATH; the sink must be a typed Delta table of one object.
        current_state: String, flag "current-state";
        /// What a delete does to a current-state row: remove it, or mark it (is_deleted).
        [arg(value_enum)]
        current_state_deletes: crate::current_state::Deletes = crate::current_state::Deletes::Remove, flag "current-state-deletes";
        /// Apply the change table to the current-state table at most this often, seconds
        /// (each apply is one MERGE; fewer applies collapse more changes into each).
        current_state_interval_secs: f64 = 5.0f64, flag "current-state-interval-secs";
        /// Where undeliverable events go, with the error, stage and payload: jsonl:PATH or
        /// delta:PATH. Defaults to the sink's own dead-letter place (PATH_dead_letter.jsonl,
        /// <table>_dead_letter).
        dead_letter: String, flag "dead-letter";
        /// Start position, overriding the checkpoint: earliest, latest, or a replay id in
        /// hex.
        replay: String, flag "replay";
        /// With no checkpoint, replay retained history (EARLIEST); false starts at LATEST.
        [arg(num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
        backfill_historical: bool = true, flag "backfill-historical";
        /// Resume from stored checkpoints; false ignores them and starts from LATEST.
        [arg(num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
        enable_replay_recovery: bool = true, flag "enable-replay-recovery";
        /// Read through this Salesforce managed event subscription (its developer name) with
        /// ManagedSubscribe: Salesforce keeps the committed position and lets one client
        /// read it at a time, so a second process waits as a standby.
        managed_subscription: String, flag "managed-subscription";
        /// Events requested per stream at a time (flow control credit), 1 to 100.
        [arg(value_parser = clap::value_parser!(u32).range(1..=100))]
        batch_size: u32 = 100u32, flag "batch-size";
        /// Resubscribe when the server sends nothing, not even a keepalive, for this many
        /// seconds (the reference's timeout-seconds).
        [serde(alias = "timeout-seconds")]
        idle_timeout_secs: u64 = 300u64, flag "idle-timeout-secs";
        /// Consecutive idle timeouts after which /healthz reports the subscription stuck.
        max_timeouts: u32 = 3u32, flag "max-timeouts";
        /// When Salesforce rejects the stored replay id (corrupted or past the 72-hour
        /// retention): fail, earliest or latest.
        [arg(value_enum)]
        replay_invalid: ReplayFallback = ReplayFallback::Fail, flag "replay-invalid";
    }
    file_only {
        /// Names the subscription in logs, metrics and /healthz; defaults to the channel's
        /// last part (AccountChangeEvent), with the org when several orgs read one channel.
        name: String;
        /// The org it reads from (a name of [orgs.NAME]); defaults to [salesforce], or the
        /// only org.
        org: String;
    }
    sections {
        /// The transform chain, in order: `[[subscription.transform]]`.
        [serde(rename = "transform")]
        transforms: Option<Vec<TransformSection>>;
    }
}

settings! {
    /// One transform of a chain (`[[subscription.transform]]`); the limits are also flags
    /// of `run` (for every transform) and of `transform test` and `bench`.
    pub struct TransformSection in "[[subscription.transform]]" {
        /// Memory each instance may use, all its memories together, MiB.
        memory_mib: usize = 64usize, flag "transform-memory-mib";
        /// Wall-clock time one call may take (epoch interruption), milliseconds; `init` gets
        /// at least 5 s (a language runtime starts in it).
        timeout_ms: u64 = 100u64, flag "transform-timeout-ms";
        /// Fuel (Wasm instructions, roughly) one call may spend; unmetered if unset.
        fuel: u64, flag "transform-fuel";
        /// Replace the instance with a fresh one after this many events (also past 3/4 of
        /// its memory).
        recycle_after: u64 = 100_000u64, flag "transform-recycle-after";
        /// Bytes of values `set` may put into one event (the host holds them). A Salesforce
        /// event is at most 1 MB; a long text area holds 131,072 characters.
        max_added_bytes: usize = 1usize << 20, flag "transform-max-added-bytes";
        /// Outputs of one event, and event copies (`duplicate`) alive at once.
        max_outputs: usize = 100usize, flag "transform-max-outputs";
        /// MiB of one batch's outputs held before they are written.
        max_batch_output_mib: usize = 64usize, flag "transform-max-batch-output-mib";
        /// Distinct tables it may route to in one subscription (each an open file, Delta
        /// table or Zerobus stream).
        max_tables: usize = 100usize, flag "transform-max-tables";
        /// Guest log lines per second, across the transform's instances; the rest are
        /// counted in one "log lines held back" line.
        max_log_lines_per_sec: u32 = 100u32, flag "transform-max-log-lines-per-sec";
    }
    file_only {
        /// The Wasm component (required).
        path: PathBuf;
        /// Its name in logs, metrics and errors; defaults to the file stem.
        name: String;
        /// What to do with an event it fails on: dead-letter, skip or stop.
        on_error: OnError;
        /// Qualified tables it may route to beyond the subscription's own catalog and schema
        /// (`hr.payroll.*`).
        allow_tables: Vec<String>;
        /// Passed to its `init`: { key = value, … }; lists become comma-separated text, and
        /// any value may be { env = "VAR" } or { file = "PATH" }.
        config: BTreeMap<String, toml::Value>;
        /// Secret keys `host.hmac-sha256` hashes with, by name: { pii = { env = "VAR" } }
        /// or { file = "PATH" } (or text). The transform names a key; it never sees one,
        /// and `config check` prints only the names.
        keys: BTreeMap<String, Secret>;
        /// Whether subscriptions of different orgs may use the same warm instance (same
        /// component, configuration, keys and limits; default true); false gives each org
        /// instances of its own, so what a guest keeps in its memory stays with one org.
        share_instances: bool;
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
        self.tenants.as_mut().map(join);
        let orgs = self.salesforce.iter_mut().chain(self.orgs.values_mut());
        for org in orgs {
            org.rebase(dir);
        }
        for secret in [
            &mut self.databricks.client_secret,
            &mut self.checkpoint_postgres_url,
        ] {
            if let Some(Secret::File { file }) = secret {
                join(file);
            }
        }
        for sub in std::iter::once(&mut self.defaults).chain(self.subscriptions.iter_mut()) {
            for spec in [&mut sub.sink, &mut sub.dead_letter, &mut sub.current_state]
                .into_iter()
                .flatten()
            {
                *spec = rebase_sink(spec, dir);
            }
            for t in sub.transforms.iter_mut().flatten() {
                t.path.as_mut().map(join);
                for value in t.config.iter_mut().flat_map(|c| c.values_mut()) {
                    rebase_setting(value, dir);
                }
                for secret in t.keys.iter_mut().flat_map(|k| k.values_mut()) {
                    if let Secret::File { file } = secret {
                        join(file);
                    }
                }
            }
        }
    }
}

/// A transform setting `{ file = "PATH" }` with a relative path → under `dir`.
fn rebase_setting(value: &mut toml::Value, dir: &Path) {
    if let Some(toml::Value::String(file)) = value
        .as_table_mut()
        .filter(|t| t.len() == 1)
        .and_then(|t| t.get_mut("file"))
        && Path::new(file.as_str()).is_relative()
    {
        *file = dir.join(&*file).display().to_string();
    }
}

impl OrgSection {
    /// Relative paths (the JWT key, secrets in files) are relative to `dir`.
    pub(super) fn rebase(&mut self, dir: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        self.jwt_key_file.as_mut().map(join);
        for secret in [&mut self.password, &mut self.client_secret] {
            if let Some(Secret::File { file }) = secret {
                join(file);
            }
        }
        let settings = self
            .transform_config
            .iter_mut()
            .flat_map(|t| t.values_mut());
        for value in settings.flat_map(|s| s.values_mut()) {
            rebase_setting(value, dir);
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
