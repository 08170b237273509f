//! Layering: defaults < file < environment < flags (clap reads the environment into the
//! flags), then the subscriptions of the run, each with its org.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::file::{
    DatabricksSection, FileConfig, OrgSection, SubscriptionSection, TransformSection,
};
use super::{
    ConfigError, OrgConfig, RunOptions, RunPlan, Shard, SubscriptionPlan, check_url, invalid,
    missing,
};
use crate::cli::RunArgs;
use crate::sink::SinkSpec;

pub(super) fn resolve(
    file: FileConfig,
    args: &RunArgs,
    source: Option<PathBuf>,
) -> Result<RunPlan, ConfigError> {
    let default_org = match (&file.salesforce, args.org.is_empty()) {
        (None, true) => None,
        (base, _) => Some(base.clone().unwrap_or_default().overlay(args.org.clone())),
    };
    let databricks = file.databricks.clone().overlay(args.databricks.clone());
    let run = file.clone().overlay(args.run.clone());
    let options = run_options(&run, &databricks)?;
    let tenants = match &run.tenants {
        Some(path) => Some(super::tenants::load(path)?),
        None => None,
    };
    let mut building = Building::default();
    for (prefix, section) in subscription_sections(&file, args)? {
        if let (Some(tenants), None) = (&tenants, &section.org) {
            building.add_for_tenants(tenants, default_org.as_ref(), &section, args, &options)?;
            continue;
        }
        let org = org_index(
            &file,
            default_org.as_ref(),
            &prefix,
            &section,
            &mut building.orgs,
        )?;
        building.add(&prefix, section, org, args, &options)?;
    }
    building.check_transform_config()?;
    let Building {
        orgs,
        subscriptions,
        rejected_tenants,
        ..
    } = building;
    let max_checkpoint_lag = Duration::from_secs(run.max_checkpoint_lag_secs());
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
        rejected_tenants,
        shard: run.shard.as_deref().map(Shard::parse).transpose()?,
        lease: super::shard::lease_settings(&run)?,
        cache_dir: super::chain::cache_dir(run.transform_cache_dir.clone()),
        transform_idle_bytes: run.transform_idle_mib().saturating_mul(1 << 20),
        options,
        metrics_listen: metrics_listen(&run)?,
        health_interval: match run.health_interval_secs() {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        },
        max_checkpoint_lag,
        shutdown_timeout: Duration::from_secs(run.shutdown_timeout_secs()),
        source,
        tenants: run.tenants.clone(),
    })
}

fn metrics_listen(run: &FileConfig) -> Result<Option<SocketAddr>, ConfigError> {
    run.metrics_listen
        .as_deref()
        .map(|addr| {
            addr.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics-listen",
                    addr,
                    "give an address and port, e.g. 127.0.0.1:9464 or 0.0.0.0:9464",
                )
            })
        })
        .transpose()
}

/// The run's subscriptions, each with the prefix its keys are named by in errors: the
/// flags' one (with `--channel`, or a file without subscriptions), else the file's, each
/// over `[defaults]` and under the flags.
fn subscription_sections(
    file: &FileConfig,
    args: &RunArgs,
) -> Result<Vec<(String, SubscriptionSection)>, ConfigError> {
    let mut flags = args.subscription.clone();
    if !args.transforms.paths.is_empty() {
        flags.transforms = Some(
            args.transforms
                .paths
                .iter()
                .map(|path| TransformSection {
                    path: Some(path.clone()),
                    ..TransformSection::default()
                })
                .collect(),
        );
    }
    if flags.channel.is_some() || file.subscriptions.is_empty() {
        return Ok(vec![(
            String::new(),
            overlay_subscription(file.defaults.clone(), flags),
        )]);
    }
    if file.subscriptions.len() > 1 && flags.sink.is_some() {
        return Err(invalid(
            "sink",
            flags.sink.unwrap_or_default(),
            format!(
                "one --sink for {} subscriptions would mix their rows; set sink in each [[subscription]] of the file",
                file.subscriptions.len()
            ),
        ));
    }
    Ok(file
        .subscriptions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let section = overlay_subscription(file.defaults.clone(), s.clone());
            (
                format!("subscription[{i}]."),
                overlay_subscription(section, flags.clone()),
            )
        })
        .collect())
}

/// A subscription over another: its settings, and its chain when it has one.
fn overlay_subscription(
    base: SubscriptionSection,
    over: SubscriptionSection,
) -> SubscriptionSection {
    let transforms = over.transforms.clone().or(base.transforms.clone());
    SubscriptionSection {
        transforms,
        ..base.overlay(over)
    }
}

/// The index in `orgs` of the org `section` reads from, adding it on first use.
fn org_index(
    file: &FileConfig,
    default_org: Option<&OrgSection>,
    prefix: &str,
    section: &SubscriptionSection,
    orgs: &mut Vec<OrgConfig>,
) -> Result<usize, ConfigError> {
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
    if let Some(i) = orgs.iter().position(|o| o.name == org_name) {
        return Ok(i);
    }
    let (org, key) = match (org_name.as_str(), default_org) {
        ("default", Some(org)) => (org.clone(), String::new()),
        (name, _) => match file.orgs.get(name) {
            Some(org) => (org.clone(), format!("orgs.{name}.")),
            None => {
                let mut known: Vec<String> = file.orgs.keys().cloned().collect();
                if default_org.is_some() {
                    known.insert(0, "default".into());
                }
                let known = if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                };
                return Err(invalid(
                    format!("{prefix}org"),
                    name,
                    format!("no such org; add an [orgs.{name}] section (orgs: {known})"),
                ));
            }
        },
    };
    orgs.push(super::org::org_config(&org_name, org, &key)?);
    Ok(orgs.len() - 1)
}

/// The orgs and subscriptions of a plan as they are added, with what makes each
/// subscription distinct (checked in constant time: a plan may hold 10,000 tenants).
#[derive(Default)]
struct Building {
    orgs: Vec<OrgConfig>,
    subscriptions: Vec<SubscriptionPlan>,
    rejected_tenants: Vec<(String, String)>,
    /// Each tenant's org: its index in `orgs`, or `None` when its entry was rejected.
    tenant_orgs: std::collections::HashMap<String, Option<usize>>,
    names: std::collections::HashSet<String>,
    /// (org, channel, sink) → the subscription reading it.
    readers: std::collections::HashMap<(usize, String, String), String>,
    /// Current-state table → the subscription keeping it.
    current_states: std::collections::HashMap<String, String>,
    /// (org, transform) pairs whose `transform-config` met a transform of the chain.
    configured: std::collections::HashSet<(usize, String)>,
}

impl Building {
    /// One subscription of org `org`; `prefix` names its keys in errors.
    fn add(
        &mut self,
        prefix: &str,
        section: SubscriptionSection,
        org: usize,
        args: &RunArgs,
        options: &RunOptions,
    ) -> Result<(), ConfigError> {
        let mut config = super::subscription::subscription_config(
            prefix,
            section.clone(),
            &args.transforms,
            &self.orgs[org].name,
        )?;
        for (transform, setting, value) in &self.orgs[org].transform_config {
            if let Some(spec) = config.transforms.iter_mut().find(|t| &t.name == transform) {
                spec.config.retain(|(k, _)| k != setting);
                spec.config.push((setting.clone(), value.clone()));
                self.configured.insert((org, transform.clone()));
            }
        }
        if matches!(config.sink, SinkSpec::Zerobus(_)) && options.zerobus.endpoint.is_empty() {
            return Err(missing(
                "zerobus-endpoint",
                "pass --zerobus-endpoint, set DATABRICKS_ZEROBUS_ENDPOINT, or set zerobus-endpoint under [databricks] (https://<workspace-id>.zerobus.<region>.cloud.databricks.com)",
            ));
        }
        if matches!(config.sink, SinkSpec::Zerobus(_))
            && config.layout == crate::sink::Layout::Typed
            && options.sql.is_none()
        {
            return Err(missing(
                "sql-warehouse-id",
                "typed tables through Zerobus are created and widened through a SQL warehouse: pass --sql-warehouse-id, set DATABRICKS_WAREHOUSE_ID, or set sql-warehouse-id under [databricks]",
            ));
        }
        let name = self.name(prefix, &section, &config.channel, org)?;
        let plan = SubscriptionPlan { name, org, config };
        self.check_distinct(prefix, &plan)?;
        self.names.insert(plan.name.clone());
        let reader = (
            plan.org,
            plan.config.channel.clone(),
            plan.config.sink.to_string(),
        );
        self.readers.insert(reader, plan.name.clone());
        if let Some(current) = &plan.config.current_state {
            self.current_states
                .insert(current.to_string(), plan.name.clone());
        }
        self.subscriptions.push(plan);
        Ok(())
    }

    /// The template `section` once per tenant, each over `base` (`[salesforce]` and the
    /// flags). A tenant whose entry is invalid is rejected with the reason; the others go
    /// on. An invalid template is an error.
    fn add_for_tenants(
        &mut self,
        tenants: &std::collections::BTreeMap<String, OrgSection>,
        base: Option<&OrgSection>,
        section: &SubscriptionSection,
        args: &RunArgs,
        options: &RunOptions,
    ) -> Result<(), ConfigError> {
        for (tenant, entry) in tenants {
            let org = match self.tenant_orgs.get(tenant) {
                Some(Some(i)) => *i,
                Some(None) => continue,
                None => {
                    let org = base.cloned().unwrap_or_default().overlay(entry.clone());
                    let index =
                        match super::org::org_config(tenant, org, &format!("tenants.{tenant}.")) {
                            Ok(config) => {
                                self.orgs.push(config);
                                Some(self.orgs.len() - 1)
                            }
                            Err(e) => {
                                self.rejected_tenants.push((tenant.clone(), e.to_string()));
                                None
                            }
                        };
                    self.tenant_orgs.insert(tenant.clone(), index);
                    match index {
                        Some(i) => i,
                        None => continue,
                    }
                }
            };
            let mut own = section.clone();
            own.org = Some(tenant.clone());
            for spec in [&mut own.sink, &mut own.dead_letter, &mut own.current_state]
                .into_iter()
                .flatten()
            {
                *spec = super::tenants::for_tenant(spec, tenant);
            }
            let short = section.name.clone().unwrap_or_else(|| {
                let channel = section.channel.as_deref().unwrap_or_default();
                channel.rsplit('/').next().unwrap_or_default().to_string()
            });
            own.name = Some(format!("{tenant}/{short}"));
            self.add("", own, org, args, options)?;
        }
        Ok(())
    }

    /// The subscription's name: its `name`, else the channel's last part, with the org when
    /// another subscription already has that.
    fn name(
        &self,
        prefix: &str,
        section: &SubscriptionSection,
        channel: &str,
        org: usize,
    ) -> Result<String, ConfigError> {
        let short = channel.rsplit('/').next().unwrap_or_default().to_string();
        let taken = |name: &str| self.names.contains(name);
        Ok(match &section.name {
            Some(name) if taken(name) => {
                return Err(invalid(
                    format!("{prefix}name"),
                    name,
                    "another subscription has this name; names must be unique",
                ));
            }
            Some(name) => name.clone(),
            None if taken(&short) => format!("{short}@{}", self.orgs[org].name),
            None => short,
        })
    }

    /// An org's `transform-config` must name a transform of its subscriptions' chains
    /// (a misspelt name would leave the setting unused): a tenant's that does not is left
    /// out of the run with the reason; any other org's is an error.
    fn check_transform_config(&mut self) -> Result<(), ConfigError> {
        for (i, org) in self.orgs.iter().enumerate() {
            let chains: std::collections::BTreeSet<&str> = self
                .subscriptions
                .iter()
                .filter(|s| s.org == i)
                .flat_map(|s| s.config.transforms.iter().map(|t| t.name.as_str()))
                .collect();
            let used = self.subscriptions.iter().any(|s| s.org == i);
            let Some((transform, ..)) = org
                .transform_config
                .iter()
                .find(|(t, ..)| used && !self.configured.contains(&(i, t.clone())))
            else {
                continue;
            };
            let tenant = self.tenant_orgs.get(&org.name) == Some(&Some(i));
            let prefix = match (tenant, org.name.as_str()) {
                (true, name) => format!("tenants.{name}."),
                (false, "default") => String::new(),
                (false, name) => format!("orgs.{name}."),
            };
            let error = invalid(
                format!("{prefix}transform-config"),
                transform,
                format!(
                    "no transform named {transform} in the chain of this org's subscriptions (transforms: {})",
                    if chains.is_empty() {
                        "none".to_string()
                    } else {
                        chains.into_iter().collect::<Vec<_>>().join(", ")
                    }
                ),
            );
            if !tenant {
                return Err(error);
            }
            self.rejected_tenants
                .push((org.name.clone(), error.to_string()));
            self.subscriptions.retain(|s| s.org != i);
        }
        Ok(())
    }

    /// Refuses a second reader of one checkpoint: the same name, or the same (org, channel,
    /// target), would skip each other's events.
    fn check_distinct(&self, prefix: &str, plan: &SubscriptionPlan) -> Result<(), ConfigError> {
        let config = &plan.config;
        if self.names.contains(&plan.name) {
            return Err(invalid(
                format!("{prefix}channel"),
                &config.channel,
                "another subscription reads this channel from this org; give each a distinct name and sink, or remove one",
            ));
        }
        let reader = (plan.org, config.channel.clone(), config.sink.to_string());
        if let Some(other) = self.readers.get(&reader) {
            return Err(invalid(
                format!("{prefix}sink"),
                config.sink.to_string(),
                format!(
                    "subscription {other} already reads {} from org {} into this sink; they would share one checkpoint and skip each other's events: give each its own sink, or remove one",
                    config.channel, self.orgs[plan.org].name
                ),
            ));
        }
        if let Some(current) = &config.current_state
            && let Some(other) = self.current_states.get(&current.to_string())
        {
            return Err(invalid(
                format!("{prefix}current-state"),
                current.to_string(),
                format!(
                    "subscription {other} already keeps this current-state table; a current-state table follows one subscription's change table (two would overwrite each other's rows and conflict on every apply): give each its own path, with {{tenant}} in it for tenants (delta:./lake/{{tenant}}/current)"
                ),
            ));
        }
        Ok(())
    }
}

/// The PostgreSQL checkpoint store, when its URL is set; a URL that does not parse is an
/// error that does not repeat it (it holds the password).
fn postgres_store(
    run: &FileConfig,
) -> Result<Option<crate::checkpoint::PostgresSettings>, ConfigError> {
    let Some(url) = &run.checkpoint_postgres_url else {
        return Ok(None);
    };
    let url = url.resolve("checkpoint-postgres-url")?;
    if let Err(detail) = crate::checkpoint::PostgresSettings::describe(&url) {
        return Err(invalid(
            "checkpoint-postgres-url",
            "(not shown: it may hold a password)",
            format!(
                "{detail}; give postgres://user:password@host:5432/database?sslmode=require or host=… user=… dbname=…"
            ),
        ));
    }
    Ok(Some(crate::checkpoint::PostgresSettings {
        url: SecretString::from(url),
        table: run.checkpoint_postgres_table(),
    }))
}

/// The run-wide settings every subscription shares.
fn run_options(
    run: &FileConfig,
    databricks: &DatabricksSection,
) -> Result<RunOptions, ConfigError> {
    let until_idle = match run.until_idle {
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
    if run.max_in_flight() == 0 {
        let default = FileConfig::default().max_in_flight();
        return Err(invalid(
            "max-in-flight",
            "0",
            format!("give at least 1 (default {default})"),
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
                timeout: Duration::from_secs(databricks.sql_timeout_secs().max(1)),
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
    let checkpoint_store = run.checkpoint_store();
    let postgres = postgres_store(run)?;
    match checkpoint_store {
        crate::checkpoint::StoreKind::Postgres if postgres.is_none() => {
            return Err(missing(
                "checkpoint-postgres-url",
                "checkpoint-store = postgres needs the database: set SFZB_CHECKPOINT_POSTGRES_URL (postgres://user:password@host:5432/db?sslmode=require), or checkpoint-postgres-url = { env = \"VAR\" } in the file",
            ));
        }
        crate::checkpoint::StoreKind::Warehouse if sql.is_none() => {
            return Err(missing(
                "sql-warehouse-id",
                "checkpoint-store = warehouse keeps checkpoints through a SQL warehouse: pass --sql-warehouse-id (and --databricks-workspace-url), or choose local or postgres",
            ));
        }
        _ => {}
    }
    for (key, rate) in [
        ("login-rate", run.login_rate()),
        ("subscribe-rate", run.subscribe_rate()),
    ] {
        if !(rate >= 0.0 && rate.is_finite()) {
            return Err(invalid(
                key,
                rate.to_string(),
                "give a number per second, or 0 for no limit",
            ));
        }
    }
    Ok(RunOptions {
        login_rate: run.login_rate(),
        subscribe_rate: run.subscribe_rate(),
        checkpoint_store,
        postgres,
        state_dir: run.state_dir(),
        until_idle,
        flush_interval: Duration::from_millis(run.flush_interval_ms().max(1)),
        max_in_flight: run.max_in_flight(),
        max_in_flight_total: run.max_in_flight_total(),
        zerobus: crate::sink::zerobus::ZerobusSettings {
            endpoint: databricks.zerobus_endpoint.clone().unwrap_or_default(),
            workspace_url: databricks.workspace_url.clone(),
            client_id: databricks.client_id.clone(),
            client_secret,
            max_inflight: databricks.zerobus_max_inflight().max(1),
        },
        sql,
        auto_create_table: databricks.auto_create_table(),
    })
}
