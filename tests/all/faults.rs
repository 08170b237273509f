//! What the fault and bad-input campaign found: each test fails on the code before its fix.

use std::collections::BTreeSet;

use crate::support::*;

/// A host process reading Account events through the `faulty` guest in `mode`, writing
/// `out/rows.jsonl` under `dir`.
fn hostile_run(
    dir: &std::path::Path,
    pubsub: &str,
    login: &str,
    mode: &str,
    extra: &[&str],
) -> Logged {
    chain_run(
        dir,
        pubsub,
        login,
        "faulty",
        &format!("faulty.mode={mode}"),
        extra,
    )
}

/// A host process reading Account events through one example `component` with one setting,
/// writing `out/rows.jsonl` under `dir`.
fn chain_run(
    dir: &std::path::Path,
    pubsub: &str,
    login: &str,
    component: &str,
    setting: &str,
    extra: &[&str],
) -> Logged {
    let mut command = host_command(dir, pubsub, login, "/data/AccountChangeEvent");
    command
        .args(["--sink", "jsonl:out/rows.jsonl", "--until-idle", "2"])
        .arg("--transform")
        .arg(crate::guests::component(component))
        .args(["--transform-config", setting])
        .args(extra)
        .env("SFZB_CACHE_DIR", dir.join("cache"))
        .stdout(std::process::Stdio::null());
    Logged::spawn(command)
}

/// Replay ids of the rows in every `.jsonl` file of `dir` whose name passes `keep`.
fn replays_in(dir: &std::path::Path, keep: impl Fn(&str) -> bool) -> Vec<u64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".jsonl") && keep(&name) {
            out.extend(rows(&entry.path()).iter().map(replay));
        }
    }
    out.sort_unstable();
    out
}

/// Guests that stay inside 64 MiB and 100 ms yet aim at the host: 20 × 512 KiB `set`s per
/// event, 2,000 copies per event, copies stashed across calls, every event kept, a new table
/// per event. The host's peak RSS stays bounded, every affected event is dead-lettered
/// naming the limit (a guest keeping events gets a fresh instance instead), and every other
/// event is written: each event exactly once, in one place or the other.
#[test]
fn a_hostile_guest_cannot_drive_the_host_out_of_memory_or_files() {
    const EVENTS: u64 = 300;
    const PEAK_MIB: u64 = 512;
    let (_sim, pubsub, login) =
        sim_process(&["--entities", "Account", "--events", &EVENTS.to_string()]);
    for (mode, limit, dead_expected) in [
        ("set-bomb", "max-added-bytes", Some(EVENTS)),
        ("fanout-bomb", "max-outputs", Some(EVENTS)),
        ("stash", "max-outputs", None),
        ("hoard", "", Some(0)),
        ("table-flood", "max-tables", Some(EVENTS - 100)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (status, log, peak) =
            hostile_run(dir.path(), &pubsub, &login, mode, &[]).wait_with_peak_rss();
        println!("{mode}: host peak RSS {peak} MiB (bound {PEAK_MIB} MiB)");
        assert!(status.success(), "{mode}: {log}");
        assert!(peak < PEAK_MIB, "{mode}: host peak RSS {peak} MiB");
        let out = dir.path().join("out");
        let dead = rows(&out.join("rows_dead_letter.jsonl"));
        for letter in &dead {
            let error = letter["error"].as_str().unwrap();
            assert!(error.contains(limit), "{mode}: {error}");
        }
        if let Some(n) = dead_expected {
            assert_eq!(dead.len() as u64, n, "{mode}: dead letters");
        } else {
            assert!(!dead.is_empty(), "{mode}: some events dead-lettered");
        }
        let mut all = replays_in(&out, |_| true);
        let distinct: BTreeSet<u64> = all.iter().copied().collect();
        all.dedup();
        assert_eq!(all.len(), distinct.len(), "{mode}: no event twice");
        assert_eq!(distinct, (1..=EVENTS).collect(), "{mode}: every event once");
        if mode == "hoard" {
            assert!(log.contains("keeps events across calls"), "{mode}: {log}");
        }
        let files = std::fs::read_dir(&out).unwrap().count();
        assert!(
            files <= 102,
            "{mode}: {files} files (max-tables 100, main, dead letters)"
        );
    }
}

/// 3,000 log lines per event are cut to `max-log-lines-per-sec` with a line that counts
/// what was held back; the events are written all the same.
#[test]
fn a_guest_log_flood_is_rate_limited_with_a_count() {
    let (_sim, pubsub, login) = sim_process(&["--entities", "Account", "--events", "200"]);
    let dir = tempfile::tempdir().unwrap();
    // A generous call deadline: 3,000 log calls on a loaded machine must not time out.
    let slow = ["--transform-timeout-ms", "5000"];
    let (status, log) = hostile_run(dir.path(), &pubsub, &login, "log-flood", &slow).wait();
    assert!(status.success(), "{log}");
    let flood = log.lines().filter(|l| l.contains("flood line")).count();
    // Written: at most 100 a second over a run of a few seconds; offered: 600,000.
    assert!(flood > 0 && flood < 2_000, "{flood} flood lines written");
    assert!(log.contains("log lines held back"), "{log}");
    assert_eq!(
        replays_in(&dir.path().join("out"), |n| !n.contains("dead_letter")),
        (1..=200).collect::<Vec<_>>()
    );
}

/// A guest may route to a qualified table only inside the subscription's own catalog and
/// schema (a file has none): `hr.payroll.salaries` dead-letters the event, naming
/// `allow-tables`, unless `allow-tables` lists it.
#[test]
fn a_guest_routes_only_inside_its_own_schema_unless_allowed() {
    let (_sim, pubsub, login) = sim_process(&["--entities", "Account", "--events", "20"]);
    let dir = tempfile::tempdir().unwrap();
    let (status, log) = hostile_run(dir.path(), &pubsub, &login, "escape", &[]).wait();
    assert!(status.success(), "{log}");
    let dead = rows(&dir.path().join("out/rows_dead_letter.jsonl"));
    assert_eq!(dead.len(), 20);
    assert!(
        dead[0]["error"].as_str().unwrap().contains("allow-tables"),
        "{}",
        dead[0]
    );
    assert!(!dir.path().join("out/hr.payroll.salaries.jsonl").exists());

    let allowed = tempfile::tempdir().unwrap();
    let faulty = crate::guests::component("faulty");
    std::fs::write(
        allowed.path().join("sfzb.toml"),
        format!(
            "until-idle = 2.0\n[salesforce]\ninstance-url = \"{login}\"\npubsub-endpoint = \"{pubsub}\"\n\
             username = \"u\"\npassword = \"p\"\n\n[[subscription]]\nchannel = \"/data/AccountChangeEvent\"\n\
             sink = \"jsonl:out/rows.jsonl\"\n\n[[subscription.transform]]\npath = {:?}\n\
             allow-tables = [\"hr.payroll.*\"]\nconfig = {{ mode = \"escape\" }}\n",
            faulty.display().to_string()
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sfzb-host"));
    command
        .current_dir(allowed.path())
        .arg("run")
        .env("SFZB_CACHE_DIR", allowed.path().join("cache"))
        .stdout(std::process::Stdio::null());
    let (status, log) = Logged::spawn(command).wait();
    assert!(status.success(), "{log}");
    assert_eq!(
        rows(&allowed.path().join("out/hr.payroll.salaries.jsonl")).len(),
        20
    );
}

/// A sink on a full disk (`/dev/full`: every write fails with ENOSPC) fails the
/// subscription with the reason, and no checkpoint moves past the rows it could not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_write_and_moves_no_checkpoint() {
    let sim = start(sim_config(&["Account"], 50)).await;
    let dir = tempfile::tempdir().unwrap();
    let err = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--sink", "jsonl:/dev/full"],
    ))
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("No space left on device"),
        "{err:#}"
    );
    let files: Vec<_> = checkpoint_files(&dir.path().join("state"));
    assert!(files.is_empty(), "no checkpoint written: {files:?}");
    sim.shutdown().await;
}

/// The checkpoint's disk is full (its temporary file is `/dev/full`): the commit fails with
/// the reason, and no empty or partial checkpoint is renamed into place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_checkpoint_fails_the_commit_and_keeps_no_torn_file() {
    let sim = start(sim_config(&["Account"], 50)).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("jsonl:{}", out(dir.path()).display());
    let path = sfzb_host::checkpoint::LocalFile::path_in(&dir.path().join("state"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/dev/full", path.with_extension("json.tmp")).unwrap();
    let err = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--sink", &sink],
    ))
    .await
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("cannot write checkpoint"), "{text}");
    assert!(!path.exists(), "no checkpoint renamed into place");
    sim.shutdown().await;
}

/// A `ConsumerEvent` that holds a position and no event is dead-lettered with the reason,
/// not skipped without a trace behind the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_payload_is_dead_lettered() {
    let mut config = sim_config(&["Account"], 30);
    config.event_faults.empty_at = vec![12];
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(plan(&sim, dir.path(), "/data/AccountChangeEvent", &[]))
        .await
        .unwrap();
    assert_eq!(stats.received, 30);
    let dead = rows(&dead(dir.path()));
    assert_eq!(dead.len(), 1);
    assert_eq!(replay(&dead[0]), 12);
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("without an event"),
        "{}",
        dead[0]
    );
    assert_eq!(rows(&out(dir.path())).len(), 29);
    sim.shutdown().await;
}

/// `--until-idle` against a Pub/Sub endpoint nobody listens on: the run never subscribed,
/// so it fails with the reason instead of reporting success with zero events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_idle_without_ever_subscribing_is_an_error() {
    let sim = start(sim_config(&["Account"], 10)).await;
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--pubsub-endpoint", &unreachable, "--until-idle", "2"],
    ))
    .await
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("never subscribed"), "{text}");
    assert_eq!(err.exit_code(), 1);
    sim.shutdown().await;
}

/// A Zerobus server that never acknowledges: `/healthz` turns 503 ("stalled") once events
/// wait longer than `max-checkpoint-lag-secs` for their checkpoint, and a stop gives up after
/// `shutdown-timeout-secs` with an error, leaving no checkpoint past what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_is_unhealthy_and_a_stop_has_a_deadline() {
    use sfzb_host::sim::zerobus::{ZerobusFaults, ZerobusServerHandle};
    let sim = start(sim_config(&["Account"], 100)).await;
    let zerobus = ZerobusServerHandle::start(ZerobusFaults {
        ack_delay: std::time::Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = zerobus.url();
    let plan = plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &[
            "--sink",
            "zerobus:main.sfzb.accounts",
            "--zerobus-endpoint",
            &endpoint,
            "--metrics-listen",
            "127.0.0.1:0",
            "--max-checkpoint-lag-secs",
            "1",
            "--shutdown-timeout-secs",
            "2",
            "--until-idle",
            "600",
        ],
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = sfzb_host::start(plan, cancel.clone()).await.unwrap();
    let healthz = format!("http://{}/healthz", started.metrics_addr().unwrap());
    let running = tokio::spawn(started.wait());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let body = loop {
        if let Ok(response) = reqwest::get(&healthz).await
            && response.status().as_u16() == 503
        {
            break response.text().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never reported the stall"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("stalled") && body.contains("not checkpointed"),
        "{body}"
    );
    cancel.cancel();
    let report = tokio::time::timeout(std::time::Duration::from_secs(30), running)
        .await
        .expect("the stop keeps its deadline")
        .unwrap();
    let err = single(report).unwrap_err().to_string();
    assert!(
        err.contains("did not stop within the shutdown timeout"),
        "{err}"
    );
    assert!(
        checkpoint_files(&dir.path().join("state")).is_empty(),
        "no checkpoint: nothing was acknowledged"
    );
    zerobus.shutdown().await;
    sim.shutdown().await;
}

/// A route naming the sink's own table writes there; one naming its dead-letter table is
/// dead-lettered with the reason (it would mix rows into the dead letters' table).
#[test]
fn routes_to_the_sinks_own_tables_are_resolved() {
    let (_sim, pubsub, login) = sim_process(&["--entities", "Account", "--events", "20"]);
    let own = tempfile::tempdir().unwrap();
    let (status, log) = chain_run(
        own.path(),
        &pubsub,
        &login,
        "route",
        "route.default=rows",
        &[],
    )
    .wait();
    assert!(status.success(), "{log}");
    assert_eq!(
        replays_in(&own.path().join("out"), |_| true),
        (1..=20).collect::<Vec<_>>()
    );

    let dead = tempfile::tempdir().unwrap();
    let setting = "route.default=rows_dead_letter";
    let (status, log) = chain_run(dead.path(), &pubsub, &login, "route", setting, &[]).wait();
    assert!(status.success(), "{log}");
    let letters = rows(&dead.path().join("out/rows_dead_letter.jsonl"));
    assert_eq!(letters.len(), 20);
    assert!(
        letters.iter().all(|l| l["error"]
            .as_str()
            .unwrap()
            .contains("the dead-letter table")),
        "{}",
        letters[0]
    );
}
