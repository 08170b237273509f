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
        checkpoint_files(&dir.path().join("state")).is_empty(),
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

/// A typed table per object from one `/data/ChangeEvents` subscription. Account's table
/// already holds `BillingCity` as a number, a type its events cannot have: they go to the
/// dead-letter table (which carries the checkpoint) and stop nothing; Contact's fill its
/// table, and a second run with more events adds exactly the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_tables_per_object_resume_and_dead_letter_a_type_change() {
    use deltalake::kernel::{ArrayType, DataType, StructField};
    use sfzb_host::sink::typed::{HEADER, Storage};
    let dir = tempfile::tempdir().unwrap();
    let tables = dir.path().join("tables");
    let account = tables.join("Account");
    std::fs::create_dir_all(&account).unwrap();
    let mut columns: Vec<StructField> = HEADER
        .iter()
        .map(|(name, storage, _)| {
            let ty = match storage {
                Storage::Text => DataType::STRING,
                Storage::Int => DataType::INTEGER,
                Storage::Long => DataType::LONG,
                Storage::Timestamp => DataType::TIMESTAMP,
                Storage::TextList => {
                    DataType::Array(Box::new(ArrayType::new(DataType::STRING, true)))
                }
                other => unreachable!("no header column is {other:?}"),
            };
            StructField::new(*name, ty, true)
        })
        .collect();
    columns.push(StructField::new("BillingCity", DataType::LONG, true));
    let url = url::Url::from_directory_path(account.canonicalize().unwrap()).unwrap();
    deltalake::DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .create()
        .with_columns(columns)
        .await
        .unwrap();

    let sink = format!("delta:{}/{{object}}", tables.display());
    for (events, new) in [(20, 40), (30, 20)] {
        let sim = start(sim_config(&["Account", "Contact"], events)).await;
        let stats = run(plan(
            &sim,
            dir.path(),
            "/data/ChangeEvents",
            &["--sink", &sink, "--layout", "typed"],
        ))
        .await
        .unwrap();
        assert_eq!(
            stats.received, new,
            "resumed from the checkpoint in dead_letter"
        );
        assert_eq!(
            stats.dead_lettered,
            new / 2,
            "every Account event, no other"
        );
        sim.shutdown().await;
    }
    let contacts = delta_rows(&tables.join("Contact")).await;
    assert_eq!(contacts.len(), 30);
    assert_eq!(
        contacts
            .iter()
            .map(|(id, _)| id)
            .collect::<HashSet<_>>()
            .len(),
        30,
        "no event twice"
    );
    assert!(
        delta_rows(&account).await.is_empty(),
        "no row against the wrong type"
    );
    let dead = delta_rows_with(&tables.join("dead_letter"), Some("error")).await;
    assert_eq!(dead.len(), 30);
    for (_, replay, error) in &dead {
        let error = error.as_deref().unwrap();
        assert!(
            error.contains("BillingCity") && error.contains("BIGINT"),
            "{replay}: {error}"
        );
    }
    let stages = delta_rows_with(&tables.join("dead_letter"), Some("stage")).await;
    assert!(stages.iter().all(|(_, _, s)| s.as_deref() == Some("write")));
    assert!(
        checkpoint_files(&dir.path().join("state")).is_empty(),
        "the checkpoint is in the tables"
    );
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

/// The soak the fault campaign ran: a chain that routes by a field's value to a second
/// table, corrupt events for the dead-letter table, commits every 50 ms, and SIGKILL at
/// random points (many land between a sibling's commit and the main table's). At the end
/// every event is exactly once in the union of the three tables, each in the table its rule
/// names: corrupt ones dead-lettered, Rating = Warm routed, the rest in the main table.
#[test]
fn sigkill_soak_keeps_routed_and_dead_letter_tables_exactly_once() {
    const EVENTS: u64 = 30_000;
    const KILLS: usize = 24;
    let corrupt: Vec<u64> = (1..=EVENTS).filter(|p| p % 97 == 0).collect();
    let corrupt_list = corrupt
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let events = EVENTS.to_string();
    let (_sim, pubsub, login) = sim_process(&[
        "--entities",
        "Account",
        "--events",
        &events,
        "--corrupt-at",
        &corrupt_list,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let table = lake.join("accounts");
    let route = crate::guests::component("route");
    let host = |until_idle: &str| {
        let mut command = host_command(dir.path(), &pubsub, &login, "/data/AccountChangeEvent");
        command
            .arg("--sink")
            .arg(format!("delta:{}", table.display()))
            .args(["--flush-interval-ms", "50", "--batch-size", "25"])
            .args(["--max-in-flight", "50", "--until-idle", until_idle])
            .arg("--transform")
            .arg(&route)
            .args(["--transform-config", "route.by=field:Rating"])
            .args(["--transform-config", "route.table.Warm=warm_events"])
            .env("SFZB_CACHE_DIR", dir.path().join("cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let count = |path: std::path::PathBuf| {
        if path.join("_delta_log").exists() {
            runtime.block_on(delta_rows(&path)).len()
        } else {
            0
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(97);
    let mut progress = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..KILLS {
        let mut child = host("30").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(250..900)));
        child.kill().unwrap();
        child.wait().unwrap();
        progress.push(count(table.clone()) + count(lake.join("warm_events")));
        // Bounded in time: a machine far too slow stops early, and fails below.
        if started.elapsed() > Duration::from_secs(300) {
            break;
        }
    }
    assert!(
        progress.len() >= 20,
        "at least 20 kills: {}",
        progress.len()
    );
    assert!(
        progress
            .iter()
            .filter(|n| **n > 0 && (**n as u64) < EVENTS)
            .count()
            >= 10,
        "kills landed mid-stream: rows after each kill {progress:?}"
    );
    let last = host("3").status().unwrap();
    assert!(last.success());

    let rating = |json: &Option<String>| -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(json.as_deref()?).ok()?;
        value.get("Rating")?.as_str().map(str::to_string)
    };
    let main = runtime.block_on(delta_rows_with(&table, Some("record_data_json")));
    let warm = runtime.block_on(delta_rows_with(
        &lake.join("warm_events"),
        Some("record_data_json"),
    ));
    let dead = runtime.block_on(delta_rows(&lake.join("accounts_dead_letter")));
    for (_, replay, json) in &main {
        assert_ne!(
            rating(json).as_deref(),
            Some("Warm"),
            "event {replay} belongs in warm_events"
        );
        assert!(
            !corrupt.contains(replay),
            "corrupt event {replay} in the main table"
        );
    }
    for (_, replay, json) in &warm {
        assert_eq!(
            rating(json).as_deref(),
            Some("Warm"),
            "event {replay} in warm_events"
        );
    }
    assert!(!warm.is_empty(), "some events were routed");
    assert_eq!(
        dead.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        corrupt,
        "every corrupt event dead-lettered exactly once"
    );
    let mut all: Vec<u64> = main
        .iter()
        .map(|(_, r, _)| *r)
        .chain(warm.iter().map(|(_, r, _)| *r))
        .chain(dead.iter().map(|(_, r)| *r))
        .collect();
    all.sort_unstable();
    let missing: Vec<u64> = (1..=EVENTS)
        .filter(|p| all.binary_search(p).is_err())
        .collect();
    let mut twice = all.clone();
    twice.dedup();
    assert!(
        missing.is_empty() && twice.len() == all.len(),
        "every event exactly once: {} missing (first {:?}), {} duplicated",
        missing.len(),
        &missing[..missing.len().min(10)],
        all.len() - twice.len()
    );
}
