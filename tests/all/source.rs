//! The subscriber, decoder, jsonl sink and checkpoints against the simulated Pub/Sub API.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_event_in_replay_order_with_decoded_fields() {
    let sim = start(sim_config(&["Account", "Contact"], 300)).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(plan(&sim, dir.path(), "/data/AccountChangeEvent", &[]))
        .await
        .unwrap();
    let rows = rows(&out(dir.path()));
    assert_eq!(stats.written, 300);
    assert_eq!(
        rows.iter().map(replay).collect::<Vec<_>>(),
        positions(0, 2, 300)
    );
    for row in &rows {
        assert_eq!(row["entity_name"], "Account");
        assert_eq!(row["org_id"], sim.org().org_id.as_str());
        let record: serde_json::Value =
            serde_json::from_str(row["record_data_json"].as_str().unwrap()).unwrap();
        assert!(
            record.get("ChangeEventHeader").is_none() && record.get("Name").is_some(),
            "the data fields as the reference writes them, header excluded: {record}"
        );
        if row["change_type"] == "UPDATE" {
            let changed = row["changed_fields"].as_array().unwrap();
            assert!(changed.iter().any(|f| f == "LastModifiedDate"), "{row}");
            for name in changed {
                let top = name.as_str().unwrap().split('.').next().unwrap();
                assert!(
                    !record[top].is_null(),
                    "changed field {name} is null in {record}"
                );
            }
        }
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_a_replay_id_and_from_the_checkpoint() {
    let sim = start(sim_config(&["Account"], 100)).await;
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    run(plan(
        &sim,
        other.path(),
        "/data/AccountChangeEvent",
        &["--replay", "0000000000000032"],
    ))
    .await
    .unwrap();
    let after_50 = rows(&out(other.path()));
    assert_eq!(
        after_50.iter().map(replay).collect::<Vec<_>>(),
        (51..=100).collect::<Vec<_>>()
    );

    run(plan(&sim, dir.path(), "/data/AccountChangeEvent", &[]))
        .await
        .unwrap();
    sim.shutdown().await;
    // The same seed with more events extends the same sequence: the next run resumes after
    // the checkpoint and writes only the new events.
    let mut config = sim_config(&["Account"], 160);
    let bigger = start(config.clone()).await;
    run(plan(&bigger, dir.path(), "/data/AccountChangeEvent", &[]))
        .await
        .unwrap();
    let all = rows(&out(dir.path()));
    assert_eq!(
        all.iter().map(replay).collect::<Vec<_>>(),
        (1..=160).collect::<Vec<_>>()
    );
    bigger.shutdown().await;

    // An explicit start position wins over the checkpoint.
    config.events = 160;
    let again = start(config).await;
    let stats = run(plan(
        &again,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--replay", "earliest"],
    ))
    .await
    .unwrap();
    assert_eq!(stats.received, 160);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_with_no_gap_and_no_duplicate() {
    let mut config = sim_config(&["Account", "Lead"], 400);
    config.stream_faults.end_stream_after = Some(37);
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(plan(&sim, dir.path(), "/data/LeadChangeEvent", &[]))
        .await
        .unwrap();
    let got: Vec<u64> = rows(&out(dir.path())).iter().map(replay).collect();
    assert_eq!(got, positions(1, 2, 400));
    assert_eq!(stats.received, 400);
    assert!(
        sim.stats.subscribes.load(Ordering::Relaxed) >= 400 / 37,
        "the stream was cut and resubscribed"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refreshed_and_the_stream_resumes() {
    let mut config = sim_config(&["Contact"], 500);
    config.stream_faults.expire_tokens_after = Some(150);
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    run(plan(&sim, dir.path(), "/data/ContactChangeEvent", &[]))
        .await
        .unwrap();
    let got: Vec<u64> = rows(&out(dir.path())).iter().map(replay).collect();
    assert_eq!(got, (1..=500).collect::<Vec<_>>());
    assert!(
        sim.org().tokens.issued_count() >= 2,
        "a second login happened"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_channel_mixes_entities_and_survives_a_schema_change() {
    let mut config = sim_config(&["Account", "Contact"], 150);
    config.event_faults.schema_change_at = Some(201);
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    run(plan(&sim, dir.path(), "/data/ChangeEvents", &[]))
        .await
        .unwrap();
    let rows = rows(&out(dir.path()));
    assert_eq!(
        rows.iter().map(replay).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    let schema_ids: std::collections::HashSet<&str> = rows
        .iter()
        .map(|r| r["schema_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        schema_ids.len(),
        4,
        "two entities, each before and after the change"
    );
    for row in &rows {
        let record: serde_json::Value =
            serde_json::from_str(row["record_data_json"].as_str().unwrap()).unwrap();
        assert_eq!(
            record.get("Sim_Tier__c").is_some(),
            replay(row) >= 201,
            "{}",
            replay(row)
        );
        assert!(record.get("ChangeEventHeader").is_none(), "{record}");
    }
    assert!(
        rows.iter().any(|r| r["entity_name"] == "Contact")
            && rows.iter().any(|r| r["entity_name"] == "Account")
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_payload_is_dead_lettered_with_its_replay_id() {
    let mut config = sim_config(&["Account"], 50);
    config.event_faults.corrupt_at = vec![17];
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(plan(&sim, dir.path(), "/data/AccountChangeEvent", &[]))
        .await
        .unwrap();
    let written: Vec<u64> = rows(&out(dir.path())).iter().map(replay).collect();
    assert_eq!(written, (1..=50).filter(|p| *p != 17).collect::<Vec<_>>());
    let dead = rows(&dead(dir.path()));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["replay_id"], "0000000000000011");
    assert_eq!(dead[0]["stage"], "decode");
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not match schema"),
        "{}",
        dead[0]
    );
    assert!(!dead[0]["payload"].as_str().unwrap().is_empty());
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(
        stats.checkpoint.as_deref(),
        Some("0000000000000032"),
        "the checkpoint passes the dead-lettered event"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_events_are_kept_and_marked() {
    let mut config = sim_config(&["Opportunity"], 40);
    config.event_faults.gap_every = Some(10);
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    run(plan(&sim, dir.path(), "/data/OpportunityChangeEvent", &[]))
        .await
        .unwrap();
    let rows = rows(&out(dir.path()));
    assert_eq!(rows.len(), 40);
    let gaps: Vec<u64> = rows
        .iter()
        .filter(|r| r["change_type"] == "GAP_UPDATE")
        .map(replay)
        .collect();
    assert_eq!(gaps, [10, 20, 30, 40]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_credit_never_exceeds_free_pipeline_capacity() {
    let sim = start(sim_config(&["Account"], 400)).await;
    let dir = tempfile::tempdir().unwrap();
    run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--max-in-flight", "10", "--batch-size", "100"],
    ))
    .await
    .unwrap();
    assert_eq!(rows(&out(dir.path())).len(), 400);
    let max_pending = sim.stats.max_pending.load(Ordering::Relaxed);
    assert!(
        max_pending <= 10 && max_pending > 0,
        "max requested at once: {max_pending}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_advance_the_checkpoint_of_an_idle_stream() {
    let sim = start(sim_config(&["Account", "Contact"], 20)).await;
    let dir = tempfile::tempdir().unwrap();
    let stats = run(plan(&sim, dir.path(), "/data/AccountChangeEvent", &[]))
        .await
        .unwrap();
    // The last Account event is at position 39; Contact's 40 comes after it on the bus.
    assert_eq!(
        rows(&out(dir.path())).iter().map(replay).next_back(),
        Some(39)
    );
    assert!(stats.keepalives > 0);
    assert_eq!(stats.checkpoint.as_deref(), Some("0000000000000028"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_trips_the_idle_watchdog_and_we_resubscribe() {
    let mut config = sim_config(&["Account"], 10);
    config.keepalive = Duration::from_secs(3600);
    config.rate = 0.6;
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--idle-timeout-secs", "1", "--until-idle", "30"],
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(sfzb_host::run(plan, cancel.clone()));
    let file = out(dir.path());
    wait_for("the watchdog to resubscribe and events to arrive", || {
        sim.stats.subscribes.load(Ordering::Relaxed) >= 2 && lines(&file) > 10
    })
    .await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let got: Vec<u64> = rows(&out(dir.path())).iter().map(replay).collect();
    assert!(
        got.len() > 10,
        "events produced after start arrive: {}",
        got.len()
    );
    assert_eq!(
        got,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_sees_only_events_published_after_the_subscription() {
    let mut config = sim_config(&["Account"], 50);
    config.rate = 50.0;
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--backfill-historical=false", "--until-idle", "30"],
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(sfzb_host::run(plan, cancel.clone()));
    let file = out(dir.path());
    wait_for("events published after the start", || lines(&file) >= 10).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let got: Vec<u64> = rows(&out(dir.path())).iter().map(replay).collect();
    assert!(
        got.iter().all(|p| *p > 50),
        "nothing retained before the start: {got:?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_channel_stops_with_a_message_naming_it() {
    let sim = start(sim_config(&["Account"], 5)).await;
    let dir = tempfile::tempdir().unwrap();
    let err = run(plan(&sim, dir.path(), "/data/Nope__ChangeEvent", &[]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/data/Nope__ChangeEvent") && err.contains("Change Data Capture"),
        "{err}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_replay_id_fails_by_default_and_falls_back_when_told() {
    let sim = start(sim_config(&["Account"], 30)).await;
    let dir = tempfile::tempdir().unwrap();
    let err = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--replay", "00000000000fffff"],
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("00000000000fffff") && err.contains("Events may be missing"),
        "{err}"
    );
    let err = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &["--replay", "abcd"],
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("corrupted"), "{err}");
    let stats = run(plan(
        &sim,
        dir.path(),
        "/data/AccountChangeEvent",
        &[
            "--replay",
            "00000000000fffff",
            "--replay-invalid",
            "earliest",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(stats.received, 30);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_are_delivered_to_subscribers() {
    use sfzb_host::proto::pubsub::pub_sub_client::PubSubClient;
    use sfzb_host::proto::pubsub::{ProducerEvent, PublishRequest};
    use sfzb_host::salesforce::auth::{Authenticator, Credentials};
    use sfzb_host::sim::catalog::Entity;
    use sfzb_host::sim::generator::{Position, generate};

    let sim = start(sim_config(&["Account"], 3)).await;
    let session = Authenticator::new(
        &sim.login_url(),
        "57.0",
        Credentials::Soap {
            username: "u".into(),
            password: "p".to_string().into(),
        },
    )
    .login()
    .await
    .unwrap();
    let token = secrecy::ExposeSecret::expose_secret(&session.access_token).to_string();
    let with_auth = |mut request: tonic::Request<()>| {
        let m = request.metadata_mut();
        m.insert("accesstoken", token.parse().unwrap());
        m.insert("instanceurl", session.instance_url.parse().unwrap());
        m.insert("tenantid", session.org_id.parse().unwrap());
        Ok(request)
    };
    let channel = tonic::transport::Endpoint::from_shared(sim.pubsub_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = PubSubClient::with_interceptor(channel, with_auth);
    let entity = Entity::load("Account").unwrap().unwrap();
    let event = |id: &str, schema_id: &str| {
        let g = generate(
            &entity,
            &entity.schema,
            99,
            Position {
                index: 500,
                seq: 500,
            },
            false,
        );
        ProducerEvent {
            id: id.into(),
            schema_id: schema_id.into(),
            payload: g.payload,
            headers: vec![],
        }
    };
    let response = client
        .publish(PublishRequest {
            topic_name: "/data/AccountChangeEvent".into(),
            events: vec![
                event("published-1", &entity.schema.id),
                event("bad-schema", "nope"),
            ],
            auth_refresh: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results[0].replay_id.as_ref(), &4u64.to_be_bytes());
    assert!(response.results[0].error.is_none());
    assert!(
        response.results[1].error.is_some(),
        "an unknown schema id is refused"
    );

    let requests = tokio_stream::iter(vec![PublishRequest {
        topic_name: "/data/AccountChangeEvent".into(),
        events: vec![event("published-2", &entity.schema.id)],
        auth_refresh: String::new(),
    }]);
    let mut responses = client.publish_stream(requests).await.unwrap().into_inner();
    let streamed = responses.message().await.unwrap().unwrap();
    assert_eq!(streamed.results[0].replay_id.as_ref(), &5u64.to_be_bytes());

    let dir = tempfile::tempdir().unwrap();
    run(plan(&sim, dir.path(), "/data/AccountChangeEvent", &[]))
        .await
        .unwrap();
    let ids: Vec<String> = rows(&out(dir.path()))
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(&ids[3..], ["published-1", "published-2"]);
    sim.shutdown().await;
}

/// GetSchema hangs (the server never answers): the call has the idle timeout's deadline,
/// after which the stream is opened again (a resubscription, counted), and a stop
/// cancels it at once rather than wait on the hung call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_get_schema_has_a_deadline_and_a_stop_cancels_it() {
    let mut config = sim_config(&["Account"], 20);
    config.stream_faults.hang_get_schema = true;
    let sim = start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = sfzb_host::start(
        service_plan(
            &sim,
            dir.path(),
            "/data/AccountChangeEvent",
            &["--idle-timeout-secs", "1"],
        ),
        cancel.clone(),
    )
    .await
    .unwrap();
    let health = started.registry().list().remove(0);
    let run = tokio::spawn(started.wait());
    wait_for(
        "the hung GetSchema given up and the stream opened again",
        || health.reconnects.load(Ordering::Relaxed) >= 2,
    )
    .await;
    cancel.cancel();
    let report = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("a stop does not wait on a hung GetSchema")
        .unwrap();
    assert_eq!(report.subscriptions.len(), 1);
    assert_eq!(
        lines(&out(dir.path())),
        0,
        "nothing written without its schema"
    );
    sim.shutdown().await;
}
