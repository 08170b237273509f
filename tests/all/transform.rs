//! Transforms over a simulator stream: masking, filtering, routing, and guests that fail in
//! every way a guest can, with the failure policies.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::guests;
use crate::support::*;

fn cache() -> String {
    guests::dir().join("../cache").display().to_string()
}

/// `--transform` flags for the named components with their settings.
fn chain(items: &[(&str, &[&str])]) -> Vec<String> {
    let mut flags = vec!["--transform-cache-dir".to_string(), cache()];
    for (name, settings) in items {
        flags.push("--transform".into());
        flags.push(guests::component(name).display().to_string());
        for s in *settings {
            flags.push("--transform-config".into());
            flags.push(format!("{name}.{s}"));
        }
    }
    flags
}

/// Every text value of the record's fields (compound children included), from the JSON.
fn values_of(row: &serde_json::Value, fields: &[&str]) -> Vec<String> {
    let record: serde_json::Value =
        serde_json::from_str(row["record_data_json"].as_str().unwrap()).unwrap();
    fields
        .iter()
        .filter_map(|f| record[*f].as_str().map(str::to_string))
        .collect()
}

/// The payload decoded by apache-avro (a reader that is not ours) with the row's schema.
fn payload_text(row: &serde_json::Value) -> String {
    use base64::Engine;
    let schema = apache_avro::Schema::parse_str(row["schema_json"].as_str().unwrap()).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(row["payload_binary"].as_str().unwrap())
        .unwrap();
    let value = apache_avro::from_avro_datum(&schema, &mut &bytes[..], None).unwrap();
    format!("{value:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_leaves_no_email_or_phone_in_any_column() {
    let sim = start(sim_config(&["Contact"], 300)).await;
    let plain = tempfile::tempdir().unwrap();
    run(plan(&sim, plain.path(), "/data/ContactChangeEvent", &[]))
        .await
        .unwrap();
    let secrets: HashSet<String> = rows(&out(plain.path()))
        .iter()
        .flat_map(|r| {
            values_of(
                r,
                &[
                    "Email",
                    "Phone",
                    "MobilePhone",
                    "HomePhone",
                    "OtherPhone",
                    "AssistantPhone",
                ],
            )
        })
        .collect();
    assert!(
        secrets.len() > 50,
        "the stream carries emails and phones: {}",
        secrets.len()
    );

    let masked = tempfile::tempdir().unwrap();
    let flags = chain(&[("mask", &["fields=Email,*Phone"])]);
    let stats = run(plan(
        &sim,
        masked.path(),
        "/data/ContactChangeEvent",
        &args(&flags),
    ))
    .await
    .unwrap();
    let rows = rows(&out(masked.path()));
    assert_eq!(rows.len(), 300);
    assert_eq!(stats.transforms[0].events_in, 300);
    for row in &rows {
        let line = row.to_string();
        let payload = payload_text(row);
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "{secret} is in a column of {}",
                row["replay_id"]
            );
            assert!(
                !payload.contains(secret.as_str()),
                "{secret} is in the Avro payload of {}",
                row["replay_id"]
            );
        }
    }
    assert!(
        rows.iter()
            .any(|r| values_of(r, &["Email"]) == ["REDACTED"])
    );
    sim.shutdown().await;
}

/// `mode=hash` with the host's HMAC: the same key gives the same pseudonyms, another key
/// other ones, and the pseudonym is the HMAC of the value (checked here, not by sfzb-host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_is_keyed_and_stable() {
    let sim = start(sim_config(&["Lead"], 80)).await;
    let keys = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    let mut originals = Vec::new();
    for key in [TEST_KEY, TEST_KEY, "another-key"] {
        let dir = tempfile::tempdir().unwrap();
        let file = keys.path().join(format!("{}.key", hashes.len()));
        std::fs::write(&file, key).unwrap();
        let mut flags = chain(&[("mask", &["fields=Email", "mode=hash", "key=pii"])]);
        flags.extend([
            "--transform-key".into(),
            format!("mask.pii=file:{}", file.display()),
        ]);
        run(plan(
            &sim,
            dir.path(),
            "/data/LeadChangeEvent",
            &args(&flags),
        ))
        .await
        .unwrap();
        hashes.push(
            rows(&out(dir.path()))
                .iter()
                .flat_map(|r| values_of(r, &["Email"]))
                .collect::<Vec<_>>(),
        );
        if originals.is_empty() {
            let plain = tempfile::tempdir().unwrap();
            run(plan(&sim, plain.path(), "/data/LeadChangeEvent", &[]))
                .await
                .unwrap();
            originals = rows(&out(plain.path()))
                .iter()
                .flat_map(|r| values_of(r, &["Email"]))
                .collect();
        }
    }
    assert!(!hashes[0].is_empty());
    assert_eq!(
        hashes[0],
        originals.iter().map(|e| test_hmac(e)).collect::<Vec<_>>(),
        "each Email is its HMAC-SHA256 under the key"
    );
    assert_eq!(hashes[0], hashes[1], "the same input hashes the same way");
    assert_eq!(hashes[0].len(), hashes[2].len());
    assert!(
        hashes[0].iter().zip(&hashes[2]).all(|(a, b)| a != b),
        "another key gives other hashes"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_filter_keeps_exactly_the_matching_events() {
    let sim = start(sim_config(&["Account", "Contact", "Lead"], 100)).await;
    let all = tempfile::tempdir().unwrap();
    run(plan(&sim, all.path(), "/data/ChangeEvents", &[]))
        .await
        .unwrap();
    let expected: Vec<String> = rows(&out(all.path()))
        .iter()
        .filter(|r| {
            matches!(r["entity_name"].as_str(), Some("Account" | "Lead"))
                && r["change_type"] == "UPDATE"
        })
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let flags = chain(&[(
        "tenant-filter",
        &["entities=Account,Lead", "change-types=UPDATE"],
    )]);
    let stats = run(plan(&sim, dir.path(), "/data/ChangeEvents", &args(&flags)))
        .await
        .unwrap();
    let got: Vec<String> = rows(&out(dir.path()))
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(stats.dropped, 300 - expected.len() as u64);
    assert_eq!(
        stats.checkpoint.as_deref(),
        Some("000000000000012c"),
        "dropped events are passed by the checkpoint"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_writes_to_the_tables_it_names() {
    let sim = start(sim_config(&["Account", "Contact", "Opportunity"], 40)).await;
    let dir = tempfile::tempdir().unwrap();
    let flags = chain(&[(
        "route",
        &[
            "table.Account=account_events",
            "table.Contact=contact_events",
        ],
    )]);
    run(plan(&sim, dir.path(), "/data/ChangeEvents", &args(&flags)))
        .await
        .unwrap();
    let accounts = rows(&dir.path().join("account_events.jsonl"));
    let contacts = rows(&dir.path().join("contact_events.jsonl"));
    let rest = rows(&out(dir.path()));
    assert_eq!((accounts.len(), contacts.len(), rest.len()), (40, 40, 40));
    assert!(accounts.iter().all(|r| r["entity_name"] == "Account"));
    assert!(contacts.iter().all(|r| r["entity_name"] == "Contact"));
    assert!(rest.iter().all(|r| r["entity_name"] == "Opportunity"));
    sim.shutdown().await;
}

/// Runs `faulty` misbehaving in `mode` on every 10th of 50 Account events.
async fn faulty(
    mode: &str,
    extra: &[&str],
) -> (
    Result<sfzb_host::pipeline::SubscriptionStats, sfzb_host::Error>,
    Vec<u64>,
    Vec<serde_json::Value>,
) {
    let sim = start(sim_config(&["Account"], 50)).await;
    let dir = tempfile::tempdir().unwrap();
    let setting = format!("mode={mode}");
    let mut flags = chain(&[("faulty", &[setting.as_str(), "every=10"])]);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let result = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &args(&flags),
    ))
    .await;
    let written = rows(&out(dir.path())).iter().map(replay).collect();
    let dead = rows(&dead(dir.path()));
    sim.shutdown().await;
    (result, written, dead)
}

fn all_but_every_tenth() -> Vec<u64> {
    (1..=50).filter(|p| p % 10 != 0).collect()
}

fn assert_dead_lettered(dead: &[serde_json::Value], reason: &str) {
    assert_eq!(
        dead.iter().map(replay).collect::<Vec<_>>(),
        [10, 20, 30, 40, 50]
    );
    for letter in dead {
        let error = letter["error"].as_str().unwrap();
        assert!(error.contains(reason), "{error} should say {reason}");
        assert_eq!(letter["stage"]["transform"], "faulty", "{letter}");
        assert!(
            !letter["payload"].as_str().unwrap().is_empty(),
            "the original event is kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_guest_dead_letters_the_event_and_the_stream_goes_on() {
    let (result, written, dead) = faulty("trap", &[]).await;
    let stats = result.unwrap();
    assert_eq!(written, all_but_every_tenth());
    assert_dead_lettered(&dead, "trapped");
    assert_eq!(
        stats.transforms[0].recycled, 5,
        "a fresh instance after each trap"
    );
    assert_eq!(stats.checkpoint.as_deref(), Some("0000000000000032"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_guest_is_dead_lettered_and_the_stream_goes_on() {
    let (result, written, dead) = faulty("loop", &["--transform-timeout-ms", "50"]).await;
    result.unwrap();
    assert_eq!(written, all_but_every_tenth());
    assert_dead_lettered(&dead, "timed out: ran longer than 50 ms");
}

/// The faulty guest alone, with `settings` and `limits`, on the standard Account event.
fn faulty_chain(
    settings: &[(&str, &str)],
    limits: sfzb_host::transform::Limits,
    fuel: bool,
) -> sfzb_host::transform::Chain {
    let options = sfzb_host::transform::RuntimeOptions {
        fuel,
        ..Default::default()
    };
    let runtime = std::sync::Arc::new(sfzb_host::transform::Runtime::new(options).unwrap());
    let spec = sfzb_host::transform::TransformSpec {
        name: "faulty".into(),
        path: guests::component("faulty"),
        config: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        on_error: Default::default(),
        limits,
        allow_tables: vec![],
        keys: Default::default(),
        scope: None,
    };
    sfzb_host::transform::Chain::load(runtime, &[spec]).unwrap()
}

fn account_event() -> sfzb_host::event::ChangeEvent {
    let entity = sfzb_host::sim::catalog::Entity::load("Account")
        .unwrap()
        .unwrap();
    sfzb_host::sim::generator::standard_account_event(&entity)
}

fn limits() -> sfzb_host::transform::Limits {
    sfzb_host::config::file::TransformSection::default().limits()
}

/// The time one call of a guest that never returns takes, with this timeout.
fn looping_call(timeout: Duration) -> (Duration, String) {
    let mut chain = faulty_chain(
        &[("mode", "loop")],
        sfzb_host::transform::Limits {
            timeout,
            ..limits()
        },
        false,
    );
    let started = Instant::now();
    let out = chain.run(vec![account_event()]);
    let took = started.elapsed();
    assert!(out.routed.is_empty());
    (took, out.failed[0].error.clone())
}

#[test]
fn a_looping_guest_is_stopped_at_its_deadline() {
    for timeout in [Duration::from_millis(50), Duration::from_millis(400)] {
        let (took, error) = looping_call(timeout);
        assert!(
            error.contains(&format!("ran longer than {} ms", timeout.as_millis())),
            "{error}"
        );
        // Not before its deadline, and soon after it (the epoch ticks every 2 ms): a
        // deadline that were fixed, or counted from elsewhere, fails one of the two.
        assert!(
            took >= timeout,
            "stopped after {took:?}, before its {timeout:?}"
        );
        assert!(
            took < timeout + Duration::from_millis(150),
            "stopped {took:?} into a {timeout:?} deadline"
        );
    }
}

#[test]
fn a_guest_out_of_fuel_is_stopped_by_fuel_not_time() {
    let mut chain = faulty_chain(
        &[("mode", "loop")],
        sfzb_host::transform::Limits {
            timeout: Duration::from_secs(60),
            fuel: Some(2_000_000),
            ..limits()
        },
        true,
    );
    let out = chain.run(vec![account_event()]);
    assert!(out.routed.is_empty());
    let error = &out.failed[0].error;
    assert!(error.contains("ran out of fuel (2000000 units)"), "{error}");
    assert_eq!(
        chain.stats()[0].recycled,
        1,
        "a trapped instance is replaced"
    );
    // The next event gets a fresh instance and its own fuel.
    let out = chain.run(vec![account_event()]);
    assert!(out.failed[0].error.contains("ran out of fuel"));
}

#[test]
fn recycle_after_replaces_the_instance_every_n_events() {
    // The guest fails every 4th event it sees; an instance replaced every 3 events never
    // sees a 4th.
    let settings = [("mode", "error"), ("every", "4")];
    let run = |recycle_after: u64| {
        let mut chain = faulty_chain(
            &settings,
            sfzb_host::transform::Limits {
                recycle_after,
                ..limits()
            },
            false,
        );
        let mut failed = 0;
        for _ in 0..12 {
            failed += chain.run(vec![account_event()]).failed.len();
        }
        (failed, chain.stats()[0].recycled)
    };
    assert_eq!(
        run(3),
        (0, 4),
        "recycled after events 3, 6, 9 and 12; never a 4th event"
    );
    assert_eq!(run(100), (3, 0), "one instance sees events 4, 8 and 12");
}

#[test]
fn an_instance_past_three_quarters_of_its_memory_is_replaced_before_it_traps() {
    // 1 MiB kept per event: with 16 MiB, an instance never recycled runs out within 16
    // events; past 12 MiB it is replaced between events instead.
    let mut chain = faulty_chain(
        &[("mode", "leak")],
        sfzb_host::transform::Limits {
            memory_bytes: 16 << 20,
            ..limits()
        },
        false,
    );
    let mut failed = Vec::new();
    for _ in 0..40 {
        failed.extend(chain.run(vec![account_event()]).failed);
    }
    assert!(
        failed.is_empty(),
        "{:?}",
        failed.iter().map(|f| &f.error).collect::<Vec<_>>()
    );
    let recycled = chain.stats()[0].recycled;
    // recycle-after is 100,000 and nothing trapped: only the high-water mark replaced them.
    assert!(
        recycled >= 2,
        "40 MiB kept in 12 MiB instances needs new ones: {recycled}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_allocating_without_bound_hits_its_memory_cap() {
    let (result, written, dead) = faulty("alloc", &["--transform-memory-mib", "16"]).await;
    result.unwrap();
    assert_eq!(written, all_but_every_tenth());
    assert_dead_lettered(&dead, "memory limit of 16 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_errors_and_invalid_results_are_dead_lettered() {
    let (result, written, dead) = faulty("error", &[]).await;
    result.unwrap();
    assert_eq!(written, all_but_every_tenth());
    assert_dead_lettered(&dead, "refusing event");

    let (result, written, dead) = faulty("bad-table", &[]).await;
    result.unwrap();
    assert_eq!(written, all_but_every_tenth());
    assert_dead_lettered(&dead, "not a valid table name");

    let (result, written, dead) = faulty("malformed", &[]).await;
    result.unwrap();
    assert_eq!(written, all_but_every_tenth());
    assert_dead_lettered(&dead, "does not fit the schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_writes_copies() {
    let (result, written, dead) = faulty("fanout", &[]).await;
    result.unwrap();
    assert!(dead.is_empty());
    let mut want: Vec<u64> = (1..=50).collect();
    want.extend([10, 20, 30, 40, 50]);
    want.sort_unstable();
    let mut got = written;
    got.sort_unstable();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_passes_the_event_on_and_stop_halts_before_it() {
    let (result, written, dead) = faulty("trap", &["--transform-on-error", "faulty=skip"]).await;
    assert_eq!(result.unwrap().transforms[0].skipped, 5);
    assert_eq!(written, (1..=50).collect::<Vec<_>>());
    assert!(dead.is_empty());

    let (result, written, _) = faulty("error", &["--transform-on-error", "stop"]).await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("on_error = stop") && err.contains("000000000000000a"),
        "{err}"
    );
    assert!(!written.contains(&10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_configuration_stops_before_any_event() {
    let sim = start(sim_config(&["Account"], 5)).await;
    let dir = tempfile::tempdir().unwrap();
    let flags = chain(&[("mask", &["mode=hash"])]);
    let err = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &args(&flags),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().contains("mask refused its configuration")
            && err.to_string().contains("fields"),
        "{err}"
    );
    assert!(rows(&out(dir.path())).is_empty());
    sim.shutdown().await;
}

#[test]
fn a_component_needing_an_unknown_import_fails_at_load_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("needs-more.wasm");
    let bytes = wat::parse_str(
        r#"(component (import "acme:secret/exfiltrate" (instance (export "send" (func)))))"#,
    )
    .unwrap();
    std::fs::write(&path, bytes).unwrap();
    let runtime =
        std::sync::Arc::new(sfzb_host::transform::Runtime::new(Default::default()).unwrap());
    let spec = sfzb_host::transform::TransformSpec {
        name: "needs-more".into(),
        path,
        config: vec![],
        on_error: Default::default(),
        limits: sfzb_host::config::file::TransformSection::default().limits(),
        allow_tables: vec![],
        keys: Default::default(),
        scope: None,
    };
    let err = sfzb_host::transform::Chain::load(runtime, &[spec])
        .err()
        .expect("linking fails")
        .to_string();
    assert!(err.contains("acme:secret/exfiltrate"), "{err}");
}

#[test]
fn the_compile_cache_serves_the_second_load() {
    use sfzb_host::transform::engine::LoadedFrom;
    let cache = tempfile::tempdir().unwrap();
    let options = sfzb_host::transform::RuntimeOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let runtime = sfzb_host::transform::Runtime::new(options.clone()).unwrap();
    assert_eq!(
        runtime
            .program("route", &guests::component("route"))
            .unwrap()
            .1,
        LoadedFrom::Compiled
    );
    let again = sfzb_host::transform::Runtime::new(options).unwrap();
    assert_eq!(
        again
            .program("route", &guests::component("route"))
            .unwrap()
            .1,
        LoadedFrom::Cache
    );
    let fuel = sfzb_host::transform::Runtime::new(sfzb_host::transform::RuntimeOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        fuel: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        fuel.program("route", &guests::component("route"))
            .unwrap()
            .1,
        LoadedFrom::Compiled,
        "another engine configuration compiles anew"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_component_is_swapped_in_between_events_and_a_bad_one_is_refused() {
    let mut config = sim_config(&["Account"], 10);
    config.rate = 25.0;
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("t.wasm");
    let replace = |from: &std::path::Path| {
        let tmp = dir.path().join("t.wasm.tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, &component).unwrap();
    };
    replace(&guests::component("faulty"));
    let flags: Vec<String> = vec![
        "--transform-cache-dir".into(),
        cache(),
        "--transform".into(),
        component.display().to_string(),
        "--transform-config".into(),
        "t.default=rerouted".into(),
        "--until-idle".into(),
        "30".into(),
    ];
    let plan = plan(&sim, dir.path(), "/data/AccountChangeEvent", &args(&flags));
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(sfzb_host::run(plan, cancel.clone()));
    let dead_file = dead(dir.path());
    wait_for("the first component to dead-letter events", || {
        lines(&dead_file) >= 20
    })
    .await;
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a component").unwrap();
    replace(&garbage);
    // The running chain stays through the bad file: events keep being dead-lettered.
    let before = lines(&dead_file);
    wait_for("the kept chain to go on", || {
        lines(&dead_file) >= before + 20
    })
    .await;
    replace(&guests::component("route"));
    let rerouted_file = dir.path().join("rerouted.jsonl");
    wait_for("the new component to route", || lines(&rerouted_file) >= 20).await;
    cancel.cancel();
    let stats = run.await.unwrap().unwrap();
    sim.shutdown().await;

    let dead: Vec<u64> = rows(&dead(dir.path())).iter().map(replay).collect();
    let rerouted: Vec<u64> = rows(&dir.path().join("rerouted.jsonl"))
        .iter()
        .map(replay)
        .collect();
    assert!(
        dead.len() >= 40,
        "the first component (and the chain kept through the bad file) dead-lettered: {}",
        dead.len()
    );
    assert!(!rerouted.is_empty(), "the new component routes");
    assert!(
        dead.iter().max() < rerouted.iter().min(),
        "swapped between events, in order"
    );
    let mut all: Vec<u64> = dead.iter().chain(&rerouted).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
    assert!(rows(&out(dir.path())).is_empty());
    let stats = single(stats).unwrap();
    assert_eq!(stats.transforms[0].name, "t");
}

/// A component built against contract 0.1.0 (the mask before 0.1.1, kept as it was built
/// in tests/fixtures) runs on this host unchanged: its 0.1.0 imports link to the 0.1.1
/// host, and it masks exactly as the mask built from today's source.
#[test]
fn a_component_of_the_0_1_0_contract_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_rows(
        dir.path(),
        &["--entities", "Account,Contact", "--events", "40"],
    );
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mask-contract-0.1.0.wasm");
    let bytes = std::fs::read(&old).unwrap();
    let imports = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        imports("sfzb:transform/types@0.1.0") && !imports("@0.1.1"),
        "the fixture is a 0.1.0 component"
    );
    let cache = guests::dir().join("../compile-cache");
    let config = ["fields=Email,*Phone,Name.LastName"];
    let rows = transform_outputs(&old, &sample, &config, &cache);
    let events = std::fs::read_to_string(&sample).unwrap().lines().count();
    assert_eq!(rows.len(), events);
    assert!(
        rows.iter()
            .any(|r| values_of(&r["row"], &["Phone"]) == ["REDACTED"])
    );
    assert_eq!(
        rows,
        transform_outputs(&guests::component("mask"), &sample, &config, &cache)
    );
}

/// A component of a contract this host does not implement is refused before it runs,
/// with the version it wants and the commands that rebuild it.
#[test]
fn a_component_of_an_unknown_contract_is_refused_with_the_rebuild_command() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("future.wasm");
    let wasm = wat::parse_str(
        r#"(component
            (import "sfzb:transform/host@0.2.0" (instance
                (export "log" (func (param "message" string)))
            ))
        )"#,
    )
    .unwrap();
    std::fs::write(&component, wasm).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sfzb-host"))
        .args(["transform", "bench"])
        .arg(&component)
        .args(["--events", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    for expected in [
        "built against sfzb:transform@0.2.0",
        "it implements sfzb:transform@0.1.1",
        "cargo build --release --target wasm32-wasip2",
        "componentize-py",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// What a guest prints goes to the host's log (stdout at info, stderr at warn), tagged with
/// the transform, and never into the data on the host's stdout.
#[test]
fn what_a_guest_prints_is_logged_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_rows(dir.path(), &["--entities", "Account", "--events", "3"]);
    let cache = guests::dir().join("../compile-cache");
    let (rows, stderr) = transform_test(
        &guests::component("faulty"),
        &sample,
        &["mode=print"],
        &cache,
    );
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| !r.to_string().contains("printed on")));
    for (level, stream) in [("INFO", "stdout"), ("WARN", "stderr")] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&format!("printed on {stream} by event")))
            .collect();
        assert_eq!(lines.len(), 3, "{stderr}");
        assert!(
            lines
                .iter()
                .all(|l| l.contains(level) && l.contains("transform=\"faulty\"")),
            "{lines:?}"
        );
    }
}

/// The counters a transform defines are served at `/metrics` with its subscription and
/// name, and equal what the run reports when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transforms_own_counters_are_at_metrics() {
    let sim = start(sim_config(&["Account"], 50)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut flags = chain(&[("mask", &["fields=PersonEmail,*Phone"])]);
    flags.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = sfzb_host::start(
        service_plan(&sim, dir.path(), "/data/AccountChangeEvent", &args(&flags)),
        cancel.clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/metrics", started.metrics_addr().unwrap());
    let running = tokio::spawn(started.wait());
    let counter = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("sfzb_transform_counter_total{")
                    && l.contains("transform=\"mask\"")
                    && l.contains("name=\"masked_values\"")
                    && l.contains("subscription=\"AccountChangeEvent\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, served) = loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let all_written = text
            .lines()
            .any(|l| l.starts_with("sfzb_events_written_total{") && l.ends_with(" 50"));
        if all_written && let Some(n) = counter(&text) {
            break (text, n);
        }
        assert!(Instant::now() < deadline, "no counter at /metrics: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains("# TYPE sfzb_transform_counter counter"),
        "{text}"
    );
    // The process's instances: the mask's was started (no idle one fitted at first), under
    // the default transform-idle-mib.
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
    };
    assert!(
        value("sfzb_transform_instances_started_total").is_some_and(|n| n >= 1),
        "{text}"
    );
    assert_eq!(
        value("sfzb_transform_idle_bytes_limit"),
        Some(256 << 20),
        "{text}"
    );
    cancel.cancel();
    let stats = single(running.await.unwrap()).unwrap();
    let reported = stats.transforms[0].metrics.counters["masked_values"];
    assert!(reported > 0);
    assert_eq!(served, reported, "/metrics serves the run's own count");
    // Counted here: every non-null PersonEmail and *Phone value of the written rows was
    // masked (the rows hold REDACTED for each).
    let masked: usize = rows(&out(dir.path()))
        .iter()
        .map(|r| {
            let record: serde_json::Value =
                serde_json::from_str(r["record_data_json"].as_str().unwrap()).unwrap();
            record
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, v)| {
                    (*k == "PersonEmail" || k.ends_with("Phone")) && v.as_str() == Some("REDACTED")
                })
                .count()
        })
        .sum();
    assert_eq!(reported as usize, masked);
    sim.shutdown().await;
}

/// A mask chain on `runtime` masking `fields`, its instances kept apart by `scope` if any.
fn mask_chain(
    runtime: &std::sync::Arc<sfzb_host::transform::Runtime>,
    fields: &str,
    scope: Option<&str>,
) -> sfzb_host::transform::Chain {
    let spec = sfzb_host::transform::TransformSpec {
        name: "mask".into(),
        path: guests::component("mask"),
        config: vec![("fields".into(), fields.into())],
        on_error: Default::default(),
        limits: limits(),
        allow_tables: vec![],
        keys: Default::default(),
        scope: scope.map(str::to_string),
    };
    sfzb_host::transform::Chain::load(runtime.clone(), &[spec]).unwrap()
}

/// The text of `field` in each routed event.
fn routed_values(out: &sfzb_host::transform::ChainOutput, field: &str) -> Vec<String> {
    out.routed
        .iter()
        .map(|r| format!("{:?}", r.event.get(field)))
        .collect()
}

#[test]
fn chains_of_one_configuration_share_an_instance_and_keep_their_own_figures() {
    use std::sync::atomic::Ordering::Relaxed;
    let runtime =
        std::sync::Arc::new(sfzb_host::transform::Runtime::new(Default::default()).unwrap());
    let figures = runtime.pool_figures();
    let started = || figures.started.load(Relaxed);
    let mut a = mask_chain(&runtime, "Phone", None);
    let mut b = mask_chain(&runtime, "Phone", None);
    assert_eq!(
        started(),
        1,
        "the second chain's init is the first's: its instance waited idle"
    );
    let out_a = a.run(vec![account_event(); 3]);
    let out_b = b.run(vec![account_event(); 5]);
    assert_eq!(started(), 1, "one instance served both chains");
    assert_eq!(figures.idle.load(Relaxed), 1, "and is idle again");
    assert!(
        routed_values(&out_b, "Phone")
            .iter()
            .all(|v| v.contains("REDACTED"))
    );
    // Figures go to the chain the instance served at the time.
    let masked =
        |chain: &sfzb_host::transform::Chain| chain.stats()[0].metrics.counters["masked_values"];
    assert!(masked(&a) > 0);
    assert_eq!(masked(&a) * 5, masked(&b) * 3, "3 events against 5");
    assert_eq!((a.stats()[0].events_in, b.stats()[0].events_in), (3, 5));
    drop(out_a);

    // Another configuration, or an org that keeps its instances to itself, gets its own.
    let mut other = mask_chain(&runtime, "Phone,Name", None);
    assert_eq!(started(), 2);
    let out = other.run(vec![account_event()]);
    assert!(
        routed_values(&out, "Name")[0].contains("REDACTED"),
        "{:?}",
        routed_values(&out, "Name")
    );
    let out = a.run(vec![account_event()]);
    assert!(
        !routed_values(&out, "Name")[0].contains("REDACTED"),
        "the first configuration's instance still masks Phone only"
    );
    mask_chain(&runtime, "Phone", Some("acme"));
    assert_eq!(
        started(),
        3,
        "share-instances = false: an instance of acme's own"
    );
    assert_eq!(figures.evicted.load(Relaxed), 0);
}

#[test]
fn idle_instances_past_the_budget_are_dropped_and_started_again_when_needed() {
    use std::sync::atomic::Ordering::Relaxed;
    let options = sfzb_host::transform::RuntimeOptions {
        idle_bytes: 1,
        ..Default::default()
    };
    let runtime = std::sync::Arc::new(sfzb_host::transform::Runtime::new(options).unwrap());
    let figures = runtime.pool_figures();
    let mut chains: Vec<_> = ["Phone", "Name", "Phone,Name"]
        .iter()
        .map(|fields| mask_chain(&runtime, fields, None))
        .collect();
    assert_eq!(figures.started.load(Relaxed), 3);
    assert_eq!(
        figures.evicted.load(Relaxed),
        3,
        "none fits a budget of one byte"
    );
    assert_eq!(
        (figures.idle.load(Relaxed), figures.idle_bytes.load(Relaxed)),
        (0, 0)
    );
    for _ in 0..2 {
        let outs: Vec<_> = chains
            .iter_mut()
            .map(|c| c.run(vec![account_event(); 2]))
            .collect();
        assert!(
            routed_values(&outs[0], "Phone")
                .iter()
                .all(|v| v.contains("REDACTED"))
        );
        assert!(
            !routed_values(&outs[0], "Name")
                .iter()
                .any(|v| v.contains("REDACTED"))
        );
        assert!(
            routed_values(&outs[1], "Name")
                .iter()
                .all(|v| v.contains("REDACTED"))
        );
        assert!(
            routed_values(&outs[2], "Name")
                .iter()
                .all(|v| v.contains("REDACTED"))
        );
    }
    assert_eq!(
        figures.started.load(Relaxed),
        9,
        "each batch started its chain an instance: 3 loads and 3 × 2 batches"
    );
    assert_eq!(figures.evicted.load(Relaxed), 9);
}
