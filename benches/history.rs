//! `cargo bench --bench history`: the initial snapshot and the current-state table.
//!
//! The simulator (in this process) keeps `SFZB_HISTORY_RECORDS` Accounts (default 50,000).
//! One run snapshots them through Bulk API 2.0 pages into a typed Delta table; the figure is
//! records per second from the run's start to its end, less the idle second that ends it.
//! Then the current-state table is built from that change table (one MERGE of a full action
//! per record), then `SFZB_HISTORY_CHANGES` changes (default 2,000) are streamed into the
//! change table and applied (one MERGE of their collapsed actions into the populated table).
//! Each MERGE is printed as µs per change applied. The last line reads
//! `history records=N snapshot_records_per_s=R merge_snapshot_us_per_change=A merge_changes_us_per_change=B`.

use std::time::{Duration, Instant};

use clap::Parser;
use sfzb_host::cli::{Cli, Command as Cmd};
use sfzb_host::current_state::{CurrentState, Deletes};
use sfzb_host::sim::{SimConfig, Simulator};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn plan(sim: &Simulator, dir: &std::path::Path, extra: &[&str]) -> sfzb_host::config::RunPlan {
    let sink = format!("delta:{}/tables/{{object}}", dir.display());
    let state = dir.join("state").display().to_string();
    let (pubsub, login) = (sim.pubsub_url(), sim.login_url());
    let mut argv = vec![
        "sfzb-host",
        "run",
        "--pubsub-endpoint",
        &pubsub,
        "--instance-url",
        &login,
        "--username",
        "u",
        "--password",
        "p",
        "--channel",
        "/data/AccountChangeEvent",
        "--layout",
        "typed",
        "--sink",
        &sink,
        "--state-dir",
        &state,
        "--until-idle",
        "1",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv)
        .expect("flags parse")
        .into_command()
    {
        Cmd::Run(args) => args.plan().expect("plan is valid"),
        _ => unreachable!(),
    }
}

async fn run(plan: sfzb_host::config::RunPlan) -> sfzb_host::pipeline::SubscriptionStats {
    let report = sfzb_host::run(plan, tokio_util::sync::CancellationToken::new())
        .await
        .expect("the run succeeds");
    report
        .into_result()
        .expect("the subscription succeeds")
        .remove(0)
}

fn main() {
    let records: u64 = env("SFZB_HISTORY_RECORDS", 50_000);
    let changes: u64 = env("SFZB_HISTORY_CHANGES", 2_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let sim = Simulator::start(SimConfig {
            entities: vec!["Account".into()],
            events: 0,
            records: Some(records),
            keepalive: Duration::from_millis(100),
            ..SimConfig::default()
        })
        .await
        .expect("the simulator starts");
        let dir = tempfile::tempdir().unwrap();

        let started = Instant::now();
        let stats = run(plan(&sim, dir.path(), &["--snapshot"])).await;
        let secs = (started.elapsed().as_secs_f64() - 1.0).max(1e-3);
        assert_eq!(stats.snapshot_records, records, "every record is in the snapshot");
        let rate = records as f64 / secs;
        println!("snapshot: {records} records in {secs:.2} s: {rate:.0} records/s (Bulk API 2.0 pages → typed Delta)");

        let change = dir.path().join("tables/Account").display().to_string();
        let target = dir.path().join("tables/account_current").display().to_string();
        let mut current = CurrentState::new(
            &target,
            &change,
            "bench".into(),
            Deletes::Remove,
            "Account".into(),
            None,
            Duration::ZERO,
        )
        .expect("the current-state table opens");
        let merge = async |current: &mut CurrentState, what: &str| {
            let started = Instant::now();
            let applied = current.apply().await.expect("the changes apply");
            let us = started.elapsed().as_secs_f64() * 1e6 / applied.changes.max(1) as f64;
            println!(
                "current state, {what}: {} changes of {} records in {} commits: {:.0} ms, {us:.1} µs per change",
                applied.changes,
                applied.records,
                applied.versions,
                started.elapsed().as_secs_f64() * 1e3
            );
            us
        };
        let snapshot_us = merge(&mut current, "the snapshot").await;

        sim.org().bus.generate_rounds(changes);
        let stats = run(plan(&sim, dir.path(), &[])).await;
        assert_eq!(stats.received, changes, "every change is streamed");
        let changes_us = merge(&mut current, "changes").await;
        println!(
            "history records={records} snapshot_records_per_s={rate:.0} merge_snapshot_us_per_change={snapshot_us:.1} merge_changes_us_per_change={changes_us:.1}"
        );
        sim.shutdown().await;
    });
}
