//! Flow control: fetch credit is pipeline capacity. A stream asks for no more events than
//! the pipeline has room for (a shared semaphore); each delivered batch carries its permits
//! as a [`Credit`], returned when the pipeline has written the events.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Pipeline capacity held by events in flight; dropping it frees the capacity for new
/// fetch credit.
#[derive(Debug)]
pub struct Credit {
    pub(super) pool: Arc<Semaphore>,
    pub(super) permits: usize,
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
        };
        drop(credit);
        assert_eq!(pool.available_permits(), 10);
        let got = acquire_up_to(&pool, 50).await;
        assert_eq!(got, 10);
    }
}
