//! The binary as a user runs it: `sfzb-host sim` in one process, `sfzb-host run` in another.

use std::process::Command;

use crate::support::{host_command, sim_process as sim, sim_process_urls};

const BIN: &str = env!("CARGO_BIN_EXE_sfzb-host");

#[test]
fn sim_then_run_writes_every_account_event_and_exits_when_idle() {
    let (_sim, pubsub, login) = sim(&["--events", "1000"]);
    let dir = tempfile::tempdir().unwrap();
    let output = host_command(dir.path(), &pubsub, &login, "/data/AccountChangeEvent")
        .args(["--sink", "jsonl:out.jsonl", "--until-idle", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("1000 received, 1000 written"), "{stderr}");
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1000);
    let replay: Vec<u64> = rows
        .iter()
        .map(|r| u64::from_str_radix(r["replay_id"].as_str().unwrap(), 16).unwrap())
        .collect();
    assert!(replay.windows(2).all(|w| w[0] < w[1]), "replay order");
    assert!(rows.iter().all(|r| r["entity_name"] == "Account"));
    assert!(
        rows.iter()
            .filter(|r| r["change_type"] == "UPDATE")
            .all(|r| !r["changed_fields"].as_array().unwrap().is_empty())
    );
    assert!(
        rows.iter()
            .flat_map(|r| r["changed_fields"].as_array().unwrap())
            .all(|f| !f.as_str().unwrap().starts_with("0x"))
    );
}

#[test]
fn configuration_errors_exit_2_and_name_the_setting() {
    let output = Command::new(BIN)
        .args([
            "run",
            "--instance-url",
            "http://127.0.0.1:9",
            "--channel",
            "/data/AccountChangeEvent",
            "--username",
            "u",
        ])
        .env_remove("SALESFORCE_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("password") && stderr.contains("SALESFORCE_PASSWORD"),
        "{stderr}"
    );

    let output = Command::new(BIN)
        .args([
            "run",
            "--instance-url",
            "login.salesforce.com",
            "--channel",
            "/data/AccountChangeEvent",
            "--username",
            "u",
            "--password",
            "p",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("instance-url"));
}

/// The password given and the access token the org actually issued appear nowhere in a
/// `--log trace` run's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let sim = crate::support::start(crate::support::sim_config(&["Account"], 5)).await;
    let dir = tempfile::tempdir().unwrap();
    let (pubsub, login) = (sim.pubsub_url(), sim.login_url());
    let mut command = Command::new(BIN);
    command
        .current_dir(dir.path())
        .args(["--log", "trace", "run", "--pubsub-endpoint", &pubsub])
        .args(["--instance-url", &login, "--username", "u"])
        .args([
            "--channel",
            "/data/AccountChangeEvent",
            "--sink",
            "jsonl:out.jsonl",
        ])
        .args(["--until-idle", "1"])
        .env("SALESFORCE_PASSWORD", "Hunter2Secret");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tokens = sim.org().tokens.issued();
    assert!(!tokens.is_empty(), "the run logged in");
    for secret in tokens.iter().map(String::as_str).chain(["Hunter2Secret"]) {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{secret} in the output"
        );
    }
    sim.shutdown().await;
}

#[test]
fn run_with_a_transform_masks_and_prints_per_transform_counts() {
    let (_sim, pubsub, login) = sim(&["--events", "200", "--entities", "Contact"]);
    let dir = tempfile::tempdir().unwrap();
    let mask = crate::guests::component("mask");
    let output = host_command(dir.path(), &pubsub, &login, "/data/ContactChangeEvent")
        .args(["--sink", "jsonl:out.jsonl", "--until-idle", "2"])
        .arg("--transform")
        .arg(&mask)
        .args(["--transform-config", "mask.fields=Email,Phone"])
        .env("SFZB_CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("transform mask: 200 in, 200 out, 0 dropped, 0 dead-lettered"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert!(text.contains("REDACTED"));
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let record: serde_json::Value =
            serde_json::from_str(row["record_data_json"].as_str().unwrap()).unwrap();
        for field in ["Email", "Phone"] {
            assert!(
                record[field].is_null() || record[field] == "REDACTED",
                "{field} survived: {}",
                record[field]
            );
        }
    }

    let sample = dir.path().join("event.json");
    std::fs::write(
        &sample,
        text.lines().find(|l| l.contains("REDACTED")).unwrap(),
    )
    .unwrap();
    let lines = crate::support::transform_outputs(
        &crate::guests::component("route"),
        &sample,
        &["table.Contact=contacts"],
        &dir.path().join("cache"),
    );
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["table"], "contacts");
    assert_eq!(line["row"]["entity_name"], "Contact");
}

#[test]
fn the_simulator_can_stand_in_for_zerobus_too() {
    let (_sim, urls) = sim_process_urls(&[
        "--zerobus-port",
        "0",
        "--events",
        "50",
        "--entities",
        "Lead",
    ]);
    assert_eq!(
        urls.len(),
        3,
        "the Zerobus endpoint is printed after the login one: {urls:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let output = host_command(dir.path(), &urls[0], &urls[1], "/data/LeadChangeEvent")
        .args([
            "--sink",
            "zerobus:main.sfzb.leads",
            "--zerobus-endpoint",
            &urls[2],
            "--until-idle",
            "2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("50 received, 50 written to zerobus:main.sfzb.leads"),
        "{stderr}"
    );
}

/// `sfzb-host healthcheck` and `sfzb-host status` against a running host's endpoint: 0 and
/// the table of its subscriptions while it runs; 1 with a clear reason once nothing
/// answers (an image without an HTTP client uses it as its HEALTHCHECK).
#[test]
fn healthcheck_and_status_read_a_running_hosts_endpoint() {
    let (_sim, pubsub, login) = sim(&["--events", "50", "--keepalive-ms", "200"]);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut command = host_command(dir.path(), &pubsub, &login, "/data/AccountChangeEvent");
    command.args(["--sink", "jsonl:out.jsonl", "--metrics-listen", &address]);
    let host = crate::support::Logged::spawn(command);
    let probe = |verb: &str| {
        let output = Command::new(BIN)
            .args([verb, "--address", &address])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        (output.status.code(), stdout, stderr)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let table = loop {
        let (code, stdout, _) = probe("status");
        if code == Some(0) && stdout.contains("running") && stdout.contains(" 50 ") {
            break stdout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status: {stdout}\n{}",
            host.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(table.starts_with("1 subscriptions: 1 running"), "{table}");
    assert!(
        table.contains("NAME") && table.contains("AccountChangeEvent"),
        "{table}"
    );
    let (code, stdout, stderr) = probe("healthcheck");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("ok"), "{stdout}");
    let (status, _) = host.stop();
    assert!(status.success());
    let (code, _, stderr) = probe("healthcheck");
    assert_eq!(code, Some(1), "nothing answers: {stderr}");
    assert!(
        stderr.contains("no answer from sfzb-host") && stderr.contains("--metrics-listen"),
        "{stderr}"
    );
}
