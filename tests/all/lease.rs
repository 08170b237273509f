//! Lease fencing: processes that share a configuration read each (org, channel) only while
//! they hold its Kubernetes Lease. A standby takes over when the holder stops, and a holder
//! whose Lease is taken stops reading. The Kubernetes API is the Lease server of
//! `kube_api.rs` on 127.0.0.1; the sink is one Delta table, whose commits carry the
//! checkpoint, so whoever reads resumes where the other stopped.

use std::process::Command;
use std::time::Duration;

use crate::kube_api::KubeApi;
use crate::support::*;

const NAMESPACE: &str = "sfzb-test";

/// A Lease API, a simulator publishing Account changes at 300/s, and a directory whose Delta
/// table the hosts share.
struct Setup {
    api: KubeApi,
    _sim: Process,
    pubsub: String,
    login: String,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let (sim, pubsub, login) =
            sim_process(&["--entities", "Account", "--events", "0", "--rate", "300"]);
        Setup {
            api: KubeApi::start().await,
            _sim: sim,
            pubsub,
            login,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `sfzb-host run` reading AccountChangeEvent into the shared table, fenced by a Lease.
    fn host(&self, holder: &str) -> Logged {
        let dir = self.dir.path();
        let mut command = host_command(dir, &self.pubsub, &self.login, "/data/AccountChangeEvent");
        command
            .args([
                "--sink",
                "delta:tables/account",
                "--flush-interval-ms",
                "100",
            ])
            .args(["--state-dir", &format!("state-{holder}")])
            .args(["--lease-namespace", NAMESPACE, "--lease-holder", holder])
            .args(["--lease-duration-secs", "3"])
            .env("KUBECONFIG", self.api.kubeconfig(dir))
            .env("SFZB_LOG", FLUSH_LINES);
        Logged::spawn(command)
    }

    /// `host` holds its Lease again and writes; once it stops, the table holds every event
    /// once, more than the `stopped` rows it had when the Lease was lost.
    async fn resumes_with_every_event_once(&self, host: Logged, stopped: usize) {
        wait_for("the holder to hold its Lease again and write", || {
            host.said("Holding Kubernetes Lease") >= 2
                && host.said_after("Holding Kubernetes Lease", "Written to")
        })
        .await;
        let (status, log) = host.stop();
        assert!(status.success(), "{log}");
        let replays = self.written().await;
        assert!(replays.len() > stopped, "it wrote again");
        assert_once_each(&replays);
    }

    /// Rows in the table; it counts only what was committed.
    async fn written(&self) -> Vec<u64> {
        let table = self.dir.path().join("tables/account");
        if !table.join("_delta_log").exists() {
            return Vec::new();
        }
        delta_rows(&table)
            .await
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }
}

/// Every event up to the newest written is in the table exactly once.
fn assert_once_each(replays: &[u64]) {
    assert!(!replays.is_empty());
    let expected: Vec<u64> = (1..=replays.len() as u64).collect();
    assert_eq!(
        replays,
        &expected[..],
        "every event from the first to the newest written, once each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_holder_stops_and_nothing_is_read_twice() {
    let setup = Setup::new().await;
    let api = &setup.api;
    let a = setup.host("pod-a");
    wait_for("pod-a to hold the Lease", || {
        api.holders(NAMESPACE)
            .iter()
            .any(|(_, h)| h.starts_with("pod-a-"))
    })
    .await;
    let b = setup.host("pod-b");
    wait_for("pod-b to wait as a standby", || b.said("Standby:") > 0).await;
    let before = setup.written().await.len();
    let flushes = a.said("Written to");
    // A flush after `before` was counted: pod-a's rows grow while pod-b waits.
    wait_for("pod-a to keep writing", || a.said("Written to") > flushes).await;
    assert_eq!(b.said("Holding Kubernetes Lease"), 0, "{}", b.log());
    assert_eq!(b.said("Written to"), 0, "the standby reads nothing");
    let (lease, _) = api.holders(NAMESPACE)[0].clone();
    // Named by who logs in where (`u` at the simulator), not by the entry's name.
    assert!(lease.starts_with("sfzb-u-127-0-0-1-"), "{lease}");

    let (status, a_log) = a.stop();
    assert!(status.success(), "{a_log}");
    let by_a = setup.written().await.len();
    assert!(by_a > before, "pod-a wrote before it stopped");
    wait_for("pod-b to take the Lease", || {
        b.said("Holding Kubernetes Lease") > 0
    })
    .await;
    wait_for("pod-b to write", || b.said("Written to") >= 3).await;
    let holders = api.holders(NAMESPACE);
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].0, lease);
    assert!(holders[0].1.starts_with("pod-b-"), "{holders:?}");
    let (status, b_log) = b.stop();
    assert!(status.success(), "{b_log}");
    assert!(
        api.holders(NAMESPACE).is_empty(),
        "a stopped holder releases its Lease"
    );
    let replays = setup.written().await;
    assert!(replays.len() > by_a, "pod-b went on after pod-a");
    assert_once_each(&replays);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_is_taken_stops_reading_until_it_gets_it_back() {
    let setup = Setup::new().await;
    let api = &setup.api;
    let host = setup.host("pod-a");
    wait_for("pod-a to write", || host.said("Written to") >= 2).await;
    let (lease, _) = api.holders(NAMESPACE)[0].clone();

    // Another holder takes the Lease and renews it, as a live one would.
    let renewing = tokio_util::sync::CancellationToken::new();
    let renewer = {
        let (api, lease, renewing) = (api.clone(), lease.clone(), renewing.clone());
        tokio::spawn(async move {
            while !renewing.is_cancelled() {
                api.give_to(NAMESPACE, &lease, "someone-else", 3);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    wait_for("pod-a to notice at its next renewal", || {
        host.said("was taken by another process") > 0
    })
    .await;
    wait_for("pod-a to wait as a standby", || {
        host.said_after("was taken by another process", "Standby:")
    })
    .await;
    // Its pipeline has ended: nothing more is written until it holds the Lease again.
    wait_for("pod-a's subscription to stop", || {
        host.said_after("was taken by another process", "Subscription stopped.")
    })
    .await;
    let stopped = setup.written().await.len();
    assert_eq!(
        api.holders(NAMESPACE),
        vec![(lease.clone(), "someone-else".into())]
    );

    assert_eq!(
        setup.written().await.len(),
        stopped,
        "nothing is written without the Lease: {}",
        host.log()
    );
    assert!(!host.said_after("was taken by another process", "Holding Kubernetes Lease"));
    renewing.cancel();
    renewer.await.unwrap();
    api.release(NAMESPACE, &lease);
    setup.resumes_with_every_event_once(host, stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_renew_stops_reading_until_it_holds_the_lease_again() {
    let setup = Setup::new().await;
    let api = &setup.api;
    let host = setup.host("pod-a");
    wait_for("pod-a to write", || host.said("Written to") >= 2).await;

    api.fail_with(Some(axum::http::StatusCode::SERVICE_UNAVAILABLE));
    wait_for("pod-a to fail a renewal", || {
        host.said("Cannot renew Kubernetes Lease") > 0
    })
    .await;
    // Stopped within the grace period: its pipeline ends, so what it wrote no longer grows
    // while it cannot renew.
    wait_for("pod-a's subscription to stop", || {
        host.said_after("Cannot renew Kubernetes Lease", "Subscription stopped.")
    })
    .await;
    let stopped = setup.written().await.len();
    assert!(!host.said_after("Cannot renew Kubernetes Lease", "Holding Kubernetes Lease"));

    api.fail_with(None);
    setup.resumes_with_every_event_once(host, stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_api_forbids_fails_the_subscription_with_the_rbac_it_needs() {
    let setup = Setup::new().await;
    setup.api.fail_with(Some(axum::http::StatusCode::FORBIDDEN));
    let (status, log) = setup.host("pod-a").wait();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("refused Lease") && log.contains("get, create and patch on leases"),
        "{log}"
    );
    assert!(setup.written().await.is_empty());
}

#[test]
fn lease_fencing_without_a_kubernetes_api_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sfzb-host"))
        .current_dir(dir.path())
        .args([
            "run",
            "--channel",
            "AccountChangeEvent",
            "--sink",
            "jsonl:out.jsonl",
        ])
        .args([
            "--instance-url",
            "http://127.0.0.1:9",
            "--username",
            "u",
            "--password",
            "p",
        ])
        .args(["--lease-namespace", NAMESPACE, "--lease-holder", "pod-a"])
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no Kubernetes API is configured") && stderr.contains("KUBECONFIG"),
        "{stderr}"
    );
}
