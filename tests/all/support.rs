//! Helpers: start a simulator, run the pipeline with command-line style flags, read rows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use sfzb_host::cli::{Cli, Command};
use sfzb_host::config::RunPlan;
use sfzb_host::pipeline::SubscriptionStats;
use sfzb_host::sim::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

pub fn sim_config(entities: &[&str], events: u64) -> SimConfig {
    SimConfig {
        entities: entities.iter().map(|s| s.to_string()).collect(),
        events,
        seed: 7,
        keepalive: Duration::from_millis(200),
        ..SimConfig::default()
    }
}

pub async fn start(config: SimConfig) -> Simulator {
    Simulator::start(config).await.expect("simulator starts")
}

/// A run plan from `sfzb-host run` flags, pointed at `sim`, writing under `dir`, ending
/// after a second without events unless `extra` sets `--until-idle`.
pub fn plan(sim: &Simulator, dir: &Path, channel: &str, extra: &[&str]) -> RunPlan {
    plan_with(sim, dir, channel, extra, true)
}

/// [`plan`] for a run that goes on until cancelled, as a service does.
pub fn service_plan(sim: &Simulator, dir: &Path, channel: &str, extra: &[&str]) -> RunPlan {
    plan_with(sim, dir, channel, extra, false)
}

fn plan_with(sim: &Simulator, dir: &Path, channel: &str, extra: &[&str], idle: bool) -> RunPlan {
    let sink = format!("jsonl:{}", dir.join("out.jsonl").display());
    let state = dir.join("state").display().to_string();
    let pubsub = sim.pubsub_url();
    let login = sim.login_url();
    let mut argv: Vec<&str> = vec!["sfzb-host", "run"];
    if !extra.contains(&"--pubsub-endpoint") {
        argv.extend(["--pubsub-endpoint", &pubsub]);
    }
    argv.extend([
        "--instance-url",
        &login,
        "--channel",
        channel,
        "--state-dir",
        &state,
        "--flush-interval-ms",
        "50",
    ]);
    if !extra.contains(&"--sink") {
        argv.extend(["--sink", &sink]);
    }
    if idle && !extra.contains(&"--until-idle") {
        argv.extend(["--until-idle", "1"]);
    }
    let has_auth = extra
        .iter()
        .any(|a| matches!(*a, "--username" | "--client-id" | "--jwt-key-file"));
    if !has_auth {
        argv.extend(["--username", "u", "--password", "p"]);
    }
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv)
        .expect("flags parse")
        .into_command()
    {
        Command::Run(args) => args.plan().expect("plan is valid"),
        _ => unreachable!(),
    }
}

/// The `run` arguments of every tenant of `tenants` (one jsonl file each under `dir`,
/// `{tenant}.jsonl`), flushed every 50 ms, unless `extra` says otherwise.
pub fn tenants_args(
    sim: &Simulator,
    dir: &std::path::Path,
    tenants: &std::path::Path,
    extra: &[&str],
) -> sfzb_host::cli::RunArgs {
    let sink = format!("jsonl:{}/{{tenant}}.jsonl", dir.display());
    let state = dir.join("state").display().to_string();
    let (pubsub, login) = (sim.pubsub_url(), sim.login_url());
    let mut argv = vec![
        "sfzb-host",
        "run",
        "--tenants",
        tenants.to_str().unwrap(),
        "--pubsub-endpoint",
        &pubsub,
        "--instance-url",
        &login,
        "--channel",
        "AccountChangeEvent",
        "--state-dir",
        &state,
    ];
    // Defaults `extra` may set otherwise.
    for (flag, value) in [("--sink", sink.as_str()), ("--flush-interval-ms", "50")] {
        if !extra.contains(&flag) {
            argv.extend([flag, value]);
        }
    }
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv)
        .expect("flags parse")
        .into_command()
    {
        Command::Run(args) => *args,
        _ => unreachable!(),
    }
}

/// `sfzb-host run` of every tenant of `tenants` on AccountChangeEvent into `sink`, in `dir`.
pub fn tenants_command(
    dir: &Path,
    tenants: &Path,
    pubsub: &str,
    login: &str,
    sink: &str,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sfzb-host"));
    command
        .current_dir(dir)
        .args(["run", "--tenants", tenants.to_str().unwrap()])
        .args(["--pubsub-endpoint", pubsub, "--instance-url", login])
        .args(["--channel", "AccountChangeEvent", "--sink", sink]);
    command
}

/// A tenants file of `orgs` simulated orgs, `org-1` … `org-N`, each with its own credentials.
pub fn tenants_file(orgs: usize) -> String {
    (1..=orgs)
        .map(|n| {
            format!(
                "[org-{n}]\nclient-id = \"sim-client-{n}\"\nclient-secret = \"sim-secret-{n}\"\n"
            )
        })
        .collect()
}

/// Owned flags as `plan` takes them.
pub fn args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

pub async fn run(plan: RunPlan) -> Result<SubscriptionStats, sfzb_host::Error> {
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        sfzb_host::run(plan, CancellationToken::new()),
    )
    .await
    .expect("the run ends within 60 s")?;
    single(report)
}

/// The stats of a one-subscription run.
pub fn single(report: sfzb_host::RunReport) -> Result<SubscriptionStats, sfzb_host::Error> {
    report.into_result().map(|mut all| all.remove(0))
}

pub fn rows(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Complete lines written to `path` so far (a writer may be mid-line), for waiting on.
pub fn lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |bytes| bytes.iter().filter(|b| **b == b'\n').count())
}

pub fn out(dir: &Path) -> PathBuf {
    dir.join("out.jsonl")
}

pub fn dead(dir: &Path) -> PathBuf {
    dir.join("out_dead_letter.jsonl")
}

pub fn replay(row: &serde_json::Value) -> u64 {
    u64::from_str_radix(row["replay_id"].as_str().unwrap(), 16).unwrap()
}

/// Every bus position of `entity` (0-based among the configured entities) for `rounds`.
pub fn positions(entity: u64, entities: u64, rounds: u64) -> Vec<u64> {
    (0..rounds).map(|i| i * entities + entity + 1).collect()
}

/// `(event_id, replay_id)` of every row in a Delta table, read with delta-rs' log reader and
/// the parquet crate (not through our sink).
pub async fn delta_rows(path: &Path) -> Vec<(String, u64)> {
    delta_rows_with(path, None)
        .await
        .into_iter()
        .map(|(id, replay, _)| (id, replay))
        .collect()
}

/// `(event_id, replay_id, column)` of every row in a Delta table, by replay id; `column`
/// is `None` when not asked for.
pub async fn delta_rows_with(
    path: &Path,
    column: Option<&str>,
) -> Vec<(String, u64, Option<String>)> {
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::DataType;
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let url = url::Url::from_directory_path(path.canonicalize().unwrap()).unwrap();
    let table = deltalake::open_table(url).await.expect("a Delta table");
    let mut out = Vec::new();
    for uri in table.get_file_uris().unwrap() {
        let file = match url::Url::parse(&uri) {
            Ok(url) => url.to_file_path().unwrap(),
            Err(_) => std::path::PathBuf::from(&uri),
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let strings = |name: &str| {
                deltalake::arrow::compute::cast(
                    batch.column_by_name(name).unwrap(),
                    &DataType::Utf8,
                )
                .unwrap()
            };
            let (ids, replays) = (strings("event_id"), strings("replay_id"));
            let extra = column.map(strings);
            for i in 0..batch.num_rows() {
                let replay = u64::from_str_radix(replays.as_string::<i32>().value(i), 16).unwrap();
                out.push((
                    ids.as_string::<i32>().value(i).to_string(),
                    replay,
                    extra
                        .as_ref()
                        .map(|c| c.as_string::<i32>().value(i).to_string()),
                ));
            }
        }
    }
    out.sort_by_key(|(_, r, _)| *r);
    out
}

/// A child process, killed when dropped.
pub struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sfzb-host sim` on free ports and returns it with its Pub/Sub and login URLs.
pub fn sim_process(args: &[&str]) -> (Process, String, String) {
    let (process, mut urls) = sim_process_urls(args);
    let login = urls.remove(1);
    (process, urls.remove(0), login)
}

/// Starts `sfzb-host sim` on free ports and returns it with the endpoint URLs it prints, in
/// order: Pub/Sub API, login, then Zerobus with `--zerobus-port`.
pub fn sim_process_urls(args: &[&str]) -> (Process, Vec<String>) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sfzb-host"))
        .args(["sim", "--port", "0", "--login-port", "0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sfzb-host sim starts");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut urls = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("sim prints its endpoints");
        match line.split_once(':').map(|(_, v)| v.trim()) {
            Some(value) if value.starts_with("http") => urls.push(value.to_string()),
            _ => break,
        }
    }
    assert!(
        urls.len() >= 2,
        "sim printed its Pub/Sub and login endpoints: {urls:?}"
    );
    std::thread::spawn(move || lines.for_each(drop));
    (Process(child), urls)
}

/// `sfzb-host run` in `dir`, against a simulator's endpoints, logged in as u/p, on `channel`.
/// The log filter of a host whose flushes a test follows: `Written to …` per flush is a
/// debug line.
pub const FLUSH_LINES: &str =
    "info,buoyant_kernel=off,deltalake_core=warn,sfzb_host::pipeline::flush=debug";

pub fn host_command(dir: &Path, pubsub: &str, login: &str, channel: &str) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sfzb-host"));
    command
        .current_dir(dir)
        .args(["run", "--pubsub-endpoint", pubsub, "--instance-url", login])
        .args(["--username", "u", "--password", "p", "--channel", channel]);
    command
}

/// Rows of the simulator's events (`sim_args` as for `sfzb-host sim`), as the jsonl sink
/// writes them: `dir/sample.jsonl`.
pub fn sample_rows(dir: &Path, sim_args: &[&str]) -> PathBuf {
    let (_sim, pubsub, login) = sim_process(sim_args);
    let output = host_command(dir, &pubsub, &login, "/data/ChangeEvents")
        .args(["--sink", "jsonl:sample.jsonl", "--until-idle", "2"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir.join("sample.jsonl")
}

/// The key `transform_outputs` gives components for `--key=NAME=env:SFZB_TEST_KEY`.
pub const TEST_KEY: &str = "test-key-0123456789";

/// HMAC-SHA256 of `data` under [`TEST_KEY`], hex, computed here (not by sfzb-host).
pub fn test_hmac(data: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(TEST_KEY.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// What `sfzb-host transform test` prints for `component` on `sample`, without the time
/// each row was made. Items of `config` that start with `--` are flags (`--key=…`).
pub fn transform_outputs(
    component: &Path,
    sample: &Path,
    config: &[&str],
    cache: &Path,
) -> Vec<serde_json::Value> {
    transform_test(component, sample, config, cache).0
}

/// `sfzb-host transform test`: its output lines, and its standard error (the log and the
/// summary line with the transform's counters).
pub fn transform_test(
    component: &Path,
    sample: &Path,
    config: &[&str],
    cache: &Path,
) -> (Vec<serde_json::Value>, String) {
    let output = transform_test_command(component, sample, config, cache)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}: {}",
        component.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(row) = v.get_mut("row").and_then(|r| r.as_object_mut()) {
                row.remove("processed_timestamp");
            }
            v
        })
        .collect();
    (rows, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The `sfzb-host transform test --json` command of [`transform_test`], to run as it is or
/// with more set (a variable, a directory).
pub fn transform_test_command(
    component: &Path,
    sample: &Path,
    config: &[&str],
    cache: &Path,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sfzb-host"));
    command
        .args(["transform", "test", "--json"])
        .arg(component)
        .arg("--event")
        .arg(sample)
        .arg("--cache-dir")
        .arg(cache);
    // `--key=…` items are flags; the keys they name come from SFZB_TEST_KEY.
    for setting in config {
        match setting.strip_prefix("--") {
            Some(_) => command.arg(setting),
            None => command.args(["--config", setting]),
        };
    }
    command.env("SFZB_TEST_KEY", TEST_KEY);
    command
}

/// A process whose stderr lines are collected as they come; killed when dropped.
pub struct Logged {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Logged {
    pub fn spawn(mut command: std::process::Command) -> Logged {
        if !command.get_envs().any(|(k, _)| k == "SFZB_LOG") {
            command.env("SFZB_LOG", "info");
        }
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in reader.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Logged {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// How many lines so far contain `text`.
    pub fn said(&self, text: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Whether a line with `then` came after the last line with `first`.
    pub fn said_after(&self, first: &str, then: &str) -> bool {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .rposition(|l| l.contains(first))
            .is_some_and(|i| lines[i..].iter().any(|l| l.contains(then)))
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGTERM; the exit status and the whole log.
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    /// Waits for the process to end; the exit status, the whole log, and the process's peak
    /// resident memory in MiB (`VmHWM`, read from /proc until it exits).
    pub fn wait_with_peak_rss(mut self) -> (std::process::ExitStatus, String, u64) {
        let status = format!("/proc/{}/status", self.child.id());
        let mut peak_kib = 0;
        while self.child.try_wait().unwrap().is_none() {
            if let Ok(text) = std::fs::read_to_string(&status)
                && let Some(kib) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, log) = self.wait();
        (status, log, peak_kib / 1024)
    }

    /// Waits for the process to end; the exit status and the whole log.
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.log())
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file below `dir` (none when it does not exist).
/// The files under a run's state directory but the schemas it keeps (`schemas/`): its
/// checkpoints.
pub fn checkpoint_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != "schemas")
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                checkpoint_files(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// Polls `done` until it holds; fails the test after 30 s.
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
