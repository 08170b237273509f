//! The author's loop: `sfzb-host transform test` prints what a chain did to each event,
//! for a person by default (`--json` for scripts), and `--watch` runs it again on change.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::guests;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sfzb-host");

fn test_output(component: &Path, sample: &Path, config: &[&str]) -> String {
    let mut command = Command::new(BIN);
    command
        .args(["transform", "test"])
        .arg(component)
        .arg("--event")
        .arg(sample)
        .arg("--cache-dir")
        .arg(guests::dir().join("../compile-cache"));
    for setting in config {
        command.args(["--config", setting]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn records(sample: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(sample)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The lines of the report of event `n` (1-based): its heading and what follows it.
fn report_of(text: &str, n: usize) -> Vec<&str> {
    let heading = format!("#{n} ");
    text.lines()
        .skip_while(|l| !l.starts_with(&heading))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.starts_with('#'))
        .map(|(_, l)| l)
        .collect()
}

#[test]
fn transform_test_shows_each_changed_field_drops_fan_outs_routes_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_rows(
        dir.path(),
        &["--entities", "Account,Contact", "--events", "30"],
    );
    let rows = records(&sample);

    // A mask: each event's report lists exactly the fields that had a value, before → after.
    let text = test_output(
        &guests::component("mask"),
        &sample,
        &["fields=PersonEmail,Phone"],
    );
    for (i, row) in rows.iter().enumerate() {
        let report = report_of(&text, i + 1);
        assert!(
            report[0].contains(row["replay_id"].as_str().unwrap())
                && report[0].contains(row["change_type"].as_str().unwrap()),
            "{report:?}"
        );
        let record: serde_json::Value =
            serde_json::from_str(row["record_data_json"].as_str().unwrap()).unwrap();
        for field in ["PersonEmail", "Phone"] {
            let line = report
                .iter()
                .find(|l| l.trim_start().starts_with(&format!("{field}:")));
            match record[field].as_str() {
                Some(value) => assert_eq!(
                    line.map(|l| l.trim()),
                    Some(format!("{field}: {value:?} → \"REDACTED\"").as_str()),
                    "{report:?}"
                ),
                None => assert!(
                    line.is_none(),
                    "an unchanged field is not listed: {report:?}"
                ),
            }
        }
    }

    // A filter: events it drops say so; the ones it keeps are unchanged.
    let text = test_output(
        &guests::component("tenant-filter"),
        &sample,
        &["change-types=CREATE"],
    );
    for (i, row) in rows.iter().enumerate() {
        let report = report_of(&text, i + 1);
        let expected = if row["change_type"] == "CREATE" {
            "  kept → its own table, unchanged"
        } else {
            "  dropped"
        };
        assert_eq!(report[1], expected, "{report:?}");
    }

    // A router: the table each event goes to.
    let text = test_output(
        &guests::component("route"),
        &sample,
        &["table.Contact=contacts"],
    );
    for (i, row) in rows.iter().enumerate() {
        let report = report_of(&text, i + 1);
        if row["entity_name"] == "Contact" {
            assert!(
                report[1].starts_with("  kept → table contacts"),
                "{report:?}"
            );
        }
    }

    // Fan-out and failures.
    let faulty = guests::component("faulty");
    let text = test_output(&faulty, &sample, &["mode=fanout"]);
    let report = report_of(&text, 1);
    assert_eq!(report[1], "  fanned out to 2 outputs", "{report:?}");
    assert!(report[2].starts_with("  [1] kept") && report[3].starts_with("  [2] kept"));
    let text = test_output(&faulty, &sample, &["mode=error"]);
    let report = report_of(&text, 1);
    assert!(
        report[1].starts_with("  dead-lettered by faulty: ")
            && report[1].contains(&format!(
                "refusing event {}",
                rows[0]["event_id"].as_str().unwrap()
            )),
        "{report:?}"
    );
}

#[test]
fn transform_test_watch_runs_again_when_the_events_change() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_rows(dir.path(), &["--entities", "Account", "--events", "6"]);
    let events = dir.path().join("events.jsonl");
    let all = std::fs::read_to_string(&sample).unwrap();
    std::fs::write(&events, all.lines().take(2).collect::<Vec<_>>().join("\n")).unwrap();
    let mut child = Command::new(BIN)
        .args(["transform", "test", "--watch"])
        .arg(guests::component("mask"))
        .arg("--event")
        .arg(&events)
        .args(["--config", "fields=PersonEmail"])
        .arg("--cache-dir")
        .arg(guests::dir().join("../compile-cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let wait_for = |what: &str, done: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&lines.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "{what}: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let headings = |l: &[String]| l.iter().filter(|l| l.starts_with('#')).count();
    wait_for("the first run reports 2 events", &|l| headings(l) == 2);
    std::fs::write(&events, all).unwrap();
    wait_for("the second run reports the 6 events", &|l| {
        l.iter().any(|l| l.starts_with("--- ")) && headings(l) == 8
    });
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
}
