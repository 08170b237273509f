//! Several processes share one configuration: `--shard I/N` gives each subscription to
//! exactly one of them.

use std::process::Command;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sfzb-host");

#[test]
fn two_shards_read_each_of_six_subscriptions_exactly_once() {
    let sim = |org_id: &str| {
        sim_process(&[
            "--entities",
            "Account,Contact,Lead",
            "--events",
            "100",
            "--org-id",
            org_id,
        ])
    };
    let (_a, a_pubsub, a_login) = sim("00DSIMA000000001AAA");
    let (_b, b_pubsub, b_login) = sim("00DSIMB000000001AAA");
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("until-idle = 2.0\nflush-interval-ms = 100\n");
    for (org, pubsub, login) in [("a", &a_pubsub, &a_login), ("b", &b_pubsub, &b_login)] {
        text.push_str(&format!(
            "\n[orgs.{org}]\ninstance-url = \"{login}\"\npubsub-endpoint = \"{pubsub}\"\nusername = \"u\"\npassword = \"p\"\n"
        ));
    }
    let mut files = Vec::new();
    for org in ["a", "b"] {
        for entity in ["Account", "Contact", "Lead"] {
            let file = format!("{org}_{entity}.jsonl");
            text.push_str(&format!(
                "\n[[subscription]]\norg = \"{org}\"\nchannel = \"{entity}ChangeEvent\"\nsink = \"jsonl:{file}\"\n"
            ));
            files.push((org, file));
        }
    }
    std::fs::write(dir.path().join("sfzb.toml"), text).unwrap();
    let shards: Vec<_> = ["0/2", "1/2"]
        .iter()
        .map(|shard| {
            Command::new(BIN)
                .current_dir(dir.path())
                .args([
                    "--shard",
                    shard,
                    "--state-dir",
                    &format!("state-{}", &shard[..1]),
                ])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut runs = Vec::new();
    for child in shards {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("Shard "))
            .unwrap_or_else(|| panic!("the shard says what it runs: {stderr}"))
            .to_string();
        runs.push(line);
    }
    let count = |line: &str| -> usize {
        line.split(" runs ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        runs.iter().all(|l| count(l) > 0),
        "both shards have work: {runs:?}"
    );
    assert_eq!(runs.iter().map(|l| count(l)).sum::<usize>(), 6, "{runs:?}");
    for (org, file) in files {
        let got: Vec<u64> = rows(&dir.path().join(&file)).iter().map(replay).collect();
        assert_eq!(got.len(), 100, "{file}: every event once, by one shard");
        let mut unique = got.clone();
        unique.dedup();
        assert_eq!(unique.len(), 100, "{file}: no duplicates");
        let expected = if org == "a" {
            "00DSIMA000000001AAA"
        } else {
            "00DSIMB000000001AAA"
        };
        assert!(
            rows(&dir.path().join(&file))
                .iter()
                .all(|r| r["org_id"] == expected)
        );
    }
}
