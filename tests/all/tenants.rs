//! Many orgs: the multi-org simulator and tenants files.

use std::collections::HashSet;

use sfzb_host::config::RunPlan;
use sfzb_host::sim::{SimConfig, Simulator};

use crate::support::*;

/// A plan from flags for every tenant of `tenants`, one jsonl file each under `dir`.
fn tenants_plan(sim: &Simulator, dir: &std::path::Path, tenants: &std::path::Path) -> RunPlan {
    tenants_args(sim, dir, tenants, &["--until-idle", "1"])
        .plan()
        .expect("plan is valid")
}

/// Asserts that no subscription of `report` failed, naming the ones that did.
fn every_subscription_ended_cleanly(report: &sfzb_host::RunReport) {
    for outcome in &report.subscriptions {
        assert!(
            outcome.result.is_ok(),
            "{}: {:?}",
            outcome.name,
            outcome.result
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_reads_its_own_org_and_a_bad_entry_stops_only_itself() {
    let sim = start(SimConfig {
        orgs: 4,
        ..sim_config(&["Account", "Contact"], 20)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        "[org-1]\nclient-id = \"sim-client-1\"\nclient-secret = \"sim-secret-1\"\n\
         [org-2]\nclient-id = \"sim-client-2\"\nclient-secret = { env = \"SFZB_TEST_ORG2_SECRET\" }\n\
         [org-3]\nclient-id = \"sim-client-3\"\nclient-secret = { file = \"org-3.secret\" }\n\
         [wrong-secret]\nclient-id = \"sim-client-4\"\nclient-secret = \"not-it\"\n\
         [no-secret]\nclient-id = \"sim-client-4\"\n",
    )
    .unwrap();
    // SAFETY: set before any thread of this test reads the environment, and read only here.
    unsafe { std::env::set_var("SFZB_TEST_ORG2_SECRET", "sim-secret-2") };
    std::fs::write(dir.path().join("org-3.secret"), "sim-secret-3\n").unwrap();

    let plan = tenants_plan(&sim, dir.path(), &tenants);
    assert_eq!(
        plan.rejected_tenants.len(),
        1,
        "{:?}",
        plan.rejected_tenants
    );
    let (name, reason) = &plan.rejected_tenants[0];
    assert_eq!(name, "no-secret");
    assert!(
        reason.contains("tenants.no-secret.client-secret"),
        "{reason}"
    );
    let names: Vec<_> = plan.subscriptions.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "org-1/AccountChangeEvent",
            "org-2/AccountChangeEvent",
            "org-3/AccountChangeEvent",
            "wrong-secret/AccountChangeEvent"
        ]
    );

    let report = sfzb_host::run(plan, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let mut event_ids = HashSet::new();
    for outcome in &report.subscriptions {
        let tenant = outcome.name.split('/').next().unwrap();
        if tenant == "wrong-secret" {
            let error = outcome.result.as_ref().unwrap_err().to_string();
            assert!(error.contains("invalid client credentials"), "{error}");
            continue;
        }
        let stats = outcome.result.as_ref().unwrap();
        assert_eq!(stats.written, 20, "{}", outcome.name);
        let n: usize = tenant.trim_start_matches("org-").parse().unwrap();
        let rows = rows(&dir.path().join(format!("{tenant}.jsonl")));
        assert_eq!(
            rows.iter().map(replay).collect::<Vec<_>>(),
            positions(0, 2, 20),
            "{tenant} has its own replay ids"
        );
        for row in &rows {
            assert_eq!(row["org_id"], sim.orgs[n - 1].org_id.as_str());
            assert!(event_ids.insert(row["event_id"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(event_ids.len(), 60, "every org's events are its own");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_accepts_only_its_own_credentials_and_a_revoked_org_refuses_logins() {
    use sfzb_host::salesforce::auth::{Authenticator, Credentials};
    let sim = start(SimConfig {
        orgs: 3,
        ..sim_config(&["Account"], 1)
    })
    .await;
    let login = |n: usize, secret: &str| {
        Authenticator::new(
            &sim.login_url(),
            "62.0",
            Credentials::ClientCredentials {
                client_id: format!("sim-client-{n}"),
                client_secret: secret.to_string().into(),
            },
        )
    };
    let session = login(2, "sim-secret-2").login().await.unwrap();
    assert_eq!(session.org_id, sim.orgs[1].org_id);
    assert!(login(2, "sim-secret-3").login().await.is_err());
    sim.orgs[2].revoke_access();
    let error = login(3, "sim-secret-3")
        .login()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("revoked"), "{error}");
    assert!(
        login(1, "sim-secret-1").login().await.is_ok(),
        "the others still log in"
    );
    sim.shutdown().await;
}

/// 200 orgs in one process: 10 with bad credentials, 10 that revoke the app's access
/// mid-run. The other 180 deliver every event; the 20 show as failed, with the reason, at
/// `/subscriptions`, while `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_orgs_keep_streaming_while_twenty_fail_and_say_why() {
    const ORGS: usize = 200;
    let sim = start(SimConfig {
        orgs: ORGS,
        rate: 400.0,
        ..sim_config(&["Account"], 5)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for n in 1..=ORGS {
        let secret = if n <= 10 {
            "wrong".to_string()
        } else {
            format!("sim-secret-{n}")
        };
        text.push_str(&format!(
            "[org-{n}]\nclient-id = \"sim-client-{n}\"\nclient-secret = \"{secret}\"\n"
        ));
    }
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, text).unwrap();
    let mut plan = tenants_plan(&sim, dir.path(), &tenants);
    plan.options.until_idle = None;
    plan.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = sfzb_host::start(plan, cancel.clone()).await.unwrap();
    let url = format!("http://{}", started.metrics_addr().unwrap());
    let run = tokio::spawn(started.wait());
    let listed = |query: &'static str| {
        let url = format!("{url}/subscriptions{query}");
        async move {
            let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    // Everyone but the 10 with bad credentials streams.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let all = listed("").await;
        if all["counts"]["running"] == 190 && all["counts"]["failed"] == 10 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", all["counts"]);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for org in &sim.orgs[10..20] {
        org.revoke_access();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let failed = loop {
        let failed = listed("?state=failed").await;
        if failed["subscriptions"].as_array().unwrap().len() == 20 {
            break failed;
        }
        assert!(std::time::Instant::now() < deadline, "{}", failed["counts"]);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for s in failed["subscriptions"].as_array().unwrap() {
        let n: usize = s["org"].as_str().unwrap()["org-".len()..].parse().unwrap();
        assert!(n <= 20, "only the broken orgs failed: {s}");
        let reason = s["reason"].as_str().unwrap();
        let expected = if n <= 10 {
            "invalid client credentials"
        } else {
            "revoked"
        };
        assert!(reason.contains(expected), "org-{n}: {reason}");
    }
    let healthz = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(
        healthz.status().as_u16(),
        200,
        "the process still serves 180 orgs"
    );
    // The other 180 deliver everything the simulator holds for them.
    let heads: Vec<u64> = sim.orgs.iter().map(|o| o.bus.head()).collect();
    let healthy_done = || {
        (21..=ORGS).all(|n| {
            let rows = lines(&dir.path().join(format!("org-{n}.jsonl")));
            rows as u64 >= heads[n - 1]
        })
    };
    wait_for("the 180 orgs to deliver every event", healthy_done).await;
    cancel.cancel();
    let report = run.await.unwrap();
    for outcome in &report.subscriptions {
        let n: usize = outcome.name["org-".len()..]
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if n > 20 {
            let stats = outcome.result.as_ref().unwrap();
            let rows = rows(&dir.path().join(format!("org-{n}.jsonl")));
            assert_eq!(rows.len() as u64, stats.written, "{}", outcome.name);
            let ids: HashSet<u64> = rows.iter().map(replay).collect();
            assert_eq!(ids.len(), rows.len(), "{}: no duplicates", outcome.name);
        }
    }
    sim.shutdown().await;
}

/// Tenants added, removed and changed in a running process: the removed one stops with
/// its last position committed, the added one delivers from EARLIEST, the changed one
/// restarts from its checkpoint, the unchanged one never restarts; an entry that turns
/// invalid leaves its tenant running as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_added_removed_and_changed_take_effect_without_a_restart() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    const EVENTS: u64 = 20;
    let sim = start(SimConfig {
        orgs: 4,
        ..sim_config(&["Account"], EVENTS)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    let entry = |n: usize, extra: &str| {
        format!(
            "[org-{n}]\nclient-id = \"sim-client-{n}\"\nclient-secret = \"sim-secret-{n}\"\n{extra}"
        )
    };
    std::fs::write(
        &tenants,
        [entry(1, ""), entry(2, ""), entry(3, "")].concat(),
    )
    .unwrap();
    let args = tenants_args(&sim, dir.path(), &tenants, &[]);
    let plan = args.plan().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = sfzb_host::start(plan, cancel.clone())
        .await
        .unwrap()
        .reloading(Box::new(move || args.plan()));
    let registry = started.registry();
    let running = tokio::spawn(started.wait());
    let file = |n: usize| dir.path().join(format!("org-{n}.jsonl"));
    let replays = |n: usize| -> Vec<u64> {
        if file(n).exists() {
            rows(&file(n)).iter().map(replay).collect()
        } else {
            Vec::new()
        }
    };
    let all: Vec<u64> = positions(0, 1, EVENTS);
    wait_for("three tenants delivered", || {
        (1..=3).all(|n| replays(n) == all)
    })
    .await;
    let health_of = |name: &str| registry.list().into_iter().find(|h| h.name == name);
    let subscribes = || sim.stats.subscribes.load(Relaxed);
    let before = subscribes();
    let org2 = health_of("org-2/AccountChangeEvent").unwrap();
    let org3 = health_of("org-3/AccountChangeEvent").unwrap();

    std::fs::write(
        &tenants,
        [
            entry(2, ""),
            entry(3, "api-version = \"61.0\"\n"),
            entry(4, ""),
        ]
        .concat(),
    )
    .unwrap();
    wait_for("org-4 delivered from EARLIEST", || replays(4) == all).await;
    wait_for("org-1 gone and org-3 restarted", || {
        health_of("org-1/AccountChangeEvent").is_none()
            && health_of("org-3/AccountChangeEvent")
                .is_some_and(|h| !Arc::ptr_eq(&h, &org3) && h.has_subscribed())
    })
    .await;
    assert_eq!(
        subscribes() - before,
        2,
        "only org-3 (changed) and org-4 (added) subscribed"
    );
    assert!(
        Arc::ptr_eq(&health_of("org-2/AccountChangeEvent").unwrap(), &org2),
        "org-2 runs on untouched"
    );
    let stored: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state").join("checkpoints.json")).unwrap(),
    )
    .unwrap();
    let checkpoint_of = |org_id: &str| {
        stored["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["org_id"] == org_id)
            .map(|c| u64::from_str_radix(c["replay_id"].as_str().unwrap(), 16).unwrap())
    };
    assert_eq!(
        checkpoint_of(&sim.orgs[0].org_id),
        all.last().copied(),
        "the removed org-1 committed its last position"
    );

    // New events reach the unchanged and the restarted tenants, once each.
    for org in &sim.orgs[1..3] {
        org.bus.generate_rounds(5);
    }
    let more = positions(0, 1, EVENTS + 5);
    wait_for("new events at org-2 and org-3", || {
        replays(2) == more && replays(3) == more
    })
    .await;

    // org-2's entry loses its secret and org-4 goes, in one change: org-4 stops, org-2 is
    // reported and goes on as it was.
    std::fs::write(
        &tenants,
        [
            "[org-2]\nclient-id = \"sim-client-2\"\n".to_string(),
            entry(3, "api-version = \"61.0\"\n"),
        ]
        .concat(),
    )
    .unwrap();
    wait_for("org-4 gone", || {
        health_of("org-4/AccountChangeEvent").is_none()
    })
    .await;
    sim.orgs[1].bus.generate_rounds(5);
    let most = positions(0, 1, EVENTS + 10);
    wait_for("org-2 still delivering", || replays(2) == most).await;
    assert!(Arc::ptr_eq(
        &health_of("org-2/AccountChangeEvent").unwrap(),
        &org2
    ));
    cancel.cancel();
    let report = running.await.unwrap();
    every_subscription_ended_cleanly(&report);
    sim.shutdown().await;
}

/// Forty orgs catching up at once, each with more retained events than a fetch batch,
/// under a process budget of 16 decoded events: every event arrives once, and the
/// subscriptions together never held more than the budget (read at `/metrics` while
/// they run, and from the budget after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_orgs_catching_up_hold_no_more_events_than_the_process_budget() {
    const ORGS: usize = 40;
    let sim = start(SimConfig {
        orgs: ORGS,
        ..sim_config(&["Account"], 150)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text: String = (1..=ORGS)
        .map(|n| {
            format!(
                "[org-{n}]\nclient-id = \"sim-client-{n}\"\nclient-secret = \"sim-secret-{n}\"\n"
            )
        })
        .collect();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, text).unwrap();
    let mut plan = tenants_args(
        &sim,
        dir.path(),
        &tenants,
        &["--until-idle", "1", "--max-in-flight-total", "16"],
    )
    .plan()
    .expect("plan is valid");
    plan.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = sfzb_host::start(plan, cancel.clone()).await.unwrap();
    let budget = started.registry().in_flight().clone();
    let url = format!("http://{}/metrics", started.metrics_addr().unwrap());
    let run = tokio::spawn(started.wait());
    let metrics = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("sfzb_process_in_flight_events_limit 16"),
        "{metrics}"
    );
    let report = run.await.unwrap();
    every_subscription_ended_cleanly(&report);
    for (n, org) in (1..=ORGS).zip(&sim.orgs) {
        let rows = rows(&dir.path().join(format!("org-{n}.jsonl")));
        let ids: HashSet<u64> = rows.iter().map(replay).collect();
        assert_eq!(rows.len() as u64, org.bus.head(), "org-{n}: every event");
        assert_eq!(ids.len(), rows.len(), "org-{n}: once");
    }
    assert!(budget.peak() <= 16, "held {} events at once", budget.peak());
    // 40 batches of up to 100 competed for 16 places: the budget was what bounded them.
    assert!(budget.peak() >= 8, "held only {} at once", budget.peak());
    assert_eq!(budget.in_use(), 0, "every place was given back");
    sim.shutdown().await;
}

/// Tenants of one template chain, each with its own `tenant-filter` settings from the
/// tenants file (`[NAME.transform-config.tenant-filter]`), on instances started on demand
/// under an idle budget too small to keep any: each keeps exactly its own events, and an
/// entry naming a transform the chain does not have is left out with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_filters_with_its_own_settings() {
    let sim = start(sim_config(&["Account"], 60)).await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    let tenant = |name: &str, transform: &str, types: &str| {
        format!(
            "[{name}]\nclient-id = \"sim-client-1\"\nclient-secret = \"sim-secret-1\"\n\
             [{name}.transform-config.{transform}]\nchange-types = {types}\n"
        )
    };
    let all = "[\"CREATE\", \"UPDATE\", \"DELETE\", \"UNDELETE\", \"GAP_CREATE\", \"GAP_UPDATE\", \"GAP_DELETE\", \"GAP_UNDELETE\", \"GAP_OVERFLOW\"]";
    let text = [
        tenant("all", "tenant-filter", all),
        tenant("creates", "tenant-filter", "\"CREATE\""),
        tenant("updates", "tenant-filter", "\"update\""),
        tenant("updates-too", "tenant-filter", "[\"UPDATE\"]"),
        tenant("typo", "tenant-fitler", "\"CREATE\""),
    ]
    .concat();
    std::fs::write(&tenants, text).unwrap();
    let filter = crate::guests::component("tenant-filter")
        .display()
        .to_string();
    let cache = crate::guests::dir().join("../cache").display().to_string();
    let extra = [
        "--until-idle",
        "1",
        "--transform",
        &filter,
        "--transform-cache-dir",
        &cache,
        "--transform-idle-mib",
        "1",
    ];
    let plan = tenants_args(&sim, dir.path(), &tenants, &extra)
        .plan()
        .unwrap();
    assert_eq!(
        plan.rejected_tenants.len(),
        1,
        "{:?}",
        plan.rejected_tenants
    );
    let (name, reason) = &plan.rejected_tenants[0];
    assert_eq!(name, "typo");
    assert!(
        reason.contains("tenants.typo.transform-config") && reason.contains("tenant-fitler"),
        "{reason}"
    );
    assert_eq!(plan.subscriptions.len(), 4);
    let report = sfzb_host::run(plan, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    every_subscription_ended_cleanly(&report);
    sim.shutdown().await;

    let kept = |tenant: &str| -> Vec<(u64, String)> {
        rows(&dir.path().join(format!("{tenant}.jsonl")))
            .iter()
            .map(|r| (replay(r), r["change_type"].as_str().unwrap().to_string()))
            .collect()
    };
    let all = kept("all");
    assert_eq!(
        all.len(),
        60,
        "every event is of a type the first tenant keeps"
    );
    let of_type =
        |t: &str| -> Vec<(u64, String)> { all.iter().filter(|(_, c)| c == t).cloned().collect() };
    assert!(!of_type("CREATE").is_empty() && !of_type("UPDATE").is_empty());
    assert_eq!(kept("creates"), of_type("CREATE"));
    assert_eq!(kept("updates"), of_type("UPDATE"));
    assert_eq!(kept("updates-too"), of_type("UPDATE"));
}

/// A live reload that renames a tenant (same org, channel and target: one checkpoint)
/// starts the new name only once the old one has stopped and committed its last
/// position: at most one running subscription per (org id, channel, target). Zerobus
/// acknowledges slowly, so the old name's last flush takes a while: a new name started
/// beside it would resume from an older position and write its last rows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_tenant_never_runs_beside_its_old_name() {
    use sfzb_host::sim::zerobus::{ZerobusFaults, ZerobusServerHandle};
    const RETAINED: u64 = 200;
    const TABLE: &str = "main.sfzb.accounts";
    let sim = start(SimConfig {
        rate: 200.0,
        rate_for: Some(std::time::Duration::from_secs(4)),
        ..sim_config(&["Account"], RETAINED)
    })
    .await;
    let zerobus = ZerobusServerHandle::start(ZerobusFaults {
        ack_delay: std::time::Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    let entry = |name: &str| {
        format!("[{name}]\nclient-id = \"sim-client-1\"\nclient-secret = \"sim-secret-1\"\n")
    };
    std::fs::write(&tenants, entry("old-name")).unwrap();
    let (sink, endpoint) = (format!("zerobus:{TABLE}"), zerobus.url());
    let args = tenants_args(
        &sim,
        dir.path(),
        &tenants,
        &["--sink", &sink, "--zerobus-endpoint", &endpoint],
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = sfzb_host::start(args.plan().unwrap(), cancel.clone())
        .await
        .unwrap()
        .reloading(Box::new(move || args.plan()));
    let registry = started.registry();
    let running = tokio::spawn(started.wait());
    let written = || zerobus.rows(TABLE);
    wait_for("the old name delivering", || {
        written().len() as u64 > RETAINED
    })
    .await;
    std::fs::write(&tenants, entry("new-name")).unwrap();
    wait_for("the new name running and the old gone", || {
        let names: Vec<String> = registry.list().iter().map(|h| h.name.clone()).collect();
        names == ["new-name/AccountChangeEvent"]
    })
    .await;
    let head = || sim.orgs[0].bus.head();
    wait_for("production to end", || head() == RETAINED + 800).await;
    let distinct = || -> HashSet<String> { written().into_iter().map(|(_, r)| r).collect() };
    wait_for("every event written", || distinct().len() as u64 == head()).await;
    cancel.cancel();
    running
        .await
        .unwrap()
        .into_result()
        .expect("both names end cleanly");
    assert_eq!(
        written().len(),
        distinct().len(),
        "each once: the two names never ran together"
    );
    zerobus.shutdown().await;
    sim.shutdown().await;
}

/// Logs at scale: 1,000 tenants streaming for 30 s write fewer than 100 INFO lines once
/// every tenant has written (the flushes are debug lines; the health report is one
/// summary for the process; warnings many subscriptions give at once are throttled).
#[test]
fn a_thousand_tenants_log_a_handful_of_info_lines_not_one_per_flush() {
    const ORGS: usize = 1000;
    let (_sim, pubsub, login) = sim_process(&[
        "--orgs",
        &ORGS.to_string(),
        "--entities",
        "Account",
        "--events",
        "1",
        "--rate",
        "1000",
        "--rate-for-secs",
        "40",
        "--keepalive-ms",
        "1000",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, tenants_file(ORGS)).unwrap();
    let mut command = tenants_command(
        dir.path(),
        &tenants,
        &pubsub,
        &login,
        "jsonl:out/{tenant}.jsonl",
    );
    command.args(["--flush-interval-ms", "1000", "--health-interval-secs", "5"]);
    let host = Logged::spawn(command);
    let all_written = || std::fs::read_dir(dir.path().join("out")).map_or(0, |d| d.count()) >= ORGS;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !all_written() {
        assert!(
            std::time::Instant::now() < deadline,
            "every tenant writing: {}",
            host.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let info = |log: &str| log.lines().filter(|l| l.contains(" INFO ")).count();
    let at_start = info(&host.log());
    // The window measured: 30 s of streaming.
    std::thread::sleep(std::time::Duration::from_secs(30));
    let log = host.log();
    let during = info(&log) - at_start;
    let flushes = log.matches("Written to").count();
    let (status, _) = host.stop();
    assert!(status.success());
    println!("{during} INFO lines in 30 s of 1,000 tenants streaming ({at_start} at start-up)");
    assert_eq!(flushes, 0, "no line per flush at INFO");
    assert!(during < 100, "{during} INFO lines in 30 s:\n{log}");
    assert!(
        log.contains("Health: 1000 subscriptions"),
        "the summary is there"
    );
}
