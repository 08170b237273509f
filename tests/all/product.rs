//! The product around the pipeline: the configuration file and the default action, bad
//! files, `config check`, the demo, several orgs and subscriptions in one process with
//! `/metrics` and `/healthz`, and a graceful stop on SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sfzb_host::cli::RunArgs;
use tokio_util::sync::CancellationToken;

use crate::guests;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sfzb-host");

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn org_section(name: &str, pubsub: &str, login: &str) -> String {
    format!(
        "[{name}]\ninstance-url = \"{login}\"\npubsub-endpoint = \"{pubsub}\"\nusername = \"u\"\npassword = \"p\"\n"
    )
}

#[test]
fn the_default_action_runs_the_pipeline_from_sfzb_toml_in_the_working_directory() {
    let (_sim, pubsub, login) = sim_process(&["--entities", "Account", "--events", "300"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::component("mask"), dir.path().join("mask.wasm")).unwrap();
    write(
        dir.path(),
        "sfzb.toml",
        &format!(
            "until-idle = 2.0\nflush-interval-ms = 100\nhealth-interval-secs = 1\n\n{}\n[[subscription]]\nchannel = \"AccountChangeEvent\"\nsink = \"jsonl:out.jsonl\"\n",
            org_section("salesforce", &pubsub, &login)
        ),
    );
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "--transform",
            "mask.wasm",
            "--transform-config",
            "mask.fields=*Phone",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let rows = rows(&dir.path().join("out.jsonl"));
    assert_eq!(rows.len(), 300, "{stderr}");
    let phones: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let record: serde_json::Value =
                serde_json::from_str(r["record_data_json"].as_str().unwrap()).unwrap();
            record["Phone"].as_str().map(str::to_string)
        })
        .collect();
    assert!(!phones.is_empty(), "some events carry a phone");
    assert!(phones.iter().all(|p| p == "REDACTED"), "{phones:?}");
    assert!(stderr.contains("transform mask: 300 in"), "{stderr}");
    let report = stderr
        .lines()
        .find(|l| l.contains("Health report."))
        .unwrap_or_else(|| panic!("a health report within the run: {stderr}"));
    assert!(
        report.contains("written=300") && report.contains("mask: 300 in"),
        "{report}"
    );
}

#[test]
fn bad_configuration_files_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let org = org_section("salesforce", "http://127.0.0.1:9", "http://127.0.0.1:9");
    let sub = "[[subscription]]\nchannel = \"AccountChangeEvent\"\n";
    let cases: [(&str, String, &[&str]); 10] = [
        (
            "two readers of one checkpoint",
            format!(
                "{org}\n{sub}sink = \"jsonl:out.jsonl\"\nname = \"a\"\n{sub}sink = \"jsonl:out.jsonl\"\nname = \"b\"\n"
            ),
            &[
                "subscription[1].sink",
                "already reads",
                "share one checkpoint",
            ],
        ),
        (
            "a transform setting with no value source",
            format!(
                "{org}\n{sub}\n[[subscription.transform]]\npath = \"bad.toml\"\nconfig = {{ salt = {{ vault = \"x\" }} }}\n"
            ),
            &["transform.config.salt", "{ env = "],
        ),
        (
            "a transform key from an unset variable",
            format!(
                "{org}\n{sub}\n[[subscription.transform]]\npath = \"bad.toml\"\nkeys = {{ pii = {{ env = \"SFZB_TEST_UNSET_KEY\" }} }}\n"
            ),
            &["transform.keys.pii", "SFZB_TEST_UNSET_KEY"],
        ),
        (
            "missing channel",
            format!("{org}\n[[subscription]]\nsink = \"jsonl:out.jsonl\"\n"),
            &["subscription[0].channel is required"],
        ),
        (
            "bad URL",
            format!(
                "{}\n{sub}",
                org.replace(
                    "http://127.0.0.1:9\"\npubsub",
                    "login.salesforce.com\"\npubsub"
                )
            ),
            &["instance-url", "login.salesforce.com"],
        ),
        (
            "unknown transform path",
            format!("{org}\n{sub}[[subscription.transform]]\npath = \"nope.wasm\"\n"),
            &["subscription[0].transform", "nope.wasm", "no such file"],
        ),
        (
            "bad table name",
            format!(
                "{org}\n{sub}sink = \"zerobus:accounts\"\n[databricks]\nzerobus-endpoint = \"http://127.0.0.1:9\"\n"
            ),
            &[
                "subscription[0].sink",
                "zerobus:accounts",
                "catalog.schema.table",
            ],
        ),
        (
            "misspelled key",
            format!("{org}\n[[subscription]]\nchanel = \"AccountChangeEvent\"\n"),
            &["chanel", "line"],
        ),
        (
            "unknown org",
            format!("{org}\n{sub}org = \"acme\"\n"),
            &["subscription[0].org", "acme", "no such org"],
        ),
        (
            "secret from an unset variable",
            format!(
                "{}\n{sub}",
                org.replace(
                    "password = \"p\"",
                    "password = { env = \"SFZB_TEST_UNSET_PASSWORD\" }"
                )
            ),
            &["password", "SFZB_TEST_UNSET_PASSWORD"],
        ),
    ];
    for (what, text, expected) in cases {
        let file = write(dir.path(), "bad.toml", &text);
        let output = Command::new(BIN)
            .current_dir(dir.path())
            .args(["--config", file.to_str().unwrap()])
            .env_remove("SFZB_TEST_UNSET_PASSWORD")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            expected.iter().all(|e| stderr.contains(e)),
            "{what}: {stderr}"
        );
    }
}

#[test]
fn config_check_prints_the_resolved_plan_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::component("mask"), dir.path().join("mask.wasm")).unwrap();
    let text = format!(
        r#"{}
[orgs.acme]
instance-url = "https://acme.my.salesforce.com"
client-id = "acme-app"
client-secret = {{ env = "ACME_SECRET" }}

[defaults]
batch-size = 50

[[defaults.transform]]
path = "mask.wasm"
on-error = "skip"
config = {{ fields = ["Email", "Phone"], mode = "hash", key = "pii" }}
keys = {{ pii = {{ env = "MASK_KEY" }} }}

[[subscription]]
channel = "AccountChangeEvent"
sink = "delta:tables/accounts"

[[subscription]]
channel = "ContactChangeEvent"
sink = "delta:tables/contacts"

[[subscription]]
org = "acme"
channel = "AccountChangeEvent"
sink = "delta:tables/acme_accounts"
"#,
        org_section(
            "salesforce",
            "http://127.0.0.1:9",
            "https://login.salesforce.com"
        )
        .replace("password = \"p\"", "password = \"Hunter2Secret\"")
    );
    let file = write(dir.path(), "sfzb.toml", &text);
    let output = Command::new(BIN)
        .args(["config", "check", file.to_str().unwrap()])
        .env("ACME_SECRET", "AcmeSecretValue")
        .env("MASK_KEY", "KeySecretValue")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in ["Hunter2Secret", "AcmeSecretValue", "KeySecretValue"] {
        assert!(!stdout.contains(secret), "{secret} printed: {stdout}");
    }
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let subs = plan["subscriptions"].as_array().unwrap();
    let names: Vec<&str> = subs.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "AccountChangeEvent",
            "ContactChangeEvent",
            "AccountChangeEvent@acme"
        ]
    );
    assert_eq!(subs[2]["org"], "acme");
    assert_eq!(subs[0]["batch-size"], 50);
    let mask = &subs[1]["transforms"][0];
    assert_eq!(mask["on-error"], "skip");
    // Any transform setting may be a secret: the plan names them, never shows them.
    assert_eq!(mask["config"], serde_json::json!(["fields", "key", "mode"]));
    assert_eq!(
        mask["keys"],
        serde_json::json!(["pii"]),
        "keys by name only"
    );
    let sink = subs[0]["sink"].as_str().unwrap();
    assert!(
        sink.starts_with("delta:")
            && sink.ends_with("tables/accounts")
            && Path::new(&sink[6..]).is_absolute(),
        "relative paths are under the file's directory: {sink}"
    );
    assert_eq!(plan["orgs"][1]["auth"]["flow"], "client-credentials");
    assert_eq!(plan["orgs"][1]["auth"]["secret"], "***");

    let output = Command::new(BIN)
        .args(["config", "check", file.to_str().unwrap()])
        .env_remove("ACME_SECRET")
        .env("MASK_KEY", "KeySecretValue")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ACME_SECRET"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_exits_0_prints_its_summary_and_writes_readable_tables() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let output = Command::new(BIN)
        .args(["demo", "--events", "300", "--dir", demo.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Query a table"), "{stdout}");
    for (name, table) in [
        ("AccountChangeEvent", "account_events"),
        ("ContactChangeEvent", "contact_events"),
        ("LeadChangeEvent", "lead_events"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("a summary line for {name}: {stdout}"));
        let figures: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(4)
            .map(|f| f.parse().unwrap())
            .collect();
        let [received, written, dropped, dead] = figures[..] else {
            panic!("{line}")
        };
        assert_eq!(received, 300);
        assert!(dropped > 0, "tenant-filter drops deletes: {line}");
        assert_eq!(written + dropped + dead, received, "{line}");
        let rows = delta_rows(&demo.join("tables").join(table)).await;
        assert_eq!(rows.len() as u64, written, "{table}");
    }
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn received(metrics: &str) -> Vec<(String, u64)> {
    let (_, body) = get(&format!("{metrics}/stats")).await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    stats["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["received"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_subscriptions_on_two_orgs_run_side_by_side_and_one_dead_stream_affects_only_its_own()
{
    let args = |org_id: &'static str, entities: &'static str| {
        [
            "--entities",
            entities,
            "--events",
            "200",
            "--rate",
            "40",
            "--keepalive-ms",
            "200",
            "--org-id",
            org_id,
        ]
    };
    let (_a, a_pubsub, a_login) = sim_process(&args("00DSIMA000000001AAA", "Account,Contact"));
    let (b, b_pubsub, b_login) = sim_process(&args("00DSIMB000000001AAA", "Account"));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "metrics-listen = \"127.0.0.1:0\"\nflush-interval-ms = 100\n\n{}\n{}\n[defaults]\nidle-timeout-secs = 1\nmax-timeouts = 2\n\n\
         [[subscription]]\norg = \"a\"\nchannel = \"AccountChangeEvent\"\nsink = \"jsonl:a_accounts.jsonl\"\n\n\
         [[subscription]]\norg = \"a\"\nchannel = \"ContactChangeEvent\"\nsink = \"jsonl:a_contacts.jsonl\"\n\n\
         [[subscription]]\norg = \"b\"\nchannel = \"AccountChangeEvent\"\nsink = \"jsonl:b_accounts.jsonl\"\n",
        org_section("orgs.a", &a_pubsub, &a_login),
        org_section("orgs.b", &b_pubsub, &b_login),
    );
    let file = write(dir.path(), "sfzb.toml", &text);
    let plan = RunArgs {
        config_file: Some(file),
        ..RunArgs::default()
    }
    .plan()
    .unwrap();
    let cancel = CancellationToken::new();
    let started = sfzb_host::start(plan, cancel.clone()).await.unwrap();
    let metrics = format!("http://{}", started.metrics_addr().unwrap());
    let run = tokio::spawn(started.wait());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(response) = reqwest::get(format!("{metrics}/stats")).await
            && response.status().is_success()
        {
            let all = received(&metrics).await;
            if all.len() == 3 && all.iter().all(|(_, n)| *n >= 200) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "all three subscriptions caught up"
        );
    }
    assert_eq!(get(&format!("{metrics}/healthz")).await.0, 200);

    drop(b);
    let before = received(&metrics).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, body) = get(&format!("{metrics}/subscriptions?org=b")).await;
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        if listed["subscriptions"][0]["problem"].is_string() {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "/subscriptions never reported org b's problem: {body}"
        );
    };
    let only = listed["subscriptions"].as_array().unwrap();
    assert_eq!(
        only.len(),
        1,
        "the org filter selects org b's only: {listed}"
    );
    assert_eq!(only[0]["name"], "AccountChangeEvent@b");
    assert_eq!(listed["total"], 3);
    // The process still serves org a: /healthz is about the process, not one tenant.
    let (status, body) = get(&format!("{metrics}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let (_, text) = get(&format!("{metrics}/metrics")).await;
    let healthy = |name: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("sfzb_healthy{") && l.contains(&format!("subscription=\"{name}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(healthy("AccountChangeEvent@b"), Some(0.0), "{text}");
    assert_eq!(healthy("AccountChangeEvent"), Some(1.0), "{text}");
    assert_eq!(healthy("ContactChangeEvent"), Some(1.0), "{text}");
    assert!(text.contains("sfzb_events_received_total{"), "{text}");
    assert!(
        text.contains("sfzb_subscriptions{state=\"running\"}"),
        "{text}"
    );
    // Org a's subscriptions keep receiving while org b's fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = received(&metrics).await;
        let grown = before
            .iter()
            .zip(&after)
            .filter(|((name, _), _)| !name.ends_with("@b"))
            .all(|((_, n0), (_, n1))| n1 > n0);
        if grown {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "org a's subscriptions kept receiving: {before:?} → {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run stops")
        .unwrap();
    for outcome in report.subscriptions {
        let stats = outcome.result.unwrap();
        assert_eq!(stats.written, stats.received, "{}", outcome.name);
    }
    let org_a = rows(&dir.path().join("a_accounts.jsonl"));
    assert!(org_a.iter().all(|r| r["org_id"] == "00DSIMA000000001AAA"));
    let org_b = rows(&dir.path().join("b_accounts.jsonl"));
    assert!(!org_b.is_empty() && org_b.iter().all(|r| r["org_id"] == "00DSIMB000000001AAA"));
}

#[test]
fn sigterm_stops_cleanly_and_the_next_run_resumes_without_a_gap() {
    let (_sim, pubsub, login) = sim_process(&["--entities", "Account", "--events", "20000"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let start = |idle: &str| {
        host_command(dir.path(), &pubsub, &login, "/data/AccountChangeEvent")
            .args(["--sink", "jsonl:out.jsonl", "--flush-interval-ms", "100"])
            .args([
                "--batch-size",
                "5",
                "--max-in-flight",
                "5",
                "--until-idle",
                idle,
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = start("30");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Lines in progress are being written: count the finished ones.
    let written = || std::fs::read(&out).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count());
    while written() < 500 {
        assert!(Instant::now() < deadline, "the first run writes");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) with a pid we spawned and still own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "exits within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let first = rows(&out).len();
    assert!(first < 20_000, "the signal landed mid-run ({first} rows)");
    let state = checkpoint_files(&dir.path().join(".sfzb-state"));
    assert_eq!(state.len(), 1, "a checkpoint was committed");

    let second = start("2").wait_with_output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let got: Vec<u64> = rows(&out).iter().map(replay).collect();
    assert_eq!(
        got,
        (1..=20_000).collect::<Vec<u64>>(),
        "every event once, in order, across the stop"
    );
}

/// The demo embeds copies of `mask` and `tenant-filter` built earlier; they must still do
/// what their sources do (rebuild them with the command in guest-transforms/README.md).
#[test]
fn the_demo_components_behave_as_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_rows(
        dir.path(),
        &["--entities", "Account,Contact", "--events", "150"],
    );
    let cache = guests::dir().join("../compile-cache");
    let prebuilt = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-transforms/prebuilt");
    for (name, config) in [
        (
            "mask",
            &[
                "fields=Email,*Phone",
                "mode=hash",
                "key=pii",
                "--key=pii=env:SFZB_TEST_KEY",
            ][..],
        ),
        ("tenant-filter", &["change-types=CREATE,UPDATE"][..]),
    ] {
        let built = transform_outputs(&guests::component(name), &sample, config, &cache);
        assert!(
            built.len() > 100,
            "{name} produced outputs: {}",
            built.len()
        );
        let embedded = prebuilt.join(format!("{name}.wasm"));
        assert_eq!(
            transform_outputs(&embedded, &sample, config, &cache),
            built,
            "{name}"
        );
    }
}
