//! Command-line flags, each defined once here with its help text. No I/O.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::salesforce::pubsub::ReplayFallback;

#[derive(Debug, Parser)]
#[command(name = "sfzb-host", version, about = "Salesforce Change Data Capture → Wasm transforms → Databricks", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SFZB_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info`, `debug` (one line per event), `sfzb_host=debug,h2=warn`.
    /// RUST_LOG is used when this is not given.
    #[arg(long, global = true, env = "SFZB_LOG")]
    pub log: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Subscribe to a Change Data Capture channel and write every event to a sink.
    Run(Box<RunArgs>),
    /// Run a simulated Salesforce org (Pub/Sub API and login endpoints) on loopback.
    Sim(Box<SimArgs>),
    /// Develop transforms: run one on sample events, or measure it.
    #[command(subcommand)]
    Transform(TransformCommand),
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
    /// Print the component's cost per event on the standard 30-field Account event.
    Bench {
        #[command(flatten)]
        component: ComponentArgs,
        /// How many events to time.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
    },
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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Salesforce Pub/Sub API endpoint: https://host:port, or http://host:port for the simulator.
    #[arg(long, env = "SFZB_PUBSUB_ENDPOINT", default_value = crate::salesforce::pubsub::DEFAULT_ENDPOINT)]
    pub pubsub_endpoint: String,

    /// Where to log in: https://login.salesforce.com, https://test.salesforce.com, or your My Domain URL.
    #[arg(long, env = "SALESFORCE_INSTANCE_URL")]
    pub instance_url: String,

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

    /// Salesforce API version for the SOAP login.
    #[arg(long, default_value = "57.0")]
    pub api_version: String,

    /// Channel to subscribe to: /data/AccountChangeEvent, /data/Foo__ChangeEvent,
    /// /data/ChangeEvents, a custom channel /data/Foo__chn; a bare AccountChangeEvent also works.
    #[arg(long)]
    pub channel: String,

    /// Where rows go: jsonl:PATH (jsonl:- for standard output).
    #[arg(long, default_value = "jsonl:-")]
    pub sink: String,

    /// Where undeliverable events go: jsonl:PATH. Defaults to PATH_dead_letter.jsonl next to a
    /// jsonl sink file, standard error for standard output.
    #[arg(long)]
    pub dead_letter: Option<String>,

    /// Start position, overriding the checkpoint: earliest, latest, or a replay id in hex.
    #[arg(long)]
    pub replay: Option<String>,

    /// With no checkpoint, start from LATEST instead of replaying retained history (EARLIEST).
    #[arg(long)]
    pub no_backfill: bool,

    /// Events requested per stream at a time (flow control credit), 1 to 100.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub batch_size: u32,

    /// Resubscribe when the server sends nothing, not even a keepalive, for this many seconds.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_secs: u64,

    /// When Salesforce rejects the stored replay id (corrupted or past the 72-hour retention).
    #[arg(long, value_enum, default_value_t = ReplayFallback::Fail)]
    pub replay_invalid: ReplayFallback,

    /// Exit 0 once no event arrived for this many seconds (keepalives do not count).
    #[arg(long, value_name = "SECS")]
    pub until_idle: Option<f64>,

    /// Directory for checkpoints.
    #[arg(long, env = "SFZB_STATE_DIR", default_value = ".sfzb-state")]
    pub state_dir: PathBuf,

    /// Flush the sink and commit the checkpoint at least this often while events flow.
    #[arg(long, default_value_t = 1000)]
    pub flush_interval_ms: u64,

    /// Events held in memory between fetch and write; fetching waits for room.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,

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

    /// How long one SQL statement may take, including a warehouse start, seconds.
    #[arg(long, default_value_t = 300)]
    pub sql_timeout_secs: u64,

    /// Fail instead of creating a missing Zerobus target table.
    #[arg(long)]
    pub no_auto_create: bool,

    /// Record batches (of up to --batch-size rows) sent to Zerobus and not yet acknowledged,
    /// per table: bounds memory (~1.5 MB a batch of Account rows) and the duplicates a crash
    /// can leave.
    #[arg(long, default_value_t = 16)]
    pub zerobus_max_inflight: usize,

    #[command(flatten)]
    pub transforms: TransformArgs,
}

/// Wasm transforms applied to every event, in the order given.
#[derive(Debug, Args, Default)]
pub struct TransformArgs {
    /// A Wasm component to run on every event (repeatable; applied in order). Its name is the
    /// file stem: `mask` for `mask.wasm`.
    #[arg(long = "transform", value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// A transform setting as NAME.KEY=VALUE, e.g. `mask.fields=Email,Phone` (repeatable).
    #[arg(long = "transform-config", value_name = "NAME.KEY=VALUE")]
    pub config: Vec<String>,

    /// What to do with an event a transform fails on: dead-letter, skip or stop; for all
    /// transforms, or one as NAME=POLICY (repeatable).
    #[arg(long = "transform-on-error", value_name = "[NAME=]POLICY")]
    pub on_error: Vec<String>,

    /// Memory each transform instance may use, MiB.
    #[arg(long, default_value_t = 64)]
    pub transform_memory_mib: usize,

    /// Time one transform may spend on one event, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub transform_timeout_ms: u64,

    /// Fuel (Wasm instructions, roughly) one transform may spend on one event; unmetered if unset.
    #[arg(long)]
    pub transform_fuel: Option<u64>,

    /// Replace a transform's instance with a fresh one after this many events.
    #[arg(long, default_value_t = 100_000)]
    pub transform_recycle_after: u64,

    /// Where compiled components are cached; defaults to $XDG_CACHE_HOME/sfzb-host or
    /// ~/.cache/sfzb-host.
    #[arg(long, env = "SFZB_CACHE_DIR")]
    pub transform_cache_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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

    /// Fault: from this bus position on, events use a changed schema (one more field).
    #[arg(long, value_name = "POS")]
    pub schema_change_at: Option<u64>,

    /// Every Nth event of each entity is a GAP_UPDATE event.
    #[arg(long, value_name = "N")]
    pub gap_every: Option<u64>,
}
