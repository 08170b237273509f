//! `cargo bench --bench capacity`: many orgs in one process. The multi-org simulator and the
//! Zerobus test server run in their own process; this process runs one subscription per org
//! (a tenants file), writing to one shared Zerobus table, checkpoints in the local store.
//!
//! Per size it prints what was offered and ingested, host CPU (cores, and µs per event while
//! streaming), peak RSS, and the seconds until every subscription was streaming; the last
//! line reads `capacity orgs=N ingested=P% cpu=C cores rss=M MB ready=S s us_per_event=U`.
//!
//! `SFZB_CAPACITY_ORGS=N` runs one size (default: 1000, 5000 and 10000, each in a fresh
//! process so that peak RSS is its own); `SFZB_CAPACITY_RATE` events/s per org (default 1);
//! `SFZB_CAPACITY_SECS` how long the simulator produces (default 60);
//! `SFZB_CAPACITY_IN_FLIGHT` the process's `max-in-flight-total` (default: the setting's);
//! `SFZB_CAPACITY_FLAGS` more `run` flags, space-separated (`--batch-size 10`);
//! `SFZB_CAPACITY_TRANSFORM=mask` gives every subscription the same Rust mask (shared
//! instances), `=tenant-filter` every tenant a `tenant-filter` of its own settings (from
//! the tenants file, keeping every event; instances on demand under `transform-idle-mib`).

// The tests' guest builder; the bench uses only its Rust components.
#[allow(dead_code)]
#[path = "../tests/all/guests.rs"]
mod guests;
mod measure;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use clap::Parser;
use sfzb_host::cli::{Cli, Command as Cmd};
use tokio_util::sync::CancellationToken;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    match std::env::var("SFZB_CAPACITY_ORGS") {
        Ok(n) => one_size(n.parse().expect("SFZB_CAPACITY_ORGS is a number")),
        Err(_) => {
            for n in [1_000, 5_000, 10_000] {
                let status = std::process::Command::new(std::env::current_exe().unwrap())
                    .env("SFZB_CAPACITY_ORGS", n.to_string())
                    .status()
                    .expect("the benchmark runs itself");
                assert!(status.success(), "capacity with {n} orgs failed");
            }
        }
    }
}

/// One size: the simulator, the run, the figures.
fn one_size(orgs: usize) {
    let rate: f64 = env("SFZB_CAPACITY_RATE", 1.0);
    let secs: f64 = env("SFZB_CAPACITY_SECS", 60.0);
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    let (mut sim, urls) = measure::spawn_sim(&[
        "--port",
        "0",
        "--login-port",
        "0",
        "--zerobus-port",
        "0",
        "--orgs",
        &orgs.to_string(),
        "--entities",
        "Account",
        "--events",
        "0",
        "--rate",
        &(rate * orgs as f64).to_string(),
        "--rate-for-secs",
        &secs.to_string(),
        "--tenants-out",
        tenants.to_str().unwrap(),
    ]);
    let production_end = Instant::now() + Duration::from_secs_f64(secs);
    let offered = (rate * orgs as f64 * secs) as u64;
    let transform = std::env::var("SFZB_CAPACITY_TRANSFORM").ok();
    if transform.as_deref() == Some("tenant-filter") {
        own_filters(&tenants);
    }
    let validating = Instant::now();
    let plan = host_plan(
        &urls,
        &tenants,
        &dir.path().join("state"),
        transform.as_deref(),
    );
    println!(
        "{orgs} tenants validated in {:.0} ms; transform: {}",
        validating.elapsed().as_secs_f64() * 1e3,
        match transform.as_deref() {
            None => "none",
            Some("mask") => "the same Rust mask for every subscription",
            Some(_) => "a tenant-filter of each tenant's own settings",
        }
    );
    let figures = measure_run(plan, orgs, offered, production_end);
    let _ = sim.kill();
    let _ = sim.wait();
    figures.print(orgs, rate, secs, offered);
}

/// A `tenant-filter` setting of its own for each tenant of the file, keeping every event:
/// the tenant's name is one of the objects it keeps, with Account.
fn own_filters(tenants: &std::path::Path) {
    let text = std::fs::read_to_string(tenants).unwrap();
    let mut out = String::with_capacity(text.len() * 2);
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
    }
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix('[')?.strip_suffix(']').map(str::to_string))
        .collect();
    for name in names {
        out.push_str(&format!(
            "[{name}.transform-config.tenant-filter]\nentities = \"Account,{name}\"\n"
        ));
    }
    std::fs::write(tenants, out).unwrap();
}

/// `sfzb-host run` for every tenant of `tenants`, into one shared Zerobus table, with
/// `transform` (a Rust guest's name) in every chain.
fn host_plan(
    urls: &[String],
    tenants: &std::path::Path,
    state: &std::path::Path,
    transform: Option<&str>,
) -> sfzb_host::config::RunPlan {
    let argv = [
        "sfzb-host",
        "run",
        "--tenants",
        tenants.to_str().unwrap(),
        "--pubsub-endpoint",
        &urls[0],
        "--instance-url",
        &urls[1],
        "--zerobus-endpoint",
        &urls[2],
        "--channel",
        "AccountChangeEvent",
        "--sink",
        "zerobus:main.capacity.accounts",
        "--state-dir",
        state.to_str().unwrap(),
        // Raised for the measurement: start-up is bounded by the machine, not the pace.
        "--login-rate",
        "0",
        "--subscribe-rate",
        "1000",
    ];
    let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    if let Ok(n) = std::env::var("SFZB_CAPACITY_IN_FLIGHT") {
        argv.extend(["--max-in-flight-total".into(), n]);
    }
    if let Ok(flags) = std::env::var("SFZB_CAPACITY_FLAGS") {
        argv.extend(flags.split_whitespace().map(str::to_string));
    }
    if let Some(name) = transform {
        argv.extend([
            "--transform".into(),
            guests::component(name).display().to_string(),
            "--transform-cache-dir".into(),
            state.join("cache").display().to_string(),
        ]);
        if name == "mask" {
            argv.extend([
                "--transform-config".into(),
                "mask.fields=PersonEmail,Phone".into(),
            ]);
        }
    }
    let Cmd::Run(args) = Cli::parse_from(argv).into_command() else {
        unreachable!()
    };
    args.plan().unwrap()
}

/// What one run measured.
struct Figures {
    ready: f64,
    all_ready: bool,
    /// From every subscription streaming to the end of production.
    window: f64,
    cpu_window: f64,
    written_in_window: u64,
    behind_at_end: u64,
    drain: f64,
    ingested: u64,
    cpu_total: f64,
}

/// Runs `plan` until production ended and what was offered arrived (or 30 s more).
fn measure_run(
    plan: sfzb_host::config::RunPlan,
    orgs: usize,
    offered: u64,
    production_end: Instant,
) -> Figures {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cancel = CancellationToken::new();
    let started_at = Instant::now();
    let cpu_start = measure::cpu_time();
    let started = runtime
        .block_on(sfzb_host::start(plan, cancel.clone()))
        .unwrap();
    let health = started.registry().list();
    let run = runtime.spawn(started.wait());
    let streaming = || {
        health
            .iter()
            .filter(|h| h.has_subscribed() && h.state() == sfzb_host::health::State::Running)
            .count()
    };
    let written = || health.iter().map(|h| h.written.load(Relaxed)).sum::<u64>();
    while streaming() < orgs && Instant::now() < production_end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = started_at.elapsed().as_secs_f64();
    let all_ready = streaming() == orgs;
    let (cpu_ready, written_ready, at_ready) = (measure::cpu_time(), written(), Instant::now());
    std::thread::sleep(production_end.saturating_duration_since(Instant::now()));
    let (cpu_end, written_end, at_end) = (measure::cpu_time(), written(), Instant::now());
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while written() < offered && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain = at_end.elapsed().as_secs_f64();
    let ingested = written();
    cancel.cancel();
    let _ = runtime.block_on(run);
    Figures {
        ready,
        all_ready,
        window: (at_end - at_ready).as_secs_f64().max(0.001),
        cpu_window: (cpu_end - cpu_ready).as_secs_f64(),
        written_in_window: (written_end - written_ready).max(1),
        behind_at_end: offered.saturating_sub(written_end),
        drain,
        ingested,
        cpu_total: (measure::cpu_time() - cpu_start).as_secs_f64(),
    }
}

impl Figures {
    fn print(&self, orgs: usize, rate: f64, secs: f64, offered: u64) {
        let percent = self.ingested as f64 * 100.0 / offered.max(1) as f64;
        let rss_mb = measure::peak_rss_kib() / 1024;
        let cores = self.cpu_window / self.window;
        let us_per_event = self.cpu_window * 1e6 / self.written_in_window as f64;
        println!(
            "{orgs} orgs × 1 subscription, {rate} event/s each: offered {offered} events ({:.0}/s for {secs} s), ingested {} ({percent:.1}%), {} behind when production ended, drained {:.1} s later",
            rate * orgs as f64,
            self.ingested,
            self.behind_at_end,
            self.drain,
        );
        println!(
            "while streaming ({:.0} s): {:.0} events/s written, {cores:.2} cores, {us_per_event:.1} µs host CPU/event; whole run {:.1} s CPU; peak RSS {rss_mb} MB; {}ready in {:.1} s",
            self.window,
            self.written_in_window as f64 / self.window,
            self.cpu_total,
            if self.all_ready { "" } else { "NOT all " },
            self.ready,
        );
        println!(
            "capacity orgs={orgs} ingested={percent:.1}% cpu={cores:.2} cores rss={rss_mb} MB ready={:.1} s us_per_event={us_per_event:.1}",
            self.ready,
        );
    }
}
