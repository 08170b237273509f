//! The top-level error and the exit code each kind maps to.

use crate::config::ConfigError;
use crate::pipeline::PipelineError;
use crate::sim::SimError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Sim(#[from] SimError),
}

impl Error {
    /// 2 for configuration errors (fix the settings), 1 for failures at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            Error::Pipeline(_) | Error::Sim(_) => 1,
        }
    }
}
