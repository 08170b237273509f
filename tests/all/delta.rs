//! The Delta Lake sink: exactly once across restarts and crashes, checked with a reader
//! that is not our sink.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_simulator_with_more_events_adds_exactly_the_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("tables/account_events");
    let sink = format!("delta:{}", table.display());
    for events in [1000, 1500] {
        let mut config = sim_config(&["Account"], events);
        config.seed = 7;
        let sim = start(config).await;
        let stats = run(plan(
            &sim,
            dir.path(),
            "/data/AccountChangeEvent",
            &["--sink", &sink],
        ))
        .await
        .unwrap();
        assert_eq!(
            stats.received,
            if events == 1000 { 1000 } else { 500 },
            "resumed from the table's own checkpoint"
        );
        sim.shutdown().await;
    }
    let rows = delta_rows(&table).await;
    assert_eq!(rows.len(), 1500);
    assert_eq!(
        rows.iter().map(|(id, _)| id).collect::<HashSet<_>>().len(),
        1500,
        "no event twice"
    );
    assert_eq!(
        rows.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        (1..=1500).collect::<Vec<_>>()
    );
    assert!(
        !dir.path().join("state").exists(),
        "the checkpoint lives in the table, not in a file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_events_land_in_the_dead_letter_table() {
    let mut config = sim_config(&["Account"], 30);
    config.event_faults.corrupt_at = vec![7, 19];
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("lake/accounts");
    let sink = format!("delta:{}", table.display());
    run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--sink", &sink],
    ))
    .await
    .unwrap();
    assert_eq!(delta_rows(&table).await.len(), 28);
    let dead = delta_rows(&dir.path().join("lake/accounts_dead_letter")).await;
    assert_eq!(dead.iter().map(|(_, r)| *r).collect::<Vec<_>>(), [7, 19]);
    sim.shutdown().await;
}

/// The simulator and the host in their own processes; the host is killed with SIGKILL at
/// random points and restarted. Every event must end up in its table exactly once, with a
/// transform chain that routes Contact events to a second table.
#[test]
fn sigkill_at_random_points_loses_nothing_and_duplicates_nothing() {
    const EVENTS: u64 = 15_000;
    let events = EVENTS.to_string();
    let (_sim, pubsub, login) =
        sim_process(&["--entities", "Account,Contact", "--events", &events]);

    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("lake/account_events");
    let route = crate::guests::component("route");
    let mask = crate::guests::component("mask");
    let host = |until_idle: &str| {
        let mut command = host_command(dir.path(), &pubsub, &login, "/data/ChangeEvents");
        command
            .arg("--sink")
            .arg(format!("delta:{}", table.display()))
            // Small fetches and frequent commits: kills land mid-stream and between commits.
            .args([
                "--flush-interval-ms",
                "50",
                "--batch-size",
                "20",
                "--max-in-flight",
                "40",
                "--until-idle",
                until_idle,
            ])
            .arg("--transform")
            .arg(&mask)
            .args(["--transform-config", "mask.fields=Phone,Email"])
            .arg("--transform")
            .arg(&route)
            .args(["--transform-config", "route.table.Contact=contact_events"])
            .env("SFZB_CACHE_DIR", dir.path().join("cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut progress = Vec::new();
    for _ in 0..6 {
        let mut child = host("30").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
        child.kill().unwrap();
        child.wait().unwrap();
        if table.join("_delta_log").exists() {
            progress.push(runtime.block_on(delta_rows(&table)).len());
        }
    }
    assert!(
        progress.iter().any(|n| *n > 0 && (*n as u64) < EVENTS),
        "some kill landed mid-stream: rows after each kill {progress:?}"
    );
    let last = host("3").status().unwrap();
    assert!(last.success());

    let accounts = runtime.block_on(delta_rows(&table));
    let contacts = runtime.block_on(delta_rows(&dir.path().join("lake/contact_events")));
    for (name, rows, entity) in [("accounts", &accounts, 0u64), ("contacts", &contacts, 1u64)] {
        let ids: HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), rows.len(), "{name}: no duplicate");
        assert_eq!(
            rows.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
            positions(entity, 2, EVENTS),
            "{name}: every event exactly once"
        );
    }
}
