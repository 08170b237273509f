//! One subscription's life: log in, open a stream, and when it ends, decide what comes
//! next from why it ended: resubscribe (after a backoff, a new login, or a replay
//! fallback), wait as a standby, or stop with an error that needs a human.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::error::error_code;
use super::managed::STANDBY_RETRY_MAX;
use super::stream::StreamEnd;
use super::{
    Failure, PubSubConnection, ReplayFallback, SourceBox, StartPosition, SubscribeError,
    SubscribeOptions, Subscriber, classify,
};
use crate::backoff::Backoff;
use crate::salesforce::schema::SchemaCache;

/// Salesforce's delivery limit asks for a long pause, whatever the backoff says.
const LIMIT_WAIT: Duration = Duration::from_secs(60);

/// What the supervisor does after a failed stream.
enum Next {
    Resubscribe,
    Stop,
}

impl Subscriber {
    pub fn new(
        connection: PubSubConnection,
        options: SubscribeOptions,
        schemas: Arc<SchemaCache>,
        capacity: Arc<Semaphore>,
        out: mpsc::Sender<SourceBox>,
        cancel: CancellationToken,
    ) -> Self {
        Subscriber {
            resume: options.start.clone(),
            backoff: Backoff::new(options.backoff_initial, options.backoff_max),
            connection,
            options,
            schemas,
            capacity,
            out,
            cancel,
            committed: None,
        }
    }

    /// What runs once in a while (a login, the reaction to a failure) is boxed, so that
    /// every subscription's source task holds only the open stream's state.
    pub async fn run(mut self) -> Result<(), SubscribeError> {
        let mut auth_generation = self.connection.generation().await;
        loop {
            if self.connection.org_id().is_none() {
                match Box::pin(self.log_in(auth_generation)).await? {
                    Some(generation) => auth_generation = generation,
                    None => return Ok(()),
                }
            }
            self.log_start();
            let (end, delivered) = self.stream_once().await;
            if delivered {
                self.backoff.reset();
            }
            let status = match end {
                StreamEnd::Cancelled => return Ok(()),
                StreamEnd::Idle => {
                    if let Some(health) = &self.options.health {
                        health.idle_timeout();
                    }
                    if let Some(held_back) = crate::throttle::admit("idle-timeout") {
                        tracing::warn!(
                            idle_secs = self.options.idle_timeout.as_secs(),
                            held_back,
                            "Nothing received, not even a keepalive; resubscribing."
                        );
                    }
                    continue;
                }
                StreamEnd::Failed(status) => status,
            };
            if let Next::Stop = Box::pin(self.react(&status, &mut auth_generation)).await? {
                return Ok(());
            }
        }
    }

    /// Logs in, retrying what may pass; `None` if cancelled meanwhile.
    async fn log_in(&mut self, seen_generation: u64) -> Result<Option<u64>, SubscribeError> {
        let login = self
            .connection
            .login_retrying(seen_generation, &mut self.backoff, &self.cancel, None)
            .await;
        match login {
            Ok(generation) => Ok(Some(generation)),
            Err(_) if self.cancel.is_cancelled() => Ok(None),
            Err(source) => Err(SubscribeError::Auth {
                channel: self.options.topic.clone(),
                source,
            }),
        }
    }

    fn log_start(&self) {
        let channel = &self.options.topic;
        let batch_size = self.options.batch_size;
        match &self.options.managed {
            None => {
                tracing::info!(start = %self.resume, batch_size, "Starting subscription to {channel}.")
            }
            Some(managed) => {
                tracing::info!(managed_subscription = %managed.developer_name, batch_size, "Starting managed subscription {} to {channel}; Salesforce keeps its position.", managed.developer_name)
            }
        }
    }

    /// What a failed stream leads to; an error for failures a retry cannot fix.
    async fn react(
        &mut self,
        status: &Status,
        auth_generation: &mut u64,
    ) -> Result<Next, SubscribeError> {
        let channel = self.options.topic.clone();
        let detail = format!("{}: {}", error_code(status), status.message());
        if let Some(health) = &self.options.health {
            health.stream_failed(&detail);
        }
        match classify(status) {
            Failure::Auth => {
                tracing::info!(%detail, "Session expired or rejected; logging in again.");
                return Ok(match self.log_in(*auth_generation).await? {
                    Some(generation) => {
                        *auth_generation = generation;
                        Next::Resubscribe
                    }
                    None => Next::Stop,
                });
            }
            Failure::ReplayInvalid => {
                self.fall_back(detail)?;
                return Ok(Next::Resubscribe);
            }
            Failure::TopicNotFound => {
                return Err(SubscribeError::TopicNotFound { channel, detail });
            }
            Failure::NoPermission => return Err(SubscribeError::NoPermission { channel, detail }),
            Failure::LimitExceeded => {
                // A long wait this once; the backoff of later failures stays as it was.
                let mut once = self.backoff.clone();
                once.at_least(LIMIT_WAIT);
                if let Some(held_back) = crate::throttle::admit("delivery-limit") {
                    tracing::warn!(%detail, wait_secs = once.delay().as_secs(), held_back, "Delivery limit exceeded; waiting before resubscribing.");
                }
                return Ok(match once.wait(&self.cancel).await {
                    true => Next::Stop,
                    false => Next::Resubscribe,
                });
            }
            Failure::ManagedInUse => self.stand_by(),
            Failure::Transient => {
                if let Some(held_back) = crate::throttle::admit("stream-failed") {
                    tracing::warn!(%detail, retry_in_ms = self.backoff.delay().as_millis() as u64, held_back, "Stream failed; resubscribing after backoff.");
                }
            }
        }
        Ok(match self.backoff.wait(&self.cancel).await {
            true => Next::Stop,
            false => Next::Resubscribe,
        })
    }

    /// Salesforce rejected the resume position: the configured fallback, never a retry of
    /// the same id.
    fn fall_back(&mut self, detail: String) -> Result<(), SubscribeError> {
        let replay_id = match &self.resume {
            StartPosition::Custom(id) => id.to_hex(),
            other => other.to_string(),
        };
        match self.options.on_invalid_replay {
            ReplayFallback::Fail => {
                return Err(SubscribeError::ReplayInvalid {
                    channel: self.options.topic.clone(),
                    replay_id,
                    detail,
                });
            }
            ReplayFallback::Earliest => {
                tracing::warn!(%replay_id, %detail, "Replay id rejected; replaying from EARLIEST as configured (duplicates possible).");
                self.resume = StartPosition::Earliest;
            }
            ReplayFallback::Latest => {
                tracing::warn!(%replay_id, %detail, "Replay id rejected; continuing from LATEST as configured: events published meanwhile are missed.");
                self.resume = StartPosition::Latest;
            }
        }
        Ok(())
    }

    /// Another client reads the managed subscription: wait as a standby.
    fn stand_by(&mut self) {
        let name = self
            .options
            .managed
            .as_ref()
            .map(|m| m.developer_name.as_str())
            .unwrap_or_default();
        let reason = format!("managed subscription {name} is read by another client");
        // A standby retries often enough to take over soon after the reader stops.
        self.backoff.cap(STANDBY_RETRY_MAX);
        tracing::info!(
            retry_in_ms = self.backoff.delay().as_millis() as u64,
            "Standby: {reason}; trying again."
        );
        if let Some(health) = &self.options.health {
            health.set_state(crate::health::State::Standby(reason));
        }
    }
}
