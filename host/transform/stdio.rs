//! A guest's stdout and stderr: each line it prints becomes a line of sfzb-host's log,
//! tagged with the transform (stdout at info, stderr at warn), under the same
//! `max-log-lines-per-sec` as `host.log`. Nothing reaches the host's own stdout, which
//! carries data (`transform test --json`, a `jsonl:-` sink).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::engine::Shared;
use super::engine::sfzb::transform::host::Level;
use super::host::MAX_LOG_BYTES;

/// The transform the instance serves now (a shared instance serves several subscriptions).
type Serving = Arc<Mutex<Arc<Shared>>>;

/// What WASI hands the guest as stdout or stderr.
pub struct GuestOutput {
    serving: Serving,
    level: Level,
}

impl GuestOutput {
    pub fn stdout(serving: &Serving) -> GuestOutput {
        GuestOutput {
            serving: serving.clone(),
            level: Level::Info,
        }
    }

    pub fn stderr(serving: &Serving) -> GuestOutput {
        GuestOutput {
            serving: serving.clone(),
            level: Level::Warn,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Lines {
            serving: self.serving.clone(),
            level: self.level,
            pending: Vec::new(),
        })
    }

    /// Only WASIp2 is linked (see the engine); a p3 guest could not reach this.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

/// Bytes until a newline, then one log line; a line longer than the log's limit is cut.
struct Lines {
    serving: Serving,
    level: Level,
    pending: Vec<u8>,
}

impl Lines {
    fn emit(&mut self) {
        let line = std::mem::take(&mut self.pending);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\r');
        if !text.is_empty() {
            let shared = self
                .serving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            shared.log(self.level, text.to_string(), None);
        }
    }
}

impl OutputStream for Lines {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (text, ends) = match chunk.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (chunk, false),
            };
            // One byte past the limit is kept, so the log marks the line as cut.
            let room = (MAX_LOG_BYTES + 1).saturating_sub(self.pending.len());
            self.pending
                .extend_from_slice(&text[..text.len().min(room)]);
            if ends {
                self.emit();
            }
        }
        Ok(())
    }

    /// Lines go out when they end; a partial one waits for its newline (or the instance's end).
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for Lines {
    async fn ready(&mut self) {}
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}
