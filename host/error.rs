//! The top-level error and the exit code each kind maps to.

use crate::config::ConfigError;
use crate::pipeline::PipelineError;
use crate::sim::SimError;
use crate::transform::TransformError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error(transparent)]
    Transform(#[from] TransformError),
    #[error(transparent)]
    Authoring(#[from] crate::authoring::AuthoringError),
    #[error(transparent)]
    Fence(#[from] crate::lease::FenceError),
    #[error(transparent)]
    Metrics(#[from] crate::http::MetricsError),
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error(transparent)]
    Scaffold(#[from] crate::scaffold::ScaffoldError),
    #[error(transparent)]
    DeadLetters(#[from] crate::dead_letters::ReplayError),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error("{failed} of {total} subscriptions failed (first: {name}: {error})")]
    Subscriptions {
        failed: usize,
        total: usize,
        name: String,
        error: Box<Error>,
    },
}

impl Error {
    /// The error and its causes, each cause once: our messages often quote their source
    /// already.
    pub fn describe(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }

    /// Whether a subscription that failed with it may succeed when started again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Pipeline(e) if e.is_retryable())
    }

    /// 2 for configuration errors (fix the settings), 1 for failures at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            // A component that cannot load or refuses its settings is a configuration problem.
            Error::Config(_)
            | Error::Transform(_)
            | Error::Authoring(crate::authoring::AuthoringError::Transform(_))
            | Error::Metrics(_)
            | Error::Fence(_)
            | Error::Scaffold(crate::scaffold::ScaffoldError::Name { .. })
            | Error::DeadLetters(crate::dead_letters::ReplayError::From { .. }) => 2,
            Error::Pipeline(_)
            | Error::Sim(_)
            | Error::Authoring(_)
            | Error::Demo(_)
            | Error::Scaffold(_)
            | Error::DeadLetters(_)
            | Error::Probe(_) => 1,
            Error::Subscriptions { error, .. } => error.exit_code(),
        }
    }
}
