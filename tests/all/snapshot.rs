//! The REST and Bulk API 2.0 clients against the simulator's endpoints on loopback, and the
//! simulator's records: what the clients read is what the org keeps.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use sfzb_host::backoff::Backoff;
use sfzb_host::salesforce::auth::{Authenticator, Credentials};
use sfzb_host::salesforce::pubsub::PubSubConnection;
use sfzb_host::salesforce::rest::{RestClient, RestError};
use sfzb_host::sim::generator::record_id;
use tokio_util::sync::CancellationToken;

use crate::support::{sim_config, start};

async fn client(sim: &sfzb_host::sim::Simulator) -> RestClient {
    let channel = sfzb_host::salesforce::pubsub::connection::channel(&sim.pubsub_url()).unwrap();
    let credentials = Credentials::Password {
        client_id: "c".into(),
        client_secret: "s".into(),
        username: "u".into(),
        password: "p".into(),
    };
    let connection = PubSubConnection::new(
        channel,
        Authenticator::new(&sim.login_url(), "62.0", credentials),
    );
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    connection
        .login_retrying(0, &mut backoff, &CancellationToken::new(), None)
        .await
        .expect("logs in");
    RestClient::new(connection)
}

/// Every record of a query, by id, as CSV text.
async fn query(
    rest: &RestClient,
    soql: &str,
    page: usize,
) -> (Vec<HashMap<String, String>>, usize) {
    let job = rest.create_query_job(soql, false).await.unwrap();
    let done = rest
        .wait_for_job(&job.id, &CancellationToken::new())
        .await
        .unwrap()
        .expect("not cancelled");
    assert_eq!(done.state, "JobComplete");
    let (mut rows, mut pages, mut locator) = (Vec::new(), 0, None::<String>);
    loop {
        let page = rest
            .result_page(&job.id, locator.as_deref(), page)
            .await
            .unwrap();
        pages += 1;
        let mut reader = csv::Reader::from_reader(page.csv.as_ref());
        let header = reader.headers().unwrap().clone();
        for record in reader.records() {
            let record = record.unwrap();
            rows.push(
                header
                    .iter()
                    .zip(record.iter())
                    .map(|(h, v)| (h.to_string(), v.to_string()))
                    .collect(),
            );
        }
        match page.next {
            Some(next) => locator = Some(next),
            None => return (rows, pages),
        }
    }
}

#[tokio::test]
async fn the_bulk_and_rest_clients_read_the_records_the_simulator_keeps() {
    let mut config = sim_config(&["Account"], 300);
    config.records = Some(250);
    config.page_size = 120;
    let sim = start(config).await;
    let rest = client(&sim).await;

    let describe = rest.describe("Account").await.unwrap();
    let names: Vec<&str> = describe.fields.iter().map(|f| f.name.as_str()).collect();
    for name in [
        "Id",
        "SystemModstamp",
        "Name",
        "BillingCity",
        "AnnualRevenue",
        "CreatedDate",
    ] {
        assert!(names.contains(&name), "describe lists {name}");
    }

    let (rows, pages) = query(
        &rest,
        "SELECT Id, Name, BillingCity, SystemModstamp FROM Account",
        100,
    )
    .await;
    let live: HashMap<String, sfzb_host::sim::records::Record> = sim
        .org()
        .bus
        .with_records(|records, _| {
            records
                .all(0)
                .iter()
                .filter(|r| !r.deleted)
                .map(|r| (record_id("001", r.number), r.clone()))
                .collect()
        })
        .unwrap();
    assert!(live.len() > 250, "creates added records: {}", live.len());
    assert_eq!(rows.len(), live.len(), "a query returns every live record");
    assert_eq!(
        pages,
        live.len().div_ceil(100),
        "pages of at most maxRecords, chained by locator"
    );
    let entity = sim.org().bus.entities[0].clone();
    let shape = sfzb_host::sim::records::Shape::new(entity.clone(), &entity.schema);
    for row in &rows {
        let record = &live[&row["Id"]];
        for field in ["Name", "BillingCity", "SystemModstamp"] {
            assert_eq!(
                row[field],
                shape.text(record, field).unwrap_or_default(),
                "{} {field}",
                row["Id"]
            );
        }
    }

    // A record by id: a live one as the query has it, a deleted one gone.
    let (id, record) = live.iter().next().unwrap();
    let read = rest
        .record("Account", id)
        .await
        .unwrap()
        .expect("a live record reads");
    assert_eq!(read["Id"], id.as_str());
    assert_eq!(
        read["Name"].as_str().unwrap_or(""),
        shape.text(record, "Name").unwrap_or_default()
    );
    let deleted = sim
        .org()
        .bus
        .with_records(|records, _| records.all(0).iter().find(|r| r.deleted).map(|r| r.number))
        .unwrap()
        .expect("some record was deleted");
    assert!(
        rest.record("Account", &record_id("001", deleted))
            .await
            .unwrap()
            .is_none()
    );

    // Errors carry Salesforce's code and what to do.
    let error = rest
        .create_query_job("SELECT Id, Nope__c FROM Account", false)
        .await
        .unwrap_err();
    match &error {
        RestError::Refused { code, hint, .. } => {
            assert_eq!(code, "INVALID_FIELD");
            assert!(hint.contains("field-level security"), "{hint}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn result_pages_are_gzipped_when_the_client_accepts_it() {
    let mut config = sim_config(&["Contact"], 0);
    config.records = Some(40);
    let sim = start(config).await;
    let rest = client(&sim).await;
    let job = rest
        .create_query_job("SELECT Id, LastName FROM Contact", false)
        .await
        .unwrap();
    rest.wait_for_job(&job.id, &CancellationToken::new())
        .await
        .unwrap();
    let plain = rest.result_page(&job.id, None, 1000).await.unwrap();

    // A client that does not decompress sees the bytes on the wire.
    let token = sim.org().tokens.issued().into_iter().next().unwrap();
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let response = raw
        .get(format!(
            "{}/services/data/v62.0/jobs/query/{}/results",
            sim.login_url(),
            job.id
        ))
        .bearer_auth(token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let bytes = response.bytes().await.unwrap();
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(bytes.as_ref())
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped.as_bytes(), plain.csv.as_ref());
    assert_eq!(unzipped.lines().count(), 41, "a header and 40 records");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_query_job_of_an_org_without_records_fails_with_the_fix() {
    let sim = start(sim_config(&["Account"], 5)).await;
    let rest = client(&sim).await;
    let job = rest
        .create_query_job("SELECT Id FROM Account", false)
        .await
        .unwrap();
    let error = rest
        .wait_for_job(&job.id, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(error, RestError::JobFailed { .. }), "{error}");
    assert!(error.to_string().contains("--records"), "{error}");
    sim.shutdown().await;
}

/// The org's daily API requests used up (403 REQUEST_LIMIT_EXCEEDED) while gap events
/// need their records read again for the current-state table: the subscription is
/// `limited` (not failed, not restarted), the change table keeps every event, and once
/// requests are available again the current-state table catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_api_limit_is_a_state_and_the_change_table_keeps_flowing() {
    use sfzb_host::health::State;
    use std::sync::atomic::Ordering::Relaxed;
    let mut config = sim_config(&["Account"], 60);
    config.records = Some(20);
    config.event_faults.gap_every = Some(5);
    let sim = start(config).await;
    sim.orgs[0].limit_api_requests(true);
    let dir = tempfile::tempdir().unwrap();
    let change = format!("delta:{}", dir.path().join("account").display());
    let current = format!("delta:{}", dir.path().join("account_current").display());
    let cancel = CancellationToken::new();
    let started = sfzb_host::start(
        crate::support::service_plan(
            &sim,
            dir.path(),
            "/data/AccountChangeEvent",
            &[
                "--layout",
                "typed",
                "--sink",
                &change,
                "--current-state",
                &current,
                "--current-state-interval-secs",
                "0.1",
            ],
        ),
        cancel.clone(),
    )
    .await
    .unwrap();
    let health = started.registry().list().remove(0);
    let run = tokio::spawn(started.wait());
    crate::support::wait_for("the subscription limited", || {
        matches!(health.state(), State::Limited(_))
    })
    .await;
    let reason = health.state().reason().unwrap_or_default().to_string();
    assert!(reason.contains("REQUEST_LIMIT_EXCEEDED"), "{reason}");
    assert!(
        health.problem().is_none(),
        "limited is not unhealthy: {:?}",
        health.problem()
    );
    crate::support::wait_for("every event in the change table", || {
        health.written.load(Relaxed) == 60
    })
    .await;
    sim.orgs[0].limit_api_requests(false);
    crate::support::wait_for("the current state caught up", || {
        health.state() == State::Running
    })
    .await;
    assert_eq!(health.restarts.load(Relaxed), 0, "never restarted");
    cancel.cancel();
    run.await.unwrap().into_result().expect("ends cleanly");
    sim.shutdown().await;
}
