//! The section-7 engine as the limiter a cluster owner runs (SPEC section 9), and the
//! translation of a limit's settings to and from what travels to the owner.
//!
//! The owner of a cluster limit drives the very `Limit` the local path uses: the waiters
//! of the whole cluster sit in its one line, so lanes (weighted round-robin), priority,
//! arrival order, units, burst pieces and concurrency are decided exactly as for a local
//! limit. Each ask carries the settings its instance declares; the owner applies them per
//! key, as it does for a rate rendered from a template, so it needs no workspace files.

use super::limit::{Limit, Snapshot, Start, Want};
use super::machine::{Params, RateParams};
use super::permit::Permit;
use crate::limits::clock::TimeSource;
use crate::limits::cluster::{
    lock, ClusterParams, ClusterRate, Grant, GrantRequest, HolderId, LimitRef, LocalGrantor,
    Refusal,
};
use futures::future::{self, BoxFuture, FutureExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The named-limit engine behind [`crate::limits::cluster::ClusterLimits`]: pass it to
/// `ClusterLimits::connect` so that this instance, when it owns a cluster limit, runs the
/// section-7 limiter for every instance.
pub struct ClusterEngine {
    time: TimeSource,
    terms: Arc<Mutex<HashMap<LimitRef, Term>>>,
}

/// One limit this instance owns, from its takeover to its hand-back.
struct Term {
    limit: Arc<Limit>,
    /// Cancelled at hand-back: the waiters end with [`Refusal::Closed`].
    closed: CancellationToken,
    /// The slots held across the cluster, released when dropped.
    held: HashMap<HolderId, Permit>,
}

impl ClusterEngine {
    /// An engine on `time` (the clock of this instance's named limits).
    pub fn new(time: TimeSource) -> ClusterEngine {
        ClusterEngine {
            time,
            terms: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The state of `limit` as its owner's line holds it for the whole cluster (waiters per
    /// lane, slots held); `None` when this instance does not own it.
    pub fn snapshot(&self, limit: &LimitRef) -> Option<Snapshot> {
        let limit = self.term(limit)?.0;
        Some(limit.snapshot())
    }

    fn term(&self, limit: &LimitRef) -> Option<(Arc<Limit>, CancellationToken)> {
        let terms = lock(&self.terms);
        let term = terms.get(limit)?;
        Some((Arc::clone(&term.limit), term.closed.clone()))
    }
}

impl LocalGrantor for ClusterEngine {
    fn take_over(&self, limit: &LimitRef, fresh: bool) {
        // The limit's own settings are those of each ask, applied per key; the base is none.
        let base = Arc::new(Params::none());
        let name = Arc::from(limit.to_string());
        let limit_state = if fresh {
            Limit::new(name, base, true, self.time.clone())
        } else {
            Limit::drained(name, base, self.time.clone())
        };
        let term = Term {
            limit: Arc::new(limit_state),
            closed: CancellationToken::new(),
            held: HashMap::new(),
        };
        let old = lock(&self.terms).insert(limit.clone(), term);
        if let Some(old) = old {
            old.closed.cancel();
        }
    }

    fn hand_back(&self, limit: &LimitRef) {
        let old = lock(&self.terms).remove(limit);
        if let Some(old) = old {
            old.closed.cancel();
        }
    }

    fn acquire(&self, req: GrantRequest) -> BoxFuture<'static, Result<Grant, Refusal>> {
        let Some((limit, closed)) = self.term(&req.request.limit) else {
            return future::ready(Err(Refusal::Closed)).boxed();
        };
        let params = Arc::new(params(&req.request.params));
        let ask = &req.request;
        let want = Want {
            key: &ask.key,
            units: ask.units,
            priority: ask.priority,
            lane: &ask.lane,
            wait: ask.wait,
        };
        let start = limit.start(want, Some(&params));
        let terms = Arc::clone(&self.terms);
        let GrantRequest { request, holder } = req;
        let grant = move |permit: Permit| {
            let slot = permit.holds_slot();
            if slot {
                keep(&terms, &request.limit, &limit, holder, permit);
            }
            Ok(Grant { slot })
        };
        match start {
            Start::Granted(p) | Start::Shadow(p, _) => future::ready(grant(p)).boxed(),
            Start::Refused(retry_after) => {
                future::ready(Err(Refusal::Busy { retry_after })).boxed()
            }
            Start::Wait(waiting) => async move {
                tokio::select! {
                    done = waiting.finish() => match done {
                        Ok((p, _)) => grant(p),
                        Err(retry_after) => Err(Refusal::Busy { retry_after }),
                    },
                    () = closed.cancelled() => Err(Refusal::Closed),
                }
            }
            .boxed(),
        }
    }

    fn release(&self, limit: &LimitRef, _key: &str, holder: &HolderId) {
        let permit = lock(&self.terms)
            .get_mut(limit)
            .and_then(|t| t.held.remove(holder));
        // Dropped outside the lock: the release serves the line.
        drop(permit);
    }

    fn adopt(&self, limit: &LimitRef, key: &str, holder: &HolderId) {
        let mut terms = lock(&self.terms);
        let Some(term) = terms.get_mut(limit) else {
            return;
        };
        if !term.held.contains_key(holder) {
            let permit = term.limit.adopt_slot(key);
            term.held.insert(holder.clone(), permit);
        }
    }
}

/// Records a granted slot under its holder, unless the term it was granted in has ended
/// (the permit then gives the slot back to that ended term's limit, which nobody uses).
fn keep(
    terms: &Mutex<HashMap<LimitRef, Term>>,
    limit: &LimitRef,
    granted_by: &Arc<Limit>,
    holder: HolderId,
    permit: Permit,
) {
    let mut terms = lock(terms);
    if let Some(term) = terms
        .get_mut(limit)
        .filter(|t| Arc::ptr_eq(&t.limit, granted_by))
    {
        term.held.insert(holder, permit);
    }
}

/// What travels to the owner for `params`.
pub(super) fn wire_params(params: &Params) -> ClusterParams {
    ClusterParams {
        rate: params.rate.map(|r| ClusterRate {
            rate: r.rate,
            per: r.per,
            burst: r.burst,
        }),
        concurrency: params.concurrency,
        lanes: params
            .lanes
            .iter()
            .map(|(n, w)| (n.to_string(), *w))
            .collect(),
    }
}

/// The engine's settings for what an ask carried. Values are re-checked, as they come
/// over the network: a rate that is not positive and finite is no rate.
fn params(wire: &ClusterParams) -> Params {
    let rate = wire.rate.filter(|r| {
        r.rate.is_finite()
            && r.rate > 0.0
            && r.burst.is_finite()
            && r.burst > 0.0
            && !r.per.is_zero()
    });
    Params {
        rate: rate.map(|r| RateParams::new(r.rate, r.per, r.burst)),
        concurrency: wire.concurrency,
        lanes: wire
            .lanes
            .iter()
            .map(|(n, w)| (Arc::from(n.as_str()), (*w).max(1)))
            .collect(),
        shadow: false,
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
