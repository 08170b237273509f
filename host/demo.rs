//! `sfzb-host demo`: the whole pipeline with nothing to set up. A simulated org runs in
//! this process; three channels go through a mask + tenant-filter chain (prebuilt copies of
//! `guest-transforms/mask` and `tenant-filter`, embedded in the binary) into local Delta
//! tables; the configuration it used is left next to the tables to read and copy.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cli::{DemoArgs, RunArgs};
use crate::sim::{SimConfig, Simulator};

const MASK: &[u8] = include_bytes!("../guest-transforms/prebuilt/mask.wasm");
const TENANT_FILTER: &[u8] = include_bytes!("../guest-transforms/prebuilt/tenant-filter.wasm");

/// The entities the demo streams, and the table each lands in.
const CHANNELS: [(&str, &str); 3] = [
    ("Account", "account_events"),
    ("Contact", "contact_events"),
    ("Lead", "lead_events"),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare the demo directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Dir {
        path: path.display().to_string(),
        source,
    }
}

/// Runs the demo and prints its summary to `out`.
pub async fn run(
    args: &DemoArgs,
    cancel: CancellationToken,
    out: &mut dyn Write,
) -> Result<(), crate::Error> {
    let dir = &args.dir;
    prepare(dir)?;
    let sim = Simulator::start(SimConfig {
        entities: CHANNELS.iter().map(|(e, _)| e.to_string()).collect(),
        events: args.events,
        keepalive: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await?;
    let config = dir.join("sfzb.toml");
    std::fs::write(&config, config_text(&sim)).map_err(io(&config))?;
    let plan = RunArgs {
        config_file: Some(config.clone()),
        ..RunArgs::default()
    }
    .plan()?;
    let _ = writeln!(
        out,
        "Demo: a simulated org with {} events on each of {} channels → mask + tenant-filter → Delta tables in {}",
        args.events,
        CHANNELS.len(),
        dir.join("tables").display()
    );
    let started = Instant::now();
    let report = crate::run(plan, cancel).await;
    let elapsed = started.elapsed().as_secs_f64();
    sim.shutdown().await;
    let stats = report?.into_result()?;
    summarize(out, &stats, elapsed, dir, &config);
    Ok(())
}

/// A fresh demo directory: no tables or checkpoints from an earlier demo (its simulated org
/// is gone, so old checkpoints would skip the new one), and the two transforms.
fn prepare(dir: &Path) -> Result<(), crate::Error> {
    for sub in ["tables", "state"] {
        let path = dir.join(sub);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    let transforms = dir.join("transforms");
    std::fs::create_dir_all(&transforms).map_err(io(&transforms))?;
    for (name, bytes) in [("mask.wasm", MASK), ("tenant-filter.wasm", TENANT_FILTER)] {
        let path = transforms.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    Ok(())
}

/// The table of what each subscription did, the rate, and how to read the tables.
fn summarize(
    out: &mut dyn Write,
    stats: &[crate::pipeline::SubscriptionStats],
    elapsed: f64,
    dir: &Path,
    config: &Path,
) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<22} {:>8} {:>8} {:>8} {:>14}  table",
        "subscription", "in", "out", "dropped", "dead-lettered"
    );
    let mut total = 0;
    for s in stats {
        total += s.received;
        let _ = writeln!(
            out,
            "{:<22} {:>8} {:>8} {:>8} {:>14}  {}",
            s.channel.rsplit('/').next().unwrap_or_default(),
            s.received,
            s.written,
            s.dropped,
            s.dead_lettered,
            s.target.trim_start_matches("delta:")
        );
    }
    let active = stats.iter().map(|s| s.active_ms).max().unwrap_or(0) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "\n{total} events in {elapsed:.1} s ({:.0} events/s while events flowed; the run waits 2 s of quiet before it stops).",
        total as f64 / active.max(0.001)
    );
    let first = table_path(dir, CHANNELS[0].1);
    let _ = writeln!(out, "Configuration used: {}", config.display());
    let _ = writeln!(
        out,
        "Query a table with any Delta reader, e.g. (after `pip install 'deltalake[pyarrow]' pandas`):"
    );
    let _ = writeln!(
        out,
        "  python3 -c \"import deltalake; print(deltalake.DeltaTable('{}').to_pandas()[['replay_id','change_type','record_ids']].tail())\"",
        first.display()
    );
    let _ = writeln!(
        out,
        "  duckdb -c \"SELECT change_type, count(*) FROM delta_scan('{}') GROUP BY 1\"",
        first.display()
    );
}

fn table_path(dir: &Path, table: &str) -> PathBuf {
    dir.join("tables").join(table)
}

fn config_text(sim: &Simulator) -> String {
    let mut text = format!(
        r#"# Written by `sfzb-host demo`. The simulated org it points at lived inside the demo
# process; for a real org, set instance-url (and drop pubsub-endpoint) and put the
# connected app's secret in the environment: client-secret = {{ env = "SALESFORCE_CLIENT_SECRET" }}.
state-dir = "state"
until-idle = 2.0
health-interval-secs = 0

[salesforce]
instance-url = "{login}"
pubsub-endpoint = "{pubsub}"
client-id = "demo-connected-app"
client-secret = "demo"

[defaults]
backfill-historical = true

[[defaults.transform]]
path = "transforms/mask.wasm"
config = {{ fields = "Email,*Phone,Fax", mode = "hash", key = "pii" }}
# The demo's own key; a real one comes from {{ env = "VAR" }} or {{ file = "PATH" }}.
keys = {{ pii = "demo-key" }}

[[defaults.transform]]
path = "transforms/tenant-filter.wasm"
# Keep creates and updates; deletes and undeletes are dropped.
config = {{ change-types = "CREATE,UPDATE" }}
"#,
        login = sim.login_url(),
        pubsub = sim.pubsub_url(),
    );
    for (entity, table) in CHANNELS {
        text.push_str(&format!(
            "\n[[subscription]]\nchannel = \"{entity}ChangeEvent\"\nsink = \"delta:tables/{table}\"\n"
        ));
    }
    text
}
