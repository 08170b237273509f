//! Command-line flags, each defined once here with its help text. No I/O.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::salesforce::pubsub::ReplayFallback;

#[derive(Debug, Parser)]
#[command(
    name = "sfzb-host",
    version,
    about = "Salesforce Change Data Capture → Wasm transforms → Databricks",
    long_about = "Salesforce Change Data Capture → Wasm transforms → Databricks.\n\nWithout a subcommand it runs the pipeline (`sfzb-host [OPTIONS]` = `sfzb-host run [OPTIONS]`), reading ./sfzb.toml, --config or $SFZB_CONFIG when present. Try `sfzb-host demo`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SFZB_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info`, `debug` (one line per event), `sfzb_host=debug,h2=warn`.
    /// RUST_LOG is used when this is not given.
    #[arg(long, global = true, env = "SFZB_LOG")]
    pub log: Option<String>,
}

impl Cli {
    /// The subcommand, with the default action (run) made explicit.
    pub fn into_command(self) -> Command {
        self.command
            .unwrap_or_else(|| Command::Run(Box::new(self.run)))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Subscribe to Change Data Capture channels and write every event to a sink (the
    /// default action).
    Run(Box<RunArgs>),
    /// Try it with nothing to set up: a simulated org, a mask + tenant-filter chain on
    /// several channels, local Delta tables, and a summary.
    Demo(DemoArgs),
    /// Check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a simulated Salesforce org (Pub/Sub API and login endpoints) on loopback.
    Sim(Box<SimArgs>),
    /// Develop transforms: run one on sample events, or measure it.
    #[command(subcommand)]
    Transform(TransformCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (with the environment and any run flags) before anything
    /// connects, and print the resolved plan with secrets masked.
    Check {
        /// The file; defaults to $SFZB_CONFIG, then ./sfzb.toml.
        file: Option<PathBuf>,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo writes its tables and checkpoints.
    #[arg(long, default_value = "sfzb-demo")]
    pub dir: PathBuf,
    /// Events the simulated org holds per channel.
    #[arg(long, default_value_t = 2000)]
    pub events: u64,
}

#[derive(Debug, Subcommand)]
pub enum TransformCommand {
    /// Run a component on sample events (rows as the jsonl sink writes them) and print
    /// each output as a JSON line: {"table": …, "row": …} or {"dead_letter": …}.
    Test {
        #[command(flatten)]
        component: ComponentArgs,
        /// A JSON file with one row, or JSON lines of rows.
        #[arg(long)]
        event: PathBuf,
    },
    /// Create a ready-to-build transform: the WIT, a starting transform, its build setup, a
    /// sample event and a README; prints the commands that build and test it.
    Init {
        #[arg(long, value_enum)]
        lang: Lang,
        /// The transform's name, and its directory.
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Print the component's cost per event on the standard 30-field Account event.
    Bench {
        #[command(flatten)]
        component: ComponentArgs,
        /// How many events to time.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

#[derive(Debug, Args)]
pub struct ComponentArgs {
    /// The Wasm component.
    pub component: PathBuf,
    /// A setting KEY=VALUE passed to the transform's init (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Memory the instance may use, MiB.
    #[arg(long, default_value_t = 64)]
    pub memory_mib: usize,
    /// Time one event may take, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub timeout_ms: u64,
    /// Fuel per event; unmetered if unset.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Where compiled components are cached (default: the user's cache directory).
    #[arg(long, env = "SFZB_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// The run's settings. Every one may also be set in the configuration file under the same
/// name (`max-in-flight = 1000`); a flag or its environment variable wins over the file.
/// Defaults are applied after merging, so they are given in the help text, not to clap.
#[derive(Clone, Debug, Args, Default)]
pub struct RunArgs {
    /// Configuration file (TOML). Without it, ./sfzb.toml is read when present.
    #[arg(long = "config", env = "SFZB_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Salesforce Pub/Sub API endpoint: https://host:port, or http://host:port for the
    /// simulator [default: https://api.pubsub.salesforce.com:7443].
    #[arg(long, env = "SFZB_PUBSUB_ENDPOINT")]
    pub pubsub_endpoint: Option<String>,

    /// Where to log in: https://login.salesforce.com, https://test.salesforce.com, or your My Domain URL.
    #[arg(long, env = "SALESFORCE_INSTANCE_URL")]
    pub instance_url: Option<String>,

    /// Login flow. Inferred when omitted: jwt-bearer with --jwt-key-file, password with a
    /// client id and a username, client-credentials with a client id, else soap.
    #[arg(long, value_enum)]
    pub auth: Option<AuthFlow>,

    /// Salesforce username (SOAP, password and JWT bearer flows).
    #[arg(long, env = "SALESFORCE_USERNAME")]
    pub username: Option<String>,

    /// Password with the security token appended (SOAP and password flows). Prefer the
    /// environment variable to keep it out of the process list.
    #[arg(long, env = "SALESFORCE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,

    /// Connected app consumer key (OAuth flows).
    #[arg(long, env = "SALESFORCE_CLIENT_ID")]
    pub client_id: Option<String>,

    /// Connected app consumer secret (client-credentials and password flows).
    #[arg(long, env = "SALESFORCE_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,

    /// PEM file with the RSA private key of the connected app's certificate (JWT bearer flow).
    #[arg(long, env = "SALESFORCE_JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,

    /// JWT audience; defaults to --instance-url.
    #[arg(long, env = "SALESFORCE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Salesforce API version for the SOAP login [default: 57.0].
    #[arg(long)]
    pub api_version: Option<String>,

    /// Channel to subscribe to: /data/AccountChangeEvent, /data/Foo__ChangeEvent,
    /// /data/ChangeEvents, a custom channel /data/Foo__chn; a bare AccountChangeEvent also
    /// works. Given with a configuration file, the run has this one subscription.
    #[arg(long)]
    pub channel: Option<String>,

    /// Where rows go: jsonl:PATH (jsonl:- for standard output), delta:PATH_OR_URL, or
    /// zerobus:catalog.schema.table [default: jsonl:-].
    #[arg(long)]
    pub sink: Option<String>,

    /// Where undeliverable events go: jsonl:PATH. Defaults to the sink's own dead-letter
    /// place (PATH_dead_letter.jsonl, <table>_dead_letter).
    #[arg(long)]
    pub dead_letter: Option<String>,

    /// Start position, overriding the checkpoint: earliest, latest, or a replay id in hex.
    #[arg(long)]
    pub replay: Option<String>,

    /// With no checkpoint, start from LATEST instead of replaying retained history (EARLIEST).
    #[arg(long)]
    pub no_backfill: bool,

    /// Ignore stored checkpoints and start from LATEST (the reference's
    /// enable_replay_recovery = false).
    #[arg(long)]
    pub no_replay_recovery: bool,

    /// Read through this Salesforce managed event subscription (its developer name) with
    /// ManagedSubscribe: Salesforce keeps the committed position and lets one client read it
    /// at a time, so a second process waits as a standby.
    #[arg(long)]
    pub managed_subscription: Option<String>,

    /// Events requested per stream at a time (flow control credit), 1 to 100 [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub batch_size: Option<u32>,

    /// Resubscribe when the server sends nothing, not even a keepalive, for this many
    /// seconds [default: 300].
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,

    /// Consecutive idle timeouts after which /healthz reports the subscription stuck
    /// [default: 3].
    #[arg(long)]
    pub max_timeouts: Option<u32>,

    /// When Salesforce rejects the stored replay id (corrupted or past the 72-hour
    /// retention) [default: fail].
    #[arg(long, value_enum)]
    pub replay_invalid: Option<ReplayFallback>,

    /// Exit 0 once no event arrived for this many seconds (keepalives do not count).
    #[arg(long, value_name = "SECS")]
    pub until_idle: Option<f64>,

    /// Directory for checkpoints [default: .sfzb-state].
    #[arg(long, env = "SFZB_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Flush the sink and commit the checkpoint at least this often while events flow
    /// [default: 1000].
    #[arg(long)]
    pub flush_interval_ms: Option<u64>,

    /// Events held in memory per subscription between fetch and write; fetching waits for
    /// room [default: 1000].
    #[arg(long)]
    pub max_in_flight: Option<usize>,

    /// Serve /metrics (Prometheus), /healthz and /stats on this address, e.g. 127.0.0.1:9464.
    #[arg(long, env = "SFZB_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Run only this process's share of the subscriptions: I/N runs those whose (org,
    /// channel) hashes to I of N (0-based). Give every process the same configuration and
    /// N, and each a distinct I (a StatefulSet's pod index).
    #[arg(long, env = "SFZB_SHARD", value_name = "I/N")]
    pub shard: Option<String>,

    /// Fence every subscription with a Kubernetes Lease in this namespace: it reads only while
    /// this process holds the Lease of its (org, channel), so no two processes read the same
    /// channel. Needs a Kubernetes API (in-cluster service account, or KUBECONFIG).
    #[arg(long, env = "SFZB_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This process's name as a Lease holder, unique among the processes [default: the host
    /// name, i.e. the pod name].
    #[arg(long, env = "SFZB_LEASE_HOLDER")]
    pub lease_holder: Option<String>,

    /// How long a Lease stays held without renewal, seconds; renewals come a third of it
    /// before expiry, and a holder that cannot renew stops reading then [default: 30].
    #[arg(long)]
    pub lease_duration_secs: Option<u64>,

    /// Log a health report per subscription this often, seconds; 0 turns it off [default: 300].
    #[arg(long)]
    pub health_interval_secs: Option<u64>,

    /// /healthz reports a subscription whose received events wait longer than this for
    /// their checkpoint (a sink that stopped acknowledging), seconds [default: 120].
    #[arg(long)]
    pub max_checkpoint_lag_secs: Option<u64>,

    /// After SIGTERM, stop waiting for subscriptions to flush after this long and exit
    /// non-zero; their checkpoints stay behind the data, never ahead. Keep it below the
    /// orchestrator's grace period (the manifests give 120), seconds [default: 90].
    #[arg(long)]
    pub shutdown_timeout_secs: Option<u64>,

    /// Zerobus endpoint for zerobus: sinks, e.g. https://<workspace-id>.zerobus.<region>.cloud.databricks.com.
    #[arg(long, env = "DATABRICKS_ZEROBUS_ENDPOINT")]
    pub zerobus_endpoint: Option<String>,

    /// Databricks workspace URL (OAuth token endpoint for Zerobus).
    #[arg(long, env = "DATABRICKS_HOST")]
    pub databricks_workspace_url: Option<String>,

    /// Service principal client id (OAuth M2M).
    #[arg(long, env = "DATABRICKS_CLIENT_ID")]
    pub databricks_client_id: Option<String>,

    /// Service principal secret (OAuth M2M). Prefer the environment variable.
    #[arg(long, env = "DATABRICKS_CLIENT_SECRET", hide_env_values = true)]
    pub databricks_client_secret: Option<String>,

    /// SQL warehouse for Zerobus targets: creates missing tables and keeps the checkpoint in
    /// `<catalog>.<schema>.sfzb_checkpoints`. Without it the checkpoint is in --state-dir.
    #[arg(long, env = "DATABRICKS_WAREHOUSE_ID")]
    pub sql_warehouse_id: Option<String>,

    /// How long one SQL statement may take, including a warehouse start, seconds [default: 300].
    #[arg(long)]
    pub sql_timeout_secs: Option<u64>,

    /// Fail instead of creating a missing Zerobus target table.
    #[arg(long)]
    pub no_auto_create: bool,

    /// Record batches (of up to --batch-size rows) sent to Zerobus and not yet acknowledged,
    /// per table: bounds memory (~1.5 MB a batch of Account rows) [default: 16]. After a
    /// crash, the rows acknowledged since the last checkpoint come again too: up to a flush
    /// interval's worth of events plus --max-in-flight.
    #[arg(long)]
    pub zerobus_max_inflight: Option<usize>,

    #[command(flatten)]
    pub transforms: TransformArgs,
}

/// Wasm transforms applied to every event, in the order given.
#[derive(Clone, Debug, Args, Default)]
pub struct TransformArgs {
    /// A Wasm component to run on every event (repeatable; applied in order). Its name is the
    /// file stem: `mask` for `mask.wasm`. Replaces the chains of the configuration file.
    #[arg(long = "transform", value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// A transform setting as NAME.KEY=VALUE, e.g. `mask.fields=Email,Phone` (repeatable).
    #[arg(long = "transform-config", value_name = "NAME.KEY=VALUE")]
    pub config: Vec<String>,

    /// What to do with an event a transform fails on: dead-letter, skip or stop; for all
    /// transforms, or one as NAME=POLICY (repeatable).
    #[arg(long = "transform-on-error", value_name = "[NAME=]POLICY")]
    pub on_error: Vec<String>,

    /// Memory each transform instance may use, MiB [default: 64].
    #[arg(long)]
    pub transform_memory_mib: Option<usize>,

    /// Time one transform may spend on one event, milliseconds [default: 100].
    #[arg(long)]
    pub transform_timeout_ms: Option<u64>,

    /// Fuel (Wasm instructions, roughly) one transform may spend on one event; unmetered if unset.
    #[arg(long)]
    pub transform_fuel: Option<u64>,

    /// Replace a transform's instance with a fresh one after this many events [default: 100000].
    #[arg(long)]
    pub transform_recycle_after: Option<u64>,

    /// Where compiled components are cached; defaults to $XDG_CACHE_HOME/sfzb-host or
    /// ~/.cache/sfzb-host.
    #[arg(long, env = "SFZB_CACHE_DIR")]
    pub transform_cache_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthFlow {
    Soap,
    ClientCredentials,
    JwtBearer,
    Password,
}

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

    /// Seed: the same seed gives the same events, and more events extend the same sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// The simulated org's id.
    #[arg(long, default_value = "00DSIM0000000001AAA")]
    pub org_id: String,

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

    /// Fault: expire all access tokens once N events were delivered in total.
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

    /// A managed event subscription for ManagedSubscribe: its developer name and topic, e.g.
    /// Accounts=/data/AccountChangeEvent. It starts at EARLIEST, keeps the replay id its
    /// client commits, and admits one client at a time. Repeatable.
    #[arg(long = "managed-subscription", value_name = "NAME=TOPIC")]
    pub managed_subscriptions: Vec<String>,
}
