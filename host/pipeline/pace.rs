//! Start-up without a thundering herd: logins and subscribes of a process at most so many
//! per second (`login-rate`, `subscribe-rate`), first come first served. Ten thousand
//! subscriptions starting at once would otherwise log in within a second and meet
//! Salesforce's login rate limits, or open every stream in the same instant.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// At most `rate` passes per second; none without a rate.
pub struct Pace(Option<tokio::sync::Mutex<tokio::time::Interval>>);

impl Pace {
    /// `rate` per second; 0 (or less) is no limit.
    pub fn per_second(rate: f64) -> Pace {
        if !(rate > 0.0 && rate.is_finite()) {
            return Pace(None);
        }
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        // After a quiet spell, one passes at once and the next wait a full period: a
        // burst never exceeds the rate.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pace(Some(tokio::sync::Mutex::new(interval)))
    }

    /// Waits for this caller's turn (the lock is fair: in order of arrival); false when
    /// `cancel` fired first.
    pub async fn wait(&self, cancel: &CancellationToken) -> bool {
        let Some(interval) = &self.0 else {
            return !cancel.is_cancelled();
        };
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = async { interval.lock().await.tick().await; } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_are_spaced_by_the_rate_and_a_cancelled_wait_does_not_pass() {
        let cancel = CancellationToken::new();
        let pace = Pace::per_second(50.0);
        let start = std::time::Instant::now();
        for _ in 0..11 {
            assert!(pace.wait(&cancel).await);
        }
        // The first passes at once, the next 10 a fiftieth of a second apart: never sooner.
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
        assert!(Pace::per_second(0.0).wait(&cancel).await, "no limit");
        cancel.cancel();
        assert!(!pace.wait(&cancel).await);
        assert!(!Pace::per_second(0.0).wait(&cancel).await);
    }
}
