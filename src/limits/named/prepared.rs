//! An automation's constant `limits:`, prepared once: the asks rendered, and the limit of a
//! single declared, local ask looked up, so that an uncontended execution takes it without
//! the registry's lock, name hash and comparison, or the waiting machinery (the trivial
//! automation pays for each of those steps on every run).
//!
//! A lookup holds for as long as the declarations and the cluster handle of the registries
//! it went through do not change: each change bumps their generation, and a lookup made at
//! another generation is made again before it is used.

use super::limit::Limit;
use super::{Ask, NamedLimits, Permit, Scope};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};

/// Constant asks with the limit of a single one looked up (see the module doc).
pub struct Prepared {
    asks: Vec<Ask>,
    fast: RwLock<Fast>,
}

/// The looked-up limit, at the generations of the workspace's and the shared registry.
struct Fast {
    generation: (u64, u64),
    /// `None` when the fast path does not apply: several asks, an inline or cluster limit,
    /// or an unknown name.
    limit: Option<Arc<Limit>>,
}

impl Prepared {
    /// The asks, for the path that may wait.
    pub fn asks(&self) -> &[Ask] {
        &self.asks
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("asks", &self.asks)
            .finish()
    }
}

impl NamedLimits {
    /// Prepares `asks`, rendered once because none depends on the execution.
    pub fn prepare(&self, asks: Vec<Ask>) -> Prepared {
        let fast = self.resolve(&asks);
        Prepared {
            asks,
            fast: RwLock::new(fast),
        }
    }

    /// Takes a prepared single limit at once when it is uncontended; `None` when the asks
    /// must go the whole way ([`NamedLimits::acquire`]): several limits, a line, no room, a
    /// shadow or cluster limit, or a key not seen yet.
    pub fn try_prepared(&self, prepared: &Prepared) -> Option<Permit> {
        let [ask] = &prepared.asks[..] else {
            return None;
        };
        let now = self.generation();
        {
            let fast = prepared.fast.read().unwrap_or_else(PoisonError::into_inner);
            if fast.generation == now {
                return fast.limit.as_ref()?.try_grant(&ask.key, ask.units);
            }
        }
        // Stored before it is used, even when the fast path does not apply, so that the
        // next executions do not look it up again.
        let fresh = self.resolve(&prepared.asks);
        let limit = fresh.limit.clone();
        *prepared
            .fast
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        limit?.try_grant(&ask.key, ask.units)
    }

    /// The generations of this registry and of its shared one.
    fn generation(&self) -> (u64, u64) {
        let of = |r: &NamedLimits| r.0.generation.load(Ordering::Acquire);
        (of(self), self.0.shared.as_ref().map_or(0, of))
    }

    /// Looks up the limit of a single declared ask that this instance decides. The
    /// generation is read first: a change that lands during the lookup leaves it stale,
    /// never wrongly current.
    fn resolve(&self, asks: &[Ask]) -> Fast {
        let generation = self.generation();
        let limit = match asks {
            [ask] if ask.inline.is_none() => self
                .lookup(&ask.limit, |d, _, _| {
                    let local = d.spec.scope != Scope::Cluster || self.cluster().is_none();
                    (local && !d.spec.rate_is_template()).then(|| Arc::clone(&d.limit))
                })
                .flatten(),
            _ => None,
        };
        Fast { generation, limit }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ask, setup, specs, waiting};
    use super::super::AcquireError;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    #[tokio::test]
    async fn an_uncontended_limit_is_granted_at_once_and_a_drained_one_is_left_untouched() {
        let (limits, clock) = setup("api: {rate: 2, per: second}");
        let prepared = limits.prepare(vec![ask("api")]);
        assert!(limits.try_prepared(&prepared).is_some());
        assert!(limits.try_prepared(&prepared).is_some());
        assert!(limits.try_prepared(&prepared).is_none(), "the burst is 2");
        // Declining took nothing: the whole way refuses with the same half second.
        let e = limits.acquire_one(&waiting("api", 0)).await.unwrap_err();
        assert!(
            matches!(e, AcquireError::Refused { retry_after: Some(d), .. } if d == Duration::from_millis(500)),
            "{e}"
        );
        clock.advance(Duration::from_millis(500));
        assert!(limits.try_prepared(&prepared).is_some());
        assert!(limits.try_prepared(&prepared).is_none());
    }

    #[tokio::test]
    async fn a_waiter_in_line_is_not_passed() {
        let (limits, clock) = setup("api: {rate: 1, per: second}");
        let prepared = limits.prepare(vec![ask("api")]);
        assert!(limits.try_prepared(&prepared).is_some());
        let one = ask("api");
        let mut waiter = std::pin::pin!(limits.acquire_one(&one));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiter.as_mut().poll(&mut cx).is_pending());
        clock.advance(Duration::from_secs(1));
        assert!(
            limits.try_prepared(&prepared).is_none(),
            "the unit that refilled is the waiter's"
        );
        assert!(matches!(waiter.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
    }

    #[tokio::test]
    async fn a_slot_taken_at_once_is_held_until_the_permit_drops() {
        let (limits, _) = setup("reports: {concurrency: 1}");
        let prepared = limits.prepare(vec![ask("reports")]);
        let permit = limits.try_prepared(&prepared).unwrap();
        assert!(permit.holds_slot());
        assert!(limits.try_prepared(&prepared).is_none());
        assert!(limits.acquire_one(&waiting("reports", 0)).await.is_err());
        drop(permit);
        assert_eq!(limits.snapshot()[0].state.held, 0);
        assert!(limits.try_prepared(&prepared).is_some());
    }

    #[tokio::test]
    async fn shadow_several_and_unknown_limits_go_the_whole_way() {
        let (limits, _) =
            setup("pilot: {rate: 1, per: second, shadow: true}\nother: {rate: 1, per: second}");
        for asks in [
            vec![ask("pilot")],
            vec![ask("other"), ask("pilot")],
            vec![ask("missing")],
        ] {
            let prepared = limits.prepare(asks);
            assert!(limits.try_prepared(&prepared).is_none());
        }
        let views = limits.snapshot();
        assert!(views.iter().all(|v| v.state.keys == 0), "nothing was taken");
        // After a change, a lookup that finds no fast path is kept too, not redone per run.
        let prepared = limits.prepare(vec![ask("missing")]);
        limits.update(specs("pilot: {rate: 2, per: second, shadow: true}"));
        assert!(limits.try_prepared(&prepared).is_none());
        let fast = prepared.fast.read().unwrap();
        assert_eq!(fast.generation, limits.generation());
        assert!(fast.limit.is_none());
    }

    #[tokio::test]
    async fn a_live_change_is_looked_up_again() {
        let (limits, _) = setup("api: {rate: 1, per: second}");
        let prepared = limits.prepare(vec![ask("api")]);
        assert!(limits.try_prepared(&prepared).is_some());
        assert!(limits.try_prepared(&prepared).is_none(), "drained");
        limits.update(Vec::new());
        assert!(limits.try_prepared(&prepared).is_none(), "removed");
        // Declared again, it is a new limit with a full bucket, not the drained one.
        limits.update(specs("api: {rate: 1, per: second}"));
        assert!(limits.try_prepared(&prepared).is_some());
        // A change that keeps the limit keeps its state: still drained at a new rate.
        assert!(limits.try_prepared(&prepared).is_none());
        limits.update(specs("api: {rate: 2, per: second, burst: 1}"));
        assert!(limits.try_prepared(&prepared).is_none());
    }
}
