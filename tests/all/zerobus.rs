//! The Zerobus sink through the official SDK against a Zerobus test server on loopback.

use std::collections::HashSet;
use std::time::Duration;

use sfzb_host::sim::zerobus::{ZerobusFaults, ZerobusServerHandle};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_and_a_closed_stream_is_recovered() {
    let sim = start(sim_config(&["Account", "Contact"], 600)).await;
    let zerobus = ZerobusServerHandle::start(ZerobusFaults {
        close_after: Some(400),
        ack_delay: Duration::from_millis(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = zerobus.url();
    let stats = run(plan(
        &sim,
        dir.path(),
        "/data/ChangeEvents",
        &[
            "--sink",
            "zerobus:main.sfzb.change_events",
            "--zerobus-endpoint",
            &endpoint,
            "--zerobus-max-inflight",
            "50",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(stats.written, 1200);
    let rows = zerobus.rows("main.sfzb.change_events");
    let unique: HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), 1200, "every event arrived");
    let duplicates = rows.len() - unique.len();
    assert!(
        duplicates <= 50 * 100,
        "duplicates bounded by the in-flight window: {duplicates}"
    );
    assert!(
        zerobus
            .received
            .streams
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "the SDK reopened the stream"
    );
    assert_eq!(stats.checkpoint.as_deref(), Some("00000000000004b0"));
    zerobus.shutdown().await;
    sim.shutdown().await;
}

/// A plaintext (`http://`) Zerobus endpoint that checks its bearer token: with a client id
/// and secret given, the SDK fetches a token from the workspace's OIDC endpoint and sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_on_a_plaintext_endpoint_too() {
    let sim = start(sim_config(&["Account"], 50)).await;
    let workspace = sfzb_host::sim::databricks::WorkspaceServer::start()
        .await
        .unwrap();
    let zerobus = ZerobusServerHandle::start(ZerobusFaults {
        require_token: Some("sim-databricks-token".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, workspace_url) = (zerobus.url(), workspace.url());
    let stats = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &[
            "--sink",
            "zerobus:main.sfzb.accounts",
            "--zerobus-endpoint",
            &endpoint,
            "--databricks-workspace-url",
            &workspace_url,
            "--databricks-client-id",
            "sp",
            "--databricks-client-secret",
            "sp-secret",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(stats.written, 50);
    assert_eq!(zerobus.rows("main.sfzb.accounts").len(), 50);
    zerobus.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_record_stops_the_run_without_passing_it_and_a_retry_delivers_it() {
    let sim = start(sim_config(&["Account"], 300)).await;
    let faults = ZerobusFaults {
        reject_replay_id: Some("00000000000000c8".into()),
        ..Default::default()
    };
    let zerobus = ZerobusServerHandle::start(faults).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = zerobus.url();
    let flags = [
        "--sink",
        "zerobus:main.sfzb.accounts",
        "--zerobus-endpoint",
        endpoint.as_str(),
    ];
    let err = run(plan(&sim, dir.path(), "/data/AccountChangeEvent", &flags))
        .await
        .unwrap_err()
        .to_string();
    // The SDK reports either the server's rejection or, when a later ingest sees the failed
    // stream first, "Stream is closed": both stop the run on this table.
    assert!(err.contains("Zerobus table main.sfzb.accounts"), "{err}");
    let before: HashSet<String> = zerobus
        .rows("main.sfzb.accounts")
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert!(
        !before.contains("00000000000000c8"),
        "the rejected record is not stored"
    );

    zerobus
        .received
        .rejecting
        .store(false, std::sync::atomic::Ordering::Relaxed);
    run(plan(&sim, dir.path(), "/data/AccountChangeEvent", &flags))
        .await
        .unwrap();
    let after: HashSet<String> = zerobus
        .rows("main.sfzb.accounts")
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        after.len(),
        300,
        "the retry after the restart delivered everything, the rejected record included"
    );
    zerobus.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_rows_and_dead_letters_get_their_own_tables() {
    let mut config = sim_config(&["Account", "Contact"], 50);
    config.event_faults.corrupt_at = vec![5];
    let sim = start(config).await;
    let zerobus = ZerobusServerHandle::start(ZerobusFaults::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = zerobus.url();
    let cache = crate::guests::dir().join("../cache").display().to_string();
    let route = crate::guests::component("route").display().to_string();
    run(plan(
        &sim,
        dir.path(),
        "/data/ChangeEvents",
        &[
            "--sink",
            "zerobus:main.sfzb.accounts",
            "--zerobus-endpoint",
            &endpoint,
            "--transform-cache-dir",
            &cache,
            "--transform",
            &route,
            "--transform-config",
            "route.table.Contact=contacts",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(zerobus.rows("main.sfzb.accounts").len(), 49);
    assert_eq!(zerobus.rows("main.sfzb.contacts").len(), 50);
    assert_eq!(
        zerobus
            .received
            .records
            .load(std::sync::atomic::Ordering::Relaxed),
        100,
        "99 rows and 1 dead letter"
    );
    assert!(zerobus.rows("main.sfzb.accounts_dead_letter").len() == 1);
    zerobus.shutdown().await;
    sim.shutdown().await;
}

/// The host in its own process, killed with SIGKILL at random points and restarted, writing
/// to a Zerobus test server: every event arrives, and what comes twice is no more than the
/// true bound: at each kill, the rows the server already held past the checkpoint (written
/// and acknowledged since the last checkpoint commit: a flush interval's worth) plus what
/// was in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_and_bounds_duplicates() {
    use rand::{Rng, SeedableRng};
    use std::process::Stdio;
    const EVENTS: u64 = 15_000;
    const KILLS: usize = 5;
    const MAX_IN_FLIGHT: usize = 200;
    let mut config = sim_config(&["Account"], EVENTS);
    config.keepalive = Duration::from_millis(500);
    let sim = start(config).await;
    let zerobus = ZerobusServerHandle::start(ZerobusFaults::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (pubsub, login, endpoint) = (sim.pubsub_url(), sim.login_url(), zerobus.url());
    let host = |until_idle: &str| {
        let mut command = host_command(dir.path(), &pubsub, &login, "/data/AccountChangeEvent");
        command
            .args([
                "--sink",
                "zerobus:main.sfzb.accounts",
                "--zerobus-endpoint",
                &endpoint,
            ])
            .args([
                "--flush-interval-ms",
                "50",
                "--batch-size",
                "20",
                "--max-in-flight",
                &MAX_IN_FLIGHT.to_string(),
                "--until-idle",
                until_idle,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    // The checkpoint the killed process left: the position every later row is past.
    let checkpoint = || -> u64 {
        // A kill mid-write can leave a `.json.tmp` beside it: only the renamed file counts.
        let file = sfzb_host::checkpoint::LocalFile::path_in(&dir.path().join(".sfzb-state"));
        std::fs::read_to_string(file).map_or(0, |text| {
            let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
            let replay = stored["checkpoints"][0]["replay_id"].as_str().unwrap();
            u64::from_str_radix(replay, 16).unwrap()
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut progress = Vec::new();
    let mut past_checkpoint = Vec::new();
    for _ in 0..KILLS {
        let mut child = host("30").spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1000))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let rows = zerobus.rows("main.sfzb.accounts");
        let at = checkpoint();
        past_checkpoint.push(
            rows.iter()
                .filter(|(_, r)| u64::from_str_radix(r, 16).unwrap() > at)
                .count(),
        );
        progress.push(rows.len());
    }
    let mut last = host("3");
    let status = tokio::task::spawn_blocking(move || last.status().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    assert!(
        progress.iter().any(|n| *n > 0 && (*n as u64) < EVENTS),
        "kills landed mid-stream: {progress:?}"
    );
    let rows = zerobus.rows("main.sfzb.accounts");
    let unique: HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len() as u64, EVENTS, "every event arrived");
    let duplicates = rows.len() - unique.len();
    let bound = past_checkpoint.iter().sum::<usize>() + KILLS * MAX_IN_FLIGHT;
    println!(
        "{duplicates} duplicates after {KILLS} kills; rows past the checkpoint at each kill {past_checkpoint:?} (bound {bound})"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed {bound}: rows past each kill's checkpoint {past_checkpoint:?} plus {MAX_IN_FLIGHT} in flight per kill"
    );
    zerobus.shutdown().await;
    sim.shutdown().await;
}

mod tables {
    use sfzb_host::sim::databricks::{SqlFault, WorkspaceServer};
    use sfzb_host::sim::zerobus::{ZerobusFaults, ZerobusServerHandle};

    use crate::support::*;

    /// A simulated org, a Zerobus test server and a test workspace, and a run directory.
    struct Setup {
        sim: sfzb_host::sim::Simulator,
        zerobus: ZerobusServerHandle,
        workspace: WorkspaceServer,
        dir: tempfile::TempDir,
    }

    impl Setup {
        async fn start(events: u64) -> Setup {
            Setup {
                sim: start(sim_config(&["Account"], events)).await,
                zerobus: ZerobusServerHandle::start(ZerobusFaults::default())
                    .await
                    .unwrap(),
                workspace: WorkspaceServer::start().await.unwrap(),
                dir: tempfile::tempdir().unwrap(),
            }
        }

        /// Runs the Account channel into `main.sfzb.accounts` through warehouse `wh1`.
        async fn run(
            &self,
            extra: &[&str],
        ) -> Result<sfzb_host::pipeline::SubscriptionStats, sfzb_host::Error> {
            let (ws, zb) = (self.workspace.url(), self.zerobus.url());
            let mut flags = vec![
                "--sink",
                "zerobus:main.sfzb.accounts",
                "--zerobus-endpoint",
                &zb,
                "--databricks-workspace-url",
                &ws,
                "--sql-warehouse-id",
                "wh1",
            ];
            flags.extend_from_slice(extra);
            run(plan(
                &self.sim,
                self.dir.path(),
                "/data/AccountChangeEvent",
                &flags,
            ))
            .await
        }

        async fn shutdown(self) {
            self.workspace.shutdown();
            self.zerobus.shutdown().await;
            self.sim.shutdown().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_table_is_created_and_the_checkpoint_lives_next_to_it() {
        let setup = Setup::start(100).await;
        let workspace = &setup.workspace;
        let stats = setup.run(&[]).await.unwrap();
        assert_eq!(stats.received, 100, "a new table backfills from EARLIEST");
        let statements = workspace.workspace.statements.lock().unwrap().clone();
        let create = statements
            .iter()
            .find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS `main`.`sfzb`.`accounts`"))
            .expect("the table was created");
        assert!(
            create.contains("'delta.enableRowTracking' = 'false'")
                && create.contains("payload_binary BINARY")
        );
        let checkpoints = workspace.workspace.checkpoints.lock().unwrap().clone();
        let stored: Vec<&String> = checkpoints.values().collect();
        assert_eq!(stored, [&"0000000000000064".to_string()]);
        assert!(
            checkpoint_files(&setup.dir.path().join("state")).is_empty(),
            "no local checkpoint file"
        );

        let again = setup.run(&[]).await.unwrap();
        assert_eq!(again.received, 0, "resumed from the checkpoint table");
        assert_eq!(setup.zerobus.rows("main.sfzb.accounts").len(), 100);
        setup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_table_the_reference_wrote_resumes_after_its_newest_row() {
        let setup = Setup::start(100).await;
        let workspace = &setup.workspace;
        workspace
            .workspace
            .tables
            .lock()
            .unwrap()
            .insert("main.sfzb.accounts".into());
        workspace
            .workspace
            .reference_rows
            .lock()
            .unwrap()
            .insert("main.sfzb.accounts".into(), "000000000000003c".into());
        let stats = setup.run(&[]).await.unwrap();
        assert_eq!(stats.received, 40, "events after replay id 60");
        assert!(
            !workspace
                .workspace
                .statements
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS `main`.`sfzb`.`accounts`"))
        );
        setup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_or_failing_warehouse_stops_the_run_before_it_subscribes() {
        let setup = Setup::start(10).await;
        let workspace = &setup.workspace;
        *workspace.workspace.fault.lock().unwrap() = SqlFault::Slow;
        let err = setup
            .run(&["--sql-timeout-secs", "2"])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("did not finish") && err.contains("wh1"),
            "{err}"
        );
        *workspace.workspace.fault.lock().unwrap() = SqlFault::Failing;
        let err = setup.run(&[]).await.unwrap_err().to_string();
        assert!(err.contains("HTTP 500"), "{err}");
        *workspace.workspace.fault.lock().unwrap() = SqlFault::None;
        let err = setup
            .run(&["--auto-create-table=false"])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist and auto-create is off"),
            "{err}"
        );
        assert_eq!(
            setup
                .sim
                .stats
                .subscribes
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "never subscribed, never from LATEST"
        );
        setup.shutdown().await;
    }
}

/// Typed tables through Zerobus, a table per object: each is created through the SQL
/// Statement API with its generated DDL, widened by `ALTER TABLE … ADD COLUMNS` when the
/// schema gains a field, and the test server (which, as Zerobus does, refuses a stream whose
/// descriptor has a field the table lacks) decodes every row with the descriptor it was
/// given. The values are those of the same events written as typed JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_tables_are_created_and_widened_before_rows_use_their_new_columns() {
    use sfzb_host::sim::databricks::WorkspaceServer;
    let mut config = sim_config(&["Account", "Contact"], 40);
    config.event_faults.schema_change_at = Some(41);
    let sim = start(config).await;
    let workspace = WorkspaceServer::start().await.unwrap();
    let zerobus = ZerobusServerHandle::start_with_workspace(
        ZerobusFaults::default(),
        workspace.workspace.clone(),
    )
    .await
    .unwrap();
    let (ws, zb) = (workspace.url(), zerobus.url());
    let dir = tempfile::tempdir().unwrap();
    // Batches of 10, so the first rows are all of the first schema and a later batch
    // brings the new field.
    let typed = ["--layout", "typed", "--batch-size", "10"];
    let mut flags = vec![
        "--sink",
        "zerobus:main.sf.{object}",
        "--zerobus-endpoint",
        &zb,
        "--databricks-workspace-url",
        &ws,
        "--sql-warehouse-id",
        "wh1",
    ];
    flags.extend(typed);
    let stats = run(plan(&sim, dir.path(), "/data/ChangeEvents", &flags))
        .await
        .unwrap();
    assert_eq!((stats.written, stats.dead_lettered), (80, 0), "{stats:?}");
    let json_dir = tempfile::tempdir().unwrap();
    let jsonl = format!("jsonl:{}/{{object}}.jsonl", json_dir.path().display());
    let mut flags = vec!["--sink", jsonl.as_str()];
    flags.extend(typed);
    run(plan(&sim, json_dir.path(), "/data/ChangeEvents", &flags))
        .await
        .unwrap();

    let received = &zerobus.received;
    assert_eq!(
        received.refused.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let statements = workspace.workspace.statements.lock().unwrap().clone();
    for object in ["Account", "Contact"] {
        let table = format!("main.sf.{object}");
        let ident = format!("`main`.`sf`.`{object}`");
        let create = statements
            .iter()
            .position(|s| s.starts_with(&format!("CREATE TABLE IF NOT EXISTS {ident} (")))
            .unwrap_or_else(|| panic!("{table} was created: {statements:#?}"));
        assert!(statements[create].contains("'delta.enableRowTracking' = 'false'"));
        assert!(
            !statements[create].contains("Sim_Tier__c"),
            "created with the first schema"
        );
        assert!(statements[create].contains("`BillingCity` STRING") == (object == "Account"));
        let alter = statements
            .iter()
            .position(|s| {
                s == &format!("ALTER TABLE {ident} ADD COLUMNS (\n  `Sim_Tier__c` STRING\n)")
            })
            .unwrap_or_else(|| panic!("{table} was widened: {statements:#?}"));
        assert!(create < alter);

        let columns = workspace.workspace.columns.lock().unwrap()[&table].clone();
        let mut got_rows = received.typed_rows.lock().unwrap()[&table].clone();
        got_rows.sort_by_key(|r| r["replay_id"].as_str().unwrap().to_string());
        assert_eq!(got_rows.len(), 40, "{table}");
        assert!(
            got_rows.iter().any(|r| r.contains_key("Sim_Tier__c")),
            "rows fill the new column"
        );
        let mut expected = rows(&json_dir.path().join(format!("{object}.jsonl")));
        expected.sort_by_key(|r| r["replay_id"].as_str().unwrap().to_string());
        assert_eq!(expected.len(), 40);
        for (got, want) in got_rows.iter().zip(&expected) {
            let want = want.as_object().unwrap();
            // When each run wrote its rows differs, by design.
            for (name, ty) in columns.iter().filter(|(n, _)| n != "processed_timestamp") {
                let value = want.get(name).cloned().unwrap_or(serde_json::Value::Null);
                let value = match (ty.as_str(), value) {
                    (_, serde_json::Value::Null) => None,
                    ("TIMESTAMP", v) => Some(serde_json::Value::from(
                        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
                            .unwrap()
                            .timestamp_micros(),
                    )),
                    ("DATE", v) => Some(serde_json::Value::from(
                        (chrono::NaiveDate::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d")
                            .unwrap()
                            - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
                        .num_days(),
                    )),
                    // An empty repeated field is no field at all.
                    (_, serde_json::Value::Array(a)) if a.is_empty() => None,
                    (_, v) => Some(v),
                };
                assert_eq!(got.get(name), value.as_ref(), "{table} {name}: {got:?}");
            }
        }
    }
    workspace.shutdown();
    zerobus.shutdown().await;
    sim.shutdown().await;
}
