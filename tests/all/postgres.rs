//! The PostgreSQL checkpoint store against a real PostgreSQL server, started per test on
//! 127.0.0.1 from the machine's PostgreSQL binaries (Debian's `postgresql` package, which
//! `.ci/run` installs), with password (SCRAM) authentication.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sfzb_host::checkpoint::{CheckpointKey, Checkpoints};
use sfzb_host::event::ReplayId;

use crate::support::*;

/// A PostgreSQL server of its own: a cluster made by initdb in a temporary directory,
/// served on a free loopback port, stopped (and removed) when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    server: Option<std::process::Child>,
}

impl Postgres {
    pub async fn start() -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        let owner = Owner::find();
        owner.give(dir.path());
        owner.give(&pwfile);
        let status = owner
            .command(bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "sfzb",
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut postgres = Postgres {
            dir,
            bin,
            port,
            password,
            server: None,
        };
        postgres.serve().await;
        postgres
    }

    /// Starts the server on the cluster and waits until it accepts a login.
    pub async fn serve(&mut self) {
        let owner = Owner::find();
        let child = owner
            .command(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=50"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.server = Some(child);
        wait_for_async("PostgreSQL to accept logins", || async {
            tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
                .await
                .is_ok()
        })
        .await;
    }

    /// Stops the server at once (SIGKILL): the cluster stays for [`Postgres::serve`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        self.url_with(&self.password)
    }

    pub fn url_with(&self, password: &str) -> String {
        format!(
            "postgres://sfzb:{password}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// The checkpoint table: (org, channel, target) → replay id as a number.
    pub async fn checkpoints(&self, table: &str) -> HashMap<(String, String, String), u64> {
        let rows = self
            .client()
            .await
            .query(
                &format!("SELECT org_id, channel, target, replay_id FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let replay: String = r.get(3);
                (
                    (r.get(0), r.get(1), r.get(2)),
                    u64::from_str_radix(&replay, 16).unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where initdb and postgres are: Debian keeps them under /usr/lib/postgresql/<version>/bin.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL's server binaries (/usr/lib/postgresql/<version>/bin/initdb) are needed for these tests: apt-get install postgresql (.ci/run does)",
    )
}

/// Who runs the server: PostgreSQL refuses to run as root, so as root the `postgres` user
/// the Debian package creates, else the current user.
struct Owner(Option<(u32, u32)>);

impl Owner {
    fn find() -> Owner {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Owner(None);
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let ids = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f[0] == "postgres")
            .map(|f| (f[2].parse().unwrap(), f[3].parse().unwrap()))
            .expect("as root, the tests run PostgreSQL as the postgres user (apt-get install postgresql makes it)");
        Owner(Some(ids))
    }

    fn give(&self, path: &Path) {
        if let Some((uid, gid)) = self.0 {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    fn command(&self, program: PathBuf) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(program);
        if let Some((uid, gid)) = self.0 {
            command.uid(uid).gid(gid);
        }
        command
    }
}

/// Waits until `check` passes (polled), failing after a minute.
async fn wait_for_async<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "waited a minute for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn key(i: usize) -> CheckpointKey {
    CheckpointKey {
        org_id: format!("00D{i:012}"),
        channel: "/data/AccountChangeEvent".into(),
        target: format!("jsonl:out/{i}.jsonl"),
    }
}

fn postgres_flags(postgres: &Postgres) -> Vec<String> {
    vec![
        "--checkpoint-store".into(),
        "postgres".into(),
        "--checkpoint-postgres-url".into(),
        postgres.url(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_checkpoints_are_one_statement_and_read_back_by_a_new_process() {
    let postgres = Postgres::start().await;
    let sim = start(sim_config(&["Account"], 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let flags = postgres_flags(&postgres);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let options = plan(&sim, dir.path(), "/data/AccountChangeEvent", &flags).options;
    let store = Checkpoints::new(&options);
    let place = store.place(
        &"jsonl:out.jsonl".parse().unwrap(),
        sfzb_host::sink::Layout::Reference,
    );
    for i in 0..1000 {
        let id = ReplayId::from_hex(&format!("{:08x}", i + 1)).unwrap();
        store.stage(&key(i), &place, &id);
    }
    store.commit().await.unwrap();
    let client = postgres.client().await;
    let distinct = |client: tokio_postgres::Client| async move {
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT updated_at) FROM sfzb_checkpoints",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    // now() is the transaction's time: one value for all rows is one statement.
    assert_eq!(
        distinct(client).await,
        (1000, 1),
        "1000 rows from one statement"
    );

    // The next commit writes only what changed since.
    for i in 0..10 {
        store.stage(&key(i), &place, &ReplayId::from_hex("ffffffff").unwrap());
    }
    store.commit().await.unwrap();
    store.commit().await.unwrap();
    assert_eq!(distinct(postgres.client().await).await, (1000, 2));

    let fresh = Checkpoints::new(&options);
    assert_eq!(
        fresh.load(&key(3), &place).await.unwrap(),
        ReplayId::from_hex("ffffffff").ok()
    );
    assert_eq!(
        fresh.load(&key(999), &place).await.unwrap(),
        ReplayId::from_hex("000003e8").ok()
    );
    assert_eq!(fresh.load(&key(5000), &place).await.unwrap(), None);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumes_from_postgres_and_a_wrong_password_stops_it_before_it_subscribes() {
    let postgres = Postgres::start().await;
    let sim = start(sim_config(&["Account"], 100)).await;
    let dir = tempfile::tempdir().unwrap();
    let flags = postgres_flags(&postgres);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let channel = "/data/AccountChangeEvent";
    let stats = run(plan(&sim, dir.path(), channel, &flags)).await.unwrap();
    assert_eq!(stats.written, 100);
    let stored = postgres.checkpoints("sfzb_checkpoints").await;
    assert_eq!(
        stored.values().copied().collect::<Vec<_>>(),
        [u64::from_str_radix(stats.checkpoint.as_deref().unwrap(), 16).unwrap()],
        "the run's last checkpoint, in the table"
    );
    assert!(
        !dir.path().join("state").join("checkpoints.json").exists(),
        "nothing in the local store"
    );
    let again = run(plan(&sim, dir.path(), channel, &flags)).await.unwrap();
    assert_eq!(again.received, 0, "resumed after the last event");

    let subscribes = || {
        sim.stats
            .subscribes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = subscribes();
    let wrong = postgres.url_with("not-the-password");
    let error = run(plan(
        &sim,
        dir.path(),
        channel,
        &[
            "--checkpoint-store",
            "postgres",
            "--checkpoint-postgres-url",
            &wrong,
        ],
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("password authentication failed")
            && error.contains("checkpoint-postgres-url"),
        "{error}"
    );
    assert!(
        !error.contains("not-the-password"),
        "the password is never shown: {error}"
    );
    assert_eq!(subscribes(), before, "never subscribed, never from LATEST");
    sim.shutdown().await;
}

/// 30 tenants on the PostgreSQL store, and the database gone for 20 s mid-run: every
/// subscription goes on streaming and writing (none is restarted: no new login, no
/// resubscribe), the endpoints say which store fails and since when, and once the
/// database is back the held-back checkpoints reach the end within a flush interval.
/// Every event lands exactly once per tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_tenants_stream_through_a_checkpoint_store_outage_without_a_restart() {
    use std::sync::atomic::Ordering::Relaxed;
    const ORGS: usize = 30;
    const FLUSH_MS: u64 = 2_000;
    let mut postgres = Postgres::start().await;
    let sim = start(sfzb_host::sim::SimConfig {
        orgs: ORGS,
        rate: 300.0,
        rate_for: Some(Duration::from_secs(12)),
        ..sim_config(&["Account"], 5)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, tenants_file(ORGS)).unwrap();
    let flags = [
        postgres_flags(&postgres),
        vec!["--flush-interval-ms".into(), FLUSH_MS.to_string()],
    ]
    .concat();
    let mut plan = tenants_args(&sim, dir.path(), &tenants, &args(&flags))
        .plan()
        .expect("plan is valid");
    plan.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = sfzb_host::start(plan, cancel.clone()).await.unwrap();
    let url = format!("http://{}", started.metrics_addr().unwrap());
    let healths = started.registry().list();
    let run = tokio::spawn(started.wait());
    let file = |n: usize| dir.path().join(format!("org-{n}.jsonl"));
    let committed_orgs = || async { postgres.checkpoints("sfzb_checkpoints").await.len() };
    wait_for("every tenant writing", || {
        (1..=ORGS).all(|n| lines(&file(n)) > 0)
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while committed_orgs().await < ORGS {
        assert!(
            std::time::Instant::now() < deadline,
            "a checkpoint per tenant"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subscribes = sim.stats.subscribes.load(Relaxed);

    postgres.kill();
    let outage = std::time::Instant::now();
    let get = |path: &'static str| {
        let url = format!("{url}{path}");
        async move {
            let response = reqwest::get(&url).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let (_, body) = get("/subscriptions").await;
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        if listed["checkpoint_stores"][0]["healthy"] == false {
            break listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store seen failing: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let store = &listed["checkpoint_stores"][0];
    assert_eq!(store["store"], "PostgreSQL", "{store}");
    assert!(store["last_commit_age_secs"].as_f64().is_some(), "{store}");
    let each = &listed["subscriptions"][0]["checkpoint_store"];
    assert_eq!(each["healthy"], false, "per subscription too: {each}");
    assert_eq!(
        listed["counts"]["running"], ORGS,
        "all still streaming: {}",
        listed["counts"]
    );
    let (status, healthz) = get("/healthz").await;
    assert_eq!(status, 200, "a store outage restarts no process: {healthz}");
    assert!(
        healthz.contains("checkpoint store PostgreSQL failing"),
        "{healthz}"
    );
    let (_, metrics) = get("/metrics").await;
    assert!(
        metrics.contains("sfzb_checkpoint_store_healthy{store=\"PostgreSQL\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sfzb_checkpoint_store_last_commit_age_seconds{store=\"PostgreSQL\"}")
    );

    // Production goes on and ends during the outage; every event is written meanwhile.
    let total = ORGS as u64 * 5 + 300 * 12;
    let heads = || sim.orgs.iter().map(|o| o.bus.head()).sum::<u64>();
    wait_for("the simulator to produce its events", || heads() == total).await;
    let all_written = || (1..=ORGS).all(|n| lines(&file(n)) as u64 >= sim.orgs[n - 1].bus.head());
    wait_for("every event written while the store is down", all_written).await;
    assert!(
        outage.elapsed() < Duration::from_secs(20),
        "written before the store returned"
    );
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed())).await;

    postgres.serve().await;
    let back = std::time::Instant::now();
    let at_end = || async {
        let committed = postgres.checkpoints("sfzb_checkpoints").await;
        sim.orgs.iter().all(|org| {
            committed
                .iter()
                .any(|((id, _, _), replay)| *id == org.org_id && *replay == org.bus.head())
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !at_end().await {
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoints at the end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = back.elapsed();
    println!(
        "checkpoints at the end {took:?} after the store returned (flush interval {FLUSH_MS} ms)"
    );
    // One interval for the committer's next turn, and room for a busy machine.
    assert!(
        took < Duration::from_millis(FLUSH_MS + 2_000),
        "checkpoints at the end {took:?} after the store returned"
    );

    let restarts: u64 = healths.iter().map(|h| h.restarts.load(Relaxed)).sum();
    assert_eq!(restarts, 0, "no subscription restarted for the store");
    assert_eq!(
        sim.stats.subscribes.load(Relaxed),
        subscribes,
        "no resubscribe"
    );
    for (i, org) in sim.orgs.iter().enumerate() {
        let rows = rows(&file(i + 1));
        let ids: HashSet<u64> = rows.iter().map(replay).collect();
        assert_eq!(
            ids,
            (1..=org.bus.head()).collect(),
            "org-{}: every event",
            i + 1
        );
        assert_eq!(rows.len(), ids.len(), "org-{}: each once", i + 1);
    }
    cancel.cancel();
    let report = run.await.unwrap();
    report
        .into_result()
        .expect("every subscription ends cleanly");
    sim.shutdown().await;
}

/// 100 orgs in one host process, on one shared Zerobus stream, checkpoints in PostgreSQL;
/// the process killed with SIGKILL at random points and restarted. Every event of every
/// org arrives, and what comes twice is bounded, per org, by the rows the server held past
/// that org's committed checkpoint at each kill (a flush interval's worth) plus what was
/// in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_orgs_on_shared_streams_survive_sigkill_with_checkpoints_in_postgres() {
    use rand::{Rng, SeedableRng};
    use sfzb_host::sim::zerobus::{ZerobusFaults, ZerobusServerHandle};
    use std::process::Stdio;
    const ORGS: usize = 100;
    // Per org, retained at start; then 2,000 events/s over all orgs for 6 s, while the
    // host is killed and restarted.
    const EVENTS: u64 = 100;
    const PRODUCED: u64 = 12_000;
    const KILLS: usize = 4;
    const MAX_IN_FLIGHT: usize = 100;
    const TABLE: &str = "main.sfzb.accounts";
    let postgres = Postgres::start().await;
    let sim = start(sfzb_host::sim::SimConfig {
        orgs: ORGS,
        rate: 2_000.0,
        rate_for: Some(Duration::from_secs(6)),
        ..sim_config(&["Account"], EVENTS)
    })
    .await;
    let zerobus = ZerobusServerHandle::start(ZerobusFaults::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, tenants_file(ORGS)).unwrap();
    let (pubsub, login, endpoint, url) = (
        sim.pubsub_url(),
        sim.login_url(),
        zerobus.url(),
        postgres.url(),
    );
    let host = |until_idle: &str| {
        let sink = format!("zerobus:{TABLE}");
        let mut command = tenants_command(dir.path(), &tenants, &pubsub, &login, &sink);
        command
            .args(["--zerobus-endpoint", &endpoint])
            .args([
                "--checkpoint-store",
                "postgres",
                "--checkpoint-postgres-url",
                &url,
            ])
            .args(["--flush-interval-ms", "50", "--batch-size", "20"])
            .args([
                "--max-in-flight",
                &MAX_IN_FLIGHT.to_string(),
                "--until-idle",
                until_idle,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let org_of: HashMap<String, usize> = sim
        .orgs
        .iter()
        .enumerate()
        .map(|(i, o)| (o.org_id.clone(), i))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut progress, mut past_checkpoint) = (Vec::new(), Vec::new());
    for _ in 0..KILLS {
        let mut child = host("30").spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2500))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let committed: HashMap<String, u64> = postgres
            .checkpoints("sfzb_checkpoints")
            .await
            .into_iter()
            .map(|((org, _, _), replay)| (org, replay))
            .collect();
        let rows = zerobus.org_rows(TABLE);
        past_checkpoint.push(
            rows.iter()
                .filter(|(_, replay, org)| {
                    u64::from_str_radix(replay, 16).unwrap()
                        > committed.get(org).copied().unwrap_or(0)
                })
                .count(),
        );
        progress.push(rows.len());
    }
    let total = ORGS as u64 * EVENTS + PRODUCED;
    let heads = || sim.orgs.iter().map(|o| o.bus.head()).sum::<u64>();
    wait_for("the simulator to produce its events", || heads() == total).await;
    let mut last = host("3");
    let status = tokio::task::spawn_blocking(move || last.status().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    assert!(
        progress.iter().any(|n| *n > 0 && (*n as u64) < total),
        "kills landed mid-stream: {progress:?}"
    );
    let rows = zerobus.org_rows(TABLE);
    let mut per_org = vec![HashSet::new(); ORGS];
    for (event, _, org) in &rows {
        per_org[org_of[org]].insert(event.clone());
    }
    for (i, events) in per_org.iter().enumerate() {
        let produced = sim.orgs[i].bus.head();
        assert_eq!(
            events.len() as u64,
            produced,
            "every event of org {} arrived",
            i + 1
        );
    }
    let unique: usize = per_org.iter().map(HashSet::len).sum();
    let duplicates = rows.len() - unique;
    let bound = past_checkpoint.iter().sum::<usize>() + KILLS * ORGS * MAX_IN_FLIGHT;
    println!(
        "{duplicates} duplicates after {KILLS} kills of {ORGS} orgs; rows past the checkpoints at each kill {past_checkpoint:?}, progress {progress:?}"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed {bound}"
    );
    let streams = zerobus
        .received
        .streams
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        streams <= (KILLS + 1) as u64,
        "{streams} Zerobus streams for {} runs of {ORGS} subscriptions: one shared stream each",
        KILLS + 1
    );
    let committed = postgres.checkpoints("sfzb_checkpoints").await;
    assert_eq!(committed.len(), ORGS, "one checkpoint per org");
    for (i, org) in sim.orgs.iter().enumerate() {
        let at = committed
            .iter()
            .find(|((id, _, _), _)| *id == org.org_id)
            .map(|(_, r)| *r);
        assert_eq!(
            at,
            Some(org.bus.head()),
            "org {}'s checkpoint is at its last event",
            i + 1
        );
    }
    zerobus.shutdown().await;
    sim.shutdown().await;
}
