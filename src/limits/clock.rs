//! The time source the limiters read and sleep on: the real clock, or a fake one for tests.
//!
//! governor needs a clock to stamp its decisions, and a waiting caller needs to sleep until
//! its token is ready. Both go through [`TimeSource`] so that a test can swap in a
//! [`FakeClock`], whose sleeps move simulated time forward at once: waits are then exact and
//! instant, and no test depends on the machine's speed.

use governor::clock::{Clock, QuantaClock, QuantaInstant, Reference};
use governor::nanos::Nanos;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// The process-wide real clock and the instant it was first read, so that every limiter
/// measures from the same origin and stores only 8 bytes of clock.
static REAL: LazyLock<(QuantaClock, QuantaInstant)> = LazyLock::new(|| {
    let clock = QuantaClock::default();
    let origin = clock.now();
    (clock, origin)
});

/// Where limiters get the time and how waiting callers sleep.
#[derive(Clone, Debug, Default)]
pub struct TimeSource {
    /// `None` for the real clock, which is a global, so the common case costs no allocation.
    fake: Option<FakeClock>,
}

impl TimeSource {
    /// The real, monotonic clock; sleeps on tokio's timer. It does not stop when a test pauses
    /// tokio's time, so such tests should drive the limiters with a [`FakeClock`].
    pub fn real() -> TimeSource {
        TimeSource { fake: None }
    }

    /// Simulated time driven by `clock`.
    pub fn fake(clock: FakeClock) -> TimeSource {
        TimeSource { fake: Some(clock) }
    }

    /// Waits for `duration`: really, or by moving simulated time forward.
    pub async fn sleep(&self, duration: Duration) {
        match &self.fake {
            None => tokio::time::sleep(duration).await,
            Some(fake) => {
                fake.advance(duration);
                fake.0.slept.fetch_add(nanos(duration), Ordering::Relaxed);
                // Let the other tasks run, as they would during a real sleep.
                tokio::task::yield_now().await;
            }
        }
    }

    /// How far simulated time has moved (always zero on the real clock), so that
    /// durations measured on the wall clock can add the waits that were simulated.
    pub fn simulated(&self) -> Duration {
        self.fake
            .as_ref()
            .map(FakeClock::elapsed)
            .unwrap_or_default()
    }

    /// The time elapsed since `earlier` (zero if the clock reads earlier than that).
    pub fn since(&self, earlier: Nanos) -> Duration {
        self.now().duration_since(earlier).into()
    }
}

impl Clock for TimeSource {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match &self.fake {
            None => {
                let (clock, origin) = &*REAL;
                clock.now().duration_since(*origin)
            }
            Some(fake) => Nanos::new(fake.0.now.load(Ordering::Acquire)),
        }
    }
}

/// Simulated time for tests: it moves only when advanced, or when a limiter sleeps on it.
/// Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct FakeClock(Arc<FakeTime>);

#[derive(Debug, Default)]
struct FakeTime {
    now: AtomicU64,
    slept: AtomicU64,
}

impl FakeClock {
    /// A clock reading zero.
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    /// Moves simulated time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.now.fetch_add(nanos(by), Ordering::AcqRel);
    }

    /// The simulated time since the clock was created.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.0.now.load(Ordering::Acquire))
    }

    /// The total time that limiters slept on this clock.
    pub fn slept(&self) -> Duration {
        Duration::from_nanos(self.0.slept.load(Ordering::Acquire))
    }
}

/// A duration in nanoseconds, saturating: 584 years is beyond any wait a limiter computes.
pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_sleep_advances_simulated_time_at_once() {
        let fake = FakeClock::new();
        let time = TimeSource::fake(fake.clone());
        let start = time.now();
        time.sleep(Duration::from_millis(250)).await;
        fake.advance(Duration::from_millis(50));
        assert_eq!(time.since(start), Duration::from_millis(300));
        assert_eq!(fake.slept(), Duration::from_millis(250));
        assert_eq!(fake.elapsed(), Duration::from_millis(300));
    }

    #[test]
    fn real_time_moves_forward() {
        let time = TimeSource::real();
        let a = time.now();
        let b = time.now();
        assert!(b >= a);
    }
}
