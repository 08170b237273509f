//! Flow control: fetch credit is pipeline capacity. A stream asks for no more events than
//! its pipeline has room for (a semaphore per subscription); each delivered batch carries
//! its permits as a [`Credit`], returned when the pipeline has written the events. A
//! delivered batch also waits for room in the process's [`Budget`], so thousands of
//! subscriptions catching up at once hold a bounded number of decoded events, not
//! thousands times a batch: until there is room, the batch stays as it came off the wire
//! and HTTP/2 flow control holds the rest at the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Pipeline capacity held by events in flight; dropping it frees the capacity for new
/// fetch credit, and the batch's room in the process budget.
#[derive(Debug)]
pub struct Credit {
    pub(super) pool: Arc<Semaphore>,
    pub(super) permits: usize,
    /// Held, not read: its drop frees the batch's room in the budget.
    pub(super) _room: Option<OwnedSemaphorePermit>,
}

/// Events every subscription of a process holds together between receipt and write, at
/// most (`max-in-flight-total`); unlimited when built with 0.
#[derive(Clone, Debug)]
pub struct Budget {
    pool: Option<Arc<Semaphore>>,
    size: u32,
    /// The most events held at once so far.
    peak: Arc<AtomicUsize>,
}

impl Default for Budget {
    /// No limit.
    fn default() -> Budget {
        Budget::new(0)
    }
}

impl Budget {
    pub fn new(size: usize) -> Budget {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        Budget {
            pool: (size > 0).then(|| Arc::new(Semaphore::new(size as usize))),
            size,
            peak: Arc::default(),
        }
    }

    /// Room for `n` events (a batch larger than the whole budget takes all of it), once
    /// there is; `None` without a limit.
    pub(super) async fn room(&self, n: u32) -> Option<OwnedSemaphorePermit> {
        let pool = self.pool.as_ref()?;
        let permit = pool
            .clone()
            .acquire_many_owned(n.clamp(1, self.size))
            .await
            .ok()?;
        self.peak.fetch_max(self.in_use(), Relaxed);
        Some(permit)
    }

    /// Events held now.
    pub fn in_use(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| {
            (self.size as usize).saturating_sub(p.available_permits())
        })
    }

    /// The most events held at once since the process started.
    pub fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }

    /// The bound; 0: none.
    pub fn size(&self) -> usize {
        self.pool.as_ref().map_or(0, |_| self.size as usize)
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.pool.add_permits(self.permits);
    }
}

/// Waits for at least one permit, then takes as many more as are free, up to `max`. The
/// permits are forgotten; the caller returns them with `add_permits` or a [`Credit`].
pub(super) async fn acquire_up_to(pool: &Semaphore, max: u32) -> u32 {
    if max == 0 {
        return std::future::pending().await;
    }
    match pool.acquire().await {
        Ok(permit) => permit.forget(),
        Err(_) => return std::future::pending().await,
    }
    let mut got = 1;
    while got < max {
        match pool.try_acquire() {
            Ok(permit) => {
                permit.forget();
                got += 1;
            }
            Err(_) => break,
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credit_returns_capacity_when_dropped() {
        let pool = Arc::new(Semaphore::new(10));
        let got = acquire_up_to(&pool, 4).await;
        assert_eq!(got, 4);
        assert_eq!(pool.available_permits(), 6);
        let credit = Credit {
            pool: pool.clone(),
            permits: got as usize,
            _room: None,
        };
        drop(credit);
        assert_eq!(pool.available_permits(), 10);
        let got = acquire_up_to(&pool, 50).await;
        assert_eq!(got, 10);
    }

    #[tokio::test]
    async fn a_batch_waits_for_room_in_the_budget_and_frees_it_when_written() {
        let budget = Budget::new(150);
        let first = budget.room(100).await.unwrap();
        assert_eq!(budget.in_use(), 100);
        // A batch larger than the rest waits; larger than the budget takes all of it.
        let mut second = Box::pin(budget.room(100));
        assert!(futures::poll!(second.as_mut()).is_pending());
        drop(first);
        let second = second.await.unwrap();
        assert_eq!((budget.in_use(), budget.peak()), (100, 100));
        drop(second);
        let all = budget.room(500).await.unwrap();
        assert_eq!(budget.in_use(), 150);
        drop(all);
        assert_eq!(budget.in_use(), 0);
        assert!(Budget::new(0).room(10).await.is_none(), "0: no limit");
    }
}
