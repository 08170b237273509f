//! Command-line flags, each defined once here with its help text. No I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::file::{
    DatabricksSection, FileConfig, OrgSection, SubscriptionSection, TransformSection,
};
use crate::sim::args::SimArgs;

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
    /// Parses the process's arguments; the help of each flag names its default.
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let matches = crate::config::settings::with_defaults(Cli::command()).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

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
    /// Work with dead letters: replay them through the (fixed) chain to their target.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Ask a running sfzb-host whether it is healthy (its /healthz), for an image without
    /// an HTTP client: exit 0 when healthy, 1 when not or when it does not answer.
    Healthcheck(EndpointArgs),
    /// A running sfzb-host's subscriptions as a table (its /subscriptions): state, events
    /// received and per second, checkpoint age, lag, and the reason of each state.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// The process's --metrics-listen address (or an http:// URL).
    #[arg(long, default_value = "127.0.0.1:9464", env = "SFZB_METRICS_LISTEN")]
    pub address: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The process's --metrics-listen address (or an http:// URL).
    #[arg(long, default_value = "127.0.0.1:9464", env = "SFZB_METRICS_LISTEN")]
    pub address: String,
    /// Only this org's subscriptions (its name or id).
    #[arg(long)]
    pub org: Option<String>,
    /// Only subscriptions in this state (running, failed, limited, …).
    #[arg(long)]
    pub state: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// Replay dead letters through the chain of the subscription that dead-lettered them
    /// (matched by org and channel; the run's configuration and flags, so `--transform`
    /// and `--sink` work as for `run`), to its sink. What was replayed is recorded once its
    /// rows are durable, so a second replay writes nothing twice; letters that fail again
    /// stay where they are for the next replay.
    Replay(Box<ReplayArgs>),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The dead letters: jsonl:PATH (a dead-letter file) or delta:PATH (a dead-letter table).
    #[arg(long, value_name = "jsonl:PATH|delta:PATH")]
    pub from: String,
    /// Where what was replayed is recorded (default: PATH.replayed beside the dead letters).
    #[arg(long, value_name = "PATH")]
    pub ledger: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
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
    /// Print every setting (key, flag, environment variable, default, meaning) as the
    /// README's Markdown tables.
    Settings,
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
    /// Run a component on sample events (rows as the jsonl sink writes them) and print,
    /// per event, what it did: kept, dropped, fanned out, routed or dead-lettered (with the
    /// reason), and each field it changed (before → after).
    Test {
        #[command(flatten)]
        component: ComponentArgs,
        /// A JSON file with one row, or JSON lines of rows or of dead letters (a
        /// dead-letter file).
        #[arg(long)]
        event: PathBuf,
        /// Where the schemas of dead letters are (a letter carries only the schema id): a
        /// run's state-dir/schemas, where it keeps each schema it fetched. Default:
        /// $SFZB_STATE_DIR/schemas, else .sfzb-state/schemas.
        #[arg(long, value_name = "DIR")]
        schemas: Option<PathBuf>,
        /// Print each output as a JSON line instead: {"table": …, "row": …} or
        /// {"dead_letter": …}.
        #[arg(long)]
        json: bool,
        /// Run again each time the component or the events file changes.
        #[arg(long)]
        watch: bool,
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
    /// A secret key for its `hmac-sha256` as KEY=env:VAR or KEY=file:PATH (repeatable).
    #[arg(long = "key", value_name = "KEY=env:VAR|file:PATH")]
    pub keys: Vec<String>,
    #[command(flatten, next_help_heading = "Limits")]
    pub limits: TransformSection,
    /// Where compiled components are cached (default: the user's cache directory).
    #[arg(long, env = "SFZB_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// The run's settings, each defined once in [`crate::config::file`]: the flag is the file's
/// key (`--max-in-flight` is `max-in-flight`), prefixed for `[databricks]` and transforms.
/// A flag or its environment variable wins over the file; defaults are applied after
/// layering.
#[derive(Clone, Debug, Args, Default)]
pub struct RunArgs {
    /// Configuration file (TOML). Without it, ./sfzb.toml is read when present.
    #[arg(long = "config", env = "SFZB_CONFIG")]
    pub config_file: Option<PathBuf>,

    #[command(flatten)]
    pub run: FileConfig,

    #[command(flatten, next_help_heading = "Salesforce org")]
    pub org: OrgSection,

    #[command(flatten, next_help_heading = "Subscription")]
    pub subscription: SubscriptionSection,

    #[command(flatten, next_help_heading = "Databricks")]
    pub databricks: DatabricksSection,

    #[command(flatten, next_help_heading = "Transforms")]
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

    /// A secret key for a transform's `hmac-sha256` as NAME.KEY=env:VAR or
    /// NAME.KEY=file:PATH, e.g. `mask.pii=env:MASK_KEY` (repeatable; never the key itself,
    /// which `ps` would show).
    #[arg(long = "transform-key", value_name = "NAME.KEY=env:VAR|file:PATH")]
    pub keys: Vec<String>,

    /// What to do with an event a transform fails on: dead-letter, skip or stop; for all
    /// transforms, or one as NAME=POLICY (repeatable).
    #[arg(long = "transform-on-error", value_name = "[NAME=]POLICY")]
    pub on_error: Vec<String>,

    /// Limits for every transform, over the file's.
    #[command(flatten)]
    pub limits: TransformSection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthFlow {
    Soap,
    ClientCredentials,
    JwtBearer,
    Password,
}
