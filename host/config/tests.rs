use super::*;
use clap::Parser;
use secrecy::SecretString;

use crate::event::ReplayId;

fn run_args(extra: &[&str]) -> Result<RunPlan, ConfigError> {
    let mut argv = vec![
        "sfzb-host",
        "run",
        "--instance-url",
        "http://127.0.0.1:1",
        "--channel",
        "AccountChangeEvent",
    ];
    argv.extend_from_slice(extra);
    let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
    match cli.into_command() {
        crate::cli::Command::Run(args) => args.plan(),
        _ => unreachable!(),
    }
}

#[test]
fn channels_normalize_and_bad_ones_are_named() {
    assert_eq!(
        normalize_channel("AccountChangeEvent").unwrap(),
        "/data/AccountChangeEvent"
    );
    assert_eq!(
        normalize_channel("/data/Foo__chn").unwrap(),
        "/data/Foo__chn"
    );
    assert!(
        normalize_channel("/nope/x/y")
            .unwrap_err()
            .to_string()
            .contains("/data/AccountChangeEvent")
    );
    assert!(normalize_channel("").is_err());
}

#[test]
fn auth_flow_is_inferred_and_missing_secrets_say_where_to_put_them() {
    let plan = run_args(&["--username", "u", "--password", "p"]).unwrap();
    assert_eq!(plan.orgs[0].credentials.kind(), "soap");
    let plan = run_args(&["--client-id", "c", "--client-secret", "s"]).unwrap();
    assert_eq!(plan.orgs[0].credentials.kind(), "client-credentials");
    let plan = run_args(&[
        "--client-id",
        "c",
        "--client-secret",
        "s",
        "--username",
        "u",
        "--password",
        "p",
    ])
    .unwrap();
    assert_eq!(plan.orgs[0].credentials.kind(), "password");
    let err = run_args(&["--username", "u"]).unwrap_err().to_string();
    assert!(err.contains("SALESFORCE_PASSWORD"), "{err}");
    let err = run_args(&[
        "--jwt-key-file",
        "/nonexistent/key.pem",
        "--client-id",
        "c",
        "--username",
        "u",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
}

#[test]
fn bad_values_name_key_value_and_fix() {
    let err = run_args(&["--username", "u", "--password", "p", "--replay", "zz"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("replay") && err.contains("zz") && err.contains("earliest"),
        "{err}"
    );
    let cases: [(&[&str], &[&str]); 7] = [
        (&["--sink", "out.jsonl"], &["sink", "jsonl:PATH"]),
        (
            &["--sink", "zerobus:main.s.t; DROP TABLE x --"],
            &["catalog.schema.table"],
        ),
        (
            &["--sink", "zerobus:main.s.t", "--zerobus-endpoint", "zb:443"],
            &["zerobus-endpoint", "zerobus.<region>.cloud.databricks.com"],
        ),
        (
            &["--sink", "delta:s3://bucket/t"],
            &["not built into this binary"],
        ),
        (&["--sink", "zerobus:accounts"], &["catalog.schema.table"]),
        (&["--sink", "zerobus:main.s.t"], &["zerobus-endpoint"]),
        (&["--pubsub-endpoint", "api:7443"], &["pubsub-endpoint"]),
    ];
    for (flags, expected) in cases {
        let mut argv = vec!["--username", "u", "--password", "p"];
        argv.extend_from_slice(flags);
        let err = run_args(&argv).unwrap_err().to_string();
        assert!(expected.iter().all(|e| err.contains(e)), "{flags:?}: {err}");
    }
    let plan = run_args(&[
        "--username",
        "u",
        "--password",
        "p",
        "--replay",
        "00000000000000ff",
    ])
    .unwrap();
    assert_eq!(
        plan.subscriptions[0].config.replay,
        Some(StartPosition::Custom(
            ReplayId::from_hex("00000000000000ff").unwrap()
        ))
    );
}

#[test]
fn shards_parse_and_split_every_subscription_to_exactly_one() {
    for bad in ["2/2", "1", "a/2", "0/0", "-1/3"] {
        let err = Shard::parse(bad).unwrap_err().to_string();
        assert!(err.contains("shard") && err.contains("I/N"), "{bad}: {err}");
    }
    let org = |name: &str| OrgConfig {
        name: name.into(),
        pubsub_endpoint: String::new(),
        login_url: String::new(),
        api_version: String::new(),
        credentials: Credentials::Soap {
            username: "u".into(),
            password: SecretString::from("p"),
        },
        transform_config: Vec::new(),
    };
    let shards: Vec<Shard> = (0..3)
        .map(|i| Shard::parse(&format!("{i}/3")).unwrap())
        .collect();
    for org in [org("a"), org("b")] {
        for entity in ["Account", "Contact", "Lead", "Opportunity", "Case"] {
            let channel = format!("/data/{entity}ChangeEvent");
            let owners = shards.iter().filter(|s| s.owns(&org, &channel)).count();
            assert_eq!(owners, 1, "{} {channel}", org.name);
        }
    }
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sfzb.toml");
    std::fs::write(
        &file,
        "max-in-flight = 500\nflush-interval-ms = 250\n[salesforce]\ninstance-url = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword = \"p\"\n[defaults]\nbatch-size = 20\n[[subscription]]\nchannel = \"AccountChangeEvent\"\nbatch-size = 30\n",
    )
    .unwrap();
    let from = |extra: &[&str]| {
        let mut argv = vec!["sfzb-host", "--config", file.to_str().unwrap()];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv)
            .unwrap()
            .into_command()
        {
            crate::cli::Command::Run(args) => args.plan().unwrap(),
            _ => unreachable!(),
        }
    };
    let plan = from(&["--max-in-flight", "7"]);
    assert_eq!(plan.options.max_in_flight, 7, "the flag wins");
    assert_eq!(
        plan.options.flush_interval,
        Duration::from_millis(250),
        "the file wins over the default"
    );
    assert_eq!(
        plan.subscriptions[0].config.batch_size, 30,
        "a subscription wins over [defaults]"
    );
    assert_eq!(
        plan.subscriptions[0].config.idle_timeout,
        Duration::from_secs(300),
        "default"
    );
    assert_eq!(
        from(&["--batch-size", "5"]).subscriptions[0]
            .config
            .batch_size,
        5
    );
    let plan = from(&["--channel", "ContactChangeEvent"]);
    assert_eq!(plan.subscriptions.len(), 1);
    assert_eq!(
        plan.subscriptions[0].config.channel,
        "/data/ContactChangeEvent"
    );
    assert_eq!(
        plan.subscriptions[0].config.batch_size, 20,
        "--channel takes [defaults]"
    );
}

#[test]
fn boolean_settings_take_a_value_after_equals_or_mean_true_alone() {
    let backfill = |extra: &[&str]| {
        let mut argv = vec!["--username", "u", "--password", "p"];
        argv.extend_from_slice(extra);
        run_args(&argv).unwrap().subscriptions[0]
            .config
            .backfill_historical
    };
    assert!(backfill(&[]), "the default");
    assert!(!backfill(&["--backfill-historical=false"]));
    assert!(backfill(&["--backfill-historical"]));
    // Alone, the flag takes no value: what follows is the next argument, not a boolean.
    let cli = crate::cli::Cli::try_parse_from([
        "sfzb-host",
        "config",
        "check",
        "--backfill-historical",
        "sfzb.toml",
    ])
    .unwrap();
    let crate::cli::Command::Config(crate::cli::ConfigCommand::Check { file, run }) =
        cli.into_command()
    else {
        panic!("config check parses as config check")
    };
    assert_eq!(file.as_deref(), Some(std::path::Path::new("sfzb.toml")));
    assert_eq!(run.subscription.backfill_historical, Some(true));
}

/// `{tenant}` is every tenant's own in `current-state` as in `sink` (a literal
/// `lake/{tenant}/cur` shared by every tenant was the bug), and a current-state path
/// that two tenants would share is refused naming the key and the fix.
#[test]
fn current_state_takes_the_tenant_template_and_one_table_per_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("t.toml");
    std::fs::write(
        &tenants,
        "[acme]\nclient-id = \"1\"\nclient-secret = \"a\"\n[globex]\nclient-id = \"2\"\nclient-secret = \"b\"\n",
    )
    .unwrap();
    let with = |current: &str| {
        run_args(&[
            "--tenants",
            tenants.to_str().unwrap(),
            "--layout",
            "typed",
            "--sink",
            "delta:lake/{tenant}/acc",
            "--current-state",
            current,
        ])
    };
    let plan = with("delta:lake/{tenant}/{object}_current").unwrap();
    let mut paths: Vec<String> = plan
        .subscriptions
        .iter()
        .map(|s| s.config.current_state.as_ref().unwrap().to_string())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "delta:lake/acme/Account_current",
            "delta:lake/globex/Account_current"
        ]
    );
    let error = with("delta:lake/cur").unwrap_err().to_string();
    assert!(
        error.contains("current-state")
            && error.contains("already keeps this current-state table")
            && error.contains("{tenant}"),
        "{error}"
    );
}

/// A tenant renamed in the tenants file is the same org: its identity, and so its
/// Lease's name, does not change with the entry's name; another login is another org.
#[test]
fn an_orgs_identity_and_lease_outlive_a_rename() {
    let org = |name: &str, client: &str| OrgConfig {
        name: name.into(),
        pubsub_endpoint: "https://api.pubsub.salesforce.com:7443".into(),
        login_url: "https://acme.my.salesforce.com/".into(),
        api_version: "62.0".into(),
        credentials: crate::salesforce::auth::Credentials::ClientCredentials {
            client_id: client.into(),
            client_secret: SecretString::from("s"),
        },
        transform_config: Vec::new(),
    };
    let (old, renamed, other) = (org("acme", "c1"), org("acme-corp", "c1"), org("acme", "c2"));
    assert_eq!(old.identity(), "c1@acme.my.salesforce.com");
    assert_eq!(old.identity(), renamed.identity());
    let lease = |o: &OrgConfig| {
        crate::lease::Fence::lease_name(&o.identity(), "/data/AccountChangeEvent", "delta:t")
    };
    assert_eq!(lease(&old), lease(&renamed));
    assert_ne!(lease(&old), lease(&other));
}
