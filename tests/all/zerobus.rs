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

/// A row the server refuses (INVALID_ARGUMENT) on a stream three tenants share: the
/// stream fails for all three, yet only the row is dead-lettered, with the server's
/// reason; every other row of every tenant arrives, and no subscription restarts (before,
/// the refusing tenant retried the row forever and its neighbours restarted with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_is_dead_lettered_and_its_neighbours_on_the_stream_go_on() {
    use std::sync::atomic::Ordering::Relaxed;
    const ORGS: usize = 3;
    let sim = start(sfzb_host::sim::SimConfig {
        orgs: ORGS,
        ..sim_config(&["Account"], 300)
    })
    .await;
    let refused_org = sim.orgs[1].org_id.clone();
    let zerobus = ZerobusServerHandle::start(ZerobusFaults {
        reject_replay_id: Some("00000000000000c8".into()),
        reject_org_id: Some(refused_org.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, tenants_file(ORGS)).unwrap();
    let endpoint = zerobus.url();
    let mut plan = tenants_args(
        &sim,
        dir.path(),
        &tenants,
        &[
            "--sink",
            "zerobus:main.sfzb.accounts",
            "--zerobus-endpoint",
            &endpoint,
            "--until-idle",
            "2",
        ],
    )
    .plan()
    .unwrap();
    plan.options.until_idle = None;
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = sfzb_host::start(plan, cancel.clone()).await.unwrap();
    let healths = started.registry().list();
    let run = tokio::spawn(started.wait());
    let rows_of = |org: &str| -> HashSet<String> {
        zerobus
            .org_rows("main.sfzb.accounts")
            .into_iter()
            .filter(|(_, _, o)| o == org)
            .map(|(_, replay, _)| replay)
            .collect()
    };
    wait_for("every other row of every tenant", || {
        sim.orgs.iter().all(|org| {
            let expected = if org.org_id == refused_org { 299 } else { 300 };
            rows_of(&org.org_id).len() == expected
        })
    })
    .await;
    assert!(
        !rows_of(&refused_org).contains("00000000000000c8"),
        "the refused row is not stored"
    );
    wait_for("the refused row dead-lettered", || {
        !zerobus.rows("main.sfzb.accounts_dead_letter").is_empty()
    })
    .await;
    cancel.cancel();
    let report = run.await.unwrap();
    let restarts: u64 = healths.iter().map(|h| h.restarts.load(Relaxed)).sum();
    assert_eq!(restarts, 0, "no subscription restarted");
    for outcome in &report.subscriptions {
        let stats = outcome.result.as_ref().expect("each ends cleanly");
        let expected = if outcome.name.starts_with("org-2/") {
            1
        } else {
            0
        };
        assert_eq!(stats.dead_lettered, expected, "{}", outcome.name);
    }
    assert_eq!(zerobus.rows("main.sfzb.accounts_dead_letter").len(), 1);
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
        workspace.workspace.reference_rows.lock().unwrap().insert(
            "main.sfzb.accounts".into(),
            vec![
                ("Account".into(), "000000000000003c".into()),
                // Written later by another channel of the org (`/data/ChangeEvents`):
                // its replay ids are another sequence, not a position of this one.
                ("Contact".into(), "0000000000000050".into()),
            ],
        );
        let stats = setup.run(&[]).await.unwrap();
        assert_eq!(
            stats.received, 40,
            "events after replay id 60, the newest Account row, not another channel's newer row"
        );
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

/// Rows past what Zerobus takes in one call: a batch whose rows add up to more than the
/// SDK's limit (10 MiB − 64 KiB) goes in several calls, each under it, and every row
/// arrives; a single row over it is dead-lettered with the reason and the others are
/// written. Before, either failed the whole subscription with "Ingest payload too large".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_the_payload_limit_go_in_several_calls_and_one_too_large_is_dead_lettered() {
    use std::sync::atomic::Ordering::Relaxed;
    let sim = start(sim_config(&["Account"], 40)).await;
    let zerobus = ZerobusServerHandle::start(ZerobusFaults::default())
        .await
        .unwrap();
    let faulty = crate::guests::component("faulty");
    let endpoint = zerobus.url();
    let run_with = |dir: &std::path::Path, table: &str, settings: &[&str]| {
        let mut flags = vec![
            "--sink".to_string(),
            format!("zerobus:{table}"),
            "--zerobus-endpoint".into(),
            endpoint.clone(),
            "--transform".into(),
            faulty.display().to_string(),
            "--transform-config".into(),
            "faulty.mode=set-bomb".into(),
        ];
        for setting in settings {
            flags.extend(["--transform-config".into(), format!("faulty.{setting}")]);
        }
        plan(&sim, dir, "/data/AccountChangeEvent", &args(&flags))
    };
    // 20 fields of 16 KiB each: rows of ~0.7 MB, 40 of them in one batch.
    let dir = tempfile::tempdir().unwrap();
    let stats = run(run_with(dir.path(), "main.sfzb.wide", &["kib=16"]))
        .await
        .unwrap();
    assert_eq!(stats.written, 40);
    assert_eq!(
        zerobus.rows("main.sfzb.wide").len(),
        40,
        "every row arrived"
    );
    let largest = zerobus.received.largest_call.load(Relaxed) as usize;
    assert!(
        largest <= sfzb_host::sink::zerobus::MAX_CALL_BYTES && largest > 4 << 20,
        "calls of up to the limit: the largest {largest} bytes"
    );
    assert!(
        zerobus.received.calls.load(Relaxed) >= 3,
        "the batch went in several calls"
    );

    // Text fields of 1,000 KiB each on every 10th event (the transform allowed to add
    // that much): those rows are over 10 MiB alone.
    let dir = tempfile::tempdir().unwrap();
    let mut huge = run_with(dir.path(), "main.sfzb.huge", &["every=10", "kib=1000"]);
    for chain in huge
        .subscriptions
        .iter_mut()
        .map(|s| &mut s.config.transforms)
    {
        for transform in chain {
            transform.limits.max_added_bytes = 64 << 20;
        }
    }
    let stats = run(huge).await.unwrap();
    assert_eq!((stats.written, stats.dead_lettered), (36, 4));
    assert_eq!(zerobus.rows("main.sfzb.huge").len(), 36);
    assert_eq!(zerobus.rows("main.sfzb.huge_dead_letter").len(), 4);
    zerobus.shutdown().await;
    sim.shutdown().await;
}

/// Subscriptions that end leave their stream slots: a stream no subscription writes is
/// closed. 600 writers in turn, each one writing and ending, beside one that stays:
/// never more than one stream open (before, a slot was given per writer ever counted, so
/// every 250 writers opened a stream that stayed open), and none once the last is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_closed_when_its_last_subscription_leaves() {
    use sfzb_host::sink::zerobus::{ZerobusPool, ZerobusSettings, ZerobusSink};
    use sfzb_host::sink::{DeadLetter, Layout, Stage};
    use std::sync::atomic::Ordering::Relaxed;
    let zerobus = ZerobusServerHandle::start(ZerobusFaults::default())
        .await
        .unwrap();
    let settings = ZerobusSettings {
        endpoint: zerobus.url(),
        max_inflight: 10,
        ..Default::default()
    };
    let pool = std::sync::Arc::new(ZerobusPool::new(&settings, None));
    let letter = |n: usize| DeadLetter {
        stage: Stage::Write,
        error: "test".into(),
        org_id: "00D000000000001".into(),
        channel: "/data/AccountChangeEvent".into(),
        replay_id: format!("{n:016x}"),
        event_id: format!("e{n}"),
        schema_id: "s".into(),
        payload: Vec::new(),
        dead_lettered_at: 0,
    };
    let open = |pool: &std::sync::Arc<ZerobusPool>| {
        ZerobusSink::open("main.sfzb.t", pool, Layout::Reference, false).unwrap()
    };
    let mut staying = open(&pool);
    staying.write_dead_letters(&[letter(0)]).await.unwrap();
    staying.flush().await.unwrap();
    for n in 1..=600 {
        let mut writer = open(&pool);
        writer.write_dead_letters(&[letter(n)]).await.unwrap();
        writer.flush().await.unwrap();
        drop(writer);
        assert_eq!(pool.streams_in_use().load(Relaxed), 1, "writer {n}");
    }
    assert_eq!(zerobus.rows("main.sfzb.t_dead_letter").len(), 601);
    assert_eq!(
        zerobus.received.streams.load(Relaxed),
        1,
        "one stream served them all"
    );
    drop(staying);
    assert_eq!(pool.streams_in_use().load(Relaxed), 0);
    wait_for("the last stream closed", || {
        zerobus.received.open_streams.load(Relaxed) == 0
    })
    .await;
    zerobus.shutdown().await;
}

/// A typed table's column retyped by hand to a type sfzb-host does not write (DECIMAL,
/// FLOAT): the column stays known, so the events of its object are dead-lettered with the
/// reason and the fix, and nothing tries to add the column again (before, the column was
/// invisible and `ALTER TABLE … ADD COLUMNS` of an existing name was tried forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_retyped_by_hand_is_a_dead_letter_with_the_fix_never_a_retry_loop() {
    use sfzb_host::sim::databricks::WorkspaceServer;
    let sim = start(sim_config(&["Account"], 20)).await;
    let workspace = WorkspaceServer::start().await.unwrap();
    let zerobus = ZerobusServerHandle::start_with_workspace(
        ZerobusFaults::default(),
        workspace.workspace.clone(),
    )
    .await
    .unwrap();
    let (ws, zb) = (workspace.url(), zerobus.url());
    let dir = tempfile::tempdir().unwrap();
    let flags = |replay: &'static str| {
        let mut flags = vec![
            "--sink".to_string(),
            "zerobus:main.sf.accounts".into(),
            "--zerobus-endpoint".into(),
            zb.clone(),
            "--databricks-workspace-url".into(),
            ws.clone(),
            "--sql-warehouse-id".into(),
            "wh1".into(),
            "--layout".into(),
            "typed".into(),
        ];
        if !replay.is_empty() {
            flags.extend(["--replay".into(), replay.into()]);
        }
        flags
    };
    let first = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &args(&flags("")),
    ))
    .await
    .unwrap();
    assert_eq!(first.written, 20);
    let retyped = {
        let mut columns = workspace.workspace.columns.lock().unwrap();
        let table = columns.get_mut("main.sf.accounts").unwrap();
        let column = table
            .iter_mut()
            .find(|(_, ty)| ty == "DOUBLE")
            .expect("a DOUBLE column");
        column.1 = "DECIMAL(18,2)".into();
        column.0.clone()
    };
    let statements_before = workspace.workspace.statements.lock().unwrap().len();
    let again = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &args(&flags("earliest")),
    ))
    .await
    .expect("the run ends: a misfit is a dead letter, not a retry loop");
    assert_eq!((again.written, again.dead_lettered), (0, 20), "{again:?}");
    let statements = workspace.workspace.statements.lock().unwrap()[statements_before..].to_vec();
    assert!(
        !statements.iter().any(|s| s.contains("ADD COLUMNS")),
        "no column added again: {statements:#?}"
    );
    assert_eq!(
        zerobus.rows("main.sf.accounts").len(),
        20,
        "the first run's rows only"
    );
    assert_eq!(zerobus.rows("main.sf.accounts_dead_letter").len(), 20);
    println!("retyped column: {retyped}");
    zerobus.shutdown().await;
    workspace.shutdown();
    sim.shutdown().await;
}
