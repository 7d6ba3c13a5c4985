//! One token bucket of one workspace: governor's GCRA state plus a FIFO queue of waiters.
//!
//! The uncontended path is a single governor check with no lock and no allocation. Only a
//! caller that must wait touches the queue, a tokio mutex (which grants the lock in request
//! order): the holder sleeps until its tokens are due, so later callers line up behind it
//! instead of racing for each refilled token, and nobody polls.

use super::clock::TimeSource;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

type Limiter = RateLimiter<NotKeyed, InMemoryState, TimeSource, NoOpMiddleware<Nanos>>;

/// A token bucket with its waiting line.
pub(super) struct Bucket {
    limiter: Limiter,
    quota: Quota,
    /// Callers queued or being served; while any is, newcomers queue too (FIFO).
    waiting: AtomicU32,
    /// Nanoseconds on the limiter's clock after which the bucket is surely full again:
    /// the last grant plus the time to refill a whole burst. `retain_recent` reads it.
    full_at: AtomicU64,
    /// Nanoseconds to refill the whole burst.
    refill: u64,
    /// The waiting line; tokio's mutex is fair, so it is served in arrival order. Boxed on
    /// first need: most buckets never wait, and this halves what they cost per workspace.
    queue: OnceLock<Box<tokio::sync::Mutex<()>>>,
}

impl Bucket {
    /// A full bucket.
    pub(super) fn new(quota: Quota, time: TimeSource) -> Bucket {
        let refill = quota
            .replenish_interval()
            .saturating_mul(quota.burst_size().get());
        Bucket {
            limiter: RateLimiter::direct_with_clock(quota, time),
            quota,
            waiting: AtomicU32::new(0),
            full_at: AtomicU64::new(0),
            refill: u64::try_from(refill.as_nanos()).unwrap_or(u64::MAX),
            queue: OnceLock::new(),
        }
    }

    /// The quota this bucket enforces.
    pub(super) fn quota(&self) -> Quota {
        self.quota
    }

    /// The clock this bucket's limiter runs on.
    pub(super) fn clock(&self) -> &TimeSource {
        self.limiter.clock()
    }

    /// Takes `n` tokens if they are there and nobody is waiting for this bucket.
    #[inline]
    pub(super) fn try_take(&self, n: NonZeroU32) -> bool {
        if self.waiting.load(Ordering::Acquire) != 0 || n > self.quota.burst_size() {
            return false;
        }
        let granted = matches!(self.limiter.check_n(n), Ok(Ok(())));
        if granted {
            self.granted();
        }
        granted
    }

    /// Queues for `n` tokens, taken in pieces no larger than the burst, and returns how long
    /// that took. Dropping the future leaves the queue cleanly.
    pub(super) async fn wait(&self, n: NonZeroU32) -> Duration {
        let time = self.limiter.clock();
        let start = time.now();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        let _turn = self.queue.get_or_init(Box::default).lock().await;
        let burst = self.quota.burst_size().get();
        let mut left = n.get();
        while let Some(piece) = NonZeroU32::new(left.min(burst)) {
            // Ends when granted; `InsufficientCapacity` cannot happen since piece <= burst.
            while let Ok(Err(not_until)) = self.limiter.check_n(piece) {
                time.sleep(not_until.wait_time_from(time.now())).await;
            }
            left -= piece.get();
        }
        self.granted();
        time.since(start)
    }

    /// True when no one waits and the bucket has surely refilled: dropping it then loses
    /// nothing, since a new bucket starts full.
    pub(super) fn is_idle(&self, now: Nanos) -> bool {
        self.waiting.load(Ordering::Acquire) == 0
            && now.as_u64() >= self.full_at.load(Ordering::Relaxed)
    }

    /// How many callers are in line.
    #[cfg(test)]
    pub(super) fn queued(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    fn granted(&self) {
        // A plain store, not a max: two grants racing can leave the earlier stamp, which is
        // off by the few nanoseconds between them, harmless for an idleness estimate.
        let now = self.limiter.clock().now().as_u64();
        self.full_at
            .store(now.saturating_add(self.refill), Ordering::Relaxed);
    }
}

/// Counts a caller out of the line however its wait ends, cancellation included.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
