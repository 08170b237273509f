//! Python (componentize-py) and JavaScript (jco + componentize-js) transforms: the same
//! settings and the same outputs as the Rust ones, the compile cache for their large
//! components, and `transform init` for each language.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::guests;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sfzb-host");

#[test]
fn python_and_javascript_transforms_give_exactly_the_rust_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_rows(
        dir.path(),
        &[
            "--entities",
            "Account,Contact,Lead",
            "--events",
            "120",
            "--gap-every",
            "25",
        ],
    );
    let cache = guests::dir().join("../compile-cache");
    let cases: [(&str, &[&str]); 7] = [
        ("mask", &["fields=Email,*Phone,Name.LastName"]),
        (
            "mask",
            &[
                "fields=Email,*Phone,BillingAddress.City",
                "mode=hash",
                "key=pii",
                "--key=pii=env:SFZB_TEST_KEY",
            ],
        ),
        (
            "mask",
            &["types=Email,Url,Currency", "fields=Name.LastName"],
        ),
        ("mask", &["fields=NumberOfEmployees,AnnualRevenue,Name"]),
        (
            "tenant-filter",
            &["entities=Account,Lead", "change-types=CREATE,UPDATE"],
        ),
        ("tenant-filter", &["field.Rating=Hot|Warm"]),
        (
            "tenant-filter",
            &[
                "change-types=GAP_UPDATE,DELETE",
                "field.Rating=Hot",
                "missing=keep",
            ],
        ),
    ];
    for (name, config) in cases {
        let rust = transform_outputs(&guests::component(name), &sample, config, &cache);
        assert!(
            rust.len() > 5,
            "{name} {config:?} keeps some events: {}",
            rust.len()
        );
        for lang in ["python", "js"] {
            let other = transform_outputs(&guests::polyglot(lang, name), &sample, config, &cache);
            assert_eq!(other.len(), rust.len(), "{lang} {name} {config:?}");
            for (a, b) in other.iter().zip(&rust) {
                assert_eq!(a, b, "{lang} {name} {config:?}");
            }
        }
    }
}

/// The host functions of contract 0.1.1 from each language's mask: `hmac-sha256` (checked
/// against an HMAC computed here), `field-type` (`types=Url` masks `Website`, which no
/// pattern names, nor `Some_URL__c`), `counter-add` (the count of masked values, counted here), `log-with`
/// and `log-enabled` (the debug line only when debug is on), `hmac-sha256` (the key check
/// in "mask ready") and `gauge-set` (the fields masked).
#[test]
fn each_language_reaches_the_host_functions_with_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_rows(dir.path(), &["--entities", "Account", "--events", "60"]);
    let cache = guests::dir().join("../compile-cache");
    let inputs: Vec<serde_json::Value> = std::fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let record = |row: &serde_json::Value| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(row["record_data_json"].as_str().unwrap()).unwrap()
    };
    // Account has no Email; its Url fields are Website and Some_URL__c.
    let masked_here = |name: &str| {
        name == "Email" || name.ends_with("Phone") || name == "Website" || name == "Some_URL__c"
    };
    let expected_count: usize = inputs
        .iter()
        .map(|row| {
            record(row)
                .iter()
                .filter(|(k, v)| masked_here(k) && v.is_string())
                .count()
        })
        .sum();
    assert!(expected_count > 20, "the sample has values to mask");
    let schema: serde_json::Value =
        serde_json::from_str(inputs[0]["schema_json"].as_str().unwrap()).unwrap();
    let masked_fields = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| masked_here(f["name"].as_str().unwrap()))
        .count();
    let config = [
        "fields=Email,*Phone",
        "types=Url",
        "mode=hash",
        "key=pii",
        "--key=pii=env:SFZB_TEST_KEY",
        "--log=sfzb_host=debug",
    ];
    let mut outputs = Vec::new();
    for (lang, component) in [
        ("rust", guests::component("mask")),
        ("python", guests::polyglot("python", "mask")),
        ("js", guests::polyglot("js", "mask")),
    ] {
        let (rows, stderr) = transform_test(&component, &sample, &config, &cache);
        assert_eq!(rows.len(), inputs.len(), "{lang}: {stderr}");
        for (input, output) in inputs.iter().zip(&rows) {
            let (before, after) = (record(input), record(&output["row"]));
            for (name, value) in &before {
                let got = &after[name];
                match value.as_str() {
                    Some(text) if masked_here(name) => {
                        assert_eq!(
                            got.as_str(),
                            Some(test_hmac(text).as_str()),
                            "{lang} {name}"
                        )
                    }
                    _ => assert_eq!(got, value, "{lang} {name} is untouched"),
                }
            }
        }
        assert!(
            stderr.contains(&format!("counter masked_values={expected_count}")),
            "{lang}: {stderr}"
        );
        let ready = stderr
            .lines()
            .find(|l| l.contains("mask ready"))
            .unwrap_or_else(|| panic!("{lang} logs its configuration: {stderr}"));
        assert!(
            ready.contains("mode=hash") && ready.contains("types=Url") && ready.contains("INFO"),
            "{lang}: {ready}"
        );
        // hmac-sha256's own result: the key check is the key's HMAC of "", computed here.
        assert!(
            ready.contains(&format!("key_check={}", &test_hmac("")[..8])),
            "{lang}: {ready}"
        );
        let matched = stderr
            .lines()
            .find(|l| l.contains("mask matched"))
            .unwrap_or_else(|| panic!("{lang} logs what it matched at debug: {stderr}"));
        assert!(
            matched.contains("Website") && matched.contains("PersonMobilePhone"),
            "{lang}: {matched}"
        );
        // gauge-set: how many fields of the schema it masks, counted here.
        assert!(
            stderr.contains(&format!("gauge masked_fields={masked_fields}")),
            "{lang}: {stderr}"
        );
        // At the default level the guest's debug line is not written.
        let quiet: Vec<&str> = config
            .iter()
            .copied()
            .filter(|c| !c.starts_with("--log"))
            .collect();
        let (_, stderr) = transform_test(&component, &sample, &quiet, &cache);
        assert!(!stderr.contains("mask matched"), "{lang}: {stderr}");
        outputs.push(rows);
    }
    assert_eq!(outputs[0], outputs[1], "python gives the rust rows");
    assert_eq!(outputs[0], outputs[2], "javascript gives the rust rows");
}

/// A key the transform names must be one it was given; the error says which it has, and
/// a key is never taken from the command line itself.
#[test]
fn a_missing_or_inline_key_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_rows(dir.path(), &["--entities", "Account", "--events", "5"]);
    let cases: [(&[&str], &str); 3] = [
        (
            &["fields=Email", "mode=hash", "key=pii"],
            "this transform has no keys",
        ),
        (
            &[
                "fields=Email",
                "mode=hash",
                "key=pii",
                "--key=other=env:SFZB_TEST_KEY",
            ],
            "its keys are other",
        ),
        (
            &["fields=Email", "mode=hash", "key=pii", "--key=pii=test-key"],
            "never the key itself",
        ),
    ];
    for lang in ["rust", "python", "js"] {
        let component = match lang {
            "rust" => guests::component("mask"),
            other => guests::polyglot(other, "mask"),
        };
        for (config, expected) in cases {
            let output = Command::new(BIN)
                .args(["transform", "test"])
                .arg(&component)
                .arg("--event")
                .arg(&sample)
                .args(config.iter().flat_map(|c| match c.strip_prefix("--") {
                    Some(_) => vec![c.to_string()],
                    None => vec!["--config".to_string(), c.to_string()],
                }))
                .env("SFZB_TEST_KEY", TEST_KEY)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{lang} {config:?}");
            assert!(stderr.contains(expected), "{lang} {config:?}: {stderr}");
            assert!(
                !stderr.contains(TEST_KEY),
                "{lang}: the key is never printed"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_mask_then_javascript_filter_chain_writes_the_rows_of_the_rust_chain() {
    let sim = start(sim_config(&["Account", "Contact"], 150)).await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("pii.key");
    std::fs::write(&key_file, format!("{TEST_KEY}\n")).unwrap();
    let chain = |mask: PathBuf, filter: PathBuf| {
        vec![
            "--transform".to_string(),
            mask.display().to_string(),
            "--transform".into(),
            filter.display().to_string(),
            "--transform-config".into(),
            "mask.fields=Email,*Phone".into(),
            "--transform-config".into(),
            "mask.mode=hash".into(),
            "--transform-config".into(),
            "mask.key=pii".into(),
            "--transform-key".into(),
            format!("mask.pii=file:{}", key_file.display()),
            "--transform-config".into(),
            "tenant-filter.change-types=CREATE,UPDATE".into(),
        ]
    };
    let mut results = Vec::new();
    for (mask, filter) in [
        (
            guests::component("mask"),
            guests::component("tenant-filter"),
        ),
        (
            guests::polyglot("python", "mask"),
            guests::polyglot("js", "tenant-filter"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let flags = chain(mask, filter);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let stats = run(plan(&sim, dir.path(), "/data/ChangeEvents", &flags))
            .await
            .unwrap();
        assert_eq!(stats.received, 300);
        assert!(stats.dropped > 0, "deletes are dropped");
        let masked = stats.transforms[0].metrics.counters["masked_values"];
        assert!(masked > 0, "{:?}", stats.transforms[0]);
        let rows: Vec<serde_json::Value> = rows(&out(dir.path()))
            .into_iter()
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("processed_timestamp");
                r
            })
            .collect();
        results.push((stats.written, masked, rows));
    }
    sim.shutdown().await;
    let (rust, polyglot) = (&results[0], &results[1]);
    assert_eq!(polyglot.0, rust.0);
    assert_eq!(polyglot.1, rust.1, "the same count of masked values");
    assert_eq!(polyglot.2, rust.2, "the same rows, byte for byte");
}

/// `load_ms` of each "Transform loaded." log line, with where it came from.
fn loads(stderr: &str) -> Vec<(f64, String)> {
    stderr
        .lines()
        .filter(|l| l.contains("Transform loaded."))
        .map(|l| {
            let field = |key: &str| {
                l.split(&format!("{key}=")).nth(1).map(|rest| {
                    rest.trim_start_matches('"')
                        .split(['"', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
            };
            (
                field("load_ms").unwrap().parse().unwrap(),
                field("from").unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_second_start_loads_python_and_javascript_from_the_compile_cache() {
    let (_sim, pubsub, login) = sim_process(&["--entities", "Account", "--events", "20"]);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let start = || {
        let output = host_command(dir.path(), &pubsub, &login, "/data/AccountChangeEvent")
            .args(["--sink", "jsonl:out.jsonl", "--until-idle", "1"])
            .arg("--transform")
            .arg(guests::polyglot("python", "mask"))
            .arg("--transform")
            .arg(guests::polyglot("js", "tenant-filter"))
            .args(["--transform-config", "mask.fields=Email"])
            .args(["--transform-config", "tenant-filter.entities=Account"])
            .arg("--transform-cache-dir")
            .arg(&cache)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        loads(&stderr)
    };
    let first = start();
    let second = start();
    assert_eq!(
        first.iter().map(|(_, f)| f.as_str()).collect::<Vec<_>>(),
        ["compiled", "compiled"]
    );
    assert_eq!(
        second.iter().map(|(_, f)| f.as_str()).collect::<Vec<_>>(),
        ["cache", "cache"]
    );
    let total = |l: &[(f64, String)]| l.iter().map(|(ms, _)| ms).sum::<f64>();
    assert!(
        total(&second) <= total(&first) / 10.0,
        "second start {:.1} ms against {:.1} ms",
        total(&second),
        total(&first)
    );
}

/// Runs the commands `transform init` printed, as a user would paste them; what they
/// printed.
fn init_then_build_and_test(lang: &str, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["transform", "init", "--lang", lang, name])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let commands: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .collect();
    assert!(commands[0].starts_with("cd "), "{stdout}");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = commands.join(" && ");
    // As in a fresh shell: a target directory set for this build would move the component
    // away from the path the printed test command names.
    let output = Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script}: {text}");
    assert!(
        text.contains(&format!("{name}: 1 in, 1 out")),
        "the sample event went through: {text}"
    );
    assert!(
        text.contains("REDACTED"),
        "the starting transform redacts: {text}"
    );
    assert!(
        text.contains("counter redacted="),
        "the template counts what it redacts with the SDK's host functions: {text}"
    );
    text
}

#[test]
fn transform_init_rust_then_the_printed_commands_test_natively_build_and_test_it() {
    let text = init_then_build_and_test("rust", "demo_r");
    assert!(
        text.contains("test result: ok. 2 passed"),
        "cargo test ran the template's native tests: {text}"
    );
}

/// The Rust SDK's own tests and those of the transforms written with it, natively: the
/// stub host, no Wasm.
#[test]
fn the_rust_sdk_and_its_transforms_test_natively() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-transforms");
    let output = Command::new(env!("CARGO"))
        .args([
            "test",
            "--release",
            "-p",
            "sfzb-transform",
            "-p",
            "tenant-filter",
        ])
        .env(
            "CARGO_TARGET_DIR",
            crate::guests::target_dir().join("guests-native"),
        )
        .env_remove("RUSTFLAGS")
        .current_dir(&root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for test in [
        "a_fan_out_runs_natively_with_its_tables_logs_and_counters",
        "keeps_the_tenants_events_and_drops_the_rest",
    ] {
        assert!(text.contains(&format!("{test} ... ok")), "{text}");
    }
}

#[test]
fn transform_init_python_then_the_printed_commands_build_and_test_it() {
    init_then_build_and_test("python", "demo_t");
}

#[test]
fn transform_init_js_then_the_printed_commands_build_and_test_it() {
    init_then_build_and_test("js", "demo_j");
}
