//! Named limits (SPEC section 7): the limits a workspace declares for the services it calls,
//! with keys, units, concurrency, lanes, priority, bounded waits and shadow mode.
//!
//! Layout, one idea per module:
//! - [`spec`]: the settings model, read from YAML and checked once, with error paths.
//! - [`uses`]: the places that use a limit (`limits:` entries, `acquire`).
//! - `gcra`: the rate arithmetic over units (continuous refill, pieces above the burst).
//! - `keys`: a shard's keys, short ones stored inline.
//! - `lanes`: the waiting line (stride-scheduled lanes, then priority, then arrival).
//! - [`machine`]: one key's decisions as a synchronous state machine (time in, events out),
//!   reusable by a cluster owner that grants to other instances.
//! - `limit`: a limit's keys in locked shards, the async waiting on top of the machine,
//!   release, live change, idle eviction and counters.
//! - `permit`: the [`Permit`] that releases concurrency on drop.
//! - `prepared`: an automation's constant `limits:` with its limit looked up once
//!   ([`Prepared`]), the fast path of an uncontended execution.
//! - `render`: a use's templates evaluated at acquisition into an [`Ask`].
//! - [`cluster`]: the engine as the limiter a cluster owner runs ([`ClusterEngine`]).
//!
//! This module holds the per-workspace registry ([`NamedLimits`]): it resolves names (the
//! workspace's own limits, then the operator's shared ones), renders the templates of a
//! [`Use`] at acquisition, and takes several limits without deadlock by always taking them
//! in one canonical order, each at most once. Asks of `scope: cluster` limits go to the
//! limit's owner through the attached [`ClusterLimits`] (SPEC section 9); without one they
//! stay local, as `scope: instance`.

pub mod cluster;
mod gcra;
mod keys;
mod lanes;
mod limit;
pub mod machine;
mod permit;
mod prepared;
mod render;
pub mod spec;
pub mod uses;

pub use cluster::ClusterEngine;
pub use lanes::RequestId;
pub use limit::Snapshot;
pub use permit::Permit;
pub use prepared::Prepared;
pub use render::RenderError;
pub use spec::{LimitSpec, Number, Per, Scope, SpecError};
pub use uses::{Target, Use};

use crate::limits::clock::TimeSource;
use crate::limits::cluster::{ClusterLimits, ClusterRequest, Denied, LimitRef};
use limit::{Limit, Start, Want};
use machine::Params;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use uses::Inline;

/// The lane of a request that names none (for a workspace's own limits).
pub const DEFAULT_LANE: &str = "default";
/// The longest rendered key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// The named limits of one workspace (or the operator's shared ones); clones share them.
#[derive(Clone)]
pub struct NamedLimits(Arc<Registry>);

struct Registry {
    time: TimeSource,
    /// The workspace id: the default lane of shared limits. `None` for the shared registry.
    workspace: Option<Arc<str>>,
    limits: RwLock<HashMap<Arc<str>, Declared, Names>>,
    /// Inline limits, keyed by their rendered key.
    inline: Arc<Limit>,
    shared: Option<NamedLimits>,
    /// Where asks of `scope: cluster` limits go; `None` without NATS.
    cluster: RwLock<Option<Arc<ClusterLimits>>>,
    /// Bumped, under the lock it concerns, whenever the declarations or the cluster handle
    /// change, so that a [`Prepared`] lookup knows it is stale.
    generation: AtomicU64,
}

struct Declared {
    spec: Arc<LimitSpec>,
    limit: Arc<Limit>,
}

/// A use rendered for one acquisition: every template evaluated.
#[derive(Clone, Debug)]
pub struct Ask {
    /// The limit's name (an inline limit's is its rendered key).
    pub limit: Arc<str>,
    /// The rendered key (empty for a limit without `key`).
    pub key: String,
    /// Units against the rate.
    pub units: f64,
    /// Higher first within a lane.
    pub priority: i64,
    /// The lane, when given.
    pub lane: Option<String>,
    /// Longest wait; `None` for ever.
    pub wait: Option<Duration>,
    /// The rate, when the limit's is a template.
    pub rate: Option<f64>,
    inline: Option<Arc<Inline>>,
}

impl Ask {
    /// One unit of the declared limit `limit` (key `key`), priority 10, default lane, no
    /// wait bound.
    pub fn new(limit: &str, key: &str) -> Ask {
        Ask {
            limit: Arc::from(limit),
            key: key.to_owned(),
            units: 1.0,
            priority: uses::DEFAULT_PRIORITY,
            lane: None,
            wait: None,
            rate: None,
            inline: None,
        }
    }
}

/// What a granted acquisition holds and reports.
#[derive(Debug, Default)]
pub struct Acquired {
    /// The concurrency slots held, released when dropped (the execution or the `do` block
    /// ended); rate-only grants leave nothing to release.
    pub permits: Vec<Permit>,
    /// Time waited per limit, for `throttledBy` (only limits that made it wait).
    pub waited: Vec<(Arc<str>, Duration)>,
    /// Would-be waits of shadow limits, for `shadow` (only those that would have waited).
    pub shadow: Vec<(Arc<str>, Duration)>,
}

impl Acquired {
    /// Keeps a permit that has something to give back (a rate-only grant has nothing).
    fn keep(&mut self, p: Permit) {
        if p.holds_slot() {
            self.permits.push(p);
        }
    }

    /// The whole wait.
    pub fn total_wait(&self) -> Duration {
        self.waited.iter().map(|(_, d)| *d).sum()
    }
}

/// Why an acquisition did not happen.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AcquireError {
    /// Not granted within its wait (`LimitExceeded`).
    #[error("limit `{limit}`{} not granted within {} ms; {}", key_text(key), wait.as_millis(), retry_text(*retry_after))]
    Refused {
        /// The limit.
        limit: Arc<str>,
        /// The rendered key, if any.
        key: String,
        /// The wait allowed.
        wait: Duration,
        /// When capacity returns; `None` when it depends on holders releasing slots.
        retry_after: Option<Duration>,
    },
    /// No such limit (removed by a live change since the automation was checked).
    #[error("unknown limit `{0}`")]
    Unknown(Arc<str>),
}

impl AcquireError {
    /// The error code executions report: `LimitExceeded`.
    pub fn code(&self) -> &'static str {
        "LimitExceeded"
    }

    /// The limit concerned.
    pub fn limit(&self) -> &str {
        match self {
            AcquireError::Refused { limit, .. } | AcquireError::Unknown(limit) => limit,
        }
    }
}

fn key_text(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" (key `{key}`)")
    }
}

fn retry_text(retry: Option<Duration>) -> String {
    match retry {
        Some(d) => format!("capacity returns in {:.3} s", d.as_secs_f64()),
        None => "capacity returns when a holder releases it".into(),
    }
}

impl NamedLimits {
    /// The operator's shared limits, used by every workspace.
    pub fn shared(time: TimeSource) -> NamedLimits {
        NamedLimits::build(None, None, time)
    }

    /// The limits of workspace `id`, falling back on `shared` for names it does not declare.
    pub fn workspace(id: &str, shared: Option<&NamedLimits>, time: TimeSource) -> NamedLimits {
        NamedLimits::build(Some(Arc::from(id)), shared.cloned(), time)
    }

    fn build(
        workspace: Option<Arc<str>>,
        shared: Option<NamedLimits>,
        time: TimeSource,
    ) -> NamedLimits {
        let none = Arc::new(Params::none());
        let inline = Arc::new(Limit::new(Arc::from("inline"), none, true, time.clone()));
        NamedLimits(Arc::new(Registry {
            time,
            workspace,
            limits: RwLock::new(HashMap::default()),
            inline,
            shared,
            cluster: RwLock::new(None),
            generation: AtomicU64::new(0),
        }))
    }

    /// Enforces this registry's `scope: cluster` limits across the cluster through
    /// `cluster`. A workspace registry without its own handle uses its shared registry's.
    pub fn attach_cluster(&self, cluster: Arc<ClusterLimits>) {
        let mut handle = self
            .0
            .cluster
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *handle = Some(cluster);
        self.0.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The cluster handle asks go through: this registry's, else its shared registry's.
    fn cluster(&self) -> Option<Arc<ClusterLimits>> {
        let own = self
            .0
            .cluster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        own.or_else(|| self.0.shared.as_ref()?.cluster())
    }

    /// Applies a new set of declarations: a changed limit keeps its used units and held
    /// slots, a new one starts full, and a removed one takes no new acquisition (its
    /// holders and waiters finish with it).
    pub fn update(&self, specs: Vec<LimitSpec>) {
        let mut map = self
            .0
            .limits
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity_and_hasher(specs.len(), Names::default());
        for spec in specs {
            let params = Arc::new(spec.params(None));
            let keyed = spec.key.is_some();
            let limit = match map.remove(&spec.name) {
                Some(old) if old.spec.key.is_some() == keyed => {
                    old.limit.set_params(&params);
                    old.limit
                }
                _ => Arc::new(Limit::new(
                    Arc::clone(&spec.name),
                    params,
                    keyed,
                    self.0.time.clone(),
                )),
            };
            next.insert(
                Arc::clone(&spec.name),
                Declared {
                    spec: Arc::new(spec),
                    limit,
                },
            );
        }
        *map = next;
        self.0.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The names declared here (not the shared ones), sorted.
    pub fn names(&self) -> Vec<Arc<str>> {
        let map = self.0.limits.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<_> = map.keys().cloned().collect();
        names.sort();
        names
    }

    /// True when `name` is declared here or shared.
    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name, |_, _, _| ()).is_some()
    }

    /// The declaration of `name`: this registry's, else the shared one.
    pub fn spec(&self, name: &str) -> Option<Arc<LimitSpec>> {
        self.lookup(name, |d, _, _| Arc::clone(&d.spec))
    }

    /// Takes one limit: waits for its turn (or refuses past `wait`). Shadow limits never
    /// wait; their would-be wait is reported.
    pub async fn acquire_one(&self, ask: &Ask) -> Result<Acquired, AcquireError> {
        let mut got = Acquired::default();
        self.take(ask, &mut got).await?;
        Ok(got)
    }

    /// Takes every limit of `asks` (an automation's `limits:`), each in one canonical
    /// order so that two executions taking overlapping limits never hold one while
    /// waiting for the other in opposite orders. A use listed twice is taken once with
    /// the units added. The whole wait is about the slowest limit's: while one is
    /// awaited, the others refill. A refusal releases what was already taken.
    pub async fn acquire(&self, asks: &[Ask]) -> Result<Acquired, AcquireError> {
        let mut sorted: Vec<Ask> = asks.to_vec();
        sorted.sort_by(|a, b| order(a).cmp(&order(b)));
        sorted.dedup_by(|later, first| {
            let same = order(later) == order(first);
            if same {
                first.units += later.units;
                first.priority = first.priority.max(later.priority);
                first.wait = match (first.wait, later.wait) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            same
        });
        let mut got = Acquired::default();
        for ask in &sorted {
            self.take(ask, &mut got).await?;
        }
        Ok(got)
    }

    async fn take(&self, ask: &Ask, got: &mut Acquired) -> Result<(), AcquireError> {
        let refused = |retry_after| AcquireError::Refused {
            limit: Arc::clone(&ask.limit),
            key: ask.key.clone(),
            wait: ask.wait.unwrap_or_default(),
            retry_after,
        };
        let start = match self.start(ask)? {
            Route::Local(start) => start,
            Route::Cluster(route) => {
                let (cluster, request, limit) = *route;
                // Boxed: the round trip to the owner is a large future, and without the box
                // every acquisition, and every execution that holds one, would carry its size.
                let permit = match Box::pin(cluster.acquire(request)).await {
                    Ok(p) => p,
                    Err(Denied::Busy { retry_after }) => {
                        limit.count_remote(None);
                        return Err(refused(retry_after));
                    }
                };
                limit.count_remote(Some(permit.waited()));
                if !permit.waited().is_zero() {
                    got.waited.push((Arc::clone(&ask.limit), permit.waited()));
                }
                got.keep(Permit::cluster(permit));
                return Ok(());
            }
        };
        match start {
            Start::Granted(p) => got.keep(p),
            Start::Shadow(p, would) => {
                got.keep(p);
                if !would.is_zero() {
                    got.shadow.push((Arc::clone(&ask.limit), would));
                }
            }
            Start::Refused(retry) => return Err(refused(retry)),
            Start::Wait(w) => {
                let (p, waited) = Box::pin(w.finish()).await.map_err(refused)?;
                got.keep(p);
                if !waited.is_zero() {
                    got.waited.push((Arc::clone(&ask.limit), waited));
                }
            }
        }
        Ok(())
    }

    /// Resolves the limit of `ask` and starts taking it, under the registry's read lock
    /// (held for the few steps of the decision only, so the common path clones nothing).
    /// A cluster limit with a cluster handle attached is only resolved here.
    fn start(&self, ask: &Ask) -> Result<Route, AcquireError> {
        if let Some(i) = &ask.inline {
            let own = match &i.params {
                Some(p) => Arc::clone(p),
                None => Arc::new(i.spec.params(ask.rate)),
            };
            return Ok(Route::Local(
                self.0.inline.start(self.want(ask, false), Some(&own)),
            ));
        }
        self.lookup(&ask.limit, |d, registry, shared| {
            // Shadow limits only account, which each instance does for itself.
            if d.spec.scope == Scope::Cluster && !d.spec.shadow {
                if let Some(cluster) = self.cluster() {
                    let request = self.cluster_request(ask, &d.spec, registry, shared);
                    return Route::Cluster(Box::new((cluster, request, Arc::clone(&d.limit))));
                }
            }
            let own = d
                .spec
                .rate_is_template()
                .then(|| Arc::new(d.spec.params(ask.rate)));
            Route::Local(d.limit.start(self.want(ask, shared), own.as_ref()))
        })
        .ok_or_else(|| AcquireError::Unknown(Arc::clone(&ask.limit)))
    }

    /// Runs `f` on the declaration of `name` under the read lock of the registry that holds
    /// it (this one, else the shared one), with that registry and whether it is shared.
    fn lookup<R>(
        &self,
        name: &str,
        f: impl FnOnce(&Declared, &NamedLimits, bool) -> R,
    ) -> Option<R> {
        let own_or_shared = [Some(self), self.0.shared.as_ref()];
        for (registry, shared) in own_or_shared
            .into_iter()
            .zip([self.0.workspace.is_none(), true])
        {
            let Some(registry) = registry else { continue };
            let map = registry
                .0
                .limits
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(d) = map.get(name) {
                return Some(f(d, registry, shared));
            }
        }
        None
    }

    /// What `ask` asks of the owner of cluster limit `spec`, declared in `registry`.
    fn cluster_request(
        &self,
        ask: &Ask,
        spec: &LimitSpec,
        registry: &NamedLimits,
        shared: bool,
    ) -> ClusterRequest {
        let limit = registry.limit_ref(&spec.name);
        let want = self.want(ask, shared);
        ClusterRequest {
            limit,
            key: ask.key.clone(),
            units: ask.units,
            priority: ask.priority,
            lane: want.lane.to_owned(),
            wait: ask.wait,
            params: cluster::wire_params(&spec.params(ask.rate)),
        }
    }

    /// The cluster name of limit `name` declared here: this registry's workspace's, or a
    /// shared one.
    fn limit_ref(&self, name: &str) -> LimitRef {
        match &self.0.workspace {
            Some(ws) => LimitRef::workspace(ws, name),
            None => LimitRef::shared(name),
        }
    }

    /// What `ask` wants of one limit; the lane defaults to the workspace's for a shared one.
    fn want<'a>(&'a self, ask: &'a Ask, shared: bool) -> Want<'a> {
        let lane = match (&ask.lane, shared, &self.0.workspace) {
            (Some(l), _, _) => l.as_str(),
            (None, true, Some(ws)) => ws,
            _ => DEFAULT_LANE,
        };
        Want {
            key: &ask.key,
            units: ask.units,
            priority: ask.priority,
            lane,
            wait: ask.wait,
        }
    }

    /// Forgets idle keys (full, unheld, nobody waiting) of every limit here; returns how
    /// many. Keys are also swept as a shard grows; calling this every few seconds returns
    /// the memory of keys that went quiet.
    pub fn sweep(&self) -> usize {
        let limits: Vec<Arc<Limit>> = {
            let map = self.0.limits.read().unwrap_or_else(PoisonError::into_inner);
            map.values().map(|d| Arc::clone(&d.limit)).collect()
        };
        limits.iter().map(|l| l.sweep()).sum::<usize>() + self.0.inline.sweep()
    }

    /// Every limit declared here, then the inline ones (as `inline`), with their state. A
    /// cluster limit also shows its owner and cluster-wide holders and waiters.
    pub fn snapshot(&self) -> Vec<LimitView> {
        let cluster = self.cluster();
        let mut views: Vec<LimitView> = {
            let map = self.0.limits.read().unwrap_or_else(PoisonError::into_inner);
            map.values()
                .map(|d| {
                    let mut state = d.limit.snapshot();
                    if let Some(c) = cluster.as_ref().filter(|_| d.spec.scope == Scope::Cluster) {
                        state.cluster = c.status(&self.limit_ref(&d.spec.name));
                    }
                    LimitView {
                        name: Arc::clone(d.limit.name()),
                        spec: Some(Arc::clone(&d.spec)),
                        state,
                    }
                })
                .collect()
        };
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views.push(LimitView {
            name: Arc::clone(self.0.inline.name()),
            spec: None,
            state: self.0.inline.snapshot(),
        });
        views
    }
}

/// Where one acquisition of one limit is decided.
enum Route {
    /// In this instance.
    Local(Start),
    /// By the owner of a cluster limit; this instance's limit counts the outcome. Boxed:
    /// the request is large, and a route moves on every local grant.
    Cluster(Box<(Arc<ClusterLimits>, ClusterRequest, Arc<Limit>)>),
}

/// One limit as the operator view shows it.
#[derive(Clone, Debug)]
pub struct LimitView {
    /// The name (`inline` for all inline limits together).
    pub name: Arc<str>,
    /// The declaration; `None` for the inline limits.
    pub spec: Option<Arc<LimitSpec>>,
    /// Live state and counters.
    pub state: Snapshot,
}

/// Hashes limit names with FNV-1a: names come from the workspace's own files, not from
/// requests, so a keyed (DoS-resistant) hash would only slow every acquisition.
type Names = BuildHasherDefault<Fnv>;

/// The FNV-1a hasher state.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The canonical order of acquisitions: declared before inline, then by name and key.
fn order(a: &Ask) -> (bool, &str, &str) {
    (a.inline.is_some(), &a.limit, &a.key)
}

impl fmt::Debug for NamedLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedLimits")
            .field("workspace", &self.0.workspace)
            .field("limits", &self.names())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
