//! sfzb-host: Salesforce Change Data Capture → sandboxed Wasm transforms → Databricks.
//!
//! Data flows one way: [`salesforce::pubsub`] (source) → [`salesforce::schema`] (decode) →
//! [`sink`] → [`checkpoint`], wired per subscription by [`pipeline`].

pub mod authoring;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod databricks;
pub mod error;
pub mod event;
pub mod pipeline;
pub mod proto;
pub mod salesforce;
pub mod sim;
pub mod sink;
pub mod transform;

use tokio_util::sync::CancellationToken;

use config::RunPlan;
pub use error::Error;
use pipeline::SubscriptionStats;
use salesforce::auth::{Authenticator, Credentials, SOAP_RETIREMENT};
use salesforce::pubsub::PubSubConnection;

/// Runs the plan's subscription until `cancel` fires, the idle limit passes, or it fails.
pub async fn run(plan: RunPlan, cancel: CancellationToken) -> Result<SubscriptionStats, Error> {
    if matches!(plan.org.credentials, Credentials::Soap { .. }) {
        tracing::warn!("{SOAP_RETIREMENT}");
    }
    let chain = load_chain(&plan.subscription.transforms, plan.cache_dir.clone()).await?;
    let authenticator = Authenticator::new(
        &plan.org.login_url,
        &plan.org.api_version,
        plan.org.credentials,
    );
    let connection = PubSubConnection::new(&plan.org.pubsub_endpoint, authenticator)
        .map_err(pipeline::PipelineError::from)?;
    Ok(
        pipeline::run_subscription(connection, plan.subscription, chain, plan.options, cancel)
            .await?,
    )
}

/// Compiles (or loads from the cache), links and initialises the transforms, off the async
/// workers: compiling a Python or JavaScript component takes seconds.
pub async fn load_chain(
    specs: &[transform::TransformSpec],
    cache_dir: Option<std::path::PathBuf>,
) -> Result<Option<transform::Chain>, Error> {
    if specs.is_empty() {
        return Ok(None);
    }
    let specs = specs.to_vec();
    let fuel = specs.iter().any(|s| s.limits.fuel.is_some());
    let chain = tokio::task::spawn_blocking(move || {
        let runtime = std::sync::Arc::new(transform::Runtime::new(transform::RuntimeOptions {
            cache_dir,
            fuel,
        })?);
        transform::Chain::load(runtime, &specs)
    })
    .await
    .expect("loading transforms does not panic")?;
    Ok(Some(chain))
}
