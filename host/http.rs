//! The HTTP endpoint (`--metrics-listen`, off by default): Prometheus `/metrics`,
//! `/healthz` (about the process: 503 with the reasons only when no subscription is
//! healthy, so one broken tenant does not get the process restarted), `/subscriptions`
//! (every subscription's state and reason, filterable by `org` and `state`) and `/stats`
//! (JSON, with the reference's `get_stats()` keys). It reads [`Health`], but for one
//! request: `POST /subscriptions/snapshot?name=…&org=…&channel=…` asks the subscriptions
//! it selects (with `snapshot = true`) to read their object again. That one is served to
//! loopback clients only: the endpoint is often open to the cluster for scraping, and a
//! snapshot spends the org's Bulk API limits.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::health::Snapshot;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for --metrics-listen: {source}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

type Healths = crate::health::Registry;

/// Binds now (so a taken port is a startup error) and serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    healths: Healths,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| MetricsError { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/stats", get(stats))
        .route("/subscriptions", get(subscriptions))
        .route("/subscriptions/snapshot", post(snapshot))
        .with_state(healths);
    tracing::info!(%local, "Serving /metrics, /healthz, /subscriptions, /stats and POST /subscriptions/snapshot (loopback only).");
    let task = tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "Metrics endpoint stopped.");
        }
    });
    Ok((local, task))
}

async fn healthz(State(healths): State<Healths>) -> impl IntoResponse {
    // A failing checkpoint store is said, not judged: subscriptions go on writing while
    // it fails, and a restart of the process would not bring it back.
    let now = crate::clock::now_ms();
    let stores: String = healths
        .checkpoint_stores()
        .iter()
        .filter(|s| !s.healthy)
        .map(|s| {
            format!(
                "checkpoint store {} failing for {} s (last commit {}): {}\n",
                s.store,
                s.failing_since_ms.map_or(0, |since| (now - since) / 1000),
                s.last_commit_age_secs(now)
                    .map_or("never".to_string(), |age| format!("{age:.0} s ago")),
                s.error.as_deref().unwrap_or("")
            )
        })
        .collect();
    let healths = healths.list();
    let problems: Vec<String> = healths
        .iter()
        .filter_map(|h| {
            h.problem()
                .map(|p| format!("{} ({}): {p}", h.name, h.channel))
        })
        .collect();
    if problems.is_empty() || problems.len() < healths.len() {
        (StatusCode::OK, format!("ok\n{stores}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy\n{}\n", problems.join("\n")),
        )
    }
}

/// `/subscriptions?org=…&state=…` filters.
#[derive(Debug, Default, serde::Deserialize)]
struct Filter {
    /// An org's name or id.
    org: Option<String>,
    state: Option<String>,
}

/// How many subscriptions are in each state, and the ones the filter selects with their
/// state, its reason, and what is wrong (the `/healthz` judgement).
async fn subscriptions(
    State(healths): State<Healths>,
    axum::extract::Query(filter): axum::extract::Query<Filter>,
) -> impl IntoResponse {
    let stores = healths.checkpoint_stores();
    let healths = healths.list();
    let mut counts: std::collections::BTreeMap<&str, usize> = crate::health::State::NAMES
        .iter()
        .map(|n| (*n, 0))
        .collect();
    let mut listed = Vec::new();
    for h in healths.iter() {
        let state = h.state();
        *counts.entry(state.name()).or_default() += 1;
        let org_id = h.org_id();
        let org_matches = filter
            .org
            .as_deref()
            .is_none_or(|o| o == h.org || org_id.as_deref() == Some(o));
        if !org_matches || filter.state.as_deref().is_some_and(|s| s != state.name()) {
            continue;
        }
        let snapshot = h.snapshot();
        listed.push(serde_json::json!({
            "name": h.name,
            "org": h.org,
            "org_id": org_id,
            "channel": h.channel,
            "target": h.target,
            "state": state.name(),
            "reason": state.reason(),
            "problem": snapshot.problem,
            "received": snapshot.received,
            "restarts": snapshot.restarts,
            "events_per_second": snapshot.events_per_second,
            "checkpoint_age_secs": snapshot.checkpoint_age_secs,
            "lag_secs": snapshot.lag_secs,
            "snapshot": h.snapshot_progress(),
            "checkpoint_store": h.checkpoint_store().map(|s| store_json(&s)),
        }));
    }
    axum::Json(serde_json::json!({
        "total": healths.len(),
        "counts": counts,
        "checkpoint_stores": stores.iter().map(store_json).collect::<Vec<_>>(),
        "subscriptions": listed,
    }))
}

/// `POST /subscriptions/snapshot` filters: at least one, all of them matching.
#[derive(Debug, Default, serde::Deserialize)]
struct Selection {
    name: Option<String>,
    /// An org's name or id.
    org: Option<String>,
    channel: Option<String>,
}

/// Asks the selected subscriptions to read their object again (202), each at the stream
/// position it has reached; `asked` lists them, `refused` those without `snapshot = true`.
async fn snapshot(
    State(healths): State<Healths>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Query(selection): axum::extract::Query<Selection>,
) -> impl IntoResponse {
    let answer = |status: StatusCode, body: serde_json::Value| (status, axum::Json(body));
    if !peer.ip().to_canonical().is_loopback() {
        return answer(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": format!("a snapshot is asked for from the host itself (127.0.0.1 or ::1), not from {}", peer.ip())}),
        );
    }
    if selection.name.is_none() && selection.org.is_none() && selection.channel.is_none() {
        return answer(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "say which subscriptions: ?name=…, ?org=… (name or id) and/or ?channel=…"}),
        );
    }
    let (mut asked, mut refused) = (Vec::new(), Vec::new());
    for h in healths.list().iter() {
        let org_id = h.org_id();
        let selected = selection.name.as_deref().is_none_or(|n| n == h.name)
            && selection.channel.as_deref().is_none_or(|c| c == h.channel)
            && selection
                .org
                .as_deref()
                .is_none_or(|o| o == h.org || org_id.as_deref() == Some(o));
        if !selected {
            continue;
        }
        let entry = serde_json::json!({"name": h.name, "org": h.org, "channel": h.channel});
        match h.ask_for_snapshot() {
            true => asked.push(entry),
            false => refused.push(entry),
        }
    }
    let status = match (asked.is_empty(), refused.is_empty()) {
        (true, true) => StatusCode::NOT_FOUND,
        (true, false) => StatusCode::CONFLICT,
        (false, _) => StatusCode::ACCEPTED,
    };
    let mut body = serde_json::json!({"asked": asked, "refused": refused});
    match status {
        StatusCode::NOT_FOUND => {
            body["error"] = "no subscription matches; GET /subscriptions lists them".into()
        }
        StatusCode::CONFLICT => {
            body["error"] =
                "none of them reads snapshots: set snapshot = true on the subscription".into()
        }
        _ => {}
    }
    answer(status, body)
}

async fn stats(State(healths): State<Healths>) -> impl IntoResponse {
    let healths = healths.list();
    let subscriptions: Vec<Snapshot> = healths.iter().map(|h| h.snapshot()).collect();
    let org_ids: Vec<&str> = subscriptions
        .iter()
        .filter_map(|s| s.org_id.as_deref())
        .collect();
    axum::Json(serde_json::json!({
        "running": subscriptions.iter().any(|s| s.running),
        "is_healthy": subscriptions.iter().all(|s| s.is_healthy),
        "queue_size": subscriptions.iter().map(|s| s.queue_size).sum::<u64>(),
        "org_id": org_ids.first(),
        "subscriptions": subscriptions,
    }))
}

/// A checkpoint store's state for `/subscriptions`, with the age of its last commit.
fn store_json(store: &crate::checkpoint::StoreState) -> serde_json::Value {
    let now = crate::clock::now_ms();
    serde_json::json!({
        "store": store.store,
        "healthy": store.healthy,
        "error": store.error,
        "failing_for_secs": store.failing_since_ms.map(|since| (now - since).max(0) / 1000),
        "last_commit_age_secs": store.last_commit_age_secs(now),
    })
}

async fn metrics(State(healths): State<Healths>) -> impl IntoResponse {
    let budget = healths.in_flight().clone();
    let stores = healths.checkpoint_stores();
    let zerobus_streams = healths.zerobus_streams();
    let transforms = healths.transform_pool().cloned();
    let healths = healths.list();
    let mut registry = Registry::with_prefix("sfzb");
    registry.register_collector(Box::new(Figures {
        subscriptions: healths.iter().map(|h| h.snapshot()).collect(),
        in_flight: budget,
        transforms,
        stores,
        zerobus_streams,
    }));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "cannot encode metrics\n".to_string(),
        ),
    }
}

/// The snapshots of one scrape.
#[derive(Debug)]
struct Figures {
    subscriptions: Vec<Snapshot>,
    in_flight: crate::salesforce::pubsub::Budget,
    transforms: Option<std::sync::Arc<crate::transform::PoolFigures>>,
    stores: Vec<crate::checkpoint::StoreState>,
    zerobus_streams: usize,
}

type Labels = [(&'static str, String); 3];

/// A metric: name, help, and how to read it off a snapshot.
type Metric<T> = (&'static str, &'static str, fn(&Snapshot) -> T);

fn labels(s: &Snapshot) -> Labels {
    [
        ("subscription", s.name.clone()),
        ("org", s.org.clone()),
        ("channel", s.channel.clone()),
    ]
}

/// Per-subscription counters.
const COUNTERS: [Metric<u64>; 7] = [
    ("events_received", "Events received from Salesforce.", |s| {
        s.received
    }),
    ("events_written", "Rows written to the sink.", |s| s.written),
    ("events_dropped", "Events a transform dropped.", |s| {
        s.dropped
    }),
    (
        "events_dead_lettered",
        "Events sent to the dead-letter place.",
        |s| s.dead_lettered,
    ),
    ("keepalives", "Keepalives received.", |s| s.keepalives),
    (
        "reconnects",
        "Resubscriptions after a stream failure or idle timeout.",
        |s| s.reconnects,
    ),
    (
        "restarts",
        "Times the subscription was started again after an error that may pass (login, target and stream anew).",
        |s| s.restarts,
    ),
];

/// Per-subscription gauges.
const GAUGES: [Metric<f64>; 5] = [
    (
        "in_flight_events",
        "Events received and not yet behind a committed checkpoint.",
        |s| s.queue_size as f64,
    ),
    (
        "checkpoint_age_seconds",
        "Seconds since the checkpoint was last committed (-1: never).",
        |s| s.checkpoint_age_secs.unwrap_or(-1.0),
    ),
    (
        "lag_seconds",
        "Now minus the commit timestamp of the newest event handled (-1: none yet).",
        |s| s.lag_secs.unwrap_or(-1.0),
    ),
    (
        "healthy",
        "1 when the subscription is healthy, else 0 (see /healthz).",
        |s| if s.is_healthy { 1.0 } else { 0.0 },
    ),
    ("running", "1 while the subscription runs.", |s| {
        if s.running { 1.0 } else { 0.0 }
    }),
];

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in COUNTERS {
            let ty = ConstCounter::new(0u64).metric_type();
            let mut family = encoder.encode_descriptor(name, help, None, ty)?;
            for s in &self.subscriptions {
                ConstCounter::new(value(s)).encode(family.encode_family(&labels(s))?)?;
            }
        }
        for (name, help, value) in GAUGES {
            let ty = ConstGauge::new(0f64).metric_type();
            let mut family = encoder.encode_descriptor(name, help, None, ty)?;
            for s in &self.subscriptions {
                ConstGauge::new(value(s)).encode(family.encode_family(&labels(s))?)?;
            }
        }
        self.encode_states(&mut encoder)?;
        self.encode_in_flight(&mut encoder)?;
        self.encode_instances(&mut encoder)?;
        self.encode_stores(&mut encoder)?;
        self.encode_transforms(&mut encoder)
    }
}

impl Figures {
    /// `sfzb_checkpoint_store_healthy{store}` and
    /// `sfzb_checkpoint_store_last_commit_age_seconds{store}` (-1: never).
    fn encode_stores(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Read = fn(&crate::checkpoint::StoreState, i64) -> f64;
        let gauges: [(&str, &str, Read); 2] = [
            (
                "checkpoint_store_healthy",
                "1 when the checkpoint store took its last commit, else 0 (checkpoints held back).",
                |s, _| if s.healthy { 1.0 } else { 0.0 },
            ),
            (
                "checkpoint_store_last_commit_age_seconds",
                "Seconds since the checkpoint store last took a commit (-1: never).",
                |s, now| s.last_commit_age_secs(now).unwrap_or(-1.0),
            ),
        ];
        let ty = ConstGauge::new(0f64).metric_type();
        let family = encoder.encode_descriptor(
            "zerobus_streams",
            "Zerobus stream slots in use, each with at most one open stream (a slot is closed when its last subscription leaves).",
            None,
            ty,
        )?;
        ConstGauge::new(self.zerobus_streams as f64).encode(family)?;
        let now = crate::clock::now_ms();
        for (name, help, read) in gauges {
            let ty = ConstGauge::new(0f64).metric_type();
            let mut family = encoder.encode_descriptor(name, help, None, ty)?;
            for store in &self.stores {
                ConstGauge::new(read(store, now))
                    .encode(family.encode_family(&[("store", store.store.clone())])?)?;
            }
        }
        Ok(())
    }

    /// `sfzb_subscriptions{state}`: how many subscriptions are in each state.
    fn encode_states(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ty = ConstGauge::new(0i64).metric_type();
        let mut family =
            encoder.encode_descriptor("subscriptions", "Subscriptions by state.", None, ty)?;
        for name in crate::health::State::NAMES {
            let n = self
                .subscriptions
                .iter()
                .filter(|s| s.state.name() == name)
                .count();
            ConstGauge::new(n as i64).encode(family.encode_family(&[("state", name)])?)?;
        }
        Ok(())
    }

    /// `sfzb_process_in_flight_events`, `…_peak` and `…_limit`: decoded events every subscription
    /// holds together (`max-in-flight-total`; a limit of 0 is none).
    fn encode_in_flight(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = [
            (
                "process_in_flight_events",
                "Decoded events held by all subscriptions now.",
                self.in_flight.in_use(),
            ),
            (
                "process_in_flight_events_peak",
                "The most decoded events held at once.",
                self.in_flight.peak(),
            ),
            (
                "process_in_flight_events_limit",
                "max-in-flight-total; 0: no limit.",
                self.in_flight.size(),
            ),
        ];
        for (name, help, n) in figures {
            let ty = ConstGauge::new(0i64).metric_type();
            let family = encoder.encode_descriptor(name, help, None, ty)?;
            ConstGauge::new(n as i64).encode(family)?;
        }
        Ok(())
    }

    /// The process's transform instances, shared by the subscriptions whose transforms
    /// have the same component and configuration (`transform-idle-mib`).
    fn encode_instances(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(pool) = &self.transforms else {
            return Ok(());
        };
        let counters = [
            (
                "transform_instances_started",
                "Transform instances started because no idle one fitted.",
                pool.started.load(Relaxed),
            ),
            (
                "transform_instances_evicted",
                "Idle transform instances dropped to stay within transform-idle-mib.",
                pool.evicted.load(Relaxed),
            ),
        ];
        for (name, help, n) in counters {
            let ty = ConstCounter::new(0u64).metric_type();
            ConstCounter::new(n).encode(encoder.encode_descriptor(name, help, None, ty)?)?;
        }
        let gauges = [
            (
                "transform_instances_idle",
                "Idle transform instances kept warm.",
                pool.idle.load(Relaxed),
            ),
            (
                "transform_idle_bytes",
                "Memory of the idle transform instances.",
                pool.idle_bytes.load(Relaxed),
            ),
            (
                "transform_idle_bytes_limit",
                "transform-idle-mib, in bytes.",
                pool.budget,
            ),
        ];
        for (name, help, n) in gauges {
            let ty = ConstGauge::new(0i64).metric_type();
            ConstGauge::new(n as i64).encode(encoder.encode_descriptor(name, help, None, ty)?)?;
        }
        Ok(())
    }

    /// One counter family for every transform of every subscription, by outcome.
    fn encode_transforms(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ty = ConstCounter::new(0u64).metric_type();
        let mut family = encoder.encode_descriptor(
            "transform_events",
            "Events per transform and outcome.",
            None,
            ty,
        )?;
        for s in &self.subscriptions {
            for t in &s.transforms {
                for (outcome, n) in [
                    ("in", t.events_in),
                    ("out", t.events_out),
                    ("dropped", t.dropped),
                    ("dead_lettered", t.dead_lettered),
                    ("skipped", t.skipped),
                ] {
                    let labels = [
                        ("subscription", s.name.clone()),
                        ("transform", t.name.clone()),
                        ("outcome", outcome.to_string()),
                    ];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        drop(family);
        self.encode_guest_metrics(encoder)
    }

    /// The counters and gauges transforms define (`host.counter-add`, `host.gauge-set`).
    fn encode_guest_metrics(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = |s: &Snapshot, t: &crate::transform::TransformStats, name: &str| {
            [
                ("subscription", s.name.clone()),
                ("transform", t.name.clone()),
                ("name", name.to_string()),
            ]
        };
        let ty = ConstCounter::new(0u64).metric_type();
        let mut family = encoder.encode_descriptor(
            "transform_counter",
            "Counters transforms define (host.counter-add), by name.",
            None,
            ty,
        )?;
        for s in &self.subscriptions {
            for t in &s.transforms {
                for (name, n) in &t.metrics.counters {
                    ConstCounter::new(*n).encode(family.encode_family(&labels(s, t, name))?)?;
                }
            }
        }
        drop(family);
        let ty = ConstGauge::new(0f64).metric_type();
        let mut family = encoder.encode_descriptor(
            "transform_gauge",
            "Gauges transforms define (host.gauge-set), by name.",
            None,
            ty,
        )?;
        for s in &self.subscriptions {
            for t in &s.transforms {
                for (name, v) in &t.metrics.gauges {
                    ConstGauge::new(*v).encode(family.encode_family(&labels(s, t, name))?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::health::Health;

    fn registry() -> (Healths, Arc<Health>, Arc<Health>) {
        let healths = Healths::default();
        let health = |name: &str| {
            Arc::new(Health::new(
                name,
                "acme",
                "/data/AccountChangeEvent",
                "jsonl:-",
                Duration::from_secs(10),
                2,
            ))
        };
        let (reads, plain) = (health("reads"), health("plain"));
        reads.allow_snapshots();
        healths.add(reads.clone());
        healths.add(plain.clone());
        (healths, reads, plain)
    }

    async fn ask(healths: &Healths, peer: &str, query: &str) -> (StatusCode, serde_json::Value) {
        let uri: axum::http::Uri = format!("/subscriptions/snapshot?{query}").parse().unwrap();
        let selection = axum::extract::Query::try_from_uri(&uri).unwrap();
        let response = snapshot(
            State(healths.clone()),
            ConnectInfo(peer.parse().unwrap()),
            selection,
        )
        .await
        .into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_snapshot_is_asked_for_from_loopback_of_the_subscriptions_that_read_them() {
        let (healths, reads, plain) = registry();
        let taken = |h: &Arc<Health>| {
            let h = h.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(50), h.snapshot_asked())
                    .await
                    .is_ok()
            }
        };
        let (status, body) = ask(&healths, "10.0.0.7:5555", "org=acme").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(!taken(&reads).await, "nothing asked from another host");
        let (status, body) = ask(&healths, "127.0.0.1:5555", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = ask(&healths, "127.0.0.1:5555", "name=nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = ask(&healths, "[::1]:5555", "name=plain").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body["error"].as_str().unwrap().contains("snapshot = true"));
        let (status, body) = ask(&healths, "127.0.0.1:5555", "org=acme").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["asked"][0]["name"], "reads");
        assert_eq!(body["refused"][0]["name"], "plain");
        assert!(taken(&reads).await, "the request is waiting to be taken");
        assert!(!taken(&reads).await, "and is taken once");
        assert!(!taken(&plain).await);
        // A request made while a snapshot is read is answered by it.
        ask(&healths, "127.0.0.1:5555", "name=reads").await;
        reads.snapshot_read();
        assert!(!taken(&reads).await);
    }
}
