//! A Salesforce org on loopback: the Pub/Sub API over gRPC, and the login endpoints with the
//! REST and Bulk API 2.0 endpoints over HTTP, for the demo and the tests. Never on a
//! production path.

pub mod args;
pub mod bus;
pub mod catalog;
pub mod databricks;
pub mod generator;
pub mod login;
pub mod pubsub;
pub mod records;
pub mod rest;
pub mod zerobus;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::proto::pubsub::pub_sub_server::PubSubServer;
use bus::{Bodies, Bus, EventFaults};
use catalog::Entity;
use login::{Accounts, LoginOrg, LoginState, Tokens};
use pubsub::{Orgs, PubSubService, SimStats, StreamFaults};

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
    /// Produce at `rate` only this long after start.
    pub rate_for: Option<Duration>,
    pub seed: u64,
    /// The first org's id; the others' are numbered after it (see [`org_id`]).
    pub org_id: String,
    /// Orgs served, each with its own id, credentials, events and replay ids (see
    /// [`SimOrg`]); `rate` is spread over them.
    pub orgs: usize,
    /// Events kept for replay, oldest dropped first.
    pub retention: usize,
    pub keepalive: Duration,
    pub accounts: Accounts,
    pub token_ttl: Option<Duration>,
    pub event_faults: EventFaults,
    pub stream_faults: StreamFaults,
    /// Managed event subscriptions: (developer name, topic).
    pub managed: Vec<(String, String)>,
    /// Keep each org's records, this many of each entity to begin with, changed by its
    /// events and served by the REST and Bulk APIs; `None`: events change no records.
    pub records: Option<u64>,
    /// Records per Bulk API 2.0 result page, unless the client asks for fewer.
    pub page_size: usize,
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
            rate_for: None,
            seed: 1,
            org_id: "00DSIM0000000001AAA".into(),
            orgs: 1,
            retention: 5_000_000,
            keepalive: Duration::from_secs(5),
            accounts: Accounts::default(),
            token_ttl: None,
            event_faults: EventFaults::default(),
            stream_faults: StreamFaults::default(),
            managed: Vec::new(),
            records: None,
            page_size: 10_000,
        }
    }
}

/// The id of org `n` (1-based) of a simulator whose first org is `first`: `first` itself
/// for org 1; else `00DSIM` and `n` in ten digits, then `AAA`.
pub fn org_id(first: &str, n: usize) -> String {
    if n == 1 {
        first.to_string()
    } else {
        format!("00DSIM{n:010}AAA")
    }
}

/// The credentials org `n` (1-based) of a simulator with several orgs accepts: client
/// `sim-client-N` with secret `sim-secret-N` (client credentials, JWT issuer), and user
/// `user-N@sim.example` with password `password-N`. A single org accepts what
/// `SimConfig::accounts` says.
pub fn org_accounts(n: usize) -> Accounts {
    Accounts {
        users: vec![(format!("user-{n}@sim.example"), format!("password-{n}"))],
        clients: vec![(format!("sim-client-{n}"), format!("sim-secret-{n}"))],
        jwt_public_key_pem: None,
    }
}

/// One simulated org: its id, its event bus (its own replay ids and retention), and the
/// tokens its login issued.
pub struct SimOrg {
    pub org_id: String,
    pub bus: Arc<Bus>,
    pub tokens: Arc<Tokens>,
    login: Arc<LoginOrg>,
}

impl SimOrg {
    /// The org revokes the app's access: its sessions end and its logins fail from now on.
    pub fn revoke_access(&self) {
        self.login
            .access
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.tokens.revoke_all();
    }

    /// The org's daily API requests are used up (`true`) or available again.
    pub fn limit_api_requests(&self, exceeded: bool) {
        self.login
            .api_limit_exceeded
            .store(exceeded, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A running simulator. Dropping it leaves the servers running until `shutdown`.
pub struct Simulator {
    pub pubsub_addr: SocketAddr,
    pub login_addr: SocketAddr,
    pub orgs: Vec<SimOrg>,
    pub stats: Arc<SimStats>,
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
        let (grpc_listener, pubsub_addr) = bind(config.pubsub_addr).await?;
        let (login_listener, login_addr) = bind(config.login_addr).await?;
        let stats = Arc::new(SimStats::default());
        let (orgs, services) = make_orgs(&config, &entities, &stats)?;
        let cancel = CancellationToken::new();
        let mut tasks = vec![
            serve_pubsub(grpc_listener, Orgs::new(services), cancel.clone()),
            serve_login(
                login_listener,
                LoginState::new(
                    format!("http://{login_addr}"),
                    orgs.iter().map(|o| o.login.clone()).collect(),
                ),
                config.page_size,
                cancel.clone(),
            ),
        ];
        if config.rate > 0.0 {
            let buses = orgs.iter().map(|o| o.bus.clone()).collect();
            let (rate, limit) = (config.rate, config.rate_for);
            tasks.push(tokio::spawn(produce(buses, rate, limit, cancel.clone())));
        }
        Ok(Simulator {
            pubsub_addr,
            login_addr,
            orgs,
            stats,
            cancel,
            tasks,
        })
    }

    /// The first org (the only one, unless `orgs` says more).
    pub fn org(&self) -> &SimOrg {
        &self.orgs[0]
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

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), SimError> {
    let bound = |source| SimError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
}

/// Every org: its bus (bodies shared by all), tokens, login and Pub/Sub service.
fn make_orgs(
    config: &SimConfig,
    entities: &[Arc<Entity>],
    stats: &Arc<SimStats>,
) -> Result<(Vec<SimOrg>, Vec<Arc<PubSubService>>), SimError> {
    let bodies = Bodies::new(config.seed);
    let count = config.orgs.max(1);
    let mut orgs = Vec::with_capacity(count);
    let mut services = Vec::with_capacity(count);
    for n in 1..=count {
        let org_id = org_id(&config.org_id, n);
        let bus = Arc::new(Bus::new(
            entities.to_vec(),
            config.seed.wrapping_add(n as u64 - 1),
            config.events,
            config.retention,
            config.event_faults.clone(),
            bodies.clone(),
            config.records,
        ));
        let tokens = Arc::new(Tokens::new(config.token_ttl));
        let accounts = if count == 1 {
            config.accounts.clone()
        } else {
            org_accounts(n)
        };
        let service = PubSubService::new(
            bus.clone(),
            tokens.clone(),
            org_id.clone(),
            stats.clone(),
            config.keepalive,
            config.stream_faults.clone(),
            &config.managed,
        )
        .map_err(|status| SimError::Managed(status.message().to_string()))?;
        services.push(Arc::new(service));
        orgs.push(SimOrg {
            login: Arc::new(LoginOrg::new(
                org_id.clone(),
                accounts,
                tokens.clone(),
                bus.clone(),
            )),
            org_id,
            bus,
            tokens,
        });
    }
    Ok((orgs, services))
}

fn serve_pubsub(listener: TcpListener, orgs: Orgs, cancel: CancellationToken) -> JoinHandle<()> {
    let grpc = tonic::transport::Server::builder()
        .add_service(PubSubServer::new(orgs).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs stall each small
            // FetchResponse by ~40 ms.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            cancel.cancelled_owned(),
        );
    tokio::spawn(async move {
        if let Err(error) = grpc.await {
            tracing::error!(%error, "Simulator Pub/Sub server stopped.");
        }
    })
}

fn serve_login(
    listener: TcpListener,
    state: LoginState,
    page_size: usize,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let state = Arc::new(state);
    let login = login::router(state.clone()).merge(rest::router(state, page_size));
    tokio::spawn(async move {
        let server = axum::serve(listener, login).with_graceful_shutdown(cancel.cancelled_owned());
        if let Err(error) = server.await {
            tracing::error!(%error, "Simulator login server stopped.");
        }
    })
}

/// Appends events at `rate` per second until cancelled (or `limit` after start, having
/// appended exactly `rate × limit` rounds): rounds (one event per entity) go to the orgs in
/// turn, so each org gets `rate / orgs`.
async fn produce(
    buses: Vec<Arc<Bus>>,
    rate: f64,
    limit: Option<Duration>,
    cancel: CancellationToken,
) {
    let Some(first) = buses.first() else {
        return;
    };
    let per_round = first.entities.len().max(1) as f64;
    let started = tokio::time::Instant::now();
    let mut rounds_done = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let elapsed = started.elapsed();
        let done = limit.is_some_and(|limit| elapsed >= limit);
        let elapsed = limit.map_or(elapsed, |limit| elapsed.min(limit));
        let due = (elapsed.as_secs_f64() * rate / per_round) as u64;
        // Round r goes to org r mod n: each org takes its share in one append.
        let (todo, n) = (due.saturating_sub(rounds_done), buses.len() as u64);
        for k in 0..todo.min(n) {
            let org = ((rounds_done + k) % n) as usize;
            buses[org].generate_rounds((todo - k).div_ceil(n));
        }
        rounds_done = rounds_done.max(due);
        if done {
            return;
        }
    }
}
