//! `sfzb-host dead-letter replay`: events a faulty transform dead-lettered land in the
//! target once the chain is fixed, exactly once, and a second replay writes nothing; a
//! replay neither moves the pipeline's checkpoint nor forgets a letter that fails again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::guests;
use crate::support::*;

const CHANNEL: &str = "/data/AccountChangeEvent";

fn cache() -> String {
    guests::dir().join("../cache").display().to_string()
}

/// The chain the runs use: `faulty` trapping on every `every`th event it sees (when
/// given), then `mask` hashing Phone with the key in `key_file`.
fn chain(every: Option<u32>, key_file: &Path) -> Vec<String> {
    let mut flags = vec!["--transform-cache-dir".to_string(), cache()];
    if let Some(every) = every {
        flags.extend(["--transform".into(), path("faulty")]);
        flags.extend(["--transform-config".into(), "faulty.mode=trap".into()]);
        flags.extend(["--transform-config".into(), format!("faulty.every={every}")]);
    }
    flags.extend(["--transform".into(), path("mask")]);
    for setting in ["fields=Phone", "mode=hash", "key=pii"] {
        flags.extend(["--transform-config".into(), format!("mask.{setting}")]);
    }
    flags.extend([
        "--transform-key".into(),
        format!("mask.pii=file:{}", key_file.display()),
    ]);
    flags
}

/// A simulator of `events` Account events, a directory, and the mask's key file in it.
async fn setup(events: u64) -> (sfzb_host::sim::Simulator, tempfile::TempDir, PathBuf) {
    let sim = start(sim_config(&["Account"], events)).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("pii.key");
    std::fs::write(&key, TEST_KEY).unwrap();
    (sim, dir, key)
}

fn path(guest: &str) -> String {
    guests::component(guest).display().to_string()
}

/// `sfzb-host dead-letter replay --from FROM --sink SINK` with `chain`, logged in to `sim`,
/// with `state` as its state directory: its exit status and standard output.
fn replay_letters(
    sim: &sfzb_host::sim::Simulator,
    state: &Path,
    from: &str,
    sink: &str,
    chain: &[String],
) -> (std::process::ExitStatus, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sfzb-host"))
        .args(["dead-letter", "replay", "--from", from, "--sink", sink])
        .arg("--state-dir")
        .arg(state)
        .args(["--pubsub-endpoint", &sim.pubsub_url()])
        .args(["--instance-url", &sim.login_url()])
        .args(["--username", "u", "--password", "p", "--channel", CHANNEL])
        .args(chain)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stdout.is_empty(),
        "the replay prints its summary; stderr: {stderr}"
    );
    (output.status, stdout)
}

/// Each row's record by replay id; a replay id twice fails.
fn records(rows: &[serde_json::Value]) -> BTreeMap<u64, String> {
    let mut records = BTreeMap::new();
    for row in rows {
        let record = row["record_data_json"].as_str().unwrap().to_string();
        assert!(
            records.insert(replay(row), record).is_none(),
            "replay id {} written twice",
            replay(row)
        );
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_through_the_fixed_chain_exactly_once() {
    let (sim, dir, key) = setup(50).await;
    let faulty = chain(Some(10), &key);
    let fixed = chain(None, &key);

    // What the fixed chain makes of every event, in a run of its own.
    let expected_dir = tempfile::tempdir().unwrap();
    run(plan(&sim, expected_dir.path(), CHANNEL, &args(&fixed)))
        .await
        .unwrap();
    let expected = records(&rows(&out(expected_dir.path())));
    assert_eq!(expected.len(), 50);

    run(plan(&sim, dir.path(), CHANNEL, &args(&faulty)))
        .await
        .unwrap();
    let dead_letters = rows(&dead(dir.path()));
    assert_eq!(dead_letters.len(), 5, "every 10th event dead-lettered");
    assert_eq!(rows(&out(dir.path())).len(), 45);

    // The author's loop reads dead letters too, with the schemas the run kept.
    let schemas = format!("--schemas={}", dir.path().join("state/schemas").display());
    let tested = transform_outputs(
        &guests::component("mask"),
        &dead(dir.path()),
        &[
            "fields=Phone",
            "mode=hash",
            "key=pii",
            "--key=pii=env:SFZB_TEST_KEY",
            &schemas,
        ],
        Path::new(&cache()),
    );
    let tested: BTreeMap<u64, String> = tested
        .iter()
        .map(|o| {
            (
                replay(&o["row"]),
                o["row"]["record_data_json"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        tested.keys().copied().collect::<Vec<_>>(),
        [10, 20, 30, 40, 50]
    );
    assert!(tested.iter().all(|(r, record)| expected[r] == *record));
    // Without --schemas: the state directory the run's variable names.
    let hash = [
        "fields=Phone",
        "mode=hash",
        "key=pii",
        "--key=pii=env:SFZB_TEST_KEY",
    ];
    let output = transform_test_command(
        &guests::component("mask"),
        &dead(dir.path()),
        &hash,
        Path::new(&cache()),
    )
    .env("SFZB_STATE_DIR", dir.path().join("state"))
    .current_dir(dir.path())
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 5);

    // A state directory without the run's schemas: the replay fetches them (GetSchema).
    let fresh = dir.path().join("replay-state");
    let from = format!("jsonl:{}", dead(dir.path()).display());
    let sink = format!("jsonl:{}", out(dir.path()).display());

    // The chain not fixed yet: every letter fails again, and stays.
    let (status, summary) = replay_letters(&sim, &fresh, &from, &sink, &chain(Some(1), &key));
    assert_eq!(status.code(), Some(1), "{summary}");
    assert!(summary.contains("5 still failing"), "{summary}");
    assert_eq!(
        summary.matches("still failing: org").count(),
        5,
        "{summary}"
    );
    assert!(
        summary.contains("trapped"),
        "the reason is given: {summary}"
    );
    assert_eq!(rows(&out(dir.path())).len(), 45, "nothing written");

    let (status, summary) = replay_letters(&sim, &fresh, &from, &sink, &fixed);
    assert!(status.success(), "{summary}");
    assert!(
        summary.starts_with("Replayed 5 of 5 dead letters") && summary.contains("5 rows written"),
        "{summary}"
    );
    let schema_id = dead_letters[0]["schema_id"].as_str().unwrap();
    assert!(
        fresh.join(format!("schemas/{schema_id}.json")).is_file(),
        "the replay fetched the schema and kept it"
    );
    let replayed = records(&rows(&out(dir.path())));
    assert_eq!(
        replayed, expected,
        "every event once, masked once, as the fixed chain masks it"
    );

    let (status, summary) = replay_letters(&sim, &fresh, &from, &sink, &fixed);
    assert!(status.success(), "{summary}");
    assert!(
        summary.starts_with("Replayed 0 of 5") && summary.contains("5 already replayed"),
        "{summary}"
    );
    assert_eq!(
        rows(&out(dir.path())).len(),
        50,
        "the second replay wrote nothing"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_table_replays_into_delta_once_and_the_checkpoint_stays() {
    // The last letter (50) comes before the last event (55): a replay that moved the
    // pipeline's checkpoint to it would have the pipeline write 51..55 again.
    let (sim, dir, key) = setup(55).await;
    let table = dir.path().join("accounts");
    let sink = format!("delta:{}", table.display());
    let mut flags = chain(Some(10), &key);
    flags.extend(["--sink".into(), sink.clone()]);
    run(plan(&sim, dir.path(), CHANNEL, &args(&flags)))
        .await
        .unwrap();
    let positions = |rows: Vec<(String, u64)>| rows.into_iter().map(|(_, r)| r).collect::<Vec<_>>();
    assert_eq!(
        positions(delta_rows(&dir.path().join("accounts_dead_letter")).await),
        [10, 20, 30, 40, 50]
    );

    let from = format!(
        "delta:{}",
        dir.path().join("accounts_dead_letter").display()
    );
    let (status, summary) = replay_letters(
        &sim,
        &dir.path().join("state"),
        &from,
        &sink,
        &chain(None, &key),
    );
    assert!(status.success(), "{summary}");
    assert!(summary.starts_with("Replayed 5 of 5"), "{summary}");
    assert_eq!(
        positions(delta_rows(&table).await),
        (1..=55).collect::<Vec<_>>()
    );
    let (status, summary) = replay_letters(
        &sim,
        &dir.path().join("state"),
        &from,
        &sink,
        &chain(None, &key),
    );
    assert!(
        status.success() && summary.contains("5 already replayed"),
        "{summary}"
    );

    // The pipeline resumes from its own checkpoint, which the replay did not move.
    let stats = run(plan(&sim, dir.path(), CHANNEL, &args(&flags)))
        .await
        .unwrap();
    assert_eq!(stats.written, 0, "resumed after the last event");
    assert_eq!(
        positions(delta_rows(&table).await),
        (1..=55).collect::<Vec<_>>()
    );
    sim.shutdown().await;
}
