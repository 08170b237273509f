//! Managed subscriptions (ManagedSubscribe): Salesforce keeps the position and admits one
//! client at a time, so a second process is a standby; when the reader stops, it commits its
//! last durable position and the standby goes on right after it.

use crate::support::*;

/// `sfzb-host run` reading AccountChangeEvent through the managed subscription `Accounts`,
/// each process into its own file.
fn host(dir: &std::path::Path, pubsub: &str, login: &str, name: &str) -> Logged {
    let mut command = host_command(dir, pubsub, login, "/data/AccountChangeEvent");
    command
        .args(["--managed-subscription", "Accounts"])
        .args(["--sink", &format!("jsonl:{name}.jsonl")])
        .args(["--state-dir", &format!("state-{name}")])
        .args(["--flush-interval-ms", "100"])
        .env("SFZB_LOG", FLUSH_LINES);
    Logged::spawn(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_reads_a_managed_subscription_and_the_next_resumes_where_it_committed() {
    let (_sim, pubsub, login) = sim_process(&[
        "--entities",
        "Account",
        "--events",
        "300",
        "--rate",
        "300",
        "--managed-subscription",
        "Accounts=/data/AccountChangeEvent",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let a = host(dir.path(), &pubsub, &login, "a");
    wait_for("a to write", || a.said("Written to") >= 2).await;
    let b = host(dir.path(), &pubsub, &login, "b");
    wait_for("b to wait as a standby", || {
        b.said("Standby: managed subscription Accounts is read by another client") > 0
    })
    .await;
    wait_for("a to keep writing", || a.said("Written to") >= 6).await;
    assert_eq!(b.said("Written to"), 0, "the standby reads nothing");

    let (status, a_log) = a.stop();
    assert!(status.success(), "{a_log}");
    assert!(
        a_log.contains("Committed the last durable position to the managed subscription"),
        "{a_log}"
    );
    wait_for("b to take over and write", || b.said("Written to") >= 3).await;
    let (status, b_log) = b.stop();
    assert!(status.success(), "{b_log}");
    assert!(
        b_log.contains("Committed the last durable position to the managed subscription"),
        "{b_log}"
    );

    let by_a: Vec<u64> = rows(&dir.path().join("a.jsonl"))
        .iter()
        .map(replay)
        .collect();
    let by_b: Vec<u64> = rows(&dir.path().join("b.jsonl"))
        .iter()
        .map(replay)
        .collect();
    assert!(!by_a.is_empty() && !by_b.is_empty());
    assert_eq!(
        by_b[0],
        by_a.last().unwrap() + 1,
        "b starts right after a's last committed event"
    );
    let all: Vec<u64> = by_a.into_iter().chain(by_b).collect();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(
        all, expected,
        "every event once, in order, across the handover"
    );
}

#[test]
fn an_unknown_managed_subscription_stops_with_a_message_naming_it() {
    let (_sim, pubsub, login) = sim_process(&["--entities", "Account", "--events", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let output = host_command(dir.path(), &pubsub, &login, "/data/AccountChangeEvent")
        .args(["--managed-subscription", "NoSuchSubscription"])
        .args(["--sink", "jsonl:out.jsonl", "--until-idle", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("NoSuchSubscription"), "{stderr}");
}
