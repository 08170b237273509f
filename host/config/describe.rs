//! The plan as `config check` prints it: every resolved setting, secrets masked.

use super::RunPlan;

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
            .map(|s| self.describe_subscription(s))
            .collect();
        let o = &self.options;
        json!({
            "config-file": self.source.as_ref().map(|p| p.display().to_string()),
            "state-dir": o.state_dir.display().to_string(),
            "checkpoint-store": o.checkpoint_store,
            "checkpoint-postgres": o.postgres.as_ref().map(|p| json!({
                "server": crate::checkpoint::PostgresSettings::describe(secrecy::ExposeSecret::expose_secret(&p.url)).ok(),
                "table": p.table,
            })),
            "transform-cache-dir": self.cache_dir.as_ref().map(|p| p.display().to_string()),
            "flush-interval-ms": o.flush_interval.as_millis() as u64,
            "login-rate": o.login_rate,
            "subscribe-rate": o.subscribe_rate,
            "max-in-flight": o.max_in_flight,
            "max-in-flight-total": o.max_in_flight_total,
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
            "rejected-tenants": self.rejected_tenants.iter().map(|(name, reason)| json!({"name": name, "reason": reason})).collect::<Vec<_>>(),
        })
    }

    /// What `config check` says on standard error once the plan is valid; an error when
    /// tenants were left out.
    pub fn verdict(&self) -> Result<String, super::ConfigError> {
        if let Some((name, reason)) = self.rejected_tenants.first() {
            return Err(super::ConfigError::RejectedTenants {
                count: self.rejected_tenants.len(),
                name: name.clone(),
                reason: reason.clone(),
            });
        }
        Ok(format!(
            "{}: valid ({} subscription(s), {} org(s)).",
            self.source
                .as_ref()
                .map_or("flags and environment".to_string(), |p| p
                    .display()
                    .to_string()),
            self.subscriptions.len(),
            self.orgs.len()
        ))
    }

    fn describe_subscription(&self, s: &super::SubscriptionPlan) -> serde_json::Value {
        use serde_json::json;
        let c = &s.config;
        json!({
            "name": s.name,
            "in-this-shard": self.shard.is_none_or(|shard| shard.owns(&self.orgs[s.org], &s.config.channel)),
            "lease": self.lease.as_ref().map(|_| crate::lease::Fence::lease_name(&self.orgs[s.org].identity(), &c.channel, &c.sink.to_string())),
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
            "transforms": c.transforms.iter().map(describe_transform).collect::<Vec<_>>(),
        })
    }
}

fn describe_transform(t: &crate::transform::TransformSpec) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "path": t.path.display().to_string(),
        "on-error": t.on_error,
        // Any setting may be a secret: keys only.
        "config": t.config.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        "keys": t.keys.names().collect::<Vec<_>>(),
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
    })
}
