//! A Salesforce org on loopback: the Pub/Sub API over gRPC and the login endpoints over HTTP,
//! for the demo and the tests. Never on a production path.

pub mod args;
pub mod bus;
pub mod catalog;
pub mod databricks;
pub mod generator;
pub mod login;
pub mod pubsub;
pub mod zerobus;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::proto::pubsub::pub_sub_server::PubSubServer;
use bus::{Bus, EventFaults};
use catalog::Entity;
use login::{Accounts, LoginState, Tokens};
use pubsub::{PubSubService, SimStats, StreamFaults};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown entity {0:?}; the simulator knows {known}", known = catalog::entity_names().join(", "))]
    UnknownEntity(String),
    #[error("bundled schema failed to load: {0}")]
    Schema(#[from] crate::salesforce::schema::SchemaError),
    #[error("managed subscription: {0}")]
    Managed(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything `sfzb-host sim` can be told.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub pubsub_addr: SocketAddr,
    pub login_addr: SocketAddr,
    pub entities: Vec<String>,
    /// Events of each entity already on the bus at start, as if they happened before.
    pub events: u64,
    /// New events per second after start (all entities together); 0 = none.
    pub rate: f64,
    pub seed: u64,
    pub org_id: String,
    /// Events kept for replay, oldest dropped first.
    pub retention: usize,
    pub keepalive: Duration,
    pub accounts: Accounts,
    pub token_ttl: Option<Duration>,
    pub event_faults: EventFaults,
    pub stream_faults: StreamFaults,
    /// Managed event subscriptions: (developer name, topic).
    pub managed: Vec<(String, String)>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            pubsub_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            login_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            entities: catalog::entity_names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            events: 100,
            rate: 0.0,
            seed: 1,
            org_id: "00DSIM0000000001AAA".into(),
            retention: 5_000_000,
            keepalive: Duration::from_secs(5),
            accounts: Accounts::default(),
            token_ttl: None,
            event_faults: EventFaults::default(),
            stream_faults: StreamFaults::default(),
            managed: Vec::new(),
        }
    }
}

/// A running simulator. Dropping it leaves the servers running until `shutdown`.
pub struct Simulator {
    pub pubsub_addr: SocketAddr,
    pub login_addr: SocketAddr,
    pub bus: Arc<Bus>,
    pub tokens: Arc<Tokens>,
    pub stats: Arc<SimStats>,
    pub org_id: String,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Simulator {
    pub async fn start(config: SimConfig) -> Result<Simulator, SimError> {
        let mut entities = Vec::new();
        for name in &config.entities {
            let entity = Entity::load(name.trim())
                .ok_or_else(|| SimError::UnknownEntity(name.clone()))??;
            entities.push(Arc::new(entity));
        }
        let bus = Arc::new(Bus::new(
            entities,
            config.seed,
            config.events,
            config.retention,
            config.event_faults.clone(),
        ));
        let tokens = Arc::new(Tokens::new(config.token_ttl));
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| SimError::Bind { addr, source })
        };
        let grpc_listener = bind(config.pubsub_addr).await?;
        let login_listener = bind(config.login_addr).await?;
        let pubsub_addr = grpc_listener
            .local_addr()
            .map_err(|source| SimError::Bind {
                addr: config.pubsub_addr,
                source,
            })?;
        let login_addr = login_listener
            .local_addr()
            .map_err(|source| SimError::Bind {
                addr: config.login_addr,
                source,
            })?;
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();

        let service = Arc::new(
            PubSubService::new(
                bus.clone(),
                tokens.clone(),
                config.org_id.clone(),
                config.keepalive,
                config.stream_faults.clone(),
                &config.managed,
            )
            .map_err(|status| SimError::Managed(status.message().to_string()))?,
        );
        let stats = service.stats.clone();
        let grpc = tonic::transport::Server::builder()
            .add_service(PubSubServer::new(service).max_decoding_message_size(16 << 20))
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs stall each small
                // FetchResponse by ~40 ms.
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                cancel.clone().cancelled_owned(),
            );
        tasks.push(tokio::spawn(async move {
            if let Err(error) = grpc.await {
                tracing::error!(%error, "Simulator Pub/Sub server stopped.");
            }
        }));

        let login = login::router(Arc::new(LoginState {
            org_id: config.org_id.clone(),
            base_url: format!("http://{login_addr}"),
            accounts: config.accounts.clone(),
            tokens: tokens.clone(),
        }));
        let login_cancel = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let server = axum::serve(login_listener, login)
                .with_graceful_shutdown(login_cancel.cancelled_owned());
            if let Err(error) = server.await {
                tracing::error!(%error, "Simulator login server stopped.");
            }
        }));

        if config.rate > 0.0 {
            tasks.push(tokio::spawn(produce(
                bus.clone(),
                config.rate,
                cancel.clone(),
            )));
        }
        Ok(Simulator {
            pubsub_addr,
            login_addr,
            bus,
            tokens,
            stats,
            org_id: config.org_id,
            cancel,
            tasks,
        })
    }

    pub fn pubsub_url(&self) -> String {
        format!("http://{}", self.pubsub_addr)
    }

    pub fn login_url(&self) -> String {
        format!("http://{}", self.login_addr)
    }

    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Appends events at `rate` per second (spread over the entities) until cancelled.
async fn produce(bus: Arc<Bus>, rate: f64, cancel: CancellationToken) {
    let per_round = bus.entities.len().max(1) as f64;
    let started = tokio::time::Instant::now();
    let mut rounds_done = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = (started.elapsed().as_secs_f64() * rate / per_round) as u64;
        if due > rounds_done {
            bus.generate_rounds(due - rounds_done);
            rounds_done = due;
        }
    }
}
