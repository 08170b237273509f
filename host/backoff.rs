//! Exponential backoff with jitter, cut short by cancellation: the one retry delay of the
//! subscriber, the logins and the Lease holder.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The delay the next [`Backoff::wait`] is drawn from.
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// After progress: the next wait is the initial one again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The next wait is at most `max` (a standby retries often, whatever failed before).
    pub fn cap(&mut self, max: Duration) {
        self.next = self.next.min(max);
    }

    /// At least `min` next time (a delivery limit asks for a long wait), even past the
    /// maximum.
    pub fn at_least(&mut self, min: Duration) {
        self.next = self.next.max(min);
        self.max = self.max.max(min);
    }

    /// Sleeps between half and all of the delay (jitter keeps many clients from retrying in
    /// step), then doubles it up to the maximum. True if cancelled meanwhile.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let jittered = self.next.mul_f64(rand::rng().random_range(0.5..1.0));
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tokio::time::sleep(jittered) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delays_double_to_the_maximum_and_reset() {
        let cancel = CancellationToken::new();
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(backoff.delay());
            let started = tokio::time::Instant::now();
            assert!(!backoff.wait(&cancel).await);
            let slept = started.elapsed();
            // Jitter draws from the upper half; a busy machine may only oversleep.
            assert!(slept >= seen.last().unwrap().mul_f64(0.5), "{slept:?}");
        }
        assert_eq!(seen, [10, 20, 35, 35].map(Duration::from_millis).to_vec());
        backoff.reset();
        assert_eq!(backoff.delay(), Duration::from_millis(10));
        cancel.cancel();
        assert!(backoff.wait(&cancel).await, "a cancelled wait says so");
    }
}
