//! `sfzb-host sim`: its flags, and the simulator configuration they make.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::SimConfig;
use crate::config::{ConfigError, invalid};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Pub/Sub API (gRPC) port; 0 picks a free one.
    #[arg(long, default_value_t = 17443)]
    pub port: u16,

    /// Login endpoints (HTTP) port; 0 picks a free one.
    #[arg(long, default_value_t = 18443)]
    pub login_port: u16,

    /// Objects with change events, comma-separated: Account, Contact, Lead, Opportunity, Invoice__c.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Account,Contact,Lead,Opportunity,Invoice__c"
    )]
    pub entities: Vec<String>,

    /// Change events of each entity already retained at start (as if they happened before).
    #[arg(long, default_value_t = 100)]
    pub events: u64,

    /// New events per second after start, all entities together.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// Stop producing new events (--rate) this many seconds after start; the servers stay
    /// up. A benchmark then knows exactly what was offered.
    #[arg(long, value_name = "SECS")]
    pub rate_for_secs: Option<f64>,

    /// Seed: the same seed gives the same events, and more events extend the same sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// The simulated org's id (the first org's, with --orgs).
    #[arg(long, default_value = "00DSIM0000000001AAA")]
    pub org_id: String,

    /// Orgs to serve from this one process, each with its own org id, credentials, events
    /// and replay ids; --rate, --events and the faults apply to each (--rate spread over
    /// them). With more than one, org N (1-based) accepts only client sim-client-N with
    /// secret sim-secret-N, or user user-N@sim.example with password password-N.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub orgs: usize,

    /// Write a tenants file for `run --tenants` naming every org (org-1 … org-N) with its
    /// credentials; give `run` the login URL as --instance-url.
    #[arg(long, value_name = "PATH")]
    pub tenants_out: Option<PathBuf>,

    /// Keep the org's records: start with N records of each entity, and let every event
    /// change them (creates, updates, deletes and undeletes of records that exist), so
    /// that the REST API's record reads and Bulk API 2.0 queries agree with the stream.
    /// The same seed with more --events extends the same history over the same records.
    #[arg(long, value_name = "N")]
    pub records: Option<u64>,

    /// Records per Bulk API 2.0 result page (a client's maxRecords may ask for fewer).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub page_size: usize,

    /// Events retained for replay; older ones are dropped (Salesforce keeps 72 hours).
    #[arg(long, default_value_t = 5_000_000)]
    pub retention: usize,

    /// Milliseconds between keepalives on an idle stream (Salesforce: within 270 s).
    #[arg(long, default_value_t = 5000)]
    pub keepalive_ms: u64,

    /// Accept only these USER:PASSWORD pairs (repeatable); by default any non-empty pair.
    #[arg(long = "login", value_name = "USER:PASSWORD")]
    pub logins: Vec<String>,

    /// Accept only these CLIENT_ID:SECRET pairs (repeatable); by default any non-empty pair.
    #[arg(long = "client", value_name = "ID:SECRET")]
    pub clients: Vec<String>,

    /// Verify JWT bearer assertions with this RSA public key (PEM).
    #[arg(long)]
    pub jwt_public_key: Option<PathBuf>,

    /// Access tokens expire this many seconds after they are issued.
    #[arg(long)]
    pub token_ttl_secs: Option<u64>,

    /// Also serve a Zerobus test server on this port (0 picks one), for zerobus: sinks without
    /// a Databricks workspace. It acknowledges every record and keeps nothing but counts.
    #[arg(long)]
    pub zerobus_port: Option<u16>,

    /// Fault: end every stream with UNAVAILABLE after it delivered N events.
    #[arg(long, value_name = "N")]
    pub end_stream_after: Option<u64>,

    /// Fault: expire all access tokens of an org once it delivered N events in total.
    #[arg(long, value_name = "N")]
    pub expire_tokens_after: Option<u64>,

    /// Fault: serve a corrupt payload for the events at these bus positions (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "POS")]
    pub corrupt_at: Vec<u64>,

    /// Fault: serve the events at these bus positions as a ConsumerEvent with a replay id
    /// and no event (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "POS")]
    pub empty_at: Vec<u64>,

    /// Fault: from this bus position on, events use a changed schema (one more field).
    #[arg(long, value_name = "POS")]
    pub schema_change_at: Option<u64>,

    /// Every Nth event of each entity is a GAP_UPDATE event.
    #[arg(long, value_name = "N")]
    pub gap_every: Option<u64>,

    /// Fault: the event at this bus position is a GAP_OVERFLOW, standing for a transaction
    /// that changed (and deleted) more of its object's records than Salesforce describes;
    /// the records change, no event says how. Needs --records.
    #[arg(long, value_name = "POS", requires = "records")]
    pub overflow_at: Option<u64>,

    /// A managed event subscription for ManagedSubscribe: its developer name and topic, e.g.
    /// Accounts=/data/AccountChangeEvent. It starts at EARLIEST, keeps the replay id its
    /// client commits, and admits one client at a time. Repeatable.
    #[arg(long = "managed-subscription", value_name = "NAME=TOPIC")]
    pub managed_subscriptions: Vec<String>,
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
        if self.orgs == 0 {
            return Err(invalid("orgs", "0", "serve at least one org"));
        }
        if self.orgs > 1 && !(self.logins.is_empty() && self.clients.is_empty()) {
            return Err(invalid(
                "orgs",
                self.orgs.to_string(),
                "--login and --client name one org's accounts; with several orgs, org N accepts sim-client-N / sim-secret-N and user-N@sim.example / password-N",
            ));
        }
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
            rate_for: self.rate_for_secs.map(Duration::from_secs_f64),
            seed: self.seed,
            org_id: self.org_id.clone(),
            orgs: self.orgs,
            retention: self.retention,
            keepalive: Duration::from_millis(self.keepalive_ms.max(10)),
            accounts: super::login::Accounts {
                users: pairs("login", &self.logins)?,
                clients: pairs("client", &self.clients)?,
                jwt_public_key_pem,
            },
            token_ttl: self.token_ttl_secs.map(Duration::from_secs),
            event_faults: super::bus::EventFaults {
                corrupt_at: self.corrupt_at.clone(),
                empty_at: self.empty_at.clone(),
                schema_change_at: self.schema_change_at,
                gap_every: self.gap_every,
                overflow_at: self.overflow_at,
            },
            stream_faults: super::pubsub::StreamFaults {
                end_stream_after: self.end_stream_after,
                expire_tokens_after: self.expire_tokens_after,
                hang_get_schema: false,
            },
            records: self.records,
            page_size: self.page_size.max(1),
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

/// `sfzb-host sim`: serves until `cancel` fires, after printing where (to `out`).
pub async fn serve(
    args: &SimArgs,
    cancel: tokio_util::sync::CancellationToken,
    out: &mut dyn std::io::Write,
) -> Result<(), crate::Error> {
    let config = args.config()?;
    let channels: Vec<String> = config
        .entities
        .iter()
        .map(|e| super::catalog::channel_for(e.trim()))
        .collect();
    let zerobus = match args.zerobus_port {
        Some(port) => {
            let addr = (args.host, port).into();
            Some(
                super::zerobus::ZerobusServerHandle::start_on(addr, Default::default(), None)
                    .await
                    .map_err(|source| super::SimError::Bind { addr, source })?,
            )
        }
        None => None,
    };
    let sim = super::Simulator::start(config).await?;
    // A reader that stops reading early must not take the simulator down.
    let _ = writeln!(out, "Pub/Sub API: {}", sim.pubsub_url());
    let _ = writeln!(out, "Login:       {}", sim.login_url());
    if let Some(zerobus) = &zerobus {
        let _ = writeln!(out, "Zerobus:     {}", zerobus.url());
    }
    match sim.orgs.as_slice() {
        [only] => {
            let _ = writeln!(out, "Org id:      {}", only.org_id);
        }
        orgs => {
            let last = &orgs[orgs.len() - 1].org_id;
            let first = &orgs[0].org_id;
            let _ = writeln!(out, "Orgs:        {} ({first} … {last})", orgs.len());
        }
    }
    let _ = writeln!(
        out,
        "Channels:    {}, /data/ChangeEvents",
        channels.join(", ")
    );
    if let Some(path) = &args.tenants_out {
        write_tenants(path, sim.orgs.len())?;
        let _ = writeln!(out, "Tenants:     {}", path.display());
    }
    // Last: a reader may stop at this line.
    let head = sim.org().bus.head();
    let per_org = if sim.orgs.len() > 1 { " per org" } else { "" };
    let _ = writeln!(
        out,
        "Retained:    {head} events{per_org} (replay ids 1..{head})"
    );
    let _ = out.flush();
    cancel.cancelled().await;
    sim.shutdown().await;
    if let Some(zerobus) = zerobus {
        zerobus.shutdown().await;
    }
    Ok(())
}

/// A tenants file for `run --tenants`: one entry per simulated org with its client
/// credentials (the simulator's own, not secrets of anyone's).
fn write_tenants(path: &std::path::Path, orgs: usize) -> Result<(), crate::Error> {
    let mut text = String::with_capacity(orgs * 80);
    for n in 1..=orgs {
        let accounts = super::org_accounts(n);
        let (id, secret) = &accounts.clients[0];
        text.push_str(&format!(
            "[org-{n}]\nclient-id = \"{id}\"\nclient-secret = \"{secret}\"\n\n"
        ));
    }
    std::fs::write(path, text).map_err(|source| {
        crate::Error::from(ConfigError::File {
            key: "tenants-out".into(),
            path: path.display().to_string(),
            source,
        })
    })
}
